"""Fast-SCNN: learning to downsample, a global feature extractor, feature fusion.

Poudel et al., "Fast-SCNN: Fast Semantic Segmentation Network" (BMVC 2019). Layer for
layer as mmsegmentation 1.2.2 ``mmseg/models/backbones/fast_scnn.py`` with
``configs/_base_/models/fast_scnn.py`` (``downsample_dw_channels=(32, 48)``, 64 channels
into the global feature extractor, ``global_block_channels=(64, 96, 128)`` with strides
(2, 2, 1), 3 inverted residuals each (expansion 6), 128 out, fusion to 128;
``norm_cfg`` BN with ``momentum=0.01``, ``align_corners=False``):

* ``learning_to_downsample``: a 3x3 stride-2 conv-BN-ReLU, then two depthwise-separable
  stride-2 convs (BN after the depthwise conv, BN + ReLU after the pointwise one): stride 8;
* ``global_feature_extractor``: ``bottleneck1..3`` (MobileNetV2 inverted residuals with
  **ReLU**, not ReLU6: mmseg passes the backbone's ``act_cfg``), a pyramid pooling module
  (``ppm``: adaptive average pools 1/2/3/6, 1x1 conv-BN-ReLU to a quarter width, bilinear
  back), the input and the four pools concatenated and fused by ``out`` (3x3 conv-BN-ReLU):
  stride 32;
* ``feature_fusion``: the global features resized bilinearly to the stride-8 map, a 3x3
  depthwise conv-BN-ReLU and a 1x1 conv-BN, added to a 1x1 conv-BN of the stride-8 map, ReLU.

Outputs, as mmseg's ``out_indices=(0, 1, 2)``: the stride-8 map (64 channels), the global
features (128, stride 32) and the fusion (128, stride 8). ``output_stride`` must be 32.
Module names are mmseg's.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._features import FeatureInfo
from ._registry import register_backbone
from .bisenetv2 import (
    ConvNormAct,
    DepthwiseSeparableConv,
    check_fixed_output_stride,
    check_options,
    convert_realtime_state_dict,
    init_mmseg_backbone_,
)
from .norm import NormLayer, get_norm_layer

__all__ = ["FastSCNN", "fast_scnn_norm"]

BN_MOMENTUM = 0.01  # the config's norm_cfg (PyTorch's convention: weight of the new batch)


def fast_scnn_norm(norm_layer: str | NormLayer) -> NormLayer:
    """``norm_layer`` resolved; ``"bn"``/``"syncbn"`` get Fast-SCNN's ``momentum=0.01``."""
    norm = get_norm_layer(norm_layer)
    if isinstance(norm_layer, str) and norm_layer in ("bn", "syncbn"):
        return functools.partial(norm, momentum=BN_MOMENTUM)  # type: ignore[call-arg]
    return norm


