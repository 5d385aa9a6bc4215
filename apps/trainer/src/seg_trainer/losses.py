"""Segmentation losses. Heads only produce logits; ignore handling and pixel sampling live here.

* :func:`cross_entropy`: pixel-wise CE with ``ignore_index`` and optional class weights
  (weighted mean over the non-ignored pixels, as ``torch.nn.functional.cross_entropy``).
* :func:`ohem_cross_entropy`: online hard example mining as in torchcv / PKUSeg's
  ``OhemCrossEntropyLoss`` and mmseg's ``OHEMPixelSampler``: over all valid pixels of
  the batch, keep those whose predicted probability of the true class is at most
  ``thresh`` (0.7), raising the threshold so that at least ``min_kept`` pixels are kept.
* :class:`SegmentationLoss`: the loss of a model output ``{"out", "aux"}``:
  ``loss(out) + aux_weight * loss(aux)`` (aux weight 0.4 as mmseg, PKUSeg, torchcv,
  CSAIL and the PSPNet paper), logits resized to the label size when they differ.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import LossConfig

__all__ = ["SegmentationLoss", "build_loss", "cross_entropy", "ohem_cross_entropy"]


def cross_entropy(
    logits: Tensor, target: Tensor, *, ignore_index: int = 255, weight: Tensor | None = None
) -> Tensor:
    """Mean CE over pixels whose label is not ``ignore_index`` (0 when there are none).

    Args:
        logits: N x K x H x W.
        target: N x H x W integer labels in ``[0, K)`` or ``ignore_index``.
        weight: optional K class weights (the mean is then weighted, as in PyTorch).
    """
    if not (target != ignore_index).any():
        return logits.sum() * 0.0  # keeps the graph; F.cross_entropy would give NaN
    return F.cross_entropy(logits.float(), target, weight=weight, ignore_index=ignore_index)


def ohem_cross_entropy(
    logits: Tensor,
    target: Tensor,
    *,
    thresh: float = 0.7,
    min_kept: int = 100000,
    ignore_index: int = 255,
    weight: Tensor | None = None,
) -> Tensor:
    """CE over the hard pixels: true-class probability <= max(thresh, p_(min_kept)).

    ``p_(min_kept)`` is the ``min_kept``-th smallest true-class probability among the
    valid pixels, so at least ``min(min_kept, #valid)`` pixels are kept (ties may keep
    more). The selection is done without gradient, over the whole batch.
    """
    logits = logits.float()
    valid = target != ignore_index
    num_valid = int(valid.sum())
    if num_valid == 0:
        return logits.sum() * 0.0
    with torch.no_grad():
        prob = logits.softmax(dim=1)
        safe_target = target.masked_fill(~valid, 0)
        true_prob = prob.gather(1, safe_target.unsqueeze(1)).squeeze(1)
        threshold = torch.tensor(thresh, dtype=true_prob.dtype, device=true_prob.device)
        if min_kept > 0:
            k = min(num_valid, min_kept)
            kth = true_prob[valid].kthvalue(k).values
            threshold = torch.maximum(threshold, kth)
        kept = valid & (true_prob <= threshold)
    hard_target = target.masked_fill(~kept, ignore_index)
    return F.cross_entropy(logits, hard_target, weight=weight, ignore_index=ignore_index)


class SegmentationLoss(nn.Module):
    """``loss(out) + aux_weight * loss(aux)`` for a model output dict.

    Args:
        name: ``"ce"`` or ``"ohem"`` (applied to both ``out`` and ``aux``, as torchcv).
        ignore_index: label value excluded from the loss (255).
        class_weights: optional per-class weights (K values).
        ohem_thresh, ohem_min_kept: OHEM parameters (0.7, 100000).
        aux_weight: weight of the auxiliary head's loss (0.4); 0 ignores ``aux``.
        align_corners: used when logits must be resized to the label size.
    """

    def __init__(
        self,
        *,
        name: str = "ce",
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
        ohem_thresh: float = 0.7,
        ohem_min_kept: int = 100000,
        aux_weight: float = 0.4,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        if name not in ("ce", "ohem"):
            raise ValueError(f"unknown loss {name!r}; valid names: 'ce', 'ohem'")
        self.name = name
        self.ignore_index = ignore_index
        self.ohem_thresh = ohem_thresh
        self.ohem_min_kept = ohem_min_kept
        self.aux_weight = aux_weight
        self.align_corners = align_corners
        weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weight, persistent=False)

    def single(self, logits: Tensor, target: Tensor) -> Tensor:
        """The loss of one logits map against the labels."""
        if logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(
                logits.float(),
                size=target.shape[-2:],
                mode="bilinear",
                align_corners=self.align_corners,
            )
        weight = self.class_weights
        if weight is not None:
            weight = weight.to(logits.device)
        if self.name == "ohem":
            return ohem_cross_entropy(
                logits,
                target,
                thresh=self.ohem_thresh,
                min_kept=self.ohem_min_kept,
                ignore_index=self.ignore_index,
                weight=weight,
            )
        return cross_entropy(logits, target, ignore_index=self.ignore_index, weight=weight)

    def forward(
        self, outputs: Mapping[str, Tensor], target: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Return ``(total, {"loss_out": ..., "loss_aux": ...})`` (parts detached).

        Every output whose key starts with ``"aux"`` (the auxiliary head's ``"aux"``,
        and the extra logits some decode heads return, e.g. OCRNet's) adds
        ``aux_weight`` x its loss, logged as ``"loss_<key>"``; other keys (e.g.
        Mask2Former's ``class_logits``) are not logits maps and are left alone.
        """
        loss_out = self.single(outputs["out"], target)
        parts = {"loss_out": loss_out.detach()}
        total = loss_out
        if self.aux_weight > 0:
            for key in sorted(k for k in outputs if k.startswith("aux")):
                if outputs[key] is None:
                    continue
                loss_aux = self.single(outputs[key], target)
                parts[f"loss_{key}"] = loss_aux.detach()
                total = total + self.aux_weight * loss_aux
        return total, parts


def build_loss(cfg: LossConfig, *, align_corners: bool = False) -> SegmentationLoss:
    """The loss described by the config's ``loss`` section."""
    return SegmentationLoss(
        name=cfg.name,
        ignore_index=cfg.ignore_index,
        class_weights=cfg.class_weights,
        ohem_thresh=cfg.ohem_thresh,
        ohem_min_kept=cfg.ohem_min_kept,
        aux_weight=cfg.aux_weight,
        align_corners=align_corners,
    )
