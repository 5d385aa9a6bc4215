"""Against the real samples in <repo>/../shared/data (skipped when that folder is absent)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from seg_data import check_dataset, create_dataset, read_label
from seg_data.datasets.ade20k import ADE20K_CLASSES


def test_cityscapes_labelids_agree_with_shipped_trainids(layouts):
    root = layouts.shared("fixtures", "cityscapes")
    ids = create_dataset("cityscapes", root=root, split="val")
    train = create_dataset("cityscapes", root=root, split="val", label_type="trainIds")
    assert len(ids) == len(train) == 1
    a, b = ids[0], train[0]
    assert a["image"].shape == (3, 128, 256) and a["meta"]["ori_shape"] == (128, 256)
    agreement = (a["label"] == b["label"]).float().mean().item()
    assert agreement >= 0.99, agreement
    assert agreement < 1.0  # the fixture's trainIds file was resized separately (README)
    assert set(a["label"].unique().tolist()) <= set(range(19)) | {255}


def test_ade20k_three_images_with_reduce_zero_label(layouts):
    root = layouts.shared("fixtures", "ade20k")
    ds = create_dataset("ade20k", root=root, split="val")
    assert len(ds) == 3
    for i in range(3):
        s = ds[i]
        raw = read_label(s["meta"]["label_filename"]).astype(np.int64)
        expected = np.where(raw == 0, 255, raw - 1)
        np.testing.assert_array_equal(s["label"].numpy(), expected)
        assert s["image"].shape[1:] == raw.shape


def test_ade20k_class_names_match_objectinfo150(layouts):
    path = layouts.shared("fixtures", "ade20k", "objectInfo150.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(ADE20K_CLASSES) == 150
    for ours, row in zip(ADE20K_CLASSES, rows):
        # the csv joins words and synonyms with ';' ("chest;of;drawers;chest;bureau;dresser")
        assert f";{ours.replace(' ', ';')};" in f";{row['Name']};", (ours, row["Name"])
    assert [r["Name"].split(";")[0] for r in rows][:5] == list(ADE20K_CLASSES[:5])


def test_voc_masks_decode_to_indices(layouts):
    root = layouts.shared("fixtures", "voc")
    ds = create_dataset("voc", root=root, split="val")
    assert len(ds) == 3
    got = {s["meta"]["filename"].rsplit("/", 1)[-1]: set(s["label"].unique().tolist()) for s in ds}
    assert got == {
        "2011_000003.jpg": {0, 5, 15, 255},
        "2011_000006.jpg": {0, 9, 15, 18, 255},
        "2011_000025.jpg": {0, 6, 7},
    }
    names = (root / "class_names.txt").read_text().split("\n")
    assert len(names) == ds.num_classes == 21
    with Image.open(root / "VOCdevkit/VOC2012/SegmentationClass/2011_000003.png") as im:
        assert im.mode == "P"  # decoded by index, not by colour


@pytest.mark.parametrize("split, n", [("train", 367), ("val", 101), ("test", 233)])
def test_camvid_splits(layouts, split, n):
    root = layouts.shared("camvid")
    ds = create_dataset("camvid", root=root, split=split)
    assert len(ds) == n
    s = ds[n // 2]
    assert s["image"].shape == (3, 360, 480) and s["label"].shape == (360, 480)
    assert set(s["label"].unique().tolist()) <= set(range(11)) | {255}


def test_camvid_void_maps_to_ignore(layouts):
    root = layouts.shared("camvid")
    ds = create_dataset("camvid", root=root, split="val")
    raw = read_label(ds.files[0].label)
    lab = ds[0]["label"].numpy()
    assert (raw == 11).any()
    np.testing.assert_array_equal(lab == 255, raw == 11)
    np.testing.assert_array_equal(lab[raw != 11], raw[raw != 11])


def test_doctor_on_real_cityscapes_fixture(layouts):
    root = layouts.shared("fixtures", "cityscapes")
    report = check_dataset("cityscapes", root, split="val")
    assert report.ok, report.summary()
    assert report.num_pairs == report.num_checked == 1
    assert "1 *_labelIds.png, 1 *_labelTrainIds.png" in report.info[0]
    assert report.pixel_counts.sum() + report.ignore_pixels == 128 * 256
    assert report.pixel_counts[0] > 0  # road


def test_training_pipeline_on_real_image(layouts):
    root = layouts.shared("fixtures", "cityscapes")
    ds = create_dataset(
        "cityscapes",
        root=root,
        split="val",
        transforms=[
            {"RandomResize": {"scale": [512, 256], "ratio_range": [0.5, 2.0]}},
            {"RandomCrop": {"size": [97, 129], "cat_max_ratio": 0.75}},
            {"RandomFlip": {"prob": 0.5}},
            {"PhotoMetricDistortion": {}},
            {"Normalize": {}},
            {"Pad": {"size": [97, 129]}},
        ],
    )
    s = ds[0]
    assert s["image"].shape == (3, 97, 129) and s["label"].shape == (97, 129)
    assert torch.isfinite(s["image"]).all() and s["image"].abs().max() < 3
