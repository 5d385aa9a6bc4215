"""Tests for seg_trainer.visualize: colours, overlays, prediction grids, training curves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seg_trainer.visualize import colorize, overlay, save_prediction_grid, save_training_curves

PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)


def test_colorize_and_ignore() -> None:
    mask = np.array([[0, 1], [2, 255]])
    out = colorize(mask, PALETTE)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[1, 0].tolist() == [0, 0, 255]
    assert out[1, 1].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="palette has 3 colours"):
        colorize(np.array([[3]]), PALETTE)


def test_overlay_blends_and_keeps_ignored_pixels() -> None:
    image = np.full((2, 2, 3), 100, dtype=np.uint8)
    mask = torch.tensor([[0, 255], [1, 1]])
    out = overlay(image, mask, PALETTE, alpha=0.5)
    assert out[0, 0].tolist() == [178, 50, 50]  # (100 + 255) / 2 rounded
    assert out[0, 1].tolist() == [100, 100, 100]
    chw = torch.from_numpy(image).permute(2, 0, 1)
    assert np.array_equal(overlay(chw, mask, PALETTE, alpha=0.5), out)


def test_save_prediction_grid(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 24, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, (3, 24, 32))
    labels[:, :2] = 255
    preds = rng.integers(0, 3, (3, 24, 32))
    path = save_prediction_grid(
        images, labels, preds, PALETTE, tmp_path / "sub" / "grid.png", max_rows=2
    )
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
    assert w > h  # 3 columns, 2 rows of 4:3 panels
    with pytest.raises(ValueError, match="uint8"):
        save_prediction_grid(images.astype(np.float32), labels, preds, PALETTE, tmp_path / "x.png")


def test_save_training_curves(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    lines = [{"type": "train", "iter": i, "loss": 2.0 / i, "lr": 0.01} for i in range(1, 20)]
    lines += [{"type": "val", "iter": 10, "mIoU": 0.3, "mAcc": 0.4, "aAcc": 0.8}]
    log.write_text("\n".join(json.dumps(x) for x in lines) + '\n{"type": "tra')  # truncated line
    with pytest.warns(UserWarning, match="not JSON"):
        path = save_training_curves(log, tmp_path / "curves.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (1000, 400)
    with pytest.raises(FileNotFoundError, match="seg-train"):
        save_training_curves(tmp_path / "missing.jsonl", tmp_path / "c.png")
