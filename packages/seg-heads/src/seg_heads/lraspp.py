"""Lite R-ASPP head (Howard et al., "Searching for MobileNetV3", ICCV 2019, Section 6.4).

A 1x1 conv + BN + ReLU on the high-level map, gated channel-wise by an image-pooling
branch (average pool -> 1x1 conv -> sigmoid), upsampled and merged with low-level maps.
Two references, selected by ``variant``, so both weight sets load:

- ``"torchvision"`` (torchvision 0.29 ``models/segmentation/lraspp.py``, ``LRASPPHead``;
  the default): ``in_index=(low, high)``. ``aspp_conv`` (torchvision ``cbr``) times
  ``image_pool`` (``AdaptiveAvgPool2d(1)``, 1x1 conv without bias, sigmoid; torchvision
  ``scale``), bilinearly upsampled to the low level's size; the logits are
  ``low_classifier(low) + conv_seg(x)`` (two 1x1 convs with bias; ``conv_seg`` is
  torchvision's ``high_classifier``). 128 channels, BN eps 1e-5, PyTorch's default init.
  On MobileNetV3-Large at output stride 16: low = ``features.4`` (40 channels, stride 8),
  high = ``features.16`` (960), torchvision's ``lraspp_mobilenet_v3_large``.
- ``"mmseg"`` (mmsegmentation 1.2.2 ``mmseg/models/decode_heads/lraspp_head.py``):
  ``in_index=(b_0, ..., b_{n-1}, high)``. ``aspp_conv`` (1x1 conv + BN + ReLU) times
  ``image_pool`` (``AvgPool2d(49, stride=(16, 20))`` without padding, then a 1x1 conv
  without bias + sigmoid), resized back bilinearly; ``conv_up_input`` (1x1 conv with bias);
  then for ``i = n-1 .. 0``: resize to level ``b_i``, concatenate
  ``convs[i](level b_i)`` (1x1 conv without bias to ``branch_channels[i]``), ``conv_ups[i]``
  (1x1 conv + BN + ReLU back to ``channels``); ``Dropout2d(0.1)``, ``conv_seg``. The logits
  are at the stride of ``b_0``. ``channels=128, branch_channels=(32, 64)``; BN eps 1e-3
  (the config's ``norm_cfg``). The 49x49 pool needs a high-level map of at least 49x49:
  inputs of 392 pixels or more at output stride 8 (mmseg's ``lraspp_m-v3-d8``, whose
  levels are MobileNetV3's 0, 1 and 3).

Module names follow mmseg (``aspp_conv.conv``, ``image_pool.1.conv``, ``convs.conv<i>``,
``conv_ups.conv_up<i>.conv``, ``conv_up_input``, ``conv_seg``); :mod:`seg_heads.convert`
maps torchvision's.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seg_backbones import FeatureInfo

from ._layers import ConvBNReLU, NormLayer, check_in_index, resolve_norm
from ._registry import register_head

__all__ = ["LRASPPHead"]

_VARIANTS = ("torchvision", "mmseg")
_DEFAULT_IN_INDEX = {"torchvision": (2, -1), "mmseg": (0, 1, -1)}
_NORM_EPS = {"torchvision": 1e-5, "mmseg": 1e-3}
POOL_KERNEL, POOL_STRIDE = 49, (16, 20)  # mmseg's image pooling (from the TF reference)


class _ConvSigmoid(nn.Module):
    """1x1 conv without bias, then sigmoid (mmcv ``ConvModule`` with ``act_cfg=Sigmoid``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.conv(x))


def _norm(norm_layer: str | NormLayer, eps: float) -> NormLayer:
    norm = resolve_norm(norm_layer)
    if isinstance(norm_layer, str) and norm_layer in ("bn", "syncbn", "frozen_bn"):
        return functools.partial(norm, eps=eps)  # type: ignore[call-arg]
    return norm