class InvertedResidual(nn.Module):
    """MobileNetV2's block as mmseg's ``InvertedResidual`` (``conv.0/1/2``), ReLU activations.

    1x1 expansion conv-BN-ReLU (absent for ``expand_ratio == 1``), 3x3 depthwise
    conv-BN-ReLU with ``stride``, 1x1 projection conv-BN; residual when the shape is kept.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, expand_ratio: int, norm: NormLayer
    ) -> None:
        super().__init__()
        hidden = round(in_channels * expand_ratio)  # mmseg: int(round(...))
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvNormAct(in_channels, hidden, 1, norm_layer=norm))
        layers += [
            ConvNormAct(hidden, hidden, 3, stride=stride, groups=hidden, norm_layer=norm),
            ConvNormAct(hidden, out_channels, 1, norm_layer=norm, act=False),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class LearningToDownsample(nn.Module):
    """3x3 stride-2 conv, then two depthwise-separable stride-2 convs (stride 8)."""

    def __init__(
        self, in_chans: int, dw_channels: Sequence[int], out_channels: int, norm: NormLayer
    ) -> None:
        super().__init__()
        c1, c2 = dw_channels
        self.conv = ConvNormAct(in_chans, c1, 3, stride=2, norm_layer=norm)
        sep = functools.partial(
            DepthwiseSeparableConv, stride=2, dw_norm=norm, pw_norm=norm, dw_act=False, pw_act=True
        )
        self.dsconv1 = sep(c1, c2, 3)
        self.dsconv2 = sep(c2, out_channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.dsconv2(self.dsconv1(self.conv(x)))


class PPM(nn.ModuleList):
    """Pyramid pooling (mmseg's ``PPM``): per scale, adaptive average pool + 1x1 conv-BN-ReLU,
    resized bilinearly to the input; ``forward`` returns the list of the pooled maps."""

    def __init__(
        self,
        pool_scales: Sequence[int],
        in_channels: int,
        channels: int,
        norm: NormLayer,
        align_corners: bool,
    ) -> None:
        super().__init__(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(s), ConvNormAct(in_channels, channels, 1, norm_layer=norm)
            )
            for s in pool_scales
        )
        self.align_corners = align_corners

    def forward(self, x: Tensor) -> list[Tensor]:  # type: ignore[override]
        return [
            F.interpolate(
                branch(x), size=x.shape[-2:], mode="bilinear", align_corners=self.align_corners
            )
            for branch in self
        ]


class GlobalFeatureExtractor(nn.Module):
    """Three groups of inverted residuals, pyramid pooling, a 3x3 fusing conv (stride 32)."""

    def __init__(
        self,
        in_channels: int,
        block_channels: Sequence[int],
        out_channels: int,
        *,
        expand_ratio: int,
        num_blocks: Sequence[int],
        strides: Sequence[int],
        pool_scales: Sequence[int],
        norm: NormLayer,
        align_corners: bool,
    ) -> None:
        super().__init__()
        cin = in_channels
        for i, (c, n, s) in enumerate(zip(block_channels, num_blocks, strides, strict=True)):
            blocks = [InvertedResidual(cin, c, s, expand_ratio, norm)]
            blocks += [InvertedResidual(c, c, 1, expand_ratio, norm) for _ in range(n - 1)]
            self.add_module(f"bottleneck{i + 1}", nn.Sequential(*blocks))
            cin = c
        self.num_groups = len(block_channels)
        self.ppm = PPM(pool_scales, cin, cin // 4, norm, align_corners)
        self.out = ConvNormAct(
            cin + len(pool_scales) * (cin // 4), out_channels, 3, norm_layer=norm
        )

    def forward(self, x: Tensor) -> Tensor:
        for i in range(self.num_groups):
            x = getattr(self, f"bottleneck{i + 1}")(x)
        return self.out(torch.cat([x, *self.ppm(x)], dim=1))


class FeatureFusionModule(nn.Module):
    """``ReLU(conv_higher_res(high) + conv_lower_res(dwconv(up(low))))``."""

    def __init__(
        self,
        higher_in_channels: int,
        lower_in_channels: int,
        out_channels: int,
        norm: NormLayer,
        align_corners: bool,
    ) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.dwconv = ConvNormAct(
            lower_in_channels, out_channels, 3, groups=out_channels, norm_layer=norm
        )
        self.conv_lower_res = ConvNormAct(out_channels, out_channels, 1, norm_layer=norm, act=False)
        self.conv_higher_res = ConvNormAct(
            higher_in_channels, out_channels, 1, norm_layer=norm, act=False
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, high: Tensor, low: Tensor) -> Tensor:
        low = F.interpolate(
            low, size=high.shape[-2:], mode="bilinear", align_corners=self.align_corners
        )
        low = self.conv_lower_res(self.dwconv(low))
        return self.relu(self.conv_higher_res(high) + low)


class FastSCNN(nn.Module):
    """The Fast-SCNN backbone (see the module docstring).

    Args:
        downsample_dw_channels: widths of the two depthwise-separable downsampling convs.
        global_in_channels: output width of the downsampling (the stride-8 map).
        global_block_channels: widths of the three inverted-residual groups.
        global_block_strides: their strides ((2, 2, 1): stride 32).
        num_blocks: inverted residuals per group ((3, 3, 3)).
        expand_ratio: their expansion (6).
        pool_scales: the pyramid pooling bins ((1, 2, 3, 6)).
        global_out_channels: output width of the global feature extractor.
        fusion_out_channels: output width of the fusion.
        align_corners: of the bilinear resizes (mmseg's config: False).
        norm_layer: ``"bn" | "syncbn"`` (with ``momentum=0.01``), ``"gn"``, ``"frozen_bn"`` or
            a callable.
        in_chans: input channels.

    ``forward(x)`` returns ``[stride-8 map, global features, fusion]``.
    """

    def __init__(
        self,
        *,
        downsample_dw_channels: Sequence[int] = (32, 48),
        global_in_channels: int = 64,
        global_block_channels: Sequence[int] = (64, 96, 128),
        global_block_strides: Sequence[int] = (2, 2, 1),
        num_blocks: Sequence[int] = (3, 3, 3),
        expand_ratio: int = 6,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        global_out_channels: int = 128,
        fusion_out_channels: int = 128,
        align_corners: bool = False,
        norm_layer: str | NormLayer = "bn",
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if len(downsample_dw_channels) != 2 or not (
            len(global_block_channels) == len(global_block_strides) == len(num_blocks) == 3
        ):
            raise ValueError(
                "FastSCNN: downsample_dw_channels needs 2 widths and global_block_channels, "
                "global_block_strides and num_blocks 3 values each, got "
                f"{downsample_dw_channels}, {global_block_channels}, {global_block_strides}, "
                f"{num_blocks}"
            )
        if fusion_out_channels != global_out_channels:
            raise ValueError(
                f"FastSCNN: fusion_out_channels={fusion_out_channels} must equal "
                f"global_out_channels={global_out_channels} (the fusion's depthwise conv has "
                "groups=fusion_out_channels over the global features, as in mmseg)"
            )
        norm = fast_scnn_norm(norm_layer)
        self.learning_to_downsample = LearningToDownsample(
            in_chans, downsample_dw_channels, global_in_channels, norm
        )
        self.global_feature_extractor = GlobalFeatureExtractor(
            global_in_channels,
            global_block_channels,
            global_out_channels,
            expand_ratio=expand_ratio,
            num_blocks=num_blocks,
            strides=global_block_strides,
            pool_scales=pool_scales,
            norm=norm,
            align_corners=align_corners,
        )
        self.feature_fusion = FeatureFusionModule(
            global_in_channels, global_out_channels, fusion_out_channels, norm, align_corners
        )
        stride = 8
        for s in global_block_strides:
            stride *= s
        self.feature_info = [
            FeatureInfo(global_in_channels, 8),
            FeatureInfo(global_out_channels, stride),
            FeatureInfo(fusion_out_channels, 8),
        ]
        init_mmseg_backbone_(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        high = self.learning_to_downsample(x)
        low = self.global_feature_extractor(high)
        return [high, low, self.feature_fusion(high, low)]

    def load_pretrained_state_dict(
        self, state_dict: Mapping[str, Tensor], *, source: str = "auto"
    ) -> None:
        """:func:`seg_backbones.load_pretrained`'s hook: mmseg weights (our names)."""
        self.load_state_dict(convert_realtime_state_dict(state_dict, source=source, model=self))


def _create_fast_scnn(
    *,
    output_stride: int = 32,
    downsample_dw_channels: Sequence[int] = (32, 48),
    global_in_channels: int = 64,
    global_block_channels: Sequence[int] = (64, 96, 128),
    global_block_strides: Sequence[int] = (2, 2, 1),
    num_blocks: Sequence[int] = (3, 3, 3),
    expand_ratio: int = 6,
    pool_scales: Sequence[int] = (1, 2, 3, 6),
    global_out_channels: int = 128,
    fusion_out_channels: int = 128,
    align_corners: bool = False,
    norm_layer: str | NormLayer = "bn",
    in_chans: int = 3,
) -> FastSCNN:
    check_fixed_output_stride("fast_scnn", output_stride)
    return FastSCNN(
        downsample_dw_channels=downsample_dw_channels,
        global_in_channels=global_in_channels,
        global_block_channels=global_block_channels,
        global_block_strides=global_block_strides,
        num_blocks=num_blocks,
        expand_ratio=expand_ratio,
        pool_scales=pool_scales,
        global_out_channels=global_out_channels,
        fusion_out_channels=fusion_out_channels,
        align_corners=align_corners,
        norm_layer=norm_layer,
        in_chans=in_chans,
    )


@register_backbone("fast_scnn")
def fast_scnn(**kwargs: Any) -> FastSCNN:
    """Fast-SCNN (mmseg ``fast_scnn``): stride-8 map (64), global (128, /32), fusion (128, /8)."""
    check_options("fast_scnn", kwargs, _create_fast_scnn)
    return _create_fast_scnn(**kwargs)
