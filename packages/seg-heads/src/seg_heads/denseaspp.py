"""DenseASPP head (Yang et al., "DenseASPP for Semantic Segmentation in Street
Scenes", CVPR 2018).

Layer for layer as the official code, DeepMotionAIResearch/DenseASPP
``models/DenseASPP.py`` (``_DenseAsppBlock`` and the ``ASPP_*`` /
``classification`` part of ``DenseASPP``) with ``cfgs/DenseASPP161.py``
(``d_feature0=512``, ``d_feature1=128``, ``dropout0=dropout1=0.1``):

- five densely connected atrous blocks at rates 3, 6, 12, 18, 24; block ``k``
  (0-based) reads ``C + 128 * k`` channels, the concatenation
  ``[out_k-1, ..., out_0, input]`` (newest first, as ``torch.cat((aspp, feature))``);
- each block: BN-ReLU pre-activation (the first block has no BN, only the
  ReLU), 1x1 conv (with bias) to 512, BN-ReLU, 3x3 atrous conv (with bias) to
  128, ``Dropout2d(0.1)``;
- then ``Dropout2d(0.1)`` and a 1x1 classifier over ``C + 640`` channels.

The official first block's ReLU is in-place on the features it then
concatenates, so the concatenation carries ``ReLU(input)``; we do the same
(a no-op on ResNet outputs, which are already rectified). The official BN
momentum is 0.0003 (PyTorch convention: a very slow running average); it is
the default here, ``bn_momentum`` changes it. The official model runs the
head at output stride 8 (at 16 it upsamples the features x2 first); use it at
output stride 8. The official backbone is DenseNet-161; PKUSeg puts the head
on ResNet layer4 (``C = 2048``), taking ``C`` from ``backbone.feature_info``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seg_backbones import FeatureInfo

from ._layers import NormLayer, check_in_index, pick, resolve_norm
from ._registry import register_head

__all__ = ["DenseASPPBlock", "DenseASPPHead"]


class DenseASPPBlock(nn.Module):
    """``[norm1 ->] ReLU -> conv1 (1x1) -> norm2 -> ReLU -> conv2 (3x3, rate) -> Dropout2d``."""

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        rate: int,
        *,
        dropout: float,
        pre_norm: bool,
        norm_layer: NormLayer,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(in_channels) if pre_norm else None
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 1)
        self.norm2 = norm_layer(mid_channels)
        self.conv2 = nn.Conv2d(mid_channels, out_channels, 3, padding=rate, dilation=rate)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if self.norm1 is not None:
            x = self.norm1(x)
        x = self.conv1(F.relu(x))
        x = self.conv2(F.relu(self.norm2(x)))
        return self.dropout(x)


class DenseASPPHead(nn.Module):
    """Densely connected atrous blocks on one feature map, then a 1x1 classifier.

    Args:
        in_channels: channels ``C`` of the input feature map (from ``backbone.feature_info``).
        num_classes: number of output logits per pixel.
        in_index: the backbone output the head reads (-1: the last); ``forward`` takes the
            backbone's feature list (or that one map as a tensor).
        rates: dilation of each block (3, 6, 12, 18, 24).
        mid_channels: width of each block's 1x1 conv (``d_feature0`` = 512).
        growth: channels each block adds (``d_feature1`` = 128).
        dropout: ``Dropout2d`` after each block (``dropout0`` = 0.1).
        classifier_dropout: ``Dropout2d`` before the classifier (``dropout1`` = 0.1).
        bn_momentum: momentum of the default BatchNorm layers (official: 0.0003).
        norm_layer: ``None`` (BatchNorm2d with ``bn_momentum``), ``"bn" | "syncbn" | "gn"``
            or a callable ``num_features -> nn.Module``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        in_index: int = -1,
        rates: Sequence[int] = (3, 6, 12, 18, 24),
        mid_channels: int = 512,
        growth: int = 128,
        dropout: float = 0.1,
        classifier_dropout: float = 0.1,
        bn_momentum: float = 0.0003,
        norm_layer: str | NormLayer | None = None,
    ) -> None:
        super().__init__()
        if not rates:
            raise ValueError("DenseASPPHead needs at least one rate, got rates=()")
        norm = (
            partial(nn.BatchNorm2d, momentum=bn_momentum)
            if norm_layer is None
            else resolve_norm(norm_layer)
        )
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.in_index = in_index
        self.rates = tuple(int(r) for r in rates)
        self.blocks = nn.ModuleList(
            DenseASPPBlock(
                in_channels + k * growth,
                mid_channels,
                growth,
                rate,
                dropout=dropout,
                pre_norm=k > 0,
                norm_layer=norm,
            )
            for k, rate in enumerate(self.rates)
        )
        self.channels = in_channels + len(self.rates) * growth
        self.dropout = nn.Dropout2d(classifier_dropout) if classifier_dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(self.channels, num_classes, 1)
        # Official initialisation: Kaiming-uniform conv weights (PyTorch's default fan_in,
        # leaky_relu a=0) with PyTorch's default conv biases, norms 1/0.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm | nn.GroupNorm) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, features: Sequence[Tensor] | Tensor) -> Tensor:
        x = pick(features, self.in_index)
        feature = F.relu(x)  # the official first block's in-place ReLU (see module docstring)
        for block in self.blocks:
            feature = torch.cat([block(feature), feature], dim=1)
        return self.conv_seg(self.dropout(feature))


@register_head(
    "denseaspp",
    tiny={
        "backbone": "resnet18_deep",
        "aux": True,
        "head_kwargs": {"mid_channels": 64, "growth": 32},
        "aux_kwargs": {"channels": 8},
    },
)
def _denseaspp(
    feature_info: Sequence[FeatureInfo],
    num_classes: int,
    *,
    output_stride: int,
    align_corners: bool,
    **head_kwargs: object,
) -> nn.Module:
    """DenseASPP (official rates 3/6/12/18/24, 512 -> 128 per block) on the last feature map."""
    del output_stride, align_corners  # see the module docstring on output stride
    in_index = check_in_index(feature_info, head_kwargs.pop("in_index", -1), head="denseaspp")
    return DenseASPPHead(
        feature_info[in_index][0],  # type: ignore[index]
        num_classes,
        in_index=in_index,  # type: ignore[arg-type]
        **head_kwargs,  # type: ignore[arg-type]
    )
