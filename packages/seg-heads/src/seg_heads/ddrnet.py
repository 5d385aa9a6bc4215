"""DDRNet head: a BN-ReLU-conv unit and a classifier, plus the auxiliary branch of training.

Hong et al., "Deep Dual-resolution Networks for Real-time and Accurate Semantic
Segmentation of Road Scenes" (arXiv:2101.06085). Layer for layer as mmsegmentation 1.2.2
``mmseg/models/decode_heads/ddr_head.py`` (``DDRHead``) with the configs
``configs/ddrnet/ddrnet_23-slim_in1k-pre_*`` (``in_channels=128, channels=64``) and
``ddrnet_23_in1k-pre_*`` (256 / 128), ``dropout_ratio=0``:

* ``head``: BN (of the input) -> ReLU -> 3x3 conv to ``channels`` (mmcv ``ConvModule`` with
  ``order=('norm', 'act', 'conv')``), BN, ReLU; classifier ``conv_seg`` (1x1, bias) on the
  backbone's final output (level ``in_index[1]``: ``seg_backbones.ddrnet``'s ``out``);
* ``aux_head`` / ``aux_cls_seg``: the same on the spatial branch after the first bilateral
  fusion (level ``in_index[0]``), in training only (mmseg's ``DDRHead`` returns
  ``(context_logit, spatial_logit)`` in training, loss weights 1.0 / 0.4 in the configs).

``forward`` returns ``{"out": logits}`` at stride 8, plus ``"aux"`` in training mode (the
trainer weighs it by its aux-loss weight; mmseg: 0.4); :class:`~seg_heads.SegmentationModel`
resizes both to the input with the model's ``align_corners`` (False in the configs).
``aux_branch=False`` builds the head without the auxiliary branch (a checkpoint without
``aux_head`` weights). Module names are mmseg's, so its checkpoints load by name.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from seg_backbones import FeatureInfo
from seg_backbones.ddrnet import NormActConv, init_kaiming_

from ._layers import NormLayer, check_in_index, resolve_norm
from ._registry import register_head

__all__ = ["DDRHead", "norm_act_conv_head"]


def norm_act_conv_head(cin: int, channels: int, norm: NormLayer) -> nn.Sequential:
    """mmseg ``DDRHead._make_base_head``: BN-ReLU-3x3 conv, BN, ReLU (children 0, 1, 2)."""
    return nn.Sequential(
        NormActConv(cin, channels, 3, norm=norm), norm(channels), nn.ReLU(inplace=True)
    )


class DDRHead(nn.Module):
    """mmseg's ``DDRHead``; see the module docstring.

    Args:
        in_channels: channels of the final level (``4c``: 128 slim, 256).
        aux_in_channels: channels of the auxiliary level (``2c``); None: no aux branch.
        num_classes: logits per pixel.
        in_index: ``(aux level, final level)`` of the backbone's outputs.
        channels: width of both heads (slim 64, DDRNet-23 128).
        dropout: before ``conv_seg`` (the configs: 0).
        norm_layer: ``"bn" | "syncbn" | "gn" | "frozen_bn"`` or a callable.
    """

    returns_aux = True
    """In training ``forward`` returns ``"aux"``: the model must not add an auxiliary head."""

    def __init__(
        self,
        in_channels: int,
        aux_in_channels: int | None,
        num_classes: int,
        *,
        in_index: tuple[int, int] = (0, 1),
        channels: int = 64,
        dropout: float = 0.0,
        norm_layer: str | NormLayer = "bn",
    ) -> None:
        super().__init__()
        norm = resolve_norm(norm_layer)
        self.in_index = tuple(in_index)
        self.channels = channels
        self.num_classes = num_classes
        self.head = norm_act_conv_head(in_channels, channels, norm)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.aux_head: nn.Module | None = None
        self.aux_cls_seg: nn.Module | None = None
        if aux_in_channels is not None:
            self.aux_head = norm_act_conv_head(aux_in_channels, channels, norm)
            self.aux_cls_seg = nn.Conv2d(channels, num_classes, 1)
        self.returns_aux = aux_in_channels is not None
        init_kaiming_(self)  # mmseg's DDRHead.init_weights: every conv, classifiers too

    def forward(self, features: Sequence[Tensor]) -> dict[str, Tensor]:
        outputs = {"out": self.conv_seg(self.dropout(self.head(features[self.in_index[1]])))}
        if self.training and self.aux_head is not None and self.aux_cls_seg is not None:
            outputs["aux"] = self.aux_cls_seg(self.aux_head(features[self.in_index[0]]))
        return outputs


@register_head(
    "ddrnet",
    output_stride=32,
    tiny={"backbone": "ddrnet_23_slim", "aux": False, "head_kwargs": {"channels": 16}},
)
def _ddrnet(
    feature_info: Sequence[FeatureInfo],
    num_classes: int,
    *,
    output_stride: int,
    align_corners: bool,
    **head_kwargs: object,
) -> nn.Module:
    """DDRNet (mmseg ``ddrnet_23-slim_in1k-pre`` / ``ddrnet_23_in1k-pre``) on a DDRNet backbone.

    ``in_index`` (default ``(0, 1)``): the auxiliary and the final level; ``aux_branch``
    (default True) keeps the training-only auxiliary branch. The head resizes nothing
    (``align_corners`` is the model's final resize).
    """
    del output_stride, align_corners
    raw = head_kwargs.pop("in_index", (0, 1))
    in_index = check_in_index(feature_info, raw, head="ddrnet")  # type: ignore[arg-type]
    if isinstance(in_index, int) or len(in_index) != 2:
        raise ValueError(
            f"ddrnet: in_index must be two levels (auxiliary, final), got {raw!r}; the DDRNet "
            "backbones' default is (0, 1)"
        )
    aux = head_kwargs.pop("aux_branch", True)
    # mmseg's configs: head width = half the final level (slim 128 -> 64, DDRNet-23 256 -> 128)
    head_kwargs.setdefault("channels", feature_info[in_index[1]][0] // 2)
    return DDRHead(
        feature_info[in_index[1]][0],
        feature_info[in_index[0]][0] if aux else None,
        num_classes,
        in_index=in_index,  # type: ignore[arg-type]
        **head_kwargs,  # type: ignore[arg-type]
    )
