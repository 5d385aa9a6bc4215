"""SegFormer's all-MLP decode head (Xie et al., "SegFormer: Simple and Efficient Design for
Semantic Segmentation with Transformers", NeurIPS 2021).

Per level a projection to ``channels``, bilinear resize to the first level's size (stride 4),
concatenation, a 1x1 fusion conv + BN + ReLU, dropout and the 1x1 classifier ``conv_seg``;
the logits are at stride 4 (:class:`~seg_heads.SegmentationModel` resizes them to the input).
The two published versions differ, and ``variant`` picks one:

========== ============================================== ====================================
variant    ``"mmseg"`` (default)                            ``"hf"``
========== ============================================== ====================================
reference  mmseg 1.2.2 ``decode_heads/segformer_head.py``   transformers ``SegformerDecodeHead``
                                                            = NVlabs ``segformer_head.py``
projection 1x1 conv (no bias) + BN + ReLU, ``convs.{i}``    linear with bias, no norm, no act
           (``.conv``, ``.bn``)                             (a 1x1 conv with bias, ``convs.{i}``)
concat     level order ``[c1, c2, c3, c4]``                 reversed ``[c4, c3, c2, c1]``
dropout    ``Dropout2d(0.1)``                               ``Dropout(0.1)`` (official: 2d)
========== ============================================== ====================================

Both: fusion ``fusion_conv`` (1x1 conv no bias, ``.conv``/``.bn``, ReLU), classifier
``conv_seg``, resize with ``align_corners`` (False in both references' configs).

Parameter counts (ADE20K, 150 classes; ``tests/test_segformer.py`` checks them against
transformers' models and the mmseg numbers measured with mmseg 1.2.2 itself):

==== ============================ ===================================== =============
size mmseg 1.2.2 = ours ``mmseg``   HF Hub / NVlabs = ours ``hf`` (width)  paper Table 1
==== ============================ ===================================== =============
B0   3,753,718                    3,752,694 (256)                        3.8M
B1   13,716,822                   13,715,798 (256)                       13.7M
B2   24,761,686                   27,461,974 (768)                       27.5M
B3   44,637,526                   47,337,814 (768)                       47.3M
B4   61,408,086                   64,108,374 (768)                       64.1M
B5   82,008,406                   84,708,694 (768)                       84.7M
==== ============================ ===================================== =============

Ours equals the reference of the same variant and width exactly. The paper's
totals are the 768-wide decoder for B2..B5 (256 for B0/B1); mmseg's configs use 256 for every
size, hence 2.7M fewer parameters for B2..B5. At equal width the mmseg head has 1,024 more
parameters than HF's: per level a BN (2 x 256) instead of a linear bias (256).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seg_backbones import FeatureInfo

from ._layers import ConvBNReLU, NormLayer, check_in_index, init_mmseg_, resolve_norm
from ._registry import register_head

__all__ = ["SegFormerHead"]

Variant = Literal["mmseg", "hf"]
VARIANTS: tuple[str, ...] = ("mmseg", "hf")


class SegFormerHead(nn.Module):
    """The all-MLP head over several backbone levels; logits at the first level's size.

    Args:
        in_channels: channels of each level read (from ``backbone.feature_info``).
        num_classes: number of output logits per pixel.
        in_index: the backbone outputs read, one per ``in_channels`` entry ((0, 1, 2, 3)).
        channels: the common projection width and the fusion width (256; the paper's
            B2..B5 and the HF Hub use 768).
        variant: ``"mmseg"`` or ``"hf"`` (see the module docstring).
        dropout: probability before the classifier (0.1); 0 disables it.
        align_corners: of the resize of each level to the first level's size.
        norm_layer: ``"bn" | "syncbn" | "gn"`` or a callable ``num_features -> nn.Module``.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        *,
        in_index: Sequence[int] = (0, 1, 2, 3),
        channels: int = 256,
        variant: Variant = "mmseg",
        dropout: float = 0.1,
        align_corners: bool = False,
        norm_layer: str | NormLayer = "bn",
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(
                f"segformer: unknown variant {variant!r}; valid variants are {list(VARIANTS)}"
            )
        in_index = tuple(in_index)
        if len(in_index) != len(in_channels) or not in_index:
            raise ValueError(
                f"segformer: in_index={in_index} and in_channels={list(in_channels)} must "
                "name the same (non-empty) list of levels"
            )
        norm = resolve_norm(norm_layer)
        self.in_channels = tuple(int(c) for c in in_channels)
        self.in_index = in_index
        self.channels = channels
        self.num_classes = num_classes
        self.variant: Variant = variant
        self.align_corners = align_corners
        self.convs = nn.ModuleList(
            ConvBNReLU(c, channels, 1, norm_layer=norm)
            if variant == "mmseg"
            else nn.Conv2d(c, channels, 1)
            for c in self.in_channels
        )
        self.fusion_conv = ConvBNReLU(channels * len(in_channels), channels, 1, norm_layer=norm)
        if dropout > 0:
            self.dropout: nn.Module = (nn.Dropout2d if variant == "mmseg" else nn.Dropout)(dropout)
        else:
            self.dropout = nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        init_mmseg_(self, self.conv_seg)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        levels = [features[i] for i in self.in_index]
        size = levels[0].shape[-2:]
        outs = []
        for proj, x in zip(self.convs, levels, strict=True):
            y = proj(x)
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=self.align_corners)
            outs.append(y)
        if self.variant == "hf":
            outs = outs[::-1]
        out = self.fusion_conv(torch.cat(outs, dim=1))
        return self.conv_seg(self.dropout(out))


@register_head(
    "segformer",
    output_stride=32,
    tiny={
        "backbone": "mit_b0",
        "aux": True,
        "head_kwargs": {"channels": 16},
        "aux_kwargs": {"channels": 8},
    },
)
def _segformer(
    feature_info: Sequence[FeatureInfo],
    num_classes: int,
    *,
    output_stride: int,
    align_corners: bool,
    **head_kwargs: object,
) -> nn.Module:
    """SegFormer (mmseg ``segformer_mit-b0``): the four levels, 256 channels, mmseg variant."""
    del output_stride  # the head fuses whatever strides the levels have
    head_kwargs.setdefault("align_corners", align_corners)
    in_index = check_in_index(
        feature_info,
        head_kwargs.pop("in_index", (0, 1, 2, 3)),  # type: ignore[arg-type]
        head="segformer",
    )
    levels = (in_index,) if isinstance(in_index, int) else in_index
    return SegFormerHead(
        [feature_info[i][0] for i in levels],
        num_classes,
        in_index=levels,
        **head_kwargs,  # type: ignore[arg-type]
    )
