"""``seg-bench``: training-step and inference throughput and peak memory, ours vs torchvision.

Each case (one model, one mode) builds a randomly initialised model, runs
``warmup`` untimed iterations and ``iters`` timed ones on a fixed random
batch, and reports images/s and peak memory:

* CUDA: ``torch.cuda.max_memory_allocated`` (reset before the case): tensor memory
  of that case alone.
* CPU: the process's peak resident set size (``ru_maxrss``). It is only meaningful
  per case, so by default every case runs in a fresh ``spawn`` subprocess
  (``--no-isolate`` runs in-process); the ``base`` column is the RSS before the
  model was built (the Python + torch runtime), ``peak - base`` the case's own.

Options that exist for GPU runs:

* ``--amp bf16|fp16``: ``torch.autocast`` around forward and loss; fp16 training
  uses a ``GradScaler``. fp16 is CUDA-only here (clear error on CPU).
* ``--channels-last``: model and inputs in ``torch.channels_last``.
* ``--syncbn``: ``nn.SyncBatchNorm.convert_sync_batchnorm`` on a one-rank NCCL process
  group, training through ``DistributedDataParallel`` (what a multi-GPU run executes).
  With one rank torch computes local statistics (no all-reduce), so this checks
  the conversion and DDP path, not cross-GPU synchronisation cost. CUDA only.

Model specs: ``NAME:BACKBONE`` builds ``seg_heads.create_model(NAME, backbone=BACKBONE,
output_stride=8, aux=True)``; ``NAME:BACKBONE:VARIANT`` adds ``head_kwargs={"variant":
VARIANT}``; ``torchvision:ARCH`` builds ``torchvision.models.segmentation.ARCH`` (random
init, ``aux_loss=True``; torchvision is needed only for these).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import json
import multiprocessing
import resource
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BenchResult", "build_bench_model", "format_table", "run_case", "run_cases"]

DEFAULT_MODELS = (
    "pspnet:resnet50_deep",
    "deeplabv3:resnet50_deep",
    "torchvision:deeplabv3_resnet50",
)
AMP_DTYPES = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclasses.dataclass
class BenchResult:
    """One measured case."""

    model: str
    mode: str  # "infer" | "train"
    device: str
    amp: str
    channels_last: bool
    syncbn: bool
    batch_size: int
    size: tuple[int, int]
    iters: int
    seconds: float
    images_per_s: float
    peak_mem_mib: float
    base_mem_mib: float  # CPU: RSS before building the model; CUDA: 0
    mem_kind: str  # "cuda_max_allocated" | "peak_rss"
    params_m: float


def build_bench_model(spec: str, *, num_classes: int = 19, output_stride: int = 8) -> nn.Module:
    """Build a model from a spec (see the module docstring)."""
    parts = spec.split(":")
    if parts[0] == "torchvision":
        if len(parts) != 2:
            raise ValueError(f"torchvision spec must be 'torchvision:ARCH'; got {spec!r}")
        try:
            from torchvision.models import segmentation
        except ImportError:
            raise ImportError(
                f"model {spec!r} needs torchvision (pip install torchvision); ours need only seg-heads"
            ) from None
        builder = getattr(segmentation, parts[1], None)
        if builder is None or not callable(builder):
            raise ValueError(
                f"unknown torchvision segmentation model {parts[1]!r}; e.g. deeplabv3_resnet50, "
                "deeplabv3_resnet101, fcn_resnet50, fcn_resnet101"
            )
        return builder(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=True)
    if len(parts) not in (2, 3):
        raise ValueError(
            f"model spec must be NAME:BACKBONE[:HEAD_VARIANT] or torchvision:ARCH; got {spec!r} "
            "(e.g. pspnet:resnet50_deep, deeplabv3:resnet50:torchvision)"
        )
    from seg_heads import create_model

    return create_model(
        parts[0],
        backbone=parts[1],
        num_classes=num_classes,
        output_stride=output_stride,
        aux=True,
        head_kwargs={"variant": parts[2]} if len(parts) == 3 else None,
    )


def _rss_mib() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_options(device: torch.device, amp: str, syncbn: bool) -> None:
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {list(AMP_DTYPES)}; got {amp!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch.cuda.is_available() is False")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("--amp fp16 needs --device cuda (use bf16 on CPU, or no)")
    if syncbn and device.type != "cuda":
        raise ValueError(
            "--syncbn needs --device cuda: torch's SyncBatchNorm has no CPU kernel "
            "(multi-process CPU training uses plain BatchNorm)"
        )


def run_case(
    spec: str,
    *,
    mode: str = "infer",
    device: str = "cpu",
    amp: str = "no",
    channels_last: bool = False,
    syncbn: bool = False,
    batch_size: int = 2,
    size: Sequence[int] = (256, 256),
    iters: int = 5,
    warmup: int = 2,
    num_classes: int = 19,
    output_stride: int = 8,
) -> BenchResult:
    """Measure one model in one mode (``"infer"`` or ``"train"``) in this process."""
    if mode not in ("infer", "train"):
        raise ValueError(f"mode must be 'infer' or 'train'; got {mode!r}")
    if iters < 1 or warmup < 0 or batch_size < 1:
        raise ValueError("need iters >= 1, warmup >= 0 and batch_size >= 1")
    dev = torch.device(device)
    _check_options(dev, amp, syncbn)
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    torch.manual_seed(0)
    base = _rss_mib() if dev.type == "cpu" else 0.0
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)

    model = build_bench_model(spec, num_classes=num_classes, output_stride=output_stride)
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(dev, memory_format=memory_format)
    x = torch.randn(batch_size, 3, height, width, device=dev).contiguous(
        memory_format=memory_format
    )
    target = torch.randint(0, num_classes, (batch_size, height, width), device=dev)
    target[:, :4] = 255  # some ignored pixels, as in real labels

    group_started = False
    if syncbn:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        if not dist.is_initialized():
            dist.init_process_group(
                "nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
            )
            group_started = True
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        n_sync = sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
        if n_sync == 0:
            raise RuntimeError(f"{spec}: no BatchNorm layer was converted to SyncBatchNorm")
        if mode == "train":
            index = dev.index if dev.index is not None else torch.cuda.current_device()
            model = DistributedDataParallel(model, device_ids=[index])

    dtype = AMP_DTYPES[amp]
    autocast = (
        torch.autocast(device_type=dev.type, dtype=dtype)
        if dtype is not None
        else contextlib.nullcontext()
    )

    if mode == "infer":
        model.eval()

        def step() -> None:
            with torch.inference_mode(), autocast:
                model(x)["out"].float()

    else:
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
        scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                out = model(x)
                loss = F.cross_entropy(out["out"].float(), target, ignore_index=255)
                if out.get("aux") is not None:
                    loss = loss + 0.4 * F.cross_entropy(
                        out["aux"].float(), target, ignore_index=255
                    )
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{spec}: non-finite training loss {loss.item()}")

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    try:
        for _ in range(warmup):
            step()
        sync()
        start = time.perf_counter()
        for _ in range(iters):
            step()
        sync()
        seconds = time.perf_counter() - start
    finally:
        if group_started:
            import torch.distributed as dist

            dist.destroy_process_group()

    if dev.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(dev) / 2**20, "cuda_max_allocated"
    else:
        peak, kind = _rss_mib(), "peak_rss"
    return BenchResult(
        model=spec,
        mode=mode,
        device=str(dev),
        amp=amp,
        channels_last=channels_last,
        syncbn=syncbn,
        batch_size=batch_size,
        size=(height, width),
        iters=iters,
        seconds=seconds,
        images_per_s=batch_size * iters / seconds,
        peak_mem_mib=peak,
        base_mem_mib=base,
        mem_kind=kind,
        params_m=params_m,
    )


def run_cases(
    specs: Sequence[str],
    modes: Sequence[str] = ("infer", "train"),
    *,
    isolate: bool = True,
    **kwargs: Any,
) -> list[BenchResult]:
    """Run every (model, mode) case, each in a fresh spawned process when ``isolate``."""
    results = []
    for spec in specs:
        for mode in modes:
            if not isolate:
                results.append(run_case(spec, mode=mode, **kwargs))
                continue
            ctx = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
                results.append(pool.submit(run_case, spec, mode=mode, **kwargs).result())
    return results


def format_table(results: Sequence[BenchResult]) -> str:
    """A plain-text table of results."""
    header = ("model", "mode", "device", "amp", "ch_last", "syncbn", "input", "img/s", "ms/iter",
              "peak MiB", "base MiB", "params M")  # fmt: skip
    rows = [header]
    for r in results:
        rows.append(
            (
                r.model,
                r.mode,
                r.device,
                r.amp,
                "yes" if r.channels_last else "no",
                "yes" if r.syncbn else "no",
                f"{r.batch_size}x3x{r.size[0]}x{r.size[1]}",
                f"{r.images_per_s:.2f}",
                f"{1000 * r.seconds / r.iters:.1f}",
                f"{r.peak_mem_mib:.0f}",
                f"{r.base_mem_mib:.0f}" if r.mem_kind == "peak_rss" else "-",
                f"{r.params_m:.1f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    kinds = {r.mem_kind for r in results}
    note = {
        "peak_rss": "peak MiB = peak process RSS (base = before building the model)",
        "cuda_max_allocated": "peak MiB = torch.cuda.max_memory_allocated",
    }
    return "\n".join(lines + [note[k] for k in sorted(kinds)])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seg-bench",
        description="Training-step and inference throughput and peak memory of segmentation models.",
    )
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="model specs")
    p.add_argument("--modes", nargs="+", default=["infer", "train"], choices=["infer", "train"])
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--amp", default="no", choices=list(AMP_DTYPES))
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--syncbn", action="store_true", help="SyncBatchNorm on a 1-rank group (CUDA)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--size", type=int, nargs="+", default=[256, 256], metavar="H [W]")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--num-classes", type=int, default=19)
    p.add_argument("--no-isolate", action="store_true", help="run all cases in this process")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    return p


def main(argv: Sequence[str] | None = None) -> list[BenchResult]:
    """Run ``seg-bench`` and print the table; returns the results."""
    args = _parser().parse_args(argv)
    if len(args.size) not in (1, 2):
        raise SystemExit("seg-bench: error: --size takes H or H W")
    size = (args.size[0], args.size[-1])
    _check_options(torch.device(args.device), args.amp, args.syncbn)  # fail before spawning
    results = run_cases(
        args.models,
        args.modes,
        isolate=not args.no_isolate,
        device=args.device,
        amp=args.amp,
        channels_last=args.channels_last,
        syncbn=args.syncbn,
        batch_size=args.batch_size,
        size=size,
        iters=args.iters,
        warmup=args.warmup,
        num_classes=args.num_classes,
    )
    print(format_table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=2) + "\n")
    return results


def cli(argv: Sequence[str] | None = None) -> None:
    """Console entry point ``seg-bench``."""
    try:
        main(argv)
    except (ValueError, RuntimeError, ImportError) as exc:
        print(f"seg-bench: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    cli()
