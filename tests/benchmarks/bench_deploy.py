"""Deployment benchmark: CPU images/s, batch 1, for the same architecture through every path.

Run with ``nox -s bench -- deploy`` (never run by CI) or directly:
``python tests/benchmarks/bench_deploy.py [--sizes 512x512 480x360] [--iters 10] [--rounds 3]``.

For torchvision's DeepLabV3-ResNet50 (output stride 8) and LR-ASPP-MobileNetV3-Large, side by
side in one process, interleaved forward by forward (``--rounds`` x ``--iters`` cycles, each
timing one forward of every path in a rotating order; images/s from the median forward
time), at 512x512 and CamVid's 480x360 (W x H), batch 1, fp32 unless said:

- ``torchvision``: torchvision's model, eager (the reference of the ratios);
- ``ours eager``: the PKUSeg twin with torchvision's weights (``seg_heads.convert.
  from_torchvision``; outputs equal to torchvision's, column ``max|d|``);
- ``ours fold-bn+cl``: ``seg_heads.export.fold_bn`` + ``channels_last`` (model and input);
- ``ours compiled``: the same, then ``torch.compile`` (inductor, ``freezing=True``: weights
  become constants and convolutions are pre-packed for oneDNN; compiled in the warm-up, once
  per size);
- ``onnxruntime``: the ONNX export (``seg_heads.export.to_onnx``, dynamic shapes) in
  onnxruntime's CPU provider;
- ``openvino``: the same file compiled by OpenVINO (f32 precision hint);
- ``onnxruntime int8`` / ``openvino int8``: ``seg-export``'s static int8 quantisation
  (QDQ, per-channel), calibrated here on 4 random inputs: a SPEED measurement only (the
  accuracy of int8 needs a trained model and real calibration images: ``seg-export --int8
  --calib-data``); column ``agree`` is the share of pixels whose argmax equals ours eager.

Randomly initialised weights (BatchNorm statistics from two forward passes, as after
training), 21 classes, torch/onnxruntime/OpenVINO all on ``--threads`` threads (default: all
cores). Missing runtimes (``pip install 'seg-trainer[deploy]'``) skip their rows.

Recorded: see docs/results.md ("Deployment"). The numbers of a shared or busy machine are
meaningless for speed: measure on an idle one.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

ARCHS = ("deeplabv3_resnet50", "lraspp_mobilenet_v3_large")
PATHS = (
    "torchvision",
    "ours eager",
    "ours fold-bn+cl",
    "ours compiled",
    "onnxruntime",
    "openvino",
    "onnxruntime int8",
    "openvino int8",
)


def _calibrate_bn(model: nn.Module, size: tuple[int, int]) -> None:
    """BatchNorm statistics of the model's own activations (a trained model's, roughly)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(2, 3, *size, generator=g))
    model.eval()


def build_pair(arch: str, num_classes: int = 21) -> tuple[nn.Module, nn.Module]:
    """torchvision's model and our twin carrying the same weights."""
    from torchvision.models import segmentation

    from seg_heads.convert import from_torchvision

    torch.manual_seed(0)
    tv = getattr(segmentation, arch)(weights=None, weights_backbone=None, num_classes=num_classes)
    _calibrate_bn(tv, (128, 128))
    ours = from_torchvision(tv.state_dict(), arch=arch).eval()
    return tv.eval(), ours


def _torch_runner(model: nn.Module, channels_last: bool = False) -> Callable[[torch.Tensor], Any]:
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    def run(x: torch.Tensor) -> torch.Tensor:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return model(x)["out"]

    return run


