"""Smoke run of every modern-family recipe (DeepLabV3+, UPerNet, SegFormer, OCRNet), real-time
recipe (BiSeNetV2, Fast-SCNN, STDC, DDRNet, PIDNet) and Mask2Former recipe for Cityscapes /
ADE20K exactly as shipped, on the real Cityscapes / ADE20K samples in ../shared/data/fixtures
(skipped with a reason when absent): one training iteration on a 64x64 crop of the val images (128x128 for the real-time models),
then the recipe's own evaluation. Only sizes change (the real-time and Mask2Former recipes are
also evaluated on a downscaled Cityscapes image, labels at full size); model, optimizer,
schedule and loss are the config's, and every loss term of every output is logged. (Full-length
training needs GPUs and ImageNet weights; see each config's header.)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from seg_trainer import train as train_mod

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "data" / "fixtures"
ROOTS = {"cityscapes": FIXTURES / "cityscapes", "ade20k": FIXTURES / "ade20k"}
MODERN = ("deeplabv3plus", "upernet", "segformer", "ocrnet")
REALTIME = ("bisenetv2", "fast_scnn", "stdc", "ddrnet", "pidnet")
FAMILIES = (*MODERN, *REALTIME, "mask2former")
NORMALIZE = {"Normalize": {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]}}


def _recipe(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


CONFIGS = sorted(
    p
    for p in (REPO / "apps" / "trainer" / "configs").rglob("*.yaml")
    if _recipe(p)["model"]["name"] in FAMILIES and _recipe(p)["data"]["dataset"] in ROOTS
)
# the loss parts log.jsonl must show for each family beyond loss_out*
EXPECTED_PARTS = {
    "bisenetv2": ["loss_aux0", "loss_aux1", "loss_aux2", "loss_aux3"],
    "fast_scnn": ["loss_aux0", "loss_aux1"],
    "stdc": ["loss_aux0", "loss_aux1", "loss_detail_bce", "loss_detail_dice"],
    "ddrnet": ["loss_aux"],
    "pidnet": ["loss_out_ohem_pidnet", "loss_out_boundary_aware_ce", "loss_aux", "loss_boundary"],
    "mask2former": ["loss_out_ce", "loss_out_mask", "loss_out_dice", "loss_out_ce_0"],
}


def test_every_family_has_recipes() -> None:
    names = {_recipe(p)["model"]["name"] for p in CONFIGS}
    assert names == set(FAMILIES)


def _two_frame_cityscapes(src: Path, dst: Path) -> Path:
    """The one Cityscapes sample linked under two frame ids: batch 2 for BatchNorm on 1x1 maps."""
    for path in src.rglob("*.png"):
        for frame in ("000294", "000295"):
            target = dst / path.relative_to(src).as_posix().replace("000294", frame)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path)
    return dst


# Mask2Former on Swin-B/L (107M/215M parameters): 35-55 s each on one CPU thread (building the
# backbone, one AdamW step, a ~1-2.6 GB checkpoint), so marked slow
HEAVY = ("swin_base", "swin_large")
PARAMS = [
    pytest.param(
        p,
        id=p.stem,
        marks=[pytest.mark.slow]
        if any(h in _recipe(p)["model"]["backbone"] for h in HEAVY)
        else [],
    )
    for p in CONFIGS
]


@pytest.mark.parametrize("config", PARAMS)
def test_recipe_trains_one_iteration_and_evaluates(config: Path, tmp_path: Path) -> None:
    dataset = yaml.safe_load(config.read_text())["data"]["dataset"]
    root = ROOTS[dataset]
    if not root.exists():
        pytest.skip(f"no {dataset} sample at {root} (see ../shared/data/README.md)")
    if dataset == "cityscapes":
        root = _two_frame_cityscapes(root, tmp_path / "cityscapes")
    name = _recipe(config)["model"]["name"]
    # 128x128 crops for the real-time models: at 64x64 their stride-64 maps (PIDNet's I branch,
    # DDRNet's low-resolution branch) are 1x1, BatchNorm over two values gives huge gradients
    # and one SGD step can push the weights to non-finite eval logits (measured: PIDNet-S).
    crop = 128 if name in REALTIME else 64
    out = tmp_path / "run"
    overrides = [
        f"output_dir={out}",
        f"data.root={root}",
        "data.train_split=val",
        "data.test_split=null",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.train_transforms.0.RandomResize.scale=[256,128]",
        f"data.train_transforms.1.RandomCrop.size=[{crop},{crop}]",
        f"data.train_transforms.5.Pad.size=[{crop},{crop}]",
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
    elif name not in MODERN:  # whole-image 2048x1024 inference is slow for Mask2Former/Swin-L
        val = [{"Resize": {"scale": [256, 128], "resize_label": False}}, NORMALIZE]
        overrides.append(f"data.val_transforms={json.dumps(val)}")
    assert train_mod.main(["--config", str(config), "--cpu", "--set", *overrides]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train_log = [r for r in log if r.get("type") == "train"]
    losses = [r["loss"] for r in train_log]
    assert len(losses) == 1 and losses[0] > 0
    parts = {k: v for k, v in train_log[0].items() if k.startswith("loss_")}
    for key in EXPECTED_PARTS.get(name, []):
        assert key in parts and parts[key] >= 0, f"{key} not logged: {sorted(parts)}"
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["mIoU"] <= 1.0
    # the checkpoints of the large recipes are 1-3 GB each and pytest keeps its temporary
    # folders: one integration run left ~29 GB behind before this
    shutil.rmtree(out / "checkpoints")
