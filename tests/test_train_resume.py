"""Checkpoint/resume: a resumed run reproduces the uninterrupted one; SIGKILL; clear errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from seg_trainer import train as train_mod
from seg_trainer.checkpoint import CheckpointError
from seg_trainer.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(path: Path, output_dir: Path, **sections) -> Path:
    """12 scenes, batch 4 (3 batches per epoch), checkpoints every 2 iterations, dropout on."""
    data = {
        "output_dir": str(output_dir),
        "seed": 3,
        "deterministic": True,
        "model": {
            "name": "pspnet",
            "backbone": "resnet18_deep",
            "num_classes": 3,
            "aux": True,
            "head_kwargs": {"channels": 16},
            "aux_kwargs": {"channels": 16},
        },
        "data": {
            "dataset": "synthetic",
            "dataset_options": {"num_samples": 12, "size": [33, 33], "num_classes": 3},
            "train_transforms": [
                {"RandomResize": {"scale": [33, 33], "ratio_range": [0.8, 1.25]}},
                {"RandomCrop": {"size": [33, 33]}},
                {"RandomFlip": {"prob": 0.5}},
                {"Normalize": {}},
                {"Pad": {"size": [33, 33]}},
            ],
            "val_transforms": [{"Normalize": {}}],
            "dataset_options_": None,
            "batch_size": 4,
            "num_workers": 0,
        },
        "optimizer": {"lr": 0.02},
        "schedule": {"min_lr": 0.0001, "warmup_iters": 2},
        "train": {"max_iters": 7, "log_interval": 1},
        "evaluation": {"interval": 3, "batch_size": 2},
        "checkpoint": {"interval": 2, "keep_last": 10},
        "logging": {"tensorboard": False, "progress_bar": False, "num_vis": 0},
    }
    del data["data"]["dataset_options_"]
    for name, values in sections.items():
        data[name].update(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def losses(run: Path) -> dict[int, float]:
    import json

    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    return {r["iter"]: r["loss"] for r in lines if r["type"] == "train"}


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted 7-iteration run (checkpoints at 2, 4, 6 and 7)."""
    tmp = tmp_path_factory.mktemp("reference")
    cfg = load_config(tiny_config(tmp / "cfg.yaml", tmp / "run"))
    train_mod.train(cfg, cpu=True)
    return tmp / "run"


def test_resume_after_stop_matches_uninterrupted_run(reference, tmp_path, monkeypatch):
    cfg = load_config(tiny_config(tmp_path / "cfg.yaml", tmp_path / "run"))
    real_save = train_mod.save_checkpoint

    def save_then_stop(state, path):
        real_save(state, path)
        if Path(path).name == "iter_0000004.pth":  # iteration 4 is mid-epoch 1
            raise Stop

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_stop)
    with pytest.raises(Stop):
        train_mod.train(cfg, cpu=True)
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "best.pth",
        "iter_0000002.pth",
        "iter_0000004.pth",
    ]

    result = train_mod.train(cfg, cpu=True, resume="auto")
    assert result.iteration == 7
    for it in (6, 7):
        assert_same_weights(
            reference / f"checkpoints/iter_{it:07d}.pth", run / f"checkpoints/iter_{it:07d}.pth"
        )
    assert losses(run) == losses(reference)  # every iteration's loss, bit for bit
    ref_opt = torch.load(reference / "checkpoints/iter_0000007.pth", weights_only=True)["optimizer"]
    got_opt = torch.load(run / "checkpoints/iter_0000007.pth", weights_only=True)["optimizer"]
    for k, v in ref_opt["state"].items():
        assert torch.equal(v["momentum_buffer"], got_opt["state"][k]["momentum_buffer"])


EMA = {"enabled": True, "decay": 0.9, "warmup": True, "warmup_power": 0.75}


def val_records(run: Path) -> dict[int, dict]:
    import json

    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    return {
        r["iter"]: {k: v for k, v in r.items() if k != "time"} for r in lines if r["type"] == "val"
    }


@pytest.fixture(scope="module")
def reference_ema(tmp_path_factory) -> Path:
    """The uninterrupted 7-iteration run with train.ema on."""
    tmp = tmp_path_factory.mktemp("reference_ema")
    cfg = load_config(tiny_config(tmp / "cfg.yaml", tmp / "run", train={"ema": EMA}))
    train_mod.train(cfg, cpu=True)
    return tmp / "run"


