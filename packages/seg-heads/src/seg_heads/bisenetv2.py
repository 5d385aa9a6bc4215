"""BiSeNetV2's heads: an FCN head on the aggregation and four booster (auxiliary) FCN heads.

Yu et al., "BiSeNet V2" (IJCV 2021), Section 3.4 (the booster training strategy), as
mmsegmentation 1.2.2 ``configs/_base_/models/bisenetv2.py`` builds it on the
``seg_backbones.bisenetv2`` backbone (outputs: BGA, semantic stages 1-4):

* ``head``: mmseg ``FCNHead`` on level 0 (the BGA map, 128 channels): one 3x3 conv-BN-ReLU
  of 1024 channels, ``Dropout2d(0.1)``, ``conv_seg``; no ``conv_cat``;
* ``aux_heads[0..3]``: mmseg ``FCNHead`` on levels 1-4 (semantic stages 1-4: 16, 32, 64,
  128 channels) with two 3x3 conv-BN-ReLU of 16, 64, 256 and 1024 channels, no ``conv_cat``.

In training the model returns ``"aux0"`` .. ``"aux3"`` (the booster logits, resized to the
input bilinearly with the booster heads' ``align_corners``, as mmseg's loss does; mmseg
weights every booster loss 1.0), in eval mode ``"out"`` only. :class:`BoosterHead` is shared
with the Fast-SCNN and STDC heads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from seg_backbones import FeatureInfo

from ._layers import NormLayer, check_in_index
from ._registry import register_head
from .fcn import FCNHead

__all__ = ["BOOSTER_CHANNELS", "BoosterHead", "aux_fcn_heads"]

BOOSTER_CHANNELS = (16, 64, 256, 1024)  # mmseg's booster widths on semantic stages 1-4


class BoosterHead(nn.Module):
    """A decode head plus training-only auxiliary heads, as mmseg's ``auxiliary_head`` lists.

    Args:
        head: the decode head (``forward(features) -> logits``).
        aux_heads: auxiliary heads, each reading its own level; their logits are returned
            in training as ``"aux0"``, ``"aux1"``, ... resized to the input size.
        extra: other training-only heads, returned in training under their names as the
            head gives them (e.g. STDC's ``{"detail": ...}``: not resized).
        aux_align_corners: ``align_corners`` of the resize of the auxiliary logits to the
            input (mmseg resizes them in the loss with each auxiliary head's own setting).

    ``forward(features, input_size=None)``: logits in eval mode (or without any training-only
    head), in training ``{"out", "aux0", ..., **extra}``.
    """

    returns_aux = True
    wants_input_size = True

    def __init__(
        self,
        head: nn.Module,
        aux_heads: Sequence[nn.Module] = (),
        *,
        extra: Mapping[str, nn.Module] | None = None,
        aux_align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.head = head
        self.aux_heads = nn.ModuleList(aux_heads)
        self.extra_names = tuple(extra or {})
        for name, module in (extra or {}).items():
            if name == "out" or name.startswith("aux"):
                raise ValueError(f"BoosterHead: extra head name {name!r} is reserved")
            self.add_module(f"{name}_head", module)
        self.aux_align_corners = aux_align_corners

    def forward(
        self, features: Sequence[Tensor], input_size: Sequence[int] | None = None
    ) -> Tensor | dict[str, Tensor]:
        out = self.head(features)
        if not self.training or not (len(self.aux_heads) or self.extra_names):
            return out
        outputs = {"out": out}
        for i, aux_head in enumerate(self.aux_heads):
            logits = aux_head(features)
            if input_size is not None:
                logits = F.interpolate(
                    logits, size=input_size, mode="bilinear", align_corners=self.aux_align_corners
                )
            outputs[f"aux{i}"] = logits
        for name in self.extra_names:
            outputs[name] = getattr(self, f"{name}_head")(features)
        return outputs


def aux_fcn_heads(
    feature_info: Sequence[FeatureInfo],
    num_classes: int,
    *,
    in_index: Sequence[int],
    channels: Sequence[int],
    num_convs: int,
    norm_layer: str | NormLayer,
    dropout: float,
    head: str,
) -> list[FCNHead]:
    """mmseg auxiliary ``FCNHead`` s (``num_convs`` 3x3 convs, no ``conv_cat``), one per level."""
    in_index = tuple(in_index)
    channels = tuple(int(c) for c in channels)
    if len(in_index) != len(channels):
        raise ValueError(
            f"{head}: aux_in_index {in_index} and aux_channels {channels} must have one entry "
            "per auxiliary head"
        )
    heads = []
    for idx, width in zip(in_index, channels, strict=True):
        level = check_in_index(feature_info, idx, head=f"{head} auxiliary head")
        heads.append(
            FCNHead(
                feature_info[level][0],  # type: ignore[index]
                num_classes,
                in_index=level,  # type: ignore[arg-type]
                channels=width,
                num_convs=num_convs,
                concat_input=False,
                dropout=dropout,
                norm_layer=norm_layer,
            )
        )
    return heads


def _bisenetv2_head(
    feature_info: Sequence[FeatureInfo],
    num_classes: int,
    *,
    in_index: int = 0,
    channels: int = 1024,
    dropout: float = 0.1,
    aux_heads: bool = True,
    aux_in_index: Sequence[int] | None = None,
    aux_channels: Sequence[int] | None = None,
    aux_num_convs: int = 2,
    norm_layer: str | NormLayer = "bn",
    aux_align_corners: bool = False,
) -> BoosterHead:
    level = check_in_index(feature_info, in_index, head="bisenetv2")
    head = FCNHead(
        feature_info[level][0],  # type: ignore[index]
        num_classes,
        in_index=level,  # type: ignore[arg-type]
        channels=channels,
        num_convs=1,
        concat_input=False,
        dropout=dropout,
        norm_layer=norm_layer,
    )
    if aux_in_index is None:  # a booster on every level after the decoded one: BiSeNetV2's 1-4
        aux_in_index = tuple(range(1, len(feature_info)))
    if aux_channels is None and aux_heads:
        if len(aux_in_index) > len(BOOSTER_CHANNELS):
            raise ValueError(
                f"bisenetv2: {len(aux_in_index)} booster heads (aux_in_index={aux_in_index}) "
                f"but default widths for {len(BOOSTER_CHANNELS)}; pass head_kwargs aux_channels"
            )
        aux_channels = BOOSTER_CHANNELS[: len(aux_in_index)]
    boosters = (
        aux_fcn_heads(
            feature_info,
            num_classes,
            in_index=aux_in_index,
            channels=aux_channels,
            num_convs=aux_num_convs,
            norm_layer=norm_layer,
            dropout=dropout,
            head="bisenetv2",
        )
        if aux_heads
        else []
    )
    return BoosterHead(head, boosters, aux_align_corners=aux_align_corners)


@register_head(
    "bisenetv2",
    output_stride=32,
    tiny={
        "backbone": "bisenetv2",
        "backbone_kwargs": {
            "detail_channels": (8, 8, 16),
            "semantic_channels": (4, 8, 8, 16),
            "exp_ratio": 2,
            "bga_channels": 16,
        },
        "head_kwargs": {"channels": 16, "aux_channels": (4, 8, 8, 16)},
    },
)
def _bisenetv2(
    feature_info: Sequence[FeatureInfo],
    num_classes: int,
    *,
    output_stride: int,
    align_corners: bool,
    **head_kwargs: Any,
) -> nn.Module:
    """BiSeNetV2 (mmseg ``bisenetv2_fcn``) on the ``bisenetv2`` backbone.

    ``head_kwargs``: ``channels`` (1024), ``in_index`` (0), ``dropout`` (0.1), ``aux_heads``
    (True: the booster heads), ``aux_in_index`` (every level after the first: (1, 2, 3, 4)
    on BiSeNetV2), ``aux_channels`` (the first of (16, 64, 256, 1024), one per booster),
    ``aux_num_convs`` (2), ``aux_align_corners`` (False, the booster heads'), ``norm_layer``
    ("bn").
    """
    del output_stride, align_corners  # no resolution-dependent part; aux: aux_align_corners
    return _bisenetv2_head(feature_info, num_classes, **head_kwargs)
