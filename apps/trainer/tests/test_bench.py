"""Tests for seg_trainer.bench (seg-bench): one tiny case per path, option guards, the table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from seg_trainer import bench
from seg_trainer.bench import (
    BenchResult,
    FlopsResult,
    build_bench_model,
    cli,
    count_flops,
    format_flops_table,
    format_table,
    run_case,
    run_cases,
)

TINY = {"size": (32, 32), "batch_size": 2, "iters": 1, "warmup": 1, "num_classes": 3}


def test_run_case_measures_a_model() -> None:
    r = run_case("fcn:resnet18", mode="infer", **TINY)
    assert isinstance(r, BenchResult)
    assert r.mode == "infer" and r.device == "cpu" and r.mem_kind == "peak_rss"
    assert r.images_per_s > 0 and r.seconds > 0
    assert r.peak_mem_mib >= r.base_mem_mib > 0
    assert r.params_m > 1


def test_train_step_updates_weights_with_channels_last(monkeypatch) -> None:
    built = []
    original = build_bench_model

    def spy(spec, **kw):
        built.append(original(spec, **kw))
        return built[-1]

    monkeypatch.setattr("seg_trainer.bench.build_bench_model", spy)
    torch.manual_seed(0)
    before = original("fcn:resnet18", num_classes=3).state_dict()
    r = run_case("fcn:resnet18", mode="train", channels_last=True, **TINY)
    assert r.mode == "train" and r.channels_last and r.images_per_s > 0
    after = built[0].state_dict()
    changed = [
        k for k, v in after.items() if v.is_floating_point() and not torch.equal(v, before[k])
    ]
    assert any(k.startswith("decode_head") for k in changed)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"amp": "fp16"}, "fp16 needs --device cuda"),
        ({"syncbn": True}, "SyncBatchNorm has no CPU kernel"),
        ({"amp": "fp8"}, "amp must be one of"),
        ({"mode": "export"}, "mode must be"),
    ],
)
def test_cuda_only_options_fail_clearly_on_cpu(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        run_case("fcn:resnet18", **{**TINY, **kwargs})


def test_bad_specs() -> None:
    with pytest.raises(ValueError, match="NAME:BACKBONE"):
        build_bench_model("pspnet")
    with pytest.raises(ValueError, match="torchvision:ARCH"):
        build_bench_model("torchvision:a:b")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        build_bench_model("ddrnet:ddrnet_23_slim:channels=8,=3")


class _ConvWithTrainingBranch(nn.Module):
    """One 3x3 conv; a second conv runs only in training (like an auxiliary head)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.train_only = nn.Conv2d(3, 5, 1, bias=False)

    def forward(self, x):
        out = {"out": self.conv(x)}
        if self.training:
            out["aux"] = self.train_only(x)
        return out


def test_count_flops_counts_what_the_eval_forward_uses(monkeypatch) -> None:
    monkeypatch.setattr(bench, "build_bench_model", lambda spec, **kw: _ConvWithTrainingBranch())
    r = count_flops("toy", size=(6, 10))
    assert r.device == "meta" and r.size == (6, 10)
    assert r.params_m * 1e6 == pytest.approx(8 * 3 * 9 + 8 + 5 * 3)
    assert r.infer_params_m * 1e6 == pytest.approx(8 * 3 * 9 + 8)  # the training branch is out
    macs = 8 * 3 * 9 * 6 * 10  # one multiply-add per weight per output pixel
    assert r.gmacs * 1e9 == pytest.approx(macs) and r.gflops * 1e9 == pytest.approx(2 * macs)


def test_count_flops_on_meta_equals_a_real_cpu_forward() -> None:
    on_meta = count_flops("fcn:resnet18", size=(40, 56), num_classes=3)
    model = build_bench_model("fcn:resnet18", num_classes=3, aux=False).eval()
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.randn(1, 3, 40, 56))
    assert on_meta.gflops * 1e9 == counter.get_total_flops()
    with_aux = build_bench_model("fcn:resnet18", num_classes=3)
    assert on_meta.params_m * 1e6 == sum(p.numel() for p in with_aux.parameters())
    # deployed: no auxiliary FCN head; every parameter of the rest is used
    assert on_meta.infer_params_m * 1e6 == sum(p.numel() for p in model.parameters())
    assert on_meta.infer_params_m < on_meta.params_m


