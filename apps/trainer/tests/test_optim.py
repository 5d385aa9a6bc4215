"""Optimizer parameter groups (layer-wise LR decay included) and the poly/cosine/step +
warmup + floor schedules."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from seg_trainer.config import ConfigError, OptimizerConfig, ScheduleConfig
from seg_trainer.optim import (
    WarmupPolyLR,
    build_optimizer,
    build_scheduler,
    layer_decay_groups,
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


class WithEmbeddings(nn.Module):
    """A backbone with Swin-like position tables and a head with embeddings."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.attn = nn.Linear(4, 4)
        self.backbone.attn.relative_position_bias_table = nn.Parameter(torch.zeros(9, 2))
        self.backbone.absolute_pos_embed = nn.Parameter(torch.zeros(1, 16, 4))
        self.decode_head = nn.Module()
        self.decode_head.query_feat = nn.Embedding(3, 4)
        self.decode_head.level_embed = nn.Parameter(torch.zeros(3, 4))  # a plain matrix
        self.decode_head.proj = nn.Linear(4, 4)


def test_no_decay_on_embeddings_and_position_tables():
    model = WithEmbeddings()
    groups = {g["name"]: g for g in param_groups(model, lr=1e-5, weight_decay=0.05)}
    assert names_of(model, groups["backbone"]) == ["backbone.attn.weight"]
    assert names_of(model, groups["backbone_no_decay"]) == [
        "backbone.absolute_pos_embed",
        "backbone.attn.bias",
        "backbone.attn.relative_position_bias_table",
    ]
    assert names_of(model, groups["head"]) == [
        "decode_head.level_embed",
        "decode_head.proj.weight",
    ]
    assert names_of(model, groups["head_no_decay"]) == [
        "decode_head.proj.bias",
        "decode_head.query_feat.weight",
    ]
    # decay_norm_and_bias: true decays them all (mmseg's default configs)
    everything = param_groups(model, lr=1e-5, weight_decay=0.05, decay_norm_and_bias=True)
    assert [g["name"] for g in everything] == ["backbone", "head"]


def test_mask2former_decay_groups_as_official():
    """Official Mask2Former: no decay on the decoder's nn.Embedding query features, query and
    level embeddings; the pixel decoder's level_embed (an nn.Parameter) is decayed."""
    from seg_heads import create_model, tiny_config

    model = create_model("mask2former", num_classes=3, **tiny_config("mask2former"))
    opt = build_optimizer(
        model, OptimizerConfig(name="adamw", lr=1e-5, weight_decay=0.05, head_lr_mult=10.0)
    )
    decay = {g["name"]: g["weight_decay"] for g in opt.param_groups}
    assert decay == {"backbone": 0.05, "backbone_no_decay": 0.0, "head": 0.05, "head_no_decay": 0.0}
    by_name = {}
    for g in opt.param_groups:
        for n in names_of(model, g):
            by_name[n] = g
    embeds = [n for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
    assert len(embeds) == 3  # query_feat, query_embed, level_embed of the decoder
    for n in embeds:
        assert by_name[n + ".weight"]["name"] == "head_no_decay"
        assert by_name[n + ".weight"]["lr"] == pytest.approx(1e-4)  # head: lr x 10
    (pixel_level,) = [n for n in by_name if n.endswith("pixel_decoder.level_embed")]
    assert by_name[pixel_level]["name"] == "head"
    assert all(
        g["lr"] == pytest.approx(1e-5) for g in opt.param_groups if g["name"].startswith("backbone")
    )


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


# ------------------------------------------------------------------ cosine and step schedules


def test_cosine_values_with_floor_and_warmup():
    kw = dict(max_iters=100, name="cosine", min_lr=1e-4)
    assert schedule_lr(0, 0.01, **kw) == pytest.approx(0.01)
    assert schedule_lr(50, 0.01, **kw) == pytest.approx(1e-4 + (0.01 - 1e-4) * 0.5)  # cos(pi/2)=0
    assert schedule_lr(25, 0.01, **kw) == pytest.approx(
        1e-4 + (0.01 - 1e-4) * (1 + 2**-0.5) / 2  # cos(pi/4)
    )
    assert schedule_lr(100, 0.01, **kw) == pytest.approx(1e-4)
    assert schedule_lr(500, 0.01, **kw) == pytest.approx(1e-4)  # clamped
    lrs = [schedule_lr(i, 0.01, **kw) for i in range(101)]
    assert all(a > b for a, b in itertools.pairwise(lrs))
    # the warmup multiplies the cosine value
    warm = schedule_lr(5, 0.01, **kw, warmup_iters=10, warmup_ratio=0.1)
    assert warm == pytest.approx(schedule_lr(5, 0.01, **kw) * (1 - 0.5 * 0.9))


def test_step_values_and_warmup():
    kw = dict(max_iters=100, name="step", milestones=[30, 60], gamma=0.1, min_lr=1e-3)
    assert [schedule_lr(i, 1.0, **kw) for i in (0, 29, 30, 59, 60, 99, 100)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1, 0.01, 0.01, 0.01]  # min_lr does not floor the step schedule
    )
    assert schedule_lr(2, 1.0, **kw, warmup_iters=4, warmup_ratio=0.0) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "schedule",
    [
        ScheduleConfig(name="cosine", min_lr=1e-4, warmup_iters=3),
        ScheduleConfig(name="step", milestones=[4, 9], gamma=0.5, warmup_iters=2),
    ],
)
def test_cosine_and_step_resume_exactly(schedule):
    """Pure functions of the iteration: a scheduler restored mid-run continues bit for bit."""

    def run(steps, state=None):
        opt = build_optimizer(Tiny(), OptimizerConfig(lr=0.01, head_lr_mult=10.0))
        sched = build_scheduler(opt, schedule, max_iters=12)
        if state is not None:  # as the trainer resumes: optimizer, then scheduler
            opt.load_state_dict(state[0])
            sched.load_state_dict(state[1])
        seen = []
        for _ in range(steps):
            seen.append([g["lr"] for g in opt.param_groups])
            opt.step()
            sched.step()
        return seen, (opt.state_dict(), sched.state_dict())

    full, _ = run(12)
    first, state = run(5)
    rest, _ = run(7, state)
    assert first + rest == full  # exactly, not approx
    for it, lrs in enumerate(full):
        assert lrs[0] == schedule_lr(
            it,
            0.01,
            max_iters=12,
            name=schedule.name,
            min_lr=schedule.min_lr,
            milestones=schedule.milestones,
            gamma=schedule.gamma,
            warmup_iters=schedule.warmup_iters,
            warmup_ratio=schedule.warmup_ratio,
        )


