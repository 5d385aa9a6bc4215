"""Fast-SCNN's heads: a depthwise-separable FCN classifier and two auxiliary FCN heads.

Poudel et al., "Fast-SCNN" (BMVC 2019), Section 3.2.4 (the classifier), as
mmsegmentation 1.2.2 ``configs/_base_/models/fast_scnn.py`` builds it on the
``seg_backbones.fast_scnn`` backbone (outputs: stride-8 map, global features, fusion):

* ``head``: mmseg ``DepthwiseSeparableFCNHead`` on level 2 (the fusion, 128 channels): two
  depthwise-separable 3x3 units of 128 channels (``convs.<i>.depthwise_conv``: 3x3
  depthwise conv + BN; ``convs.<i>.pointwise_conv``: 1x1 conv + BN + ReLU), no ``conv_cat``,
  ``Dropout2d(0.1)``, ``conv_seg``;
* ``aux_heads[0]``: mmseg ``FCNHead`` on level 1 (global features, 128 channels, in_index
  -2), ``aux_heads[1]`` on level 0 (the stride-8 map, 64 channels, in_index -3): one 3x3
  conv-BN-ReLU of 32 channels each (mmseg weights their losses 0.4).

Every BN has ``momentum=0.01`` (the config's ``norm_cfg``). In training the model returns
``"aux0"``, ``"aux1"`` (resized to the input), in eval mode ``"out"`` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from seg_backbones import FeatureInfo
from seg_backbones.bisenetv2 import DepthwiseSeparableConv
from seg_backbones.fast_scnn import fast_scnn_norm

from ._layers import NormLayer, check_in_index, init_mmseg_, resolve_norm
from ._registry import register_head
from .bisenetv2 import BoosterHead, aux_fcn_heads
from .fcn import FCNHead

__all__ = ["DepthwiseSeparableFCNHead"]


class DepthwiseSeparableFCNHead(FCNHead):
    """mmseg's ``DepthwiseSeparableFCNHead``: an mmseg :class:`FCNHead` whose 3x3 units are
    depthwise-separable (BN after the depthwise conv, BN + ReLU after the pointwise one).

    Args as :class:`FCNHead` (``variant="mmseg"``); ``channels`` default 128, ``num_convs`` 2,
    ``concat_input`` False (Fast-SCNN's config).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        in_index: int = -1,
        channels: int = 128,
        num_convs: int = 2,
        kernel_size: int = 3,
        concat_input: bool = False,
        dropout: float = 0.1,
        norm_layer: str | NormLayer = "bn",
    ) -> None:
        super().__init__(
            in_channels,
            num_classes,
            in_index=in_index,
            variant="mmseg",
            channels=channels,
            num_convs=num_convs,
            kernel_size=kernel_size,
            concat_input=concat_input,
            dropout=dropout,
            norm_layer=norm_layer,
        )
        norm = resolve_norm(norm_layer)

        def sep(cin: int) -> DepthwiseSeparableConv:
            return DepthwiseSeparableConv(
                cin, channels, kernel_size, dw_norm=norm, pw_norm=norm, dw_act=False, pw_act=True
            )

        self.convs = nn.Sequential(
            *(sep(in_channels if i == 0 else channels) for i in range(num_convs))
        )
        if concat_input:
            self.conv_cat = sep(in_channels + channels)  # type: ignore[assignment]
        init_mmseg_(self, self.conv_seg)


@register_head(
    "fast_scnn",
    output_stride=32,
    tiny={
        "backbone": "fast_scnn",
        "backbone_kwargs": {
            "downsample_dw_channels": (8, 12),
            "global_in_channels": 16,
            "global_block_channels": (16, 24, 32),
            "num_blocks": (1, 1, 1),
            "expand_ratio": 2,
            "global_out_channels": 32,
            "fusion_out_channels": 32,
        },
        "head_kwargs": {"channels": 16, "aux_channels": (8, 8)},
    },
)
def _fast_scnn(
    feature_info: Sequence[FeatureInfo],
    num_classes: int,
    *,
    output_stride: int,
    align_corners: bool,
    in_index: int = -1,
    channels: int = 128,
    num_convs: int = 2,
    dropout: float = 0.1,
    aux_heads: bool = True,
    aux_in_index: Sequence[int] = (-2, -3),
    aux_channels: Sequence[int] = (32, 32),
    aux_num_convs: int = 1,
    aux_align_corners: bool = False,
    norm_layer: str | NormLayer = "bn",
    **unknown: Any,
) -> nn.Module:
    """Fast-SCNN (mmseg ``fast_scnn``) on the ``fast_scnn`` backbone.

    ``head_kwargs``: ``channels`` (128), ``num_convs`` (2), ``in_index`` (-1: the fusion),
    ``dropout`` (0.1), ``aux_heads`` (True: the two auxiliary heads), ``aux_in_index``
    ((-2, -3)), ``aux_channels`` ((32, 32)), ``aux_num_convs`` (1), ``aux_align_corners``
    (False), ``norm_layer`` ("bn"/"syncbn" get ``momentum=0.01``).
    """
    del output_stride, align_corners  # no resolution-dependent part; aux: aux_align_corners
    if unknown:
        raise TypeError(f"fast_scnn: unknown head option(s) {sorted(unknown)}")
    norm = fast_scnn_norm(norm_layer)
    level = check_in_index(feature_info, in_index, head="fast_scnn")
    head = DepthwiseSeparableFCNHead(
        feature_info[level][0],  # type: ignore[index]
        num_classes,
        in_index=level,  # type: ignore[arg-type]
        channels=channels,
        num_convs=num_convs,
        dropout=dropout,
        norm_layer=norm,
    )
    boosters = (
        aux_fcn_heads(
            feature_info,
            num_classes,
            in_index=aux_in_index,
            channels=aux_channels,
            num_convs=aux_num_convs,
            norm_layer=norm,
            dropout=dropout,
            head="fast_scnn",
        )
        if aux_heads
        else []
    )
    return BoosterHead(head, boosters, aux_align_corners=aux_align_corners)
