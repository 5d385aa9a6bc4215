"""mmsegmentation DDRNet checkpoints (``ddrnet_23-slim_in1k-pre``, ``ddrnet_23_in1k-pre``).

mmseg's ``EncoderDecoder`` keys: ``backbone.*`` (``DDRNet``, our names:
:mod:`seg_backbones.ddrnet`) and ``decode_head.*`` (``DDRHead``, our names:
:mod:`seg_heads.ddrnet`), including the training-only ``decode_head.aux_head.*`` /
``aux_cls_seg.*``, which load into our auxiliary branch (a checkpoint without them builds
the head with ``aux_branch=False``). The configs have no ``auxiliary_head``. The twin:
``ddrnet_23_slim`` / ``ddrnet_23`` with the ``"ddrnet"`` head, ``channels`` read from the
weights; ``align_corners=False`` as the configs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from seg_backbones.ddrnet import convert_ddrnet_state_dict

from ..model import IMAGENET_RGB, SegmentationModel
from ._common import build_and_load, require
from .mmseg import MMSegArch, register_mmseg_arch

_RULES: list[tuple[str, str]] = [(r"decode_head\.(.+)", r"decode_head.\1")]

# base width (backbone.stem.0.conv: 3 -> c) of each backbone, and the arch that has it
_WIDTH = {"ddrnet_23_slim": 32, "ddrnet_23": 64}
_ARCH = {32: "ddrnet_23-slim_in1k-pre", 64: "ddrnet_23_in1k-pre"}


def _ddrnet_backbone(sd: dict[str, Tensor], backbone: nn.Module) -> dict[str, Tensor]:
    return convert_ddrnet_state_dict(sd, source="mmseg", model=backbone)


def _check_width(sd: Mapping[str, Tensor], backbone: str, where: str) -> None:
    width = int(require(sd, "backbone.stem.0.conv.weight", where).shape[0])
    if width != _WIDTH[backbone]:
        raise ValueError(
            f"{where}: the checkpoint's DDRNet has base width {width} (backbone.stem.0.conv), "
            f"the arch's {backbone} has {_WIDTH[backbone]}; use arch="
            f"{_ARCH.get(width, sorted(_ARCH.values()))!r}"
        )


def _ddr_head_options(sd: Mapping[str, Tensor], where: str) -> dict[str, Any]:
    """DDRHead width as stored in the weights; the auxiliary branch when its keys are there."""
    width = require(sd, "decode_head.head.0.conv.weight", where)
    aux = [k for k in sd if k.startswith(("decode_head.aux_head.", "decode_head.aux_cls_seg."))]
    opts: dict[str, Any] = {"channels": int(width.shape[0])}
    if not aux:
        opts["aux_branch"] = False
    return opts


def ddrnet_mmseg(backbone: str) -> Callable[..., SegmentationModel]:
    """The converter of mmseg's DDRNet on ``backbone`` (``ddrnet_23_slim`` or ``ddrnet_23``)."""

    def convert(sd: dict[str, Tensor], *, where: str, align_corners: bool) -> SegmentationModel:
        _check_width(sd, backbone, where)
        build = {
            "name": "ddrnet",
            "backbone": backbone,
            "num_classes": int(require(sd, "decode_head.conv_seg.weight", where).shape[0]),
            "output_stride": 32,
            "aux": False,
            "align_corners": align_corners,
            "pretrained_backbone": None,
            "backbone_kwargs": {},
            "head_kwargs": _ddr_head_options(sd, where),
            "aux_kwargs": {},
        }
        return build_and_load(
            sd,
            where=where,
            build=build,
            backbone_source=_ddrnet_backbone,
            head_prefixes=("decode_head",),
            rules=_RULES,
            input_norm=IMAGENET_RGB,
        )

    return convert


# (576, 704): strides 8..64 give 72x88, 36x44, 18x22, 9x11, so DAPPM's 5/2/2, 9/4/4 and
# 17/8/8 pools give 5x6, 3x3 and 2x2 (each a real bilinear resize back to 9x11), and every
# fusion resizes between odd and even sizes; mmseg needs multiples of 8.
for _backbone, _arch in (
    ("ddrnet_23_slim", "ddrnet_23-slim_in1k-pre"),
    ("ddrnet_23", "ddrnet_23_in1k-pre"),
):
    register_mmseg_arch(
        _arch,
        MMSegArch(
            ddrnet_mmseg(_backbone),
            f"ddrnet/{_arch}_2xb6-120k_cityscapes-1024x1024.py",
            input_size=(576, 704),
            align_corners=False,
        ),
    )
