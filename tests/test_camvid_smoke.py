"""Smoke version of every CamVid config (docs/results.md): a few iterations at low resolution
on real CamVid images, then seg-eval of the checkpoint, exactly through the shipped files.

Needs ``../shared/data/camvid`` (skipped with a reason when absent). Only the sizes change:
two training iterations of batch 2 on 64x64 crops and evaluation on a 2-image split, so the
configs' model, transforms, optimizer and loss are exercised as written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seg_trainer import evaluate as eval_mod
from seg_trainer import train as train_mod

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "apps" / "trainer" / "configs" / "camvid").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_camvid_config_trains_and_evaluates(config: Path, camvid_root: Path, tmp_path: Path):
    assert CONFIGS, "no CamVid configs found"
    out = tmp_path / "run"
    overrides = [
        f"output_dir={out}",
        f"data.root={camvid_root}",
        "data.train_split=smoke",
        "data.val_split=smoke",
        "data.test_split=smoke",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.train_transforms.1.RandomCrop.size=[64,64]",
        "data.train_transforms.5.Pad.size=[64,64]",
        "evaluation.batch_size=2",
        "train.max_iters=2",
        "train.log_interval=1",
        "schedule.warmup_iters=1",
        "logging.progress_bar=false",
    ]
    assert train_mod.main(["--config", str(config), "--cpu", "--set", *overrides]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if r["type"] == "train"]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    assert any(r["type"] == "val" for r in log)
    for name in ("predictions.png", "training_curves.png", "metrics.json"):
        assert (out / name).is_file(), name

    # the evaluation-only command of docs/results.md, on the test split
    metrics = eval_mod.main(
        [
            "--config",
            str(config),
            "--cpu",
            "--checkpoint",
            str(out / "checkpoints" / "best.pth"),
            "--split",
            "test",
            "--set",
            *overrides,
        ]
    )
    assert metrics["split"] == "test" and metrics["num_images"] == 2
    res = metrics["metrics"]
    assert 0.0 <= res["miou"] <= 1.0
    assert res["class_names"][0] == "sky" and len(res["class_names"]) == 11
    assert json.loads((out / "eval_test_whole.json").read_text()) == metrics
