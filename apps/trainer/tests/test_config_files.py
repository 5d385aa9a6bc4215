"""Every shipped config loads, builds its model, and builds its dataset where data exists."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from seg_trainer.build import build_dataset, build_model
from seg_trainer.config import load_config

APP = Path(__file__).resolve().parents[1]
REPO = APP.parents[1]
CONFIGS = sorted((APP / "configs").rglob("*.yaml"))
FIXTURES = REPO.parent / "shared" / "data" / "fixtures"
# real samples in each dataset's official layout (see ../shared/data/README.md)
FIXTURE_ROOTS = {
    "cityscapes": FIXTURES / "cityscapes",
    "ade20k": FIXTURES / "ade20k",
    "voc": FIXTURES / "voc",
}


def test_configs_exist():
    names = {p.relative_to(APP / "configs").as_posix() for p in CONFIGS}
    for expected in (
        "cityscapes/pspnet_r101-deep_769x769_40k.yaml",
        "cityscapes/deeplabv3_r101-deep_769x769_40k.yaml",
        "cityscapes/denseaspp_r101-deep_769x769_40k.yaml",
        "ade20k/pspnet_r50-deep_520x520_150k.yaml",
        "ade20k/deeplabv3_r101-deep_520x520_150k.yaml",
        "voc/pspnet_r50-v1c_512x512_20k.yaml",
        "pascal_context/pspnet_r101-v1c_480x480_40k_59.yaml",
        "demo/pspnet_r18-deep_synthetic.yaml",
    ):
        assert expected in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(APP / "configs").as_posix())
def test_config_loads_and_builds_its_model(path):
    cfg = load_config(path)
    assert cfg.output_dir and cfg.train.max_iters > 0
    text = path.read_text()
    assert text.lstrip().startswith("#"), "each config starts with a comment naming its source"
    with torch.device("meta"):  # structure only, no memory
        model = build_model(cfg)
    if cfg.model.name.startswith("torchvision:"):  # a baseline (CamVid benchmark)
        assert (getattr(model, "aux_classifier", None) is not None) == cfg.model.aux
    else:
        assert model.decode_head is not None
        assert (model.aux_head is not None) == cfg.model.aux


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(APP / "configs").as_posix())
def test_config_dataset_builds_where_data_exists(path):
    cfg = load_config(path)
    if cfg.data.dataset == "synthetic":
        overrides = []
    else:
        root = FIXTURE_ROOTS.get(cfg.data.dataset)
        if cfg.data.dataset == "camvid":
            root = FIXTURES.parent / "camvid"
        if root is None or not root.exists():
            pytest.skip(
                f"no {cfg.data.dataset} data at {root or FIXTURES} to build the dataset from"
            )
        overrides = [f"data.root={root}"]
    cfg = load_config(path, overrides)
    ds = build_dataset(cfg, "val")
    assert ds.num_classes == cfg.model.num_classes
    assert len(ds) > 0
    sample = ds[0]
    assert sample["image"].dtype == torch.float32 and sample["image"].shape[0] == 3
    values = set(sample["label"].unique().tolist()) - {cfg.loss.ignore_index}
    assert all(0 <= v < cfg.model.num_classes for v in values)
