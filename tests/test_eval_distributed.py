"""2-process CPU evaluation (accelerate launch, gloo) gives exactly the 1-process metrics.

The validation set has an odd number of images (7) and the per-process batch size (2)
leaves partial last batches, so a sampler that pads shards with repeated images
(DistributedSampler, accelerate's even_batches) would count some images twice.
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

from seg_trainer.build import build_model
from seg_trainer.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from seg_trainer.config import config_from_dict

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT / "apps" / "trainer" / "eval.py"
NUM_IMAGES, H, W = 7, 32, 48

CONFIG = {
    "output_dir": "unused",
    "model": {"name": "fcn", "backbone": "resnet18", "num_classes": 3, "output_stride": 8,
              "aux": False, "head_kwargs": {"channels": 8, "num_convs": 1}},
    "data": {"dataset": "synthetic", "dataset_options": {"num_samples": NUM_IMAGES, "size": [H, W],
             "num_classes": 3}, "val_transforms": [{"Normalize": {}}], "num_workers": 0},
    "train": {"max_iters": 1},
    "evaluation": {"batch_size": 2},
}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )


@pytest.mark.distributed
def test_two_process_eval_equals_one_process(tmp_path: Path) -> None:
    if shutil.which("accelerate") is None:
        pytest.skip("the accelerate launcher is not on PATH")
    cfg = config_from_dict(CONFIG)
    torch.manual_seed(0)  # this seed predicts all three classes (a non-trivial matrix)
    model = build_model(cfg)
    ckpt = tmp_path / "ckpt.pth"
    save_checkpoint({"format": CHECKPOINT_FORMAT, "model": model.state_dict(),
                     "config": cfg.to_dict(), "iteration": 5}, ckpt)  # fmt: skip

    common = ["--cpu", "--checkpoint", str(ckpt), "--no-progress"]
    _run([sys.executable, str(EVAL), *common, "--set", f"output_dir={tmp_path / 'one'}"], tmp_path)
    _run(
        ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no",
         "--main_process_port", str(_free_port()), str(EVAL), *common,
         "--set", f"output_dir={tmp_path / 'two'}"],
        tmp_path,
    )  # fmt: skip
    one = json.loads((tmp_path / "one" / "eval_val_whole.json").read_text())
    two = json.loads((tmp_path / "two" / "eval_val_whole.json").read_text())
    assert one["num_processes"] == 1 and two["num_processes"] == 2
    assert one["num_images"] == two["num_images"] == NUM_IMAGES
    assert one["iteration"] == 5

    confusion = torch.tensor(one["metrics"]["confusion"])
    assert confusion.sum().item() == one["metrics"]["num_pixels"]
    assert one["metrics"]["num_pixels"] <= NUM_IMAGES * H * W
    assert (confusion.sum(0) > 0).sum() >= 2, "degenerate test: the model predicts one class"
    assert two["metrics"]["confusion"] == one["metrics"]["confusion"]
    assert two["metrics"] == one["metrics"]  # every derived number, exactly
