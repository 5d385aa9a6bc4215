"""seg_data (PKUSeg)."""
