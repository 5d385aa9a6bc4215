"""Benchmark: our PSPNet / DeepLabV3 (ResNet-50 3x3 stem, OS8) vs torchvision's DeepLabV3-R50.

Run with ``nox -s bench -- trainer`` (never run by CI) or directly:
``python tests/benchmarks/bench_trainer.py [--device cuda] [--size 512] [--iters 10]``.

Thin wrapper over ``seg-bench`` (``seg_trainer.bench``): each (model, mode) case runs in a
fresh process, reporting inference and training-step images/s and peak memory
(CPU: peak process RSS, with the RSS before the model was built; CUDA:
``torch.cuda.max_memory_allocated``). Randomly initialised models, 19 classes,
batch 2 x 3 x 256 x 256 by default. GPU-only options (``--amp bf16|fp16``,
``--channels-last``, ``--syncbn``) pass through.
"""

from __future__ import annotations

import argparse
import sys

from seg_trainer.bench import main

MODELS = [
    "pspnet:resnet50_deep",
    "deeplabv3:resnet50_deep",
    "deeplabv3:resnet50:torchvision",  # our twin of torchvision's architecture
    "torchvision:deeplabv3_resnet50",
]


def run(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", default="256")
    p.add_argument("--batch-size", default="2")
    p.add_argument("--iters", default="3")
    p.add_argument("--warmup", default="1")
    args, passthrough = p.parse_known_args(argv)
    main(["--models", *MODELS, "--device", args.device, "--size", args.size,
          "--batch-size", args.batch_size, "--iters", args.iters, "--warmup", args.warmup,
          *passthrough])  # fmt: skip


if __name__ == "__main__":
    run(sys.argv[1:])
