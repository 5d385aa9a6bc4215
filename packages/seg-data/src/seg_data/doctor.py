"""The dataset doctor: check a dataset folder and report every problem at once.

``python -m seg_data check --dataset cityscapes --root PATH [--split val]`` or
:func:`check_dataset`. It reads every pair and reports missing partners, unreadable files,
image/label size mismatches, label values outside the classes and the ignore index, images
whose label is all ignore, layout facts (e.g. Cityscapes labelIds vs labelTrainIds files) and
a per-class pixel histogram. Errors make the command exit with status 1.

Warnings about the split as a whole: classes without a single pixel (never learned, IoU
undefined), a split that is mostly ignore, and labels holding only class 0 and ignore, the
signature of binary masks saved as 0/255 (255 reads as ignore: the model learns background
only and the foreground IoU is 0; the warning spells out the fix).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import DatasetError
from .datasets import IGNORE_INDEX, create_dataset, dataset_options

__all__ = ["CheckReport", "check_dataset"]


@dataclass
class CheckReport:
    """What :func:`check_dataset` found."""

    dataset: str
    root: str | None
    split: str
    num_pairs: int = 0
    num_checked: int = 0
    classes: tuple[str, ...] = ()
    pixel_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    image_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    ignore_pixels: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    info: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no error was found (warnings allowed)."""
        return not self.errors

    def table(self) -> str:
        """Per-class pixel histogram as a text table."""
        total = int(self.pixel_counts.sum()) + self.ignore_pixels
        width = max([len(c) for c in self.classes] + [len("ignore (255)")])
        lines = [f"{'id':>3}  {'class':<{width}}  {'pixels':>12}  {'share':>7}  {'images':>6}"]
        for k, name in enumerate(self.classes):
            n = int(self.pixel_counts[k])
            share = n / total if total else 0.0
            lines.append(
                f"{k:>3}  {name:<{width}}  {n:>12}  {share:>7.2%}  {int(self.image_counts[k]):>6}"
            )
        share = self.ignore_pixels / total if total else 0.0
        lines.append(f"{'':>3}  {'ignore (255)':<{width}}  {self.ignore_pixels:>12}  {share:>7.2%}")
        return "\n".join(lines)

    def summary(self, max_listed: int = 20) -> str:
        """The full human-readable report."""
        head = f"{self.dataset} split={self.split!r}" + (f" root={self.root}" if self.root else "")
        out = [head, f"pairs: {self.num_pairs} (checked {self.num_checked})"]
        out += [f"info: {i}" for i in self.info]
        if len(self.classes):
            out += ["", self.table(), ""]
        for kind, items in (("ERROR", self.errors), ("warning", self.warnings)):
            for msg in items[:max_listed]:
                out.append(f"{kind}: {msg}")
            if len(items) > max_listed:
                out.append(f"{kind}: ... and {len(items) - max_listed} more")
        out.append(
            f"{'OK' if self.ok else 'FAILED'}: {len(self.errors)} error(s), "
            f"{len(self.warnings)} warning(s)"
        )
        return "\n".join(out)


def check_dataset(
    name: str,
    root: str | Path | None = None,
    *,
    split: str = "val",
    limit: int | None = None,
    **options: Any,
) -> CheckReport:
    """Check every pair of a dataset split; never raises for data problems.

    Args:
        name: dataset name (see :func:`~seg_data.list_datasets`).
        root: dataset folder.
        split: split to check.
        limit: check only the first ``limit`` pairs (None = all).
        **options: dataset options, as for :func:`~seg_data.create_dataset`.
    """
    report = CheckReport(dataset=name, root=None if root is None else str(root), split=split)
    if "strict" in dataset_options(name):
        options.setdefault("strict", False)
    try:
        ds = create_dataset(name, root=root, split=split, **options)
    except (DatasetError, OSError, ValueError) as e:
        report.errors.append(str(e))
        return report
    report.classes = ds.classes
    report.num_pairs = len(ds)
    report.info.extend(ds.layout_info())
    for p in getattr(ds, "problems", []):
        report.errors.append(p)
    for orphan in ds.orphan_labels():
        report.warnings.append(f"missing partner: label {orphan} has no image")
    k = ds.num_classes
    pixel_counts = np.zeros(k, dtype=np.int64)
    image_counts = np.zeros(k, dtype=np.int64)
    n = len(ds) if limit is None else min(limit, len(ds))
    for i in range(n):
        try:
            _, label, meta = ds.load(i)
        except (DatasetError, OSError, ValueError) as e:
            report.errors.append(str(e))
            continue
        counts = np.bincount(label.ravel(), minlength=256)
        pixel_counts += counts[:k]
        image_counts += counts[:k] > 0
        report.ignore_pixels += int(counts[IGNORE_INDEX])
        if counts[:k].sum() == 0:
            report.warnings.append(
                f"all pixels are ignore ({IGNORE_INDEX}) in {meta['label_filename'] or meta['filename']}"
            )
        report.num_checked += 1
    report.pixel_counts, report.image_counts = pixel_counts, image_counts
    if report.num_checked and pixel_counts.sum() == 0:
        report.errors.append("no labelled pixel in the whole split")
    elif report.num_checked:
        report.warnings.extend(_split_warnings(report))
    return report


#: share of ignore pixels above which a split is reported as "mostly ignore"
MOSTLY_IGNORE = 0.5


def _split_warnings(report: CheckReport) -> list[str]:
    """Warnings about the split's class histogram as a whole (zero classes, ignore, 0/255)."""
    counts, ignore = report.pixel_counts, report.ignore_pixels
    where = f"split {report.split!r} ({report.num_checked} labels checked)"
    out = []
    if len(counts) > 1 and counts[0] > 0 and counts[1:].sum() == 0 and ignore > 0:
        out.append(
            f"{where}: every label holds only class 0 and ignore ({IGNORE_INDEX}): these look "
            f"like binary masks saved as 0/255. {IGNORE_INDEX} is read as ignore, so the model "
            "learns background only and the foreground IoU is 0. If 255 means foreground, map "
            "it to class 1: for the folder dataset set dataset_options: {binary_mask: true} "
            "(0 -> background, 255 -> foreground, 2 classes), or rewrite the masks as 0/1 "
            "(label_map {255: 1}); reduce_zero_label is NOT the fix (it would make the "
            "background void)."
        )
        return out
    total = int(counts.sum()) + ignore
    if ignore > MOSTLY_IGNORE * total:
        out.append(
            f"{where}: {ignore / total:.0%} of the pixels are ignore ({IGNORE_INDEX}); only "
            f"{int(counts.sum())} of {total} pixels are trained on and evaluated. Check the "
            "label mapping (ignore_value, reduce_zero_label, label ids vs train ids)."
        )
    empty = [f"{k} {report.classes[k]!r}" for k in np.flatnonzero(counts == 0)]
    if empty:
        out.append(
            f"{where}: {len(empty)} class(es) have no pixel: {', '.join(empty[:20])}"
            f"{' ...' if len(empty) > 20 else ''}. They are never learned from this split "
            "and their IoU is undefined (NaN, left out of the mean); check classes / "
            "num_classes and the label values."
        )
    return out
