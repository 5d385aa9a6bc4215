"""colorize / overlay / collate / seed_worker."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seg_data import collate, colorize, overlay, seed_worker

PALETTE = np.array([[10, 20, 30], [200, 100, 0], [0, 0, 255]], np.uint8)


def test_colorize_uses_palette_and_draws_ignore_black():
    label = np.array([[0, 1, 2], [255, 2, 7]])
    out = colorize(torch.from_numpy(label), PALETTE)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], PALETTE)
    assert (out[1, 0] == 0).all() and (out[1, 2] == 0).all()  # 255 and out-of-range: black
    np.testing.assert_array_equal(out[1, 1], PALETTE[2])


def test_overlay_blends_and_keeps_image_on_ignore():
    image = np.full((2, 2, 3), 100, np.uint8)
    label = np.array([[1, 255], [0, 2]])
    out = overlay(image, label, PALETTE, alpha=0.5)
    np.testing.assert_array_equal(out[0, 0], [150, 100, 50])
    np.testing.assert_array_equal(out[0, 1], [100, 100, 100])
    np.testing.assert_array_equal(overlay(image, label, PALETTE, alpha=0.0), image)
    with pytest.raises(ValueError, match="uint8"):
        overlay(image.astype(np.float32), label, PALETTE)
    with pytest.raises(ValueError, match="sizes differ"):
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
