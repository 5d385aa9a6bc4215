"""Dilated ResNets for segmentation, with three stems.

He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016); the deep
stems follow He et al., "Bag of Tricks for Image Classification" (ResNet-C, 2019).

* ``resnet{18,34,50,101,152}``: torchvision's ResNet, 7x7 stem, parameter for
  parameter (state-dict keys ``conv1``, ``bn1``, ``layerN.M.*`` as torchvision).
* ``resnet{18,34,50,101}_v1c``: mmsegmentation's ``ResNetV1c``: three 3x3 convs
  3->32 (stride 2) ->32 ->64, each followed by BN + ReLU, then max-pool.
* ``resnet{18,34,50,101}_deep``: the "3x3-Res" stem of CSAIL
  semantic-segmentation-pytorch / torchcv / PyTorch-Encoding / PKUSeg:
  3->64 (stride 2) ->64 ->128, so layer1 starts from 128 channels.

Both deep stems are an ``nn.Sequential`` called ``stem`` laid out as mmseg's
(``stem.0`` conv, ``stem.1`` norm, ``stem.2`` ReLU, ``stem.3``/``4``/``5``,
``stem.6``/``7``/``8``). Bottleneck blocks put the stride on the 3x3 conv
(torchvision, mmseg ``style='pytorch'``).

Output stride (``8 | 16 | 32``) replaces the stride of layer3/layer4 with
dilation: OS8 uses strides (1, 2, 1, 1) and dilations (1, 1, 2, 4), OS16
(1, 2, 2, 1) and (1, 1, 1, 2). Each block of a stage gets a dilation ``D``: the
stage dilation, or with ``multi_grid`` (layer4 only) stage dilation x grid
(``multi_grid_mode="multiply"``: DeepLabV3 paper, torchcv, PKUSeg; OS8, (1, 2, 4) ->
4, 8, 16) or the grid itself (``"absolute"``: mmseg; (1, 2, 4) -> 1, 2, 4).
With ``contract_dilation=True`` (mmseg's configs, torchvision's
``replace_stride_with_dilation``, CSAIL, torchcv) the conv that had the stride, in
the first block of a dilated stage, uses ``D // 2``; ``False`` reproduces PKUSeg.
In ``"absolute"`` mode the grid is used as given, uncontracted (as mmseg).

BasicBlock (ResNet-18/34) ``conv2`` has no stride; ``basic_block_dilation`` says
what it gets: ``"conv1"`` keeps it at dilation 1 (mmseg's ``BasicBlock``; default
for the 7x7 and ``_v1c`` variants), ``"both"`` gives it the block dilation ``D``
(CSAIL / torchcv ``_nostride_dilate``; default for the ``_deep`` variants).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ._features import FeatureInfo
from ._registry import register_backbone
from .norm import NormLayer, get_norm_layer, is_batch_norm
from .pretrained import backbone_part, check_state_dict, reconcile_buffers

__all__ = ["SOURCES", "BasicBlock", "Bottleneck", "ResNet", "convert_state_dict", "detect_source"]

StemType = Literal["7x7", "deep"]
MultiGridMode = Literal["multiply", "absolute"]
BasicDilation = Literal["conv1", "both"]

# output stride -> (strides, dilations) of layer1..layer4
_STRIDES_DILATIONS: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    32: ((1, 2, 2, 2), (1, 1, 1, 1)),
    16: ((1, 2, 2, 1), (1, 1, 1, 2)),
    8: ((1, 2, 1, 1), (1, 1, 2, 4)),
}


def _conv3x3(cin: int, cout: int, *, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual (ResNet-18/34); ``dilation2`` is ``conv2``'s dilation."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        dilation2: int = 1,
        downsample: nn.Module | None = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride=stride, dilation=dilation)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, dilation=dilation2)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity  # in place, as torchvision: no extra activation-sized tensor per block
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, dilation) -> 1x1 with a residual (ResNet-50/101/152)."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        dilation2: int = 1,
        downsample: nn.Module | None = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        del dilation2  # a Bottleneck's only 3x3 conv is conv2, which takes ``dilation``
        width = planes
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = norm_layer(width)
        self.conv2 = _conv3x3(width, width, stride=stride, dilation=dilation)
        self.bn2 = norm_layer(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


Block = type[BasicBlock] | type[Bottleneck]


def block_dilations(
    num_blocks: int,
    dilation: int,
    *,
    contract_dilation: bool,
    multi_grid: Sequence[int] | None = None,
    multi_grid_mode: MultiGridMode = "multiply",
) -> tuple[list[int], list[int]]:
    """Dilations of a stage with stage dilation ``dilation``.

    Returns ``(main, full)``: ``main[j]`` for block ``j``'s strided-position 3x3 conv
    (Bottleneck ``conv2``, BasicBlock ``conv1``; contracted in the first block),
    ``full[j]`` the block dilation ``D`` before contraction.
    """
    if multi_grid is not None and multi_grid_mode == "absolute":
        return list(multi_grid), list(multi_grid)
    if multi_grid is not None:
        full = [dilation * g for g in multi_grid]
    else:
        full = [dilation] * num_blocks
    main = list(full)
    if contract_dilation and dilation > 1:
        main[0] = full[0] // 2
    return main, full


class ResNet(nn.Module):
    """ResNet backbone returning the outputs of layer1..layer4 as a list.

    Use :func:`seg_backbones.create_backbone` rather than this class directly;
    the module docstring explains every option.
    """

    def __init__(
        self,
        *,
        block: Block,
        layers: Sequence[int],
        stem_type: StemType = "7x7",
        stem_width: int = 64,
        inplanes: int = 64,
        output_stride: int = 32,
        contract_dilation: bool = True,
        multi_grid: Sequence[int] | None = None,
        multi_grid_mode: MultiGridMode = "multiply",
        basic_block_dilation: BasicDilation = "conv1",
        norm_layer: str | NormLayer = "bn",
        norm_eval: bool = False,
        frozen_stages: int = -1,
        zero_init_residual: bool = False,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if basic_block_dilation not in ("conv1", "both"):
            raise ValueError(
                "basic_block_dilation must be 'conv1' (mmseg) or 'both' (CSAIL/torchcv), "
                f"got {basic_block_dilation!r}"
            )
        if output_stride not in _STRIDES_DILATIONS:
            raise ValueError(
                f"output_stride must be one of {sorted(_STRIDES_DILATIONS)}, got {output_stride!r}"
            )
        if multi_grid_mode not in ("multiply", "absolute"):
            raise ValueError(
                f"multi_grid_mode must be 'multiply' or 'absolute', got {multi_grid_mode!r}"
            )
        if multi_grid is not None:
            multi_grid = tuple(multi_grid)
            if len(multi_grid) != layers[3] or not all(
                isinstance(g, int) and g >= 1 for g in multi_grid
            ):
                raise ValueError(
                    f"multi_grid must be {layers[3]} positive ints, one per layer4 block, "
                    f"got {multi_grid!r} (e.g. multi_grid=(1, 2, 4))"
                )
        if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= 4:
            raise ValueError(
                f"frozen_stages must be an int in [-1, 4] (-1: none, 0: stem, k: stem and "
                f"layer1..layerk), got {frozen_stages!r}"
            )
        if stem_type not in ("7x7", "deep"):
            raise ValueError(f"stem_type must be '7x7' or 'deep', got {stem_type!r}")
        norm = get_norm_layer(norm_layer)
        self.stem_type: StemType = stem_type
        self.output_stride = output_stride
        self.norm_eval = norm_eval
        self.frozen_stages = frozen_stages

        if stem_type == "7x7":
            self.conv1 = nn.Conv2d(in_chans, inplanes, 7, stride=2, padding=3, bias=False)
            self.bn1 = norm(inplanes)
            self.relu = nn.ReLU(inplace=True)
        else:
            self.stem = nn.Sequential(
                _conv3x3(in_chans, stem_width, stride=2),
                norm(stem_width),
                nn.ReLU(inplace=True),
                _conv3x3(stem_width, stem_width),
                norm(stem_width),
                nn.ReLU(inplace=True),
                _conv3x3(stem_width, inplanes),
                norm(inplanes),
                nn.ReLU(inplace=True),
            )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        strides, dilations = _STRIDES_DILATIONS[output_stride]
        self.feature_info: list[FeatureInfo] = []
        reduction = 4
        for i, (num_blocks, stride, dilation) in enumerate(
            zip(layers, strides, dilations, strict=True)
        ):
            planes = 64 * 2**i
            main, full = block_dilations(
                num_blocks,
                dilation,
                contract_dilation=contract_dilation,
                multi_grid=multi_grid if i == 3 else None,
                multi_grid_mode=multi_grid_mode,
            )
            second = full if basic_block_dilation == "both" else [1] * len(full)
            self.add_module(
                f"layer{i + 1}",
                self._make_layer(block, inplanes, planes, stride, main, second, norm),
            )
            inplanes = planes * block.expansion
            reduction *= stride
            self.feature_info.append(FeatureInfo(inplanes, reduction))

        self._init_weights(zero_init_residual)
        self._freeze_stages()

    @staticmethod
    def _make_layer(
        block: Block,
        inplanes: int,
        planes: int,
        stride: int,
        dilations: Sequence[int],
        dilations2: Sequence[int],
        norm: NormLayer,
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                norm(planes * block.expansion),
            )
        blocks: list[nn.Module] = []
        for j, (dilation, dilation2) in enumerate(zip(dilations, dilations2, strict=True)):
            blocks.append(
                block(
                    inplanes if j == 0 else planes * block.expansion,
                    planes,
                    stride=stride if j == 0 else 1,
                    dilation=dilation,
                    dilation2=dilation2,
                    downsample=downsample if j == 0 else None,
                    norm_layer=norm,
                )
            )
        return nn.Sequential(*blocks)

    def _init_weights(self, zero_init_residual: bool) -> None:
        # torchvision's initialisation
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.modules.batchnorm._NormBase | nn.GroupNorm) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                last = getattr(m, "bn3", None) if isinstance(m, Bottleneck) else None
                if isinstance(m, BasicBlock):
                    last = m.bn2
                weight = getattr(last, "weight", None)
                if isinstance(weight, Tensor):
                    with torch.no_grad():
                        weight.zero_()

    def _stem_modules(self) -> list[nn.Module]:
        return [self.stem] if self.stem_type == "deep" else [self.conv1, self.bn1]

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return self._stem_modules() + [
            getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)
        ]

    def _freeze_stages(self) -> None:
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> ResNet:
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
        if self.stem_type == "deep":
            x = self.stem(x)
        else:
            x = self.relu(self.bn1(self.conv1(x)))
        x = self.maxpool(x)
        feats = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            feats.append(x)
        return feats

    def load_pretrained_state_dict(
        self, state_dict: Mapping[str, Tensor], *, source: str = "auto"
    ) -> None:
        """:func:`seg_backbones.load_pretrained`'s hook: torchvision, timm, mmseg or CSAIL weights.

        See :func:`convert_state_dict`.
        """
        sd = convert_state_dict(state_dict, source=source, model=self)  # type: ignore[arg-type]
        self.load_state_dict(sd, strict=True)


# ----------------------------------------------------------------------------------------
# variants: plain data merged with the user's keyword-only options

_DEPTHS: dict[int, tuple[Block, tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}

_STEMS: dict[str, dict[str, Any]] = {
    "torchvision": {"stem_type": "7x7", "stem_width": 64, "inplanes": 64, "basic": "conv1"},
    "v1c": {"stem_type": "deep", "stem_width": 32, "inplanes": 64, "basic": "conv1"},  # mmseg
    "deep": {"stem_type": "deep", "stem_width": 64, "inplanes": 128, "basic": "both"},  # CSAIL
}


def _build(depth: int, stem: str, kwargs: dict[str, Any]) -> ResNet:
    unknown = sorted(set(kwargs) - _OPTIONS)
    if unknown:
        name = f"resnet{depth}" + ("" if stem == "torchvision" else f"_{stem}")
        raise TypeError(
            f"{name}: unknown option(s) {unknown}; valid keyword options are {sorted(_OPTIONS)}"
        )
    return _create_resnet(depth, stem, **kwargs)


def _create_resnet(
    depth: int,
    stem: str,
    *,
    output_stride: int = 32,
    contract_dilation: bool = True,
    multi_grid: Sequence[int] | None = None,
    multi_grid_mode: MultiGridMode = "multiply",
    basic_block_dilation: BasicDilation | None = None,
    norm_layer: str | NormLayer = "bn",
    norm_eval: bool = False,
    frozen_stages: int = -1,
    zero_init_residual: bool = False,
    in_chans: int = 3,
) -> ResNet:
    block, layers = _DEPTHS[depth]
    if not isinstance(output_stride, int) or isinstance(output_stride, bool):
        raise TypeError(f"output_stride must be an int (8, 16 or 32), got {output_stride!r}")
    stem_args = dict(_STEMS[stem])
    basic = stem_args.pop("basic")
    return ResNet(
        block=block,
        layers=layers,
        **stem_args,
        basic_block_dilation=basic if basic_block_dilation is None else basic_block_dilation,
        output_stride=output_stride,
        contract_dilation=contract_dilation,
        multi_grid=multi_grid,
        multi_grid_mode=multi_grid_mode,
        norm_layer=norm_layer,
        norm_eval=norm_eval,
        frozen_stages=frozen_stages,
        zero_init_residual=zero_init_residual,
        in_chans=in_chans,
    )


_OPTIONS = frozenset(
    n for n, p in inspect.signature(_create_resnet).parameters.items() if p.kind is p.KEYWORD_ONLY
)


@register_backbone("resnet18")
def resnet18(**kwargs: Any) -> ResNet:
    """torchvision ResNet-18 (7x7 stem)."""
    return _build(18, "torchvision", kwargs)


@register_backbone("resnet34")
def resnet34(**kwargs: Any) -> ResNet:
    """torchvision ResNet-34 (7x7 stem)."""
    return _build(34, "torchvision", kwargs)


@register_backbone("resnet50")
def resnet50(**kwargs: Any) -> ResNet:
    """torchvision ResNet-50 (7x7 stem)."""
    return _build(50, "torchvision", kwargs)


@register_backbone("resnet101")
def resnet101(**kwargs: Any) -> ResNet:
    """torchvision ResNet-101 (7x7 stem)."""
    return _build(101, "torchvision", kwargs)


@register_backbone("resnet152")
def resnet152(**kwargs: Any) -> ResNet:
    """torchvision ResNet-152 (7x7 stem)."""
    return _build(152, "torchvision", kwargs)


@register_backbone("resnet18_v1c")
def resnet18_v1c(**kwargs: Any) -> ResNet:
    """mmseg ResNetV1c-18 (deep stem 32-32-64)."""
    return _build(18, "v1c", kwargs)


@register_backbone("resnet34_v1c")
def resnet34_v1c(**kwargs: Any) -> ResNet:
    """mmseg ResNetV1c-34 (deep stem 32-32-64)."""
    return _build(34, "v1c", kwargs)


@register_backbone("resnet50_v1c")
def resnet50_v1c(**kwargs: Any) -> ResNet:
    """mmseg ResNetV1c-50 (deep stem 32-32-64)."""
    return _build(50, "v1c", kwargs)


@register_backbone("resnet101_v1c")
def resnet101_v1c(**kwargs: Any) -> ResNet:
    """mmseg ResNetV1c-101 (deep stem 32-32-64)."""
    return _build(101, "v1c", kwargs)


@register_backbone("resnet18_deep")
def resnet18_deep(**kwargs: Any) -> ResNet:
    """3x3-Res ResNet-18 (CSAIL/PKUSeg deep stem 64-64-128)."""
    return _build(18, "deep", kwargs)


@register_backbone("resnet34_deep")
def resnet34_deep(**kwargs: Any) -> ResNet:
    """3x3-Res ResNet-34 (CSAIL/PKUSeg deep stem 64-64-128)."""
    return _build(34, "deep", kwargs)


@register_backbone("resnet50_deep")
def resnet50_deep(**kwargs: Any) -> ResNet:
    """3x3-Res ResNet-50 (CSAIL/PKUSeg deep stem 64-64-128)."""
    return _build(50, "deep", kwargs)


@register_backbone("resnet101_deep")
def resnet101_deep(**kwargs: Any) -> ResNet:
    """3x3-Res ResNet-101 (CSAIL/PKUSeg deep stem 64-64-128)."""
    return _build(101, "deep", kwargs)


# ----------------------------------------------------------------------------------------
# weight layouts
#
# Ours is torchvision's for the 7x7 stem (``conv1``, ``bn1``, ``layerN.M.{conv,bn}K``,
# ``layerN.M.downsample.{0,1}``) and an ``nn.Sequential`` called ``stem`` for both deep stems
# (``stem.0`` conv, ``stem.1`` norm, ``stem.3``/``stem.4``, ``stem.6``/``stem.7``), as mmseg's
# ``ResNetV1c``. Source layouts recognised (all share torchvision's ``layerN.M.*`` block keys):
#
# ``torchvision``  ``conv1``, ``bn1`` (7x7 stem); also timm/mmseg 7x7 ResNets
# ``timm``         ``conv1.0/.1/.3/.4/.6`` + ``bn1`` (``resnet50c``/``101c`` deep stem)
# ``mmseg``        ``stem.0/.1/.3/.4/.6/.7`` (mmseg/mmpretrain ``ResNetV1c``)
# ``csail``        ``conv1/bn1/conv2/bn2/conv3/bn3`` (CSAIL ``3x3resnet`` stem)

Source = Literal["auto", "torchvision", "timm", "mmseg", "csail"]
SOURCES: tuple[str, ...] = ("auto", "torchvision", "timm", "mmseg", "csail")

# classifier weights are ignored by name: ``fc.*`` (torchvision, timm, CSAIL) and
# ``head.fc.*`` (mmpretrain classification checkpoints)
_CLASSIFIER_PREFIXES = ("fc.", "head.fc.")
_TIMM_STEM = {"conv1.0": "stem.0", "conv1.1": "stem.1", "conv1.3": "stem.3",
              "conv1.4": "stem.4", "conv1.6": "stem.6", "bn1": "stem.7"}  # fmt: skip
_CSAIL_STEM = {"conv1": "stem.0", "bn1": "stem.1", "conv2": "stem.3",
               "bn2": "stem.4", "conv3": "stem.6", "bn3": "stem.7"}  # fmt: skip


def detect_source(state_dict: Mapping[str, Any]) -> str:
    """Name the key layout of a backbone state dict: torchvision, timm, mmseg or csail."""
    keys = set(state_dict)
    if "stem.0.weight" in keys:
        return "mmseg"
    if "conv1.0.weight" in keys:
        return "timm"
    if "conv2.weight" in keys and "conv3.weight" in keys:
        return "csail"
    if "conv1.weight" in keys:
        return "torchvision"
    raise ValueError(
        "cannot recognise the key layout of this state dict (looked for 'stem.0.weight' "
        "(mmseg), 'conv1.0.weight' (timm deep stem), 'conv2.weight' + 'conv3.weight' "
        f"(csail), 'conv1.weight' (torchvision)); first keys: {sorted(keys)[:10]}. "
        "Pass source=... explicitly or strip a prefix first."
    )


def _rename_stem(sd: dict[str, Tensor], table: Mapping[str, str]) -> dict[str, Tensor]:
    out = {}
    for k, v in sd.items():
        module, _, param = k.rpartition(".")
        out[f"{table[module]}.{param}" if module in table else k] = v
    return out


def convert_state_dict(
    state_dict: Mapping[str, Tensor],
    *,
    source: Source = "auto",
    model: nn.Module | None = None,
) -> dict[str, Tensor]:
    """Map a backbone state dict in ``source``'s key layout to ours.

    ``source``: ``"auto"`` (detected from the keys), ``"torchvision"``, ``"timm"``,
    ``"mmseg"`` or ``"csail"``. Classifier weights (``fc.*``, ``head.fc.*``) are
    dropped; a common ``module.`` or ``backbone.`` prefix is stripped. With
    ``model``, the result is checked strictly against it (see :func:`seg_backbones.load_pretrained`)
    and ``num_batches_tracked`` buffers are reconciled with the model's.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; valid sources are {list(SOURCES)}")
    sd = {k: v for k, v in state_dict.items() if not k.startswith(_CLASSIFIER_PREFIXES)}
    sd = backbone_part(sd, use="seg_heads.convert (from_mmseg, from_torchvision)")
    sd = {k: v for k, v in sd.items() if not k.startswith(_CLASSIFIER_PREFIXES)}
    if source == "auto":
        source = detect_source(sd)  # type: ignore[assignment]
    if source == "timm" and "conv1.0.weight" in sd:
        sd = _rename_stem(sd, _TIMM_STEM)
    elif source == "csail":
        sd = _rename_stem(sd, _CSAIL_STEM)
    if model is not None:
        sd = reconcile_buffers(sd, model.state_dict())
        check_state_dict(model, sd, source=source, hint=_stem_hint(model, sd))
    return sd


def _stem_hint(model: nn.Module, sd: Mapping[str, Tensor]) -> str:
    stem_type = getattr(model, "stem_type", None)
    if stem_type == "deep" and "conv1.weight" in sd and "stem.0.weight" not in sd:
        return (
            "the weights have a 7x7 stem (torchvision layout) but the model has a deep "
            "stem; build 'resnetXX' instead of 'resnetXX_v1c'/'resnetXX_deep'."
        )
    if stem_type == "7x7" and "stem.0.weight" in sd:
        return (
            "the weights have a deep stem but the model has the 7x7 stem; build "
            "'resnetXX_v1c' (stem width 32) or 'resnetXX_deep' (stem width 64)."
        )
    w = sd.get("stem.0.weight")
    ref = model.state_dict().get("stem.0.weight")
    if w is not None and ref is not None and w.shape[0] != ref.shape[0]:
        return (
            f"the weights' deep stem starts with {w.shape[0]} channels, the model's with "
            f"{ref.shape[0]}: 32 is mmseg/timm ResNetV1c ('resnetXX_v1c'), 64 is the CSAIL "
            "3x3-Res stem ('resnetXX_deep')."
        )
    return ""