def test_unknown_schedule_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="cosine, step"):
        WarmupPolyLR(torch.optim.SGD(Tiny().parameters(), lr=0.1), max_iters=5, name="cos")


# ------------------------------------------------------------------ layer-wise LR decay


def _timm_model(backbone, **backbone_kwargs):
    pytest.importorskip("timm")
    from seg_heads import create_model

    return create_model(
        "upernet",
        backbone=backbone,
        num_classes=3,
        aux=False,
        backbone_kwargs=backbone_kwargs,
        head_kwargs={"channels": 8, "pool_scales": [1, 2]},
    )


def _ids(groups, model):
    """{parameter name: (layer id, lr_mult, weight decay)}."""
    out = {}
    for g in groups:
        for n in names_of(model, g):
            out[n] = (g["layer_id"], g["lr_mult"], g["weight_decay"])
    return out


def test_layer_decay_convnext_layer_wise_ids_as_mmseg():
    # convnext_atto: depths (2, 2, 6, 2); mmseg's get_layer_id_for_convnext with num_layers 12
    model = _timm_model("timm:convnext_atto", out_norm=True)
    groups = layer_decay_groups(model, lr=1.0, weight_decay=0.05, decay=0.5, num_layers=12)
    ids = _ids(groups, model)
    assert len(ids) == sum(1 for p in model.parameters() if p.requires_grad)
    expect = {
        "backbone.model.stem_0.weight": 0,
        "backbone.model.stages_0.blocks.1.conv_dw.weight": 1,
        "backbone.model.stages_1.downsample.1.weight": 2,
        "backbone.model.stages_1.blocks.0.mlp.fc1.weight": 2,
        "backbone.model.stages_2.downsample.1.weight": 3,
        "backbone.model.stages_2.blocks.2.mlp.fc1.weight": 3,
        "backbone.model.stages_2.blocks.3.mlp.fc1.weight": 4,
        "backbone.model.stages_2.blocks.5.mlp.fc1.weight": 4,
        "backbone.model.stages_3.downsample.1.weight": 12,
        "backbone.model.stages_3.blocks.1.mlp.fc2.weight": 12,
        "backbone.out_norms.0.weight": 13,  # outside the layers, as mmseg's norm0..3
        "decode_head.fpn_bottleneck.conv.weight": 13,
    }
    for name, lid in expect.items():
        assert ids[name][0] == lid, name
        assert ids[name][1] == pytest.approx(0.5 ** (13 - lid)), name
    # no weight decay on 1-D parameters (norms, biases, layer scale gamma), as mmseg's constructor
    assert ids["backbone.model.stages_0.blocks.0.gamma"][2] == 0.0
    assert ids["backbone.model.stages_0.blocks.0.conv_dw.bias"][2] == 0.0
    assert ids["backbone.model.stages_0.blocks.0.mlp.fc1.weight"][2] == 0.05
    # the groups: highest layer id first, the head last (train.py logs groups 0 and -1)
    assert groups[-1]["name"].startswith("head") and groups[0]["layer_id"] == 13
    assert all(g["lr"] == g["initial_lr"] == pytest.approx(g["lr_mult"]) for g in groups)


