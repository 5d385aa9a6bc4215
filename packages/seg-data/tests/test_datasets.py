"""Datasets built from small files in each official layout, the registry and the contract."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from seg_data import (
    CorruptFileError,
    LabelError,
    MissingFileError,
    collate,
    create_dataset,
    label_id_to_train_id,
    list_datasets,
    train_id_to_label_id,
)

H, W = 24, 32


def _labels(ds) -> set[int]:
    return {int(v) for i in range(len(ds)) for v in np.unique(ds[i]["label"].numpy())}


# ----------------------------------------------------------------- registry


def test_list_datasets_has_all_names():
    assert list_datasets() == sorted(
        ["cityscapes", "ade20k", "voc", "pascal_context", "camvid", "folder", "synthetic"]
    )


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(
        KeyError,
        match=r"unknown dataset 'kitti'; valid names are \['ade20k', 'camvid', 'cityscapes'",
    ):
        create_dataset("kitti", root=".")


def test_unknown_option_names_option(tmp_path, layouts):
    layouts.cityscapes(tmp_path)
    with pytest.raises(TypeError, match=r"no option 'labeltype'.*label_type"):
        create_dataset("cityscapes", root=tmp_path, split="val", labeltype="trainIds")
    with pytest.raises(TypeError, match="no option 'num_class'"):
        create_dataset("synthetic", num_class=3)


# ----------------------------------------------------------------- each layout


def test_cityscapes_labelids_mapped_to_trainids(tmp_path, layouts):
    layouts.cityscapes(tmp_path, trainids=True)
    ds = create_dataset("cityscapes", root=tmp_path, split="val")
    assert len(ds) == 2 and ds.num_classes == 19 and ds.classes[13] == "car"
    assert _labels(ds) == {0, 1, 13, 18, 255}  # ids 7, 8, 26, 33 -> 0, 1, 13, 18; 0, 4 -> 255
    assert ds[0]["meta"]["label_filename"].endswith("_gtFine_labelIds.png")
    for label_type in ("trainIds", "auto"):
        tds = create_dataset("cityscapes", root=tmp_path, split="val", label_type=label_type)
        assert tds[0]["meta"]["label_filename"].endswith("_labelTrainIds.png")
        assert torch.equal(tds[0]["label"], ds[0]["label"])


def test_cityscapes_auto_falls_back_to_labelids(tmp_path, layouts):
    layouts.cityscapes(tmp_path)
    ds = create_dataset("cityscapes", root=tmp_path, split="val", label_type="auto")
    assert ds[1]["meta"]["label_filename"].endswith("_labelIds.png")
    with pytest.raises(MissingFileError, match="labelTrainIds"):
        create_dataset("cityscapes", root=tmp_path, split="val", label_type="trainIds")


def test_cityscapes_reverse_mapping_round_trip():
    ids = np.arange(34, dtype=np.uint8).reshape(2, 17)
    train = label_id_to_train_id(ids)
    back = train_id_to_label_id(train)
    evaluated = np.isin(
        ids, [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
    )
    np.testing.assert_array_equal(back[evaluated], ids[evaluated])
    assert (back[~evaluated] == 0).all()
    np.testing.assert_array_equal(train_id_to_label_id(np.arange(19)), [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33])  # fmt: skip
    with pytest.raises(ValueError, match="19"):
        train_id_to_label_id(np.array([19]))


def test_cityscapes_table_matches_cityscapesscripts():
    labels = pytest.importorskip(
        "cityscapesscripts.helpers.labels", reason="cityscapesscripts not installed"
    )
    ids = np.arange(34)
    ours = label_id_to_train_id(ids)
    ref = np.array([labels.id2label[i].trainId for i in ids])
    ref = np.where((ref < 0) | (ref == 255), 255, ref)
    np.testing.assert_array_equal(ours, ref)
    from seg_data.datasets.cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE

    for t, (name, colour) in enumerate(zip(CITYSCAPES_CLASSES, CITYSCAPES_PALETTE)):
        assert labels.trainId2label[t].name == name
        assert tuple(labels.trainId2label[t].color) == tuple(int(c) for c in colour)


def test_ade20k_reduce_zero_label(tmp_path, layouts):
    layouts.ade(tmp_path)
    ds = create_dataset("ade20k", root=tmp_path, split="val")
    assert ds.num_classes == 150 and ds.classes[0] == "wall"
    assert _labels(ds) == {0, 149, 4, 255}  # 1 -> 0, 150 -> 149, 5 -> 4, 0 -> 255
    direct = create_dataset("ade20k", root=tmp_path / "ADEChallengeData2016", split="validation")
    assert len(direct) == 2
    keep = create_dataset("ade20k", root=tmp_path, split="val", reduce_zero_label=False)
    assert keep.num_classes == 151 and _labels(keep) == {0, 1, 5, 150}


def test_voc_palette_pngs_decode_to_indices(tmp_path, layouts):
    layouts.voc(tmp_path)
    for root in (tmp_path, tmp_path / "VOCdevkit", tmp_path / "VOCdevkit" / "VOC2012"):
        ds = create_dataset("voc", root=root, split="val")
        assert len(ds) == 2 and ds.num_classes == 21
    assert _labels(ds) == {0, 15, 255}
    assert tuple(ds.palette[15]) == (192, 128, 128)  # VOC colour map: person


def test_voc_aug_split_prefers_segmentationclassaug(tmp_path, layouts):
    layouts.voc(tmp_path, aug=True)
    ds = create_dataset("voc", root=tmp_path, split="train_aug")
    names = [ds[i]["meta"]["label_filename"] for i in range(len(ds))]
    assert "SegmentationClass/" in names[0] and "SegmentationClassAug/" in names[1]
    assert 20 in set(np.unique(ds[1]["label"].numpy()))


@pytest.mark.parametrize("num_classes, expected", [(60, {0, 1, 59, 30}), (59, {255, 0, 58, 29})])
def test_pascal_context_60_and_59(tmp_path, layouts, num_classes, expected):
    layouts.context(tmp_path)
    ds = create_dataset("pascal_context", root=tmp_path, split="train", num_classes=num_classes)
    assert ds.num_classes == num_classes == len(ds.palette)
    assert ds.classes[0] == ("background" if num_classes == 60 else "aeroplane")
    assert _labels(ds) == expected


def test_camvid_void_is_ignore_and_segnet_paths(tmp_path, layouts):
    layouts.camvid(tmp_path)
    ds = create_dataset("camvid", root=tmp_path, split="train")
    assert ds.num_classes == 11 and _labels(ds) == {0, 3, 10, 255}
    other = tmp_path / "segnet"
    layouts.camvid(other, absolute=True)
    assert len(create_dataset("camvid", root=other, split="train")) == 2


def test_folder_dataset_splits(tmp_path, layouts):
    layouts.folder(tmp_path / "flat")
    ds = create_dataset("folder", root=tmp_path / "flat", split=None)
    assert ds.classes == ("sky", "road", "car") and len(ds) == 2 and _labels(ds) == {0, 1, 2, 255}
    with pytest.raises(MissingFileError, match="split=None"):
        create_dataset("folder", root=tmp_path / "flat", split="train")
    (tmp_path / "flat" / "train.txt").write_text("img1\n")
    listed = create_dataset("folder", root=tmp_path / "flat", split="train")
    assert len(listed) == 1 and listed[0]["meta"]["filename"].endswith("img1.jpg")
    layouts.folder(tmp_path / "nested", split="val")
    assert len(create_dataset("folder", root=tmp_path / "nested", split="val")) == 2
    void0 = create_dataset("folder", root=tmp_path / "flat", split=None, ignore_value=0)
    assert _labels(void0) == {1, 2, 255}


# ----------------------------------------------------------------- synthetic


def test_synthetic_deterministic_and_split_streams():
    a = create_dataset("synthetic", split="train", num_samples=4, size=48)
    b = create_dataset("synthetic", split="train", num_samples=4, size=48)
    v = create_dataset("synthetic", split="val", num_samples=4, size=48)
    other_seed = create_dataset("synthetic", split="train", num_samples=4, size=48, seed=1)
    for i in range(4):
        assert torch.equal(a[i]["image"], b[i]["image"]) and torch.equal(
            a[i]["label"], b[i]["label"]
        )
        assert not torch.equal(a[i]["image"], v[i]["image"])
        assert not torch.equal(a[i]["image"], other_seed[i]["image"])
    assert not torch.equal(a[0]["label"], a[1]["label"])


def test_synthetic_scenes_have_several_classes_and_options():
    ds = create_dataset("synthetic", num_samples=20, size=(40, 56), num_classes=9)
    assert len(ds) == 20 and ds.num_classes == 9 and len(set(ds.classes)) == 9
    s = ds[3]
    assert s["image"].shape == (3, 40, 56) and s["label"].shape == (40, 56)
    counts = np.zeros(9, int)
    for i in range(20):
        lab = ds[i]["label"].numpy()
        assert len(np.unique(lab)) >= 3  # background + at least two object classes
        counts += np.bincount(lab.ravel(), minlength=9)
    assert (counts > 0).all()
    assert len(create_dataset("synthetic", split="val")) == 100
    with pytest.raises(TypeError, match="takes no root"):
        create_dataset("synthetic", root="/data")
    with pytest.raises(ValueError, match="num_classes"):
        create_dataset("synthetic", num_classes=40)


def test_synthetic_same_hue_pairs_are_not_separable_by_colour():
    """Classes 1 and 2 share a hue: their mean colours are close, their textures differ."""
    ds = create_dataset("synthetic", num_samples=30, size=64)
    pix = {1: [], 2: []}
    for i in range(30):
        img, lab, _ = ds.load(i)
        for k in pix:
            pix[k].append(img[lab == k].astype(float))
    m1, m2 = (np.concatenate(pix[k]).mean(0) for k in pix)
    s1 = np.concatenate(pix[1]).std(0)
    assert np.abs(m1 - m2).max() < s1.min()  # colour distributions overlap


# ----------------------------------------------------------------- the sample contract


@pytest.mark.parametrize("name", ["cityscapes", "ade20k", "voc", "pascal_context", "camvid", "folder", "synthetic"])  # fmt: skip
def test_sample_contract(tmp_path, layouts, name):
    builders = {
        "cityscapes": (layouts.cityscapes, {"split": "val"}),
        "ade20k": (layouts.ade, {"split": "val"}),
        "voc": (layouts.voc, {"split": "val"}),
        "pascal_context": (layouts.context, {"split": "train"}),
        "camvid": (layouts.camvid, {"split": "train"}),
        "folder": (layouts.folder, {"split": None}),
    }
    if name == "synthetic":
        ds = create_dataset(name, num_samples=2, size=(H, W))
    else:
        build, kw = builders[name]
        build(tmp_path)
        ds = create_dataset(name, root=tmp_path, **kw)
    assert ds.ignore_index == 255
    assert isinstance(ds.classes, tuple) and all(isinstance(c, str) for c in ds.classes)
    assert ds.palette.shape == (ds.num_classes, 3) and ds.palette.dtype == np.uint8
    s = ds[1]
    assert s["image"].dtype == torch.float32 and s["image"].shape == (3, H, W)
    assert s["label"].dtype == torch.int64 and s["label"].shape == (H, W)
    assert s["image"].min() >= 0 and s["image"].max() <= 255 and s["image"].max() > 1
    lab = s["label"]
    assert ((lab >= 0) & (lab < ds.num_classes) | (lab == 255)).all()
    meta = s["meta"]
    assert set(meta) == {"filename", "label_filename", "ori_shape", "index"}
    assert meta["ori_shape"] == (H, W) and meta["index"] == 1 and isinstance(meta["filename"], str)
    assert ds[-1]["meta"]["index"] == len(ds) - 1
    with pytest.raises(IndexError):
        ds[len(ds)]
    batch = collate([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, H, W) and batch["label"].shape == (2, H, W)
    assert [m["index"] for m in batch["meta"]] == [0, 1]


# ----------------------------------------------------------------- randomness


TRAIN_TF = [
    {"RandomResize": {"ratio_range": [0.5, 2.0]}},
    {"RandomCrop": {"size": 20}},
    {"RandomFlip": {}},
    {"PhotoMetricDistortion": {}},
    {"Normalize": {}},
    {"Pad": {"size": 20}},
]


def test_sample_depends_on_seed_epoch_index_only():
    ds = create_dataset("synthetic", num_samples=6, size=32, transforms=TRAIN_TF, seed=3)
    again = create_dataset("synthetic", num_samples=6, size=32, transforms=TRAIN_TF, seed=3)
    assert torch.equal(ds[2]["image"], again[2]["image"])
    assert torch.equal(ds[2]["label"], again[2]["label"])
    first = ds[2]["image"]
    ds.set_epoch(1)
    assert ds.epoch == 1 and not torch.equal(ds[2]["image"], first)
    ds.set_epoch(0)
    assert torch.equal(ds[2]["image"], first)  # resume: epoch 0 again gives epoch 0's sample
    np.testing.assert_array_equal(ds.rng(2).random(3), np.random.default_rng([3, 0, 2]).random(3))


def _epoch_batches(ds, loader, epochs):
    out = []
    for e in epochs:
        ds.set_epoch(e)
        out.append(torch.cat([b["image"] for b in loader]))
    return out


def test_worker_count_does_not_change_samples_and_set_epoch_reaches_workers():
    ds = create_dataset("synthetic", num_samples=4, size=24, transforms=TRAIN_TF)
    kw = {"batch_size": 2, "collate_fn": collate}
    ref = _epoch_batches(ds, torch.utils.data.DataLoader(ds, **kw), [0, 1])
    loader = torch.utils.data.DataLoader(ds, num_workers=2, persistent_workers=True, **kw)
    got = _epoch_batches(ds, loader, [0, 1])
    assert torch.equal(ref[0], got[0]) and torch.equal(ref[1], got[1])
    assert not torch.equal(ref[0], ref[1])


# ----------------------------------------------------------------- bad input errors


def test_missing_root(tmp_path):
    with pytest.raises(MissingFileError, match=r"root does not exist: .*nowhere"):
        create_dataset("cityscapes", root=tmp_path / "nowhere")
    with pytest.raises(MissingFileError, match="needs root"):
        create_dataset("ade20k")
    with pytest.raises(MissingFileError, match="no 'JPEGImages' found"):
        create_dataset("voc", root=tmp_path, split="val")


def test_missing_split(tmp_path, layouts):
    layouts.voc(tmp_path)
    with pytest.raises(
        MissingFileError, match=r"split file not found: .*train\.txt.*present: val\.txt"
    ):
        create_dataset("voc", root=tmp_path, split="train")
    layouts.context(tmp_path / "ctx")
    with pytest.raises(MissingFileError, match=r"SegmentationContext[/\\]val\.txt"):
        create_dataset("pascal_context", root=tmp_path / "ctx", split="val")
    layouts.camvid(tmp_path / "cv")
    with pytest.raises(MissingFileError, match=r"split file not found: .*test\.txt"):
        create_dataset("camvid", root=tmp_path / "cv", split="test")
    layouts.cityscapes(tmp_path / "cs")
    with pytest.raises(MissingFileError, match=r"leftImg8bit[/\\]train .*splits present: val"):
        create_dataset("cityscapes", root=tmp_path / "cs", split="train")


def test_image_without_label_names_the_image(tmp_path, layouts):
    layouts.cityscapes(tmp_path)
    next((tmp_path / "gtFine").rglob("aachen*_labelIds.png")).unlink()
    with pytest.raises(MissingFileError, match=r"1 of 2 images have no label:\n  image .*aachen_000000_000000_leftImg8bit\.png"):  # fmt: skip
        create_dataset("cityscapes", root=tmp_path, split="val")
    layouts.camvid(tmp_path / "cv")
    next((tmp_path / "cv" / "trainannot").glob("*.png")).unlink()
    with pytest.raises(MissingFileError, match="has no label"):
        create_dataset("camvid", root=tmp_path / "cv", split="train")
    layouts.folder(tmp_path / "f")
    (tmp_path / "f" / "masks" / "img0.png").unlink()
    with pytest.raises(MissingFileError, match=r"img0\.jpg has no label"):
        create_dataset("folder", root=tmp_path / "f", split=None)


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty"])
def test_corrupt_image_names_the_file(tmp_path, layouts, how):
    layouts.ade(tmp_path)
    path = sorted((tmp_path / "ADEChallengeData2016" / "images").rglob("*.jpg"))[0]
    data = path.read_bytes()
    path.write_bytes(
        {"truncated": data[: len(data) // 2], "garbage": b"not an image" * 10, "empty": b""}[how]
    )
    ds = create_dataset("ade20k", root=tmp_path, split="val")
    with pytest.raises(CorruptFileError, match=re.escape(f"cannot decode image {path}")):
        ds[0]


def test_corrupt_label_names_the_file(tmp_path, layouts):
    layouts.voc(tmp_path)
    path = tmp_path / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2007_000000.png"
    path.write_bytes(path.read_bytes()[:60])
    ds = create_dataset("voc", root=tmp_path, split="val")
    with pytest.raises(CorruptFileError, match=re.escape(f"cannot decode label {path}")):
        ds[0]


def test_size_mismatch_names_both_files(tmp_path, layouts):
    layouts.camvid(tmp_path)
    img = tmp_path / "train" / "0001TP_000000.png"
    layouts.save_image(img, 0, size=(H + 2, W))
    ds = create_dataset("camvid", root=tmp_path, split="train")
    with pytest.raises(LabelError, match=rf"size mismatch: image {img} is {W}x{H + 2} .*but label .*0001TP_000000\.png is {W}x{H}"):  # fmt: skip
        ds[0]


def test_label_values_out_of_range_name_values_and_file(tmp_path, layouts):
    layouts.cityscapes(tmp_path)
    lbl = next((tmp_path / "gtFine").rglob("aachen*_labelIds.png"))
    layouts.save_label(lbl, layouts.label_from([7, 40, 77], 0))
    ds = create_dataset("cityscapes", root=tmp_path, split="val")
    with pytest.raises(LabelError, match=rf"{lbl} holds values \[40, 77\] outside .*0\.\.33"):
        ds[0]
    layouts.voc(tmp_path / "v")
    lbl = tmp_path / "v" / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2007_000001.png"
    layouts.save_label(lbl, layouts.label_from([0, 21], 1))
    with pytest.raises(
        LabelError, match=r"values \[21\] outside the valid stored values 0\.\.20, 255"
    ):
        create_dataset("voc", root=tmp_path / "v", split="val")[1]


def test_colour_mask_is_refused(tmp_path, layouts):
    layouts.folder(tmp_path)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "masks" / "img1.png")
    ds = create_dataset("folder", root=tmp_path, split=None)
    with pytest.raises(LabelError, match="is a RGB image; expected a single-channel PNG"):
        ds[1]
