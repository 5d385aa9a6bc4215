"""DDRNet: deep dual-resolution networks with bilateral fusion and DAPPM.

Hong et al., "Deep Dual-resolution Networks for Real-time and Accurate Semantic
Segmentation of Road Scenes" (arXiv:2101.06085). Layer for layer as mmsegmentation 1.2.2
``mmseg/models/backbones/ddrnet.py`` (``DDRNet``) with the blocks of
``mmseg/models/utils/basic_block.py`` and ``ppm.py`` (``DAPPM``), configs
``configs/ddrnet/ddrnet_23-slim_in1k-pre_*`` (``channels=32``) and ``ddrnet_23_in1k-pre_*``
(``channels=64``), both ``ppm_channels=128``:

* ``stem``: two 3x3 stride-2 conv-BN-ReLU, 2 BasicBlocks of ``c``, ReLU, 2 BasicBlocks of
  ``2c`` at stride 2, ReLU (stride 8);
* the context (low-resolution) branch ``context_branch_layers``: 2 BasicBlocks of ``4c``
  (stride 16), 2 of ``8c`` (stride 32), 1 Bottleneck of ``8c`` (``16c`` out, stride 64);
* the spatial (high-resolution) branch ``spatial_branch_layers`` stays at stride 8: 2
  BasicBlocks of ``2c``, 2 more, 1 Bottleneck (``4c`` out);
* bilateral fusion after the first two stages: the context branch adds ``down_1`` /
  ``down_2`` (3x3 stride-2 convs) of the ReLU'd spatial branch, the spatial branch adds the
  bilinearly resized ``compression_1`` / ``compression_2`` (1x1 conv-BN) of the ReLU'd
  context branch (``align_corners=False``);
* ``spp`` (:class:`DAPPM`, 5 scales of ``ppm_channels``) on the stride-64 map, resized to
  stride 8 and added to the spatial branch.

In each branch layer the first block ends with a ReLU when it is a BasicBlock, later blocks
all but the last (mmseg's ``act_cfg_out``); a Bottleneck alone has none.

Outputs, in training and in eval mode alike: ``[stage3, out]`` -- the spatial branch after
the first bilateral fusion (``2c`` channels, mmseg's training-only ``temp_context``, which
its ``DDRHead`` reads for the auxiliary loss) and the final sum (``4c``), both at stride 8.
DDRNet has no dilated variant: ``output_stride`` must be 32 (the value names the network as
published; both outputs are at stride 8, the context branch reaches 64).

Differences from mmseg: the fusions resize to the spatial branch's actual size instead of
``input_size // 8`` (identical where mmseg runs: it fails unless the two agree, i.e. for
heights and widths that are multiples of 8), which also lets any input size export with
dynamic shapes; additions are out of place (mmseg's ``+=`` on a clone in training).
Module names are mmseg's, so its checkpoints load by name (``backbone.`` stripped).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._features import FeatureInfo
from ._registry import build_checked, register_backbone
from .norm import NormLayer, get_norm_layer
from .pretrained import backbone_part, check_state_dict, reconcile_buffers

__all__ = [
    "DAPPM",
    "PAPPM",
    "BasicBlock",
    "Bottleneck",
    "ConvBN",
    "DDRNet",
    "NormActConv",
    "convert_ddrnet_state_dict",
    "init_kaiming_",
    "make_branch_layer",
    "resize_to",
]


def resize_to(x: Tensor, like: Tensor, *, align_corners: bool = False) -> Tensor:
    """Bilinear resize of ``x`` to ``like``'s spatial size (traced from the shape, not ints)."""
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=align_corners)


class ConvBN(nn.Module):
    """conv (no bias) -> BN (-> ReLU): mmcv's ``ConvModule`` with a BN ``norm_cfg``.

    Children ``conv``, ``bn`` (and ``activate``) as mmcv's, so mmseg weights load by name.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int,
        *,
        stride: int = 1,
        relu: bool = False,
        norm: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            cin, cout, kernel_size, stride=stride, padding=kernel_size // 2, bias=False
        )
        self.bn = norm(cout)
        self.activate = nn.ReLU(inplace=True) if relu else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return self.activate(x) if self.activate is not None else x


class NormActConv(nn.Module):
    """BN (of the input) -> ReLU -> conv (no bias): mmcv's ``ConvModule(order=('norm', 'act', 'conv'))``.

    Children ``bn`` and ``conv`` as mmcv's (the norm has the input's channels).
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int,
        *,
        groups: int = 1,
        norm: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.bn = norm(cin)
        self.activate = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(
            cin, cout, kernel_size, padding=kernel_size // 2, groups=groups, bias=False
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.activate(self.bn(x)))


