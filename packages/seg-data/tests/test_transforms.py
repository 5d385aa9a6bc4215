"""Joint transforms: label integrity, cat_max_ratio, seeding, mmseg semantics, config errors."""

from __future__ import annotations

import numpy as np
import pytest

from seg_data import build_transforms, list_transforms
from seg_data.transforms import (
    Normalize,
    Pad,
    PhotoMetricDistortion,
    RandomCrop,
    RandomFlip,
    RandomResize,
    Resize,
    ResizeShortSide,
    hsv_to_rgb,
    keep_ratio_size,
    resize_label,
    rgb_to_hsv,
)

DESIGN_SPEC = [
    {"RandomResize": {"scale": [2048, 1024], "ratio_range": [0.5, 2.0]}},
    {"RandomCrop": {"size": [769, 769], "cat_max_ratio": 0.75}},
    {"RandomFlip": {"prob": 0.5}},
    {"PhotoMetricDistortion": {}},
    {"Normalize": {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]}},
    {"Pad": {"size": [769, 769]}},
]


def _sample(h: int = 37, w: int = 53, values=(0, 3, 7, 255), seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        "label": rng.choice(np.array(values, dtype=np.uint8), size=(h, w)),
    }


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ----------------------------------------------------------------- registry / config errors


def test_registry_lists_every_transform():
    assert set(list_transforms()) >= {
        "RandomResize", "RandomCrop", "RandomFlip", "PhotoMetricDistortion", "Normalize", "Pad",
        "Resize", "ResizeShortSide",
    }  # fmt: skip


def test_design_pipeline_builds_and_runs_to_fixed_size():
    pipe = build_transforms(
        [dict(DESIGN_SPEC[0]), {"RandomCrop": {"size": [64, 64], "cat_max_ratio": 0.75}}, *DESIGN_SPEC[2:5], {"Pad": {"size": [64, 64]}}]
    )  # fmt: skip
    assert len(pipe) == 6
    out = pipe(_sample(40, 80), _rng())
    assert out["image"].shape == (64, 64, 3) and out["image"].dtype == np.float32
    assert out["label"].shape == (64, 64) and out["label"].dtype == np.uint8
    # the design document's exact spec also builds
    assert len(build_transforms(DESIGN_SPEC)) == 6


def test_unknown_transform_lists_valid_names():
    with pytest.raises(KeyError) as e:
        build_transforms([{"RandomRotate": {}}])
    assert "RandomRotate" in str(e.value) and "RandomResize" in str(e.value)


def test_unknown_parameter_names_transform_and_parameter():
    with pytest.raises(ValueError, match=r"RandomCrop.*'sizee'.*size, cat_max_ratio"):
        build_transforms([{"RandomCrop": {"sizee": 5}}])


@pytest.mark.parametrize(
    "item, words",
    [
        ({"RandomCrop": {"size": [0, 5]}}, ["RandomCrop", "size"]),
        ({"RandomCrop": {"size": 8, "cat_max_ratio": 1.5}}, ["RandomCrop", "cat_max_ratio"]),
        ({"RandomResize": {"ratio_range": [2.0, 0.5]}}, ["RandomResize", "ratio_range"]),
        ({"Normalize": {"mean": [1, 2]}}, ["Normalize", "mean"]),
        ({"RandomFlip": {"prob": 2}}, ["RandomFlip", "prob"]),
        ({"Resize": {}}, ["Resize", "size"]),
        ({"Pad": {}}, ["Pad", "size"]),
    ],
)
def test_bad_values_name_transform_and_parameter(item, words):
    with pytest.raises(ValueError) as e:
        build_transforms([item])
    for w in words:
        assert w in str(e.value)


def test_spec_must_be_list_of_one_key_dicts():
    with pytest.raises(TypeError):
        build_transforms({"RandomFlip": {}})
    with pytest.raises(ValueError, match="one-key"):
        build_transforms([{"RandomFlip": {}, "Pad": {"size": 4}}])


# ----------------------------------------------------------------- labels are never interpolated


