"""Reading images and label maps with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ._errors import CorruptFileError, LabelError, MissingFileError

__all__ = ["read_image", "read_label"]

# Everything PIL raises for a file that exists but is not a readable image.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _open(path: Path, what: str) -> Image.Image:
    if not path.is_file():
        raise MissingFileError(f"{what} file not found: {path}")
    try:
        im = Image.open(path)
        im.load()  # decode now: truncated or corrupt data fails here, not later
    except _DECODE_ERRORS as e:
        raise CorruptFileError(
            f"cannot decode {what} {path}: {e}. The file is truncated, corrupt or not an "
            "image; re-download or re-extract it (the dataset doctor lists every such file: "
            "python -m seg_data check ...)."
        ) from e
    return im


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as an ``H x W x 3`` RGB ``uint8`` array (grey, palette, RGBA converted)."""
    path = Path(path)
    with _open(path, "image") as im:
        if im.mode != "RGB":
            im = im.convert("RGB")
        return np.array(im)  # writable (np.asarray of a PIL image is read-only)


def read_label(path: str | Path) -> np.ndarray:
    """Read a label map as an ``H x W`` integer array of the stored index values.

    Accepts single-channel PNGs: ``L`` (8-bit grey), ``P`` (palette PNG: the palette indices are
    the class values, as in Pascal VOC) and 16/32-bit integer modes. Colour-coded masks are
    refused, because their colours are not class indices.
    """
    path = Path(path)
    with _open(path, "label") as im:
        if im.mode in ("L", "P"):
            return np.array(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            return np.asarray(im).astype(np.int64)
        raise LabelError(
            f"label {path} is a {im.mode} image; expected a single-channel PNG (mode L or P) "
            "whose pixel values are class indices. Convert colour-coded masks to index masks "
            "(map each colour to its class id) first."
        )
