"""UPerNet head (Xiao et al., "Unified Perceptual Parsing for Scene Understanding", ECCV 2018).

Layer for layer as mmsegmentation 1.2.2 ``mmseg/models/decode_heads/uper_head.py``
(``UPerHead``), which HuggingFace's ``UperNetHead`` also follows:

- the last selected level goes through a Pyramid Pooling Module (PSPNet's: for each bin
  size in ``pool_scales`` (1, 2, 3, 6) adaptive average pooling -> 1x1 conv + BN + ReLU ->
  bilinear upsampling), concatenated with that level and fused by ``bottleneck``
  (3x3 conv + BN + ReLU to ``channels``);
- every other level gets a 1x1 ``lateral_convs.<i>`` (conv + BN + ReLU to ``channels``);
- top-down path: from the coarsest level down, each level's map is bilinearly resized to
  the next finer level's size and added to it;
- every level but the coarsest gets a 3x3 ``fpn_convs.<i>`` (conv + BN + ReLU);
- all levels are bilinearly resized to the finest level's size, concatenated and fused by
  ``fpn_bottleneck`` (3x3 conv + BN + ReLU); ``Dropout2d(0.1)``; 1x1 classifier ``conv_seg``.

Every bilinear resize uses the head's ``align_corners``. Module names are mmseg's
(``psp_modules.<i>.1.conv``, ``bottleneck``, ``lateral_convs.<i>``, ``fpn_convs.<i>``,
``fpn_bottleneck``, ``conv_seg``) so its checkpoints load by name.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seg_backbones import FeatureInfo

from ._layers import ConvBNReLU, NormLayer, check_in_index, init_mmseg_, resolve_norm
from ._registry import register_head

__all__ = ["UPerHead"]


class UPerHead(nn.Module):
    """PPM on the coarsest level, an FPN over all levels, a fusion conv and a classifier.

    Args:
        in_channels: channels of each selected level, finest first (one per ``in_index``).
        num_classes: number of output logits per pixel.
        in_index: the backbone outputs the head reads, finest first (default: the first
            ``len(in_channels)``; ResNet: (0, 1, 2, 3), strides 4..32); ``forward`` takes
            the backbone's whole feature list.
        channels: width of the PPM branches, laterals, FPN convs and fusion (512).
        pool_scales: output sizes of the PPM's adaptive average pools (1, 2, 3, 6).
        dropout: ``Dropout2d`` probability before the classifier (0.1); 0 disables it.
        align_corners: ``align_corners`` of every bilinear resize in the head.
        norm_layer: ``"bn" | "syncbn" | "gn"`` or a callable ``num_features -> nn.Module``.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        *,
        in_index: Sequence[int] | None = None,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        align_corners: bool = False,
        norm_layer: str | NormLayer = "bn",
    ) -> None:
        super().__init__()
        in_channels = tuple(int(c) for c in in_channels)
        in_index = tuple(range(len(in_channels)) if in_index is None else map(int, in_index))
        if not in_channels or len(in_channels) != len(in_index):
            raise ValueError(
                f"UPerHead needs one in_channels entry per in_index level, got "
                f"in_channels={in_channels} for in_index={in_index}"
            )
        if not pool_scales:
            raise ValueError("UPerHead needs at least one pool scale, got pool_scales=()")
        norm = resolve_norm(norm_layer)
        self.in_channels = in_channels
        self.in_index = in_index
        self.channels = channels
        self.num_classes = num_classes
        self.pool_scales = tuple(int(s) for s in pool_scales)
        self.align_corners = align_corners
        top = in_channels[-1]
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvBNReLU(top, channels, 1, norm_layer=norm))
            for s in self.pool_scales
        )
        self.bottleneck = ConvBNReLU(
            top + len(self.pool_scales) * channels, channels, 3, norm_layer=norm
        )
        self.lateral_convs = nn.ModuleList(
            ConvBNReLU(c, channels, 1, norm_layer=norm) for c in in_channels[:-1]
        )
        self.fpn_convs = nn.ModuleList(
            ConvBNReLU(channels, channels, 3, norm_layer=norm) for _ in in_channels[:-1]
        )
        self.fpn_bottleneck = ConvBNReLU(len(in_channels) * channels, channels, 3, norm_layer=norm)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        init_mmseg_(self, self.conv_seg)

    def _resize(self, x: Tensor, size: torch.Size) -> Tensor:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)

    def _ppm(self, x: Tensor) -> Tensor:
        outs = [x] + [self._resize(branch(x), x.shape[-2:]) for branch in self.psp_modules]
        return self.bottleneck(torch.cat(outs, dim=1))

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        xs = [features[i] for i in self.in_index]
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, xs, strict=False)]
        laterals.append(self._ppm(xs[-1]))
        for i in range(len(laterals) - 1, 0, -1):  # top-down, coarsest first
            laterals[i - 1] = laterals[i - 1] + self._resize(
                laterals[i], laterals[i - 1].shape[-2:]
            )
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals, strict=False)]
        outs.append(laterals[-1])
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [self._resize(o, size) for o in outs[1:]]
        out = self.fpn_bottleneck(torch.cat(outs, dim=1))
        return self.conv_seg(self.dropout(out))


@register_head("upernet", output_stride=32)
def _upernet(
    feature_info: Sequence[FeatureInfo],
    num_classes: int,
    *,
    output_stride: int,
    align_corners: bool,
    **head_kwargs: object,
) -> nn.Module:
    """UPerNet (mmseg ``upernet_r50``): all four levels, PPM bins (1, 2, 3, 6), 512 channels."""
    del output_stride  # the head adapts to whatever strides the levels have
    head_kwargs.setdefault("align_corners", align_corners)
    requested = head_kwargs.pop("in_index", (0, 1, 2, 3))
    if isinstance(requested, int) or not isinstance(requested, Sequence):
        raise ValueError(
            f"upernet: in_index must be a sequence of backbone levels, finest first, "
            f"e.g. (0, 1, 2, 3); got in_index={requested!r}"
        )
    in_index = check_in_index(feature_info, requested, head="upernet")
    return UPerHead(
        [feature_info[i][0] for i in in_index],  # type: ignore[union-attr]
        num_classes,
        in_index=in_index,  # type: ignore[arg-type]
        **head_kwargs,  # type: ignore[arg-type]
    )
