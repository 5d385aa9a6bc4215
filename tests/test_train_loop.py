"""seg-train end to end on a tiny PSPNet-ResNet18 over tiny synthetic scenes (CPU)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
import yaml

from seg_trainer import train as train_mod
from seg_trainer.checkpoint import load_checkpoint
from seg_trainer.config import ConfigError, load_config


def tiny_config(tmp_path: Path, **sections) -> Path:
    """A config file for a ~second-per-iteration run; ``sections`` update its sections."""
    data = {
        "output_dir": str(tmp_path / "run"),
        "seed": 0,
        "deterministic": True,
        "model": {
            "name": "pspnet",
            "backbone": "resnet18_deep",
            "num_classes": 3,
            "output_stride": 8,
            "aux": True,
            "head_kwargs": {"channels": 16},
            "aux_kwargs": {"channels": 16},
        },
        "data": {
            "dataset": "synthetic",
            "dataset_options": {"num_samples": 8, "size": [33, 33], "num_classes": 3},
            "train_transforms": [{"RandomFlip": {"prob": 0.5}}, {"Normalize": {}}],
            "val_transforms": [{"Normalize": {}}],
            "batch_size": 4,
            "num_workers": 0,
        },
        "optimizer": {"lr": 0.05},
        "schedule": {"min_lr": 0.0001},
        "train": {"max_iters": 8, "log_interval": 1},
        "evaluation": {"interval": 0},
        "checkpoint": {"interval": 4, "keep_last": 2},
        "logging": {"tensorboard": False, "progress_bar": False, "num_vis": 2},
    }
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(data.get(name), dict):
            data[name].update(values)
        else:
            data[name] = values
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_short_run_lowers_the_loss_and_writes_everything(tmp_path, capsys):
    # a small training set seen several times: the loss must drop clearly
    cfg_path = tiny_config(tmp_path, train={"max_iters": 10})
    assert train_mod.main(["--config", str(cfg_path), "--cpu"]) == 0
    run = tmp_path / "run"
    log = read_log(run)
    losses = [r["loss"] for r in log if r["type"] == "train"]
    assert [r["iter"] for r in log if r["type"] == "train"] == list(range(1, 11))
    assert sum(losses[-3:]) / 3 < 0.95 * sum(losses[:3]) / 3, losses
    lrs = [r["lr"] for r in log if r["type"] == "train"]
    assert lrs[0] == pytest.approx(0.05) and all(a > b for a, b in itertools.pairwise(lrs))
    val = [r for r in log if r["type"] == "val"]
    assert len(val) == 1 and val[0]["iter"] == 10 and 0.0 <= val[0]["mIoU"] <= 1.0

    # output_dir receives the resolved config, checkpoints, metrics and pictures
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["train"]["max_iters"] == 10 and resolved["optimizer"]["momentum"] == 0.9
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["best.pth", "iter_0000008.pth", "iter_0000010.pth"]  # keep_last=2
    ckpt = torch.load(run / "checkpoints" / "iter_0000010.pth", weights_only=True)
    assert ckpt["iteration"] == 10 and ckpt["config"] == resolved
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "scaler", "rng", "iteration"}
    best = load_checkpoint(run / "checkpoints" / "best.pth")
    assert best["metrics"]["mIoU"] == pytest.approx(val[0]["mIoU"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["mIoU"] == pytest.approx(val[0]["mIoU"]) and len(metrics["IoU"]) == 3
    for png in ("predictions.png", "training_curves.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "mean" in out and str(run / "predictions.png") in out  # table and where things are


def test_config_error_names_the_key(tmp_path, capsys):
    cfg_path = tiny_config(tmp_path, optimizer={"lr": 0.05, "momentun": 0.9})
    assert train_mod.main(["--config", str(cfg_path), "--cpu"]) == 2
    err = capsys.readouterr().err
    assert "'optimizer.momentun'" in err and "did you mean 'momentum'" in err
    # a name only the model registry knows about: the error names the section and lists names
    good = tiny_config(tmp_path / "ok")
    assert train_mod.main(["--config", str(good), "--cpu", "--set", "model.name=pspnett"]) == 2
    err = capsys.readouterr().err
    assert "model:" in err and "'pspnett'" in err and "'pspnet'" in err


def test_build_errors_name_the_section(tmp_path):
    cfg = load_config(tiny_config(tmp_path), ["data.dataset_options.colours=3"])
    with pytest.raises(ConfigError, match=r"data: cannot create dataset 'synthetic'.*colours"):
        train_mod.train(cfg, cpu=True)


def test_nan_loss_stops_naming_the_iteration(tmp_path, monkeypatch):
    cfg = load_config(tiny_config(tmp_path), ["checkpoint.interval=2", "train.max_iters=6"])
    real = train_mod.SegmentationLoss.forward
    calls = {"n": 0}

    def poisoned(self, outputs, target):
        calls["n"] += 1
        total, parts = real(self, outputs, target)
        return (total * float("nan") if calls["n"] == 4 else total), parts

    monkeypatch.setattr(train_mod.SegmentationLoss, "forward", poisoned)
    with pytest.raises(train_mod.TrainingDiverged, match=r"loss is nan at iteration 4") as info:
        train_mod.train(cfg, cpu=True)
    assert "iter_0000002.pth" in str(info.value)  # the last good checkpoint is named
    run = Path(cfg.output_dir)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["iter_0000002.pth"]
    kept = load_checkpoint(run / "checkpoints" / "iter_0000002.pth")
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())
    errors = [r for r in read_log(run) if r["type"] == "error"]
    assert errors and errors[0]["iter"] == 4
