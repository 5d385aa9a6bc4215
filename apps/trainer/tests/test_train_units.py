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
        # recomputing activations changes no number (tests/test_train_resume.py)
        other = cfg.to_dict()
        other["train"]["grad_checkpointing"] = True
        _check_compatible(other, cfg, tmp_path / "c.pth")
    ema = cfg.to_dict()
    ema["train"]["ema"]["enabled"] = True
    with pytest.warns(UserWarning, match=r"train.ema"):
        _check_compatible(ema, cfg, tmp_path / "c.pth")


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


# ------------------------------------------------------------------- gradient checkpointing


def _grads_and_state(backbone: str, checkpointing: bool, **kwargs):
    from seg_heads import create_model
    from seg_trainer.train import enable_grad_checkpointing

    torch.manual_seed(0)
    model = create_model(
        "fcn", backbone=backbone, num_classes=3, aux=False, head_kwargs={"channels": 8}, **kwargs
    )
    if checkpointing:
        enable_grad_checkpointing(model)
    model.train()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model(x)["out"].square().mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return grads, model.state_dict()


@pytest.mark.parametrize(
    ("backbone", "kwargs", "calls"),
    [
        ("resnet18_deep", {}, 8),  # ours: the 8 BasicBlocks
        ("timm:resnet18", {"output_stride": 32}, 8),  # timm features: the 8 blocks, ours
        ("timm:convnext_atto", {"output_stride": 32}, 12),  # timm's switches: 2+2+6+2 blocks
    ],
)
def test_grad_checkpointing_gives_the_same_gradients_and_bn_statistics(
    backbone, kwargs, calls, monkeypatch
):
    if backbone.startswith("timm:"):
        pytest.importorskip("timm")
    import torch.utils.checkpoint as tuc

    plain_grads, plain_state = _grads_and_state(backbone, False, **kwargs)
    real, count = tuc.checkpoint, []

    def counting(*args, **kw):
        count.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(tuc, "checkpoint", counting)
    grads, state = _grads_and_state(backbone, True, **kwargs)
    assert len(count) == calls  # the blocks were recomputed
    assert grads.keys() == plain_grads.keys() and len(grads) > 10
    assert [k for k in grads if not torch.equal(grads[k], plain_grads[k])] == []
    assert state.keys() == plain_state.keys()  # the same checkpoint layout
    # BN statistics updated once (timm's own checkpointing would update them twice)
    assert [k for k in state if not torch.equal(state[k], plain_state[k])] == []


def test_grad_checkpointing_refuses_unsupported_backbones():
    from seg_heads import create_model
    from seg_trainer.config import ConfigError
    from seg_trainer.train import enable_grad_checkpointing

    model = create_model("fcn", backbone="mobilenet_v3_small", num_classes=3, aux=False)
    with pytest.raises(ConfigError, match=r"'train.grad_checkpointing'.*MobileNetV3.*false"):
        enable_grad_checkpointing(model)


# ------------------------------------------------------------------------------ torch.compile

_PROBE = """
import torch
from torch import nn
m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
m.compile()
m(torch.randn(2, 3, 8, 8)).sum().backward()
"""


@pytest.mark.slow  # minutes: inductor compiles the training and evaluation graphs
def test_compile_switch_builds_and_trains_one_iteration(tmp_path):
    """train.compile: the model is compiled in place (the same state-dict keys) and one tiny
    iteration runs. Skipped where torch.compile cannot compile a 3-layer net within 60 s
    (inductor needs a C++ compiler; a cold cache on a busy CPU is slow)."""
    import os
    import subprocess
    import sys

    import yaml

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCHINDUCTOR_COMPILE_THREADS": "1"}
    try:
        probe = subprocess.run(
            [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        pytest.skip("torch.compile did not compile a 3-layer net within 60 s on this CPU")
    if probe.returncode != 0:
        pytest.skip(f"torch.compile does not work here: {probe.stderr.strip()[-300:]}")
    cfg = {
        "output_dir": str(tmp_path / "run"),
        "model": {
            "name": "fcn",
            "backbone": "resnet18",
            "num_classes": 3,
            "aux": False,
            "head_kwargs": {"channels": 8},
        },
        "data": {
            "dataset": "synthetic",
            "dataset_options": {"num_samples": 2, "size": [32, 32], "num_classes": 3},
            "train_transforms": [{"Normalize": {}}],
            "val_transforms": [{"Normalize": {}}],
            "batch_size": 2,
            "num_workers": 0,
        },
        "train": {"max_iters": 1, "compile": True},
        "evaluation": {"batch_size": 2},
        "logging": {"tensorboard": False, "progress_bar": False, "num_vis": 0},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    script = (
        "import sys, torch\n"
        "from seg_trainer.train import train\n"
        "from seg_trainer.config import load_config\n"
        "result = train(load_config(sys.argv[1]), cpu=True)\n"
        "keys = torch.load(result.checkpoint, weights_only=True)['model'].keys()\n"
        "assert not any('_orig_mod' in k for k in keys), list(keys)[:3]\n"
        "assert result.iteration == 1 and result.metrics['mIoU'] is not None\n"
    )
    try:
        run = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / "cfg.yaml")],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    except subprocess.TimeoutExpired:
        pytest.skip("compiling the tiny model took over 600 s on this CPU")
    assert run.returncode == 0, run.stderr[-3000:]
