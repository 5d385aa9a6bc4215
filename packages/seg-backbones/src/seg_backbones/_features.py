"""The feature contract every backbone publishes as ``.feature_info``."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["FeatureInfo"]


class FeatureInfo(NamedTuple):
    """Channels and reduction (stride w.r.t. the input) of one backbone output.

    A plain tuple, so ``FeatureInfo(256, 4) == (256, 4)``.
    """

    channels: int
    reduction: int
