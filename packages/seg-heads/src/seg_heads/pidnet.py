"""PIDNet head: the I-branch classifier, plus the P (auxiliary) and D (boundary) heads of training.

Xu et al., "PIDNet: A Real-time Semantic Segmentation Network Inspired by PID Controllers"
(CVPR 2023). Layer for layer as mmsegmentation 1.2.2
``mmseg/models/decode_heads/pid_head.py`` (``PIDHead``, ``BasePIDHead``) with the configs
``configs/pidnet/pidnet-{s,m,l}_2xb6-120k_1024x1024-cityscapes.py`` (``in_channels`` /
``channels``: S 128 / 128, M 256 / 128, L 256 / 256; ``dropout_ratio`` left at mmseg's
0.1):

* each branch (``i_head``, ``p_head``, ``d_head``): BN (of the input) -> ReLU -> 3x3 conv
  (``conv``, mmcv ``order=('norm', 'act', 'conv')``), ``norm`` (BN), ``act`` (ReLU), then a
  1x1 classifier with bias;
* ``i_head`` + ``conv_seg`` (after ``Dropout2d(0.1)``, mmseg's ``cls_seg``) on the fused
  output: the logits, in training and eval;
* ``p_head`` (``channels`` wide) + ``p_cls_seg`` on the P branch: training only, ``"aux"``
  (mmseg's loss weight 0.4);
* ``d_head`` (``in_channels // 4`` wide) + ``d_cls_seg`` (one channel) on the D branch:
  training only, ``"boundary"`` (boundary logits, N x 1 x H/8 x W/8, not resized; mmseg's
  boundary loss and boundary-aware CE belong to the trainer).

Levels ``in_index = (p, d, i)`` of ``seg_backbones.pidnet`` (default ``(0, 1, 2)``).
:class:`~seg_heads.SegmentationModel` resizes ``"out"`` and ``"aux"`` to the input with the
model's ``align_corners`` -- True in the PIDNet configs (the decode head's), while the
backbone resizes with False. ``train_branches=False`` builds the head without the P and D
heads (a checkpoint without ``p_head`` / ``d_head`` weights). Module names are mmseg's.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from seg_backbones import FeatureInfo
from seg_backbones.ddrnet import NormActConv, init_kaiming_

from ._layers import NormLayer, check_in_index, resolve_norm
from ._registry import register_head

__all__ = ["PIDBranchHead", "PIDHead"]


class PIDBranchHead(nn.Module):
    """mmseg ``BasePIDHead`` without its classifier: BN-ReLU-3x3 conv (``conv``), ``norm``, ``act``."""

    def __init__(self, cin: int, channels: int, norm: NormLayer) -> None:
        super().__init__()
        self.conv = NormActConv(cin, channels, 3, norm=norm)
        self.norm = norm(channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))


class PIDHead(nn.Module):
    """mmseg's ``PIDHead``; see the module docstring.

    Args:
        in_channels: channels of the fused level (``4c``).
        p_channels / d_channels: channels of the P and D levels (``2c``); None (both): no
            training branches.
        num_classes: logits per pixel.
        in_index: ``(p, d, i)`` levels of the backbone's outputs.
        channels: width of the I and P heads (S 128, M 128, L 256).
        boundary_channels: width of the D head; default ``in_channels // 4`` (mmseg).
        dropout: ``Dropout2d`` before ``conv_seg`` (mmseg's default 0.1).
        norm_layer: ``"bn" | "syncbn" | "gn" | "frozen_bn"`` or a callable.
    """

    returns_aux = True
    """In training ``forward`` returns ``"aux"``: the model must not add an auxiliary head."""

    def __init__(
        self,
        in_channels: int,
        p_channels: int | None,
        d_channels: int | None,
        num_classes: int,
        *,
        in_index: tuple[int, int, int] = (0, 1, 2),
        channels: int = 128,
        boundary_channels: int | None = None,
        dropout: float = 0.1,
        norm_layer: str | NormLayer = "bn",
    ) -> None:
        super().__init__()
        if (p_channels is None) != (d_channels is None):
            raise ValueError(
                "PIDHead: give both p_channels and d_channels (the training branches) or neither"
            )
        norm = resolve_norm(norm_layer)
        self.in_index = tuple(in_index)
        self.channels = channels
        self.num_classes = num_classes
        self.i_head = PIDBranchHead(in_channels, channels, norm)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.p_head: nn.Module | None = None
        self.d_head: nn.Module | None = None
        self.p_cls_seg: nn.Module | None = None
        self.d_cls_seg: nn.Module | None = None
        if p_channels is not None and d_channels is not None:
            bc = in_channels // 4 if boundary_channels is None else boundary_channels
            self.p_head = PIDBranchHead(p_channels, channels, norm)
            self.d_head = PIDBranchHead(d_channels, bc, norm)
            self.p_cls_seg = nn.Conv2d(channels, num_classes, 1)
            self.d_cls_seg = nn.Conv2d(bc, 1, 1)
        self.returns_aux = p_channels is not None
        init_kaiming_(self)  # mmseg's PIDHead.init_weights: every conv, classifiers too

    def forward(self, features: Sequence[Tensor]) -> dict[str, Tensor]:
        p, d, i = self.in_index
        outputs = {"out": self.conv_seg(self.dropout(self.i_head(features[i])))}
        if self.training and self.p_head is not None:
            assert self.p_cls_seg is not None and self.d_head is not None
            assert self.d_cls_seg is not None
            outputs["aux"] = self.p_cls_seg(self.p_head(features[p]))
            outputs["boundary"] = self.d_cls_seg(self.d_head(features[d]))
        return outputs


@register_head(
    "pidnet",
    output_stride=32,
    # PIDNet-S at half width: the export tests calibrate BatchNorm at 64 x 64, where the
    # stride-64 I branch is 1 x 1 (two values per channel); the full-width S model's logits
    # then reach ~450 and fp32 rounding alone nears the export tolerance.
    tiny={
        "backbone": "pidnet_s",
        "aux": False,
        "backbone_kwargs": {"channels": 16, "ppm_channels": 32},
        "head_kwargs": {"channels": 16},
    },
)
def _pidnet(
    feature_info: Sequence[FeatureInfo],
    num_classes: int,
    *,
    output_stride: int,
    align_corners: bool,
    **head_kwargs: object,
) -> nn.Module:
    """PIDNet (mmseg ``pidnet-s`` / ``-m`` / ``-l``) on a PIDNet backbone.

    ``in_index`` (default ``(0, 1, 2)``): the P, D and fused levels; ``train_branches``
    (default True) keeps the training-only P and D heads. The head resizes nothing
    (``align_corners`` is the model's final resize; mmseg's PIDNet configs: True).
    """
    del output_stride, align_corners
    raw = head_kwargs.pop("in_index", (0, 1, 2))
    in_index = check_in_index(feature_info, raw, head="pidnet")  # type: ignore[arg-type]
    if isinstance(in_index, int) or len(in_index) != 3:
        raise ValueError(
            f"pidnet: in_index must be three levels (P, D, fused), got {raw!r}; the PIDNet "
            "backbones' default is (0, 1, 2)"
        )
    train = head_kwargs.pop("train_branches", True)
    p, d, i = in_index
    return PIDHead(
        feature_info[i][0],
        feature_info[p][0] if train else None,
        feature_info[d][0] if train else None,
        num_classes,
        in_index=in_index,  # type: ignore[arg-type]
        **head_kwargs,  # type: ignore[arg-type]
    )
