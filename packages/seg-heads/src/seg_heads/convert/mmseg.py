"""mmsegmentation 1.2.2 checkpoints -> PKUSeg models with equal logits.

```python
from seg_heads.convert import from_mmseg
model = from_mmseg("pspnet_r50-d8_512x1024_40k_cityscapes.pth", arch="pspnet_r50-d8")
```

:data:`MMSEG_ARCHS` maps an mmseg config prefix to an :class:`MMSegArch`: the function
that builds our twin from the state dict, the mmseg config it mirrors (built by the CI
parity session, ``nox -s parity``, with mmsegmentation itself) and the input size that
session checks it at. Adding a model to this converter is one :func:`register_mmseg_arch`
call, next to the family's key mapping.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..model import IMAGENET_RGB, SegmentationModel
from ._common import StateDictSource, build_and_load, load_checkpoint, match_arch, require

__all__ = ["MMSEG_ARCHS", "MMSegArch", "from_mmseg", "register_mmseg_arch"]


@dataclass(frozen=True)
class MMSegArch:
    """One mmseg architecture that :func:`from_mmseg` converts.

    Attributes:
        convert: ``convert(state_dict, *, where, align_corners) -> SegmentationModel`` with
            the weights loaded (``where`` prefixes error messages).
        config: the mmseg 1.2.2 config it mirrors, relative to ``mmseg/.mim/configs``.
        input_size: ``(H, W)`` the parity session compares logits at: large enough for
            every dilated or pooled branch to see real data.
        align_corners: the config's ``align_corners`` (decode head and final resize).
    """

    convert: Callable[..., SegmentationModel]
    config: str
    input_size: tuple[int, int] = (321, 321)
    align_corners: bool = False


MMSEG_ARCHS: dict[str, MMSegArch] = {}
"""mmseg config prefixes that :func:`from_mmseg` converts."""


def register_mmseg_arch(name: str, arch: MMSegArch) -> None:
    """Add ``name`` (an mmseg config prefix such as ``"pspnet_r50-d8"``) to :data:`MMSEG_ARCHS`."""
    if name in MMSEG_ARCHS:
        raise ValueError(f"mmseg arch {name!r} is already registered")
    MMSEG_ARCHS[name] = arch


def from_mmseg(
    src: StateDictSource, *, arch: str, align_corners: bool | None = None
) -> SegmentationModel:
    """Build the PKUSeg twin of an mmsegmentation model and load its weights.

    Args:
        src: path of an mmseg model-zoo ``.pth`` (``{"meta": ..., "state_dict": ...}``) or
            a state dict with mmseg keys (``backbone.*``, ``decode_head.*``,
            ``auxiliary_head.*``).
        arch: one of :data:`MMSEG_ARCHS`, or a config name starting with one
            (``"pspnet_r50-d8_512x1024_40k_cityscapes"``).
        align_corners: the config's ``align_corners``; default the arch's (mmseg: False
            for most models, but True in its 769x769 Cityscapes configs, PIDNet and STDC);
            used by the heads and the final resize.

    ``num_classes``, the auxiliary head and head widths are read from the weights.
    Outputs equal mmseg's ``EncoderDecoder`` logits resized to the input (``"out"``;
    ``"aux"`` as its aux head).
    """
    name = match_arch(arch, MMSEG_ARCHS, "mmseg")
    spec = MMSEG_ARCHS[name]
    ac = spec.align_corners if align_corners is None else align_corners
    return spec.convert(load_checkpoint(src), where=f"from_mmseg({name!r})", align_corners=ac)


# ----------------------------------------------------------------------------- ResNet-D8 heads

# PKUSeg heads use mmseg's module names; only the auxiliary head's prefix differs.
_MMSEG_RULES: list[tuple[str, str]] = [
    (r"decode_head\.(.+)", r"decode_head.\1"),
    (r"auxiliary_head\.(.+)", r"aux_head.\1"),
]


def _fcn_options(sd: Mapping[str, Tensor], prefix: str) -> dict[str, Any]:
    """FCNHead width, depth and ``concat_input`` as stored in mmseg weights."""
    n = 0
    while f"{prefix}convs.{n}.conv.weight" in sd:
        n += 1
    return {
        "variant": "mmseg",
        "channels": int(sd[f"{prefix}convs.0.conv.weight"].shape[0]),
        "num_convs": n,
        "concat_input": f"{prefix}conv_cat.conv.weight" in sd,
        "kernel_size": int(sd[f"{prefix}convs.0.conv.weight"].shape[-1]),
    }


def _psp_options(sd: Mapping[str, Tensor], where: str) -> dict[str, Any]:
    width = require(sd, "decode_head.bottleneck.conv.weight", where)
    n_bins = sum(
        1 for k in sd if re.fullmatch(r"decode_head\.psp_modules\.\d+\.1\.conv\.weight", k)
    )
    if n_bins != 4:
        raise ValueError(
            f"{where}: {n_bins} pyramid-pooling branches in decode_head.psp_modules; "
            "mmseg's PSPNet configs use pool_scales (1, 2, 3, 6)"
        )
    return {"channels": int(width.shape[0])}


def _aspp_options(sd: Mapping[str, Tensor], where: str) -> dict[str, Any]:
    return {"channels": int(require(sd, "decode_head.bottleneck.conv.weight", where).shape[0])}


def _count(sd: Mapping[str, Tensor], pattern: str) -> int:
    return sum(1 for k in sd if re.fullmatch(pattern, k))


def _sep_aspp_options(sd: Mapping[str, Tensor], where: str) -> dict[str, Any]:
    """DeepLabV3+ widths; the rates follow the output stride (mmseg d8: 12/24/36)."""
    n_sep = _count(sd, r"decode_head\.aspp_modules\.\d+\.depthwise_conv\.conv\.weight")
    if n_sep != 3:
        raise ValueError(
            f"{where}: {n_sep} separable atrous branches in decode_head.aspp_modules; "
            "mmseg's DeepLabV3+ configs use dilations (1, 12, 24, 36): three"
        )
    return {
        "channels": int(require(sd, "decode_head.bottleneck.conv.weight", where).shape[0]),
        "c1_channels": int(require(sd, "decode_head.c1_bottleneck.conv.weight", where).shape[0]),
    }


def _uper_options(sd: Mapping[str, Tensor], where: str) -> dict[str, Any]:
    width = require(sd, "decode_head.fpn_bottleneck.conv.weight", where)
    n_bins = _count(sd, r"decode_head\.psp_modules\.\d+\.1\.conv\.weight")
    if n_bins != 4:
        raise ValueError(
            f"{where}: {n_bins} pyramid-pooling branches in decode_head.psp_modules; "
            "mmseg's UPerNet configs use pool_scales (1, 2, 3, 6)"
        )
    return {"channels": int(width.shape[0])}


def _fpn_options(sd: Mapping[str, Tensor], where: str) -> dict[str, Any]:
    return {
        "channels": int(require(sd, "decode_head.scale_heads.0.0.conv.weight", where).shape[0]),
        "neck_channels": int(require(sd, "neck.lateral_convs.0.conv.weight", where).shape[0]),
    }


HeadOptions = Callable[[Mapping[str, Tensor], str], dict[str, Any]]
"""``(state dict, where) -> head_kwargs`` read from the weights."""


def resnet_mmseg(
    model: str,
    backbone: str,
    head_options: HeadOptions,
    *,
    output_stride: int = 8,
    neck: bool = False,
) -> Callable[..., SegmentationModel]:
    """The converter of an mmseg model on ``ResNetV1c`` (``backbone``: ``resnet{50,101}_v1c``).

    ``output_stride=8`` is mmseg's D8 (strides (1, 2, 1, 1), dilations (1, 1, 2, 4),
    ``contract_dilation=True``); 32 its undilated multi-level configs (strides (1, 2, 2, 2),
    UPerNet, Semantic FPN). ``num_classes`` comes from ``decode_head.conv_seg.weight``, the
    head widths from ``head_options``, and the auxiliary head (mmseg ``FCNHead`` on layer3),
    when there is one, from the ``auxiliary_head.*`` weights. ``neck=True``: the checkpoint
    has an mmseg ``neck.*`` (Semantic FPN), which our head holds as ``decode_head.neck.*``.
    """
    prefixes = ("decode_head", "auxiliary_head", *(("neck",) if neck else ()))
    rules = _MMSEG_RULES + ([(r"neck\.(.+)", r"decode_head.neck.\1")] if neck else [])

    def convert(sd: dict[str, Tensor], *, where: str, align_corners: bool) -> SegmentationModel:
        num_classes = int(require(sd, "decode_head.conv_seg.weight", where).shape[0])
        aux = any(k.startswith("auxiliary_head.") for k in sd)
        build = {
            "name": model,
            "backbone": backbone,
            "num_classes": num_classes,
            "output_stride": output_stride,
            "aux": aux,
            "align_corners": align_corners,
            "pretrained_backbone": None,
            "backbone_kwargs": {"contract_dilation": True},
            "head_kwargs": head_options(sd, where),
            "aux_kwargs": _fcn_options(sd, "auxiliary_head.") if aux else {},
        }
        return build_and_load(
            sd,
            where=where,
            build=build,
            backbone_source="mmseg",
            head_prefixes=prefixes,
            rules=rules,
            input_norm=IMAGENET_RGB,
        )

    return convert


def resnet_d8(
    model: str, backbone: str, head_options: HeadOptions
) -> Callable[..., SegmentationModel]:
    """:func:`resnet_mmseg` at output stride 8 (mmseg's ``-d8`` configs)."""
    return resnet_mmseg(model, backbone, head_options, output_stride=8)


_CS = "4xb2-40k_cityscapes-512x1024.py"
for _depth in (50, 101):
    register_mmseg_arch(
        f"pspnet_r{_depth}-d8",
        MMSegArch(
            resnet_d8("pspnet", f"resnet{_depth}_v1c", _psp_options),
            f"pspnet/pspnet_r{_depth}-d8_{_CS}",
        ),
    )
    register_mmseg_arch(
        f"deeplabv3_r{_depth}-d8",
        MMSegArch(
            resnet_d8("deeplabv3", f"resnet{_depth}_v1c", _aspp_options),
            f"deeplabv3/deeplabv3_r{_depth}-d8_{_CS}",
        ),
    )
    register_mmseg_arch(
        f"fcn_r{_depth}-d8",
        MMSegArch(
            resnet_d8(
                "fcn", f"resnet{_depth}_v1c", lambda sd, where: _fcn_options(sd, "decode_head.")
            ),
            f"fcn/fcn_r{_depth}-d8_{_CS}",
        ),
    )
    register_mmseg_arch(
        f"deeplabv3plus_r{_depth}-d8",
        MMSegArch(
            resnet_d8("deeplabv3plus", f"resnet{_depth}_v1c", _sep_aspp_options),
            f"deeplabv3plus/deeplabv3plus_r{_depth}-d8_{_CS}",
        ),
    )
    # Stride 32 (no dilation); odd sizes exercise every resize, PPM bin 6 sees an 8x9 map.
    register_mmseg_arch(
        f"upernet_r{_depth}",
        MMSegArch(
            resnet_mmseg("upernet", f"resnet{_depth}_v1c", _uper_options, output_stride=32),
            f"upernet/upernet_r{_depth}_{_CS}",
            input_size=(225, 257),
        ),
    )
    register_mmseg_arch(
        f"fpn_r{_depth}",
        MMSegArch(
            resnet_mmseg("fpn", f"resnet{_depth}_v1c", _fpn_options, output_stride=32, neck=True),
            f"sem_fpn/fpn_r{_depth}_4xb2-80k_cityscapes-512x1024.py",
            input_size=(225, 257),
        ),
    )