def test_layer_decay_convnext_stage_wise_and_default_num_layers():
    model = _timm_model("timm:convnext_atto")
    groups = layer_decay_groups(
        model, lr=0.1, weight_decay=0.0, decay=0.9, decay_type="stage_wise", num_layers=6
    )
    ids = _ids(groups, model)
    assert ids["backbone.model.stem_0.weight"][0] == 0
    assert ids["backbone.model.stages_2.downsample.1.weight"][0] == 0  # downsamples: 0
    assert ids["backbone.model.stages_2.blocks.4.mlp.fc1.weight"][0] == 3
    assert ids["backbone.model.stages_3.blocks.0.mlp.fc1.weight"][0] == 4
    assert ids["decode_head.conv_seg.weight"][0] == 7
    assert ids["backbone.model.stages_3.blocks.0.mlp.fc1.weight"][1] == pytest.approx(0.9**3)
    # num_layers unset: layer-wise 4 + (6 - 1) // 3 = 5 for depths (2, 2, 6, 2)
    default = _ids(layer_decay_groups(model, lr=1.0, weight_decay=0.0, decay=0.9), model)
    assert default["backbone.model.stages_3.blocks.0.mlp.fc1.weight"][0] == 5
    assert default["decode_head.conv_seg.weight"][:2] == (6, 1.0)


def test_layer_decay_swin_ids():
    model = _timm_model(
        "timm:swin_tiny_patch4_window7_224",
        embed_dim=16,
        depths=[1, 1, 2, 1],
        num_heads=[1, 1, 1, 1],
        img_size=64,
        window_size=4,
    )
    ids = _ids(layer_decay_groups(model, lr=1.0, weight_decay=0.01, decay=0.8), model)
    # num_layers = 5 blocks; patch embedding 0, block j of stage i: 1 + j + sum(depths[:i])
    assert ids["backbone.model.patch_embed.proj.weight"][0] == 0
    assert ids["backbone.model.layers_0.blocks.0.attn.qkv.weight"][0] == 1
    assert ids["backbone.model.layers_1.downsample.reduction.weight"][0] == 2
    assert ids["backbone.model.layers_1.blocks.0.attn.qkv.weight"][0] == 2
    assert ids["backbone.model.layers_2.blocks.1.mlp.fc1.weight"][0] == 4
    assert ids["backbone.model.layers_3.blocks.0.mlp.fc2.weight"][0] == 5
    assert ids["decode_head.conv_seg.weight"][0] == 6
    assert ids["backbone.model.layers_2.blocks.1.mlp.fc1.weight"][1] == pytest.approx(0.8**2)
    stage = _ids(
        layer_decay_groups(model, lr=1.0, weight_decay=0.0, decay=0.8, decay_type="stage_wise"),
        model,
    )
    assert stage["backbone.model.layers_2.blocks.1.mlp.fc1.weight"][0] == 3
    assert stage["backbone.model.layers_2.downsample.reduction.weight"][0] == 3
    assert stage["decode_head.conv_seg.weight"][0] == 5  # num_layers = 4 stages


def test_layer_decay_through_the_config_and_its_errors():
    model = _timm_model("timm:convnext_atto")
    cfg = OptimizerConfig(name="adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.9)
    opt = build_optimizer(model, cfg)
    assert {g["layer_id"] for g in opt.param_groups} == set(range(7))
    sched = build_scheduler(opt, ScheduleConfig(name="cosine", min_lr=0.0), max_iters=10)
    assert sched.lrs_at(0) == pytest.approx([g["initial_lr"] for g in opt.param_groups])
    with pytest.raises(ConfigError, match=r"schedule\.min_lr.*backbone_layer0"):
        build_scheduler(opt, ScheduleConfig(min_lr=9e-4), max_iters=10)
    with pytest.raises(ConfigError, match=r"'optimizer\.layer_decay': backbone .* no layer ids"):
        build_optimizer(Tiny(), cfg)
