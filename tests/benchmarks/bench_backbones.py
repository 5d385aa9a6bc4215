"""Benchmark: forward latency and parameters of our ResNets vs torchvision's, at OS8.

Run directly (never run by CI):
``python tests/benchmarks/bench_backbones.py [--device cuda] [--size 129] [--repeats 3]``.

For ResNet-50/101 at output stride 8 (torchvision with
``replace_stride_with_dilation=[False, True, True]``), in eval mode under
``torch.inference_mode``, on a 1 x 3 x size x size input: parameters (without ``fc``)
and the best of ``--repeats`` timed forwards after one warm-up. Our deep-stem variants
(``_v1c``, ``_deep``) are listed for their cost; only the 7x7 rows are like for like.
The torchvision rows stop after layer4 (no pooling or fc) to match the work done.
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision
from torch import nn

from seg_backbones import create_backbone


class _TorchvisionFeatures(nn.Module):
    def __init__(self, tv: nn.Module) -> None:
        super().__init__()
        self.tv = tv

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        tv = self.tv
        x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        out = []
        for layer in (tv.layer1, tv.layer2, tv.layer3, tv.layer4):
            x = layer(x)
            out.append(x)
        return out


def _best_ms(model: nn.Module, x: torch.Tensor, repeats: int) -> float:
    def sync() -> None:
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)

    with torch.inference_mode():
        model(x)
        sync()
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            sync()
            best = min(best, time.perf_counter() - t)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=129, help="input height = width")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    x = torch.randn(1, 3, args.size, args.size, device=device)

    rows: list[tuple[str, nn.Module]] = []
    for depth in (50, 101):
        tv = getattr(torchvision.models, f"resnet{depth}")(
            replace_stride_with_dilation=[False, True, True]
        )
        rows.append((f"torchvision resnet{depth}", _TorchvisionFeatures(tv)))
        for suffix in ("", "_v1c", "_deep"):
            rows.append(
                (
                    f"ours resnet{depth}{suffix}",
                    create_backbone(f"resnet{depth}{suffix}", output_stride=8),
                )
            )

    print(f"device={device} input=1x3x{args.size}x{args.size} OS8, best of {args.repeats}")
    print(f"{'model':<28} {'params (M)':>11} {'forward (ms)':>13}")
    for name, model in rows:
        model = model.eval().to(device)
        params = sum(p.numel() for n, p in model.named_parameters() if ".fc." not in f".{n}")
        print(f"{name:<28} {params / 1e6:>11.3f} {_best_ms(model, x, args.repeats):>13.1f}")


if __name__ == "__main__":
    main()
