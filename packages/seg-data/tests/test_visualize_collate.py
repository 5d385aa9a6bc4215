"""colorize / overlay / collate / seed_worker."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seg_data import collate, colorize, overlay, seed_worker

PALETTE = np.array([[10, 20, 30], [200, 100, 0], [0, 0, 255]], np.uint8)


def test_colorize_uses_palette_and_draws_ignore_black():
    label = np.array([[0, 1, 2], [255, 2, 0]])
    out = colorize(torch.from_numpy(label), PALETTE)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], PALETTE)
    assert (out[1, 0] == 0).all()  # ignore: black
    np.testing.assert_array_equal(out[1, 1], PALETTE[2])
    np.testing.assert_array_equal(colorize(label.astype(np.uint8), PALETTE), out)  # LUT path


@pytest.mark.parametrize("dtype", [np.int64, np.uint8])
def test_colorize_refuses_a_class_the_palette_lacks(dtype):
    label = np.array([[0, 7]], dtype=dtype)
    with pytest.raises(ValueError, match="class 7 but the palette has 3 colours"):
        colorize(label, PALETTE)


def test_overlay_blends_and_keeps_image_on_ignore():
    image = np.full((2, 2, 3), 100, np.uint8)
    label = np.array([[1, 255], [0, 2]])
    out = overlay(image, label, PALETTE, alpha=0.5)
    np.testing.assert_array_equal(out[0, 0], [150, 100, 50])
    np.testing.assert_array_equal(out[0, 1], [100, 100, 100])
    np.testing.assert_array_equal(overlay(image, label, PALETTE, alpha=0.0), image)
    with pytest.raises(ValueError, match="uint8"):
        overlay(image.astype(np.float32), label, PALETTE)
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, label, PALETTE, alpha=1.5)
    with pytest.raises(ValueError, match="differs from the image"):
        overlay(image, label[:1], PALETTE)


def _s(h, w, i):
    return {
        "image": torch.zeros(3, h, w),
        "label": torch.zeros(h, w, dtype=torch.int64),
        "meta": {"index": i},
    }


def test_collate_stacks_and_keeps_meta_list():
    b = collate([_s(4, 5, 0), _s(4, 5, 1)])
    assert b["image"].shape == (2, 3, 4, 5) and b["label"].dtype == torch.int64
    assert b["meta"] == [{"index": 0}, {"index": 1}]
    with pytest.raises(ValueError, match=r"differ in size .*batch_size=1"):
        collate([_s(4, 5, 0), _s(4, 6, 1)])


def test_seed_worker_seeds_numpy_from_torch():
    torch.manual_seed(123)
    seed_worker(0)
    a = np.random.rand()
    torch.manual_seed(123)
    seed_worker(0)
    assert np.random.rand() == a
