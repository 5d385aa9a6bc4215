"""The dataset base class every seg_data dataset derives from.

A dataset is a list of (image file, label file) pairs plus class names, a palette and a lookup
table that maps the values stored in the label files to training ids (0..K-1, 255 = ignore).
``__getitem__`` reads the pair, checks it, applies the transforms with a per-sample generator
``np.random.default_rng([seed, epoch, index])`` and returns tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .._errors import LabelError, MissingFileError
from .._io import read_image, read_label
from ..transforms import Compose, build_transforms

__all__ = ["IGNORE_INDEX", "SampleFiles", "SegmentationDataset", "identity_lut", "resolve_root"]

#: Label value meaning "not evaluated, no loss" in every seg_data dataset.
IGNORE_INDEX = 255


@dataclass(frozen=True)
class SampleFiles:
    """One image and its label file (``label`` is None only for generated samples)."""

    image: Path
    label: Path | None


def identity_lut(num_classes: int, extra_ignore: Iterable[int] = ()) -> np.ndarray:
    """LUT keeping 0..K-1 and 255, mapping ``extra_ignore`` values to 255, rejecting the rest.

    A LUT is an ``int16`` array of 256 entries: ``lut[stored value] = train id`` with -1 for
    values that must not occur.
    """
    lut = np.full(256, -1, dtype=np.int16)
    lut[:num_classes] = np.arange(num_classes)
    lut[IGNORE_INDEX] = IGNORE_INDEX
    for v in extra_ignore:
        lut[v] = IGNORE_INDEX
    return lut


def resolve_root(
    root: str | Path | None, name: str, candidates: Sequence[str], marker: str
) -> Path:
    """Find the dataset folder: ``root`` itself or one of ``root/<candidate>`` holding ``marker``.

    Lets users pass either the extracted folder or its parent (e.g. ``VOCdevkit/VOC2012`` or
    the folder containing ``VOCdevkit``).
    """
    if root is None:
        raise MissingFileError(f"{name} needs root=<folder you downloaded and extracted>")
    root = Path(root).expanduser()
    if not root.exists():
        raise MissingFileError(f"{name} root does not exist: {root}")
    if not root.is_dir():
        raise MissingFileError(f"{name} root is not a folder: {root}")
    tried = [root / c for c in ("", *candidates)]
    for cand in tried:
        if (cand / marker).exists():
            return cand
    raise MissingFileError(
        f"{name}: no {marker!r} found in {root}"
        + (f" nor in {', '.join(str(root / c) for c in candidates)}" if candidates else "")
        + ". Point root at the extracted dataset folder."
    )


def read_split_file(path: Path, name: str) -> list[str]:
    """Non-empty, stripped lines of a split file; a missing file names the expected path."""
    if not path.is_file():
        siblings = sorted(p.name for p in path.parent.glob("*.txt")) if path.parent.is_dir() else []
        hint = f" Split files present: {', '.join(siblings)}." if siblings else ""
        raise MissingFileError(f"{name}: split file not found: {path}.{hint}")
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise MissingFileError(f"{name}: split file {path} lists no samples")
    return lines


class SegmentationDataset(Dataset):
    """Image/label pairs with class names, a palette and a label lookup table.

    Subclasses find their files and call ``super().__init__``. Every sample is
    ``{"image": float32 3xHxW, "label": int64 HxW, "meta": {...}}``; without a ``Normalize``
    transform the image keeps the 0..255 scale.

    Args:
        files: the (image, label) pairs, in order.
        classes: class names, index = train id.
        palette: ``(K, 3)`` uint8 colours for visualisation.
        label_lut: 256-entry ``int16`` map stored label value -> train id (-1 = invalid).
        transforms: a :class:`~seg_data.transforms.Compose`, a config list, or any
            ``callable(sample, rng)``.
        seed: base seed of the per-sample randomness.
        problems: pairing problems found while scanning (only with ``strict=False``).
    """

    ignore_index: int = IGNORE_INDEX
    name: str = "dataset"

    def __init__(
        self,
        files: Sequence[SampleFiles],
        *,
        classes: Sequence[str],
        palette: np.ndarray,
        label_lut: np.ndarray,
        transforms: Any = None,
        seed: int = 0,
        problems: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.files = list(files)
        self.classes = tuple(classes)
        self.palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
        if len(self.palette) != len(self.classes):
            raise ValueError(f"{len(self.classes)} classes but {len(self.palette)} palette colours")
        if len(self.classes) > IGNORE_INDEX:
            raise ValueError(f"at most 255 classes are supported, got {len(self.classes)}")
        self.label_lut = np.asarray(label_lut, dtype=np.int16)
        self.transforms = _as_transform(transforms)
        self.seed = int(seed)
        self.problems = list(problems)
        # A shared-memory tensor so that set_epoch reaches DataLoader workers, also persistent ones.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    # ------------------------------------------------------------------ contract
    @property
    def num_classes(self) -> int:
        """Number of classes K (labels hold 0..K-1 and 255)."""
        return len(self.classes)

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: sample randomness is ``f(seed, epoch, index)``."""
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.files)

    def rng(self, index: int) -> np.random.Generator:
        """The generator the transforms of sample ``index`` draw from in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, index])

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {self.name} with {len(self)} samples")
        image, label, meta = self.load(index)
        sample = {"image": image, "label": label}
        if self.transforms is not None:
            sample = self.transforms(sample, self.rng(index))
        return {
            "image": _image_tensor(sample["image"]),
            "label": torch.from_numpy(np.ascontiguousarray(sample["label"]).astype(np.int64)),
            "meta": meta,
        }

    # ------------------------------------------------------------------ loading
    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Read sample ``index`` untransformed: ``uint8`` HxWx3 image, ``uint8`` train-id label.

        Raises :class:`~seg_data.MissingFileError`, :class:`~seg_data.CorruptFileError` or
        :class:`~seg_data.LabelError` naming the file.
        """
        f = self.files[index]
        image = read_image(f.image)
        if f.label is None:
            raise MissingFileError(f"{self.name}: image {f.image} has no label file")
        label = self.map_label(read_label(f.label), f.label)
        if label.shape != image.shape[:2]:
            hint = ""
            if label.shape == image.shape[:2][::-1]:
                hint = (
                    " (the sizes are transposed: one of the two files is probably stored "
                    "rotated with an EXIF orientation tag, which PKUSeg applies; save both "
                    "upright, or both with the same tag)"
                )
            raise LabelError(
                f"{self.name}: size mismatch: image {f.image} is {image.shape[1]}x{image.shape[0]} "
                f"(WxH) but label {f.label} is {label.shape[1]}x{label.shape[0]}{hint}"
            )
        meta = {
            "filename": str(f.image),
            "label_filename": str(f.label),
            "ori_shape": (int(image.shape[0]), int(image.shape[1])),
            "index": index,
        }
        return image, label, meta

    def map_label(
        self, raw: np.ndarray, path: Path | str = "<array>", lut: np.ndarray | None = None
    ) -> np.ndarray:
        """Stored label values -> ``uint8`` train ids through ``lut`` (default ``label_lut``).

        Values the LUT marks invalid raise :class:`~seg_data.LabelError` naming them and the file.
        """
        lut = self.label_lut if lut is None else lut
        if raw.ndim != 2:
            raise LabelError(f"{self.name}: label {path} has shape {raw.shape}, expected H x W")
        if raw.dtype != np.uint8:
            too_big = raw[(raw < 0) | (raw >= len(lut))]
            if too_big.size:
                self._bad_values(np.unique(too_big), path, lut)
            raw = raw.astype(np.int64)
        mapped = lut[raw]
        if (mapped < 0).any():
            self._bad_values(np.unique(raw[mapped < 0]), path, lut)
        return mapped.astype(np.uint8)

    def _bad_values(self, values: np.ndarray, path: Path | str, lut: np.ndarray) -> None:
        valid = np.flatnonzero(lut >= 0)
        shown = ", ".join(str(int(v)) for v in values[:20]) + (" ..." if len(values) > 20 else "")
        raise LabelError(
            f"{self.name}: label {path} holds values [{shown}] outside the valid stored values "
            f"{_ranges(valid)} ({self.num_classes} classes; ignore is stored as "
            f"{_ranges(np.flatnonzero(lut == IGNORE_INDEX))}). Check that the label "
            "files belong to this dataset / class set (e.g. raw ids vs train ids)."
        )

    def layout_info(self) -> list[str]:
        """Facts about the on-disk layout for the dataset doctor (e.g. which label files exist)."""
        return []

    def orphan_labels(self) -> list[Path]:
        """Label files in the split's label folder that no image of the split uses (doctor)."""
        return []

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(samples={len(self)}, classes={self.num_classes}, "
            f"seed={self.seed}, transforms={self.transforms!r})"
        )