class BasicBlock(nn.Module):
    """mmseg's ``models/utils`` BasicBlock: 3x3 conv-BN-ReLU, 3x3 conv-BN, + shortcut (-> ReLU)."""

    expansion = 1

    def __init__(
        self,
        cin: int,
        channels: int,
        *,
        stride: int = 1,
        downsample: nn.Module | None = None,
        relu_out: bool = True,
        norm: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = ConvBN(cin, channels, 3, stride=stride, relu=True, norm=norm)
        self.conv2 = ConvBN(channels, channels, 3, norm=norm)
        self.downsample = downsample
        self.act = nn.ReLU(inplace=True) if relu_out else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(self.conv1(x))
        out = out + (x if self.downsample is None else self.downsample(x))
        return self.act(out) if self.act is not None else out


class Bottleneck(nn.Module):
    """mmseg's ``models/utils`` Bottleneck: 1x1, 3x3 (stride), 1x1 to ``2 * channels`` (expansion 2)."""

    expansion = 2

    def __init__(
        self,
        cin: int,
        channels: int,
        *,
        stride: int = 1,
        downsample: nn.Module | None = None,
        relu_out: bool = False,
        norm: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = ConvBN(cin, channels, 1, relu=True, norm=norm)
        self.conv2 = ConvBN(channels, channels, 3, stride=stride, relu=True, norm=norm)
        self.conv3 = ConvBN(channels, channels * self.expansion, 1, norm=norm)
        self.downsample = downsample
        self.act = nn.ReLU(inplace=True) if relu_out else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv3(self.conv2(self.conv1(x)))
        out = out + (x if self.downsample is None else self.downsample(x))
        return self.act(out) if self.act is not None else out


def make_branch_layer(
    block: type[BasicBlock | Bottleneck],
    cin: int,
    channels: int,
    num_blocks: int,
    *,
    stride: int = 1,
    norm: NormLayer,
    downsample_style: str = "sequential",
) -> nn.Sequential:
    """mmseg DDRNet/PIDNet ``_make_layer``: ``num_blocks`` blocks, a 1x1 projection shortcut.

    The first block keeps its class's default output ReLU (BasicBlock: yes, Bottleneck: no),
    the others have one except the last. ``downsample_style``: ``"sequential"`` (DDRNet,
    keys ``downsample.0`` / ``.1``) or ``"convbn"`` (PIDNet's ``ConvModule``:
    ``downsample.conv`` / ``.bn``).
    """
    cout = channels * block.expansion
    downsample: nn.Module | None = None
    if stride != 1 or cin != cout:
        if downsample_style == "sequential":
            downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), norm(cout)
            )
        else:
            downsample = ConvBN(cin, cout, 1, stride=stride, norm=norm)
    layers: list[nn.Module] = [
        block(
            cin,
            channels,
            stride=stride,
            downsample=downsample,
            relu_out=block is BasicBlock,
            norm=norm,
        )
    ]
    for i in range(1, num_blocks):
        layers.append(block(cout, channels, relu_out=i != num_blocks - 1, norm=norm))
    return nn.Sequential(*layers)


# the three average-pooling scales of DAPPM/PAPPM (mmseg defaults): kernel, stride, padding
_POOLS = ((5, 2, 2), (9, 4, 4), (17, 8, 8))


class DAPPM(nn.Module):
    """Deep aggregation pyramid pooling (mmseg ``models/utils/ppm.py`` ``DAPPM``, 5 scales).

    ``scales``: a 1x1 BN-ReLU-conv of the input, then of average pools (5/2/2, 9/4/4,
    17/8/8, ``count_include_pad``) and of the global average; each pooled branch is resized
    back (bilinear, ``align_corners=False``), added to the previous scale's output and
    refined by a 3x3 BN-ReLU-conv (``processes``, hierarchical); the five are concatenated,
    ``compression`` (1x1) and added to ``shortcut`` (1x1) of the input.
    """

    def __init__(
        self, cin: int, branch_channels: int, cout: int, *, norm: NormLayer = nn.BatchNorm2d
    ) -> None:
        super().__init__()
        b = branch_channels
        self.scales = nn.ModuleList([NormActConv(cin, b, 1, norm=norm)])
        for k, s, p in _POOLS:
            self.scales.append(
                nn.Sequential(
                    nn.AvgPool2d(k, stride=s, padding=p), NormActConv(cin, b, 1, norm=norm)
                )
            )
        self.scales.append(
            nn.Sequential(nn.AdaptiveAvgPool2d(1), NormActConv(cin, b, 1, norm=norm))
        )
        self.processes = self._processes(b, norm)
        self.compression = NormActConv(b * len(self.scales), cout, 1, norm=norm)
        self.shortcut = NormActConv(cin, cout, 1, norm=norm)

    def _processes(self, b: int, norm: NormLayer) -> nn.Module:
        return nn.ModuleList(NormActConv(b, b, 3, norm=norm) for _ in range(len(_POOLS) + 1))

    def forward(self, x: Tensor) -> Tensor:
        feats = [self.scales[0](x)]
        for scale, process in zip(list(self.scales)[1:], self.processes, strict=True):  # type: ignore[call-overload]
            feats.append(process(resize_to(scale(x), x) + feats[-1]))
        return self.compression(torch.cat(feats, dim=1)) + self.shortcut(x)


