"""Benchmark: our PSPNet / DeepLabV3 (ResNet-50 3x3 stem, OS8) vs torchvision's DeepLabV3-R50.

Run with ``nox -s bench -- trainer`` (never run by CI) or directly:
``python tests/benchmarks/bench_trainer.py [--device cuda] [--size 512] [--iters 10]``.

Thin wrapper over ``seg-bench`` (``seg_trainer.bench``): each (model, mode) case runs in a
fresh process, reporting inference and training-step images/s and peak memory
(CPU: peak process RSS, with the RSS before the model was built; CUDA:
``torch.cuda.max_memory_allocated``). Randomly initialised models, 19 classes,
batch 2 x 3 x 256 x 256 by default. GPU-only options (``--amp bf16|fp16``,
``--channels-last``, ``--syncbn``) pass through.

Recorded (random init, 19 classes; images/s, peak MiB):

CPU, 2 shared cores, batch 2x3x256x256, --iters 2 (noisy; peak = process RSS, ~690 MiB
of it the torch runtime)::

    model                           infer img/s  train img/s  peak infer/train
    pspnet:resnet50_deep            0.43         0.14         1201 / 2299
    deeplabv3:resnet50_deep         0.30         0.08         1182 / 2565
    deeplabv3:resnet50:torchvision  0.37         0.16         1029 / 2204
    torchvision:deeplabv3_resnet50  0.33         0.13         1163 / 2227

NVIDIA H200, torch 2.11, batch 8x3x512x512, --iters 10 (peak = max_memory_allocated)::

    model                           fp32 infer/train  bf16+channels_last  fp16         peak fp32 train
    pspnet:resnet50_deep            348 / 58          476 / 139           507 / 69     11087
    deeplabv3:resnet50_deep         298 / 59          560 / 127           -            11113
    torchvision:deeplabv3_resnet50  407 / 88          718 / 153           687 / 130    9658

    --syncbn (1-rank NCCL group + DDP) train: pspnet bf16 66, fp32+channels_last 101;
    torchvision bf16 116.

Our DeepLabV3 (mmseg head: 512-channel ASPP branches at rates 12/24/36 + 3x3 bottleneck)
and PSPNet are heavier than torchvision's 256-channel DeepLabV3; the torchvision twin
``deeplabv3:resnet50:torchvision`` matched torchvision on CPU (not run on the GPU).
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
