"""Semantic FPN (Kirillov et al., "Panoptic Feature Pyramid Networks", CVPR 2019): an FPN neck
and a light per-level upsampling head, summed.

Layer for layer as mmsegmentation 1.2.2 ``configs/_base_/models/fpn_r50.py``: the neck
``mmseg/models/necks/fpn.py`` (``FPN(in_channels, out_channels=256, num_outs=4)``) followed
by ``mmseg/models/decode_heads/fpn_head.py`` (``FPNHead``). PKUSeg's model has no neck
slot, so the neck lives inside the head as ``neck`` (mmseg's ``neck.*`` weights load as
``decode_head.neck.*``).

- Neck, as mmseg's default (no ``norm_cfg``, no ``act_cfg``): per level a 1x1
  ``lateral_convs.<i>.conv`` and a 3x3 ``fpn_convs.<i>.conv``, both plain convs with bias,
  no norm, no activation; the top-down path resizes each coarser lateral to the next finer
  one's size with NEAREST interpolation and adds it; Xavier-uniform initialisation.
- Head: per level ``scale_heads.<i>``, a stack of ``max(1, log2(stride_i / stride_0))``
  3x3 conv + BN + ReLU units (``channels``, 128), each followed by a 2x bilinear upsampling
  (output size exactly twice the input, as mmseg's ``Upsample(scale_factor=2)``) except on
  the finest level; each level's result is bilinearly resized to the finest level's size
  and summed; ``Dropout2d(0.1)``; 1x1 classifier ``conv_seg``.

Every bilinear resize uses the head's ``align_corners``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from seg_backbones import FeatureInfo

from ._layers import ConvBNReLU, NormLayer, check_in_index, init_mmseg_, resolve_norm
from ._registry import register_head

__all__ = ["FPNHead", "FPNNeck"]


class _Conv(nn.Module):
    """A bare ``conv`` (with bias): mmcv's ``ConvModule`` without norm and activation."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class FPNNeck(nn.Module):
    """mmseg's ``FPN`` neck with its defaults: 1x1 laterals, nearest top-down path, 3x3 outputs.

    Args:
        in_channels: channels of each level, finest first.
        out_channels: width of every output level (256).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256) -> None:
        super().__init__()
        self.in_channels = tuple(in_channels)
        self.out_channels = out_channels
        self.lateral_convs = nn.ModuleList(_Conv(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(_Conv(out_channels, out_channels, 3) for _ in in_channels)
        for m in self.modules():  # mmseg: init_cfg=dict(type='Xavier', distribution='uniform')
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, xs: Sequence[Tensor]) -> list[Tensor]:
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, xs, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            up = F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
            laterals[i - 1] = laterals[i - 1] + up
        return [conv(lat) for conv, lat in zip(self.fpn_convs, laterals, strict=True)]


class _Upsample2x(nn.Module):
    """Bilinear upsampling to exactly twice the height and width (mmseg's ``Upsample(scale_factor=2)``)."""

    def __init__(self, align_corners: bool) -> None:
        super().__init__()
        self.align_corners = align_corners

    def forward(self, x: Tensor) -> Tensor:
        size = (2 * x.shape[-2], 2 * x.shape[-1])
        return F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)


class FPNHead(nn.Module):
    """Semantic FPN: the FPN ``neck`` and mmseg's ``FPNHead`` over its outputs.

    Args:
        in_channels: channels of each selected backbone level, finest first.
        feature_strides: stride of each selected level (from ``feature_info``); the first
            must be the smallest, every ratio to it a power of two.
        num_classes: number of output logits per pixel.
        in_index: the backbone outputs the head reads, finest first (default: the first
            ``len(in_channels)``; ResNet: (0, 1, 2, 3)).
        neck_channels: width of the FPN neck outputs (256).
        channels: width of the per-level conv stacks (128).
        dropout: ``Dropout2d`` probability before the classifier (0.1); 0 disables it.
        align_corners: ``align_corners`` of the head's bilinear resizes (the neck's are nearest).
        norm_layer: the head's norm (the neck has none): ``"bn" | "syncbn" | "gn"`` or a
            callable ``num_features -> nn.Module``.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        feature_strides: Sequence[int],
        num_classes: int,
        *,
        in_index: Sequence[int] | None = None,
        neck_channels: int = 256,
        channels: int = 128,
        dropout: float = 0.1,
        align_corners: bool = False,
        norm_layer: str | NormLayer = "bn",
    ) -> None:
        super().__init__()
        in_channels = tuple(int(c) for c in in_channels)
        strides = tuple(int(s) for s in feature_strides)
        in_index = tuple(range(len(in_channels)) if in_index is None else map(int, in_index))
        if not in_channels or not len(in_channels) == len(strides) == len(in_index):
            raise ValueError(
                f"FPNHead needs one in_channels entry and one stride per in_index level, got "
                f"in_channels={in_channels}, feature_strides={strides}, in_index={in_index}"
            )
        ratios = [s / strides[0] for s in strides]
        if any(r < 1 or not math.log2(r).is_integer() for r in ratios):
            raise ValueError(
                f"FPNHead: the first level must have the smallest stride and the others a "
                f"power-of-two multiple of it, got strides {strides} for in_index={in_index}"
            )
        norm = resolve_norm(norm_layer)
        self.in_channels = in_channels
        self.feature_strides = strides
        self.in_index = in_index
        self.channels = channels
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.neck = FPNNeck(in_channels, neck_channels)
        self.scale_heads = nn.ModuleList()
        for ratio in ratios:
            layers: list[nn.Module] = []
            for k in range(max(1, int(math.log2(ratio)))):
                layers.append(
                    ConvBNReLU(neck_channels if k == 0 else channels, channels, 3, norm_layer=norm)
                )
                if ratio > 1:
                    layers.append(_Upsample2x(align_corners))
            self.scale_heads.append(nn.Sequential(*layers))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        init_mmseg_(self.scale_heads, self.conv_seg)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        xs = self.neck([features[i] for i in self.in_index])
        out = self.scale_heads[0](xs[0])
        for head, x in zip(self.scale_heads[1:], xs[1:], strict=True):
            out = out + F.interpolate(
                head(x), size=out.shape[-2:], mode="bilinear", align_corners=self.align_corners
            )
        return self.conv_seg(self.dropout(out))


@register_head("fpn", output_stride=32)
def _fpn(
    feature_info: Sequence[FeatureInfo],
    num_classes: int,
    *,
    output_stride: int,
    align_corners: bool,
    **head_kwargs: object,
) -> nn.Module:
    """Semantic FPN (mmseg ``fpn_r50``): neck of 256 on all four levels, head of 128."""
    del output_stride  # the strides are read from feature_info
    head_kwargs.setdefault("align_corners", align_corners)
    requested = head_kwargs.pop("in_index", (0, 1, 2, 3))
    if isinstance(requested, int) or not isinstance(requested, Sequence):
        raise ValueError(
            f"fpn: in_index must be a sequence of backbone levels, finest first, "
            f"e.g. (0, 1, 2, 3); got in_index={requested!r}"
        )
    in_index = check_in_index(feature_info, requested, head="fpn")
    levels = [feature_info[i] for i in in_index]  # type: ignore[union-attr]
    try:
        return FPNHead(
            [f[0] for f in levels],
            [f[1] for f in levels],
            num_classes,
            in_index=in_index,  # type: ignore[arg-type]
            **head_kwargs,  # type: ignore[arg-type]
        )
    except ValueError as e:
        raise ValueError(f"fpn: {e}") from e
