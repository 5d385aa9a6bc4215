"""Label colouring for logs and reports."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["colorize", "overlay"]


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def colorize(label: Any, palette: Any) -> np.ndarray:
    """``H x W`` class indices -> ``H x W x 3`` uint8 colours; ignore (or any value >= K) is black."""
    label = _np(label)
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    if label.ndim != 2:
        raise ValueError(f"colorize expects an H x W label, got shape {label.shape}")
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: min(len(palette), 255)] = palette[:255]
    idx = label.astype(np.int64)
    idx = np.where((idx < 0) | (idx >= len(palette)), 255, idx)
    return lut[idx]


def overlay(image: Any, label: Any, palette: Any, alpha: float = 0.5) -> np.ndarray:
    """Blend label colours over an ``H x W x 3`` uint8 image; ignored pixels show the image.

    ``alpha`` is the weight of the label colours (0 = image only, 1 = colours only).
    """
    image = _np(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"overlay expects an H x W x 3 uint8 image, got {image.shape} {image.dtype}"
        )
    label = _np(label)
    if label.shape != image.shape[:2]:
        raise ValueError(f"overlay: label {label.shape} and image {image.shape[:2]} sizes differ")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    colours = colorize(label, palette).astype(np.float32)
    valid = ((label >= 0) & (label < len(np.asarray(palette).reshape(-1, 3))))[..., None]
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    out = np.where(valid, blended, image.astype(np.float32))
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
