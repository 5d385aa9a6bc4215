"""The issue-12 newcomer path: a modern multi-level model trained a few iterations on real
CamVid with ``seg-train`` and evaluated with ``seg-eval``, by overriding the model section of a
shipped CamVid config (nothing else changes).

Needs ``../shared/data/camvid`` (skipped with a reason when absent). Sizes are the smoke
test's: two iterations of batch 2 on 64x64 crops, evaluation on a 2-image split.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seg_trainer import evaluate as eval_mod
from seg_trainer import train as train_mod

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "apps" / "trainer" / "configs" / "camvid" / "pspnet_r18-deep_camvid_288x288.yaml"

# (name, backbone, output_stride, aux, head_kwargs, aux_kwargs): narrow heads keep CI fast
MODELS = [
    ("deeplabv3plus", "resnet18_v1c", 8, True, "{channels: 32, c1_channels: 16}", "{channels: 16}"),
    ("upernet", "resnet18_v1c", 32, True, "{channels: 32}", "{channels: 16}"),
    ("upernet", "timm:convnext_tiny", 32, True, "{channels: 32}", "{channels: 16}"),
    ("fpn", "resnet18_v1c", 32, False, "{channels: 32}", "{}"),
    ("segformer", "mit_b0", 32, False, "{channels: 32}", "{}"),
    ("ocrnet", "hrnet_w18", 32, False, "{}", "{}"),
]


@pytest.mark.parametrize("spec", MODELS, ids=lambda s: f"{s[0]}-{s[1]}")
def test_modern_model_trains_and_evaluates_on_camvid(spec, camvid_root: Path, tmp_path: Path):
    name, backbone, output_stride, aux, head_kwargs, aux_kwargs = spec
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
        "logging.progress_bar=false",
        f"model.name={name}",
        f"model.backbone={backbone}",
        f"model.output_stride={output_stride}",
        f"model.aux={str(aux).lower()}",
        "model.backbone_kwargs={}",
        f"model.head_kwargs={head_kwargs}",
        f"model.aux_kwargs={aux_kwargs}",
    ]
    assert train_mod.main(["--config", str(CONFIG), "--cpu", "--set", *overrides]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if r["type"] == "train"]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    saved = (out / "config.yaml").read_text()
    assert f"name: {name}" in saved and f"backbone: {backbone}" in saved

    metrics = eval_mod.main(
        [
            "--config",
            str(CONFIG),
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
