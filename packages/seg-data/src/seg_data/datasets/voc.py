"""Pascal VOC 2012 segmentation (Everingham et al.), 21 classes, and the SBD "aug" set.

Layout of ``VOCtrainval_11-May-2012.tar``::

    root/VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    root/VOCdevkit/VOC2012/SegmentationClass/<id>.png        (palette PNGs: index = class,
                                                             255 = ignore border)
    root/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt

``root`` may be ``VOC2012``, ``VOCdevkit`` or the folder containing ``VOCdevkit``. The split
file is ``ImageSets/Segmentation/<split>.txt`` for any ``split``. Splits whose name contains
``aug`` (the SBD-augmented set: ``train_aug`` with 10,582 images as distributed with DeepLab,
or mmseg's ``aug``) take each label from ``SegmentationClassAug/<id>.png`` when it exists and
from ``SegmentationClass/<id>.png`` otherwise.
"""

from __future__ import annotations

from pathlib import Path

from .._errors import MissingFileError
from ._palette import voc_colormap
from ._registry import register_dataset
from .base import SegmentationDataset, identity_lut, pair_files, read_split_file, resolve_root

__all__ = ["VOC_CLASSES", "PascalVOC"]

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


@register_dataset("voc")
class PascalVOC(SegmentationDataset):
    """Pascal VOC 2012 (21 classes incl. background, 255 = ignore).

    Args:
        root: ``VOC2012``, ``VOCdevkit`` or the folder containing ``VOCdevkit``.
        split: name of a file in ``ImageSets/Segmentation`` (``train`` 1,464, ``val`` 1,449,
            ``train_aug`` 10,582 with SBD).
        strict: False records missing labels in ``.problems`` instead of raising (doctor).
    """

    def __init__(
        self,
        root: str | Path | None,
        *,
        split: str = "train",
        transforms=None,
        seed: int = 0,
        strict: bool = True,
    ) -> None:
        self.root = resolve_root(root, "voc", ("VOC2012", "VOCdevkit/VOC2012"), "JPEGImages")
        self.split = split
        ids = read_split_file(self.root / "ImageSets" / "Segmentation" / f"{split}.txt", "voc")
        label_dirs = ["SegmentationClass"]
        if "aug" in split:
            label_dirs.insert(0, "SegmentationClassAug")
        if not any((self.root / d).is_dir() for d in label_dirs):
            raise MissingFileError(
                f"voc: label folder not found: {self.root / label_dirs[0]}"
                + (
                    " (the SBD augmented masks, e.g. SegmentationClassAug.zip)"
                    if "aug" in split
                    else ""
                )
            )
        images = [self.root / "JPEGImages" / f"{i.split()[0]}.jpg" for i in ids]
        missing = [p for p in images if not p.is_file()]
        if missing:
            raise MissingFileError(
                f"voc: {len(missing)} images listed in {split}.txt are missing, e.g. {missing[0]}"
            )
        files, problems = pair_files(
            "voc",
            images,
            lambda p: [self.root / d / f"{p.stem}.png" for d in label_dirs],
            strict=strict,
        )
        super().__init__(
            files,
            classes=VOC_CLASSES,
            palette=voc_colormap(len(VOC_CLASSES)),
            label_lut=identity_lut(len(VOC_CLASSES)),
            transforms=transforms,
            seed=seed,
            problems=problems,
        )
