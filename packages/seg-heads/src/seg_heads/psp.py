"""PSPNet head: the Pyramid Pooling Module (Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017).

Layer for layer as mmsegmentation ``mmseg/models/decode_heads/psp_head.py``
(torchcv's ``pspnet.py`` is the same): for each bin size in ``pool_scales``
(1, 2, 3, 6) adaptive average pooling -> 1x1 conv to ``channels`` (512) + BN +
ReLU -> bilinear upsampling back to the input size; concatenation
``[input, bin_1, ..., bin_4]`` (2048 + 4 x 512 on a ResNet-50/101 layer4);
``bottleneck`` 3x3 conv to ``channels`` + BN + ReLU; ``Dropout2d(0.1)``; 1x1
classifier ``conv_seg``. Module names follow mmseg (``psp_modules.<i>.1.conv``,
``bottleneck.conv``, ``conv_seg``) so its checkpoints load by name.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seg_backbones import FeatureInfo

from ._layers import ConvBNReLU, NormLayer, check_in_index, init_mmseg_, pick, resolve_norm
from ._registry import register_head

__all__ = ["PSPHead"]


class PSPHead(nn.Module):
    """Pyramid pooling over one feature map, then a 3x3 bottleneck and a 1x1 classifier.

    Args:
        in_channels: channels of the input feature map (from ``backbone.feature_info``).
        num_classes: number of output logits per pixel.
        in_index: the backbone output the head reads (-1: the last); ``forward`` takes the
            backbone's feature list (or that one map as a tensor).
        channels: width of each pooling branch and of the bottleneck (512).
        pool_scales: output sizes of the adaptive average pools (1, 2, 3, 6).
        dropout: ``Dropout2d`` probability before the classifier (0.1); 0 disables it.
        align_corners: ``align_corners`` of the bins' bilinear upsampling (mmseg uses
            the model's setting).
        norm_layer: ``"bn" | "syncbn" | "gn"`` or a callable ``num_features -> nn.Module``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        in_index: int = -1,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        align_corners: bool = False,
        norm_layer: str | NormLayer = "bn",
    ) -> None:
        super().__init__()
        if not pool_scales:
            raise ValueError("PSPHead needs at least one pool scale, got pool_scales=()")
        norm = resolve_norm(norm_layer)
        self.in_channels = in_channels
        self.channels = channels
        self.num_classes = num_classes
        self.in_index = in_index
        self.pool_scales = tuple(int(s) for s in pool_scales)
        self.align_corners = align_corners
        self.psp_modules = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(scale),
                ConvBNReLU(in_channels, channels, 1, norm_layer=norm),
            )
            for scale in self.pool_scales
        )
        self.bottleneck = ConvBNReLU(
            in_channels + len(self.pool_scales) * channels, channels, 3, norm_layer=norm
        )
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        init_mmseg_(self, self.conv_seg)

    def forward(self, features: Sequence[Tensor] | Tensor) -> Tensor:
        x = pick(features, self.in_index)
        size = x.shape[-2:]
        outs = [x]
        for branch in self.psp_modules:
            outs.append(
                F.interpolate(
                    branch(x), size=size, mode="bilinear", align_corners=self.align_corners
                )
            )
        out = self.bottleneck(torch.cat(outs, dim=1))
        return self.conv_seg(self.dropout(out))


@register_head("pspnet")
def _pspnet(
    feature_info: Sequence[FeatureInfo],
    num_classes: int,
    *,
    output_stride: int,
    align_corners: bool,
    **head_kwargs: object,
) -> nn.Module:
    """PSPNet (mmseg ``pspnet_r50-d8`` / torchcv): bins (1, 2, 3, 6), 512 channels."""
    del output_stride  # bins are relative to the feature map, not the stride
    head_kwargs.setdefault("align_corners", align_corners)
    in_index = check_in_index(feature_info, head_kwargs.pop("in_index", -1), head="pspnet")
    return PSPHead(
        feature_info[in_index][0],  # type: ignore[index]
        num_classes,
        in_index=in_index,  # type: ignore[arg-type]
        **head_kwargs,  # type: ignore[arg-type]
    )
