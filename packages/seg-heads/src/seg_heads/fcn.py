"""FCN head (Long et al., "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015).

Two references, selected by ``variant``:

- ``"mmseg"``: mmsegmentation ``mmseg/models/decode_heads/fcn_head.py``:
  ``num_convs`` conv-BN-ReLU units (``kernel_size``, ``channels``), optionally
  ``conv_cat`` over ``[input, convs(input)]`` (``concat_input``), then
  ``Dropout2d(dropout)`` and a 1x1 classifier ``conv_seg``. mmseg's FCN model
  uses ``num_convs=2, concat_input=True, channels=512``; its auxiliary head on
  layer3 uses ``num_convs=1, concat_input=False, channels=256``.
- ``"torchvision"``: torchvision ``models/segmentation/fcn.py`` ``FCNHead``:
  3x3 conv to ``in_channels // 4`` + BN + ReLU, element-wise ``Dropout(0.1)``,
  1x1 classifier (used as torchvision's FCN head and as its auxiliary head).

The head maps one feature map to logits at that map's resolution; nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from seg_backbones import FeatureInfo

from ._layers import ConvBNReLU, NormLayer, check_in_index, init_mmseg_, pick, resolve_norm
from ._registry import register_head

__all__ = ["FCNHead"]

_VARIANTS = ("mmseg", "torchvision")


class FCNHead(nn.Module):
    """Stacked convs on one feature map, then a 1x1 classifier.

    Args:
        in_channels: channels of the input feature map (from ``backbone.feature_info``).
        num_classes: number of output logits per pixel.
        in_index: the backbone output the head reads (-1: the last); ``forward`` takes the
            backbone's feature list (or that one map as a tensor).
        variant: ``"mmseg"`` (defaults below, ``Dropout2d``) or ``"torchvision"``
            (``channels = in_channels // 4``, one conv, no concat, element-wise ``Dropout``).
        channels: width of the convs; default 512 (mmseg) or ``in_channels // 4`` (torchvision).
        num_convs: number of conv-BN-ReLU units (>= 1); default 2 (mmseg) or 1 (torchvision).
        kernel_size: kernel of every conv (3).
        dilation: dilation of every conv (1).
        concat_input: add ``conv_cat`` over ``[input, convs(input)]``; default True (mmseg)
            or False (torchvision).
        dropout: drop probability before the classifier (0.1); 0 disables it.
        norm_layer: ``"bn" | "syncbn" | "gn"`` or a callable ``num_features -> nn.Module``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        in_index: int = -1,
        variant: str = "mmseg",
        channels: int | None = None,
        num_convs: int | None = None,
        kernel_size: int = 3,
        dilation: int = 1,
        concat_input: bool | None = None,
        dropout: float = 0.1,
        norm_layer: str | NormLayer = "bn",
    ) -> None:
        super().__init__()
        if variant not in _VARIANTS:
            raise ValueError(f"unknown FCNHead variant {variant!r}; valid: {list(_VARIANTS)}")
        tv = variant == "torchvision"
        if channels is None:
            channels = in_channels // 4 if tv else 512
        if num_convs is None:
            num_convs = 1 if tv else 2
        if concat_input is None:
            concat_input = not tv
        if num_convs < 1:
            raise ValueError(f"FCNHead num_convs must be >= 1, got {num_convs}")
        norm = resolve_norm(norm_layer)
        self.variant = variant
        self.in_channels = in_channels
        self.channels = channels
        self.num_classes = num_classes
        self.in_index = in_index
        self.concat_input = concat_input
        convs = [
            ConvBNReLU(
                in_channels if i == 0 else channels,
                channels,
                kernel_size,
                dilation=dilation,
                norm_layer=norm,
            )
            for i in range(num_convs)
        ]
        self.convs = nn.Sequential(*convs)
        self.conv_cat = (
            ConvBNReLU(
                in_channels + channels, channels, kernel_size, dilation=dilation, norm_layer=norm
            )
            if concat_input
            else None
        )
        drop = nn.Dropout if tv else nn.Dropout2d
        self.dropout = drop(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        if not tv:  # torchvision keeps PyTorch's default initialisation
            init_mmseg_(self, self.conv_seg)

    def forward(self, features: Sequence[Tensor] | Tensor) -> Tensor:
        x = pick(features, self.in_index)
        out = self.convs(x)
        if self.conv_cat is not None:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.conv_seg(self.dropout(out))


@register_head("fcn")
def _fcn(
    feature_info: Sequence[FeatureInfo],
    num_classes: int,
    *,
    output_stride: int,
    align_corners: bool,
    **head_kwargs: object,
) -> nn.Module:
    """FCN (mmseg ``fcn_r50-d8``: 2 convs of 512, concat input; torchvision with ``variant``)."""
    del output_stride, align_corners  # the FCN head has no resolution-dependent part
    in_index = check_in_index(feature_info, head_kwargs.pop("in_index", -1), head="fcn")
    return FCNHead(
        feature_info[in_index][0],  # type: ignore[index]
        num_classes,
        in_index=in_index,  # type: ignore[arg-type]
        **head_kwargs,  # type: ignore[arg-type]
    )
