"""DeepLabV3+ head: depthwise-separable ASPP and a low-level decoder (Chen et al., "Encoder-Decoder
with Atrous Separable Convolution for Semantic Image Segmentation", ECCV 2018).

Layer for layer as mmsegmentation 1.2.2 ``mmseg/models/decode_heads/sep_aspp_head.py``
(``DepthwiseSeparableASPPHead``) with mmcv's ``DepthwiseSeparableConvModule``:

- on the deepest level (``in_index``, -1): image pooling (global average pool -> 1x1 conv
  + BN + ReLU -> bilinear upsampling), a 1x1 conv + BN + ReLU and three depthwise-separable
  atrous 3x3 branches (``depthwise_conv``: 3x3 depthwise conv + BN + ReLU, then
  ``pointwise_conv``: 1x1 conv + BN + ReLU), concatenated as ``[image_pool, 1x1, rate_1,
  rate_2, rate_3]`` and fused by ``bottleneck`` (3x3 conv + BN + ReLU to ``channels``).
  The rates follow the output stride as in DeepLabV3 (12/24/36 at 8, 6/12/18 at 16;
  mmseg's ``d8`` configs write ``dilations=(1, 12, 24, 36)``);
- ``c1_bottleneck``: 1x1 conv + BN + ReLU to ``c1_channels`` (48) on the stride-4 level
  (``c1_in_index``, 0);
- the ASPP output is bilinearly resized to the stride-4 size, concatenated with it
  (``[aspp, c1]``) and refined by ``sep_bottleneck``: two depthwise-separable 3x3 convs
  to ``channels``; ``Dropout2d(0.1)``; 1x1 classifier ``conv_seg``.

Module names are mmseg's (``image_pool.1.conv``, ``aspp_modules.<i>.depthwise_conv.conv``,
``c1_bottleneck.conv``, ``sep_bottleneck.<j>.pointwise_conv.bn``, ``conv_seg``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seg_backbones import FeatureInfo

from ._layers import ConvBNReLU, NormLayer, check_in_index, init_mmseg_, resolve_norm
from ._registry import register_head
from .aspp import default_aspp_rates

__all__ = ["DepthwiseSeparableASPPHead", "DepthwiseSeparableConvBNReLU"]


class _DepthwiseConvBNReLU(nn.Module):
    """3x3 depthwise ``conv`` (groups = channels, no bias) -> ``bn`` -> ReLU (a grouped ConvBNReLU)."""

    def __init__(self, channels: int, *, dilation: int, norm_layer: NormLayer) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            channels,
            channels,
            3,
            padding=dilation,
            dilation=dilation,
            groups=channels,
            bias=False,
        )
        self.bn = norm_layer(channels)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.activate(self.bn(self.conv(x)))


class DepthwiseSeparableConvBNReLU(nn.Module):
    """mmcv's ``DepthwiseSeparableConvModule`` with BN and ReLU: ``depthwise_conv`` (3x3
    depthwise conv + BN + ReLU) then ``pointwise_conv`` (1x1 conv + BN + ReLU)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        dilation: int = 1,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.depthwise_conv = _DepthwiseConvBNReLU(
            in_channels, dilation=dilation, norm_layer=norm_layer
        )
        self.pointwise_conv = ConvBNReLU(in_channels, out_channels, 1, norm_layer=norm_layer)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