def pair_files(
    name: str,
    images: Sequence[Path],
    label_for: Callable[[Path], Path | Sequence[Path]],
    *,
    strict: bool,
) -> tuple[list[SampleFiles], list[str]]:
    """Pair each image with its label; missing labels raise (``strict``) or are reported.

    ``label_for`` may return candidate paths in order of preference; the first existing wins.
    """
    files: list[SampleFiles] = []
    missing: list[str] = []
    for img in images:
        cands = label_for(img)
        cands = [cands] if isinstance(cands, Path) else list(cands)
        found = next((c for c in cands if c.is_file()), None)
        if found is None:
            missing.append(f"image {img} has no label (expected {cands[0]})")
        else:
            files.append(SampleFiles(img, found))
    if missing and strict:
        shown = "\n  ".join(missing[:10])
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise MissingFileError(
            f"{name}: {len(missing)} of {len(images)} images have no label:\n  {shown}{more}\n"
            "Nothing is skipped silently: restore the labels or remove the images from the split "
            "(python -m seg_data check lists every problem)."
        )
    return files, [f"missing partner: {m}" for m in missing]


def _as_transform(transforms: Any) -> Any:
    if transforms is None:
        return None
    if isinstance(transforms, (list, tuple)):
        return build_transforms(transforms)
    if isinstance(transforms, Compose) or callable(transforms):
        return transforms
    raise TypeError(
        "transforms must be None, a list of one-key dicts, a Compose or a callable(sample, rng); "
        f"got {type(transforms).__name__}"
    )


def _image_tensor(image: np.ndarray) -> torch.Tensor:
    if image.ndim != 3:
        raise ValueError(f"transformed image must be H x W x C, got shape {image.shape}")
    arr = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    return torch.from_numpy(arr)


def _ranges(values: np.ndarray) -> str:
    """[0, 1, 2, 5, 255] -> '0..2, 5, 255'."""
    out: list[str] = []
    vals = [int(v) for v in values]
    i = 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        out.append(str(vals[i]) if i == j else f"{vals[i]}..{vals[j]}")
        i = j + 1
    return ", ".join(out) if out else "(none)"
