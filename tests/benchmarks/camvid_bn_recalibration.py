"""Re-estimate the running statistics of a checkpoint's slow BatchNorm layers (never run by CI).

The diagnostic behind the DenseASPP CamVid config's ``bn_momentum: 0.1`` (docs/results.md):
the official DenseASPP head uses BN momentum 0.0003, so after a few hundred iterations its
running statistics (which evaluation uses) are still near their initial values. This script
resets the running statistics of every BatchNorm layer with momentum < 0.01, re-estimates
them as a cumulative average over ``NUM_BATCHES`` batches of 8 training crops (the config's
train transforms, no gradient, everything else in eval mode) and saves the checkpoint, to
be evaluated with ``seg-eval --split val``::

    python tests/benchmarks/camvid_bn_recalibration.py CKPT OUT.pth [NUM_BATCHES] \
        [--root ../shared/data/camvid]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from seg_trainer.build import build_dataset
from seg_trainer.checkpoint import load_checkpoint
from seg_trainer.config import config_from_dict
from seg_trainer.evaluate import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("num_batches", nargs="?", type=int, default=20)
    p.add_argument("--root", default="../shared/data/camvid")
    args = p.parse_args()

    ckpt = load_checkpoint(args.checkpoint)
    cfg = config_from_dict(ckpt["config"])
    cfg.data.root = args.root
    model = load_model(cfg, ckpt, args.checkpoint).eval()
    slow = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.momentum < 0.01]
    if not slow:
        raise SystemExit(f"{args.checkpoint}: no BatchNorm layer with momentum < 0.01")
    momenta = [m.momentum for m in slow]
    for m in slow:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
        m.train()
    ds = build_dataset(cfg, "train")
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0)).tolist()
    with torch.no_grad():
        for b in range(args.num_batches):
            idx = order[b * 8 : (b + 1) * 8]
            model(torch.stack([ds[i]["image"] for i in idx]))
    for m, mom in zip(slow, momenta, strict=True):
        m.momentum = mom
    ckpt["model"] = model.state_dict()
    torch.save(ckpt, args.out)
    print(
        f"re-estimated {len(slow)} BatchNorm layers on {args.num_batches * 8} crops -> {args.out}"
    )


if __name__ == "__main__":
    main()
