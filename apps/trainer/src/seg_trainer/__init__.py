"""seg_trainer (PKUSeg)."""

from . import mask_classification as _mask_classification  # noqa: F401  (registers the "mask2former" loss)
