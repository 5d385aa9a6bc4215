"""Boundary losses of the real-time models: PIDNet's boundary BCE and boundary-aware CE, STDC's
detail loss. Their targets are computed from the label map on the fly, on the batch's device.

* :func:`edge_target`: the semantic-edge map of mmseg's ``GenerateEdge`` transform (which
  PIDNet's recipe runs in the data pipeline with ``edge_width=4``): a pixel is an edge when
  its label differs from its lower, right, lower-right or lower-left neighbour (pairs with
  an ignored pixel excluded), then the map is dilated by an ``edge_width`` square (OpenCV's
  anchor: ``edge_width // 2``).
* ``boundary_bce`` (:class:`BoundaryBCELoss`): mmseg's ``BoundaryLoss`` (PIDNet,
  ``models/losses/boundary_loss.py``) on the ``boundary`` output: class-balanced binary CE,
  edge pixels weighted by the fraction of non-edge pixels and vice versa, mean over all
  pixels of the batch. mmseg's PIDNet recipe weighs it 20.
* ``boundary_aware_ce`` (:class:`BoundaryAwareCELoss`, ``takes_outputs``): PIDNet's
  ``loss_sem_bd`` (mmseg ``PIDHead.loss_by_feat``): the OHEM CE of ``out`` on the pixels where
  ``sigmoid(boundary) > 0.8``, every other pixel ignored.
* ``detail`` (:class:`DetailLoss`): STDC's detail aggregation loss (mmseg ``STDCHead``):
  Laplacian boundary targets of the label map at strides 1, 2 and 4 (upsampled nearest),
  each binarised at ``boundary_threshold`` 0.1 and fused 0.6/0.3/0.1, then binary CE + Dice
  (mmseg's ``CrossEntropyLoss(use_sigmoid=True)`` and V-Net ``DiceLoss``, eps 1e-3) on the
  ``detail`` output.

Differences from mmseg: mmseg pads the edge map of an image smaller than the batch with 255
in its data preprocessor, which ``BoundaryLoss`` then leaves out; here padding is done by the
dataset transforms before the edge map exists, so padded pixels (label 255) count as
non-edge pixels. Void pixels inside the image are non-edge pixels in both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .losses import CrossEntropyLoss, PidnetOhemCrossEntropyLoss, register_loss

__all__ = [
    "BoundaryAwareCELoss",
    "BoundaryBCELoss",
    "DetailLoss",
    "detail_target",
    "edge_target",
]


def edge_target(label: Tensor, *, edge_width: int = 4, ignore_index: int = 255) -> Tensor:
    """N x H x W integer labels -> N x H x W {0, 1} edge map (float), as mmseg's ``GenerateEdge``."""
    if label.dim() != 3:
        raise ValueError(f"label must be N x H x W, got shape {tuple(label.shape)}")
    if edge_width < 1:
        raise ValueError(f"edge_width must be >= 1, got {edge_width}")
    valid = label != ignore_index
    edge = torch.zeros(label.shape, dtype=torch.bool, device=label.device)

    def differ(a: tuple[slice, slice], b: tuple[slice, slice]) -> Tensor:
        (ra, ca), (rb, cb) = a, b
        return (label[:, ra, ca] != label[:, rb, cb]) & valid[:, ra, ca] & valid[:, rb, cb]

    head, tail, whole = slice(None, -1), slice(1, None), slice(None)
    edge[:, tail, :] |= differ((tail, whole), (head, whole))  # pixel vs the one above
    edge[:, :, head] |= differ((whole, head), (whole, tail))  # pixel vs the one to its right
    edge[:, head, head] |= differ((head, head), (tail, tail))  # vs lower-right
    edge[:, head, tail] |= differ((head, tail), (tail, head))  # vs lower-left
    edge = edge.float().unsqueeze(1)
    if edge_width > 1:
        before = edge_width // 2  # OpenCV's default anchor of an even or odd square kernel
        pad = (before, edge_width - 1 - before) * 2
        edge = F.max_pool2d(F.pad(edge, pad), kernel_size=edge_width, stride=1)
    return edge.squeeze(1)


@register_loss("boundary_bce")
class BoundaryBCELoss(nn.Module):
    """Class-balanced binary CE of the boundary logits (N x 1 x H x W) against
    :func:`edge_target` of the labels (mmseg's ``BoundaryLoss``, PIDNet)."""

    channels = (1,)

    def __init__(self, *, edge_width: int = 4, ignore_index: int = 255) -> None:
        super().__init__()
        if edge_width < 1:
            raise ValueError(f"edge_width must be >= 1, got {edge_width}")
        self.edge_width, self.ignore_index = edge_width, ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if logits.dim() != 4 or logits.shape[1] != 1:
            raise ValueError(
                f"boundary_bce needs one boundary channel (N x 1 x H x W), got {tuple(logits.shape)}"
            )
        edge = edge_target(target, edge_width=self.edge_width, ignore_index=self.ignore_index)
        logit = logits[:, 0].float()
        pos = edge == 1
        num_pos = pos.sum().float()
        num = float(edge.numel())
        weight = torch.where(pos, (num - num_pos) / num, num_pos / num)
        return F.binary_cross_entropy_with_logits(logit, edge, weight=weight, reduction="mean")


