"""seg_heads (PKUSeg)."""