class DepthwiseSeparableASPPHead(nn.Module):
    """Separable ASPP on the deepest level, fused with a 48-channel stride-4 projection.

    Args:
        in_channels: channels of the deepest level (``in_index``).
        c1_in_channels: channels of the low-level map (``c1_in_index``).
        num_classes: number of output logits per pixel.
        in_index: the backbone output the ASPP reads (ResNet: 3, layer4).
        c1_in_index: the backbone output of the low-level decoder (ResNet: 0, layer1, stride 4).
        rates: dilations of the three separable 3x3 ASPP branches; (12, 24, 36) is right
            for output stride 8.
        channels: ASPP branch, bottleneck and decoder width (512).
        c1_channels: width of the low-level projection (48).
        dropout: ``Dropout2d`` probability before the classifier (0.1); 0 disables it.
        align_corners: ``align_corners`` of the bilinear resizes.
        norm_layer: ``"bn" | "syncbn" | "gn"`` or a callable ``num_features -> nn.Module``.
    """

    def __init__(
        self,
        in_channels: int,
        c1_in_channels: int,
        num_classes: int,
        *,
        in_index: int = 3,
        c1_in_index: int = 0,
        rates: Sequence[int] = (12, 24, 36),
        channels: int = 512,
        c1_channels: int = 48,
        dropout: float = 0.1,
        align_corners: bool = False,
        norm_layer: str | NormLayer = "bn",
    ) -> None:
        super().__init__()
        norm = resolve_norm(norm_layer)
        self.in_channels = in_channels
        self.c1_in_channels = c1_in_channels
        self.channels = channels
        self.c1_channels = c1_channels
        self.num_classes = num_classes
        self.in_index = in_index
        self.c1_in_index = c1_in_index
        self.rates = tuple(int(r) for r in rates)
        self.align_corners = align_corners
        self.image_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), ConvBNReLU(in_channels, channels, 1, norm_layer=norm)
        )
        self.aspp_modules = nn.ModuleList(
            [ConvBNReLU(in_channels, channels, 1, norm_layer=norm)]
            + [
                DepthwiseSeparableConvBNReLU(in_channels, channels, dilation=r, norm_layer=norm)
                for r in self.rates
            ]
        )
        self.bottleneck = ConvBNReLU((len(self.rates) + 2) * channels, channels, 3, norm_layer=norm)
        self.c1_bottleneck = ConvBNReLU(c1_in_channels, c1_channels, 1, norm_layer=norm)
        self.sep_bottleneck = nn.Sequential(
            DepthwiseSeparableConvBNReLU(channels + c1_channels, channels, norm_layer=norm),
            DepthwiseSeparableConvBNReLU(channels, channels, norm_layer=norm),
        )
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        init_mmseg_(self, self.conv_seg)

    def _resize(self, x: Tensor, size: torch.Size) -> Tensor:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        x = features[self.in_index]
        outs = [self._resize(self.image_pool(x), x.shape[-2:])]
        outs += [m(x) for m in self.aspp_modules]
        out = self.bottleneck(torch.cat(outs, dim=1))
        c1 = self.c1_bottleneck(features[self.c1_in_index])
        out = torch.cat([self._resize(out, c1.shape[-2:]), c1], dim=1)
        out = self.sep_bottleneck(out)
        return self.conv_seg(self.dropout(out))


@register_head("deeplabv3plus", output_stride=8)
def _deeplabv3plus(
    feature_info: Sequence[FeatureInfo],
    num_classes: int,
    *,
    output_stride: int,
    align_corners: bool,
    **head_kwargs: object,
) -> nn.Module:
    """DeepLabV3+ (mmseg ``deeplabv3plus_r50-d8``): separable ASPP on level 3, 48-channel c1.

    ``rates`` default to the paper's for ``output_stride`` (12/24/36 at 8, 6/12/18 at 16).
    """
    if "rates" not in head_kwargs:
        head_kwargs["rates"] = default_aspp_rates(output_stride)
    head_kwargs.setdefault("align_corners", align_corners)
    in_index = check_in_index(feature_info, head_kwargs.pop("in_index", -1), head="deeplabv3plus")
    c1_index = check_in_index(
        feature_info, head_kwargs.pop("c1_in_index", 0), head="deeplabv3plus (c1_in_index)"
    )
    if isinstance(in_index, tuple) or isinstance(c1_index, tuple):
        raise ValueError(
            "deeplabv3plus: in_index and c1_in_index each name one backbone level, got "
            f"in_index={in_index!r}, c1_in_index={c1_index!r}"
        )
    return DepthwiseSeparableASPPHead(
        feature_info[in_index][0],
        feature_info[c1_index][0],
        num_classes,
        in_index=in_index,
        c1_in_index=c1_index,
        **head_kwargs,  # type: ignore[arg-type]
    )
