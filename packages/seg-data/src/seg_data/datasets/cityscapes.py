"""Cityscapes (Cordts et al., CVPR 2016), fine annotations, 19 evaluation classes.

Layout, as extracted from ``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip``::

    root/leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    root/gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
    root/gtFine/.../*_gtFine_labelTrainIds.png   (optional, made by cityscapesscripts'
                                                  createTrainIdLabelImgs, used by mmseg)

Labels: the official ``labelIds -> trainIds`` table (ids 7, 8, 11, 12, 13, 17, 19, 20, 21,
22, 23, 24, 25, 26, 27, 28, 31, 32, 33 -> 0..18, every other id -> 255) is applied by a
lookup table on the fly. ``label_type="labelIds"`` (default) always does so: the labelIds
files are in every download and are what the official evaluation reads. ``"trainIds"`` reads
``*_labelTrainIds.png`` instead and ``"auto"`` prefers them when present. The two agree
whenever the trainIds files were generated from full-resolution labelIds.

For test-server submissions map predictions back with :func:`train_id_to_label_id`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._errors import MissingFileError
from ._registry import register_dataset
from .base import IGNORE_INDEX, SegmentationDataset, identity_lut, pair_files, resolve_root

__all__ = [
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_LABEL_IDS",
    "CITYSCAPES_PALETTE",
    "Cityscapes",
    "label_id_to_train_id",
    "train_id_to_label_id",
]

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip
#: labelId of each trainId 0..18 (the official table, cityscapesscripts/helpers/labels.py).
CITYSCAPES_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
CITYSCAPES_PALETTE = np.array(
    [
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
        (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
        (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
        (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ],
    dtype=np.uint8,
)  # fmt: skip
_NUM_LABEL_IDS = 34  # labelIds 0..33 are valid stored values


def _label_id_lut() -> np.ndarray:
    lut = np.full(256, -1, dtype=np.int16)
    lut[:_NUM_LABEL_IDS] = IGNORE_INDEX
    lut[list(CITYSCAPES_LABEL_IDS)] = np.arange(len(CITYSCAPES_LABEL_IDS))
    return lut


def label_id_to_train_id(label_ids: np.ndarray) -> np.ndarray:
    """Map a Cityscapes labelIds array to trainIds (0..18, 255 = ignore)."""
    label_ids = np.asarray(label_ids)
    bad = (label_ids < 0) | (label_ids >= _NUM_LABEL_IDS)
    if bad.any():
        raise ValueError(f"labelIds must be in 0..33, got values {np.unique(label_ids[bad])}")
    return _label_id_lut()[label_ids].astype(np.uint8)


def train_id_to_label_id(train_ids: np.ndarray) -> np.ndarray:
    """Map trainIds (0..18) to Cityscapes labelIds for the test server; 255 becomes 0.

    Accepts numpy arrays or anything ``np.asarray`` takes (e.g. a CPU tensor).
    """
    train_ids = np.asarray(train_ids)
    lut = np.full(256, -1, dtype=np.int16)
    lut[: len(CITYSCAPES_LABEL_IDS)] = CITYSCAPES_LABEL_IDS
    lut[IGNORE_INDEX] = 0  # "unlabeled"
    bad = (train_ids < 0) | (train_ids > 255)
    if not bad.any():
        bad = lut[train_ids.astype(np.int64)] < 0
    if bad.any():
        raise ValueError(
            f"trainIds must be in 0..18 or 255, got values {np.unique(train_ids[bad])}"
        )
    return lut[train_ids.astype(np.int64)].astype(np.uint8)


@register_dataset("cityscapes")
class Cityscapes(SegmentationDataset):
    """Cityscapes fine annotations (19 classes).

    Args:
        root: folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: ``train`` (2975), ``val`` (500) or ``test`` (1525; its public labels are void).
        label_type: ``labelIds`` (default; mapped by the official table), ``trainIds`` (read
            ``*_labelTrainIds.png``) or ``auto`` (trainIds when present, else labelIds).
        strict: False records missing labels in ``.problems`` instead of raising (doctor).
    """

    def __init__(
        self,
        root: str | Path | None,
        *,
        split: str = "train",
        transforms=None,
        seed: int = 0,
        label_type: str = "labelIds",
        strict: bool = True,
    ) -> None:
        if label_type not in ("labelIds", "trainIds", "auto"):
            raise ValueError(
                f"cityscapes: label_type must be 'labelIds', 'trainIds' or 'auto', got {label_type!r}"
            )
        self.root = resolve_root(root, "cityscapes", ("cityscapes",), "leftImg8bit")
        self.split, self.label_type = split, label_type
        img_dir = self.root / "leftImg8bit" / split
        gt_dir = self.root / "gtFine" / split
        if not img_dir.is_dir():
            present = sorted(p.name for p in (self.root / "leftImg8bit").iterdir() if p.is_dir())
            raise MissingFileError(
                f"cityscapes: split folder not found: {img_dir} (splits present: "
                f"{', '.join(present) or 'none'}; images come from leftImg8bit_trainvaltest.zip)"
            )
        if not gt_dir.is_dir():
            raise MissingFileError(
                f"cityscapes: label folder not found: {gt_dir} (extract gtFine_trainvaltest.zip "
                f"into {self.root})"
            )
        images = sorted(img_dir.glob("*/*_leftImg8bit.png"))
        if not images:
            raise MissingFileError(
                f"cityscapes: no images matching {img_dir}/<city>/*_leftImg8bit.png"
            )

        def label_for(img: Path) -> list[Path]:
            stem = img.name[: -len("_leftImg8bit.png")]
            base = gt_dir / img.parent.name / stem
            ids, train = (
                Path(f"{base}_gtFine_labelIds.png"),
                Path(f"{base}_gtFine_labelTrainIds.png"),
            )
            return {"labelIds": [ids], "trainIds": [train], "auto": [train, ids]}[label_type]

        files, problems = pair_files("cityscapes", images, label_for, strict=strict)
        self._ids_lut, self._train_lut = _label_id_lut(), identity_lut(len(CITYSCAPES_CLASSES))
        super().__init__(
            files,
            classes=CITYSCAPES_CLASSES,
            palette=CITYSCAPES_PALETTE,
            label_lut=self._ids_lut if label_type == "labelIds" else self._train_lut,
            transforms=transforms,
            seed=seed,
            problems=problems,
        )

    def map_label(
        self, raw: np.ndarray, path: Path | str = "<array>", lut: np.ndarray | None = None
    ) -> np.ndarray:
        if lut is None:  # with label_type="auto" each file's name says what it holds
            train = str(path).endswith("_labelTrainIds.png")
            lut = self._train_lut if train else self._ids_lut
        return super().map_label(raw, path, lut)

    def orphan_labels(self) -> list[Path]:
        gt, img = self.root / "gtFine" / self.split, self.root / "leftImg8bit" / self.split
        suffix = "_gtFine_labelIds.png"
        return [
            p
            for p in sorted(gt.glob(f"*/*{suffix}"))
            if not (img / p.parent.name / f"{p.name[: -len(suffix)]}_leftImg8bit.png").is_file()
        ]

    def layout_info(self) -> list[str]:
        gt = self.root / "gtFine" / self.split
        n_ids = sum(1 for _ in gt.glob("*/*_gtFine_labelIds.png"))
        n_train = sum(1 for _ in gt.glob("*/*_gtFine_labelTrainIds.png"))
        return [
            f"gtFine/{self.split}: {n_ids} *_labelIds.png, {n_train} *_labelTrainIds.png "
            f"(label_type={self.label_type!r} reads "
            f"{'labelIds mapped by the official table' if self.label_type == 'labelIds' else 'trainIds files' if self.label_type == 'trainIds' else 'trainIds when present, else labelIds'})"
        ]
