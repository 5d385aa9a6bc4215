"""The dataset doctor: check a dataset folder and report every problem at once.

``python -m seg_data check --dataset cityscapes --root PATH [--split val]`` or
:func:`check_dataset`. It reads every pair and reports missing partners, unreadable files,
image/label size mismatches, label values outside the classes and the ignore index, images
whose label is all ignore, layout facts (e.g. Cityscapes labelIds vs labelTrainIds files) and
a per-class pixel histogram. Errors make the command exit with status 1.
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
    return report
