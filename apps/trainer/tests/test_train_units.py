"""Pieces of the training loop that need no training: samplers, resume checks, pictures."""

from __future__ import annotations

import warnings

import pytest
import torch

from seg_trainer.build import EpochSampler, ShardSampler, find_normalize
from seg_trainer.checkpoint import CheckpointError
from seg_trainer.config import config_from_dict
from seg_trainer.train import _check_compatible, _denormalize

BASE = {
    "output_dir": "runs/x",
    "model": {"name": "pspnet", "backbone": "resnet18_deep", "num_classes": 3},
    "data": {
        "dataset": "synthetic",
        "val_transforms": [{"Normalize": {"mean": [10, 20, 30], "std": [2, 4, 8]}}],
    },
    "train": {"max_iters": 10},
}


def test_epoch_order_depends_only_on_seed_and_epoch():
    a, b = EpochSampler(20, seed=1), EpochSampler(20, seed=1)
    a.set_epoch(3)
    b.set_epoch(0)
    list(b)  # iterating does not advance anything
    b.set_epoch(3)
    assert list(a) == list(b) and sorted(a) == list(range(20))
    a.set_epoch(4)
    assert list(a) != list(b)
    assert list(EpochSampler(20, seed=2)) != list(EpochSampler(20, seed=1))


def test_start_skips_the_seen_part_of_the_epoch():
    s = EpochSampler(12, seed=0)
    s.set_epoch(2)
    full = list(s)
    s.start = 8
    s.set_epoch(2)  # set_epoch keeps the skip (accelerate calls it at each iteration start)
    assert list(s) == full[8:] and len(s) == 4


def test_shards_partition_the_dataset_without_padding():
    shards = [list(ShardSampler(7, rank=r, world_size=3)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(7))
    assert [len(ShardSampler(7, rank=r, world_size=3)) for r in range(3)] == [3, 2, 2]


def test_incompatible_checkpoint_config_names_the_keys(tmp_path):
    cfg = config_from_dict(BASE)
    old = cfg.to_dict()
    old["model"]["num_classes"] = 5
    with pytest.raises(CheckpointError, match=r"model.num_classes: checkpoint 5 vs config 3"):
        _check_compatible(old, cfg, tmp_path / "c.pth")
    benign = cfg.to_dict()
    benign["optimizer"]["lr"] = 0.5
    benign["output_dir"] = "elsewhere"
    with pytest.warns(UserWarning, match=r"optimizer.lr"):
        _check_compatible(benign, cfg, tmp_path / "c.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _check_compatible({**cfg.to_dict(), "output_dir": "moved"}, cfg, tmp_path / "c.pth")


def test_denormalize_inverts_normalize():
    cfg = config_from_dict(BASE)
    norm = find_normalize(cfg)
    assert norm == ([10.0, 20.0, 30.0], [2.0, 4.0, 8.0], False)
    rgb = torch.randint(0, 256, (3, 5, 4)).float()
    x = (rgb - torch.tensor([10.0, 20, 30])[:, None, None]) / torch.tensor([2.0, 4, 8])[
        :, None, None
    ]
    out = _denormalize(x, norm)
    assert out.shape == (5, 4, 3) and out.dtype.name == "uint8"
    assert (torch.from_numpy(out).permute(2, 0, 1).float() == rgb).all()
