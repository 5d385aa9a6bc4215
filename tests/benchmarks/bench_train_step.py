"""Training-step benchmark: our torchvision twin against torchvision, step by step in one process.

Run with ``nox -s bench -- train_step`` (never run by CI) or directly:
``python tests/benchmarks/bench_train_step.py [--arch deeplabv3_resnet50] [--pairs 8]``.

Separate processes (``seg-bench``) leave the comparison at the mercy of what the shared VM
does between them: the spread between rounds is larger than the difference being measured.
Here both models live in one process, start from the same weights (ours through
``seg_heads.convert.from_torchvision``), see the same batch and take alternating SGD steps
(cross-entropy on ``out``, backward, ``optimizer.step``) in ABBA order (ours, tv, tv, ours,
...), so that drift in the machine's speed hits both alike. Reported: the median step time of
each, and the median and spread of the per-pair ratios (torchvision's time / ours: > 1 means
ours is faster).

The numbers of a busy machine are meaningless for speed: measure on an idle one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ARCHS = ("deeplabv3_resnet50", "lraspp_mobilenet_v3_large")


def build_pair(arch: str, num_classes: int) -> tuple[nn.Module, nn.Module]:
    """torchvision's model and ours with the same weights, both in training mode."""
    from torchvision.models import segmentation

    from seg_heads.convert import from_torchvision

    torch.manual_seed(0)
    tv = getattr(segmentation, arch)(weights=None, weights_backbone=None, num_classes=num_classes)
    ours = from_torchvision(tv.state_dict(), arch=arch)
    return tv.train(), ours.train()


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Any:
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x)["out"], y, ignore_index=255)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--arch", default=ARCHS[0], choices=ARCHS)
    p.add_argument("--size", type=int, default=384, help="square crop side")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--pairs", type=int, default=8, help="ABBA pairs of timed steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps of each model first")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    tv, ours = build_pair(args.arch, args.num_classes)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch_size, 3, args.size, args.size, generator=g)
    y = torch.randint(0, args.num_classes, (args.batch_size, args.size, args.size), generator=g)
    steps = {"ours": make_step(ours, x, y), "torchvision": make_step(tv, x, y)}
    first = {name: step() for name, step in steps.items()}  # same weights (dropout draws differ)
    for _ in range(args.warmup - 1):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {"ours": [], "torchvision": []}
    for i in range(args.pairs):
        order = ("ours", "torchvision") if i % 2 == 0 else ("torchvision", "ours")
        for name in order:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
        print(
            f"pair {i + 1:2d}/{args.pairs}: ours {times['ours'][-1]:.3f} s, "
            f"torchvision {times['torchvision'][-1]:.3f} s",
            flush=True,
        )
    ratios = [t / o for o, t in zip(times["ours"], times["torchvision"])]
    result = {
        "arch": args.arch,
        "input": f"{args.batch_size}x3x{args.size}x{args.size}",
        "threads": args.threads,
        "first_loss": first,
        "median_s": {k: statistics.median(v) for k, v in times.items()},
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }
    print(
        f"\n{args.arch}, batch {result['input']}, {args.threads} threads, torch "
        f"{torch.__version__}, {args.pairs} ABBA pairs after {args.warmup} warm-up step(s)\n"
        f"first loss: ours {first['ours']:.6f}, torchvision {first['torchvision']:.6f}\n"
        f"median step: ours {result['median_s']['ours']:.3f} s, torchvision "
        f"{result['median_s']['torchvision']:.3f} s\n"
        f"torchvision time / ours, per pair: median {result['ratio_median']:.3f}x "
        f"(min {result['ratio_min']:.3f}, max {result['ratio_max']:.3f})"
    )
    return result


if __name__ == "__main__":
    main()