@pytest.mark.parametrize(
    "t",
    [
        RandomResize(scale=(96, 48), ratio_range=(0.5, 2.0)),
        RandomResize(scale=None, ratio_range=(0.3, 1.7)),
        Resize(size=(29, 71)),
        Resize(scale=(100, 20)),
        ResizeShortSide(size=61),
        RandomResize(ratio_range=(0.5, 2.0), interpolation="bicubic", antialias=True),
    ],
    ids=repr,
)
def test_resize_keeps_label_values(t):
    for seed in range(5):
        s = _sample(seed=seed)
        out = t(s, _rng(seed))
        assert out["label"].dtype == s["label"].dtype
        assert set(np.unique(out["label"])) <= set(np.unique(s["label"]))
        assert out["label"].shape == out["image"].shape[:2]
        assert out["image"].dtype == np.uint8


def test_resize_label_is_opencv_nearest():
    lab = np.arange(12 * 10, dtype=np.int64).reshape(12, 10)
    out = resize_label(lab, (5, 7))
    rows = np.floor(np.arange(5) * 12 / 5).astype(int)
    cols = np.floor(np.arange(7) * 10 / 7).astype(int)
    np.testing.assert_array_equal(out, lab[np.ix_(rows, cols)])


def test_keep_ratio_follows_mmcv():
    assert keep_ratio_size(1024, 2048, (2048, 1024)) == (1024, 2048)
    assert keep_ratio_size(512, 683, (2048, 512)) == (512, 683)  # ADE: short side 512
    assert keep_ratio_size(300, 400, (2048, 512)) == (512, 683)
    assert keep_ratio_size(1024, 2048, (1024, 2048)) == (1024, 2048)  # order does not matter


def test_random_resize_ratio_range():
    t = RandomResize(scale=(200, 100), ratio_range=(0.5, 2.0))
    heights = {t(_sample(100, 200), _rng(s))["image"].shape[0] for s in range(40)}
    assert min(heights) >= 50 and max(heights) <= 200 and len(heights) > 10


def test_eval_resize_can_leave_label_at_original_size():
    s = _sample(40, 60)
    out = Resize(scale=(120, 80), resize_label=False)(s, _rng())
    assert out["image"].shape[:2] == (80, 120)
    assert out["label"] is s["label"]
    out = ResizeShortSide(size=20, resize_label=False)(s, _rng())
    assert out["image"].shape[:2] == (20, 30) and out["label"].shape == (40, 60)


# ----------------------------------------------------------------- crop / flip / pad


def _dominant_label(seed: int) -> np.ndarray:
    """80x80: class 1 everywhere except a 32x32 block of class 2 and a stripe of ignore.

    About half of the random 40x40 crops have class 1 on >= 75% of their labelled pixels.
    """
    lab = np.ones((80, 80), dtype=np.uint8)
    rng = np.random.default_rng(seed)
    y, x = rng.integers(0, 48, 2)
    lab[y : y + 32, x : x + 32] = 2
    lab[:, :4] = 255
    return lab


def _max_share(label: np.ndarray) -> float:
    vals, counts = np.unique(label[label != 255], return_counts=True)
    return 1.0 if len(vals) < 2 else counts.max() / counts.sum()


def test_random_crop_respects_cat_max_ratio():
    crop = RandomCrop(size=(40, 40), cat_max_ratio=0.75)
    no_check = RandomCrop(size=(40, 40))
    violations_without = 0
    for seed in range(30):
        lab = _dominant_label(seed)
        s = {"image": np.zeros((80, 80, 3), np.uint8), "label": lab}
        assert _max_share(crop(s, _rng(1000 + seed))["label"]) < 0.75
        violations_without += _max_share(no_check(s, _rng(1000 + seed))["label"]) >= 0.75
    assert violations_without > 5  # the check is what makes the crops pass


def test_random_crop_keeps_image_and_label_aligned():
    s = _sample(50, 60)
    s["image"][..., 0] = np.arange(60, dtype=np.uint8)[None, :]  # column index in red
    s["label"] = np.tile(np.arange(60, dtype=np.uint8)[None, :], (50, 1))
    out = RandomCrop(size=(20, 25))(s, _rng(3))
    assert out["image"].shape == (20, 25, 3)
    np.testing.assert_array_equal(out["image"][..., 0], out["label"])
    small = RandomCrop(size=(100, 100))(s, _rng(3))  # larger than the image: whole image
    assert small["image"].shape == (50, 60, 3)


