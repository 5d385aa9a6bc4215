"""mmsegmentation LR-ASPP-on-MobileNetV3 checkpoints (``lraspp_m-v3-d8``).

mmseg's ``EncoderDecoder`` keys: ``backbone.layer0`` .. ``backbone.layer16`` (MobileNetV3-Large,
mapped by :func:`seg_backbones.mobilenetv3.convert_mobilenetv3_state_dict`) and
``decode_head.*`` (mmseg's ``LRASPPHead``, the names of our ``variant="mmseg"`` head). The
twin: ``mobilenet_v3_large`` with ``variant="mmseg"`` ("SAME" padding) at output stride 8,
the head reading levels ``(0, 1, 3)`` (mmseg's ``out_indices=(1, 3, 16)``: 16, 24 and 960
channels). The configs have no auxiliary head.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from seg_backbones.mobilenetv3 import convert_mobilenetv3_state_dict

from ..model import IMAGENET_RGB, SegmentationModel
from ._common import build_and_load, require
from .mmseg import MMSegArch, register_mmseg_arch

_RULES: list[tuple[str, str]] = [(r"decode_head\.(.+)", r"decode_head.\1")]

# the backbone's last layer (mmseg ``layer<N>``, the 1x1 conv) tells Large from Small
_LAST_LAYER = {"mobilenet_v3_large": 16, "mobilenet_v3_small": 12}


def _mobilenet_backbone(sd: dict[str, Tensor], backbone: nn.Module) -> dict[str, Tensor]:
    return convert_mobilenetv3_state_dict(sd, source="mmseg", model=backbone)  # type: ignore[arg-type]


def _check_backbone(sd: Mapping[str, Tensor], backbone: str, where: str) -> None:
    found = [
        name
        for name, n in _LAST_LAYER.items()
        if f"backbone.layer{n}.conv.weight" in sd
        and f"backbone.layer{n + 1}.conv.weight" not in sd
        and not any(k.startswith(f"backbone.layer{n + 1}.") for k in sd)
    ]
    if found != [backbone]:
        raise ValueError(
            f"{where}: expected mmseg MobileNetV3 weights of {backbone} (last layer "
            f"backbone.layer{_LAST_LAYER[backbone]}), found {found or 'neither Large nor Small'}; "
            "'lraspp_m-v3-d8' is MobileNetV3-Large (mmseg's lraspp_m-v3s-d8 is Small)"
        )


def _lraspp_options(sd: Mapping[str, Tensor], where: str) -> dict[str, Any]:
    """mmseg LRASPPHead widths as stored in the weights (two branches, as every config)."""
    branches = []
    while f"decode_head.convs.conv{len(branches)}.weight" in sd:
        branches.append(int(sd[f"decode_head.convs.conv{len(branches)}.weight"].shape[0]))
    if len(branches) != 2:
        raise ValueError(
            f"{where}: {len(branches)} low-level branches in decode_head.convs; mmseg's "
            "LR-ASPP configs use branch_channels (32, 64) on backbone levels 0 and 1"
        )
    return {
        "variant": "mmseg",
        "channels": int(require(sd, "decode_head.aspp_conv.conv.weight", where).shape[0]),
        "branch_channels": branches,
    }


def lraspp_mmseg(backbone: str) -> Callable[..., SegmentationModel]:
    """The converter of mmseg's LR-ASPP (``-d8``: output stride 8) on ``backbone``."""

    def convert(sd: dict[str, Tensor], *, where: str, align_corners: bool) -> SegmentationModel:
        _check_backbone(sd, backbone, where)
        build = {
            "name": "lraspp",
            "backbone": backbone,
            "num_classes": int(require(sd, "decode_head.conv_seg.weight", where).shape[0]),
            "output_stride": 8,
            "aux": False,
            "align_corners": align_corners,
            "pretrained_backbone": None,
            "backbone_kwargs": {"variant": "mmseg"},
            "head_kwargs": _lraspp_options(sd, where),
            "aux_kwargs": {},
        }
        return build_and_load(
            sd,
            where=where,
            build=build,
            backbone_source=_mobilenet_backbone,
            head_prefixes=("decode_head",),
            rules=_RULES,
            input_norm=IMAGENET_RGB,
        )

    return convert


# (592, 712): the stride-8 map is 74x89, so the 49x49 / (16, 20) pool gives 2x3 (a real
# bilinear resize back), and every stride-2 "SAME" conv sees an even size (asymmetric pad).
# Two names: the zoo's checkpoint prefix (``lraspp_m-v3-d8_512x1024_320k_cityscapes_*.pth``)
# and mmseg 1.x's config name (``mobilenet-v3-d8_lraspp_4xb4-320k_cityscapes-512x1024``).
_LARGE = MMSegArch(
    lraspp_mmseg("mobilenet_v3_large"),
    "mobilenet_v3/mobilenet-v3-d8_lraspp_4xb4-320k_cityscapes-512x1024.py",
    input_size=(592, 712),
    align_corners=False,
)
register_mmseg_arch("lraspp_m-v3-d8", _LARGE)
register_mmseg_arch("mobilenet-v3-d8_lraspp", _LARGE)