def test_resume_with_ema_matches_uninterrupted_run(reference, reference_ema, tmp_path, monkeypatch):
    cfg = load_config(tiny_config(tmp_path / "cfg.yaml", tmp_path / "run", train={"ema": EMA}))
    real_save = train_mod.save_checkpoint

    def save_then_stop(state, path):
        real_save(state, path)
        if Path(path).name == "iter_0000004.pth":  # mid-epoch 1, after the evaluation at 3
            raise Stop

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_stop)
    with pytest.raises(Stop):
        train_mod.train(cfg, cpu=True)
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    run = tmp_path / "run"
    assert {"best.pth", "best_ema.pth"} <= {p.name for p in (run / "checkpoints").iterdir()}
    train_mod.train(cfg, cpu=True, resume="auto")

    ref7 = torch.load(reference_ema / "checkpoints/iter_0000007.pth", weights_only=True)
    for it in (6, 7):
        name = f"checkpoints/iter_{it:07d}.pth"
        assert_same_weights(reference_ema / name, run / name)
        ref, got = (torch.load(r / name, weights_only=True) for r in (reference_ema, run))
        assert ref["ema"].keys() == got["ema"].keys() == ref["model"].keys()
        different = [k for k in ref["ema"] if not torch.equal(ref["ema"][k], got["ema"][k])]
        assert not different, f"EMA tensors differ after resuming: {different[:3]}"
        assert got["best_ema_miou"] == ref["best_ema_miou"] is not None
    # the EMA is an average, neither the model nor a stale copy
    assert any(not torch.equal(ref7["ema"][k], ref7["model"][k]) for k in ref7["model"])
    # the model itself trains as without EMA
    assert_same_weights(
        reference / "checkpoints/iter_0000007.pth", run / "checkpoints/iter_0000007.pth"
    )
    assert losses(run) == losses(reference_ema) == losses(reference)
    assert val_records(run) == val_records(reference_ema)  # mIoU and ema/mIoU, every evaluation
    assert all("ema/mIoU" in r for r in val_records(run).values())
    for name in ("best.pth", "best_ema.pth"):
        assert_same_weights(reference_ema / "checkpoints" / name, run / "checkpoints" / name)


def test_grad_checkpointing_trains_bit_identically(reference, tmp_path):
    """train.grad_checkpointing recomputes the ResNet blocks (dropout replayed, BN statistics
    updated once): the same weights and losses as the reference run, and the same RNG."""
    cfg = load_config(
        tiny_config(tmp_path / "cfg.yaml", tmp_path / "run", train={"grad_checkpointing": True})
    )
    train_mod.train(cfg, cpu=True)
    name = "checkpoints/iter_0000007.pth"
    assert_same_weights(reference / name, tmp_path / "run" / name)
    assert losses(tmp_path / "run") == losses(reference)
    ref, got = (torch.load(r / name, weights_only=True) for r in (reference, tmp_path / "run"))
    assert torch.equal(ref["rng"][0]["torch"], got["rng"][0]["torch"])


def test_sigkill_during_training_resumes_from_last_checkpoint(reference, tmp_path, capsys):
    cfg_path = tiny_config(tmp_path / "cfg.yaml", tmp_path / "run")
    ckpts = tmp_path / "run" / "checkpoints"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "apps/trainer/train.py"), "--config", str(cfg_path), "--cpu"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while not (ckpts / "iter_0000002.pth").exists():
            if proc.poll() is not None:
                pytest.fail(f"training exited early: {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint after 240 s")
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    present = sorted(p.name for p in ckpts.glob("iter_*.pth"))
    assert present and "iter_0000007.pth" not in present
    newest = present[-1]

    cfg = load_config(cfg_path)
    capsys.readouterr()
    result = train_mod.train(cfg, cpu=True, resume="auto")
    assert (
        f"resumed from {ckpts / newest} at iteration {int(newest[5:12])}" in capsys.readouterr().out
    )
    assert result.iteration == 7
    assert losses(tmp_path / "run")[7] == losses(reference)[7]
    assert_same_weights(reference / "checkpoints/iter_0000007.pth", ckpts / "iter_0000007.pth")


def test_corrupt_checkpoint_is_an_error_never_a_fresh_start(tmp_path, capsys):
    cfg_path = tiny_config(tmp_path / "cfg.yaml", tmp_path / "run")
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "iter_0000004.pth").write_bytes(b"\x00" * 100)
    # explicit path: a clear error naming the file
    rc = train_mod.main(
        ["--config", str(cfg_path), "--cpu", "--resume", str(ckpts / "iter_0000004.pth")]
    )
    assert rc == 3
    assert "iter_0000004.pth: cannot read this checkpoint" in capsys.readouterr().err
    # auto with nothing readable: an error, not a fresh start
    with pytest.warns(UserWarning, match="iter_0000004.pth"):
        assert train_mod.main(["--config", str(cfg_path), "--cpu", "--resume", "auto"]) == 3
    assert "no readable checkpoint" in capsys.readouterr().err
    # no --resume while checkpoints exist: refuses to mix two runs
    assert train_mod.main(["--config", str(cfg_path), "--cpu"]) == 3
    assert "--resume auto" in capsys.readouterr().err
    assert not (tmp_path / "run" / "log.jsonl").exists()


def test_incompatible_checkpoint_is_an_error(reference, tmp_path):
    cfg = load_config(
        tiny_config(tmp_path / "cfg.yaml", tmp_path / "run"),
        ["model.num_classes=4", "data.dataset_options.num_classes=4"],
    )
    with pytest.raises(CheckpointError, match=r"model.num_classes: checkpoint 3 vs config 4"):
        train_mod.train(cfg, cpu=True, resume=str(reference / "checkpoints/iter_0000004.pth"))
