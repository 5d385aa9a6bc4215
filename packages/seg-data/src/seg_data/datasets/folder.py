"""A generic folder dataset: ``images/`` and ``masks/`` with matching file stems.

Layout::

    root/classes.txt                  one class name per line (index = line number)
    root/images/[<split>/]<stem>.jpg|png|...
    root/masks/[<split>/]<stem>.png   single-channel index PNGs (L or P mode)

Split selection, in order: ``images/<split>/`` + ``masks/<split>/`` when that folder exists;
else ``root/<split>.txt`` listing stems; ``split=None`` or ``"all"`` takes every image in
``images/``. Anything else is an error (never a silent fallback to all images).
Mask values are 0..K-1, ``ignore_value`` (default 255) is void; ``reduce_zero_label`` makes
0 void and shifts k -> k-1 (then ``classes.txt`` lists the K-1 remaining classes).

Binary masks saved as 0 / 255 (the usual output of drawing tools and of ``mask * 255``) need
``binary_mask=True``: 0 -> class 0 (background), 255 (or 1) -> class 1 (foreground), with no
void value unless ``ignore_value`` names one. Without it 255 reads as void, the model sees only
background and the foreground IoU is 0 (the dataset doctor warns about such masks).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._errors import MissingFileError
from ._palette import voc_colormap
from ._registry import register_dataset
from .base import IGNORE_INDEX, SegmentationDataset, pair_files, read_split_file, resolve_root

__all__ = ["IMAGE_SUFFIXES", "FolderDataset"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@register_dataset("folder")
class FolderDataset(SegmentationDataset):
    """Images and index masks in two folders, classes from ``classes.txt`` or ``classes=``.

    Args:
        root: folder with ``images/``, ``masks/`` and (unless ``classes`` is given) ``classes.txt``.
        split: subfolder / split-file name, or None / ``"all"`` for every image.
        classes: class names (overrides ``classes.txt``).
        palette: ``K x 3`` colours (default: VOC colour map).
        ignore_value: mask value meaning void, mapped to 255 (default 255; with
            ``binary_mask`` there is no void value unless one is given).
        reduce_zero_label: 0 -> void, k -> k-1.
        binary_mask: masks hold 0 = background and 255 (or 1) = foreground; two classes
            (``("background", "foreground")`` unless ``classes`` / ``classes.txt`` name them).
        strict: False records missing masks in ``.problems`` instead of raising (doctor).
    """

    def __init__(
        self,
        root: str | Path | None,
        *,
        split: str | None = "train",
        transforms=None,
        seed: int = 0,
        classes: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        ignore_value: int | None = None,
        reduce_zero_label: bool = False,
        binary_mask: bool = False,
        strict: bool = True,
    ) -> None:
        self.root = resolve_root(root, "folder", (), "images")
        self.split = split
        img_root, mask_root = self.root / "images", self.root / "masks"
        if not mask_root.is_dir():
            raise MissingFileError(f"folder: masks folder not found: {mask_root}")
        if classes is None and binary_mask and not (self.root / "classes.txt").is_file():
            classes = ("background", "foreground")
        if classes is None:
            classes_file = self.root / "classes.txt"
            if not classes_file.is_file():
                raise MissingFileError(
                    f"folder: {classes_file} not found; write one class name per line "
                    "or pass classes=[...]"
                )
            classes = [ln.strip() for ln in classes_file.read_text().splitlines() if ln.strip()]
        classes = tuple(classes)
        if not classes:
            raise ValueError("folder: the class list is empty")

        if split in (None, "all"):
            img_dir, mask_dir = img_root, mask_root
            images = _images_in(img_dir)
        elif (img_root / split).is_dir():
            img_dir, mask_dir = img_root / split, mask_root / split
            images = _images_in(img_dir)
        elif (self.root / f"{split}.txt").is_file():
            img_dir, mask_dir = img_root, mask_root
            by_stem = {p.stem: p for p in _images_in(img_dir)}
            stems = [ln.split()[0] for ln in read_split_file(self.root / f"{split}.txt", "folder")]
            absent = [s for s in stems if s not in by_stem]
            if absent:
                raise MissingFileError(
                    f"folder: {len(absent)} stems listed in {self.root / f'{split}.txt'} have no "
                    f"image in {img_dir}, e.g. {absent[0]!r}"
                )
            images = [by_stem[s] for s in stems]
        else:
            raise MissingFileError(
                f"folder: split {split!r} not found: neither {img_root / split}/ nor "
                f"{self.root / f'{split}.txt'} exists; use split=None to take every image in "
                f"{img_root}"
            )
        if not images:
            raise MissingFileError(f"folder: no images ({', '.join(IMAGE_SUFFIXES)}) in {img_dir}")
        self._mask_dir = mask_dir
        self._stems = {p.stem for p in images}
        self._all_images = split in (None, "all") or (img_root / str(split)).is_dir()
        files, problems = pair_files(
            "folder", images, lambda p: mask_dir / f"{p.stem}.png", strict=strict
        )
        lut = _label_lut(len(classes), ignore_value, reduce_zero_label, binary_mask)
        k = len(classes)
        pal = voc_colormap(k) if palette is None else np.asarray(palette, dtype=np.uint8)
        super().__init__(
            files,
            classes=classes,
            palette=pal,
            label_lut=lut,
            transforms=transforms,
            seed=seed,
            problems=problems,
        )

    def orphan_labels(self) -> list[Path]:
        if not self._all_images:  # a split file selects a subset: other masks are expected
            return []
        return [p for p in sorted(self._mask_dir.glob("*.png")) if p.stem not in self._stems]


def _label_lut(
    k: int, ignore_value: int | None, reduce_zero_label: bool, binary_mask: bool
) -> np.ndarray:
    """Stored mask value -> train id (-1 = invalid value) for the folder options."""
    if ignore_value is not None and not 0 <= ignore_value <= 255:
        raise ValueError(f"folder: ignore_value must be in 0..255, got {ignore_value}")
    lut = np.full(256, -1, dtype=np.int16)
    if binary_mask:
        if k != 2:
            raise ValueError(
                f"folder: binary_mask=True needs exactly 2 classes (background, foreground); "
                f"got {k}"
            )
        if reduce_zero_label:
            raise ValueError("folder: binary_mask and reduce_zero_label exclude each other")
        if ignore_value in (0, 1, 255):
            raise ValueError(
                f"folder: with binary_mask, {ignore_value} is a class value (0 = background, "
                "1/255 = foreground); pick another ignore_value or none"
            )
        lut[0], lut[1], lut[255] = 0, 1, 1
    elif reduce_zero_label:
        lut[0] = IGNORE_INDEX
        lut[1 : k + 1] = np.arange(k)
    else:
        lut[:k] = np.arange(k)
    if not binary_mask:
        lut[IGNORE_INDEX] = IGNORE_INDEX
    if ignore_value is not None:
        lut[ignore_value] = IGNORE_INDEX
    return lut


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise MissingFileError(f"folder: images folder not found: {folder}")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
