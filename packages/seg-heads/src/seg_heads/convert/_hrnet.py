"""mmsegmentation OCRNet-on-HRNetV2 checkpoints (``ocrnet_hr18``, ``ocrnet_hr48``).

mmseg's ``CascadeEncoderDecoder`` keys: ``backbone.*`` (HRNet, our names), ``decode_head.0.*``
(the FCN soft-region stage: our ``decode_head.soft_region_head.*``) and ``decode_head.1.*``
(the OCR stage: our ``decode_head.*``). The OCRNet configs have no ``auxiliary_head``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from seg_backbones.hrnet import convert_hrnet_state_dict

from ..model import IMAGENET_RGB, SegmentationModel
from ._common import build_and_load, require
from .mmseg import MMSegArch, register_mmseg_arch

_RULES: list[tuple[str, str]] = [
    (r"decode_head\.0\.(.+)", r"decode_head.soft_region_head.\1"),
    (r"decode_head\.1\.(.+)", r"decode_head.\1"),
]

_WIDTH = {"hrnet_w18": 18, "hrnet_w48": 48}


def _hrnet_backbone(sd: dict[str, Tensor], backbone: nn.Module) -> dict[str, Tensor]:
    return convert_hrnet_state_dict(sd, source="mmseg", model=backbone)


def _ocr_options(sd: Mapping[str, Tensor], where: str) -> dict[str, Any]:
    """OCRHead widths as stored in the weights; the soft-region stage must be mmseg's."""
    conv = require(sd, "decode_head.0.convs.0.conv.weight", where)
    extra = sorted(
        k for k in sd if k.startswith(("decode_head.0.convs.1.", "decode_head.0.conv_cat."))
    )
    if extra or conv.shape[-1] != 1:
        raise ValueError(
            f"{where}: decode_head.0 is not OCRNet's soft-region FCNHead (one 1x1 conv, no "
            f"conv_cat): kernel {tuple(conv.shape[-2:])}, extra keys {extra[:4]}"
        )
    return {
        "channels": int(require(sd, "decode_head.1.bottleneck.conv.weight", where).shape[0]),
        "ocr_channels": int(
            require(
                sd, "decode_head.1.object_context_block.key_project.0.conv.weight", where
            ).shape[0]
        ),
        "soft_region_channels": int(conv.shape[0]),
    }


def ocrnet(backbone: str) -> Callable[..., SegmentationModel]:
    """The converter of mmseg's OCRNet on ``backbone`` (``hrnet_w18`` or ``hrnet_w48``)."""

    def convert(sd: dict[str, Tensor], *, where: str, align_corners: bool) -> SegmentationModel:
        width = int(require(sd, "backbone.transition1.0.0.weight", where).shape[0])
        if width != _WIDTH[backbone]:
            names = {w: f"ocrnet_hr{w}" for w in _WIDTH.values()}
            raise ValueError(
                f"{where}: the checkpoint's HRNet has width {width} (backbone.transition1.0.0), "
                f"the arch's {backbone} has {_WIDTH[backbone]}; use arch="
                f"{names.get(width, sorted(names.values()))!r}"
            )
        build = {
            "name": "ocrnet",
            "backbone": backbone,
            "num_classes": int(require(sd, "decode_head.1.conv_seg.weight", where).shape[0]),
            "output_stride": 32,
            "aux": False,
            "align_corners": align_corners,
            "pretrained_backbone": None,
            "backbone_kwargs": {},
            "head_kwargs": _ocr_options(sd, where),
            "aux_kwargs": {},
        }
        return build_and_load(
            sd,
            where=where,
            build=build,
            backbone_source=_hrnet_backbone,
            head_prefixes=("decode_head",),
            rules=_RULES,
            input_norm=IMAGENET_RGB,
        )

    return convert


# (200, 264): strides 4..32 give 50x66, 25x33, 13x17, 7x9, so every fuse upsampling has an
# odd target (mmseg's Upsample by 2**k, then the resize to the branch's size).
for _w in (18, 48):
    register_mmseg_arch(
        f"ocrnet_hr{_w}",
        MMSegArch(
            ocrnet(f"hrnet_w{_w}"),
            f"ocrnet/ocrnet_hr{_w}_4xb2-40k_cityscapes-512x1024.py",
            input_size=(200, 264),
        ),
    )
