"""Metrics derived from a segmentation confusion matrix.

Formulas follow mmsegmentation's ``total_area_to_metrics`` (and the Cityscapes
evaluation script for IoU). With ``M`` the K x K confusion matrix (rows =
target class, columns = predicted class, ignored pixels excluded)::

    TP_c = M[c, c]          target_c = sum_j M[c, j]      pred_c = sum_i M[i, c]
    IoU_c       = TP_c / (target_c + pred_c - TP_c)
    Acc_c       = TP_c / target_c          (recall)
    Precision_c = TP_c / pred_c
    Dice_c      = 2 TP_c / (target_c + pred_c)     (= F1)
    aAcc        = sum_c TP_c / sum_c target_c
    fwIoU       = sum_c (target_c / sum_k target_k) * IoU_c   (classes with target_c > 0)

A zero denominator gives NaN (0 / 0), and means over classes (mIoU, mAcc,
mDice, mPrecision) are ``nanmean``: a class with no pixel in the target nor
in the prediction has IoU NaN and does not count, as in mmseg and Cityscapes.
A class predicted but absent from the target has IoU 0 (it counts) and Acc NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["SegmentationResult"]


def _nanmean(x: Tensor) -> float:
    """Mean over the non-NaN entries as a Python float (NaN when there are none)."""
    return float(torch.nanmean(x)) if x.numel() else math.nan


def _json_float(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def _json_list(x: Tensor) -> list[float | None]:
    return [_json_float(v) for v in x.tolist()]


@dataclass(frozen=True, repr=False)
class SegmentationResult:
    """Per-class and mean segmentation metrics computed from a confusion matrix.

    Per-class tensors are float64 on the CPU, indexed by class id; NaN marks a
    class for which the metric is undefined (zero denominator). Means skip NaN.
    Build one with :meth:`ConfusionMatrix.compute` or :meth:`from_confusion`.

    Attributes:
        num_classes: K.
        ignore_index: the target value that was excluded (``None``: nothing ignored).
        confusion: K x K int64 counts, rows = target class, columns = prediction.
        iou: per-class intersection over union.
        acc: per-class accuracy (recall): TP / target pixels.
        precision: per-class precision: TP / predicted pixels.
        dice: per-class Dice coefficient (F1): 2 TP / (target + predicted).
        miou, macc, mprecision, mdice: nanmean of the per-class values.
        aacc: overall pixel accuracy.
        fwiou: frequency-weighted IoU.
        num_pixels: number of evaluated (non-ignored) pixels.
        image_iou, image_dice: N_images x K per-image values (per-image mode only).
        image_miou, image_mdice, image_aacc: image-wise averages (per-image mode only):
            the mean over images of each image's own mIoU / mDice / pixel accuracy.
    """

    num_classes: int
    ignore_index: int | None
    confusion: Tensor
    iou: Tensor
    acc: Tensor
    precision: Tensor
    dice: Tensor
    miou: float
    macc: float
    mprecision: float
    mdice: float
    aacc: float
    fwiou: float
    num_pixels: int
    image_iou: Tensor | None = None
    image_dice: Tensor | None = None
    image_miou: float | None = None
    image_mdice: float | None = None
    image_aacc: float | None = None

    # ------------------------------------------------------------------ building
    @classmethod
    def from_confusion(
        cls,
        confusion: Tensor,
        *,
        ignore_index: int | None = 255,
        image_stats: Tensor | None = None,
    ) -> SegmentationResult:
        """Compute every metric from a K x K confusion matrix (rows = target).

        Args:
            confusion: K x K integer counts, rows indexed by the target class and
                columns by the predicted class.
            ignore_index: recorded in the result (informational only).
            image_stats: optional N x 3 x K int64 per-image ``(TP, target, pred)``
                pixel counts, for the image-wise averages.
        """
        if confusion.dim() != 2 or confusion.shape[0] != confusion.shape[1]:
            raise ValueError(
                f"confusion must be a square K x K matrix, got shape {tuple(confusion.shape)}"
            )
        mat = confusion.detach().to("cpu", torch.int64)
        m = mat.to(torch.float64)
        tp = m.diagonal()
        target = m.sum(1)
        pred = m.sum(0)
        union = target + pred - tp
        iou = tp / union
        acc = tp / target
        precision = tp / pred
        dice = 2 * tp / (target + pred)
        total = target.sum()
        aacc = float(tp.sum() / total)
        seen = target > 0
        fwiou = float((target[seen] / total * iou[seen]).sum()) if total > 0 else math.nan

        extra: dict[str, Any] = {}
        if image_stats is not None:
            s = image_stats.detach().to("cpu", torch.float64)
            if s.dim() != 3 or s.shape[1:] != (3, mat.shape[0]):
                raise ValueError(
                    f"image_stats must be N x 3 x K with K={mat.shape[0]}, "
                    f"got shape {tuple(image_stats.shape)}"
                )
            i_tp, i_t, i_p = s[:, 0], s[:, 1], s[:, 2]
            image_iou = i_tp / (i_t + i_p - i_tp)
            image_dice = 2 * i_tp / (i_t + i_p)
            image_aacc = i_tp.sum(1) / i_t.sum(1)
            extra = dict(
                image_iou=image_iou,
                image_dice=image_dice,
                image_miou=_nanmean(torch.nanmean(image_iou, dim=1)) if len(s) else math.nan,
                image_mdice=_nanmean(torch.nanmean(image_dice, dim=1)) if len(s) else math.nan,
                image_aacc=_nanmean(image_aacc),
            )

        return cls(
            num_classes=mat.shape[0],
            ignore_index=ignore_index,
            confusion=mat,
            iou=iou,
            acc=acc,
            precision=precision,
            dice=dice,
            miou=_nanmean(iou),
            macc=_nanmean(acc),
            mprecision=_nanmean(precision),
            mdice=_nanmean(dice),
            aacc=aacc,
            fwiou=fwiou,
            num_pixels=int(mat.sum()),
            **extra,
        )

    # ------------------------------------------------------------------ aliases
    @property
    def recall(self) -> Tensor:
        """Per-class recall (same as :attr:`acc`)."""
        return self.acc

    @property
    def f1(self) -> Tensor:
        """Per-class F1 score (same as :attr:`dice`)."""
        return self.dice

    @property
    def present(self) -> Tensor:
        """Bool mask of the classes that count in mIoU (some pixel in target or prediction)."""
        return ~torch.isnan(self.iou)

    @property
    def num_images(self) -> int | None:
        """Number of images in per-image mode, else ``None``."""
        return None if self.image_iou is None else int(self.image_iou.shape[0])

    # ------------------------------------------------------------------ output
    def _names(self, class_names: Sequence[str] | None) -> list[str]:
        if class_names is None:
            return [str(i) for i in range(self.num_classes)]
        names = [str(n) for n in class_names]
        if len(names) != self.num_classes:
            raise ValueError(
                f"class_names has {len(names)} entries but the metric has "
                f"num_classes={self.num_classes}: pass one name per class id"
            )
        return names

    def table(self, class_names: Sequence[str] | None = None, *, digits: int = 2) -> str:
        """A readable per-class table (values in percent) with the means below it.

        ``nan`` marks an undefined value; the footer names the classes left out of
        mIoU because they have no pixel in the target nor in the prediction.
        """
        names = self._names(class_names)
        w = max(12, *(len(n) for n in names)) if names else 12
        cols = ("IoU", "Acc", "Prec", "Dice")
        vw = digits + 6  # room for "100.00" and a space

        def fmt(v: float) -> str:
            return f"{'nan':>{vw}}" if math.isnan(v) else f"{100 * v:>{vw}.{digits}f}"

        head = f"{'class':<{w}}" + "".join(f"{c:>{vw}}" for c in cols) + f"{'pixels':>13}"
        rule = "-" * len(head)
        lines = [head, rule]
        target_px = self.confusion.sum(1).tolist()
        for c, name in enumerate(names):
            vals = (self.iou[c], self.acc[c], self.precision[c], self.dice[c])
            lines.append(
                f"{name:<{w}}" + "".join(fmt(float(v)) for v in vals) + f"{target_px[c]:>13d}"
            )
        lines.append(rule)
        n_present = int(self.present.sum())
        means = (self.miou, self.macc, self.mprecision, self.mdice)
        label = f"mean ({n_present}/{self.num_classes})"
        lines.append(f"{label:<{w}}" + "".join(fmt(v) for v in means) + f"{self.num_pixels:>13d}")
        lines.append(f"aAcc {fmt(self.aacc).strip()}   fwIoU {fmt(self.fwiou).strip()}")
        if self.image_miou is not None:
            lines.append(
                f"per image ({self.num_images} images): mIoU {fmt(self.image_miou).strip()}"
                f"   mDice {fmt(float(self.image_mdice)).strip()}"  # type: ignore[arg-type]
                f"   aAcc {fmt(float(self.image_aacc)).strip()}"  # type: ignore[arg-type]
            )
        absent = [names[c] for c in range(self.num_classes) if not bool(self.present[c])]
        if absent:
            lines.append(
                f"nan: {len(absent)} class(es) with no pixel in target nor prediction, "
                f"left out of the means: {', '.join(absent)}"
            )
        no_target = [
            names[c]
            for c in range(self.num_classes)
            if bool(self.present[c]) and math.isnan(float(self.acc[c]))
        ]
        if no_target:
            lines.append(
                "predicted but absent from the target (IoU 0 counts in mIoU, Acc nan): "
                + ", ".join(no_target)
            )
        never_predicted = [
            names[c]
            for c in range(self.num_classes)
            if bool(self.present[c]) and math.isnan(float(self.precision[c]))
        ]
        if never_predicted:
            lines.append(
                "in the target but never predicted (IoU 0, Prec nan): " + ", ".join(never_predicted)
            )
        return "\n".join(lines)

    def to_dict(
        self, class_names: Sequence[str] | None = None, *, confusion: bool = False
    ) -> dict[str, Any]:
        """A JSON-serialisable dict (NaN becomes ``None``).

        Args:
            class_names: optional names, stored under ``"class_names"``.
            confusion: also include the confusion matrix as a nested list of ints.
        """
        out: dict[str, Any] = {
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "num_pixels": self.num_pixels,
            "miou": _json_float(self.miou),
            "macc": _json_float(self.macc),
            "aacc": _json_float(self.aacc),
            "fwiou": _json_float(self.fwiou),
            "mdice": _json_float(self.mdice),
            "mprecision": _json_float(self.mprecision),
            "per_class": {
                "iou": _json_list(self.iou),
                "acc": _json_list(self.acc),
                "precision": _json_list(self.precision),
                "dice": _json_list(self.dice),
            },
        }
        if class_names is not None:
            out["class_names"] = self._names(class_names)
        if self.image_iou is not None:
            out["per_image"] = {
                "num_images": self.num_images,
                "miou": _json_float(float(self.image_miou)),  # type: ignore[arg-type]
                "mdice": _json_float(float(self.image_mdice)),  # type: ignore[arg-type]
                "aacc": _json_float(float(self.image_aacc)),  # type: ignore[arg-type]
            }
        if confusion:
            out["confusion"] = self.confusion.tolist()
        return out

    def __repr__(self) -> str:
        return (
            f"SegmentationResult(num_classes={self.num_classes}, mIoU={self.miou:.4f}, "
            f"mAcc={self.macc:.4f}, aAcc={self.aacc:.4f}, fwIoU={self.fwiou:.4f}, "
            f"mDice={self.mdice:.4f}, num_pixels={self.num_pixels})"
        )
