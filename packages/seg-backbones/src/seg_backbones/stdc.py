"""STDC: Short-Term Dense Concatenate networks with BiSeNet's context path.

Fan et al., "Rethinking BiSeNet For Real-time Semantic Segmentation" (CVPR 2021). Layer
for layer as mmsegmentation 1.2.2 ``mmseg/models/backbones/stdc.py``: the backbone is
mmseg's ``STDCContextPathNet`` over ``STDCNet``, as ``configs/_base_/models/stdc.py``
builds it (``channels=(32, 64, 256, 512, 1024)``, ``bottleneck_type='cat'``,
``num_convs=4``, no final conv; context path width 128, fusion 384 -> 256 with
``scale_factor=4``; ``upsample_mode='nearest'``), so that its outputs are what mmseg's
heads read:

* ``backbone`` (``STDCNet``): ``stages.0``/``stages.1`` two 3x3 stride-2 conv-BN-ReLU
  (32, 64 channels), then three stages of STDC modules (STDC1: 2/2/2 modules, STDC2:
  4/5/3; the first of each with stride 2) of 256/512/1024 channels at strides 8/16/32. An
  STDC module ("cat" fusion) is a 1x1 conv to half the width, then 3x3 convs to a quarter,
  an eighth and an eighth (the second sees a stride-2 3x3 depthwise conv-BN of the first in
  a stride-2 module, whose own output is 3x3-average-pooled); the four are concatenated.
* the context path: a global average pool of the stride-32 map through ``conv_avg`` (1x1
  conv-BN-ReLU), added to ``arms[0]`` (attention refinement: 3x3 conv-BN-ReLU gated by a
  sigmoid of a pooled 1x1 conv-BN) of that map, upsampled **nearest** to stride 16,
  ``convs[0]`` (3x3 conv-BN-ReLU); the same with ``arms[1]`` on the stride-16 map, up to
  stride 8, ``convs[1]``;
* ``ffm``: the stride-8 STDC map and the last context map concatenated, 1x1 conv-BN-ReLU
  (``conv0``), plus itself gated by a squeeze-excitation (pool, 1x1 conv + ReLU, 1x1 conv,
  sigmoid; no norm, no bias).

Outputs (mmseg's order): the stride-8 STDC map (256 channels, for the detail head), the
context maps at stride 16 and 8 (128 each, the auxiliary heads'), the fusion (256, stride
8, the decode head's). ``output_stride`` must be 32. Module names are mmseg's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._features import FeatureInfo
from ._registry import register_backbone
from .bisenetv2 import (
    ConvNormAct,
    check_fixed_output_stride,
    check_options,
    convert_realtime_state_dict,
    init_mmseg_backbone_,
)
from .norm import NormLayer, get_norm_layer
from .pretrained import backbone_part

__all__ = ["STDCContextPathNet", "STDCModule", "STDCNet"]

# modules per stage, the first with stride 2 (mmseg ``STDCNet.arch_settings``)
STAGE_DEPTHS: dict[str, tuple[int, int, int]] = {"stdc1": (2, 2, 2), "stdc2": (4, 5, 3)}


class STDCModule(nn.Module):
    """mmseg's ``STDCModule`` with ``fusion_type='cat'``.

    ``layers[0]``: 1x1 conv-BN-ReLU to ``out_channels // 2``; ``layers[i]`` (``i >= 1``):
    3x3 conv-BN-ReLU to ``out_channels // 2**(i + 1)`` (the last to ``// 2**i``). With
    stride 2, ``downsample`` (3x3 stride-2 depthwise conv-BN) sits between ``layers[0]`` and
    ``layers[1]`` and ``layers[0]``'s output enters the concatenation through ``skip``
    (3x3 stride-2 average pool).
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, num_convs: int, norm: NormLayer
    ) -> None:
        super().__init__()
        if num_convs < 2:
            raise ValueError(f"STDCModule: num_convs must be >= 2, got {num_convs}")
        self.with_downsample = stride == 2
        half = out_channels // 2
        layers = [ConvNormAct(in_channels, half, 1, norm_layer=norm)]
        for i in range(1, num_convs):
            factor = 2 ** (i + 1) if i != num_convs - 1 else 2**i
            layers.append(
                ConvNormAct(out_channels // 2**i, out_channels // factor, 3, norm_layer=norm)
            )
        self.layers = nn.ModuleList(layers)
        if self.with_downsample:
            self.downsample = ConvNormAct(
                half, half, 3, stride=2, groups=half, norm_layer=norm, act=False
            )
            self.skip = nn.AvgPool2d(kernel_size=3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x0 = self.layers[0](x)
        x = self.downsample(x0) if self.with_downsample else x0
        outs = [self.skip(x0) if self.with_downsample else x0]
        for layer in self.layers[1:]:
            x = layer(x)
            outs.append(x)
        return torch.cat(outs, dim=1)


class STDCNet(nn.Module):
    """mmseg's ``STDCNet`` (``bottleneck_type='cat'``, no final conv): the three STDC stages.

    ``forward`` returns the outputs of ``stages.2..4`` (strides 8, 16, 32).
    """

    def __init__(
        self,
        depths: Sequence[int],
        channels: Sequence[int],
        *,
        num_convs: int,
        norm: NormLayer,
        in_chans: int,
    ) -> None:
        super().__init__()
        if len(channels) != 5 or len(depths) != 3:
            raise ValueError(
                f"STDCNet: channels needs 5 widths and depths 3, got {channels} and {depths}"
            )
        stages: list[nn.Module] = [
            ConvNormAct(in_chans, channels[0], 3, stride=2, norm_layer=norm),
            ConvNormAct(channels[0], channels[1], 3, stride=2, norm_layer=norm),
        ]
        for i, depth in enumerate(depths):
            cin, cout = channels[i + 1], channels[i + 2]
            stages.append(
                nn.Sequential(
                    *(
                        STDCModule(
                            cin if j == 0 else cout, cout, 2 if j == 0 else 1, num_convs, norm
                        )
                        for j in range(depth)
                    )
                )
            )
        self.stages = nn.ModuleList(stages)
        self.num_shallow = 2

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs[self.num_shallow :]


class AttentionRefinementModule(nn.Module):
    """BiSeNet's ARM (mmseg ``bisenetv1.AttentionRefinementModule``): ``x * sigmoid(BN(conv(pool(x))))``
    after a 3x3 conv-BN-ReLU."""

    def __init__(self, in_channels: int, out_channels: int, norm: NormLayer) -> None:
        super().__init__()
        self.conv_layer = ConvNormAct(in_channels, out_channels, 3, norm_layer=norm)
        self.atten_conv_layer = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            ConvNormAct(out_channels, out_channels, 1, norm_layer=norm, act=False, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_layer(x)
        return x * self.atten_conv_layer(x)


class FeatureFusionModule(nn.Module):
    """STDC's fusion: ``x + x * SE(x)`` with ``x = conv0(cat(spatial, context))``."""

    def __init__(
        self, in_channels: int, out_channels: int, scale_factor: int, norm: NormLayer
    ) -> None:
        super().__init__()
        mid = out_channels // scale_factor
        self.conv0 = ConvNormAct(in_channels, out_channels, 1, norm_layer=norm)
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            ConvNormAct(out_channels, mid, 1, norm_layer=None, bias=False),
            ConvNormAct(mid, out_channels, 1, norm_layer=None, bias=False, act=False),
            nn.Sigmoid(),
        )

    def forward(self, spatial: Tensor, context: Tensor) -> Tensor:
        x = self.conv0(torch.cat([spatial, context], dim=1))
        return x + x * self.attention(x)


class STDCContextPathNet(nn.Module):
    """STDCNet + context path + fusion (see the module docstring).

    Args:
        variant: ``"stdc1"`` or ``"stdc2"`` (the stage depths).
        channels: the five STDCNet widths ((32, 64, 256, 512, 1024)).
        num_convs: convs per STDC module (4).
        context_channels: width of the context path (mmseg ``out_channels``, 128).
        fusion_channels: output width of the fusion (256).
        fusion_scale: squeeze ratio of the fusion's attention (4).
        norm_layer: ``"bn" | "syncbn" | "gn" | "frozen_bn"`` or a callable.
        in_chans: input channels.
    """

    def __init__(
        self,
        *,
        variant: str = "stdc1",
        channels: Sequence[int] = (32, 64, 256, 512, 1024),
        num_convs: int = 4,
        context_channels: int = 128,
        fusion_channels: int = 256,
        fusion_scale: int = 4,
        norm_layer: str | NormLayer = "bn",
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if variant not in STAGE_DEPTHS:
            raise ValueError(f"unknown STDC variant {variant!r}; valid: {sorted(STAGE_DEPTHS)}")
        channels = tuple(int(c) for c in channels)
        norm = get_norm_layer(norm_layer)
        self.backbone = STDCNet(
            STAGE_DEPTHS[variant], channels, num_convs=num_convs, norm=norm, in_chans=in_chans
        )
        last = (channels[4], channels[3])  # mmseg ``last_in_channels``: deepest first
        self.arms = nn.ModuleList(
            AttentionRefinementModule(c, context_channels, norm) for c in last
        )
        self.convs = nn.ModuleList(
            ConvNormAct(context_channels, context_channels, 3, norm_layer=norm) for _ in last
        )
        self.conv_avg = ConvNormAct(channels[4], context_channels, 1, norm_layer=norm)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.ffm = FeatureFusionModule(
            channels[2] + context_channels, fusion_channels, fusion_scale, norm
        )
        self.feature_info = [
            FeatureInfo(channels[2], 8),
            FeatureInfo(context_channels, 16),
            FeatureInfo(context_channels, 8),
            FeatureInfo(fusion_channels, 8),
        ]
        init_mmseg_backbone_(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = self.backbone(x)  # strides 8, 16, 32
        up = F.interpolate(self.conv_avg(self.avg_pool(outs[-1])), size=outs[-1].shape[-2:])
        context = []
        for i, (arm, conv) in enumerate(zip(self.arms, self.convs, strict=True)):
            level = outs[len(outs) - 1 - i]
            up = conv(F.interpolate(arm(level) + up, size=outs[len(outs) - 2 - i].shape[-2:]))
            context.append(up)
        return [outs[0], *context, self.ffm(outs[0], context[-1])]

    def load_pretrained_state_dict(
        self, state_dict: Mapping[str, Tensor], *, source: str = "auto"
    ) -> None:
        """:func:`seg_backbones.load_pretrained`'s hook: mmseg weights (our names).

        Either the whole context-path network (mmseg's ``backbone.*`` of an STDC model) or
        an ``STDCNet`` alone (keys ``stages.*``: ImageNet weights, as mmseg's
        ``stdc*_in1k-pre`` configs load into ``backbone_cfg``), which fills ``backbone``
        only and leaves the context path as initialised.
        """
        sd = dict(state_dict)
        sd = backbone_part(sd, use=None)  # our keys include backbone.* (the STDCNet)
        if sd and all(k.startswith("stages.") for k in sd):
            self.backbone.load_state_dict(
                convert_realtime_state_dict(sd, source=source, model=self.backbone)
            )
            return
        self.load_state_dict(convert_realtime_state_dict(sd, source=source, model=self))


def _create_stdc(
    name: str,
    *,
    output_stride: int = 32,
    channels: Sequence[int] = (32, 64, 256, 512, 1024),
    num_convs: int = 4,
    context_channels: int = 128,
    fusion_channels: int = 256,
    fusion_scale: int = 4,
    norm_layer: str | NormLayer = "bn",
    in_chans: int = 3,
) -> STDCContextPathNet:
    check_fixed_output_stride(name, output_stride)
    return STDCContextPathNet(
        variant=name,
        channels=channels,
        num_convs=num_convs,
        context_channels=context_channels,
        fusion_channels=fusion_channels,
        fusion_scale=fusion_scale,
        norm_layer=norm_layer,
        in_chans=in_chans,
    )


@register_backbone("stdc1")
def stdc1(**kwargs: Any) -> STDCContextPathNet:
    """STDC1 + context path (mmseg ``stdc1``): STDC (256, /8), context (128, /16; 128, /8),
    fusion (256, /8)."""
    check_options("stdc1", kwargs, _create_stdc)
    return _create_stdc("stdc1", **kwargs)


@register_backbone("stdc2")
def stdc2(**kwargs: Any) -> STDCContextPathNet:
    """STDC2 + context path (mmseg ``stdc2``): as :func:`stdc1` with 4/5/3 STDC modules."""
    check_options("stdc2", kwargs, _create_stdc)
    return _create_stdc("stdc2", **kwargs)
