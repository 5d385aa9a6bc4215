"""Pictures of a run: prediction grids (image | ground truth | prediction) and training curves.

Drawing uses matplotlib's object API with the Agg canvas (no pyplot, no
display, no global backend switch), so it works on headless machines and in
worker processes. Colour helpers (:func:`colorize`, :func:`overlay`) are
plain numpy and are also used by ``seg-eval`` and ``seg-infer``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .logging_utils import read_log

__all__ = ["colorize", "overlay", "save_prediction_grid", "save_training_curves"]

ArrayLike = np.ndarray | torch.Tensor


def _numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _palette(palette: ArrayLike | Sequence[Sequence[int]]) -> np.ndarray:
    pal = np.asarray(_numpy(palette) if isinstance(palette, torch.Tensor) else palette)
    if pal.ndim != 2 or pal.shape[1] != 3:
        raise ValueError(
            f"palette must be a (num_classes, 3) array of RGB colours; got {pal.shape}"
        )
    return pal.astype(np.uint8)


#: rows processed at a time by colorize/overlay: their temporaries stay a few MB wide,
#: whatever the image size (an 8000 x 6000 overlay never builds full-size float arrays)
CHUNK_ROWS = 256


def colorize(
    mask: ArrayLike, palette: ArrayLike | Sequence[Sequence[int]], *, ignore_index: int = 255
) -> np.ndarray:
    """``H x W`` class indices -> ``H x W x 3`` uint8 colours; ``ignore_index`` is black."""
    m = _numpy(mask)
    pal = _palette(palette)
    out = np.zeros((*m.shape, 3), dtype=np.uint8)
    for r in range(0, max(m.shape[0], 1), CHUNK_ROWS):
        _colorize_rows(m[r : r + CHUNK_ROWS], pal, ignore_index, out[r : r + CHUNK_ROWS])
    return out


def _colorize_rows(m: np.ndarray, pal: np.ndarray, ignore_index: int, out: np.ndarray) -> None:
    if m.dtype == np.uint8 and 0 <= ignore_index <= 255:  # a 256-entry table: fast
        counts = np.bincount(m.ravel(), minlength=256)
        counts[ignore_index] = 0
        present = np.flatnonzero(counts)
        if present.size and present[-1] >= len(pal):
            _raise_out_of_range(int(present[-1]), pal, ignore_index)
        lut = np.zeros((256, 3), dtype=np.uint8)
        lut[: min(len(pal), 256)] = pal[:256]
        lut[ignore_index] = 0
        out[...] = lut[m]
        return
    m = m.astype(np.int64)
    valid = m != ignore_index
    if valid.any() and (m[valid].min() < 0 or m[valid].max() >= len(pal)):
        _raise_out_of_range(int(m[valid].max()), pal, ignore_index)
    out[valid] = pal[m[valid]]


def _raise_out_of_range(value: int, pal: np.ndarray, ignore_index: int) -> None:
    raise ValueError(
        f"mask holds class {value} but the palette has {len(pal)} colours "
        f"(classes 0..{len(pal) - 1}, ignore_index={ignore_index})"
    )


def _image_hwc(image: ArrayLike) -> np.ndarray:
    """Accept ``H x W x 3`` or ``3 x H x W`` uint8 images."""
    img = _numpy(image)
    if img.ndim == 3 and img.shape[0] == 3 and img.shape[-1] != 3:
        img = img.transpose(1, 2, 0)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"images must be H x W x 3 or 3 x H x W; got shape {img.shape}")
    if img.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (0..255, not normalised); got {img.dtype}")
    return img


def overlay(
    image: ArrayLike,
    mask: ArrayLike,
    palette: ArrayLike | Sequence[Sequence[int]],
    *,
    alpha: float = 0.5,
    ignore_index: int = 255,
) -> np.ndarray:
    """Blend the palette colours of ``mask`` over ``image`` (uint8); ignored pixels keep the image.

    Works on ``CHUNK_ROWS`` rows at a time: memory beyond the output is bounded.
    """
    img = _image_hwc(image)
    m = _numpy(mask)
    if m.shape != img.shape[:2]:
        raise ValueError(f"mask shape {m.shape} differs from the image's {img.shape[:2]}")
    pal = _palette(palette)
    out = np.empty_like(img)
    for r in range(0, max(m.shape[0], 1), CHUNK_ROWS):
        rows = slice(r, r + CHUNK_ROWS)
        colours = np.zeros((*m[rows].shape, 3), dtype=np.uint8)
        _colorize_rows(m[rows], pal, ignore_index, colours)
        base = img[rows].astype(np.float32)
        mixed = (1 - alpha) * base + alpha * colours.astype(np.float32)
        blended = np.where((m[rows] != ignore_index)[..., None], mixed, base)
        out[rows] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    return out


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
    first = _image_hwc(images_uint8[0])
    aspect = first.shape[1] / first.shape[0]
    fig = Figure(figsize=(3 * 3.0 * aspect, rows * 3.0), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 3, squeeze=False)
    for r in range(rows):
        img = _image_hwc(images_uint8[r])
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
