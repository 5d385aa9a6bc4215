"""PIDNet: a three-branch (P, I, D) real-time network inspired by the PID controller.

Xu et al., "PIDNet: A Real-time Semantic Segmentation Network Inspired by PID Controllers"
(CVPR 2023, arXiv:2206.02066). Layer for layer as mmsegmentation 1.2.2
``mmseg/models/backbones/pidnet.py`` (``PIDNet``, ``PagFM``, ``Bag``, ``LightBag``) with the
blocks and pyramid poolings of :mod:`seg_backbones.ddrnet` (mmseg ``models/utils``), configs
``configs/pidnet/pidnet-{s,m,l}_2xb6-120k_1024x1024-cityscapes.py``:

======== ========== ============== ================= ================== ===========
variant  channels   ppm_channels   num_stem_blocks   num_branch_blocks  PPM / fuse
======== ========== ============== ================= ================== ===========
S        32         96             2                 3                  PAPPM / LightBag
M        64         96             2                 3                  PAPPM / LightBag
L        64         112            3                 4                  DAPPM / Bag
======== ========== ============== ================= ================== ===========

* ``stem``: two 3x3 stride-2 conv-BN-ReLU, ``num_stem_blocks`` BasicBlocks of ``c``, ReLU,
  as many of ``2c`` at stride 2, ReLU (stride 8);
* I branch (``i_branch_layers``): ``num_branch_blocks`` BasicBlocks of ``4c`` (stride 16),
  as many of ``8c`` (stride 32), 2 Bottlenecks of ``8c`` (``16c`` out, stride 64), then the
  PPM (``spp``, ``ppm_channels`` wide, ``4c`` out);
* P branch (``p_branch_layers``, stride 8): ``num_stem_blocks`` BasicBlocks of ``2c`` twice,
  1 Bottleneck (``4c``); after the first two stages :class:`PagFM` (pixel-attention-guided
  fusion) mixes in the 1x1-compressed I branch (``compression_1`` / ``_2``);
* D branch (``d_branch_layers``, stride 8): S/M a BasicBlock to ``c`` and a Bottleneck
  (``2c``), L two BasicBlocks of ``2c``; then a Bottleneck (``4c``); after the first two
  stages it adds the 3x3-conv-BN (``diff_1`` / ``_2``) of the I branch, resized;
* ``dfm``: :class:`LightBag` (S/M) or :class:`Bag` (L), boundary-attention-guided fusion of
  P, I (the PPM output, resized to stride 8) and D.

Every resize in the backbone is bilinear with ``align_corners=False`` (mmseg's backbone
option; the configs' ``align_corners=True`` is the decode head's, see ``seg_heads.pidnet``).

Outputs, in training and in eval mode alike: ``[p, d, out]`` -- mmseg's training-only
``temp_p`` (the P branch after the first fusion, ``2c``), ``temp_d`` (the D branch after the
second fusion, ``2c``) and the fused output (``4c``), all at stride 8 (mmseg returns
``(temp_p, out, temp_d)`` in training, ``out`` in eval; the fused output is last here so that
``in_index=-1`` reads it). PIDNet has no dilated variant: ``output_stride`` must be 32.

Differences from mmseg: resizes target the branch's actual size instead of
``input_size // 8`` (identical where mmseg runs: multiples of 8); additions out of place.
Module names are mmseg's, so its checkpoints load by name (``backbone.`` stripped).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ._features import FeatureInfo
from ._registry import build_checked, register_backbone
from .ddrnet import (
    DAPPM,
    PAPPM,
    BasicBlock,
    Bottleneck,
    ConvBN,
    NormActConv,
    convert_ddrnet_state_dict,
    init_kaiming_,
    make_branch_layer,
    resize_to,
)
from .norm import NormLayer, get_norm_layer

__all__ = ["Bag", "LightBag", "PIDNet", "PagFM", "convert_pidnet_state_dict"]


class PagFM(nn.Module):
    """Pixel-attention-guided fusion (mmseg ``PagFM``, ``after_relu=False``, no channel attention).

    ``sigma = sigmoid(sum_c f_p(x_p) * up(f_i(x_i)))`` (1x1 conv-BN each, bilinear
    ``align_corners=False`` to ``x_p``'s size), ``out = sigma * up(x_i) + (1 - sigma) * x_p``.
    """

    def __init__(self, cin: int, channels: int, *, norm: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        self.f_i = ConvBN(cin, channels, 1, norm=norm)
        self.f_p = ConvBN(cin, channels, 1, norm=norm)

    def forward(self, x_p: Tensor, x_i: Tensor) -> Tensor:
        f_i = resize_to(self.f_i(x_i), x_p)
        sigma = torch.sigmoid(torch.sum(self.f_p(x_p) * f_i, dim=1, keepdim=True))
        return sigma * resize_to(x_i, x_p) + (1 - sigma) * x_p


class Bag(nn.Module):
    """Boundary-attention-guided fusion (mmseg ``Bag``, PIDNet-L).

    ``conv(sigmoid(d) * p + (1 - sigmoid(d)) * i)``, ``conv`` a 3x3 BN-ReLU-conv.
    """

    def __init__(self, cin: int, cout: int, *, norm: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv = NormActConv(cin, cout, 3, norm=norm)

    def forward(self, x_p: Tensor, x_i: Tensor, x_d: Tensor) -> Tensor:
        sigma = torch.sigmoid(x_d)
        return self.conv(sigma * x_p + (1 - sigma) * x_i)


class LightBag(nn.Module):
    """Light boundary-attention-guided fusion (mmseg ``LightBag``, PIDNet-S/M).

    ``f_p((1 - sigmoid(d)) * i + p) + f_i(i + sigmoid(d) * p)``, 1x1 conv-BN each (no ReLU).
    """

    def __init__(self, cin: int, cout: int, *, norm: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        self.f_p = ConvBN(cin, cout, 1, norm=norm)
        self.f_i = ConvBN(cin, cout, 1, norm=norm)

    def forward(self, x_p: Tensor, x_i: Tensor, x_d: Tensor) -> Tensor:
        sigma = torch.sigmoid(x_d)
        return self.f_p((1 - sigma) * x_i + x_p) + self.f_i(x_i + sigma * x_p)


class PIDNet(nn.Module):
    """PIDNet-S/M/L backbone; see the module docstring.

    Args:
        channels: base width ``c`` (S 32, M/L 64).
        ppm_channels: PPM branch width (S/M 96, L 112).
        num_stem_blocks: blocks per stem / P-branch layer; 2 (S/M: PAPPM, LightBag, the
            light D branch) or 3 (L: DAPPM, Bag).
        num_branch_blocks: BasicBlocks per I-branch layer (S/M 3, L 4).
        norm_layer: ``"bn" | "syncbn" | "gn" | "frozen_bn"`` or a callable.
        align_corners: of the backbone's resizes (mmseg: False).
        in_chans: input channels.
    """

    def __init__(
        self,
        *,
        channels: int = 32,
        ppm_channels: int = 96,
        num_stem_blocks: int = 2,
        num_branch_blocks: int = 3,
        norm_layer: str | NormLayer = "bn",
        align_corners: bool = False,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        norm = get_norm_layer(norm_layer)
        c = channels
        self.align_corners = align_corners

        def layer(block: Any, cin: int, ch: int, n: int, stride: int = 1) -> nn.Sequential:
            return make_branch_layer(
                block, cin, ch, n, stride=stride, norm=norm, downsample_style="convbn"
            )

        def single(cin: int, ch: int) -> BasicBlock:  # mmseg _make_single_layer (BasicBlock)
            down = ConvBN(cin, ch, 1, norm=norm) if cin != ch else None
            return BasicBlock(cin, ch, downsample=down, relu_out=False, norm=norm)

        self.stem = nn.Sequential(
            ConvBN(in_chans, c, 3, stride=2, relu=True, norm=norm),
            ConvBN(c, c, 3, stride=2, relu=True, norm=norm),
            layer(BasicBlock, c, c, num_stem_blocks),
            nn.ReLU(),
            layer(BasicBlock, c, 2 * c, num_stem_blocks, stride=2),
            nn.ReLU(),
        )
        self.relu = nn.ReLU()
        self.i_branch_layers = nn.ModuleList(
            [
                layer(BasicBlock, 2 * c, 4 * c, num_branch_blocks, stride=2),
                layer(BasicBlock, 4 * c, 8 * c, num_branch_blocks, stride=2),
                layer(Bottleneck, 8 * c, 8 * c, 2, stride=2),
            ]
        )
        self.p_branch_layers = nn.ModuleList(
            [
                layer(BasicBlock, 2 * c, 2 * c, num_stem_blocks),
                layer(BasicBlock, 2 * c, 2 * c, num_stem_blocks),
                layer(Bottleneck, 2 * c, 2 * c, 1),
            ]
        )
        self.compression_1 = ConvBN(4 * c, 2 * c, 1, norm=norm)
        self.compression_2 = ConvBN(8 * c, 2 * c, 1, norm=norm)
        self.pag_1 = PagFM(2 * c, c, norm=norm)
        self.pag_2 = PagFM(2 * c, c, norm=norm)
        light = num_stem_blocks == 2  # mmseg's switch between S/M and L
        if light:
            d_layers: list[nn.Module] = [single(2 * c, c), layer(Bottleneck, c, c, 1)]
        else:
            d_layers = [single(2 * c, 2 * c), single(2 * c, 2 * c)]
        self.d_branch_layers = nn.ModuleList(d_layers)
        self.diff_1 = ConvBN(4 * c, c if light else 2 * c, 3, norm=norm)
        self.diff_2 = ConvBN(8 * c, 2 * c, 3, norm=norm)
        self.spp = (PAPPM if light else DAPPM)(16 * c, ppm_channels, 4 * c, norm=norm)
        self.dfm = (LightBag if light else Bag)(4 * c, 4 * c, norm=norm)
        self.d_branch_layers.append(layer(Bottleneck, 2 * c, 2 * c, 1))
        self.feature_info = [FeatureInfo(2 * c, 8), FeatureInfo(2 * c, 8), FeatureInfo(4 * c, 8)]
        init_kaiming_(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        ac = self.align_corners
        relu = self.relu
        x = self.stem(x)
        # stage 3
        x_i = relu(self.i_branch_layers[0](x))
        x_p = self.pag_1(self.p_branch_layers[0](x), self.compression_1(x_i))
        x_d = self.d_branch_layers[0](x)
        x_d = x_d + resize_to(self.diff_1(x_i), x_d, align_corners=ac)
        p = x_p
        # stage 4
        x_i = relu(self.i_branch_layers[1](x_i))
        x_p = self.pag_2(self.p_branch_layers[1](relu(x_p)), self.compression_2(x_i))
        x_d = self.d_branch_layers[1](relu(x_d))
        x_d = x_d + resize_to(self.diff_2(x_i), x_d, align_corners=ac)
        d = x_d
        # stage 5
        x_i = self.spp(self.i_branch_layers[2](x_i))
        x_p = self.p_branch_layers[2](relu(x_p))
        x_d = self.d_branch_layers[2](relu(x_d))
        out = self.dfm(x_p, resize_to(x_i, x_d, align_corners=ac), x_d)
        return [p, d, out]

    def load_pretrained_state_dict(
        self, state_dict: Mapping[str, Tensor], *, source: str = "auto"
    ) -> None:
        """:func:`seg_backbones.load_pretrained`'s hook: mmseg-layout PIDNet weights.

        See :func:`convert_pidnet_state_dict`.
        """
        self.load_state_dict(convert_pidnet_state_dict(state_dict, source=source, model=self))


def convert_pidnet_state_dict(
    state_dict: Mapping[str, Tensor], *, source: str = "auto", model: nn.Module
) -> dict[str, Tensor]:
    """mmseg-layout PIDNet backbone weights -> ``model``'s keys (the same names), checked strictly."""
    return convert_ddrnet_state_dict(state_dict, source=source, model=model, family="PIDNet")


# ----------------------------------------------------------------------------------------
# variants: (channels, ppm_channels, num_stem_blocks, num_branch_blocks)

_VARIANTS: dict[str, tuple[int, int, int, int]] = {
    "pidnet_s": (32, 96, 2, 3),
    "pidnet_m": (64, 96, 2, 3),
    "pidnet_l": (64, 112, 3, 4),
}


def _create_pidnet(
    name: str,
    *,
    output_stride: int = 32,
    norm_layer: str | NormLayer = "bn",
    align_corners: bool = False,
    in_chans: int = 3,
    channels: int | None = None,
    ppm_channels: int | None = None,
) -> PIDNet:
    if output_stride != 32 or isinstance(output_stride, bool):
        raise ValueError(
            f"{name}: output_stride must be 32, got {output_stride!r}; valid choices: [32]. "
            "PIDNet is used as published (outputs at stride 8, I branch down to 64): it has "
            "no dilated variant (use create_model(..., output_stride=32) or its default)"
        )
    c, ppm, n_stem, n_branch = _VARIANTS[name]
    net = PIDNet(
        channels=c if channels is None else channels,
        ppm_channels=ppm if ppm_channels is None else ppm_channels,
        num_stem_blocks=n_stem,
        num_branch_blocks=n_branch,
        norm_layer=norm_layer,
        align_corners=align_corners,
        in_chans=in_chans,
    )
    # The published head widths, which the feature channels cannot tell apart (M and L both
    # give 256): mmseg's pidnet-{s,m,l} configs, decode_head.channels 128 / 128 / 256.
    # seg_heads.create_model uses them unless head_kwargs say otherwise.
    width = 256 if name == "pidnet_l" else 128
    net.head_defaults = {"pidnet": {"channels": width if channels is None else 4 * channels}}
    return net


@register_backbone("pidnet_s")
def pidnet_s(**kwargs: Any) -> PIDNet:
    """PIDNet-S (mmseg ``pidnet-s``): ``c=32``; outputs P 64, D 64, fused 128 at stride 8.

    ``channels=`` / ``ppm_channels=`` override the widths (a narrower test model; not published).
    """
    return build_checked("pidnet_s", _create_pidnet, kwargs)  # type: ignore[return-value]


@register_backbone("pidnet_m")
def pidnet_m(**kwargs: Any) -> PIDNet:
    """PIDNet-M (mmseg ``pidnet-m``): ``c=64``; outputs P 128, D 128, fused 256 at stride 8."""
    return build_checked("pidnet_m", _create_pidnet, kwargs)  # type: ignore[return-value]


@register_backbone("pidnet_l")
def pidnet_l(**kwargs: Any) -> PIDNet:
    """PIDNet-L (mmseg ``pidnet-l``): ``c=64``, DAPPM and Bag; outputs 128, 128, 256 at stride 8."""
    return build_checked("pidnet_l", _create_pidnet, kwargs)  # type: ignore[return-value]
