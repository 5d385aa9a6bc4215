"""mmsegmentation STDC checkpoints (``stdc1``, ``stdc2``).

mmseg's ``EncoderDecoder`` keys: ``backbone.*`` (mmseg's ``STDCContextPathNet``:
``backbone.backbone.*`` the ``STDCNet``, ``backbone.arms/convs/conv_avg/ffm.*`` the context
path; our names), ``decode_head.*`` (the FCN head: our ``decode_head.head.*``) and, in
training checkpoints, ``auxiliary_head.0.*`` / ``auxiliary_head.1.*`` (the FCN heads on the
context maps: our ``decode_head.aux_heads.<i>.*``) and ``auxiliary_head.2.*`` (the
``STDCHead``: our ``decode_head.detail_head.*``), built when present. The ``STDCHead``'s
``laplacian_kernel`` (a buffer) and ``fusion_kernel`` (a frozen parameter: 3 values mmseg
counts among its parameters) are constants of its boundary-target computation, which is
the trainer's loss: they are checked and dropped. The configs' ``align_corners`` is True.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from ..model import SegmentationModel
from ._bisenetv2 import aux_indices, booster_mmseg, fcn_width
from ._common import require
from .mmseg import MMSegArch, register_mmseg_arch

_DETAIL = 2  # auxiliary_head index of the STDCHead in mmseg's config
_RULES: list[tuple[str, str]] = [
    (r"decode_head\.(.+)", r"decode_head.head.\1"),
    (rf"auxiliary_head\.{_DETAIL}\.(.+)", r"decode_head.detail_head.\1"),
    (r"auxiliary_head\.([01])\.(.+)", r"decode_head.aux_heads.\1.\2"),
]
_LAPLACIAN = torch.tensor([-1.0, -1, -1, -1, 8, -1, -1, -1, -1]).reshape(1, 1, 3, 3)
_FUSION = torch.tensor([0.6, 0.3, 0.1]).reshape(1, 3, 1, 1)
_CONSTANTS = {
    f"auxiliary_head.{_DETAIL}.laplacian_kernel": _LAPLACIAN,
    f"auxiliary_head.{_DETAIL}.fusion_kernel": _FUSION,
}


def _check_constants(sd: Mapping[str, Tensor], where: str) -> None:
    for key, want in _CONSTANTS.items():
        if key in sd and sd[key].shape != want.shape:
            raise ValueError(
                f"{where}: {key} has shape {tuple(sd[key].shape)}, mmseg STDCHead's constant "
                f"{want.flatten().tolist()} has {tuple(want.shape)}. Is `arch` right?"
            )


def _stdc_options(sd: Mapping[str, Tensor], where: str) -> dict[str, Any]:
    found = aux_indices(sd)
    if found and found not in ([0, 1], [0, 1, 2], [2]):
        raise ValueError(
            f"{where}: the checkpoint has auxiliary_head indices {found}; mmseg's STDC config "
            "has 0 and 1 (FCN heads) and 2 (STDCHead)"
        )
    aux = [i for i in found if i != _DETAIL]
    opts: dict[str, Any] = {
        "channels": fcn_width(sd, "decode_head.", where, n_convs=1),
        "aux_heads": bool(aux),
        "detail_head": _DETAIL in found,
    }
    if aux:
        opts["aux_channels"] = [
            fcn_width(sd, f"auxiliary_head.{i}.", where, n_convs=1) for i in aux
        ]
    if _DETAIL in found:
        prefix = f"auxiliary_head.{_DETAIL}."
        opts["detail_channels"] = fcn_width(sd, prefix, where, n_convs=1)
        classes = int(require(sd, f"{prefix}conv_seg.weight", where).shape[0])
        if classes != 2:
            raise ValueError(
                f"{where}: {prefix}conv_seg has {classes} outputs; mmseg's STDCHead has 2"
            )
    return opts


def stdc_mmseg(backbone: str) -> Callable[..., SegmentationModel]:
    """The converter of mmseg's STDC on ``backbone`` (``stdc1`` or ``stdc2``)."""
    inner = booster_mmseg(
        "stdc",
        backbone,
        _stdc_options,
        rules=_RULES,
        drop=tuple(k.replace(".", r"\.") for k in _CONSTANTS),
    )
    depth = {"stdc1": 2, "stdc2": 4}[backbone]  # STDC modules in the first STDC stage

    def convert(sd: dict[str, Tensor], *, where: str, align_corners: bool) -> SegmentationModel:
        _check_constants(sd, where)
        got = sum(
            1
            for k in sd
            if k.startswith("backbone.backbone.stages.2.") and k.endswith(".layers.0.conv.weight")
        )
        if got and got != depth:
            other = {2: "stdc1", 4: "stdc2"}.get(got, "neither stdc1 nor stdc2")
            raise ValueError(
                f"{where}: the checkpoint's first STDC stage has {got} modules, {backbone}'s "
                f"has {depth}: this is {other}"
            )
        return inner(sd, where=where, align_corners=align_corners)

    return convert


# (225, 321): strides 8/16/32 give 29x41, 15x21, 8x11: the context path's nearest
# upsamplings (8x11 -> 15x21 -> 29x41) are non-integer ratios and the final
# align_corners=True resize is exercised from an odd size.
for _name in ("stdc1", "stdc2"):
    register_mmseg_arch(
        _name,
        MMSegArch(
            stdc_mmseg(_name),
            f"stdc/{_name}_4xb12-80k_cityscapes-512x1024.py",
            input_size=(225, 321),
            align_corners=True,
        ),
    )
