"""seg-eval end to end on a tiny model and the synthetic dataset: every mode, saved predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seg_trainer.build import build_model
from seg_trainer.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from seg_trainer.config import config_from_dict
from seg_trainer.evaluate import cli, main

NUM_IMAGES, H, W = 3, 32, 48
CONFIG = {
    "output_dir": "unused",
    "model": {"name": "fcn", "backbone": "resnet18", "num_classes": 3, "output_stride": 8,
              "aux": False, "head_kwargs": {"channels": 8, "num_convs": 1}},
    "data": {"dataset": "synthetic", "dataset_options": {"num_samples": NUM_IMAGES, "size": [H, W],
             "num_classes": 3}, "val_transforms": [{"Normalize": {}}], "num_workers": 0},
    "train": {"max_iters": 1},
    "evaluation": {"batch_size": 2, "crop_size": [24, 32], "stride": [16, 16],
                   "scales": [0.75, 1.25], "flip": True},
}  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    cfg = config_from_dict(CONFIG)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "ckpt.pth"
    save_checkpoint({"format": CHECKPOINT_FORMAT, "model": build_model(cfg).state_dict(),
                     "config": cfg.to_dict(), "iteration": 3}, path)  # fmt: skip
    return path


def _eval(checkpoint: Path, out: Path, *args: str) -> dict:
    return main(["--cpu", "--no-progress", "--checkpoint", str(checkpoint),
                 "--set", f"output_dir={out}", *args])  # fmt: skip


@pytest.mark.parametrize("mode", ["whole", "slide", "multiscale"])
def test_each_mode_writes_metrics(tmp_path: Path, checkpoint: Path, mode: str, capsys) -> None:
    metrics = _eval(checkpoint, tmp_path, "--mode", mode)
    assert "mean (3/3)" in capsys.readouterr().out  # the per-class table was printed
    saved = json.loads((tmp_path / f"eval_val_{mode}.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved["evaluation"]["mode"] == mode and saved["iteration"] == 3
    m = saved["metrics"]
    assert m["class_names"] == ["background", "red stripes", "red smooth"]
    assert 0 < m["num_pixels"] <= NUM_IMAGES * H * W
    assert 0.0 <= m["aacc"] <= 1.0 and len(m["per_class"]["iou"]) == 3


def test_degenerate_settings_reproduce_whole(tmp_path: Path, checkpoint: Path) -> None:
    plain = ("evaluation.flip=false",)
    whole = _eval(checkpoint, tmp_path / "w", "--set", *plain)["metrics"]
    # one window covering the image, and one unflipped scale, are whole-image inference
    slide = _eval(checkpoint, tmp_path / "s", "--mode", "slide",
                  "--set", f"evaluation.crop_size=[{H},{W}]", *plain)["metrics"]  # fmt: skip
    ms = _eval(checkpoint, tmp_path / "m", "--mode", "multiscale",
               "--set", "evaluation.scales=[1.0]", "evaluation.crop_size=null",
               "evaluation.stride=null", *plain)["metrics"]  # fmt: skip
    assert slide["confusion"] == whole["confusion"]
    assert ms["confusion"] == whole["confusion"]
    # multi-scale + flip changes the predictions of a random model, not the pixels counted
    msf = _eval(checkpoint, tmp_path / "msf", "--mode", "multiscale")["metrics"]
    assert msf["confusion"] != whole["confusion"]
    assert msf["num_pixels"] == whole["num_pixels"]


def test_save_predictions(tmp_path: Path, checkpoint: Path) -> None:
    _eval(checkpoint, tmp_path, "--save-predictions")
    pred_dir = tmp_path / "predictions_val"
    masks = sorted((pred_dir / "pred").glob("*.png"))
    assert [p.name for p in masks] == [f"{i:06d}.png" for i in range(NUM_IMAGES)]
    mask = np.array(Image.open(masks[0]))
    assert mask.shape == (H, W) and mask.max() < 3
    colour = np.array(Image.open(pred_dir / "color" / masks[0].name).convert("RGB"))
    assert colour.shape == (H, W, 3)
    assert not (pred_dir / "label_ids").exists()  # only Cityscapes has test-server label ids


def test_cli_errors(tmp_path: Path, checkpoint: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli(["--cpu", "--checkpoint", str(tmp_path / "missing.pth")])
    assert exc.value.code == 2 and "checkpoint not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli(["--cpu", "--checkpoint", str(checkpoint), "--set", "evaluation.mdoe=slide"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "evaluation.mdoe" in err and "mode" in err
    bad = tmp_path / "bad.pth"
    cfg = config_from_dict(CONFIG)
    save_checkpoint({"format": CHECKPOINT_FORMAT, "model": {"x": torch.zeros(1)},
                     "config": cfg.to_dict(), "iteration": 0}, bad)  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        cli(["--cpu", "--checkpoint", str(bad)])
    assert exc.value.code == 3 and "does not fit the model" in capsys.readouterr().err