class LRASPPHead(nn.Module):
    """Lite R-ASPP on several backbone levels (see the module docstring).

    Args:
        in_channels: channels of the levels read, in ``in_index`` order (the high level last).
        num_classes: number of output logits per pixel.
        in_index: the backbone levels read, the high level last: ``(low, high)``
            (torchvision) or ``(b_0, ..., high)`` (mmseg, one per branch plus the high).
        variant: ``"torchvision"`` or ``"mmseg"``.
        channels: width of the ASPP branch (128 in both references).
        branch_channels: mmseg only: width of each low-level branch ((32, 64)).
        dropout: drop probability before ``conv_seg``; default 0.1 (mmseg, ``Dropout2d``)
            or 0 (torchvision).
        align_corners: of the bilinear resizes inside the head.
        norm_layer: ``"bn" | "syncbn" | "frozen_bn"`` (with ``norm_eps``) or a callable.
        norm_eps: BN eps for string norms; default 1e-5 (torchvision) or 1e-3 (mmseg).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        *,
        in_index: Sequence[int] | None = None,
        variant: str = "torchvision",
        channels: int = 128,
        branch_channels: Sequence[int] = (32, 64),
        dropout: float | None = None,
        align_corners: bool = False,
        norm_layer: str | NormLayer = "bn",
        norm_eps: float | None = None,
    ) -> None:
        super().__init__()
        if variant not in _VARIANTS:
            raise ValueError(f"unknown LRASPPHead variant {variant!r}; valid: {list(_VARIANTS)}")
        tv = variant == "torchvision"
        in_channels = tuple(int(c) for c in in_channels)
        branch_channels = tuple(int(c) for c in branch_channels)
        n_levels = 2 if tv else len(branch_channels) + 1
        if in_index is None:
            in_index = tuple(range(n_levels))
        in_index = tuple(in_index)
        if len(in_channels) != n_levels or len(in_index) != n_levels:
            want = "(low, high)" if tv else f"one per branch_channels {branch_channels} + high"
            raise ValueError(
                f"LRASPPHead variant={variant!r} reads {n_levels} levels, {want}; got "
                f"in_index={in_index} and in_channels={in_channels}"
            )
        norm = _norm(norm_layer, _NORM_EPS[variant] if norm_eps is None else norm_eps)
        self.variant = variant
        self.in_channels = in_channels
        self.in_index = in_index
        self.channels = channels
        self.branch_channels = branch_channels if not tv else ()
        self.num_classes = num_classes
        self.align_corners = align_corners
        high = in_channels[-1]
        self.aspp_conv = ConvBNReLU(high, channels, 1, norm_layer=norm)
        pool = nn.AdaptiveAvgPool2d(1) if tv else nn.AvgPool2d(POOL_KERNEL, stride=POOL_STRIDE)
        self.image_pool = nn.Sequential(pool, _ConvSigmoid(high, channels))
        if tv:
            self.low_classifier: nn.Conv2d | None = nn.Conv2d(in_channels[0], num_classes, 1)
        else:
            self.low_classifier = None
            self.convs = nn.Sequential()
            self.conv_ups = nn.Sequential()
            for i, b in enumerate(branch_channels):
                self.convs.add_module(f"conv{i}", nn.Conv2d(in_channels[i], b, 1, bias=False))
                self.conv_ups.add_module(
                    f"conv_up{i}", ConvBNReLU(channels + b, channels, 1, norm_layer=norm)
                )
            self.conv_up_input = nn.Conv2d(channels, channels, 1)
        if dropout is None:
            dropout = 0.0 if tv else 0.1
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        if not tv:
            self._init_mmseg()

    def _init_mmseg(self) -> None:
        # mmcv ConvModule: Kaiming (fan_out) conv, norm 1/0; conv_seg N(0, 0.01); the plain
        # convs (convs.*, conv_up_input) keep PyTorch's default, as in mmseg.
        for m in self.modules():
            if isinstance(m, ConvBNReLU | _ConvSigmoid):
                nn.init.kaiming_normal_(m.conv.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def _resize(self, x: Tensor, like: Tensor) -> Tensor:
        return F.interpolate(
            x, size=like.shape[-2:], mode="bilinear", align_corners=self.align_corners
        )

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        levels = [features[i] for i in self.in_index]
        high = levels[-1]
        if self.low_classifier is not None:  # torchvision
            x = self.aspp_conv(high) * self.image_pool(high)  # (N, C, 1, 1) broadcast
            x = self._resize(x, levels[0])
            return self.low_classifier(levels[0]) + self.conv_seg(self.dropout(x))
        if min(high.shape[-2:]) < POOL_KERNEL:
            raise ValueError(
                f"LRASPPHead variant='mmseg' pools the high level with a {POOL_KERNEL}x"
                f"{POOL_KERNEL} window without padding (mmseg's AvgPool2d(49, stride=(16, 20))), "
                f"but that level is {tuple(high.shape[-2:])}: the input must be at least 49 x "
                "the level's stride on each side (392 px at output stride 8)"
            )
        x = self.aspp_conv(high) * self._resize(self.image_pool(high), high)
        x = self.conv_up_input(x)
        for i in range(len(self.branch_channels) - 1, -1, -1):
            x = self._resize(x, levels[i])
            x = self.conv_ups[i](torch.cat([x, self.convs[i](levels[i])], dim=1))
        return self.conv_seg(self.dropout(x))


@register_head(
    "lraspp",
    output_stride=16,
    tiny={
        "backbone": "mobilenet_v3_small",
        "aux": True,
        "head_kwargs": {"channels": 16},
        "aux_kwargs": {"channels": 8},
    },
)
def _lraspp(
    feature_info: Sequence[FeatureInfo],
    num_classes: int,
    *,
    output_stride: int,
    align_corners: bool,
    **head_kwargs: object,
) -> nn.Module:
    """LR-ASPP (torchvision ``lraspp_mobilenet_v3_large`` by default, at output stride 16).

    ``head_kwargs={"variant": "mmseg"}`` with ``output_stride=8`` is mmseg's
    ``lraspp_m-v3-d8``. ``in_index`` defaults to ``(2, -1)`` (torchvision: MobileNetV3's
    stride-8 level and the last) or ``(0, 1, -1)`` (mmseg).
    """
    del output_stride  # the head has no rate that depends on it
    variant = str(head_kwargs.get("variant", "torchvision"))
    default = _DEFAULT_IN_INDEX.get(variant, _DEFAULT_IN_INDEX["torchvision"])
    in_index = check_in_index(feature_info, head_kwargs.pop("in_index", default), head="lraspp")
    if isinstance(in_index, int):
        raise ValueError(
            f"lraspp: in_index must name several levels (low..., high), got {in_index}"
        )
    head_kwargs.setdefault("align_corners", align_corners)
    return LRASPPHead(
        [feature_info[i][0] for i in in_index],
        num_classes,
        in_index=in_index,
        **head_kwargs,  # type: ignore[arg-type]
    )
