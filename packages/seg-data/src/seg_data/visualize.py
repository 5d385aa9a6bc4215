"""Label colouring: class masks to colours and overlays (used by reports, seg-eval, seg-infer).

Plain numpy on ``H x W`` masks (numpy arrays or tensors); memory stays bounded on huge images
(``CHUNK_ROWS`` rows at a time). A class the palette has no colour for is an error, not a
silent black pixel: it means the palette and the model or labels disagree.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["CHUNK_ROWS", "colorize", "image_hwc", "overlay"]

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


def image_hwc(image: ArrayLike) -> np.ndarray:
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

    ``alpha`` is the weight of the colours (0 = image only, 1 = colours only).

    Works on ``CHUNK_ROWS`` rows at a time: memory beyond the output is bounded.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    img = image_hwc(image)
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
