"""Pascal Context (Mottaghi et al., CVPR 2014) in mmsegmentation's converted layout.

Layout (VOC2010 images plus the masks written by mmseg's ``tools/dataset_converters/
pascal_context.py`` from ``trainval_merged.json``: values 0..59, 0 = background)::

    root/VOCdevkit/VOC2010/JPEGImages/<id>.jpg
    root/VOCdevkit/VOC2010/SegmentationClassContext/<id>.png
    root/VOCdevkit/VOC2010/ImageSets/SegmentationContext/{train,val}.txt   (4,996 / 5,104)

``num_classes=60`` keeps background as class 0 (mmseg ``PascalContextDataset``);
``num_classes=59`` drops it with ``reduce_zero_label`` (0 -> 255, k -> k-1; mmseg
``PascalContextDataset59``). Papers report either: say which.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._errors import MissingFileError
from ._palette import voc_colormap
from ._registry import register_dataset
from .base import IGNORE_INDEX, SegmentationDataset, pair_files, read_split_file, resolve_root

__all__ = ["CONTEXT_CLASSES", "PascalContext"]

# Index order of the converted masks (mmseg's order).
CONTEXT_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "table", "dog", "horse", "motorbike", "person", "pottedplant", "sheep",
    "sofa", "train", "tvmonitor", "bag", "bed", "bench", "book", "building", "cabinet",
    "ceiling", "cloth", "computer", "cup", "door", "fence", "floor", "flower", "food", "grass",
    "ground", "keyboard", "light", "mountain", "mouse", "curtain", "platform", "sign", "plate",
    "road", "rock", "shelves", "sidewalk", "sky", "snow", "bedclothes", "track", "tree",
    "truck", "wall", "water", "window", "wood",
)  # fmt: skip


@register_dataset("pascal_context")
class PascalContext(SegmentationDataset):
    """Pascal Context, 60 classes (with background) or 59 (``num_classes=59``).

    Args:
        root: ``VOC2010``, ``VOCdevkit`` or the folder containing ``VOCdevkit``.
        split: name of a file in ``ImageSets/SegmentationContext`` (``train``, ``val``).
        num_classes: 60 (background is class 0) or 59 (background ignored).
        strict: False records missing labels in ``.problems`` instead of raising (doctor).
    """

    def __init__(
        self,
        root: str | Path | None,
        *,
        split: str = "train",
        transforms=None,
        seed: int = 0,
        num_classes: int = 60,
        strict: bool = True,
    ) -> None:
        if num_classes not in (59, 60):
            raise ValueError(f"pascal_context: num_classes must be 59 or 60, got {num_classes!r}")
        self.root = resolve_root(
            root, "pascal_context", ("VOC2010", "VOCdevkit/VOC2010"), "SegmentationClassContext"
        )
        self.split = split
        ids = read_split_file(
            self.root / "ImageSets" / "SegmentationContext" / f"{split}.txt", "pascal_context"
        )
        images = [self.root / "JPEGImages" / f"{i.split()[0]}.jpg" for i in ids]
        missing = [p for p in images if not p.is_file()]
        if missing:
            raise MissingFileError(
                f"pascal_context: {len(missing)} images listed in {split}.txt are missing, "
                f"e.g. {missing[0]}"
            )
        ann = self.root / "SegmentationClassContext"
        files, problems = pair_files(
            "pascal_context", images, lambda p: ann / f"{p.stem}.png", strict=strict
        )
        lut = np.full(256, -1, dtype=np.int16)
        if num_classes == 60:
            classes = CONTEXT_CLASSES
            lut[:60] = np.arange(60)
        else:
            classes = CONTEXT_CLASSES[1:]
            lut[0] = IGNORE_INDEX
            lut[1:60] = np.arange(59)
        lut[IGNORE_INDEX] = IGNORE_INDEX
        palette = voc_colormap(61)
        super().__init__(
            files,
            classes=classes,
            palette=palette[:60] if num_classes == 60 else palette[1:60],
            label_lut=lut,
            transforms=transforms,
            seed=seed,
            problems=problems,
        )
