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

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import LossConfig

__all__ = [
    "CrossEntropyLoss",
    "DiceLoss",
    "FocalLoss",
    "LovaszLoss",
    "OhemCrossEntropyLoss",
    "SegmentationLoss",
    "TverskyLoss",
    "build_loss",
    "create_loss",
    "cross_entropy",
    "list_losses",
    "ohem_cross_entropy",
    "register_loss",
]


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


# ----------------------------------------------------------------------------- the loss zoo

LossFactory = Callable[..., nn.Module]
_LOSSES: dict[str, LossFactory] = {}


def register_loss(name: str) -> Callable[[LossFactory], LossFactory]:
    """Register a loss class (or factory) under ``name``; a duplicate name is an error."""

    def decorator(cls: LossFactory) -> LossFactory:
        if name in _LOSSES:
            raise ValueError(f"loss {name!r} is already registered ({_LOSSES[name]!r})")
        _LOSSES[name] = cls
        return cls

    return decorator


def list_losses() -> list[str]:
    """Sorted names accepted by :func:`create_loss`."""
    return sorted(_LOSSES)


def create_loss(name: str, **options: Any) -> nn.Module:
    """``loss = create_loss("dice", smooth=1.0)``; ``loss(logits, target)`` -> scalar.

    ``logits``: N x K x H x W; ``target``: N x H x W integer labels (``ignore_index``
    excluded). Unknown names list the valid ones; unknown options list the loss's own.
    """
    try:
        factory = _LOSSES[name]
    except KeyError:
        raise KeyError(f"unknown loss {name!r}; valid names are {list_losses()}") from None
    params = inspect.signature(factory).parameters
    bad = sorted(set(options) - set(params))
    if bad:
        valid = [p for p in params if p != "self"]
        raise TypeError(f"loss {name!r} has no option(s) {bad}; its options are {valid}")
    return factory(**options)


