"""Tests for seg_trainer.infer (seg-infer): masks, colours, overlays; unreadable inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seg_trainer.build import build_model
from seg_trainer.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from seg_trainer.config import config_from_dict
from seg_trainer.infer import cli, find_images, voc_palette

CONFIG = {
    "output_dir": "unused",
    "model": {"name": "fcn", "backbone": "resnet18", "num_classes": 3, "output_stride": 32,
              "aux": False, "head_kwargs": {"channels": 8, "num_convs": 1}},
    "data": {"dataset": "synthetic", "dataset_options": {"num_samples": 3, "size": [32, 32],
             "num_classes": 3}, "val_transforms": [{"Normalize": {}}], "num_workers": 0},
    "train": {"max_iters": 1},
}  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    cfg = config_from_dict(CONFIG)
    torch.manual_seed(0)
    model = build_model(cfg)
    path = tmp_path_factory.mktemp("ckpt") / "model.pth"
    save_checkpoint(
        {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "config": cfg.to_dict(),
         "iteration": 0},
        path,
    )  # fmt: skip
    return path


def _write_images(folder: Path) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (30, 41, 3), dtype=np.uint8) for _ in range(2)]
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(images[0]).save(folder / "a.png")
    Image.fromarray(images[1]).save(folder / "sub" / "b.jpg", quality=100)
    return images


def test_voc_palette_matches_the_voc_colour_map() -> None:
    pal = voc_palette(21)
    assert pal[0].tolist() == [0, 0, 0]
    assert pal[1].tolist() == [128, 0, 0]
    assert pal[15].tolist() == [192, 128, 128]  # person


def test_find_images_names_and_errors(tmp_path: Path) -> None:
    _write_images(tmp_path / "in")
    (tmp_path / "in" / "notes.txt").write_text("x")
    found = find_images([tmp_path / "in", tmp_path / "in" / "a.png"])
    assert [n for _, n in found] == ["a", "sub/b"]  # the same file given twice: once
    with pytest.raises(FileNotFoundError, match="no such file"):
        find_images([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images found"):
        find_images([tmp_path / "empty"])


def test_masks_colours_and_overlays(tmp_path: Path, checkpoint: Path, capsys) -> None:
    images = _write_images(tmp_path / "in")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        cli(["--checkpoint", str(checkpoint), "--input", str(tmp_path / "in"), "--output", str(out),
             "--cpu"])  # fmt: skip
    assert exc.value.code == 0
    assert "wrote 2 predictions" in capsys.readouterr().out

    # expected mask of a.png: normalise, forward, resize back, argmax
    cfg = config_from_dict(CONFIG)
    model = build_model(cfg)
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    model.eval()
    mean = torch.tensor([123.675, 116.28, 103.53])[:, None, None]
    std = torch.tensor([58.395, 57.12, 57.375])[:, None, None]
    x = (torch.from_numpy(images[0]).permute(2, 0, 1).float() - mean) / std
    with torch.no_grad():
        expected = model(x[None])["out"].argmax(1)[0].numpy()
    mask = np.array(Image.open(out / "masks" / "a.png"))
    assert mask.shape == (30, 41) and np.array_equal(mask, expected)
    # the synthetic dataset's palette (VOC colour map) colours the mask
    colour = np.array(Image.open(out / "color" / "a.png"))
    assert np.array_equal(colour, voc_palette(3)[mask])
    blend = np.array(Image.open(out / "overlay" / "a.png")).astype(int)
    ref = np.round(0.5 * images[0] + 0.5 * voc_palette(3)[mask].astype(float)).astype(int)
    assert np.abs(blend - ref).max() <= 1
    assert (out / "masks" / "sub" / "b.png").is_file()


def test_unreadable_inputs_are_reported_and_others_processed(
    tmp_path: Path, checkpoint: Path, capsys
) -> None:
    _write_images(tmp_path / "in")
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        cli(["--checkpoint", str(checkpoint), "--input", str(tmp_path / "in"), "--output", str(out),
             "--cpu"])  # fmt: skip
    assert exc.value.code == 5  # the data-error code: some inputs failed
    captured = capsys.readouterr()
    assert "wrote 2 predictions" in captured.out
    assert "cannot decode image" in captured.err and "broken.png" in captured.err
    assert (out / "masks" / "a.png").is_file() and not (out / "masks" / "broken.png").exists()


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path, capsys) -> None:
    _write_images(tmp_path / "in")
    with pytest.raises(SystemExit) as exc:
        cli(["--checkpoint", str(tmp_path / "none.pth"), "--input", str(tmp_path / "in"),
             "--output", str(tmp_path / "o")])  # fmt: skip
    assert exc.value.code == 2
    assert "checkpoint not found" in capsys.readouterr().err
