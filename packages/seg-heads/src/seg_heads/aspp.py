"""DeepLabV3 head: Atrous Spatial Pyramid Pooling (Chen et al., "Rethinking Atrous
Convolution for Semantic Image Segmentation", arXiv 1706.05587, 2017).

Five parallel branches on one feature map: image pooling (global average pool ->
1x1 conv + BN + ReLU -> bilinear upsampling), a 1x1 conv and three 3x3 atrous
convs (each + BN + ReLU), concatenated. The atrous rates are 6/12/18 at output
stride 16 and doubled, 12/24/36, at output stride 8 (the paper;
:func:`seg_heads.create_model` derives them from ``output_stride``). Two
references, selected by ``variant``, so both weight sets load:

- ``"mmseg"`` (mmsegmentation ``mmseg/models/decode_heads/aspp_head.py``):
  512-channel branches, concatenated as ``[image_pool, 1x1, rate_1, rate_2,
  rate_3]``; ``bottleneck`` 3x3 conv 512 + BN + ReLU; ``Dropout2d(0.1)``; 1x1
  classifier ``conv_seg``.
- ``"torchvision"`` (torchvision ``models/segmentation/deeplabv3.py``,
  ``DeepLabHead``/``ASPP``): 256-channel branches, concatenated as ``[1x1,
  rate_1, rate_2, rate_3, image_pool]``; ``project`` 1x1 conv 256 + BN + ReLU +
  ``Dropout(0.5)``; ``bottleneck`` 3x3 conv 256 + BN + ReLU; 1x1 classifier.

Module names follow mmseg (``image_pool.1.conv``, ``aspp_modules.<i>.conv``,
``bottleneck.conv``, ``conv_seg``); :mod:`seg_heads.convert` maps torchvision's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seg_backbones import FeatureInfo

from ._layers import ConvBNReLU, NormLayer, check_in_index, init_mmseg_, pick, resolve_norm
from ._registry import register_head

__all__ = ["ASPPHead", "default_aspp_rates"]

_VARIANTS = ("mmseg", "torchvision")
_PAPER_RATES = {8: (12, 24, 36), 16: (6, 12, 18)}


def default_aspp_rates(output_stride: int) -> tuple[int, int, int]:
    """The paper's atrous rates for ``output_stride``: 12/24/36 at 8, 6/12/18 at 16."""
    try:
        return _PAPER_RATES[output_stride]
    except KeyError:
        raise ValueError(
            f"DeepLabV3 defines ASPP rates for output_stride 8 (12, 24, 36) and 16 (6, 12, 18), "
            f"got output_stride={output_stride}; pass head_kwargs={{'rates': (r1, r2, r3)}}"
        ) from None


class ASPPHead(nn.Module):
    """ASPP on one feature map, then a bottleneck and a 1x1 classifier.

    Args:
        in_channels: channels of the input feature map (from ``backbone.feature_info``).
        num_classes: number of output logits per pixel.
        in_index: the backbone output the head reads (-1: the last); ``forward`` takes the
            backbone's feature list (or that one map as a tensor).
        variant: ``"mmseg"`` or ``"torchvision"`` (see the module docstring).
        rates: dilations of the three 3x3 branches; (12, 24, 36) is right for output stride 8.
        channels: branch and bottleneck width; default 512 (mmseg) or 256 (torchvision).
        dropout: drop probability before the classifier; default 0.1 (mmseg, ``Dropout2d``)
            or 0 (torchvision).
        project_dropout: torchvision only: ``Dropout`` after the 1x1 projection (0.5).
        align_corners: ``align_corners`` of the image-pool upsampling (irrelevant in
            practice: the pooled map is 1x1).
        norm_layer: ``"bn" | "syncbn" | "gn"`` or a callable ``num_features -> nn.Module``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        in_index: int = -1,
        variant: str = "mmseg",
        rates: Sequence[int] = (12, 24, 36),
        channels: int | None = None,
        dropout: float | None = None,
        project_dropout: float = 0.5,
        align_corners: bool = False,
        norm_layer: str | NormLayer = "bn",
    ) -> None:
        super().__init__()
        if variant not in _VARIANTS:
            raise ValueError(f"unknown ASPPHead variant {variant!r}; valid: {list(_VARIANTS)}")
        tv = variant == "torchvision"
        if channels is None:
            channels = 256 if tv else 512
        if dropout is None:
            dropout = 0.0 if tv else 0.1
        norm = resolve_norm(norm_layer)
        self.variant = variant
        self.in_channels = in_channels
        self.channels = channels
        self.num_classes = num_classes
        self.in_index = in_index
        self.rates = tuple(int(r) for r in rates)
        self.align_corners = align_corners
        self.image_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), ConvBNReLU(in_channels, channels, 1, norm_layer=norm)
        )
        self.aspp_modules = nn.ModuleList(
            [ConvBNReLU(in_channels, channels, 1, norm_layer=norm)]
            + [
                ConvBNReLU(in_channels, channels, 3, dilation=r, norm_layer=norm)
                for r in self.rates
            ]
        )
        n_cat = (len(self.rates) + 2) * channels
        if tv:
            self.project: nn.Module | None = ConvBNReLU(n_cat, channels, 1, norm_layer=norm)
            self.project_dropout = nn.Dropout(project_dropout)
            self.bottleneck = ConvBNReLU(channels, channels, 3, norm_layer=norm)
        else:
            self.project = None
            self.project_dropout = nn.Identity()
            self.bottleneck = ConvBNReLU(n_cat, channels, 3, norm_layer=norm)
        drop = nn.Dropout if tv else nn.Dropout2d
        self.dropout = drop(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        if not tv:  # torchvision keeps PyTorch's default initialisation
            init_mmseg_(self, self.conv_seg)

    def forward(self, features: Sequence[Tensor] | Tensor) -> Tensor:
        x = pick(features, self.in_index)
        pooled = F.interpolate(
            self.image_pool(x), size=x.shape[-2:], mode="bilinear", align_corners=self.align_corners
        )
        branches = [m(x) for m in self.aspp_modules]
        if self.project is not None:  # torchvision: pooling last, then a 1x1 projection
            out = self.project_dropout(self.project(torch.cat([*branches, pooled], dim=1)))
        else:  # mmseg: pooling first
            out = torch.cat([pooled, *branches], dim=1)
        out = self.bottleneck(out)
        return self.conv_seg(self.dropout(out))


@register_head("deeplabv3")
def _deeplabv3(
    feature_info: Sequence[FeatureInfo],
    num_classes: int,
    *,
    output_stride: int,
    align_corners: bool,
    **head_kwargs: object,
) -> nn.Module:
    """DeepLabV3 (mmseg ``deeplabv3_r50-d8`` by default; ``variant="torchvision"`` for torchvision).

    ``rates`` default to the paper's for ``output_stride`` (12/24/36 at 8, 6/12/18 at 16).
    """
    if "rates" not in head_kwargs:
        head_kwargs["rates"] = default_aspp_rates(output_stride)
    head_kwargs.setdefault("align_corners", align_corners)
    in_index = check_in_index(feature_info, head_kwargs.pop("in_index", -1), head="deeplabv3")
    return ASPPHead(
        feature_info[in_index][0],  # type: ignore[index]
        num_classes,
        in_index=in_index,  # type: ignore[arg-type]
        **head_kwargs,  # type: ignore[arg-type]
    )
