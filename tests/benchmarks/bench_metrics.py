"""Benchmark: pixels/s of ``ConfusionMatrix.update`` vs torchmetrics, same run, same data.

Run with ``nox -s bench -- metrics`` (never run by CI) or directly:
``python tests/benchmarks/bench_metrics.py [--device cuda] [--repeats 5]``.

Batch 8 x 512 x 1024 label maps with 19 (Cityscapes) and 150 (ADE20K) classes,
5% of the target pixels set to the ignore index 255. Compared, each given the
same int64 labels:

- seg_metrics ``ConfusionMatrix.update`` (validation always on);
- torchmetrics ``MulticlassJaccardIndex(average=None, ignore_index=255)`` with its
  default ``validate_args=True`` and with ``validate_args=False``;
- torchmetrics ``MulticlassConfusionMatrix`` (validate_args=False).

Each entry is the best of ``--repeats`` timed updates after one warm-up; the
matrices are checked to be equal before timing. Target (issue 6): >= 5x
torchmetrics' default MulticlassJaccardIndex on CPU.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import torch

from seg_metrics import ConfusionMatrix

N, H, W = 8, 512, 1024
IGNORE = 255


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Best wall-clock seconds of ``repeats`` calls after one warm-up."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def make_data(k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(k)
    target = torch.randint(0, k, (N, H, W), generator=g)
    target[torch.rand(N, H, W, generator=g) < 0.05] = IGNORE
    pred = torch.where(
        torch.rand(N, H, W, generator=g) < 0.7, target, torch.randint(0, k, (N, H, W), generator=g)
    )
    pred[pred == IGNORE] = 0
    return pred.to(device), target.to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: keep)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        from torchmetrics.classification import MulticlassConfusionMatrix, MulticlassJaccardIndex
    except ImportError as err:  # the bench session installs it
        raise SystemExit(
            "torchmetrics is needed for the comparison: pip install torchmetrics"
        ) from err

    pixels = N * H * W
    print(
        f"update() throughput, batch {N}x{H}x{W} ({pixels / 1e6:.1f} Mpx), int64 labels, "
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"best of {args.repeats}"
    )
    rows = []
    for k in (19, 150):
        pred, target = make_data(k, device)
        ours = ConfusionMatrix(k, ignore_index=IGNORE, device=device)
        tm_default = MulticlassJaccardIndex(k, average=None, ignore_index=IGNORE).to(device)
        tm_fast = MulticlassJaccardIndex(
            k, average=None, ignore_index=IGNORE, validate_args=False
        ).to(device)
        tm_cm = MulticlassConfusionMatrix(k, ignore_index=IGNORE, validate_args=False).to(device)

        ours.update(pred, target)
        tm_cm.update(pred, target)
        if not torch.equal(ours.matrix.cpu(), tm_cm.confmat.cpu()):
            raise SystemExit(f"K={k}: seg_metrics and torchmetrics confusion matrices differ")

        cases = {
            "seg_metrics ConfusionMatrix": ours,
            "torchmetrics JaccardIndex (default)": tm_default,
            "torchmetrics JaccardIndex (validate_args=False)": tm_fast,
            "torchmetrics ConfusionMatrix (validate_args=False)": tm_cm,
        }
        times = {
            name: best_time(partial(metric.update, pred, target), device, args.repeats)
            for name, metric in cases.items()
        }
        base = times["seg_metrics ConfusionMatrix"]
        for name, sec in times.items():
            rows.append((k, name, sec, pixels / sec, sec / base))

    w = max(len(r[1]) for r in rows)
    print(f"{'K':>4}  {'implementation':<{w}}  {'ms/update':>10}  {'Mpx/s':>9}  {'vs ours':>8}")
    for k, name, sec, pps, rel in rows:
        print(f"{k:>4}  {name:<{w}}  {1e3 * sec:>10.1f}  {pps / 1e6:>9.1f}  {rel:>7.1f}x")
    print(
        "'vs ours' = time / seg_metrics time (higher means seg_metrics is that many times faster)"
    )


if __name__ == "__main__":
    main()
