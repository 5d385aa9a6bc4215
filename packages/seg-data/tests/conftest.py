"""Shared fixtures: small files in each official layout, and the real data path."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[3]
SHARED_DATA = REPO.parent / "shared" / "data"

H, W = 24, 32  # small images everywhere


def shared(*parts: str) -> Path:
    """A path under ``<repo>/../shared/data``, skipping the test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} (only present in the PKUSeg dev setup)")
    return path


def save_image(
    path: Path, seed: int, size: tuple[int, int] = (H, W), fmt: str | None = None
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path, format=fmt)


def save_label(path: Path, values: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(values.astype(np.uint8), mode="L")
    if palette:
        im = im.convert("P")
        im.putpalette(np.random.default_rng(0).integers(0, 256, 768, dtype=np.uint8).tolist())
    im.save(path)


def label_from(values: list[int], seed: int, size: tuple[int, int] = (H, W)) -> np.ndarray:
    """A label made of horizontal bands of the given values (every value present)."""
    rng = np.random.default_rng(seed)
    out = np.empty(size, dtype=np.uint8)
    edges = np.linspace(0, size[0], len(values) + 1).astype(int)
    for v, (a, b) in zip(rng.permutation(values), itertools.pairwise(edges)):
        out[a:b] = v
    return out


def make_cityscapes(root: Path, split: str = "val", n: int = 2, trainids: bool = False) -> Path:
    for i in range(n):
        city = "aachen" if i % 2 == 0 else "bochum"
        stem = f"{city}_000000_{i:06d}"
        save_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", i)
        ids = label_from([0, 7, 8, 26, 33, 4], i)
        gt = root / "gtFine" / split / city
        save_label(gt / f"{stem}_gtFine_labelIds.png", ids)
        if trainids:
            lut = np.full(256, 255, np.uint8)
            lut[[7, 8, 26, 33]] = [0, 1, 13, 18]
            save_label(gt / f"{stem}_gtFine_labelTrainIds.png", lut[ids])
    return root


def make_ade(root: Path, split: str = "validation", n: int = 2) -> Path:
    base = root / "ADEChallengeData2016"
    for i in range(n):
        save_image(base / "images" / split / f"ADE_val_{i:08d}.jpg", i)
        save_label(
            base / "annotations" / split / f"ADE_val_{i:08d}.png", label_from([0, 1, 150, 5], i)
        )
    return root


def make_voc(root: Path, n: int = 2, aug: bool = False) -> Path:
    base = root / "VOCdevkit" / "VOC2012"
    ids = [f"2007_{i:06d}" for i in range(n)]
    for i, name in enumerate(ids):
        save_image(base / "JPEGImages" / f"{name}.jpg", i)
        save_label(
            base / "SegmentationClass" / f"{name}.png", label_from([0, 15, 255], i), palette=True
        )
    (base / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    if aug:
        extra = "2008_000001"
        save_image(base / "JPEGImages" / f"{extra}.jpg", 9)
        save_label(base / "SegmentationClassAug" / f"{extra}.png", label_from([0, 20], 9))
        (base / "ImageSets" / "Segmentation" / "train_aug.txt").write_text(f"{ids[0]}\n{extra}\n")
    return root


def make_context(root: Path, n: int = 2) -> Path:
    base = root / "VOCdevkit" / "VOC2010"
    ids = [f"2008_{i:06d}" for i in range(n)]
    for i, name in enumerate(ids):
        save_image(base / "JPEGImages" / f"{name}.jpg", i)
        save_label(base / "SegmentationClassContext" / f"{name}.png", label_from([0, 1, 59, 30], i))
    (base / "ImageSets" / "SegmentationContext").mkdir(parents=True, exist_ok=True)
    (base / "ImageSets" / "SegmentationContext" / "train.txt").write_text("\n".join(ids) + "\n")
    return root


def make_camvid(root: Path, n: int = 2, absolute: bool = False) -> Path:
    lines = []
    for i in range(n):
        save_image(root / "train" / f"0001TP_{i:06d}.png", i)
        save_label(root / "trainannot" / f"0001TP_{i:06d}.png", label_from([0, 3, 10, 11], i))
        prefix = "/SegNet/CamVid/" if absolute else ""
        lines.append(f"{prefix}train/0001TP_{i:06d}.png {prefix}trainannot/0001TP_{i:06d}.png")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return root


def make_folder(root: Path, n: int = 2, split: str | None = None) -> Path:
    sub = (split,) if split else ()
    for i in range(n):
        save_image(root.joinpath("images", *sub, f"img{i}.jpg"), i)
        save_label(root.joinpath("masks", *sub, f"img{i}.png"), label_from([0, 1, 2, 255], i))
    (root / "classes.txt").write_text("sky\nroad\ncar\n")
    return root


@pytest.fixture
def layouts() -> SimpleNamespace:
    """Builders of small datasets in their official layouts (call with a tmp folder)."""
    return SimpleNamespace(
        cityscapes=make_cityscapes,
        ade=make_ade,
        voc=make_voc,
        context=make_context,
        camvid=make_camvid,
        folder=make_folder,
        save_image=save_image,
        save_label=save_label,
        label_from=label_from,
        shared=shared,
    )
