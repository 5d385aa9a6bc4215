"""ADE20K SceneParsing (Zhou et al., CVPR 2017), 150 classes.

Layout of ``ADEChallengeData2016.zip``::

    root/images/{training,validation}/ADE_*.jpg
    root/annotations/{training,validation}/ADE_*.png   (0 = other, 1..150 = classes)

``root`` may be ``ADEChallengeData2016`` or the folder containing it. With
``reduce_zero_label=True`` (default, as every benchmark) 0 -> 255 (ignore) and k -> k-1, giving
150 classes; ``False`` keeps 0 as a 151st class "other" at index 0.
Class names follow ``objectInfo150`` (first name of each entry); colours are the VOC colour map.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._errors import MissingFileError
from ._palette import voc_colormap
from ._registry import register_dataset
from .base import IGNORE_INDEX, SegmentationDataset, pair_files, resolve_root

__all__ = ["ADE20K", "ADE20K_CLASSES"]

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug",
    "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

_SPLITS = {
    "train": "training",
    "training": "training",
    "val": "validation",
    "validation": "validation",
}


@register_dataset("ade20k")
class ADE20K(SegmentationDataset):
    """ADE20K SceneParsing (150 classes with ``reduce_zero_label``).

    Args:
        root: ``ADEChallengeData2016`` or its parent.
        split: ``train``/``training`` (20,210) or ``val``/``validation`` (2,000).
        reduce_zero_label: 0 -> 255, k -> k-1 (default True).
        strict: False records missing labels in ``.problems`` instead of raising (doctor).
    """

    def __init__(
        self,
        root: str | Path | None,
        *,
        split: str = "train",
        transforms=None,
        seed: int = 0,
        reduce_zero_label: bool = True,
        strict: bool = True,
    ) -> None:
        if split not in _SPLITS:
            raise ValueError(f"ade20k: unknown split {split!r}; valid: {', '.join(_SPLITS)}")
        self.root = resolve_root(root, "ade20k", ("ADEChallengeData2016",), "images")
        self.split = split
        folder = _SPLITS[split]
        img_dir, ann_dir = self.root / "images" / folder, self.root / "annotations" / folder
        for d in (img_dir, ann_dir):
            if not d.is_dir():
                raise MissingFileError(
                    f"ade20k: folder not found: {d} (from ADEChallengeData2016.zip)"
                )
        images = sorted(img_dir.glob("*.jpg"))
        if not images:
            raise MissingFileError(f"ade20k: no *.jpg images in {img_dir}")
        self._ann_dir, self._img_dir = ann_dir, img_dir
        files, problems = pair_files(
            "ade20k", images, lambda p: ann_dir / f"{p.stem}.png", strict=strict
        )
        lut = np.full(256, -1, dtype=np.int16)
        if reduce_zero_label:
            classes = ADE20K_CLASSES
            lut[0] = IGNORE_INDEX
            lut[1:151] = np.arange(150)
        else:
            classes = ("other", *ADE20K_CLASSES)
            lut[:151] = np.arange(151)
        lut[IGNORE_INDEX] = IGNORE_INDEX
        super().__init__(
            files,
            classes=classes,
            palette=voc_colormap(len(classes) + 1)[1:],
            label_lut=lut,
            transforms=transforms,
            seed=seed,
            problems=problems,
        )

    def orphan_labels(self) -> list[Path]:
        return [
            p
            for p in sorted(self._ann_dir.glob("*.png"))
            if not (self._img_dir / f"{p.stem}.jpg").is_file()
        ]
