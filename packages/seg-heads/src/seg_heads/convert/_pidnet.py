"""mmsegmentation PIDNet checkpoints (``pidnet-s``, ``pidnet-m``, ``pidnet-l``).

mmseg's ``EncoderDecoder`` keys: ``backbone.*`` (``PIDNet``, our names:
:mod:`seg_backbones.pidnet`) and ``decode_head.*`` (``PIDHead``, our names:
:mod:`seg_heads.pidnet`), including the training-only ``decode_head.p_head.*``,
``d_head.*``, ``p_cls_seg.*`` and ``d_cls_seg.*``, which load into our training branches (a
checkpoint without them builds the head with ``train_branches=False``). The configs have
no ``auxiliary_head``. The twin: ``pidnet_s`` / ``_m`` / ``_l`` with the ``"pidnet"`` head,
``channels`` read from the weights.

Trap: the configs' ``align_corners=True`` is the decode head's, which in mmseg only governs
the final resize of the logits to the input (and the loss resizes); the backbone resizes
with its own ``align_corners=False``. So the arch says True, and our backbones keep False.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from seg_backbones.pidnet import convert_pidnet_state_dict

from ..model import IMAGENET_RGB, SegmentationModel
from ._common import build_and_load, require
from .mmseg import MMSegArch, register_mmseg_arch

_RULES: list[tuple[str, str]] = [(r"decode_head\.(.+)", r"decode_head.\1")]

_ARCHS = {"pidnet_s": "pidnet-s", "pidnet_m": "pidnet-m", "pidnet_l": "pidnet-l"}
_TRAIN_PREFIXES = tuple(f"decode_head.{m}." for m in ("p_head", "d_head", "p_cls_seg", "d_cls_seg"))


def _pidnet_backbone(sd: dict[str, Tensor], backbone: nn.Module) -> dict[str, Tensor]:
    return convert_pidnet_state_dict(sd, source="mmseg", model=backbone)


def _variant(sd: Mapping[str, Tensor], where: str) -> str:
    """S, M or L from the weights: the base width and the fusion module (Bag: L)."""
    width = int(require(sd, "backbone.stem.0.conv.weight", where).shape[0])
    bag = "backbone.dfm.conv.conv.weight" in sd  # L: Bag; S/M: LightBag (dfm.f_p / f_i)
    if width == 32 and not bag:
        return "pidnet_s"
    if width == 64:
        return "pidnet_l" if bag else "pidnet_m"
    raise ValueError(
        f"{where}: not an mmseg PIDNet-S/M/L checkpoint: base width {width} "
        f"(backbone.stem.0.conv; S 32, M/L 64), {'Bag' if bag else 'LightBag'} fusion (L: Bag)"
    )


def _pid_head_options(sd: Mapping[str, Tensor], where: str) -> dict[str, Any]:
    """PIDHead widths as stored in the weights; the P/D training heads when their keys are there."""
    opts: dict[str, Any] = {
        "channels": int(require(sd, "decode_head.i_head.conv.conv.weight", where).shape[0])
    }
    train = {p for p in _TRAIN_PREFIXES if any(k.startswith(p) for k in sd)}
    if not train:
        opts["train_branches"] = False
    elif len(train) != len(_TRAIN_PREFIXES):
        raise ValueError(
            f"{where}: the checkpoint has only part of PIDNet's training heads "
            f"({sorted(train)}, expected all of {list(_TRAIN_PREFIXES)} or none)"
        )
    else:
        opts["boundary_channels"] = int(
            require(sd, "decode_head.d_head.conv.conv.weight", where).shape[0]
        )
    return opts


def pidnet_mmseg(backbone: str) -> Callable[..., SegmentationModel]:
    """The converter of mmseg's PIDNet on ``backbone`` (``pidnet_s``, ``pidnet_m``, ``pidnet_l``)."""

    def convert(sd: dict[str, Tensor], *, where: str, align_corners: bool) -> SegmentationModel:
        found = _variant(sd, where)
        if found != backbone:
            raise ValueError(
                f"{where}: the checkpoint is {_ARCHS[found]} (base width and fusion module), "
                f"the arch is {_ARCHS[backbone]}; use arch={_ARCHS[found]!r}"
            )
        build = {
            "name": "pidnet",
            "backbone": backbone,
            "num_classes": int(require(sd, "decode_head.conv_seg.weight", where).shape[0]),
            "output_stride": 32,
            "aux": False,
            "align_corners": align_corners,
            "pretrained_backbone": None,
            "backbone_kwargs": {},
            "head_kwargs": _pid_head_options(sd, where),
            "aux_kwargs": {},
        }
        return build_and_load(
            sd,
            where=where,
            build=build,
            backbone_source=_pidnet_backbone,
            head_prefixes=("decode_head",),
            rules=_RULES,
            input_norm=IMAGENET_RGB,
        )

    return convert


# (576, 704): strides 8..64 give 72x88, 36x44, 18x22, 9x11, so the PPM's 5/2/2, 9/4/4 and
# 17/8/8 pools give 5x6, 3x3 and 2x2 (each a real bilinear resize back to 9x11), and the
# fusions resize between odd and even sizes; mmseg needs multiples of 8.
for _backbone, _arch in _ARCHS.items():
    register_mmseg_arch(
        _arch,
        MMSegArch(
            pidnet_mmseg(_backbone),
            f"pidnet/{_arch}_2xb6-120k_1024x1024-cityscapes.py",
            input_size=(576, 704),
            align_corners=True,
        ),
    )