@register_loss("boundary_aware_ce")
class BoundaryAwareCELoss(nn.Module):
    """PIDNet's boundary-aware CE: the CE of ``outputs[logits_key]`` on the pixels where
    ``sigmoid(outputs[boundary_key]) > boundary_threshold`` (0.8), the others ignored.

    Both maps are resized to the label size first (bilinear, ``align_corners``), as mmseg's
    ``PIDHead``. ``ohem`` (default, as mmseg's recipe): ``ohem_pidnet`` with ``thresh``,
    ``min_kept`` and ``class_weights``; otherwise ``ce`` with ``class_weights``.
    """

    takes_outputs = True

    def __init__(
        self,
        *,
        ohem: bool = True,
        thresh: float = 0.7,
        min_kept: int = 100000,
        class_weights: Sequence[float] | None = None,
        boundary_threshold: float = 0.8,
        logits_key: str = "out",
        boundary_key: str = "boundary",
        ignore_index: int = 255,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.base: nn.Module
        if ohem:
            self.base = PidnetOhemCrossEntropyLoss(
                thresh=thresh,
                min_kept=min_kept,
                ignore_index=ignore_index,
                class_weights=class_weights,
            )
        else:
            self.base = CrossEntropyLoss(ignore_index=ignore_index, class_weights=class_weights)
        self.boundary_threshold = boundary_threshold
        self.logits_key, self.boundary_key = logits_key, boundary_key
        self.ignore_index, self.align_corners = ignore_index, align_corners

    def _resized(self, outputs: Mapping[str, Tensor], key: str, target: Tensor) -> Tensor:
        if outputs.get(key) is None:
            raise KeyError(
                f"boundary_aware_ce needs the model output {key!r}; it returned {sorted(outputs)}"
            )
        x = outputs[key]
        if x.shape[-2:] != target.shape[-2:]:
            x = F.interpolate(
                x.float(), size=target.shape[-2:], mode="bilinear", align_corners=self.align_corners
            )
        return x

    def forward(self, outputs: Mapping[str, Tensor], target: Tensor) -> Tensor:
        logits = self._resized(outputs, self.logits_key, target)
        boundary = self._resized(outputs, self.boundary_key, target)
        with torch.no_grad():
            on_edge = torch.sigmoid(boundary[:, 0].float()) > self.boundary_threshold
        return self.base(logits, target.masked_fill(~on_edge, self.ignore_index))


_LAPLACIAN = (-1.0, -1.0, -1.0, -1.0, 8.0, -1.0, -1.0, -1.0, -1.0)
_FUSION = (6.0 / 10, 3.0 / 10, 1.0 / 10)  # strides 1, 2, 4 (a constant in STDC's code)


def detail_target(label: Tensor, *, boundary_threshold: float = 0.1) -> Tensor:
    """N x H x W labels -> N x H x W {0, 1} detail (boundary) map, as mmseg's ``STDCHead``.

    The Laplacian runs on the raw label values (void 255 included, as STDC's code does).
    """
    x = label.unsqueeze(1).float()
    kernel = torch.tensor(_LAPLACIAN, dtype=x.dtype, device=x.device).reshape(1, 1, 3, 3)
    size = x.shape[-2:]
    maps = []
    for stride in (1, 2, 4):
        lap = F.conv2d(x, kernel, stride=stride, padding=1).clamp(min=0)
        if stride > 1:
            lap = F.interpolate(lap, size, mode="nearest")
        maps.append((lap > boundary_threshold).to(x.dtype))
    fusion = torch.tensor(_FUSION, dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
    fused = F.conv2d(torch.cat(maps, dim=1), fusion)
    return (fused > boundary_threshold).to(x.dtype).squeeze(1)


@register_loss("detail")
class DetailLoss(nn.Module):
    """STDC's detail loss on the ``detail`` logits: ``bce_weight`` x BCE + ``dice_weight`` x
    Dice against :func:`detail_target`, returned as the parts ``{"bce", "dice"}``.

    Two channels (mmseg's ``STDCHead``, ``num_classes=2``): both are sigmoid outputs against
    the one-hot target (channel 1 = boundary), BCE averaged over every element, Dice per
    image over both channels. One channel: the same against the boundary map itself (mmseg's
    Dice would compare it with the one-hot of class 0, i.e. the non-boundary map).
    """

    channels = (2, 1)

    def __init__(
        self,
        *,
        boundary_threshold: float = 0.1,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        eps: float = 1e-3,
    ) -> None:
        super().__init__()
        self.boundary_threshold = boundary_threshold
        self.bce_weight, self.dice_weight, self.eps = bce_weight, dice_weight, eps

    def forward(self, logits: Tensor, target: Tensor) -> dict[str, Tensor]:
        if logits.dim() != 4 or logits.shape[1] not in (1, 2):
            raise ValueError(
                f"detail needs N x 1 or N x 2 detail logits, got {tuple(logits.shape)}"
            )
        logits = logits.float()
        edge = detail_target(target, boundary_threshold=self.boundary_threshold)
        if logits.shape[1] == 2:
            onehot = torch.stack([1.0 - edge, edge], dim=1)
        else:
            onehot = edge.unsqueeze(1)
        bce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="mean")
        prob = logits.sigmoid().flatten(1)
        t = onehot.flatten(1)
        inter = (prob * t).sum(1)
        dice = 1.0 - 2.0 * inter / ((prob * prob).sum(1) + self.eps + (t * t).sum(1) + self.eps)
        return {"bce": self.bce_weight * bce, "dice": self.dice_weight * dice.mean()}
