"""Small blocks shared by the heads: a conv-norm-ReLU unit, the norm-layer option, and the
level selection of the multi-level contract (``check_in_index`` / ``pick``).

``ConvBNReLU`` names its children ``conv`` and ``bn`` like mmcv's ``ConvModule``
with a BatchNorm ``norm_cfg``, so mmsegmentation head weights load by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from seg_backbones.norm import NormLayer, get_norm_layer

__all__ = ["ConvBNReLU", "InIndex", "NormLayer", "check_in_index", "pick", "resolve_norm"]

InIndex = int | tuple[int, ...]
"""The level(s) a head reads: one backbone output index, or a tuple of them."""

# The norm-layer option means the same for heads as for backbones ("bn" | "syncbn" | "gn" |
# "frozen_bn" | callable): one resolver, seg_backbones'.
resolve_norm = get_norm_layer


class ConvBNReLU(nn.Module):
    """``conv`` (no bias) -> ``bn`` -> ReLU, as mmcv's ``ConvModule`` with a norm layer.

    Padding keeps the spatial size: ``dilation * (kernel_size // 2)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        dilation: int = 1,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            padding=dilation * (kernel_size // 2),
            dilation=dilation,
            bias=False,
        )
        self.bn = norm_layer(out_channels)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.activate(self.bn(self.conv(x)))


def init_mmseg_(head: nn.Module, classifier: nn.Conv2d) -> None:
    """mmseg's initialisation: Kaiming-normal (fan_out, ReLU) convs, norms 1/0, classifier N(0, 0.01).

    mmcv's ``ConvModule.init_weights`` and ``BaseDecodeHead``'s
    ``init_cfg=dict(type='Normal', std=0.01, override=dict(name='conv_seg'))``.
    """
    for m in head.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm | nn.GroupNorm) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    nn.init.normal_(classifier.weight, std=0.01)
    if classifier.bias is not None:
        nn.init.zeros_(classifier.bias)


def check_in_index(
    feature_info: Sequence[Any], in_index: int | Sequence[int], *, head: str
) -> InIndex:
    """Validate ``in_index`` against ``feature_info`` and return it non-negative.

    An int selects one level (negative counts from the end, as a list index), a
    sequence several (returned as a tuple). Out-of-range indices raise a
    ``ValueError`` naming ``head``, the valid range and the backbone's levels.
    """
    n = len(feature_info)
    many = not isinstance(in_index, int)
    indices = list(in_index) if many else [in_index]  # type: ignore[arg-type]
    bad = [i for i in indices if not isinstance(i, int) or not -n <= i < n]
    if bad or not indices:
        levels = ", ".join(f"{i}: {tuple(f)}" for i, f in enumerate(feature_info))
        raise ValueError(
            f"{head}: in_index={in_index!r} does not name backbone levels; valid indices are "
            f"0..{n - 1} (or -{n}..-1), the backbone's levels (channels, stride) are {{{levels}}}"
        )
    fixed = tuple(i % n for i in indices)
    return fixed if many else fixed[0]


def pick(features: Sequence[Tensor] | Tensor, in_index: int) -> Tensor:
    """``features[in_index]``; a lone tensor is taken as the level itself (direct head calls)."""
    if isinstance(features, Tensor):
        return features
    return features[in_index]
