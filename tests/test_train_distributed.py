"""Two CPU processes (gloo) under ``accelerate launch``: training side.

The eval-side check (2-process metrics == 1-process metrics over a whole dataset) is
in tests/test_eval_*.py. Here: a 2-process training run works, every process's RNG
state is checkpointed, and the evaluation it logs equals a 1-process evaluation of
the checkpoint it saved (BN statistics are broadcast from process 0 before evaluating).
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

from seg_trainer.build import build_dataloader, build_dataset, build_model
from seg_trainer.config import load_config

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.distributed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_cpu_training(tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which(
        "accelerate"
    )
    if accelerate is None:
        pytest.skip("the accelerate launcher is not on PATH")
    cfg = {
        "output_dir": str(tmp_path / "run"),
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
            # 7 val scenes: the two shards differ in size (4 + 3)
            "dataset_options": {"num_samples": 7, "size": [33, 33], "num_classes": 3},
            "train_transforms": [{"RandomFlip": {"prob": 0.5}}, {"Normalize": {}}],
            "val_transforms": [{"Normalize": {}}],
            "batch_size": 4,  # total: 2 per process
            "num_workers": 0,
        },
        "optimizer": {"lr": 0.05},
        "train": {"max_iters": 4, "log_interval": 1},
        "evaluation": {"interval": 2, "batch_size": 2},
        "checkpoint": {"interval": 2},
        "logging": {"tensorboard": False, "progress_bar": False, "num_vis": 0},
    }
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
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
        str(ROOT / "apps/trainer/train.py"),
        "--cpu",
        "--config",
        str(cfg_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("done: 4 iterations") == 1  # printed by the main process only

    run = tmp_path / "run"
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log if r["type"] == "train"] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log if r["type"] == "train")
    final = [r for r in log if r["type"] == "val" and r["iter"] == 4]
    assert len(final) == 1

    ckpt = torch.load(run / "checkpoints/iter_0000004.pth", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])  # own dropout streams

    # the logged 2-process evaluation == this process evaluating the saved weights alone
    from accelerate import Accelerator

    from seg_trainer.evaluate import evaluate

    config = load_config(cfg_path)
    model = build_model(config)
    model.load_state_dict(ckpt["model"])
    val = build_dataset(config, "val")
    result = evaluate(
        model,
        build_dataloader(val, config, train=False),
        Accelerator(cpu=True),
        num_classes=3,
        progress=False,
    )
    assert result.miou == pytest.approx(final[0]["mIoU"], abs=1e-12)
    assert result.aacc == pytest.approx(final[0]["aAcc"], abs=1e-12)
