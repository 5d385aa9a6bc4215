"""A streaming, distributed-correct confusion matrix for semantic segmentation.

One K x K int64 matrix (rows = target class, columns = prediction) accumulated
over every evaluated pixel of the whole dataset, as mmsegmentation, torchvision's
reference scripts and the Cityscapes evaluation do. Metrics are derived from it
in :class:`~seg_metrics.result.SegmentationResult`.

Speed: one ``update`` is an ``aminmax`` range check, one fused ``pred + K * target``
and one histogram over the flattened pixels: ``torch.bincount`` where a host
read is free or asked for ("eager" checks), ``scatter_add_`` into a fixed-size
buffer on accelerators ("deferred" checks), so CUDA updates never wait on the host.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor

from .result import SegmentationResult

__all__ = ["ConfusionMatrix"]

Checks = Literal["auto", "eager", "deferred"]
_CHECKS = ("auto", "eager", "deferred")
_INT64_MAX = torch.iinfo(torch.int64).max
_MAX_FAST_BINS = 1 << 22  # histogram bins the eager fast path may allocate ((ignore+1) * K)
_SHOW = 10  # bad values named in an error message
_NAN_NOTE = (
    "; -1 marks pixels whose logits hold NaN (when logits were passed): the model "
    "diverged or overflowed, and argmax would have counted them as class 0"
)


def _fmt_values(values: Tensor) -> str:
    vals = values.tolist()
    shown = ", ".join(str(v) for v in vals[:_SHOW])
    return f"[{shown}{', ...' if len(vals) > _SHOW else ''}]"


class ConfusionMatrix:
    """Dataset-level confusion matrix with mIoU, mAcc, aAcc, fwIoU and Dice.

    Args:
        num_classes: number of classes K; valid labels are ``0 .. K-1``.
        ignore_index: target value excluded from everything (``None``: none). It
            must lie outside ``[0, K)``; 255 is the PKUSeg convention.
        device: where the counts live. ``None``: the device of the first
            ``update``'s data. Later inputs are moved there.
        per_image: also keep per-image ``(TP, target, pred)`` counts (3 x K int64
            per image) for image-wise averages (``res.image_miou`` ...).
        checks: input validation mode. ``"eager"`` raises inside ``update`` (on
            CUDA this costs one host synchronisation per update); ``"deferred"``
            counts invalid pixels on the device, leaves them out of the matrix and
            raises at the next :meth:`check`, :meth:`compute`, :meth:`all_reduce`
            or :meth:`state_dict`; ``"auto"`` (default) is eager on CPU, deferred
            elsewhere. Checks cannot be switched off; their cost is one
            ``aminmax`` per input on CPU.

    Example:
        >>> cm = ConfusionMatrix(num_classes=19, ignore_index=255)
        >>> cm.update(logits, label)   # logits N x 19 x H x W or labels N x H x W
        >>> cm.all_reduce()            # no-op unless torch.distributed is initialised
        >>> res = cm.compute(); print(res.table(class_names)); res.miou
    """

    def __init__(
        self,
        num_classes: int,
        *,
        ignore_index: int | None = 255,
        device: torch.device | str | None = None,
        per_image: bool = False,
        checks: Checks = "auto",
    ) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise ValueError(
                f"ignore_index={ignore_index} is a valid class id for num_classes={num_classes}: "
                "map void pixels to a value outside [0, num_classes) (PKUSeg uses 255) "
                "or pass ignore_index=None"
            )
        if checks not in _CHECKS:
            raise ValueError(f"checks must be one of {_CHECKS}, got {checks!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.per_image = per_image
        self.checks: Checks = checks
        self._follow_data = device is None
        self._reset_state(torch.device("cpu") if device is None else torch.device(device))

    # ------------------------------------------------------------------ state
    def _reset_state(self, device: torch.device) -> None:
        k = self.num_classes
        self.device = device
        self._mat = torch.zeros(k, k, dtype=torch.int64, device=device)
        self._images: list[Tensor] = []
        # deferred checks: [bad target px, bad pred px] and [min, max] of each kind of bad value
        self._bad = torch.zeros(2, dtype=torch.int64, device=device)
        self._bad_lo = torch.full((2,), _INT64_MAX, dtype=torch.int64, device=device)
        self._bad_hi = torch.full((2,), -_INT64_MAX, dtype=torch.int64, device=device)
        self._reduced = False
        self._updated = False
        self._buf: Tensor | None = None

    def reset(self) -> None:
        """Zero all counts (keeps the device)."""
        self._reset_state(self.device)

    @property
    def matrix(self) -> Tensor:
        """The K x K int64 counts (rows = target class, columns = prediction), on ``device``."""
        return self._mat

    def _eager(self) -> bool:
        if self.checks == "auto":
            return self.device.type == "cpu"
        return self.checks == "eager"

    # ------------------------------------------------------------------ update
    def _labels(self, pred: Tensor, target: Tensor) -> tuple[Tensor, bool]:
        """Return label predictions shaped like ``target`` and whether they need a range check."""
        if not isinstance(pred, Tensor) or not isinstance(target, Tensor):
            raise TypeError(
                f"pred and target must be torch.Tensor, got {type(pred).__name__} and "
                f"{type(target).__name__}"
            )
        if target.is_floating_point() or target.is_complex():
            raise TypeError(
                f"target must hold integer class ids, got dtype {target.dtype}: "
                "convert it with target.long()"
            )
        if target.dim() not in (2, 3):
            raise ValueError(f"target must be H x W or N x H x W, got shape {tuple(target.shape)}")
        if pred.dim() == target.dim() + 1:
            cdim = pred.dim() - 3
            if not pred.is_floating_point():
                raise TypeError(
                    f"pred of shape {tuple(pred.shape)} has one more dimension than target "
                    f"{tuple(target.shape)}, so it is read as logits, but its dtype is "
                    f"{pred.dtype}: pass float logits or integer labels shaped like target"
                )
            if pred.shape[:cdim] + pred.shape[cdim + 1 :] != target.shape:
                raise ValueError(
                    f"shape mismatch: logits {tuple(pred.shape)} vs target {tuple(target.shape)}; "
                    "logits must be N x C x H x W for an N x H x W target "
                    "(resize logits to the label size before update)"
                )
            if pred.shape[cdim] != self.num_classes:
                raise ValueError(
                    f"logits have {pred.shape[cdim]} channels (shape {tuple(pred.shape)}) "
                    f"but num_classes={self.num_classes}"
                )
            # argmax over K channels is in range, but NaN logits would read as class 0 (the
            # first NaN wins): mark those pixels -1 so the range check reports them
            labels = pred.argmax(cdim)
            return torch.where(pred.isnan().any(cdim), -1, labels), True
        if pred.dim() != target.dim() or pred.shape != target.shape:
            raise ValueError(
                f"shape mismatch: pred {tuple(pred.shape)} vs target {tuple(target.shape)}; "
                "pred must be labels shaped like target or logits with one more "
                "(class) dimension"
            )
        if pred.is_floating_point() or pred.is_complex():
            raise TypeError(
                f"pred has the shape of target but dtype {pred.dtype}: pass integer labels "
                "(e.g. logits.argmax(1)) or the N x C x H x W logits themselves"
            )
        return pred, True

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch to the counts.

        Args:
            pred: N x H x W (or H x W) integer labels, or N x C x H x W (or C x H x W)
                float logits/probabilities with C = num_classes (argmax over C).
            target: N x H x W (or H x W) integer labels; ``ignore_index`` pixels are
                skipped. Any integer dtype (uint8, int64 ...).
        """
        if self._reduced:
            raise RuntimeError(
                "update() after all_reduce(): the counts already are the sum over all ranks; "
                "call reset() before evaluating again"
            )
        labels, check_pred = self._labels(pred, target)
        if self._follow_data and not self._updated:
            self._reset_state(target.device)
        labels = labels.to(self.device)
        target = target.to(self.device)
        self._updated = True
        if labels.dtype == torch.bool:
            labels = labels.to(torch.uint8)
        if target.dtype == torch.bool:
            target = target.to(torch.uint8)
        if target.dim() == 2:
            labels, target = labels.unsqueeze(0), target.unsqueeze(0)
        if target.numel() == 0:
            return
        count = self._count_eager if self._eager() else self._count_deferred
        if not self.per_image:
            self._mat += count(labels.reshape(-1), target.reshape(-1), check_pred)
            return
        stats = []
        for p, t in zip(labels, target):
            m = count(p.reshape(-1), t.reshape(-1), check_pred)
            self._mat += m
            stats.append(torch.stack([m.diagonal(), m.sum(1), m.sum(0)]))
        if stats:
            self._images.append(torch.stack(stats))

    def _raise_target(self, t: Tensor) -> None:
        k, ig = self.num_classes, self.ignore_index
        t = t.long()  # an int8 target cannot hold 255: `t != 255` would also drop its -1s
        bad = (t < 0) | (t >= k)
        if ig is not None:
            bad &= t != ig
        values = torch.unique(t[bad])
        raise ValueError(
            f"target holds {int(bad.sum())} pixels with values {_fmt_values(values)} outside "
            f"[0, {k}) that are not ignore_index={ig}: map them to a class id or to the "
            "ignore index (check the dataset's label mapping and num_classes)"
        )

    def _raise_pred(self, p: Tensor) -> None:
        k = self.num_classes
        bad = (p < 0) | (p >= k)
        values = torch.unique(p[bad])
        raise ValueError(
            f"pred holds {int(bad.sum())} pixels with values {_fmt_values(values)} outside "
            f"[0, {k}): predictions must be class ids in [0, num_classes) "
            f"(or pass the N x C x H x W logits){_NAN_NOTE if bool((p == -1).any()) else ''}"
        )

    def _count_eager(self, p: Tensor, t: Tensor, check_pred: bool) -> Tensor:
        """K x K counts of flat ``p``/``t``; invalid values raise at once (reads scalars)."""
        k, ig = self.num_classes, self.ignore_index
        kk = k * k
        if check_pred:
            lo, hi = torch.aminmax(p)
            if lo < 0 or hi >= k:
                self._raise_pred(p)
        if torch.promote_types(p.dtype, t.dtype) != torch.int64:
            t = t.long()  # uint8 + uint8 would overflow: compute pred + K * target in int64
        if ig is not None and ig >= k and (ig + 1) * k <= _MAX_FAST_BINS:
            # Fast path: no mask. Ignored pixels land in row `ig` of an extended
            # histogram, bad target values in rows k..; both are cut off after.
            lo, hi = torch.aminmax(t)
            if lo < 0 or hi > ig:
                self._raise_target(t)
            rows_n = max(int(hi) + 1, k)  # whole rows, so the tail reshapes to (rows, k)
            hist = torch.bincount(
                torch.add(p, t, alpha=k, out=self._scratch(t)), minlength=rows_n * k
            )
            if hist.numel() > kk:
                rows = hist[kk:].view(-1, k).sum(1)
                if ig - k < rows.numel():
                    rows[ig - k] = 0
                if bool(rows.any()):
                    self._raise_target(t)
            return hist[:kk].view(k, k)
        # General path (no ignore index, a negative one or a huge one): mask explicitly.
        valid = None if ig is None else t != ig
        tv = t if valid is None else torch.where(valid, t, 0)
        lo, hi = torch.aminmax(tv)
        if lo < 0 or hi >= k:
            self._raise_target(t)
        idx = torch.add(p, tv, alpha=k)
        if valid is not None:
            idx = torch.where(valid, idx, kk)
        return torch.bincount(idx, minlength=kk + 1)[:kk].view(k, k)

    def _scratch(self, like: Tensor) -> Tensor:
        """A reused int64 buffer for ``pred + K * target``: on CPU, a fresh 32 MB
        allocation per update costs more page faults than the arithmetic itself."""
        n = like.numel()
        if self._buf is None or self._buf.numel() < n or self._buf.device != like.device:
            self._buf = torch.empty(n, dtype=torch.int64, device=like.device)
        return self._buf[:n]

    def _count_deferred(self, p: Tensor, t: Tensor, check_pred: bool) -> Tensor:
        """K x K counts of flat ``p``/``t`` without any host synchronisation.

        Invalid pixels go to a discarded bin; their number and value range are
        recorded on the device for :meth:`check`.
        """
        k, ig = self.num_classes, self.ignore_index
        kk = k * k
        t, p = t.long(), p.long()  # no-ops for int64; int64 sentinels below need int64
        ok_t = (t >= 0) & (t < k)
        bad_t = ~ok_t if ig is None else ~ok_t & (t != ig)
        good = ok_t
        lo = [torch.where(bad_t, t, _INT64_MAX).amin()]
        hi = [torch.where(bad_t, t, -_INT64_MAX).amax()]
        if check_pred:
            bad_p = (p < 0) | (p >= k)
            good = good & ~bad_p
            bad = torch.stack([bad_t.sum(), bad_p.sum()])
            lo.append(torch.where(bad_p, p, _INT64_MAX).amin())
            hi.append(torch.where(bad_p, p, -_INT64_MAX).amax())
        else:  # constants made by fill kernels, not host-to-device copies
            bad = torch.stack([bad_t.sum(), torch.zeros((), dtype=torch.int64, device=t.device)])
            lo.append(torch.full((), _INT64_MAX, dtype=torch.int64, device=t.device))
            hi.append(torch.full((), -_INT64_MAX, dtype=torch.int64, device=t.device))
        self._bad += bad
        torch.minimum(self._bad_lo, torch.stack(lo), out=self._bad_lo)
        torch.maximum(self._bad_hi, torch.stack(hi), out=self._bad_hi)
        idx = torch.where(good, torch.add(p, t, alpha=k), kk)
        hist = torch.zeros(kk + 1, dtype=torch.int64, device=p.device)
        hist.scatter_add_(0, idx, torch.ones_like(idx))
        return hist[:kk].view(k, k)

    # ------------------------------------------------------------------ checks
    def check(self) -> None:
        """Raise if deferred checks saw invalid pixels (one host synchronisation)."""
        bad = self._bad.tolist()
        if not any(bad):
            return
        lo, hi = self._bad_lo.tolist(), self._bad_hi.tolist()
        msgs = []
        if bad[0]:
            msgs.append(
                f"target held {bad[0]} pixels with values outside [0, {self.num_classes}) that "
                f"are not ignore_index={self.ignore_index} (smallest {lo[0]}, largest {hi[0]})"
            )
        if bad[1]:
            msgs.append(
                f"pred held {bad[1]} pixels with values outside [0, {self.num_classes}) "
                f"(smallest {lo[1]}, largest {hi[1]}){_NAN_NOTE if lo[1] == -1 else ''}"
            )
        raise ValueError(
            "invalid labels were passed to update() (deferred check; use checks='eager' to "
            "raise at the offending update): " + "; ".join(msgs) + ". These pixels were left "
            "out of the matrix; fix the label mapping / num_classes and reset()."
        )

    # ------------------------------------------------------------------ combine
    def _same_setup(self, other: ConfusionMatrix, what: str) -> None:
        mine = (self.num_classes, self.ignore_index, self.per_image)
        theirs = (other.num_classes, other.ignore_index, other.per_image)
        if mine != theirs:
            raise ValueError(
                f"cannot {what}: (num_classes, ignore_index, per_image) {mine} != {theirs}"
            )

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts (same num_classes / ignore_index / per_image) in place."""
        self._same_setup(other, "merge")
        other.check()
        self._mat += other._mat.to(self.device)
        self._images.extend(x.to(self.device) for x in other._images)
        self._updated = self._updated or other._updated
        return self

    def all_reduce(self, group: Any = None) -> ConfusionMatrix:
        """Sum the counts over all ranks of ``group`` (every rank gets the total).

        A no-op when ``torch.distributed`` is not initialised. Works with gloo
        (CPU tensors) and NCCL (the counts are moved to the current CUDA device
        for the collective). Per-image counts are all-gathered in rank order.
        Every rank must call it; afterwards ``update`` raises until ``reset``.
        Deferred invalid-pixel counts are reduced too, so every rank raises alike.
        """
        if self._reduced:
            raise RuntimeError(
                "all_reduce() was already called: the counts are the global sum; "
                "reducing again would count every pixel world_size times"
            )
        self._reduced = True
        if not (dist.is_available() and dist.is_initialized()):
            self.check()
            return self
        comm = self.device
        if dist.get_backend(group) == "nccl" and comm.type != "cuda":
            comm = torch.device("cuda", torch.cuda.current_device())
        flat = torch.cat([self._mat.reshape(-1), self._bad]).to(comm)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        extremes = torch.cat([self._bad_lo, -self._bad_hi]).to(comm)
        dist.all_reduce(extremes, op=dist.ReduceOp.MIN, group=group)
        kk = self.num_classes**2
        self._mat = flat[:kk].view_as(self._mat).to(self.device)
        self._bad = flat[kk:].to(self.device)
        self._bad_lo = extremes[:2].to(self.device)
        self._bad_hi = (-extremes[2:]).to(self.device)
        if self.per_image:
            self._images = [self._gather_images(comm, group)]
        self.check()
        return self

    def _gather_images(self, comm: torch.device, group: Any) -> Tensor:
        k = self.num_classes
        local = (
            torch.cat(self._images)
            if self._images
            else torch.zeros(0, 3, k, dtype=torch.int64, device=self.device)
        ).to(comm)
        world = dist.get_world_size(group)
        n = torch.tensor([local.shape[0]], dtype=torch.int64, device=comm)
        sizes = [torch.zeros_like(n) for _ in range(world)]
        dist.all_gather(sizes, n, group=group)
        counts = [int(s) for s in sizes]
        padded = torch.zeros(max(counts), 3, k, dtype=torch.int64, device=comm)
        padded[: local.shape[0]] = local
        parts = [torch.zeros_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded, group=group)
        return torch.cat([part[:c] for part, c in zip(parts, counts)]).to(self.device)

    # ------------------------------------------------------------------ results
    def compute(self) -> SegmentationResult:
        """Metrics over everything accumulated so far (one host synchronisation)."""
        self.check()
        stats = None
        if self.per_image:
            stats = (
                torch.cat(self._images)
                if self._images
                else torch.zeros(0, 3, self.num_classes, dtype=torch.int64)
            )
        return SegmentationResult.from_confusion(
            self._mat, ignore_index=self.ignore_index, image_stats=stats
        )

    def state_dict(self) -> dict[str, Any]:
        """Counts and settings as CPU tensors / plain values (``torch.save``-able)."""
        self.check()
        sd: dict[str, Any] = {
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "per_image": self.per_image,
            "reduced": self._reduced,
            "confusion": self._mat.cpu(),
        }
        if self.per_image:
            sd["image_stats"] = (
                torch.cat(self._images).cpu()
                if self._images
                else torch.zeros(0, 3, self.num_classes, dtype=torch.int64)
            )
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore counts saved by :meth:`state_dict` (settings must match)."""
        keys = {"num_classes", "ignore_index", "per_image", "confusion"}
        if self.per_image:
            keys.add("image_stats")
        missing = keys - set(state_dict)
        if missing:
            raise KeyError(f"state_dict lacks keys {sorted(missing)} (has {sorted(state_dict)})")
        saved = (state_dict["num_classes"], state_dict["ignore_index"], state_dict["per_image"])
        mine = (self.num_classes, self.ignore_index, self.per_image)
        if saved != mine:
            raise ValueError(
                f"state_dict was saved with (num_classes, ignore_index, per_image) {saved}, "
                f"this ConfusionMatrix has {mine}"
            )
        mat = state_dict["confusion"]
        if tuple(mat.shape) != (self.num_classes,) * 2:
            raise ValueError(f"state_dict['confusion'] has shape {tuple(mat.shape)}")
        self.reset()
        self._mat = mat.to(self.device, torch.int64).clone()
        if self.per_image:
            self._images = [state_dict["image_stats"].to(self.device, torch.int64).clone()]
        self._reduced = bool(state_dict.get("reduced", False))
        self._updated = True

    def __repr__(self) -> str:
        return (
            f"ConfusionMatrix(num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
            f"device={self.device}, per_image={self.per_image}, checks={self.checks!r}, "
            f"pixels={int(self._mat.sum())})"
        )
