"""seg_trainer (PKUSeg)."""
