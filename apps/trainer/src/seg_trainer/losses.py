"""Segmentation losses. Heads only produce logits; ignore handling and pixel sampling live here.

* The loss zoo (:func:`create_loss`, :func:`register_loss`, :func:`list_losses`): ``ce``,
  ``sigmoid_ce``, ``ohem``, ``ohem_pidnet``, ``dice``, ``tversky``, ``focal``, ``lovasz`` here; the
  boundary losses of the real-time models (``boundary_bce``, ``boundary_aware_ce``,
  ``detail``) in :mod:`seg_trainer.boundary_losses`; Mask2Former's set criterion in
  :mod:`seg_trainer.mask_classification`. A loss is an ``nn.Module`` called as
  ``loss(logits, target)`` (N x K x H x W logits, N x H x W integer labels); one whose class
  sets ``takes_outputs = True`` is called as ``loss(outputs, target)`` with the model's
  whole output dict. It returns a scalar or a dict of named (weighted) scalar parts. A loss
  of a map that is not K-class logits (a boundary or detail map) says which channel counts
  it takes in a class attribute ``channels`` (e.g. ``(1,)``).
* :func:`cross_entropy`: pixel-wise CE with ``ignore_index`` and optional class weights
  (weighted mean over the non-ignored pixels, as ``torch.nn.functional.cross_entropy``).
* :func:`ohem_cross_entropy`: online hard example mining as in torchcv / PKUSeg's
  ``OhemCrossEntropyLoss`` and mmseg's ``OHEMPixelSampler`` (with ``min_kept_per_image`` and
  ``average="all"``): over all valid pixels of the batch, keep those whose predicted
  probability of the true class is at most ``thresh`` (0.7), raising the threshold so that
  at least ``min_kept`` pixels are kept.
* :class:`SigmoidCrossEntropyLoss` (``sigmoid_ce``): mmseg's multi-class sigmoid BCE.
* :class:`SegmentationLoss`: weighted terms per model output (``out``, ``aux*``,
  ``boundary``, ...), built from the config's ``loss`` section by :func:`build_loss`;
  by default CE on ``out`` + 0.4 x CE on every ``aux*`` output (aux weight 0.4 as mmseg,
  PKUSeg, torchcv, CSAIL and the PSPNet paper), logits resized to the label size.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seg_backbones.registry import Registry

from .config import ConfigError, LossConfig

__all__ = [
    "CrossEntropyLoss",
    "DiceLoss",
    "FocalLoss",
    "LovaszLoss",
    "OhemCrossEntropyLoss",
    "PidnetOhemCrossEntropyLoss",
    "SegmentationLoss",
    "SigmoidCrossEntropyLoss",
    "TverskyLoss",
    "build_loss",
    "create_loss",
    "cross_entropy",
    "list_losses",
    "loss_class",
    "loss_options",
    "ohem_cross_entropy",
    "register_loss",
]


_OHEM_AVERAGES = ("weighted", "all")
_FLOAT32_EPS = torch.finfo(torch.float32).eps  # mmseg's weight_reduce_loss adds it to avg_factor


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
    average: str = "weighted",
    min_kept_per_image: bool = False,
) -> Tensor:
    """CE over the hard pixels: true-class probability <= max(thresh, p_(min_kept)).

    ``p_(min_kept)`` is the ``min_kept``-th smallest true-class probability among the
    valid pixels, so at least ``min(min_kept, #valid)`` pixels are kept (ties may keep
    more). The selection is done without gradient, over the whole batch;
    ``min_kept_per_image`` multiplies ``min_kept`` by the batch size (mmseg's
    ``OHEMPixelSampler``: ``batch_kept = min_kept * N``).

    ``average`` says what the kept pixels' summed (class-weighted) CE is divided by:
    ``"weighted"`` (default, PyTorch's): the sum of the kept pixels' class weights (their
    count without weights); ``"all"``: ``N x H x W``, every pixel of the batch, ignored and
    unkept ones included, plus float32 eps (mmseg's ``OHEMPixelSampler`` feeding a 0/1
    pixel weight to its default ``CrossEntropyLoss``, whose ``avg_factor`` is
    ``label.numel()``; with ``class_weight`` mmseg divides by the summed class weights of
    all labels instead, and fails on ignored labels).
    """
    if average not in _OHEM_AVERAGES:
        raise ValueError(f"average must be one of {list(_OHEM_AVERAGES)}, got {average!r}")
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
        wanted = min_kept * target.shape[0] if min_kept_per_image else min_kept
        if wanted > 0:
            k = min(num_valid, wanted)
            kth = true_prob[valid].kthvalue(k).values
            threshold = torch.maximum(threshold, kth)
        kept = valid & (true_prob <= threshold)
    hard_target = target.masked_fill(~kept, ignore_index)
    if average == "weighted":
        return F.cross_entropy(logits, hard_target, weight=weight, ignore_index=ignore_index)
    pixel = F.cross_entropy(
        logits, hard_target, weight=weight, ignore_index=ignore_index, reduction="none"
    )
    return pixel.sum() / (target.numel() + _FLOAT32_EPS)


# ----------------------------------------------------------------------------- the loss zoo

LossFactory = Callable[..., nn.Module]
LOSSES: Registry[LossFactory] = Registry("loss")


def register_loss(name: str) -> Callable[[LossFactory], LossFactory]:
    """Register a loss class (or factory) under ``name``; a duplicate name is an error."""
    return LOSSES.register(name)


def list_losses() -> list[str]:
    """Sorted names accepted by :func:`create_loss`."""
    return LOSSES.names()


def create_loss(name: str, **options: Any) -> nn.Module:
    """``loss = create_loss("dice", smooth=1.0)``; ``loss(logits, target)`` -> scalar.

    ``logits``: N x K x H x W; ``target``: N x H x W integer labels (``ignore_index``
    excluded). Unknown names list the valid ones; unknown options list the loss's own.
    """
    factory = LOSSES.get(name)
    params = inspect.signature(factory).parameters
    bad = sorted(set(options) - set(params))
    if bad:
        valid = [p for p in params if p != "self"]
        raise TypeError(f"loss {name!r} has no option(s) {bad}; its options are {valid}")
    return factory(**options)


_CE_AVERAGES = ("weighted", "valid", "all")


@register_loss("ce")
class CrossEntropyLoss(nn.Module):
    """Pixel-wise cross-entropy: mean over non-ignored pixels (weighted by ``class_weights``).

    ``label_smoothing`` as :func:`torch.nn.functional.cross_entropy`'s. ``average`` says
    what the summed (class-weighted) pixel losses are divided by: ``"weighted"`` (default,
    PyTorch's): the sum of the valid pixels' class weights; ``"valid"``: the number of valid
    pixels (mmseg's ``CrossEntropyLoss(avg_non_ignore=True)``); ``"all"``: the number of all
    pixels, ignored ones included (mmseg's default ``CrossEntropyLoss``, e.g. PIDNet's
    P-branch loss). Without class weights and ignored pixels the three agree.
    """

    def __init__(
        self,
        *,
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        average: str = "weighted",
    ) -> None:
        super().__init__()
        if average not in _CE_AVERAGES:
            raise ValueError(f"average must be one of {list(_CE_AVERAGES)}, got {average!r}")
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.average = average
        weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weight, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if not (target != self.ignore_index).any():
            return logits.sum() * 0.0  # keeps the graph; F.cross_entropy would give NaN
        weight = None if self.class_weights is None else self.class_weights.to(logits.device)
        if self.average == "weighted":
            return F.cross_entropy(
                logits.float(),
                target,
                weight=weight,
                ignore_index=self.ignore_index,
                label_smoothing=self.label_smoothing,
            )
        pixel = F.cross_entropy(
            logits.float(),
            target,
            weight=weight,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            reduction="none",
        )
        if self.average == "all":
            return pixel.mean()
        return pixel.sum() / (target != self.ignore_index).sum()


@register_loss("ohem")
class OhemCrossEntropyLoss(nn.Module):
    """:func:`ohem_cross_entropy` as a module (``thresh`` 0.7, ``min_kept`` 100000).

    ``average``: ``"weighted"`` (default) or ``"all"``; ``min_kept_per_image``: ``min_kept``
    counts per image of the batch. ``average: all`` with ``min_kept_per_image: true`` is
    mmseg's ``OHEMPixelSampler(thresh, min_kept)`` + default ``CrossEntropyLoss`` (e.g. the
    STDC recipes); mmseg keeps the pixels strictly below the sorted probability at 0-based
    index ``min(batch_kept, n - 1)``, which is the same set except for ties and when
    ``batch_kept >= n`` (mmseg then leaves out the most confident valid pixel if its
    probability is above ``thresh``).
    """

    def __init__(
        self,
        *,
        thresh: float = 0.7,
        min_kept: int = 100000,
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
        average: str = "weighted",
        min_kept_per_image: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 < thresh <= 1.0:
            raise ValueError(f"thresh must be in (0, 1], got {thresh}")
        if min_kept < 0:
            raise ValueError(f"min_kept must be >= 0, got {min_kept}")
        if average not in _OHEM_AVERAGES:
            raise ValueError(f"average must be one of {list(_OHEM_AVERAGES)}, got {average!r}")
        self.thresh, self.min_kept, self.ignore_index = thresh, min_kept, ignore_index
        self.average, self.min_kept_per_image = average, bool(min_kept_per_image)
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
            average=self.average,
            min_kept_per_image=self.min_kept_per_image,
        )


_SIGMOID_CE_AVERAGES = ("valid", "all")


@register_loss("sigmoid_ce")
class SigmoidCrossEntropyLoss(nn.Module):
    """Multi-class sigmoid BCE, as mmseg 1.2.2's ``CrossEntropyLoss(use_sigmoid=True)``.

    Each of the K logits is a binary classifier of its class against the one-hot label;
    ``BCEWithLogits`` per pixel and class, zero at pixels labelled ``ignore_index`` (or
    negative). With K = 1 the label itself (0/1) is the target (mmseg's binary case).
    ``class_weights`` (K values) are BCE's ``pos_weight``: they scale the positive term of
    each class, as mmseg passes ``class_weight`` (mmseg broadcasts it over the last axis,
    which is the class axis only for N x K scores; here it is always the class axis).
    ``average`` says what the summed losses are divided by: ``"valid"`` (default): K x the
    number of valid pixels, plus float32 eps (mmseg's ``avg_non_ignore=True``); ``"all"``:
    ``N x K x H x W``, ignored pixels included (mmseg's default, e.g. Fast-SCNN's recipe).
    """

    def __init__(
        self,
        *,
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
        average: str = "valid",
    ) -> None:
        super().__init__()
        if average not in _SIGMOID_CE_AVERAGES:
            raise ValueError(
                f"average must be one of {list(_SIGMOID_CE_AVERAGES)}, got {average!r}"
            )
        self.ignore_index, self.average = ignore_index, average
        weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weight, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logits = logits.float()
        k = logits.shape[1]
        valid = (target >= 0) & (target != self.ignore_index)
        safe = target.masked_fill(~valid, 0).long()
        if k == 1:
            positive = (safe == 1).unsqueeze(1)
        else:
            positive = F.one_hot(safe, k).movedim(-1, 1).bool()
        mask = valid.unsqueeze(1).to(logits.dtype)
        pos_weight = None
        if self.class_weights is not None:
            if self.class_weights.numel() != k:
                raise ValueError(
                    f"class_weights has {self.class_weights.numel()} values but the logits "
                    f"have {k} channels"
                )
            pos_weight = self.class_weights.to(logits.device).reshape(k, 1, 1)
        pixel = F.binary_cross_entropy_with_logits(
            logits, positive.to(logits.dtype), pos_weight=pos_weight, reduction="none"
        )
        total = (pixel * mask).sum()
        if self.average == "all":
            return total / pixel.numel()
        return total / (mask.sum() * k + _FLOAT32_EPS)


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


@register_loss("ohem_pidnet")
class PidnetOhemCrossEntropyLoss(nn.Module):
    """OHEM as mmseg's ``OhemCrossEntropy`` (from PIDNet's criterion; mmseg's PIDNet and
    DDRNet recipes use it), which differs from :class:`OhemCrossEntropyLoss` in two ways:

    * the kept pixels are those whose true-class probability is strictly below
      ``max(thresh, p_sorted[min(min_kept, n - 1)])`` (0-based index into the sorted
      probabilities of the ``n`` valid pixels);
    * the loss is the plain mean of the kept pixels' class-weighted CE (``class_weights``
      scale each pixel's loss; the mean divides by the pixel count, not by the weights).

    ``min_kept`` below 1 counts as 1, as mmseg's. No valid (or no kept) pixel gives 0 with
    the graph kept (mmseg: a constant 0, or NaN when nothing is kept).
    """

    def __init__(
        self,
        *,
        thresh: float = 0.7,
        min_kept: int = 100000,
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 < thresh <= 1.0:
            raise ValueError(f"thresh must be in (0, 1], got {thresh}")
        self.thresh, self.min_kept, self.ignore_index = thresh, max(1, int(min_kept)), ignore_index
        weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weight, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logits = logits.float()
        valid = target != self.ignore_index
        num_valid = int(valid.sum())
        if num_valid == 0:
            return logits.sum() * 0.0
        weight = None if self.class_weights is None else self.class_weights.to(logits.device)
        pixel = F.cross_entropy(
            logits, target, weight=weight, ignore_index=self.ignore_index, reduction="none"
        )
        with torch.no_grad():
            prob = logits.softmax(dim=1)
            true_prob = prob.gather(1, target.masked_fill(~valid, 0).unsqueeze(1)).squeeze(1)
            k = min(self.min_kept, num_valid - 1) + 1  # 1-based rank of mmseg's sorted[min(..)]
            kth = true_prob[valid].kthvalue(k).values
            threshold = torch.clamp(kth, min=self.thresh)
            kept = valid & (true_prob < threshold)
        if not kept.any():
            return logits.sum() * 0.0
        return pixel[kept].mean()


def loss_class(name: str) -> LossFactory:
    """The class (or factory) registered as ``name``."""
    return LOSSES.get(name)


def loss_options(name: str) -> list[str]:
    """The options :func:`create_loss` accepts for ``name``."""
    return [p for p in inspect.signature(loss_class(name)).parameters if p != "self"]


# --------------------------------------------------------------------- the loss of a model

ErrorFactory = Callable[[str, str], Exception]
# create_loss options the trainer fills in from the run when a term does not set them
_CONTEXT_OPTIONS = ("ignore_index", "num_classes", "align_corners")
# option names of the single-loss config form, for error messages naming the file's key
_LEGACY_NAMES = {
    "class_weights": "class_weights",
    "thresh": "ohem_thresh",
    "min_kept": "ohem_min_kept",
}


def _config_error(key: str, message: str) -> Exception:
    return ConfigError(f"key '{key}': {message}")


class _Term(nn.Module):
    """One weighted term: the loss module, its weight and the name its parts are logged as."""

    def __init__(self, name: str, weight: float, loss: nn.Module) -> None:
        super().__init__()
        self.name, self.weight, self.loss = name, float(weight), loss
        self.takes_outputs = bool(getattr(loss, "takes_outputs", False))


class SegmentationLoss(nn.Module):
    """The training loss of a model's output dict: weighted terms per output key.

    Args:
        terms: output key -> list of term specs ``{"name", "weight", **options}`` or bare
            names (:func:`create_loss` names and options; ``weight`` 1.0). ``"aux"``
            is the default of every ``aux*`` output without its own entry; without an
            ``"aux"`` entry either, an ``aux*`` output gets the ``out`` terms (except those
            that take the whole outputs) x ``aux_weight``. Default: ``{"out": [ce]}``.
        aux_weight: that scale (0.4, as mmseg, PKUSeg, torchcv, CSAIL and the PSPNet
            paper); 0 leaves such outputs out.
        ignore_index, num_classes, align_corners: passed to every loss that takes them
            and whose term does not set them (``ignore_index``: the dataset's).
        key_prefix, legacy: how errors name a term's key (``loss.out.0.smooth``; with
            ``legacy``, the single-loss config form's ``loss.ohem_thresh`` etc.).
        error: builds the exception for a bad term, ``error(key, message)``.

    ``forward(outputs, target)`` returns ``(total, parts)``: ``total`` is the sum of
    weight x term over the outputs present (an ``aux*`` output that is None is skipped);
    ``parts`` (detached) holds each term's value before its weight, as ``loss_<key>`` when
    the key has one term and ``loss_<key>_<name>`` otherwise (``_2``, ``_3`` for repeated
    names); a term returning a dict of
    named (already weighted) parts logs them as ``loss_<key>_<part>`` (a ``loss_`` prefix of
    the part's name dropped) and adds their sum.
    Logits maps are resized to the label size (bilinear, ``align_corners``) before the
    terms that take one output; a term whose loss class has ``takes_outputs = True`` is
    called as ``loss(outputs, target)`` with the whole dict, unresized.
    """

    def __init__(
        self,
        terms: Mapping[str, Sequence[Mapping[str, Any] | str]] | None = None,
        *,
        aux_weight: float = 0.4,
        ignore_index: int = 255,
        num_classes: int | None = None,
        align_corners: bool = False,
        key_prefix: str = "loss",
        legacy: bool = False,
        error: ErrorFactory = _config_error,
    ) -> None:
        super().__init__()
        if terms is None:
            terms = {"out": [{"name": "ce", "weight": 1.0}]}
        if "out" not in terms:
            raise error(f"{key_prefix}.out", f"missing: the terms of 'out' (given {list(terms)})")
        context = {
            "ignore_index": ignore_index,
            "num_classes": num_classes,
            "align_corners": align_corners,
        }
        self.aux_weight = float(aux_weight)
        self.ignore_index = ignore_index
        self.align_corners = align_corners
        self.heads = nn.ModuleDict()
        for out_key, specs in terms.items():
            built = [
                self._build_term(spec, f"{key_prefix}.{out_key}.{i}", context, legacy, error)
                for i, spec in enumerate(specs)
            ]
            self.heads[out_key] = nn.ModuleList(built)
        self._derived_aux = nn.ModuleList(
            _Term(t.name, t.weight * self.aux_weight, t.loss)
            for t in self.heads["out"]
            if not t.takes_outputs
        )

    @staticmethod
    def _build_term(
        spec: Mapping[str, Any] | str,
        key: str,
        context: Mapping[str, Any],
        legacy: bool,
        error: ErrorFactory,
    ) -> _Term:
        def where(option: str) -> str:
            if legacy and key.endswith(".out.0"):
                base = key[: -len(".out.0")]
                return f"{base}.{_LEGACY_NAMES.get(option, option)}"
            return f"{key}.{option}"

        if isinstance(spec, str):
            spec = {"name": spec}
        name = spec.get("name")
        if name not in LOSSES:
            close = difflib.get_close_matches(str(name), list_losses(), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise error(where("name"), f"unknown loss {name!r}; {hint}valid: {list_losses()}")
        weight = float(spec.get("weight", 1.0))
        options = {k: v for k, v in spec.items() if k not in ("name", "weight")}
        valid = loss_options(name)
        for option in options:
            if option not in valid:
                close = difflib.get_close_matches(option, valid, n=1, cutoff=0.6)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise error(
                    where(option),
                    f"loss {name!r} has no option {option!r}; {hint}its options are "
                    f"{', '.join(valid) or '(none)'} (and every term's weight)",
                )
        given = options.get("ignore_index", context["ignore_index"])
        if given != context["ignore_index"]:
            raise error(
                where("ignore_index"),
                f"{given!r} differs from the dataset's ignore index {context['ignore_index']} "
                "(the one every loss term uses); remove it",
            )
        weights = options.get("class_weights")
        k = context["num_classes"]
        if weights is not None:
            if not isinstance(weights, (list, tuple)) or not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights
            ):
                raise error(where("class_weights"), f"expected a list of numbers, got {weights!r}")
            if k is not None and len(weights) != k:
                raise error(
                    where("class_weights"),
                    f"has {len(weights)} values but model.num_classes is {k}",
                )
            if not all(math.isfinite(w) and w >= 0 for w in weights):
                raise error(where("class_weights"), f"values must be finite and >= 0: {weights}")
        for option in _CONTEXT_OPTIONS:
            if option in valid and option not in options and context[option] is not None:
                options[option] = context[option]
        try:
            loss = create_loss(name, **options)
        except (ValueError, TypeError, KeyError) as exc:
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            raise error(key, f"cannot build loss {name!r} with {options}: {msg}") from exc
        return _Term(name, weight, loss)

    def _terms_for(self, key: str) -> nn.ModuleList | None:
        if key in self.heads:
            return self.heads[key]
        if key.startswith("aux"):
            if "aux" in self.heads:
                return self.heads["aux"]
            return self._derived_aux if self.aux_weight > 0 else None
        return None

    def _resize(self, logits: Tensor, target: Tensor) -> Tensor:
        if logits.shape[-2:] == target.shape[-2:]:
            return logits
        return F.interpolate(
            logits.float(),
            size=target.shape[-2:],
            mode="bilinear",
            align_corners=self.align_corners,
        )

    def forward(
        self, outputs: Mapping[str, Tensor] | Tensor, target: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """``(total, parts)``; see the class docstring."""
        if isinstance(outputs, Tensor):
            outputs = {"out": outputs}
        keys = ["out", *sorted(k for k in outputs if k != "out" and k.startswith("aux"))]
        keys += [k for k in self.heads if k not in keys and k != "aux"]
        total: Tensor | None = None
        parts: dict[str, Tensor] = {}
        for key in keys:
            terms = self._terms_for(key)
            if not terms:
                continue
            logits = outputs.get(key)
            if logits is None and key.startswith("aux") and key in outputs:
                continue  # an auxiliary output the model did not compute
            needs_map = any(not t.takes_outputs for t in terms)
            if needs_map and logits is None:
                raise ConfigError(
                    f"key 'loss.{key}': the model returned no {key!r} output (it returned "
                    f"{sorted(outputs)}); remove the loss entry or change the model"
                )
            resized = self._resize(logits, target) if needs_map else None
            seen: dict[str, int] = {}
            for term in terms:
                value = (
                    term.loss(outputs, target) if term.takes_outputs else term.loss(resized, target)
                )
                n = seen[term.name] = seen.get(term.name, 0) + 1
                tag = term.name if n == 1 else f"{term.name}_{n}"
                if isinstance(value, Mapping):
                    value = dict(value)
                    prefix = f"loss_{key}_" if n == 1 else f"loss_{key}_{tag}_"
                    for part, v in value.items():
                        parts[prefix + part.removeprefix("loss_")] = v.detach()
                    value = torch.stack([v.reshape(()) for v in value.values()]).sum()
                else:
                    parts[f"loss_{key}" if len(terms) == 1 else f"loss_{key}_{tag}"] = (
                        value.detach()
                    )
                contribution = value if term.weight == 1.0 else term.weight * value
                total = contribution if total is None else total + contribution
        if total is None:
            raise ValueError("the loss has no term for any output of the model")
        return total, parts


def build_loss(
    cfg: LossConfig,
    *,
    align_corners: bool = False,
    num_classes: int | None = None,
    ignore_index: int | None = None,
    error: ErrorFactory = _config_error,
) -> SegmentationLoss:
    """The loss described by the config's ``loss`` section.

    ``ignore_index`` defaults to ``cfg.ignore_index`` (the dataset's). A bad term raises
    ``error(key, message)`` (:class:`~seg_trainer.config.ConfigError` by default) naming
    its key.
    """
    if ignore_index is None:
        ignore_index = cfg.ignore_index
    return SegmentationLoss(
        cfg.terms,
        aux_weight=cfg.aux_weight,
        ignore_index=ignore_index,
        num_classes=num_classes,
        align_corners=align_corners,
        legacy=cfg.legacy,
        error=error,
    )


from . import boundary_losses as _boundary_losses  # noqa: E402, F401  (registers them)
