"""seg_backbones (PKUSeg)."""
