"""BiSeNetV2: a wide shallow detail branch, a narrow deep semantic branch, guided aggregation.

Yu et al., "BiSeNet V2: Bilateral Network with Guided Aggregation for Real-time Semantic
Segmentation" (IJCV 2021). Layer for layer as mmsegmentation 1.2.2
``mmseg/models/backbones/bisenetv2.py`` with ``configs/_base_/models/bisenetv2.py``
(``detail_channels=(64, 64, 128)``, ``semantic_channels=(16, 32, 64, 128)``, expansion 6,
``bga_channels=128``, ``align_corners=False``):

* ``detail``: three stages of 3x3 conv-BN-ReLU (the first of each with stride 2; 2, 3 and 3
  convs), stride 8;
* ``semantic``: ``stage1`` the stem block (3x3 stride-2 conv; then a 1x1 + 3x3 stride-2
  conv branch beside a 3x3 stride-2 max-pool, concatenated and fused by a 3x3 conv; stride
  4), ``stage2``/``stage3`` two gather-and-expansion layers (the first with stride 2),
  ``stage4`` four of them, ``stage4_CEBlock`` the context embedding (global average pool +
  BN, 1x1 conv-BN-ReLU added to the input, 3x3 conv-BN-ReLU);
* ``bga``: the bilateral guided aggregation of the detail map and the CE block's output
  (two sigmoid gates, bilinear resizes, a 3x3 conv-BN-ReLU).

Outputs, as mmseg's ``out_indices=(0, 1, 2, 3, 4)``: the BGA map (128 channels, stride 8),
then the semantic stages 1-4 (16/32/64/128 channels at strides 4/8/16/32) that the
booster (auxiliary) heads read. What the paper draws differently (the ReLU in the GE
layer's depthwise convs, the BN-ReLU of the CE block's last conv) follows mmseg, as
mmseg's comments note. The network has a fixed stride-32 semantic path: ``output_stride``
must be 32.

Module names are mmseg's (``conv``/``bn`` as mmcv's ``ConvModule``,
``depthwise_conv``/``pointwise_conv`` as its ``DepthwiseSeparableConvModule``), so mmseg
weights load by name. :class:`ConvNormAct` and :class:`DepthwiseSeparableConv` are shared
with the Fast-SCNN and STDC families.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._features import FeatureInfo
from ._registry import register_backbone
from .norm import NormLayer, get_norm_layer
from .pretrained import (
    IncompatibleWeightsError,
    backbone_part,
    check_state_dict,
    reconcile_buffers,
)

__all__ = [
    "BiSeNetV2",
    "ConvNormAct",
    "DepthwiseSeparableConv",
    "convert_realtime_state_dict",
    "init_mmseg_backbone_",
]


class ConvNormAct(nn.Module):
    """``conv`` -> ``bn`` -> ReLU, each optional, as mmcv's ``ConvModule``.

    The conv has a bias exactly when there is no norm (mmcv's ``bias="auto"``) unless
    ``bias`` says otherwise; padding defaults to ``dilation * (kernel_size // 2)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        groups: int = 1,
        norm_layer: NormLayer | None = nn.BatchNorm2d,
        act: bool = True,
        bias: bool | None = None,
    ) -> None:
        super().__init__()
        if padding is None:
            padding = dilation * (kernel_size // 2)
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=norm_layer is None if bias is None else bias,
        )
        self.bn = norm_layer(out_channels) if norm_layer is not None else None
        self.activate = nn.ReLU(inplace=True) if act else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.activate is not None:
            x = self.activate(x)
        return x


class DepthwiseSeparableConv(nn.Module):
    """mmcv's ``DepthwiseSeparableConvModule``: ``depthwise_conv`` then ``pointwise_conv`` (1x1).

    ``dw_norm``/``pw_norm`` (``None``: no norm, the conv gets a bias) and ``dw_act``/``pw_act``
    (ReLU or none) configure the two :class:`ConvNormAct` units.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        dw_norm: NormLayer | None,
        pw_norm: NormLayer | None,
        dw_act: bool,
        pw_act: bool,
    ) -> None:
        super().__init__()
        self.depthwise_conv = ConvNormAct(
            in_channels,
            in_channels,
            kernel_size,
            stride=stride,
            groups=in_channels,
            norm_layer=dw_norm,
            act=dw_act,
        )
        self.pointwise_conv = ConvNormAct(
            in_channels, out_channels, 1, norm_layer=pw_norm, act=pw_act
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


def init_mmseg_backbone_(module: nn.Module) -> None:
    """mmseg's initialisation of these backbones: Kaiming-normal (fan_out, ReLU) convs with
    zero bias, norms weight 1 / bias 0 (``init_cfg=[Kaiming(Conv2d), Constant(1, _BatchNorm)]``
    of BiSeNetV2 and Fast-SCNN; mmcv ``ConvModule.init_weights`` for STDC)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm | nn.GroupNorm) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------- branches