@register_loss("ce")
class CrossEntropyLoss(nn.Module):
    """Pixel-wise cross-entropy: mean over non-ignored pixels (weighted by ``class_weights``).

    ``label_smoothing`` as :func:`torch.nn.functional.cross_entropy`'s.
    """

    def __init__(
        self,
        *,
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weight, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if not (target != self.ignore_index).any():
            return logits.sum() * 0.0  # keeps the graph; F.cross_entropy would give NaN
        weight = None if self.class_weights is None else self.class_weights.to(logits.device)
        return F.cross_entropy(
            logits.float(),
            target,
            weight=weight,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
        )


@register_loss("ohem")
class OhemCrossEntropyLoss(nn.Module):
    """:func:`ohem_cross_entropy` as a module (``thresh`` 0.7, ``min_kept`` 100000)."""

    def __init__(
        self,
        *,
        thresh: float = 0.7,
        min_kept: int = 100000,
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.thresh, self.min_kept, self.ignore_index = thresh, min_kept, ignore_index
        weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weight, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        weight = None if self.class_weights is None else self.class_weights.to(logits.device)
        return ohem_cross_entropy(
            logits,
            target,
            thresh=self.thresh,
            min_kept=self.min_kept,
            ignore_index=self.ignore_index,
            weight=weight,
        )


def _probs_and_onehot(
    logits: Tensor, target: Tensor, ignore_index: int | None
) -> tuple[Tensor, Tensor]:
    """Softmax probabilities and one-hot labels, N x K x P, both zero at ignored pixels."""
    n, k = logits.shape[:2]
    probs = logits.log_softmax(dim=1).exp().reshape(n, k, -1)
    labels = target.reshape(n, -1)
    if ignore_index is None:
        return probs, F.one_hot(labels.long(), k).permute(0, 2, 1).to(probs.dtype)
    valid = (labels != ignore_index).unsqueeze(1)
    onehot = F.one_hot(labels.masked_fill(~valid[:, 0], 0).long(), k).permute(0, 2, 1)
    return probs * valid, (onehot * valid).to(probs.dtype)


@register_loss("tversky")
class TverskyLoss(nn.Module):
    """Tversky loss (Salehi et al., 2017), multiclass, as smp's ``TverskyLoss(mode="multiclass")``.

    Per class over the batch: ``TI = (TP + smooth) / (TP + alpha FP + beta FN + smooth)``
    with soft counts from the softmax; loss ``1 - TI`` (``-log TI`` with ``log_loss``),
    zero for classes absent from the labels, averaged over ``classes`` (default all),
    raised to ``gamma`` (focal Tversky). Ignored pixels count nowhere.
    """

    def __init__(
        self,
        *,
        alpha: float = 0.5,
        beta: float = 0.5,
        gamma: float = 1.0,
        classes: Sequence[int] | None = None,
        log_loss: bool = False,
        smooth: float = 0.0,
        eps: float = 1e-7,
        ignore_index: int | None = 255,
    ) -> None:
        super().__init__()
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.classes = None if classes is None else [int(c) for c in classes]
        self.log_loss, self.smooth, self.eps = log_loss, smooth, eps
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        probs, onehot = _probs_and_onehot(logits, target, self.ignore_index)
        tp = (probs * onehot).sum(dim=(0, 2))
        fp = probs.sum(dim=(0, 2)) - tp
        fn = onehot.sum(dim=(0, 2)) - tp
        denom = (tp + self.alpha * fp + self.beta * fn + self.smooth).clamp_min(self.eps)
        score = (tp + self.smooth) / denom
        loss = -torch.log(score.clamp_min(self.eps)) if self.log_loss else 1.0 - score
        loss = loss * (onehot.sum(dim=(0, 2)) > 0).to(loss.dtype)
        if self.classes is not None:
            loss = loss[self.classes]
        return loss.mean() ** self.gamma


@register_loss("dice")
class DiceLoss(TverskyLoss):
    """Soft Dice loss, multiclass, as smp's ``DiceLoss(mode="multiclass")`` (Tversky with
    ``alpha = beta = 0.5``, ``gamma = 1``)."""

    def __init__(
        self,
        *,
        classes: Sequence[int] | None = None,
        log_loss: bool = False,
        smooth: float = 0.0,
        eps: float = 1e-7,
        ignore_index: int | None = 255,
    ) -> None:
        super().__init__(
            alpha=0.5,
            beta=0.5,
            gamma=1.0,
            classes=classes,
            log_loss=log_loss,
            smooth=smooth,
            eps=eps,
            ignore_index=ignore_index,
        )


@register_loss("focal")
class FocalLoss(nn.Module):
    """Focal loss (Lin et al., ICCV 2017), multiclass as smp's ``FocalLoss(mode="multiclass")``:
    per class, the binary focal loss of that class's logit against ``target == class``
    over the non-ignored pixels (mean), averaged over the classes.

    ``alpha`` weights positives (``alpha``) against negatives (``1 - alpha``); ``None``
    disables it. ``normalized`` divides by the sum of the focal terms (Hoang et al.),
    ``reduced_threshold`` switches to the reduced focal loss (Sergievskiy et al.).
    """

    def __init__(
        self,
        *,
        alpha: float | None = None,
        gamma: float = 2.0,
        ignore_index: int | None = 255,
        normalized: bool = False,
        reduced_threshold: float | None = None,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.alpha, self.gamma, self.ignore_index = alpha, gamma, ignore_index
        self.normalized, self.reduced_threshold, self.eps = normalized, reduced_threshold, eps

    def _binary(self, logit: Tensor, positive: Tensor) -> Tensor:
        logpt = F.binary_cross_entropy_with_logits(logit, positive, reduction="none")
        pt = torch.exp(-logpt)
        if self.reduced_threshold is None:
            focal = (1.0 - pt).pow(self.gamma)
        else:
            focal = ((1.0 - pt) / self.reduced_threshold).pow(self.gamma)
            focal = torch.where(pt < self.reduced_threshold, torch.ones_like(focal), focal)
        loss = focal * logpt
        if self.alpha is not None:
            loss = loss * (self.alpha * positive + (1 - self.alpha) * (1 - positive))
        if self.normalized:
            loss = loss / focal.sum().clamp_min(self.eps)
        return loss.mean()

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        keep = None if self.ignore_index is None else target != self.ignore_index
        losses = []
        for c in range(logits.shape[1]):
            logit, positive = logits[:, c], (target == c).to(logits.dtype)
            if keep is not None:
                logit, positive = logit[keep], positive[keep]
            losses.append(self._binary(logit, positive))
        return torch.stack(losses).mean()


def _lovasz_grad(fg_sorted: Tensor) -> Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss at the sorted errors (Alg. 1)."""
    total = fg_sorted.sum()
    intersection = total - fg_sorted.cumsum(0)
    union = total + (1.0 - fg_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if fg_sorted.numel() > 1:
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return jaccard


def _lovasz_softmax_flat(probs: Tensor, labels: Tensor) -> Tensor:
    """Lovasz-Softmax over P x K probabilities, averaged over the classes present."""
    if probs.numel() == 0:
        return probs.sum() * 0.0
    losses = []
    for c in range(probs.shape[1]):
        fg = (labels == c).to(probs.dtype)
        if fg.sum() == 0:
            continue
        errors = (fg - probs[:, c]).abs()
        errors_sorted, order = torch.sort(errors, 0, descending=True)
        losses.append(torch.dot(errors_sorted, _lovasz_grad(fg[order])))
    return torch.stack(losses).mean() if losses else probs.sum() * 0.0


@register_loss("lovasz")
class LovaszLoss(nn.Module):
    """Lovasz-Softmax (Berman et al., CVPR 2018), multiclass, as smp's
    ``LovaszLoss(mode="multiclass")``: the convex surrogate of the Jaccard loss over the
    classes present in the labels, on the batch's pixels (``per_image``: per image, then
    averaged)."""

    def __init__(self, *, per_image: bool = False, ignore_index: int | None = 255) -> None:
        super().__init__()
        self.per_image, self.ignore_index = per_image, ignore_index

    def _flat(self, logits: Tensor, target: Tensor) -> Tensor:
        k = logits.shape[1]
        probs = logits.softmax(dim=1).movedim(1, -1).reshape(-1, k)
        labels = target.reshape(-1)
        if self.ignore_index is not None:
            keep = labels != self.ignore_index
            probs, labels = probs[keep], labels[keep]
        return _lovasz_softmax_flat(probs, labels)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.per_image:
            return torch.stack(
                [self._flat(lg[None], t[None]) for lg, t in zip(logits, target, strict=True)]
            ).mean()
        return self._flat(logits, target)


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
