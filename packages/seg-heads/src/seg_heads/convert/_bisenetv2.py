"""mmsegmentation BiSeNetV2 checkpoints (``bisenetv2_fcn``), and what the real-time family's
converters (BiSeNetV2, Fast-SCNN, STDC) share.

mmseg's ``EncoderDecoder`` keys: ``backbone.*`` (mmseg's ``BiSeNetV2``: our names,
:func:`seg_backbones.bisenetv2.convert_realtime_state_dict`), ``decode_head.*`` (the FCN
head: our ``decode_head.head.*``) and, in training checkpoints, ``auxiliary_head.<i>.*``
(the four booster FCN heads: our ``decode_head.aux_heads.<i>.*``). The booster heads are
built when the file has them (so training resumes from an mmseg checkpoint) and left out
when it has none; ``num_classes`` and every head width are read from the weights.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from seg_backbones.bisenetv2 import convert_realtime_state_dict

from ..model import IMAGENET_RGB, SegmentationModel
from ._common import build_and_load, require
from .mmseg import MMSegArch, register_mmseg_arch

__all__ = ["aux_indices", "booster_mmseg", "num_convs"]

HeadOptions = Callable[[Mapping[str, Tensor], str], dict[str, Any]]


def _realtime_backbone(sd: dict[str, Tensor], backbone: nn.Module) -> dict[str, Tensor]:
    return convert_realtime_state_dict(sd, source="mmseg", model=backbone)


def num_convs(sd: Mapping[str, Tensor], prefix: str) -> int:
    """How many ``<prefix>convs.<i>.`` units the weights have."""
    n = 0
    while any(k.startswith(f"{prefix}convs.{n}.") for k in sd):
        n += 1
    return n


def aux_indices(sd: Mapping[str, Tensor]) -> list[int]:
    """The ``auxiliary_head.<i>`` indices present, sorted."""
    found = (re.match(r"auxiliary_head\.(\d+)\.", k) for k in sd)
    return sorted({int(m.group(1)) for m in found if m})


def fcn_width(sd: Mapping[str, Tensor], prefix: str, where: str, *, n_convs: int) -> int:
    """The width of an mmseg ``FCNHead`` (3x3 convs, no ``conv_cat``) checked to have
    ``n_convs`` convs, as the config builds it."""
    width = int(require(sd, f"{prefix}convs.0.conv.weight", where).shape[0])
    got = num_convs(sd, prefix)
    if got != n_convs or f"{prefix}conv_cat.conv.weight" in sd:
        raise ValueError(
            f"{where}: {prefix.rstrip('.')} has {got} convs"
            f"{' and a conv_cat' if f'{prefix}conv_cat.conv.weight' in sd else ''}; the mmseg "
            f"config's FCNHead there has {n_convs} and no conv_cat. Is `arch` right?"
        )
    return width


def check_aux_count(sd: Mapping[str, Tensor], want: int, where: str) -> list[int]:
    """The auxiliary heads present: none (an inference checkpoint) or exactly ``0..want-1``."""
    found = aux_indices(sd)
    if found and found != list(range(want)):
        raise ValueError(
            f"{where}: the checkpoint has auxiliary_head indices {found}; the mmseg config has "
            f"{want} ({list(range(want))}), or a checkpoint may have none"
        )
    return found


def booster_mmseg(
    model: str,
    backbone: str,
    head_options: HeadOptions,
    *,
    rules: list[tuple[str, str]],
    drop: tuple[str, ...] = (),
) -> Callable[..., SegmentationModel]:
    """The converter of an mmseg real-time model: ``backbone.*`` by name, ``decode_head.*`` and
    ``auxiliary_head.<i>.*`` renamed by ``rules``; keys matching a ``drop`` regex are
    discarded first (constants of the training loss)."""

    def convert(sd: dict[str, Tensor], *, where: str, align_corners: bool) -> SegmentationModel:
        sd = {k: v for k, v in sd.items() if not any(re.fullmatch(p, k) for p in drop)}
        build = {
            "name": model,
            "backbone": backbone,
            "num_classes": int(require(sd, "decode_head.conv_seg.weight", where).shape[0]),
            "output_stride": 32,
            "aux": False,
            "align_corners": align_corners,
            "pretrained_backbone": None,
            "backbone_kwargs": {},
            "head_kwargs": head_options(sd, where),
            "aux_kwargs": {},
        }
        return build_and_load(
            sd,
            where=where,
            build=build,
            backbone_source=_realtime_backbone,
            head_prefixes=("decode_head", "auxiliary_head"),
            rules=rules,
            input_norm=IMAGENET_RGB,
        )

    return convert


BOOSTER_RULES: list[tuple[str, str]] = [
    (r"decode_head\.(.+)", r"decode_head.head.\1"),
    (r"auxiliary_head\.(\d+)\.(.+)", r"decode_head.aux_heads.\1.\2"),
]


def _bisenetv2_options(sd: Mapping[str, Tensor], where: str) -> dict[str, Any]:
    aux = check_aux_count(sd, 4, where)
    opts: dict[str, Any] = {
        "channels": fcn_width(sd, "decode_head.", where, n_convs=1),
        "aux_heads": bool(aux),
    }
    if aux:
        opts["aux_channels"] = [
            fcn_width(sd, f"auxiliary_head.{i}.", where, n_convs=2) for i in aux
        ]
    return opts


# (225, 321): strides 4..32 give 57x81, 29x41, 15x21, 8x11: every stride-2 conv and pool
# sees an odd size, and the BGA's bilinear resizes (8x11 -> 29x41) are not integer ratios.
register_mmseg_arch(
    "bisenetv2_fcn",
    MMSegArch(
        booster_mmseg("bisenetv2", "bisenetv2", _bisenetv2_options, rules=BOOSTER_RULES),
        "bisenetv2/bisenetv2_fcn_4xb4-160k_cityscapes-1024x1024.py",
        input_size=(225, 321),
        align_corners=False,
    ),
)