class DetailBranch(nn.Module):
    """Three stages of 3x3 conv-BN-ReLU, stride 2 at the first conv of each (stride 8)."""

    def __init__(self, channels: Sequence[int], in_chans: int, norm: NormLayer) -> None:
        super().__init__()
        stages = []
        cin = in_chans
        for i, c in enumerate(channels):
            n_convs = 2 if i == 0 else 3
            convs = [ConvNormAct(cin, c, 3, stride=2, norm_layer=norm)]
            convs += [ConvNormAct(c, c, 3, norm_layer=norm) for _ in range(n_convs - 1)]
            stages.append(nn.Sequential(*convs))
            cin = c
        self.detail_branch = nn.ModuleList(stages)

    def forward(self, x: Tensor) -> Tensor:
        for stage in self.detail_branch:
            x = stage(x)
        return x


class StemBlock(nn.Module):
    """The semantic branch's stem: stride 4, ``out_channels`` wide."""

    def __init__(self, in_chans: int, out_channels: int, norm: NormLayer) -> None:
        super().__init__()
        self.conv_first = ConvNormAct(in_chans, out_channels, 3, stride=2, norm_layer=norm)
        self.convs = nn.Sequential(
            ConvNormAct(out_channels, out_channels // 2, 1, norm_layer=norm),
            ConvNormAct(out_channels // 2, out_channels, 3, stride=2, norm_layer=norm),
        )
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.fuse_last = ConvNormAct(out_channels * 2, out_channels, 3, norm_layer=norm)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_first(x)
        return self.fuse_last(torch.cat([self.convs(x), self.pool(x)], dim=1))


class GELayer(nn.Module):
    """Gather-and-expansion layer: 3x3 conv, depthwise expansion, 1x1 projection, residual.

    Stride 1: one 3x3 depthwise conv to ``in_channels * exp_ratio`` (BN, ReLU), identity
    shortcut. Stride 2: a stride-2 depthwise conv (BN, no ReLU) then a 3x3 depthwise conv
    (BN, ReLU), and a depthwise-separable stride-2 shortcut (BN after both, no ReLU).
    """

    def __init__(
        self, in_channels: int, out_channels: int, exp_ratio: int, stride: int, norm: NormLayer
    ) -> None:
        super().__init__()
        mid = in_channels * exp_ratio
        self.conv1 = ConvNormAct(in_channels, in_channels, 3, norm_layer=norm)
        self.shortcut: nn.Module | None
        if stride == 1:
            self.dwconv = nn.Sequential(
                ConvNormAct(in_channels, mid, 3, groups=in_channels, norm_layer=norm)
            )
            self.shortcut = None
        else:
            self.dwconv = nn.Sequential(
                ConvNormAct(
                    in_channels,
                    mid,
                    3,
                    stride=stride,
                    groups=in_channels,
                    norm_layer=norm,
                    act=False,
                ),
                ConvNormAct(mid, mid, 3, groups=mid, norm_layer=norm),
            )
            self.shortcut = nn.Sequential(
                DepthwiseSeparableConv(
                    in_channels,
                    out_channels,
                    3,
                    stride=stride,
                    dw_norm=norm,
                    pw_norm=norm,
                    dw_act=False,
                    pw_act=False,
                )
            )
        self.conv2 = nn.Sequential(ConvNormAct(mid, out_channels, 1, norm_layer=norm, act=False))
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(self.dwconv(self.conv1(x)))
        return self.act(out + (x if self.shortcut is None else self.shortcut(x)))


class CEBlock(nn.Module):
    """Context embedding: ``conv_last(x + conv_gap(BN(avgpool(x))))``."""

    def __init__(self, channels: int, norm: NormLayer) -> None:
        super().__init__()
        self.gap = nn.Sequential(nn.AdaptiveAvgPool2d(1), norm(channels))
        self.conv_gap = ConvNormAct(channels, channels, 1, norm_layer=norm)
        self.conv_last = ConvNormAct(channels, channels, 3, norm_layer=norm)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_last(x + self.conv_gap(self.gap(x)))


class SemanticBranch(nn.Module):
    """``stage1`` (stem) .. ``stage{n}`` (GE layers) and ``stage{n}_CEBlock``; all outputs."""

    def __init__(
        self, channels: Sequence[int], in_chans: int, exp_ratio: int, norm: NormLayer
    ) -> None:
        super().__init__()
        self.stage_names: list[str] = []
        n = len(channels)
        for i, c in enumerate(channels):
            name = f"stage{i + 1}"
            if i == 0:
                stage: nn.Module = StemBlock(in_chans, c, norm)
            else:
                depth = 4 if i == n - 1 else 2
                stage = nn.Sequential(
                    GELayer(channels[i - 1], c, exp_ratio, 2, norm),
                    *(GELayer(c, c, exp_ratio, 1, norm) for _ in range(depth - 1)),
                )
            self.add_module(name, stage)
            self.stage_names.append(name)
        self.add_module(f"stage{n}_CEBlock", CEBlock(channels[-1], norm))
        self.stage_names.append(f"stage{n}_CEBlock")

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for name in self.stage_names:
            x = getattr(self, name)(x)
            outs.append(x)
        return outs


class BGALayer(nn.Module):
    """Bilateral guided aggregation of the detail (stride 8) and semantic (stride 32) maps.

    ``conv(dw(d) * sigmoid(up(conv_s(s))) + up(down(d) * sigmoid(dw(s))))``: the depthwise-
    separable units have a BN after the depthwise conv only (the pointwise conv has a bias),
    ``down`` is a stride-2 3x3 conv + BN then a 3x3 stride-2 average pool; ``up`` resizes
    bilinearly to the detail map's size.
    """

    def __init__(self, channels: int, align_corners: bool, norm: NormLayer) -> None:
        super().__init__()
        self.align_corners = align_corners

        def dwsep() -> nn.Sequential:
            return nn.Sequential(
                DepthwiseSeparableConv(
                    channels, channels, 3, dw_norm=norm, pw_norm=None, dw_act=False, pw_act=False
                )
            )

        self.detail_dwconv = dwsep()
        self.detail_down = nn.Sequential(
            ConvNormAct(channels, channels, 3, stride=2, norm_layer=norm, act=False),
            nn.AvgPool2d(kernel_size=3, stride=2, padding=1),
        )
        self.semantic_conv = nn.Sequential(
            ConvNormAct(channels, channels, 3, norm_layer=norm, act=False)
        )
        self.semantic_dwconv = dwsep()
        self.conv = ConvNormAct(channels, channels, 3, norm_layer=norm)

    def _resize(self, x: Tensor, like: Tensor) -> Tensor:
        return F.interpolate(
            x, size=like.shape[-2:], mode="bilinear", align_corners=self.align_corners
        )

    def forward(self, x_d: Tensor, x_s: Tensor) -> Tensor:
        detail = self.detail_dwconv(x_d)
        fuse_1 = detail * torch.sigmoid(self._resize(self.semantic_conv(x_s), detail))
        fuse_2 = self.detail_down(x_d) * torch.sigmoid(self.semantic_dwconv(x_s))
        return self.conv(fuse_1 + self._resize(fuse_2, fuse_1))


class BiSeNetV2(nn.Module):
    """The BiSeNetV2 backbone (see the module docstring).

    Args:
        detail_channels: widths of the detail branch's three stages.
        semantic_channels: widths of the semantic branch's stages (stem first).
        exp_ratio: expansion of the GE layers (6).
        bga_channels: width of the aggregation; must equal the detail branch's and the
            semantic branch's last widths.
        align_corners: of the BGA's bilinear resizes (mmseg's config: False).
        norm_layer: ``"bn" | "syncbn" | "gn" | "frozen_bn"`` or a callable.
        in_chans: input channels.

    ``forward(x)`` returns ``[bga, semantic stage1, stage2, stage3, stage4]``.
    """

    def __init__(
        self,
        *,
        detail_channels: Sequence[int] = (64, 64, 128),
        semantic_channels: Sequence[int] = (16, 32, 64, 128),
        exp_ratio: int = 6,
        bga_channels: int = 128,
        align_corners: bool = False,
        norm_layer: str | NormLayer = "bn",
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        detail_channels = tuple(int(c) for c in detail_channels)
        semantic_channels = tuple(int(c) for c in semantic_channels)
        if len(detail_channels) != 3 or len(semantic_channels) != 4:
            raise ValueError(
                "BiSeNetV2: detail_channels needs 3 widths (stride 8) and semantic_channels 4 "
                f"(strides 4-32, the BGA's), got {detail_channels} and {semantic_channels}"
            )
        if not detail_channels[-1] == semantic_channels[-1] == bga_channels:
            raise ValueError(
                f"BiSeNetV2: bga_channels={bga_channels} must equal the last detail width "
                f"({detail_channels[-1]}) and the last semantic width ({semantic_channels[-1]})"
            )
        norm = get_norm_layer(norm_layer)
        self.detail = DetailBranch(detail_channels, in_chans, norm)
        self.semantic = SemanticBranch(semantic_channels, in_chans, exp_ratio, norm)
        self.bga = BGALayer(bga_channels, align_corners, norm)
        # the stem is at stride 4, each later semantic stage halves the resolution
        self.feature_info = [FeatureInfo(bga_channels, 8)] + [
            FeatureInfo(c, 4 * 2**i) for i, c in enumerate(semantic_channels)
        ]
        init_mmseg_backbone_(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        semantic = self.semantic(x)
        return [self.bga(self.detail(x), semantic[-1]), *semantic[:-1]]

    def load_pretrained_state_dict(
        self, state_dict: Mapping[str, Tensor], *, source: str = "auto"
    ) -> None:
        """:func:`seg_backbones.load_pretrained`'s hook: mmseg weights (our names)."""
        self.load_state_dict(convert_realtime_state_dict(state_dict, source=source, model=self))


SOURCES: tuple[str, ...] = ("auto", "mmseg")


def convert_realtime_state_dict(
    state_dict: Mapping[str, Tensor], *, source: str = "auto", model: nn.Module
) -> dict[str, Tensor]:
    """mmseg backbone weights of BiSeNetV2 / Fast-SCNN / STDC -> ``model``'s keys, checked strictly.

    The names are mmseg's, so this strips a common ``module.`` or ``backbone.`` prefix
    (a full mmseg segmentation checkpoint is refused: use ``seg_heads.convert.from_mmseg``),
    reconciles ``num_batches_tracked`` and raises
    :class:`~seg_backbones.IncompatibleWeightsError` listing any key that does not fit.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown weights source {source!r}; valid sources are {SOURCES}")
    sd = dict(state_dict)
    heads = sorted({k.split(".")[0] for k in sd} & {"decode_head", "auxiliary_head"})
    if heads:
        raise IncompatibleWeightsError(
            f"this looks like a full mmseg segmentation checkpoint (keys {heads}); load it "
            "with seg_heads.convert.from_mmseg(path, arch=...)"
        )
    sd = backbone_part(sd, use=None)  # refused above by head names (STDC's keys hold backbone.*)
    sd = reconcile_buffers(sd, model.state_dict())
    check_state_dict(model, sd, source=source)
    return sd


def _create_bisenetv2(
    *,
    output_stride: int = 32,
    detail_channels: Sequence[int] = (64, 64, 128),
    semantic_channels: Sequence[int] = (16, 32, 64, 128),
    exp_ratio: int = 6,
    bga_channels: int = 128,
    align_corners: bool = False,
    norm_layer: str | NormLayer = "bn",
    in_chans: int = 3,
) -> BiSeNetV2:
    check_fixed_output_stride("bisenetv2", output_stride)
    return BiSeNetV2(
        detail_channels=detail_channels,
        semantic_channels=semantic_channels,
        exp_ratio=exp_ratio,
        bga_channels=bga_channels,
        align_corners=align_corners,
        norm_layer=norm_layer,
        in_chans=in_chans,
    )


def check_fixed_output_stride(name: str, output_stride: Any) -> None:
    """These real-time networks have a fixed stride-32 path: ``output_stride`` must be 32."""
    if output_stride != 32 or isinstance(output_stride, bool):
        raise ValueError(
            f"{name}: output_stride must be 32, got {output_stride!r}; valid choices: [32]. "
            "The network's deepest path has a fixed stride of 32 and it has no dilated variant "
            "(use create_model(..., output_stride=32) or its default)"
        )


def check_options(name: str, kwargs: Mapping[str, Any], builder: Any) -> None:
    """Unknown keyword options of ``builder`` -> one ``TypeError`` listing the valid ones."""
    valid = sorted(
        n for n, p in inspect.signature(builder).parameters.items() if p.kind is p.KEYWORD_ONLY
    )
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise TypeError(f"{name}: unknown option(s) {unknown}; valid keyword options are {valid}")


@register_backbone("bisenetv2")
def bisenetv2(**kwargs: Any) -> BiSeNetV2:
    """BiSeNetV2 (mmseg ``bisenetv2_fcn``): BGA (128, stride 8) + semantic stages 16/32/64/128."""
    check_options("bisenetv2", kwargs, _create_bisenetv2)
    return _create_bisenetv2(**kwargs)
