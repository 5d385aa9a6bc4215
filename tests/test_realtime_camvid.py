"""The issue-14/17 CamVid configs (BiSeNetV2, Fast-SCNN, STDC1, DDRNet-23-slim, PIDNet-S,
Mask2Former-R50) exactly as shipped but for sizes: a few iterations on real CamVid with
``seg-train``, the loss of every output head in ``log.jsonl`` (and the logged total equal to the
weighted sum of the logged parts), then ``seg-eval`` of the checkpoint on a 2-image split.

Needs ``../shared/data/camvid`` (skipped with a reason when absent). Batch 2; 128x128 crops for
the real-time models (at 64x64 their stride-64 maps are 1x1 and BatchNorm over two values can
blow one step up), 64x64 for Mask2Former.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from seg_trainer import evaluate as eval_mod
from seg_trainer import train as train_mod

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "apps" / "trainer" / "configs" / "camvid"

# config -> (crop, {logged loss part: its weight in the total}); the parts are what the
# config's loss section names: loss_<output> for one term, loss_<output>_<term> for several,
# loss_<output>_<part> for a term returning parts (already weighted inside the term)
M2F_PARTS = {
    f"loss_out_{kind}{layer}": 1.0
    for kind in ("ce", "mask", "dice")
    for layer in ["", *(f"_{i}" for i in range(9))]  # the last prediction + 9 earlier ones
}
CASES = {
    "bisenetv2_camvid_288x288": (
        128,
        {"loss_out": 1.0, "loss_aux0": 1.0, "loss_aux1": 1.0, "loss_aux2": 1.0, "loss_aux3": 1.0},
    ),
    "fast_scnn_camvid_288x288": (128, {"loss_out": 1.0, "loss_aux0": 0.4, "loss_aux1": 0.4}),
    "stdc1_camvid_288x288": (
        128,
        {
            "loss_out": 1.0,
            "loss_aux0": 1.0,
            "loss_aux1": 1.0,
            "loss_detail_bce": 1.0,
            "loss_detail_dice": 1.0,
        },
    ),
    "ddrnet_23-slim_camvid_288x288": (128, {"loss_out": 1.0, "loss_aux": 0.4}),
    "pidnet-s_camvid_288x288": (
        128,
        {
            "loss_out_ohem_pidnet": 1.0,
            "loss_out_boundary_aware_ce": 1.0,
            "loss_aux": 0.4,
            "loss_boundary": 20.0,
        },
    ),
    "mask2former_r50_camvid_288x288": (64, M2F_PARTS),
}


def test_every_new_camvid_config_is_tested() -> None:
    names = {p.stem for p in CONFIGS.glob("*.yaml")}
    assert set(CASES) <= names


@pytest.mark.parametrize("name", sorted(CASES))
def test_camvid_config_trains_logs_every_head_and_evaluates(
    name: str, camvid_root: Path, tmp_path: Path
) -> None:
    crop, parts = CASES[name]
    config = CONFIGS / f"{name}.yaml"
    out = tmp_path / "run"
    overrides = [
        f"output_dir={out}",
        f"data.root={camvid_root}",
        "data.train_split=smoke",
        "data.val_split=smoke",
        "data.test_split=smoke",
        "data.batch_size=2",
        "data.num_workers=0",
        f"data.train_transforms.1.RandomCrop.size=[{crop},{crop}]",
        f"data.train_transforms.5.Pad.size=[{crop},{crop}]",
        "evaluation.batch_size=2",
        "train.max_iters=2",
        "train.log_interval=1",
        "schedule.warmup_iters=0",
        "logging.progress_bar=false",
        "logging.num_vis=0",
    ]
    assert train_mod.main(["--config", str(config), "--cpu", "--set", *overrides]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    records = [r for r in log if r["type"] == "train"]
    assert len(records) == 2
    for record in records:
        logged = {k: v for k, v in record.items() if k.startswith("loss_")}
        assert set(logged) == set(parts), f"{name}: logged {sorted(logged)}"
        assert all(math.isfinite(v) and v >= 0 for v in logged.values())
        total = sum(parts[k] * logged[k] for k in parts)
        assert record["loss"] == pytest.approx(total, rel=1e-4)

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
    assert metrics["num_images"] == 2 and 0.0 <= metrics["metrics"]["miou"] <= 1.0
