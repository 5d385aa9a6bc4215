"""CamVid (Brostow et al., 2008) as distributed with the SegNet tutorial, 11 classes.

Layout::

    root/{train,val,test}.txt              one "IMAGE LABEL" pair per line
    root/{train,val,test}/*.png|jpg        images (480x360)
    root/{train,val,test}annot/*.png       labels: 0..10 = classes, 11 = void

Pair paths are relative to ``root``. The SegNet tutorial's own split files hold absolute
paths such as ``/SegNet/CamVid/train/0001TP_006690.png``: when such a path does not exist,
its last two components are looked up under ``root``. Void (11) maps to 255.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._errors import MissingFileError
from ._registry import register_dataset
from .base import SampleFiles, SegmentationDataset, identity_lut, read_split_file, resolve_root

__all__ = ["CAMVID_CLASSES", "CAMVID_PALETTE", "CamVid"]

CAMVID_CLASSES = (
    "sky", "building", "pole", "road", "pavement", "tree", "signsymbol", "fence", "car",
    "pedestrian", "bicyclist",
)  # fmt: skip
# Colours of the SegNet tutorial's CamVid class list.
CAMVID_PALETTE = np.array(
    [
        (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
        (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
    ],
    dtype=np.uint8,
)  # fmt: skip
CAMVID_VOID = 11


def _resolve(root: Path, entry: str) -> Path:
    p = Path(entry)
    if not p.is_absolute():
        return root / p
    if p.exists():
        return p
    return root / Path(*p.parts[-2:])


@register_dataset("camvid")
class CamVid(SegmentationDataset):
    """CamVid, 11 classes (SegNet tutorial version: 367 train / 101 val / 233 test).

    Args:
        root: the folder holding ``train.txt``, ``val.txt``, ``test.txt``.
        split: ``train``, ``val``, ``test`` or any other ``<split>.txt`` in ``root``.
        strict: False records missing files in ``.problems`` instead of raising (doctor).
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
        base = resolve_root(root, "camvid", (), ".")
        self.root = next(
            (d for d in (base, base / "CamVid", base / "camvid") if (d / f"{split}.txt").is_file()),
            base,
        )
        self.split = split
        split_file = self.root / f"{split}.txt"
        lines = read_split_file(split_file, "camvid")
        files: list[SampleFiles] = []
        problems: list[str] = []
        for n, line in enumerate(lines, 1):
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(
                    f"camvid: {split_file} line {n} must be 'IMAGE LABEL', got {line!r}"
                )
            img, lbl = _resolve(self.root, parts[0]), _resolve(self.root, parts[1])
            if not img.is_file():
                problems.append(f"missing file: image {img} listed in {split_file} line {n}")
            elif not lbl.is_file():
                problems.append(f"missing partner: image {img} has no label (expected {lbl})")
            else:
                files.append(SampleFiles(img, lbl))
        if problems and strict:
            shown = "\n  ".join(problems[:10])
            raise MissingFileError(
                f"camvid: {len(problems)} of {len(lines)} pairs in {split_file} are incomplete:\n"
                f"  {shown}"
            )
        super().__init__(
            files,
            classes=CAMVID_CLASSES,
            palette=CAMVID_PALETTE,
            label_lut=identity_lut(len(CAMVID_CLASSES), extra_ignore=(CAMVID_VOID,)),
            transforms=transforms,
            seed=seed,
            problems=problems,
        )
