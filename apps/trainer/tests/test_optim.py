"""Optimizer parameter groups and the poly + warmup + floor schedule."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from seg_trainer.config import OptimizerConfig, ScheduleConfig
from seg_trainer.optim import (
    WarmupPolyLR,
    build_optimizer,
    build_scheduler,
    param_groups,
    schedule_lr,
)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1)
        )
        self.decode_head = nn.Sequential(nn.Conv2d(4, 4, 3), nn.GroupNorm(2, 4), nn.Conv2d(4, 2, 1))
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def names_of(model, group):
    ids = {id(p) for p in group["params"]}
    return sorted(n for n, p in model.named_parameters() if id(p) in ids)


def test_no_decay_on_norm_and_bias_and_head_lr_mult():
    model = Tiny()
    groups = {
        g["name"]: g for g in param_groups(model, lr=0.01, weight_decay=5e-4, head_lr_mult=10)
    }
    assert names_of(model, groups["backbone"]) == ["backbone.0.weight", "backbone.2.weight"]
    assert names_of(model, groups["backbone_no_decay"]) == [
        "backbone.1.bias",
        "backbone.1.weight",
        "backbone.2.bias",
    ]
    assert names_of(model, groups["head"]) == ["decode_head.0.weight", "decode_head.2.weight"]
    assert names_of(model, groups["head_no_decay"]) == [
        "decode_head.0.bias",
        "decode_head.1.bias",
        "decode_head.1.weight",
        "decode_head.2.bias",
    ]
    assert groups["backbone"]["weight_decay"] == 5e-4 and groups["head"]["weight_decay"] == 5e-4
    assert (
        groups["backbone_no_decay"]["weight_decay"] == 0 == groups["head_no_decay"]["weight_decay"]
    )
    assert groups["backbone"]["lr"] == 0.01 and groups["backbone_no_decay"]["lr"] == 0.01
    assert groups["head"]["lr"] == pytest.approx(0.1) and groups["head_no_decay"][
        "lr"
    ] == pytest.approx(0.1)
    # frozen parameters are left out; every trainable parameter is in exactly one group
    listed = [id(p) for g in groups.values() for p in g["params"]]
    assert len(listed) == len(set(listed)) == sum(p.requires_grad for p in model.parameters())


def test_decay_everything_option():
    model = Tiny()
    groups = param_groups(model, lr=0.01, weight_decay=1e-4, decay_norm_and_bias=True)
    assert [g["name"] for g in groups] == ["backbone", "head"]
    assert all(g["weight_decay"] == 1e-4 for g in groups)


def test_build_optimizer_sgd_settings():
    cfg = OptimizerConfig(lr=0.02, momentum=0.9, weight_decay=5e-4, head_lr_mult=10.0)
    opt = build_optimizer(Tiny(), cfg)
    assert isinstance(opt, torch.optim.SGD)
    assert all(g["momentum"] == 0.9 for g in opt.param_groups)
    assert sorted(g["lr"] for g in opt.param_groups) == pytest.approx([0.02, 0.02, 0.2, 0.2])


def test_poly_values_with_floor():
    kw = dict(max_iters=100, power=0.9, min_lr=1e-4)
    assert schedule_lr(0, 0.01, **kw) == pytest.approx(0.01)
    assert schedule_lr(50, 0.01, **kw) == pytest.approx((0.01 - 1e-4) * 0.5**0.9 + 1e-4)
    assert schedule_lr(100, 0.01, **kw) == pytest.approx(1e-4)
    assert schedule_lr(1000, 0.01, **kw) == pytest.approx(1e-4)  # clamped
    lrs = [schedule_lr(i, 0.01, **kw) for i in range(101)]
    assert all(a > b for a, b in itertools.pairwise(lrs))


def test_linear_warmup_values():
    kw = dict(max_iters=100, power=1.0, min_lr=0.0, warmup_iters=10, warmup_ratio=0.1)
    assert schedule_lr(0, 1.0, **kw) == pytest.approx(0.1 * 1.0)
    # halfway through warmup: poly(5) * (1 - 0.5 * 0.9)
    assert schedule_lr(5, 1.0, **kw) == pytest.approx(0.95 * 0.55)
    assert schedule_lr(10, 1.0, **kw) == pytest.approx(0.9)  # warmup over: plain poly
    lrs = [schedule_lr(i, 1.0, **kw) for i in range(11)]
    assert all(a < b for a, b in itertools.pairwise(lrs))


def test_scheduler_steps_every_group_and_state_round_trips():
    model = Tiny()
    opt = build_optimizer(model, OptimizerConfig(lr=0.01, head_lr_mult=10.0))
    sched = build_scheduler(opt, ScheduleConfig(min_lr=1e-4, warmup_iters=3), max_iters=20)
    assert isinstance(sched, WarmupPolyLR)
    seen = []
    for _ in range(7):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    for it, lrs in enumerate(seen):
        for g, lr in zip(opt.param_groups, lrs):
            assert lr == pytest.approx(
                schedule_lr(
                    it,
                    g["initial_lr"],
                    max_iters=20,
                    min_lr=1e-4,
                    warmup_iters=3,
                    warmup_ratio=1e-6,
                )
            )
    # a fresh scheduler restored from the state continues identically
    state = sched.state_dict()
    opt2 = build_optimizer(Tiny(), OptimizerConfig(lr=0.01, head_lr_mult=10.0))
    sched2 = build_scheduler(opt2, ScheduleConfig(min_lr=1e-4, warmup_iters=3), max_iters=20)
    sched2.load_state_dict(state)
    opt.step()
    sched.step()
    opt2.step()
    sched2.step()
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in opt2.param_groups]
