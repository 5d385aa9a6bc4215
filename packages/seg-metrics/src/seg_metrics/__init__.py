"""seg_metrics (PKUSeg)."""