def test_flip_moves_image_and_label_together():
    s = _sample()
    out = RandomFlip(prob=1.0)(s, _rng())
    np.testing.assert_array_equal(out["image"], s["image"][:, ::-1])
    np.testing.assert_array_equal(out["label"], s["label"][:, ::-1])
    out = RandomFlip(prob=1.0, direction="vertical")(s, _rng())
    np.testing.assert_array_equal(out["label"], s["label"][::-1])
    assert RandomFlip(prob=0.0)(s, _rng()) is s
    flips = sum(RandomFlip(0.5)(s, _rng(i)) is not s for i in range(200))
    assert 70 < flips < 130


def test_pad_fills_image_zero_label_ignore():
    s = {"image": np.full((5, 6, 3), 7.0, np.float32), "label": np.zeros((5, 6), np.uint8)}
    out = Pad(size=(8, 9))(s, _rng())
    assert out["image"].shape == (8, 9, 3) and out["label"].shape == (8, 9)
    assert (out["image"][5:] == 0).all() and (out["image"][:, 6:] == 0).all()
    assert (out["label"][5:] == 255).all() and (out["label"][:, 6:] == 255).all()
    np.testing.assert_array_equal(out["image"][:5, :6], s["image"])
    assert Pad(size_divisor=4)(s, _rng())["image"].shape == (8, 8, 3)
    assert Pad(size=(3, 3))(s, _rng())["image"].shape == (5, 6, 3)  # never crops


# ----------------------------------------------------------------- photometric / normalize


def test_normalize_rgb_and_bgr():
    s = _sample(4, 5)
    out = Normalize()(s, _rng())["image"]
    mean, std = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
    np.testing.assert_allclose(out, (s["image"] - mean) / std, rtol=1e-5, atol=1e-5)
    caffe = Normalize(mean=[104.008, 116.669, 122.675], std=[1, 1, 1], to_bgr=True)(s, _rng())
    np.testing.assert_allclose(caffe["image"][..., 0], s["image"][..., 2] - 104.008, atol=1e-4)
    assert caffe["image"].dtype == np.float32


def test_hsv_matches_opencv_convention():
    px = np.array(
        [[[255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128], [255, 255, 0]]], np.uint8
    )
    np.testing.assert_array_equal(
        rgb_to_hsv(px)[0],
        [[0, 255, 255], [60, 255, 255], [120, 255, 255], [0, 0, 128], [30, 255, 255]],
    )
    img = _sample(30, 30)["image"]
    # H is stored in 2-degree steps (as in OpenCV): a round trip moves a channel by <= 255/60
    assert np.abs(hsv_to_rgb(rgb_to_hsv(img)).astype(int) - img).max() <= 5


def test_photometric_brightness_only_adds_a_constant():
    pmd = PhotoMetricDistortion(contrast_range=(1, 1), saturation_range=(1, 1), hue_delta=0)
    s = {"image": np.full((8, 8, 3), 100, np.uint8), "label": np.zeros((8, 8), np.uint8)}
    deltas = set()
    for seed in range(20):
        out = pmd(s, _rng(seed))
        assert out["label"] is s["label"] and out["image"].dtype == np.uint8
        d = np.unique(out["image"].astype(int) - 100)
        assert len(d) in (1, 2)  # HSV round trips may move a channel by one level
        deltas.add(int(d[0]))
    assert max(deltas) <= 32 and min(deltas) >= -33 and len(deltas) > 3


def test_photometric_changes_image_and_is_seeded():
    s = _sample(20, 20)
    pmd = PhotoMetricDistortion()
    outs = [pmd(s, _rng(i))["image"] for i in range(6)]
    assert any(not np.array_equal(o, s["image"]) for o in outs)
    np.testing.assert_array_equal(pmd(s, _rng(4))["image"], outs[4])
    with pytest.raises(TypeError, match="before Normalize"):
        pmd({"image": s["image"].astype(np.float32), "label": s["label"]}, _rng())


def test_pipeline_same_seed_same_result_other_seed_differs():
    pipe = build_transforms(
        [
            {"RandomResize": {"scale": [64, 32], "ratio_range": [0.5, 2.0]}},
            {"RandomCrop": {"size": 24, "cat_max_ratio": 0.75}},
            {"RandomFlip": {}},
            {"PhotoMetricDistortion": {}},
            {"Normalize": {}},
            {"Pad": {"size": 24}},
        ]
    )
    s = _sample(32, 64)
    a, b = pipe(s, _rng(11)), pipe(s, _rng(11))
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
    c = pipe(s, _rng(12))
    assert not np.array_equal(a["image"], c["image"])
