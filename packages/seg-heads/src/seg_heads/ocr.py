"""OCRNet head: object-contextual representations over soft object regions.

Yuan et al., "Object-Contextual Representations for Semantic Segmentation" (ECCV 2020).
Layer for layer as mmsegmentation 1.2.2: the two-stage ``CascadeEncoderDecoder``
(``mmseg/models/segmentors/cascade_encoder_decoder.py``) of
``configs/_base_/models/ocrnet_hr18.py``, whose first stage is an ``FCNHead`` and second an
``OCRHead`` (``mmseg/models/decode_heads/ocr_head.py``, ``models/utils/self_attention_block.py``):

1. both read ``resize_concat`` of the levels ``in_index`` (0, 1, 2, 3): every level resized
   bilinearly to the first one's size (stride 4 on HRNetV2) and concatenated
   (18 + 36 + 72 + 144 = 270 channels on W18);
2. soft object regions (``soft_region_head``, mmseg ``decode_head.0``): a 1x1 conv of 270
   channels + BN + ReLU, no dropout, 1x1 classifier ``conv_seg``;
3. OCR (mmseg ``decode_head.1``): ``bottleneck`` 3x3 conv to ``channels`` (512) + BN + ReLU
   gives the pixel features; ``spatial_gather_module``: softmax of each region's logits over
   the pixels, region features = that weighting of the pixel features (N x 512 x K x 1);
   ``object_context_block``: query (pixels) and key (regions) projections of two 1x1
   conv + BN + ReLU units to ``ocr_channels`` (256), value one unit, attention
   ``softmax(q k^T * ocr_channels**-0.5)`` over the regions, ``out_project`` back to 512,
   ``bottleneck`` 1x1 conv + BN + ReLU over ``[context, pixel features]``; classifier
   ``conv_seg``.

:class:`OCRHead` holds both stages and returns ``{"out": OCR logits, "aux": soft-region
logits}`` at stride 4; :class:`~seg_heads.SegmentationModel` resizes both to the input, and
the trainer weighs ``"aux"`` by its aux-loss weight (0.4, as mmseg's ``loss_weight`` on the
FCN stage). The model's own auxiliary head (``create_model(..., aux=True)``) is therefore
not used with OCRNet. mmseg's ``scale`` option (> 1 max-pools the queries, and then its
``ObjectAttentionBlock`` returns a bare resize of the queries) is fixed at its default 1.
Module names are mmseg's (``soft_region_head`` replaces ``decode_head.0``, the OCR
stage's names sit at the top), so checkpoints load by a two-rule renaming.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seg_backbones import FeatureInfo

from ._layers import ConvBNReLU, NormLayer, check_in_index, init_mmseg_, resolve_norm
from ._registry import register_head
from .fcn import FCNHead

__all__ = ["OCRHead", "ObjectAttentionBlock", "SpatialGatherModule"]


class SpatialGatherModule(nn.Module):
    """Region features: pixel features weighted by each region's softmax over the pixels.

    ``forward(feats N x C x H x W, region_logits N x K x H x W) -> N x C x K x 1``.
    """

    def forward(self, feats: Tensor, region_logits: Tensor) -> Tensor:
        probs = F.softmax(region_logits.flatten(2), dim=2)  # N x K x HW
        context = torch.matmul(probs, feats.flatten(2).transpose(1, 2))  # N x K x C
        return context.transpose(1, 2).unsqueeze(3)


def _project(cin: int, cout: int, num_convs: int, norm: NormLayer) -> nn.Module:
    """mmseg ``SelfAttentionBlock.build_project``: one unit bare, several in a Sequential."""
    units = [
        ConvBNReLU(cin if i == 0 else cout, cout, 1, norm_layer=norm) for i in range(num_convs)
    ]
    return units[0] if num_convs == 1 else nn.Sequential(*units)


class ObjectAttentionBlock(nn.Module):
    """Attention of every pixel over the region features (mmseg ``ObjectAttentionBlock``)."""

    def __init__(self, in_channels: int, channels: int, norm: NormLayer) -> None:
        super().__init__()
        self.channels = channels
        self.key_project = _project(in_channels, channels, 2, norm)
        self.query_project = _project(in_channels, channels, 2, norm)
        self.value_project = _project(in_channels, channels, 1, norm)
        self.out_project = _project(channels, in_channels, 1, norm)
        self.bottleneck = ConvBNReLU(2 * in_channels, in_channels, 1, norm_layer=norm)

    def forward(self, feats: Tensor, regions: Tensor) -> Tensor:
        n, _, h, w = feats.shape
        query = self.query_project(feats).flatten(2).transpose(1, 2)  # N x HW x C'
        key = self.key_project(regions).flatten(2)  # N x C' x K
        value = self.value_project(regions).flatten(2).transpose(1, 2)  # N x K x C'
        sim = F.softmax((self.channels**-0.5) * torch.matmul(query, key), dim=-1)
        context = torch.matmul(sim, value).transpose(1, 2).reshape(n, -1, h, w)
        context = self.out_project(context)
        return self.bottleneck(torch.cat([context, feats], dim=1))


class OCRHead(nn.Module):
    """Soft object regions, then object-contextual attention; ``{"out", "aux"}`` logits.

    Args:
        in_channels: channels of the levels ``in_index`` (from ``backbone.feature_info``).
        num_classes: logits per pixel.
        in_index: the backbone levels read, resized to the first one's size and
            concatenated ((0, 1, 2, 3)).
        channels: width of the OCR bottleneck and object-context output (512).
        ocr_channels: width of the query/key/value projections (256).
        soft_region_channels: width of the soft-region conv; default the concatenated
            input's (270 on HRNetV2-W18, as mmseg's ``channels=sum(in_channels)``).
        dropout: ``Dropout2d`` before both classifiers; 0 (mmseg ``dropout_ratio=-1``)
            disables it.
        align_corners: of the ``resize_concat`` resizes (mmseg: the heads' setting).
        norm_layer: ``"bn" | "syncbn" | "gn" | "frozen_bn"`` or a callable.
    """

    returns_aux = True
    """``forward`` returns an ``"aux"`` output: the model must not add an auxiliary head."""

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        *,
        in_index: Sequence[int] = (0, 1, 2, 3),
        channels: int = 512,
        ocr_channels: int = 256,
        soft_region_channels: int | None = None,
        dropout: float = 0.0,
        align_corners: bool = False,
        norm_layer: str | NormLayer = "bn",
    ) -> None:
        super().__init__()
        if len(in_channels) != len(in_index):
            raise ValueError(
                f"OCRHead: {len(in_channels)} in_channels for {len(in_index)} levels in_index"
            )
        norm = resolve_norm(norm_layer)
        cin = sum(in_channels)
        self.in_channels = tuple(in_channels)
        self.in_index = tuple(in_index)
        self.channels = channels
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.soft_region_head = FCNHead(
            cin,
            num_classes,
            channels=cin if soft_region_channels is None else soft_region_channels,
            num_convs=1,
            kernel_size=1,
            concat_input=False,
            dropout=dropout,
            norm_layer=norm,
        )
        self.bottleneck = ConvBNReLU(cin, channels, 3, norm_layer=norm)
        self.spatial_gather_module = SpatialGatherModule()
        self.object_context_block = ObjectAttentionBlock(channels, ocr_channels, norm)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        if not self.conv_seg.weight.is_meta:  # shapes only: nn.init on meta imports dynamo
            init_mmseg_(self, self.conv_seg)  # this re-initialises the soft-region head too:
            nn.init.normal_(self.soft_region_head.conv_seg.weight, std=0.01)  # as mmseg's

    def _resize_concat(self, features: Sequence[Tensor]) -> Tensor:
        levels = [features[i] for i in self.in_index]
        size = levels[0].shape[-2:]
        return torch.cat(
            [
                x
                if x.shape[-2:] == size
                else F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)
                for x in levels
            ],
            dim=1,
        )

    def forward(self, features: Sequence[Tensor]) -> dict[str, Tensor]:
        x = self._resize_concat(features)
        regions = self.soft_region_head(x)
        feats = self.bottleneck(x)
        context = self.spatial_gather_module(feats, regions)
        out = self.object_context_block(feats, context)
        return {"out": self.conv_seg(self.dropout(out)), "aux": regions}


@register_head(
    "ocrnet",
    output_stride=32,
    tiny={"backbone": "hrnet_w18", "head_kwargs": {"channels": 64, "ocr_channels": 32}},
)
def _ocrnet(
    feature_info: Sequence[FeatureInfo],
    num_classes: int,
    *,
    output_stride: int,
    align_corners: bool,
    **head_kwargs: object,
) -> nn.Module:
    """OCRNet (mmseg ``ocrnet_hr18`` / ``ocrnet_hr48``): levels (0, 1, 2, 3), 512 / 256 channels."""
    del output_stride  # the head reads whatever strides the levels have
    head_kwargs.setdefault("align_corners", align_corners)
    in_index = check_in_index(
        feature_info,
        head_kwargs.pop("in_index", (0, 1, 2, 3)),  # type: ignore[arg-type]
        head="ocrnet",
    )
    if isinstance(in_index, int):
        in_index = (in_index,)
    return OCRHead(
        [feature_info[i][0] for i in in_index],
        num_classes,
        in_index=in_index,
        **head_kwargs,  # type: ignore[arg-type]
    )
