"""torchvision ``models.segmentation`` checkpoints -> PKUSeg models with equal outputs.

ResNet models (``deeplabv3_resnet*``, ``fcn_resnet*``): the ResNet backbone at output
stride 8. MobileNetV3 models (``lraspp_mobilenet_v3_large``, ``deeplabv3_mobilenet_v3_large``):
``mobilenet_v3_large`` at output stride 16 (torchvision's ``dilated=True``), whose
``backbone.<i>.*`` keys (torchvision's ``IntermediateLayerGetter`` over ``features``) are
our ``backbone.features.<i>.*``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from seg_backbones.mobilenetv3 import convert_mobilenetv3_state_dict

from ..model import IMAGENET_RGB, SegmentationModel
from ._common import StateDictSource, build_and_load, load_checkpoint, match_arch, require

__all__ = ["TORCHVISION_ARCHS", "from_torchvision"]

# arch -> (model name, backbone name)
TORCHVISION_ARCHS: dict[str, tuple[str, str]] = {
    "deeplabv3_resnet50": ("deeplabv3", "resnet50"),
    "deeplabv3_resnet101": ("deeplabv3", "resnet101"),
    "fcn_resnet50": ("fcn", "resnet50"),
    "fcn_resnet101": ("fcn", "resnet101"),
    "lraspp_mobilenet_v3_large": ("lraspp", "mobilenet_v3_large"),
    "deeplabv3_mobilenet_v3_large": ("deeplabv3", "mobilenet_v3_large"),
}
"""torchvision ``models.segmentation`` builders that :func:`from_torchvision` converts."""


# torchvision DeepLabHead / FCNHead (nn.Sequential indices) -> PKUSeg names
_TV_ASPP_RULES: list[tuple[str, str]] = [
    (r"classifier\.0\.convs\.([0-3])\.0\.(.+)", r"decode_head.aspp_modules.\1.conv.\2"),
    (r"classifier\.0\.convs\.([0-3])\.1\.(.+)", r"decode_head.aspp_modules.\1.bn.\2"),
    (r"classifier\.0\.convs\.4\.1\.(.+)", r"decode_head.image_pool.1.conv.\1"),
    (r"classifier\.0\.convs\.4\.2\.(.+)", r"decode_head.image_pool.1.bn.\1"),
    (r"classifier\.0\.project\.0\.(.+)", r"decode_head.project.conv.\1"),
    (r"classifier\.0\.project\.1\.(.+)", r"decode_head.project.bn.\1"),
    (r"classifier\.1\.(.+)", r"decode_head.bottleneck.conv.\1"),
    (r"classifier\.2\.(.+)", r"decode_head.bottleneck.bn.\1"),
    (r"classifier\.4\.(.+)", r"decode_head.conv_seg.\1"),
]
_TV_FCN_RULES: list[tuple[str, str]] = [
    (r"classifier\.0\.(.+)", r"decode_head.convs.0.conv.\1"),
    (r"classifier\.1\.(.+)", r"decode_head.convs.0.bn.\1"),
    (r"classifier\.4\.(.+)", r"decode_head.conv_seg.\1"),
]
_TV_LRASPP_RULES: list[tuple[str, str]] = [
    (r"classifier\.cbr\.0\.(.+)", r"decode_head.aspp_conv.conv.\1"),
    (r"classifier\.cbr\.1\.(.+)", r"decode_head.aspp_conv.bn.\1"),
    (r"classifier\.scale\.1\.(.+)", r"decode_head.image_pool.1.conv.\1"),
    (r"classifier\.low_classifier\.(.+)", r"decode_head.low_classifier.\1"),
    (r"classifier\.high_classifier\.(.+)", r"decode_head.conv_seg.\1"),
]
_TV_AUX_RULES: list[tuple[str, str]] = [
    (r"aux_classifier\.0\.(.+)", r"aux_head.convs.0.conv.\1"),
    (r"aux_classifier\.1\.(.+)", r"aux_head.convs.0.bn.\1"),
    (r"aux_classifier\.4\.(.+)", r"aux_head.conv_seg.\1"),
]


def from_torchvision(src: StateDictSource, *, arch: str) -> SegmentationModel:
    """Build the PKUSeg twin of a torchvision segmentation model and load its weights.

    Args:
        src: path of a ``.pth`` file or a state dict of
            ``torchvision.models.segmentation.<arch>`` (with or without ``aux_classifier``).
        arch: one of :data:`TORCHVISION_ARCHS` (``"deeplabv3_resnet50"``, ...).

    The ResNet twin: torchvision ResNet backbone (7x7 stem) at output stride 8 with
    contracted dilation (``replace_stride_with_dilation=[False, True, True]``),
    the ``variant="torchvision"`` head, ``align_corners=False``, ``num_classes``
    read from ``classifier.4.weight``; ``input_norm`` is ImageNet RGB (torchvision's
    mean/std x 255). Outputs equal torchvision's (``"out"`` and ``"aux"``).

    The MobileNetV3 twins: ``mobilenet_v3_large`` at output stride 16; LR-ASPP with
    ``variant="torchvision"`` (``in_index=(2, 3)``: ``features.4`` and ``features.16``);
    DeepLabV3 with ``variant="torchvision"`` and torchvision's ``rates=(12, 24, 36)``
    (its default, kept at output stride 16), the aux FCN head on ``features.4`` (level 2).
    """
    arch = match_arch(arch, TORCHVISION_ARCHS, "torchvision")
    name, backbone = TORCHVISION_ARCHS[arch]
    where = f"from_torchvision({arch!r})"
    sd = load_checkpoint(src)
    if backbone.startswith("mobilenet_v3"):
        return _from_mobilenet(sd, arch, name, backbone, where)
    num_classes = int(require(sd, "classifier.4.weight", where).shape[0])
    aux = any(k.startswith("aux_classifier.") for k in sd)
    build = {
        "name": name,
        "backbone": backbone,
        "num_classes": num_classes,
        "output_stride": 8,
        "aux": aux,
        "align_corners": False,
        "pretrained_backbone": None,
        "backbone_kwargs": {"contract_dilation": True},
        "head_kwargs": {"variant": "torchvision"},
        "aux_kwargs": {"variant": "torchvision"},
    }
    rules = (_TV_ASPP_RULES if name == "deeplabv3" else _TV_FCN_RULES) + _TV_AUX_RULES
    return build_and_load(
        sd,
        where=where,
        build=build,
        backbone_source="torchvision",
        head_prefixes=("classifier", "aux_classifier"),
        rules=rules,
        input_norm=IMAGENET_RGB,
    )


# ----------------------------------------------------------------------------- MobileNetV3


def _mobilenet_backbone(sd: dict[str, Tensor], backbone: nn.Module) -> dict[str, Tensor]:
    """torchvision's ``backbone.<i>.*`` (``IntermediateLayerGetter``) -> ``features.<i>.*``."""
    tv = {f"features.{k}": v for k, v in sd.items()}
    return convert_mobilenetv3_state_dict(tv, source="torchvision", model=backbone)  # type: ignore[arg-type]


