"""MobileNetV3-Large and -Small, dilated for segmentation.

Howard et al., "Searching for MobileNetV3" (ICCV 2019), Tables 1 and 2. Layer for layer as
torchvision 0.29 ``torchvision/models/mobilenetv3.py`` built with ``dilated=True`` (what
``lraspp_mobilenet_v3_large`` and ``deeplabv3_mobilenet_v3_large`` use), without the
classifier:

* ``features.0``: 3x3 stride-2 conv 3->16, BN, Hardswish;
* ``features.1..15`` (Large) / ``features.1..11`` (Small): inverted residual blocks, each an
  ``nn.Sequential`` called ``block``: a 1x1 expansion conv + BN + act (absent when the
  expansion width equals the input width), a depthwise ``k x k`` conv + BN + act, an
  optional squeeze-excitation (``avgpool``, ``fc1`` 1x1 conv + ReLU, ``fc2`` 1x1 conv +
  Hardsigmoid; squeeze width ``make_divisible(expanded // 4, 8)``), a 1x1 projection + BN;
  a residual where the stride is 1 and the widths agree. act is ReLU or Hardswish;
* ``features.16`` (Large, 960) / ``features.12`` (Small, 576): 1x1 conv + BN + Hardswish.

BatchNorm: ``eps=1e-3`` (torchvision and mmseg: not PyTorch's 1e-5), momentum 0.01
(torchvision) or 0.1 (mmseg's config). Output stride: 32 undilated; 16 (torchvision's
``dilated=True``) makes the last stride-2 block stride 1 with dilation 2, as every block
after it; 8 (mmseg's ``lraspp_m-v3-d8``) does the same one stage earlier, so the
stride-16 stage has dilation 2 and the last one dilation 4 (the formerly strided block
takes the new dilation: not contracted, as both references).

``variant="mmseg"`` follows mmsegmentation 1.2.2 ``mmseg/models/backbones/mobilenet_v3.py``
(same layers): its stride-2 convs (the stem and the stride-2 depthwise convs) pad as
TensorFlow's ``"SAME"`` (mmcv's ``Conv2dAdaptivePadding``: ``ceil(H / 2)`` outputs, the odd
pixel of padding at the bottom/right), where torchvision pads ``k // 2`` on every side; the
two agree on odd input sizes only. ``"torchvision"`` is the default.

Outputs (``feature_info``): four levels, chosen so that both LR-ASPP references and
torchvision's DeepLabV3 read them by ``in_index`` (Large / Small, channels, stride):

0. ``features.1`` (16) / ``features.0`` (16), stride 2: the end of the stride-2 stage
   (mmseg LR-ASPP's first branch: mmseg ``out_indices`` 1 / 0);
1. ``features.3`` (24) / ``features.1`` (16), stride 4: the end of the stride-4 stage
   (mmseg LR-ASPP's second branch: ``out_indices`` 3 / 1);
2. ``features.4`` (40) / ``features.2`` (24), stride 8: the *first* stride-8 block,
   torchvision's ``stage_indices[-4]`` ("C2"): LR-ASPP's ``low`` and DeepLabV3's ``aux``;
3. ``features.16`` (960) / ``features.12`` (576), the output stride: every head's high level
   (mmseg ``out_indices`` 16 / 12).

Module names are torchvision's, so its ImageNet checkpoints load by name
(``classifier.*`` dropped); :meth:`MobileNetV3.load_pretrained_state_dict` also maps
mmseg's layout (``layer0`` .. ``layer16``, ``expand_conv`` / ``depthwise_conv`` / ``se`` /
``linear_conv``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from ._features import FeatureInfo
from ._registry import build_checked, register_backbone
from .norm import FrozenBatchNorm2d, NormLayer, get_norm_layer, is_batch_norm
from .pretrained import backbone_part, check_state_dict, reconcile_buffers

__all__ = [
    "SOURCES",
    "BlockConfig",
    "InvertedResidual",
    "MobileNetV3",
    "SamePadConv2d",
    "SqueezeExcitation",
    "convert_mobilenetv3_state_dict",
    "make_divisible",
]

SOURCES: tuple[str, ...] = ("auto", "torchvision", "mmseg")
VARIANTS: tuple[str, ...] = ("torchvision", "mmseg")
BN_EPS = 1e-3
BN_MOMENTUM = {"torchvision": 0.01, "mmseg": 0.1}


class BlockConfig(NamedTuple):
    """One inverted residual block of the paper's tables."""

    kernel: int
    expanded: int
    out: int
    use_se: bool
    activation: str  # "RE" (ReLU) or "HS" (Hardswish)
    stride: int


