"""train.ema: timm ModelEmaV3's semantics (checked against timm itself), the config, and the
EMA in training: logged, kept as best_ema.pth (a normal checkpoint), identical on 2 processes.

Exact resume with the EMA is in tests/test_train_resume.py.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from seg_trainer.config import ConfigError, config_from_dict
from seg_trainer.ema import ModelEma, ema_decay

REPO = Path(__file__).resolve().parents[3]


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 2, 1, bias=False),
        nn.BatchNorm2d(2, affine=False),
    )


def train_a_little(model: nn.Module, step: int) -> None:
    """Move parameters and BN statistics (a train-mode forward) as an optimizer step would."""
    g = torch.Generator().manual_seed(step)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g), alpha=0.1)
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 5, 5, generator=g))


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"use_warmup": True, "warmup_power": 0.75, "warmup_gamma": 2.0, "min_decay": 0.1},
        {"exclude_buffers": True, "update_after_step": 2},
    ],
    ids=["plain", "warmup", "exclude_buffers"],
)
def test_equals_timm_model_ema_v3(options):
    timm_ema = pytest.importorskip("timm.utils.model_ema")
    model = tiny_net()
    ref = timm_ema.ModelEmaV3(model, decay=0.8, **options)
    ours = ModelEma(
        model,
        decay=0.8,
        warmup=options.get("use_warmup", False),
        **{k: v for k, v in options.items() if k != "use_warmup"},
    )
    for step in range(1, 8):
        train_a_little(model, step)
        ref.update(model, step=step)
        ours.update(model, step)
        assert ours.get_decay(step) == ref.get_decay(step)
        a, b = ref.module.state_dict(), ours.module.state_dict()
        assert a.keys() == b.keys()
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert not different, f"step {step}: {different}"
    # the EMA is an average: it lags behind the model
    assert not torch.equal(ours.module[0].weight, model[0].weight)
    assert ours.module[1].num_batches_tracked == model[1].num_batches_tracked  # ints copied


def test_decay_schedule():
    # update 1 (and every update up to update_after_step + 1) copies the model
    assert ema_decay(1, decay=0.9) == 0.0
    assert ema_decay(3, decay=0.9, update_after_step=2) == 0.0
    assert ema_decay(4, decay=0.9, update_after_step=2) == 0.9
    warm = [ema_decay(s, decay=0.999, warmup=True) for s in range(2, 200)]
    assert warm == sorted(warm) and 0 < warm[0] < warm[-1] < 0.999  # grows towards decay
    assert ema_decay(10**9, decay=0.999, warmup=True) == 0.999  # clamped
    assert ema_decay(2, decay=0.999, warmup=True, min_decay=0.5) == 0.5


def test_ema_stays_in_eval_mode_without_gradients():
    ema = ModelEma(tiny_net(), decay=0.5)
    ema.train()
    assert not ema.module.training and not any(p.requires_grad for p in ema.parameters())


def test_update_refuses_another_architecture():
    ema = ModelEma(tiny_net(), decay=0.5)
    with pytest.raises(RuntimeError, match="entries differ"):
        ema.update(nn.Sequential(nn.Conv2d(3, 4, 3)), 1)


BASE = {
    "output_dir": "runs/x",
    "model": {"name": "pspnet", "backbone": "resnet18_deep", "num_classes": 3},
    "data": {"dataset": "synthetic"},
    "train": {"max_iters": 10},
}


def with_train(**train) -> dict:
    return {**BASE, "train": {**BASE["train"], **train}}


def test_config_defaults_and_validation():
    cfg = config_from_dict(BASE)
    assert cfg.train.ema.enabled is False and cfg.train.ema.decay == 0.9999
    assert cfg.train.compile is False and cfg.train.grad_checkpointing is False
    assert cfg.to_dict()["train"]["ema"]["decay"] == 0.9999  # written to config.yaml
    on = config_from_dict(with_train(ema={"enabled": True, "decay": 0.999, "warmup": True}))
    assert on.train.ema.warmup and on.train.ema.decay == 0.999
    with pytest.raises(ConfigError, match=r"'train.ema.decay': must be in \[0, 1\)"):
        config_from_dict(with_train(ema={"decay": 1.0}))
    with pytest.raises(ConfigError, match=r"'train.ema.min_decay'.*above train.ema.decay"):
        config_from_dict(with_train(ema={"decay": 0.9, "min_decay": 0.95}))
    with pytest.raises(ConfigError, match=r"'train.ema.warmup_power': must be > 0"):
        config_from_dict(with_train(ema={"warmup_power": 0}))
    with pytest.raises(ConfigError, match=r"'train.ema.decy'.*did you mean 'decay'"):
        config_from_dict(with_train(ema={"decy": 0.9}))
    with pytest.raises(ConfigError, match=r"'train.compile': expected true or false"):
        config_from_dict(with_train(compile="yes"))


# ----------------------------------------------------------------------------- in training


def run_config(output_dir: Path, *, samples: int) -> dict:
    return {
        "output_dir": str(output_dir),
        "seed": 0,
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
            "dataset_options": {"num_samples": samples, "size": [33, 33], "num_classes": 3},
            "train_transforms": [{"RandomFlip": {"prob": 0.5}}, {"Normalize": {}}],
            "val_transforms": [{"Normalize": {}}],
            "batch_size": 4,
            "num_workers": 0,
        },
        "optimizer": {"lr": 0.002},  # predictions stay varied: EMA and model score apart
        "train": {"max_iters": 4, "log_interval": 1, "ema": {"enabled": True, "decay": 0.5}},
        "evaluation": {"interval": 2, "batch_size": 2},
        "checkpoint": {"interval": 2},
        "logging": {"tensorboard": False, "progress_bar": False, "num_vis": 0},
    }


def val_log(run: Path) -> dict[int, dict]:
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    return {r["iter"]: r for r in lines if r["type"] == "val"}


def check_ema_outputs(run: Path) -> None:
    """EMA metrics logged at every evaluation; best_ema.pth holds the EMA weights of the
    best one and seg-eval evaluates it to the logged ema/mIoU."""
    from seg_trainer.evaluate import main as seg_eval

    log = val_log(run)
    assert sorted(log) == [2, 4] and all("ema/mIoU" in r and "mIoU" in r for r in log.values())
    assert log[4]["ema/aAcc"] != log[4]["aAcc"]  # the EMA weights were evaluated, not the model
    final = torch.load(run / "checkpoints/iter_0000004.pth", weights_only=True)
    assert final["ema"].keys() == final["model"].keys()
    # iter 2 is written after its evaluation; the final one before the final evaluation
    second = torch.load(run / "checkpoints/iter_0000002.pth", weights_only=True)
    assert second["ema_metrics"]["mIoU"] == log[2]["ema/mIoU"] == final["ema_metrics"]["mIoU"]
    best = torch.load(run / "checkpoints/best_ema.pth", weights_only=True)
    assert best["weights"] == "ema" and "optimizer" not in best
    best_iter = max(log, key=lambda i: (log[i]["ema/mIoU"], -i))  # the first of the best
    assert best["iteration"] == best_iter and best["best_miou"] == log[best_iter]["ema/mIoU"]
    at_best = torch.load(run / f"checkpoints/iter_{best_iter:07d}.pth", weights_only=True)
    assert all(torch.equal(best["model"][k], at_best["ema"][k]) for k in best["model"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["ema"]["mIoU"] == log[4]["ema/mIoU"]
    # a normal checkpoint for seg-eval (1 process, the stored config)
    out = seg_eval(
        ["--checkpoint", str(run / "checkpoints/best_ema.pth"), "--cpu", "--no-progress"]
    )
    assert out["metrics"]["miou"] == pytest.approx(log[best_iter]["ema/mIoU"], abs=1e-12)
    assert out["metrics"]["aacc"] == pytest.approx(log[best_iter]["ema/aAcc"], abs=1e-12)


def test_training_with_ema_one_process(tmp_path):
    from seg_trainer import train as train_mod
    from seg_trainer.config import load_config

    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(run_config(tmp_path / "run", samples=8)))
    result = train_mod.train(load_config(cfg_path), cpu=True)
    assert result.files["best_ema"] == tmp_path / "run/checkpoints/best_ema.pth"
    check_ema_outputs(tmp_path / "run")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_two_process_cpu_training_with_ema(tmp_path):
    """2 gloo processes: the EMA is identical on both (the trainer checks it at every save),
    its sharded evaluation equals seg-eval's 1-process evaluation of best_ema.pth."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which(
        "accelerate"
    )
    if accelerate is None:
        pytest.skip("the accelerate launcher is not on PATH")
    cfg_path = tmp_path / "cfg.yaml"
    # 7 val scenes: the two shards differ in size (4 + 3)
    cfg_path.write_text(yaml.safe_dump(run_config(tmp_path / "run", samples=7)))
    cmd = [
        accelerate,
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        str(REPO / "apps/trainer/train.py"),
        "--cpu",
        "--config",
        str(cfg_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ckpt = torch.load(tmp_path / "run/checkpoints/iter_0000004.pth", weights_only=True)
    assert ckpt["world_size"] == 2
    check_ema_outputs(tmp_path / "run")
