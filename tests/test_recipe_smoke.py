"""Smoke run of every modern-family recipe (DeepLabV3+, UPerNet, SegFormer, OCRNet) exactly as
shipped, on the real Cityscapes / ADE20K samples in ../shared/data/fixtures (skipped with a
reason when absent): one training iteration on a 64x64 crop of the val images, then the
recipe's own evaluation. Only sizes change; model, optimizer, schedule and loss are the
config's. (Full-length training needs GPUs and ImageNet weights; see each config's header.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from seg_trainer import train as train_mod

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "data" / "fixtures"
ROOTS = {"cityscapes": FIXTURES / "cityscapes", "ade20k": FIXTURES / "ade20k"}
FAMILIES = ("deeplabv3plus", "upernet", "segformer", "ocrnet")
CONFIGS = sorted(
    p
    for p in (REPO / "apps" / "trainer" / "configs").rglob("*.yaml")
    if yaml.safe_load(p.read_text())["model"]["name"] in FAMILIES
)


def test_every_modern_family_has_recipes() -> None:
    names = {yaml.safe_load(p.read_text())["model"]["name"] for p in CONFIGS}
    assert names == set(FAMILIES)


def _two_frame_cityscapes(src: Path, dst: Path) -> Path:
    """The one Cityscapes sample linked under two frame ids: batch 2 for BatchNorm on 1x1 maps."""
    for path in src.rglob("*.png"):
        for frame in ("000294", "000295"):
            target = dst / path.relative_to(src).as_posix().replace("000294", frame)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path)
    return dst


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_recipe_trains_one_iteration_and_evaluates(config: Path, tmp_path: Path) -> None:
    dataset = yaml.safe_load(config.read_text())["data"]["dataset"]
    root = ROOTS[dataset]
    if not root.exists():
        pytest.skip(f"no {dataset} sample at {root} (see ../shared/data/README.md)")
    if dataset == "cityscapes":
        root = _two_frame_cityscapes(root, tmp_path / "cityscapes")
    out = tmp_path / "run"
    overrides = [
        f"output_dir={out}",
        f"data.root={root}",
        "data.train_split=val",
        "data.test_split=null",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.train_transforms.0.RandomResize.scale=[256,128]",
        "data.train_transforms.1.RandomCrop.size=[64,64]",
        "data.train_transforms.5.Pad.size=[64,64]",
        "train.max_iters=1",
        "train.log_interval=1",
        "schedule.warmup_iters=0",
        "evaluation.interval=0",
        "evaluation.mode=whole",
        "checkpoint.interval=0",
        "logging.progress_bar=false",
        "logging.num_vis=1",
    ]
    if dataset == "ade20k":  # keep-ratio resize of the val images, scaled down
        overrides.append("data.val_transforms.0.Resize.scale=[256,64]")
    assert train_mod.main(["--config", str(config), "--cpu", "--set", *overrides]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if r.get("type") == "train"]
    assert len(losses) == 1 and losses[0] > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["mIoU"] <= 1.0