_B = BlockConfig
# Howard et al. (2019), Table 1 (Large) and Table 2 (Small); the stem has 16 channels.
_ARCHS: dict[str, tuple[tuple[BlockConfig, ...], int]] = {
    "mobilenet_v3_large": (
        (
            _B(3, 16, 16, False, "RE", 1),
            _B(3, 64, 24, False, "RE", 2),
            _B(3, 72, 24, False, "RE", 1),
            _B(5, 72, 40, True, "RE", 2),
            _B(5, 120, 40, True, "RE", 1),
            _B(5, 120, 40, True, "RE", 1),
            _B(3, 240, 80, False, "HS", 2),
            _B(3, 200, 80, False, "HS", 1),
            _B(3, 184, 80, False, "HS", 1),
            _B(3, 184, 80, False, "HS", 1),
            _B(3, 480, 112, True, "HS", 1),
            _B(3, 672, 112, True, "HS", 1),
            _B(5, 672, 160, True, "HS", 2),
            _B(5, 960, 160, True, "HS", 1),
            _B(5, 960, 160, True, "HS", 1),
        ),
        960,
    ),
    "mobilenet_v3_small": (
        (
            _B(3, 16, 16, True, "RE", 2),
            _B(3, 72, 24, False, "RE", 2),
            _B(3, 88, 24, False, "RE", 1),
            _B(5, 96, 40, True, "HS", 2),
            _B(5, 240, 40, True, "HS", 1),
            _B(5, 240, 40, True, "HS", 1),
            _B(5, 120, 48, True, "HS", 1),
            _B(5, 144, 48, True, "HS", 1),
            _B(5, 288, 96, True, "HS", 2),
            _B(5, 576, 96, True, "HS", 1),
            _B(5, 576, 96, True, "HS", 1),
        ),
        576,
    ),
}
_STEM = 16


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to a multiple of ``divisor`` (>= divisor), never more than 10% down."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


class SamePadConv2d(nn.Conv2d):
    """A conv padded as TensorFlow's ``"SAME"`` (mmcv ``Conv2dAdaptivePadding``).

    The padding is computed from each input's size: ``ceil(H / stride)`` outputs, the total
    padding split with the odd pixel at the bottom/right. Same parameters as ``nn.Conv2d``.
    """

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s, d in zip(
            reversed(x.shape[-2:]),
            reversed(self.kernel_size),
            reversed(self.stride),
            reversed(self.dilation),
            strict=True,
        ):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads) if any(pads) else x)