def build_runners(
    arch: str, sizes: list[tuple[int, int]], threads: int, tmp: Path, paths: list[str]
) -> tuple[dict[str, Callable[[torch.Tensor], Any]], dict[str, str]]:
    """``{path: x -> logits}`` for one architecture, and why any path was skipped."""
    from seg_heads.export import fold_bn, to_onnx

    tv, ours = build_pair(arch)
    runners: dict[str, Callable[[torch.Tensor], Any]] = {}
    skipped: dict[str, str] = {}
    runners["torchvision"] = _torch_runner(tv)
    runners["ours eager"] = _torch_runner(ours)
    runners["ours fold-bn+cl"] = _torch_runner(fold_bn(ours), channels_last=True)
    if "ours compiled" in paths:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # inference only: weights folded into the graph
        folded = fold_bn(ours).to(memory_format=torch.channels_last)
        runners["ours compiled"] = _torch_runner(torch.compile(folded), channels_last=True)
    has = {m: importlib.util.find_spec(m) is not None for m in ("onnxruntime", "openvino")}
    if not has["onnxruntime"]:
        for p in paths:
            if p != "torchvision" and not p.startswith("ours"):
                skipped[p] = "onnxruntime not installed (pip install 'seg-trainer[deploy]')"
        return {p: r for p, r in runners.items() if p in paths}, skipped

    from seg_trainer.backends import OnnxRuntimeModel, OpenVINOModel
    from seg_trainer.export import quantize_int8

    fp32, int8 = tmp / f"{arch}.onnx", tmp / f"{arch}_int8.onnx"
    to_onnx(ours, fp32, size=sizes[0], validate=False)
    if any(p.endswith("int8") for p in paths):
        g = torch.Generator().manual_seed(1)
        calib = [torch.randn(1, 3, *s, generator=g).numpy() for s in sizes for _ in range(2)]
        quantize_int8(fp32, int8, calib)
    runners["onnxruntime"] = OnnxRuntimeModel(fp32, threads=threads)
    if "onnxruntime int8" in paths:
        runners["onnxruntime int8"] = OnnxRuntimeModel(int8, threads=threads)
    for name, path in (("openvino", fp32), ("openvino int8", int8)):
        if name not in paths:
            continue
        if has["openvino"]:
            runners[name] = OpenVINOModel(path, threads=threads)
        else:
            skipped[name] = "openvino not installed (pip install 'seg-trainer[deploy]')"
    return {p: r for p, r in runners.items() if p in paths}, skipped


def time_paths(
    runners: dict[str, Callable[[torch.Tensor], Any]],
    size: tuple[int, int],
    *,
    iters: int,
    warmup: int,
    rounds: int,
) -> dict[str, dict[str, float]]:
    """Images/s (from the median single-forward time) and output checks.

    The paths take turns forward by forward: ``rounds * iters`` cycles, each timing one
    forward of every path, the order rotated by one path per cycle. A slow spell of the
    machine then hits every path alike instead of the ones that happened to run in it.
    """
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(2))
    outputs = {}
    for name, run in runners.items():
        for _ in range(max(warmup, 1)):
            outputs[name] = torch.as_tensor(run(x)).float()
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    for cycle in range(rounds * iters):
        shift = cycle % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            runners[name](x)
            times[name].append(time.perf_counter() - start)
    ref = outputs["ours eager"] if "ours eager" in outputs else next(iter(outputs.values()))
    result = {}
    for name in names:
        out = outputs[name]
        result[name] = {
            "images_per_s": 1.0 / statistics.median(times[name]),
            "max_abs_diff": (out - ref).abs().max().item(),
            "argmax_agree": (out.argmax(1) == ref.argmax(1)).float().mean().item(),
        }
    return result


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'arch':28s} {'size (WxH)':10s} {'path':18s} {'img/s':>8s} {'x tv':>6s} "
        f"{'max|d|':>9s} {'agree':>7s}"
    ]
    for r in rows:
        lines.append(
            f"{r['arch']:28s} {r['size']:10s} {r['path']:18s} {r['images_per_s']:8.2f} "
            f"{r['ratio']:6.2f} {r['max_abs_diff']:9.2e} {100 * r['argmax_agree']:6.2f}%"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    p.add_argument("--sizes", nargs="+", default=["512x512", "480x360"], help="WxH")
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    p.add_argument("--iters", type=int, default=10, help="cycles per round (rounds x iters in all)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [(int(s.split("x")[1]), int(s.split("x")[0])) for s in args.sizes]  # (H, W)
    paths = [
        "torchvision",
        "ours eager",
        *[q for q in args.paths if q not in ("torchvision", "ours eager")],
    ]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            runners, skipped = build_runners(arch, sizes, args.threads, Path(tmp), paths)
            for path, why in skipped.items():
                print(f"bench_deploy: {arch}: skipping {path}: {why}")
            for (h, w), label in zip(sizes, args.sizes):
                res = time_paths(
                    runners, (h, w), iters=args.iters, warmup=args.warmup, rounds=args.rounds
                )
                base = res["torchvision"]["images_per_s"]
                for path, r in res.items():
                    rows.append({"arch": arch, "size": label, "path": path, **r,
                                 "ratio": r["images_per_s"] / base, "threads": args.threads})  # fmt: skip
                print(
                    format_table(
                        [row for row in rows if row["arch"] == arch and row["size"] == label]
                    )
                )
    print(f"\nbatch 1, fp32 unless int8, {args.threads} threads, torch {torch.__version__}")
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