class PAPPM(DAPPM):
    """Parallel aggregation PPM (PIDNet; mmseg ``PAPPM``): DAPPM's branches, refined in parallel.

    Each pooled branch, resized back, adds the 1x1 scale's output; the four sums are
    refined together by one grouped (4 groups) 3x3 BN-ReLU-conv (``processes``).
    """

    def _processes(self, b: int, norm: NormLayer) -> nn.Module:
        n = len(_POOLS) + 1
        return NormActConv(b * n, b * n, 3, groups=n, norm=norm)

    def forward(self, x: Tensor) -> Tensor:
        x0 = self.scales[0](x)
        feats = [resize_to(scale(x), x) + x0 for scale in list(self.scales)[1:]]
        out = self.processes(torch.cat(feats, dim=1))
        return self.compression(torch.cat([x0, out], dim=1)) + self.shortcut(x)


def init_kaiming_(module: nn.Module) -> None:
    """mmseg's DDRNet/PIDNet init: Kaiming-normal (fan_out, ReLU) convs, BN weight 1, bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            if m.weight.is_meta:  # shapes only (nn.init on meta imports torch._dynamo)
                return
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.modules.batchnorm._NormBase | nn.GroupNorm) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class DDRNet(nn.Module):
    """DDRNet-23(-slim) backbone; see the module docstring.

    Args:
        channels: base width ``c`` (32: DDRNet-23-slim, 64: DDRNet-23).
        ppm_channels: DAPPM branch width (128 in both).
        norm_layer: ``"bn" | "syncbn" | "gn" | "frozen_bn"`` or a callable.
        align_corners: of the bilateral-fusion and DAPPM-output resizes (mmseg: False).
        in_chans: input channels.
    """

    def __init__(
        self,
        *,
        channels: int = 32,
        ppm_channels: int = 128,
        norm_layer: str | NormLayer = "bn",
        align_corners: bool = False,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        norm = get_norm_layer(norm_layer)
        c = channels
        self.align_corners = align_corners
        layer = make_branch_layer
        self.stem = nn.Sequential(
            ConvBN(in_chans, c, 3, stride=2, relu=True, norm=norm),
            ConvBN(c, c, 3, stride=2, relu=True, norm=norm),
            layer(BasicBlock, c, c, 2, norm=norm),
            nn.ReLU(),
            layer(BasicBlock, c, 2 * c, 2, stride=2, norm=norm),
            nn.ReLU(),
        )
        self.relu = nn.ReLU()
        self.context_branch_layers = nn.ModuleList(
            [
                layer(BasicBlock, 2 * c, 4 * c, 2, stride=2, norm=norm),
                layer(BasicBlock, 4 * c, 8 * c, 2, stride=2, norm=norm),
                layer(Bottleneck, 8 * c, 8 * c, 1, stride=2, norm=norm),
            ]
        )
        self.compression_1 = ConvBN(4 * c, 2 * c, 1, norm=norm)
        self.down_1 = ConvBN(2 * c, 4 * c, 3, stride=2, norm=norm)
        self.compression_2 = ConvBN(8 * c, 2 * c, 1, norm=norm)
        self.down_2 = nn.Sequential(
            ConvBN(2 * c, 4 * c, 3, stride=2, relu=True, norm=norm),
            ConvBN(4 * c, 8 * c, 3, stride=2, norm=norm),
        )
        self.spatial_branch_layers = nn.ModuleList(
            [
                layer(BasicBlock, 2 * c, 2 * c, 2, norm=norm),
                layer(BasicBlock, 2 * c, 2 * c, 2, norm=norm),
                layer(Bottleneck, 2 * c, 2 * c, 1, norm=norm),
            ]
        )
        self.spp = DAPPM(16 * c, ppm_channels, 4 * c, norm=norm)
        self.feature_info = [FeatureInfo(2 * c, 8), FeatureInfo(4 * c, 8)]
        init_kaiming_(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        ac = self.align_corners
        relu = self.relu
        x = self.stem(x)
        # stage 3
        x_c = self.context_branch_layers[0](x)
        x_s = self.spatial_branch_layers[0](x)
        comp = self.compression_1(relu(x_c))
        x_c = x_c + self.down_1(relu(x_s))
        x_s = x_s + resize_to(comp, x_s, align_corners=ac)
        stage3 = x_s
        # stage 4
        x_c = self.context_branch_layers[1](relu(x_c))
        x_s = self.spatial_branch_layers[1](relu(x_s))
        comp = self.compression_2(relu(x_c))
        x_c = x_c + self.down_2(relu(x_s))
        x_s = x_s + resize_to(comp, x_s, align_corners=ac)
        # stage 5
        x_s = self.spatial_branch_layers[2](relu(x_s))
        x_c = self.spp(self.context_branch_layers[2](relu(x_c)))
        return [stage3, x_s + resize_to(x_c, x_s, align_corners=ac)]

    def load_pretrained_state_dict(
        self, state_dict: Mapping[str, Tensor], *, source: str = "auto"
    ) -> None:
        """:func:`seg_backbones.load_pretrained`'s hook: mmseg-layout DDRNet weights.

        See :func:`convert_ddrnet_state_dict`.
        """
        self.load_state_dict(convert_ddrnet_state_dict(state_dict, source=source, model=self))


SOURCES: tuple[str, ...] = ("auto", "mmseg")


def convert_ddrnet_state_dict(
    state_dict: Mapping[str, Tensor],
    *,
    source: str = "auto",
    model: nn.Module,
    family: str = "DDRNet",
) -> dict[str, Tensor]:
    """mmseg-layout backbone weights (``backbone.`` / ``module.`` stripped) -> ``model``'s keys.

    Our names are mmseg's, so this only strips prefixes and checks strictly: anything
    missing, unexpected or mis-shaped raises :class:`~seg_backbones.IncompatibleWeightsError`.
    Also used by :mod:`seg_backbones.pidnet` (``family`` names it in messages).
    """
    if source not in SOURCES:
        raise ValueError(f"unknown {family} weights source {source!r}; valid sources are {SOURCES}")
    sd = dict(state_dict)
    sd = backbone_part(sd, use=f"seg_heads.convert.from_mmseg(path, arch=...) ({family})")
    sd = reconcile_buffers(sd, model.state_dict())
    check_state_dict(model, sd, source=source)
    return sd


# ----------------------------------------------------------------------------------------
# variants

_WIDTHS: dict[str, int] = {"ddrnet_23_slim": 32, "ddrnet_23": 64}


def _create_ddrnet(
    name: str,
    *,
    output_stride: int = 32,
    norm_layer: str | NormLayer = "bn",
    align_corners: bool = False,
    in_chans: int = 3,
    channels: int | None = None,
    ppm_channels: int = 128,
) -> DDRNet:
    if output_stride != 32 or isinstance(output_stride, bool):
        raise ValueError(
            f"{name}: output_stride must be 32, got {output_stride!r}; valid choices: [32]. "
            "DDRNet is used as published (outputs at stride 8, context branch down to 64): it "
            "has no dilated variant (use create_model(..., output_stride=32) or its default)"
        )
    return DDRNet(
        channels=_WIDTHS[name] if channels is None else channels,
        ppm_channels=ppm_channels,
        norm_layer=norm_layer,
        align_corners=align_corners,
        in_chans=in_chans,
    )


@register_backbone("ddrnet_23_slim")
def ddrnet_23_slim(**kwargs: Any) -> DDRNet:
    """DDRNet-23-slim (mmseg ``ddrnet_23-slim_in1k-pre``): ``c=32``, outputs 64/128 at stride 8.

    ``channels=`` overrides the base width (a narrower test model; not a published one).
    """
    return build_checked("ddrnet_23_slim", _create_ddrnet, kwargs)  # type: ignore[return-value]


@register_backbone("ddrnet_23")
def ddrnet_23(**kwargs: Any) -> DDRNet:
    """DDRNet-23 (mmseg ``ddrnet_23_in1k-pre``): ``c=64``, outputs 128/256 at stride 8."""
    return build_checked("ddrnet_23", _create_ddrnet, kwargs)  # type: ignore[return-value]
