"""Pictures of a run: prediction grids (image | ground truth | prediction) and training curves.

Drawing uses matplotlib's object API with the Agg canvas (no pyplot, no
display, no global backend switch), so it works on headless machines and in
worker processes. The colour helpers (:func:`colorize`, :func:`overlay`) live in
:mod:`seg_data.visualize` and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from seg_data.visualize import colorize, image_hwc, overlay

from .logging_utils import read_log

__all__ = ["colorize", "overlay", "save_prediction_grid", "save_training_curves"]

ArrayLike = np.ndarray | torch.Tensor


def save_prediction_grid(
    images_uint8: ArrayLike | Sequence[ArrayLike],
    labels: ArrayLike | Sequence[ArrayLike],
    preds: ArrayLike | Sequence[ArrayLike],
    palette: ArrayLike | Sequence[Sequence[int]],
    path: str | Path,
    *,
    ignore_index: int = 255,
    alpha: float = 0.5,
    max_rows: int = 4,
    titles: Sequence[str] = ("image", "ground truth", "prediction"),
) -> Path:
    """Save a PNG with one row per sample: image | ground-truth overlay | prediction overlay.

    Args:
        images_uint8: ``N x H x W x 3`` or ``N x 3 x H x W`` uint8 images (or a list of them,
            sizes may differ).
        labels: ``N x H x W`` ground-truth indices (``ignore_index`` drawn as the bare image).
        preds: ``N x H x W`` predicted indices.
        palette: ``(K, 3)`` RGB colours.
        path: output PNG path (parent folders are created).
        max_rows: at most this many samples are drawn.

    Returns:
        The path written.
    """
    rows = min(len(images_uint8), max_rows)
    if rows == 0:
        raise ValueError("save_prediction_grid needs at least one image")
    if not (len(labels) >= rows and len(preds) >= rows):
        raise ValueError(
            f"got {len(images_uint8)} images, {len(labels)} labels and {len(preds)} predictions"
        )
    first = image_hwc(images_uint8[0])
    aspect = first.shape[1] / first.shape[0]
    fig = Figure(figsize=(3 * 3.0 * aspect, rows * 3.0), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 3, squeeze=False)
    for r in range(rows):
        img = image_hwc(images_uint8[r])
        panels = (
            img,
            overlay(img, labels[r], palette, alpha=alpha, ignore_index=ignore_index),
            overlay(img, preds[r], palette, alpha=alpha, ignore_index=ignore_index),
        )
        for c, panel in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(panel)
            ax.set_axis_off()
            if r == 0:
                ax.set_title(titles[c])
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def save_training_curves(log_jsonl_path: str | Path, png_path: str | Path) -> Path:
    """Plot training loss and validation mIoU against the iteration from ``log.jsonl``.

    Reads lines ``{"type": "train", "iter", "loss", ...}`` and
    ``{"type": "val", "iter", "mIoU", ...}``; other lines are ignored.
    """
    log_path = Path(log_jsonl_path)
    if not log_path.is_file():
        raise FileNotFoundError(f"training log not found: {log_path} (written by seg-train)")
    records = read_log(log_path)  # the records of the run as it stands (resume markers)
    train = [(r["iter"], r["loss"]) for r in records if r.get("type") == "train" and "loss" in r]
    val = [(r["iter"], r["mIoU"]) for r in records if r.get("type") == "val" and "mIoU" in r]

    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_miou = fig.subplots(1, 2)
    for ax, points, name, colour in (
        (ax_loss, train, "training loss", "tab:blue"),
        (ax_miou, val, "val mIoU", "tab:orange"),
    ):
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o" if len(points) < 30 else None, color=colour)
        else:
            ax.text(0.5, 0.5, f"no {name} in the log", ha="center", va="center")
        ax.set_xlabel("iteration")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(png_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out
