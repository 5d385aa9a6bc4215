"""STDC's heads: an FCN head on the fusion, two auxiliary FCN heads and the detail head.

Fan et al., "Rethinking BiSeNet For Real-time Semantic Segmentation" (CVPR 2021), as
mmsegmentation 1.2.2 ``configs/_base_/models/stdc.py`` builds it on the
``seg_backbones.stdc`` backbones (``stdc1``/``stdc2``; outputs: the stride-8 STDC map, the
context maps at strides 16 and 8, the fusion):

* ``head``: mmseg ``FCNHead`` on level 3 (the fusion, 256 channels): one 3x3 conv-BN-ReLU of
  256 channels, ``Dropout2d(0.1)``, ``conv_seg``; the config's ``align_corners=True`` is the
  model's (the final resize);
* ``aux_heads[0]`` on level 2 (context, stride 8), ``aux_heads[1]`` on level 1 (context,
  stride 16): mmseg ``FCNHead`` with one 3x3 conv-BN-ReLU of 64 channels; their
  ``align_corners`` is False in the config, so their logits are resized to the input with
  False (``aux_align_corners``);
* ``detail_head``: mmseg ``STDCHead`` on level 0 (the stride-8 STDC map, 256 channels), an
  ``FCNHead`` with one 3x3 conv-BN-ReLU of 64 channels and 2 output channels (boundary /
  not boundary; mmseg's ``num_classes=2``).

In training the model returns ``"aux0"``, ``"aux1"`` (resized to the input) and
``"detail"`` (the detail head's raw stride-8 logits, not resized); in eval mode ``"out"``
only. What differs from mmseg: ``STDCHead``'s boundary targets (a Laplacian of the label
map at three strides, fused by a fixed 1x1 kernel, thresholded at 0.1) and its BCE + Dice
loss on the logits resized with ``align_corners=True`` are the trainer's loss, not part
of this head, so its constant ``laplacian_kernel`` and ``fusion_kernel`` tensors are not
held here (the converter drops them; mmseg counts ``fusion_kernel``'s 3 values as a
frozen parameter).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from seg_backbones import FeatureInfo

from ._layers import NormLayer, check_in_index
from ._registry import register_head
from .bisenetv2 import BoosterHead, aux_fcn_heads
from .fcn import FCNHead

__all__ = ["DETAIL_CLASSES"]

DETAIL_CLASSES = 2  # mmseg STDCHead num_classes: boundary or not


@register_head(
    "stdc",
    output_stride=32,
    tiny={
        "backbone": "stdc1",
        "backbone_kwargs": {
            "channels": (8, 16, 32, 64, 128),
            "context_channels": 16,
            "fusion_channels": 32,
        },
        "head_kwargs": {"channels": 16, "aux_channels": (8, 8), "detail_channels": 8},
    },
)
def _stdc(
    feature_info: Sequence[FeatureInfo],
    num_classes: int,
    *,
    output_stride: int,
    align_corners: bool,
    in_index: int = 3,
    channels: int = 256,
    dropout: float = 0.1,
    aux_heads: bool = True,
    aux_in_index: Sequence[int] = (2, 1),
    aux_channels: Sequence[int] = (64, 64),
    aux_num_convs: int = 1,
    aux_align_corners: bool = False,
    detail_head: bool = True,
    detail_in_index: int = 0,
    detail_channels: int = 64,
    norm_layer: str | NormLayer = "bn",
    **unknown: Any,
) -> nn.Module:
    """STDC (mmseg ``stdc1``/``stdc2``) on the ``stdc1``/``stdc2`` backbone.

    ``head_kwargs``: ``channels`` (256), ``in_index`` (3: the fusion), ``dropout`` (0.1),
    ``aux_heads`` (True), ``aux_in_index`` ((2, 1)), ``aux_channels`` ((64, 64)),
    ``aux_num_convs`` (1), ``aux_align_corners`` (False), ``detail_head`` (True: the
    ``STDCHead``, output ``"detail"`` in training), ``detail_in_index`` (0),
    ``detail_channels`` (64), ``norm_layer`` ("bn"). mmseg's STDC configs use
    ``align_corners=True`` (pass it to ``create_model``).
    """
    del output_stride, align_corners  # no resolution-dependent part; aux: aux_align_corners
    if unknown:
        raise TypeError(f"stdc: unknown head option(s) {sorted(unknown)}")

    def fcn(level: int, classes: int, width: int) -> FCNHead:
        return FCNHead(
            feature_info[level][0],
            classes,
            in_index=level,
            channels=width,
            num_convs=1,
            concat_input=False,
            dropout=dropout,
            norm_layer=norm_layer,
        )

    level = check_in_index(feature_info, in_index, head="stdc")
    head = fcn(level, num_classes, channels)  # type: ignore[arg-type]
    boosters = (
        aux_fcn_heads(
            feature_info,
            num_classes,
            in_index=aux_in_index,
            channels=aux_channels,
            num_convs=aux_num_convs,
            norm_layer=norm_layer,
            dropout=dropout,
            head="stdc",
        )
        if aux_heads
        else []
    )
    extra = {}
    if detail_head:
        detail_level = check_in_index(feature_info, detail_in_index, head="stdc detail head")
        extra["detail"] = fcn(detail_level, DETAIL_CLASSES, detail_channels)  # type: ignore[arg-type]
    return BoosterHead(head, boosters, extra=extra, aux_align_corners=aux_align_corners)