def test_real_time_head_options_and_training_only_branches() -> None:
    # BiSeNetV2's four booster heads run only in training; the head width is a spec option
    r = count_flops("bisenetv2:bisenetv2", size=(64, 128), num_classes=3)
    model = build_bench_model("bisenetv2:bisenetv2", num_classes=3)
    boosters = sum(p.numel() for p in model.decode_head.aux_heads.parameters())
    assert boosters > 0
    assert r.infer_params_m * 1e6 == r.params_m * 1e6 - boosters
    narrow = build_bench_model("ddrnet:ddrnet_23_slim:channels=16,aux_branch=False", aux=False)
    assert narrow.decode_head.head[0].conv.out_channels == 16
    assert narrow.decode_head.aux_head is None


def test_timm_backbone_spec_keeps_its_colon() -> None:
    pytest.importorskip("timm")
    r = count_flops("fpn:timm:resnet18", size=(64, 64), num_classes=3)
    assert r.device == "meta" and r.gmacs > 0
    assert build_bench_model("fpn:timm:resnet18", aux=False).build_config["backbone"] == (
        "timm:resnet18"
    )


def test_torchvision_lraspp_builds_without_aux_loss() -> None:
    pytest.importorskip("torchvision")
    model = build_bench_model("torchvision:lraspp_mobilenet_v3_large", num_classes=3)
    assert model(torch.randn(1, 3, 64, 64))["out"].shape == (1, 3, 64, 64)


def test_format_table_and_cli_json(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    cli(["--models", "fcn:resnet18", "--modes", "infer", "--size", "32", "--iters", "1",
         "--warmup", "0", "--num-classes", "3", "--no-isolate", "--json", str(out)])  # fmt: skip
    text = capsys.readouterr().out
    assert "fcn:resnet18" in text and "img/s" in text and "2x3x32x32" in text
    data = json.loads(out.read_text())
    assert data[0]["model"] == "fcn:resnet18" and data[0]["images_per_s"] > 0
    table = format_table([BenchResult(**{**data[0], "size": tuple(data[0]["size"])})])
    assert table.splitlines()[0].startswith("model")
    with pytest.raises(SystemExit):
        cli(["--syncbn", "--models", "fcn:resnet18"])
    assert "SyncBatchNorm" in capsys.readouterr().err


def test_cli_flops_beside_images_per_s_and_flops_only(tmp_path: Path, capsys) -> None:
    common = ["--models", "fcn:resnet18", "--size", "32", "--num-classes", "3", "--no-isolate"]
    cli([*common, "--modes", "infer", "--iters", "1", "--warmup", "0", "--flops",
         "--flops-size", "64", "96", "--json", str(tmp_path / "b.json")])  # fmt: skip
    text = capsys.readouterr().out
    assert "img/s" in text and "GMACs" in text and "64x96" in text and "2 FLOPs per" in text
    (row,) = json.loads((tmp_path / "b.json").read_text())
    assert row["images_per_s"] > 0 and row["gflops"] == pytest.approx(2 * row["gmacs"])
    assert row["flops_size"] == [64, 96]
    cli([*common, "--flops-only", "--no-aux", "--json", str(tmp_path / "f.json")])
    text = capsys.readouterr().out
    assert "img/s" not in text and "GMACs" in text and "32x32" in text
    (f,) = json.loads((tmp_path / "f.json").read_text())
    assert f["size"] == [32, 32]
    assert f["infer_params_m"] == f["params_m"]  # --no-aux: no auxiliary head, all used
    assert row["infer_params_m"] < row["params_m"]  # timed with the auxiliary head
    assert 0 < f["gmacs"] < row["gmacs"]  # a 32x32 image costs less than a 64x96 one
    table = format_flops_table([FlopsResult(**{**f, "size": tuple(f["size"])})])
    assert table.splitlines()[0].startswith("model")


@pytest.mark.slow
def test_isolated_case_runs_in_a_subprocess() -> None:
    (r,) = run_cases(["fcn:resnet18"], ["infer"], isolate=True, **TINY)
    assert r.images_per_s > 0 and r.mem_kind == "peak_rss"