def _conv_norm_act(
    cin: int,
    cout: int,
    kernel: int,
    *,
    norm: NormLayer,
    act: type[nn.Module] | None,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
    same_pad: bool = False,
) -> nn.Sequential:
    """torchvision's ``Conv2dNormActivation``: ``0`` conv (no bias), ``1`` norm, ``2`` act."""
    if same_pad and stride > 1:
        conv: nn.Conv2d = SamePadConv2d(
            cin, cout, kernel, stride=stride, dilation=dilation, groups=groups, bias=False
        )
    else:  # for stride 1, "SAME" is this symmetric padding (odd kernels)
        pad = (kernel - 1) // 2 * dilation
        conv = nn.Conv2d(
            cin, cout, kernel, stride, pad, dilation=dilation, groups=groups, bias=False
        )
    layers = [conv, norm(cout)]
    if act is not None:
        layers.append(act(inplace=True))
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    """Squeeze-excitation (torchvision's ``SqueezeExcitation``): ``x * hsigmoid(fc2(relu(fc1(pool(x)))))``."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: Tensor) -> Tensor:
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return self.scale_activation(scale) * x


class InvertedResidual(nn.Module):
    """Expansion, depthwise conv (``stride`` or ``dilation``), SE, projection; residual if shapes allow.

    The residual and ``is_strided`` follow the paper's stride: a block made stride 1 by
    dilation keeps no residual, as torchvision's (``use_res_connect``, ``_is_cn``).
    """

    def __init__(
        self, cin: int, cfg: BlockConfig, *, dilation: int, norm: NormLayer, same_pad: bool
    ) -> None:
        super().__init__()
        act = nn.Hardswish if cfg.activation == "HS" else nn.ReLU
        layers: list[nn.Module] = []
        self.has_expand = cfg.expanded != cin
        self.has_se = cfg.use_se
        if self.has_expand:
            layers.append(_conv_norm_act(cin, cfg.expanded, 1, norm=norm, act=act))
        stride = 1 if dilation > 1 else cfg.stride
        layers.append(
            _conv_norm_act(
                cfg.expanded,
                cfg.expanded,
                cfg.kernel,
                norm=norm,
                act=act,
                stride=stride,
                dilation=dilation,
                groups=cfg.expanded,
                same_pad=same_pad,
            )
        )
        if self.has_se:
            layers.append(SqueezeExcitation(cfg.expanded, make_divisible(cfg.expanded // 4, 8)))
        layers.append(_conv_norm_act(cfg.expanded, cfg.out, 1, norm=norm, act=None))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = cfg.stride == 1 and cin == cfg.out
        self.is_strided = cfg.stride > 1
        self.out_channels = cfg.out

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


def _resolve_norm(norm_layer: str | NormLayer, variant: str) -> NormLayer:
    """String norms get MobileNetV3's eps 1e-3 (and the variant's BN momentum)."""
    if not isinstance(norm_layer, str):
        return get_norm_layer(norm_layer)
    cls = get_norm_layer(norm_layer)
    if cls is FrozenBatchNorm2d:
        return functools.partial(FrozenBatchNorm2d, eps=BN_EPS)
    if isinstance(cls, type) and issubclass(cls, nn.modules.batchnorm._BatchNorm):
        return functools.partial(cls, eps=BN_EPS, momentum=BN_MOMENTUM[variant])
    return cls


class MobileNetV3(nn.Module):
    """MobileNetV3 backbone returning four levels (see the module docstring) as a list.

    Use :func:`seg_backbones.create_backbone` (``"mobilenet_v3_large"``,
    ``"mobilenet_v3_small"``) rather than this class.

    Args:
        blocks: the inverted residual blocks (:class:`BlockConfig`), in order.
        last_channels: width of the final 1x1 conv (960 Large, 576 Small).
        output_stride: 8, 16 or 32 (see the module docstring).
        variant: ``"torchvision"`` or ``"mmseg"`` (``"SAME"`` padding of the stride-2 convs,
            BN momentum 0.1).
        norm_layer: ``"bn" | "syncbn" | "frozen_bn"`` (eps 1e-3) or a callable
            ``num_features -> nn.Module`` (used as given); ``"gn"`` fails (widths such as
            16 and 72 are not multiples of 32).
        norm_eval: keep every BatchNorm in eval mode during training.
        frozen_stages: -1 none; k >= 0 freezes ``features.0`` .. ``features.k`` (no
            gradients, eval mode; mmseg's ``layer0`` .. ``layerk``).
        in_chans: input channels.
        name: the registered name, for error messages.
    """

    def __init__(
        self,
        *,
        blocks: Sequence[BlockConfig],
        last_channels: int,
        output_stride: int = 32,
        variant: str = "torchvision",
        norm_layer: str | NormLayer = "bn",
        norm_eval: bool = False,
        frozen_stages: int = -1,
        in_chans: int = 3,
        name: str = "MobileNetV3",
    ) -> None:
        super().__init__()
        if isinstance(output_stride, bool) or output_stride not in (8, 16, 32):
            raise ValueError(
                f"{name}: output_stride must be one of [8, 16, 32], got {output_stride!r} "
                "(16: the last stride-2 block dilated, as torchvision's dilated=True; "
                "8: also the one before, as mmseg's lraspp_m-v3-d8)"
            )
        if variant not in VARIANTS:
            raise ValueError(f"{name}: unknown variant {variant!r}; valid: {list(VARIANTS)}")
        n_modules = len(blocks) + 2
        if not isinstance(frozen_stages, int) or not -1 <= frozen_stages < n_modules:
            raise ValueError(
                f"{name}: frozen_stages must be an int in [-1, {n_modules - 1}] (-1: none, k: "
                f"features.0 .. features.k), got {frozen_stages!r}"
            )
        norm = _resolve_norm(norm_layer, variant)
        same = variant == "mmseg"
        self.variant = variant
        self.output_stride = output_stride
        self.norm_eval = norm_eval
        self.frozen_stages = frozen_stages
        layers: list[nn.Module] = [
            _conv_norm_act(in_chans, _STEM, 3, norm=norm, act=nn.Hardswish, stride=2, same_pad=same)
        ]
        # the paper's (undilated) stride after each module, to place the output levels
        strides = [2]
        stride, dilation, cin = 2, 1, _STEM
        for cfg in blocks:
            if cfg.stride > 1:
                if stride >= output_stride:
                    dilation *= cfg.stride
                else:
                    stride *= cfg.stride
            layers.append(InvertedResidual(cin, cfg, dilation=dilation, norm=norm, same_pad=same))
            strides.append(strides[-1] * cfg.stride)
            cin = cfg.out
        layers.append(_conv_norm_act(cin, last_channels, 1, norm=norm, act=nn.Hardswish))
        strides.append(strides[-1])
        self.features = nn.Sequential(*layers)
        self.out_indices = (
            max(i for i, s in enumerate(strides) if s == 2),
            max(i for i, s in enumerate(strides) if s == 4),
            strides.index(8),
            len(layers) - 1,
        )
        widths = [_STEM] + [b.out for b in blocks] + [last_channels]
        self.feature_info = [
            FeatureInfo(widths[i], min(strides[i], output_stride)) for i in self.out_indices
        ]
        self._init_weights()
        self._freeze_stages()

    def _init_weights(self) -> None:
        # torchvision and mmseg alike: Kaiming-normal fan_out convs, zero biases, norms 1/0
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.modules.batchnorm._NormBase | nn.GroupNorm) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _freeze_stages(self) -> None:
        for m in list(self.features)[: self.frozen_stages + 1]:
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> MobileNetV3:
        """Set train mode, keeping frozen stages (and all BN layers if ``norm_eval``) in eval."""
        super().train(mode)
        if mode:
            self._freeze_stages()
            if self.norm_eval:
                for m in self.modules():
                    if is_batch_norm(m):
                        m.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.out_indices:
                outs.append(x)
        return outs

    def load_pretrained_state_dict(
        self, state_dict: Mapping[str, Tensor], *, source: str = "auto"
    ) -> None:
        """:func:`seg_backbones.load_pretrained`'s hook: torchvision or mmseg weights.

        See :func:`convert_mobilenetv3_state_dict`.
        """
        sd = convert_mobilenetv3_state_dict(state_dict, source=source, model=self)
        self.load_state_dict(sd, strict=True)


# ----------------------------------------------------------------------------------------
# weight layouts


def _detect(sd: Mapping[str, Tensor]) -> str:
    if "features.0.0.weight" in sd:
        return "torchvision"
    if "layer0.conv.weight" in sd:
        return "mmseg"
    raise ValueError(
        "cannot recognise this MobileNetV3 state dict: looked for 'features.0.0.weight' "
        f"(torchvision) and 'layer0.conv.weight' (mmseg); first keys: {sorted(sd)[:8]}. "
        "Pass source=... explicitly or strip a prefix first."
    )


def _mmseg_names(model: MobileNetV3) -> dict[str, str]:
    """mmseg module prefix -> ours, from ``model``'s own blocks (which have expand/SE)."""
    table: dict[str, str] = {}
    for i, layer in enumerate(model.features):
        if not isinstance(layer, InvertedResidual):  # stem and last conv: ConvModule
            table[f"layer{i}.conv"] = f"features.{i}.0"
            table[f"layer{i}.bn"] = f"features.{i}.1"
            continue
        names = ["expand_conv"] if layer.has_expand else []
        names += ["depthwise_conv", "se"] if layer.has_se else ["depthwise_conv"]
        names += ["linear_conv"]
        for j, mm in enumerate(names):
            ours = f"features.{i}.block.{j}"
            if mm == "se":
                table[f"layer{i}.se.conv1.conv"] = f"{ours}.fc1"
                table[f"layer{i}.se.conv2.conv"] = f"{ours}.fc2"
            else:
                table[f"layer{i}.{mm}.conv"] = f"{ours}.0"
                table[f"layer{i}.{mm}.bn"] = f"{ours}.1"
    return table


def convert_mobilenetv3_state_dict(
    state_dict: Mapping[str, Tensor], *, source: str = "auto", model: MobileNetV3
) -> dict[str, Tensor]:
    """A MobileNetV3 state dict in torchvision or mmseg layout -> ``model``'s keys, checked strictly.

    ``source``: ``"auto"`` (from the keys), ``"torchvision"`` (ImageNet classification
    checkpoints, ``features.*``; ``classifier.*`` is dropped) or ``"mmseg"`` (``layer0`` ..
    ``layerN``). A common ``module.`` or ``backbone.`` prefix is stripped; anything else
    that does not fit raises :class:`~seg_backbones.IncompatibleWeightsError` listing the
    keys. mmseg's weights were trained with ``"SAME"`` padding: build ``variant="mmseg"`` to
    reproduce its outputs (the keys are the same either way).
    """
    if source not in SOURCES:
        raise ValueError(
            f"unknown MobileNetV3 weights source {source!r}; valid sources are {SOURCES}"
        )
    sd = dict(state_dict)
    sd = backbone_part(
        sd,
        use="seg_heads.convert.from_torchvision(path, arch='lraspp_mobilenet_v3_large') or from_mmseg(path, arch='lraspp_m-v3-d8')",
    )
    if source == "auto":
        source = _detect(sd)
    if source == "torchvision":
        sd = {k: v for k, v in sd.items() if not k.startswith("classifier.")}
    else:
        table = _mmseg_names(model)
        renamed = {}
        for k, v in sd.items():
            module, _, param = k.rpartition(".")
            renamed[f"{table[module]}.{param}" if module in table else k] = v
        sd = renamed
    sd = reconcile_buffers(sd, model.state_dict())
    check_state_dict(model, sd, source=source)
    return sd


# ----------------------------------------------------------------------------------------
# variants: plain data merged with the user's keyword-only options


def _create(
    name: str,
    *,
    output_stride: int = 32,
    variant: str = "torchvision",
    norm_layer: str | NormLayer = "bn",
    norm_eval: bool = False,
    frozen_stages: int = -1,
    in_chans: int = 3,
) -> MobileNetV3:
    blocks, last = _ARCHS[name]
    return MobileNetV3(
        blocks=blocks,
        last_channels=last,
        output_stride=output_stride,
        variant=variant,
        norm_layer=norm_layer,
        norm_eval=norm_eval,
        frozen_stages=frozen_stages,
        in_chans=in_chans,
        name=name,
    )


@register_backbone("mobilenet_v3_large")
def mobilenet_v3_large(**kwargs: Any) -> MobileNetV3:
    """MobileNetV3-Large: levels 16/24/40/960 at strides 2/4/8/OS (torchvision, mmseg ``large``)."""
    return build_checked("mobilenet_v3_large", _create, kwargs)  # type: ignore[return-value]


@register_backbone("mobilenet_v3_small")
def mobilenet_v3_small(**kwargs: Any) -> MobileNetV3:
    """MobileNetV3-Small: levels 16/16/24/576 at strides 2/4/8/OS (torchvision, mmseg ``small``)."""
    return build_checked("mobilenet_v3_small", _create, kwargs)  # type: ignore[return-value]