def _from_mobilenet(
    sd: dict[str, Tensor], arch: str, name: str, backbone: str, where: str
) -> SegmentationModel:
    lraspp = name == "lraspp"
    key = "classifier.low_classifier.weight" if lraspp else "classifier.4.weight"
    if key not in sd:
        raise KeyError(
            f"{where}: expected key {key!r} is missing, so these are not {arch} weights; keys "
            f"start with {sorted({k.split('.')[0] for k in sd})[:8]} (classifier keys "
            f"{sorted(k for k in sd if k.startswith('classifier.'))[:4]}). Is `arch` right? "
            f"valid archs are {sorted(TORCHVISION_ARCHS)}"
        )
    aux = any(k.startswith("aux_classifier.") for k in sd)
    head_kwargs: dict[str, Any] = {"variant": "torchvision"}
    if not lraspp:
        head_kwargs["rates"] = [12, 24, 36]  # torchvision's DeepLabHead default, at OS16
    build = {
        "name": name,
        "backbone": backbone,
        "num_classes": int(sd[key].shape[0]),
        "output_stride": 16,
        "aux": aux,
        "align_corners": False,
        "pretrained_backbone": None,
        "backbone_kwargs": {},
        "head_kwargs": head_kwargs,
        "aux_kwargs": {"variant": "torchvision", "in_index": 2} if aux else {},
    }
    rules = (_TV_LRASPP_RULES if lraspp else _TV_ASPP_RULES) + _TV_AUX_RULES
    return build_and_load(
        sd,
        where=where,
        build=build,
        backbone_source=_mobilenet_backbone,
        head_prefixes=("classifier", "aux_classifier"),
        rules=rules,
        input_norm=IMAGENET_RGB,
    )
