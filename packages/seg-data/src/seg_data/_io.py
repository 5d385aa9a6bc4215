"""Reading images and label maps with errors that name the file.

The one image reader of PKUSeg: training, evaluation (``seg_data`` datasets) and inference
(``seg-infer``) all decode through :func:`read_image`, so they see the same pixels:

* EXIF orientation is applied (a phone photo stored sideways with an orientation tag is
  read upright, as every viewer and annotation tool shows it); label maps get the same
  treatment, so an image and a mask written by the same tool stay aligned;
* 16-bit images (``I;16`` grey PNG/TIFF) are scaled from 0..65535 to 0..255
  (``round(v / 257)``) instead of being clipped at 255; 16-bit RGB(A) PNGs are already
  reduced to 8 bits by Pillow (high byte);
* images whose value range cannot be known are refused by name
  (:class:`~seg_data.UnsupportedImageError`): 32-bit float (mode ``F``, e.g. float TIFF)
  and 32-bit integer (mode ``I``) images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ._errors import CorruptFileError, LabelError, MissingFileError, UnsupportedImageError

__all__ = ["read_image", "read_label"]

# Everything PIL raises for a file that exists but is not a readable image.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def _open(path: Path, what: str) -> tuple[Image.Image, bool]:
    """The decoded, upright image and whether it holds 16-bit values."""
    if not path.is_file():
        raise MissingFileError(f"{what} file not found: {path}")
    try:
        im = Image.open(path)
        im.load()  # decode now: truncated or corrupt data fails here, not later
        # older Pillow opens 16-bit grey PNGs as mode I (PNG has no 32-bit integers)
        sixteen = im.mode in _SIXTEEN_BIT or (im.mode == "I" and im.format == "PNG")
        upright = ImageOps.exif_transpose(im)  # a copy when the file has an orientation tag
    except _DECODE_ERRORS as e:
        raise CorruptFileError(
            f"cannot decode {what} {path}: {e}. The file is truncated, corrupt or not an "
            "image; re-download or re-extract it (the dataset doctor lists every such file: "
            "python -m seg_data check ...)."
        ) from e
    if upright is not im:
        im.close()
    return upright, sixteen


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as an ``H x W x 3`` RGB ``uint8`` array, upright (EXIF orientation applied).

    Grey, palette, CMYK and RGBA images are converted to RGB; 16-bit grey images are scaled
    to 8 bits. Raises :class:`~seg_data.UnsupportedImageError` for float and 32-bit integer
    images, :class:`~seg_data.CorruptFileError` for undecodable files.
    """
    path = Path(path)
    im, sixteen = _open(path, "image")
    with im:
        if sixteen:
            grey = np.asarray(im).astype(np.uint32)
            grey8 = ((grey + 128) // 257).astype(np.uint8)  # 0..65535 -> 0..255, rounded
            return np.repeat(grey8[..., None], 3, axis=2)
        if im.mode in ("F", "I"):
            kind = "32-bit float" if im.mode == "F" else "32-bit integer"
            raise UnsupportedImageError(
                f"image {path} is a {kind} image (PIL mode {im.mode}): its value range is not "
                "known, so it cannot be read as a photo without guessing. Convert it to an "
                "8-bit (or 16-bit) PNG/JPEG with the scaling that fits your data first."
            )
        if im.mode != "RGB":
            im = im.convert("RGB")
        return np.array(im)  # writable (np.asarray of a PIL image is read-only)


def read_label(path: str | Path) -> np.ndarray:
    """Read a label map as an ``H x W`` integer array of the stored index values.

    Accepts single-channel PNGs: ``L`` (8-bit grey), ``P`` (palette PNG: the palette indices are
    the class values, as in Pascal VOC) and 16/32-bit integer modes. Colour-coded masks are
    refused, because their colours are not class indices. EXIF orientation is applied, as
    for images.
    """
    path = Path(path)
    im, _ = _open(path, "label")
    with im:
        if im.mode in ("L", "P"):
            return np.array(im)
        if im.mode in (*_SIXTEEN_BIT, "I"):
            return np.asarray(im).astype(np.int64)
        raise LabelError(
            f"label {path} is a {im.mode} image; expected a single-channel PNG (mode L or P) "
            "whose pixel values are class indices. Convert colour-coded masks to index masks "
            "(map each colour to its class id) first."
        )
