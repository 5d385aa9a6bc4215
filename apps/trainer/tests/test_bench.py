"""Tests for seg_trainer.bench (seg-bench): one tiny case per path, option guards, the table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from seg_trainer.bench import BenchResult, build_bench_model, cli, format_table, run_case, run_cases

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


@pytest.mark.slow
def test_isolated_case_runs_in_a_subprocess() -> None:
    (r,) = run_cases(["fcn:resnet18"], ["infer"], isolate=True, **TINY)
    assert r.images_per_s > 0 and r.mem_kind == "peak_rss"
