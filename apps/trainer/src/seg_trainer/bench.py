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
aux=True)`` at the model's default output stride (``--output-stride`` overrides it: 8 for
the dilated-context heads, 32 for the multi-level decoders and real-time models, 16 for
LR-ASPP); ``NAME:BACKBONE:VARIANT`` adds ``head_kwargs={"variant": VARIANT}``, and
``NAME:BACKBONE:KEY=VALUE[,KEY=VALUE...]`` other head options (values are Python literals,
e.g. ``ddrnet:ddrnet_23:channels=128``, mmseg's DDRNet-23 head width); a timm backbone
is ``NAME:timm:MODEL[:...]``; ``torchvision:ARCH`` builds
``torchvision.models.segmentation.ARCH`` (random init, ``aux_loss=True`` where the
architecture has one; torchvision is needed only for these).
Models whose head returns its own training-only outputs (BiSeNetV2, Fast-SCNN, STDC,
DDRNet, PIDNet, OCRNet) get no extra auxiliary FCN head (every other model does,
Mask2Former included); ``--no-aux`` builds every model without one (what a deployment runs: our models run their auxiliary FCN head in eval mode
too, so it costs inference time). The training step's loss is cross-entropy on ``"out"``
plus 0.4 x on ``"aux"`` for every model (Mask2Former's and the real-time models' own
losses are not used here: a throughput measurement, not a recipe).

Size and FLOPs (``--flops``, ``--flops-only``; :func:`count_flops`): per model spec, on
one image (batch 1) of ``--flops-size`` (default ``--size``), in eval mode, on the
``meta`` device (no memory, no compute: any size works; a model that cannot run on meta
is counted on the CPU instead, where ``FlopCounterMode`` does not see the fused CPU kernel
of ``scaled_dot_product_attention``, which on meta runs as counted matmuls):

* ``params_m``: every parameter of the model as benchmarked (auxiliary heads and
  training-only branches included);
* ``infer_params_m``: the parameters that the eval-mode forward of the deployed model
  (built without the auxiliary FCN head) actually uses, traced with a
  ``TorchFunctionMode``; training-only branches (BiSeNetV2's boosters, STDC's detail head,
  PIDNet's P/D heads, DDRNet's auxiliary head) are not used in eval mode, so they are left
  out;
* ``gflops``: ``torch.utils.flop_counter.FlopCounterMode``'s total for that forward. It
  counts convolutions, matmuls and attention (not element-wise ops, norms, activations or
  resizes) and counts a multiply-add as **2** FLOPs; ``gmacs`` = ``gflops / 2`` is what
  papers (and mmseg's ``get_flops``, fvcore) call "FLOPs".

``--flops`` adds these columns beside images/s; ``--flops-only`` prints them alone and
times nothing.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import contextlib
import dataclasses
import json
import multiprocessing
import resource
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "BenchResult",
    "FlopsResult",
    "attach_flops",
    "build_bench_model",
    "count_flops",
    "format_flops_table",
    "format_table",
    "inference_cost",
    "run_case",
    "run_cases",
]

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
    # with --flops (see FlopsResult); None otherwise
    infer_params_m: float | None = None
    gflops: float | None = None
    gmacs: float | None = None
    flops_size: tuple[int, int] | None = None


@dataclasses.dataclass
class FlopsResult:
    """Size and cost of one model spec (see the module docstring)."""

    model: str
    size: tuple[int, int]  # H, W of the one counted image
    params_m: float  # all parameters of the model as benchmarked
    infer_params_m: float  # parameters used by the deployed model's eval forward
    gflops: float  # FlopCounterMode: 2 FLOPs per multiply-add
    gmacs: float  # gflops / 2: the papers' "GFLOPs"
    device: str  # "meta", or "cpu" where the model cannot run on meta


def build_bench_model(
    spec: str, *, num_classes: int = 19, output_stride: int | None = None, aux: bool = True
) -> nn.Module:
    """Build a model from a spec (see the module docstring).

    ``aux``: add the auxiliary head where the model takes one (torchvision ``aux_loss``,
    our ``FCNHead`` on level 2 unless the head returns its own training-only outputs);
    ``output_stride``: ``None`` is the model's default.
    """
    parts = spec.split(":")
    if len(parts) > 2 and parts[1] == "timm":  # a timm backbone: NAME:timm:MODEL[:...]
        parts = [parts[0], f"timm:{parts[2]}", *parts[3:]]
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
                "deeplabv3_resnet101, fcn_resnet50, fcn_resnet101, lraspp_mobilenet_v3_large"
            )
        kwargs = {"weights": None, "weights_backbone": None, "num_classes": num_classes}
        if aux:
            try:
                return builder(**kwargs, aux_loss=True)
            except NotImplementedError:  # lraspp_mobilenet_v3_large has no auxiliary loss
                pass
        return builder(**kwargs)
    if len(parts) not in (2, 3):
        raise ValueError(
            f"model spec must be NAME:BACKBONE[:HEAD_VARIANT | :KEY=VALUE,...] or "
            f"torchvision:ARCH; got {spec!r} (e.g. pspnet:resnet50_deep, "
            "deeplabv3:resnet50:torchvision, ddrnet:ddrnet_23:channels=128)"
        )
    from seg_heads import create_model

    kwargs: dict[str, Any] = {
        "backbone": parts[1],
        "num_classes": num_classes,
        "output_stride": output_stride,
        "head_kwargs": _head_kwargs(spec, parts[2]) if len(parts) == 3 else None,
    }
    if aux:
        # a head with its own training-only outputs refuses the extra FCN head; a meta-device
        # build (no memory, no init cost) tells which kind this one is
        with torch.device("meta"):
            probe = create_model(parts[0], aux=False, **kwargs)
        aux = not getattr(probe.decode_head, "returns_aux", False)
    return create_model(parts[0], aux=aux, **kwargs)


def _head_kwargs(spec: str, text: str) -> dict[str, Any]:
    """The third part of a spec: ``VARIANT`` or ``KEY=VALUE[,KEY=VALUE...]``."""
    if "=" not in text:
        return {"variant": text}
    options: dict[str, Any] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(
                f"head options in {spec!r} must be KEY=VALUE[,KEY=VALUE...]; got {item!r}"
            )
        try:
            options[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            options[key.strip()] = value.strip()  # a bare string, e.g. variant=mmseg
    return options


class _ParameterUse(TorchFunctionMode):
    """Records every ``nn.Parameter`` passed to a torch function while active."""

    def __init__(self) -> None:
        super().__init__()
        self.used: set[int] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for a in torch.utils._pytree.tree_leaves((args, kwargs)):
            if isinstance(a, nn.Parameter):
                self.used.add(id(a))
        return func(*args, **kwargs)


def inference_cost(model: nn.Module, size: Sequence[int]) -> tuple[int, int]:
    """``(parameters used, FLOPs)`` of one eval-mode forward of a 1 x 3 x H x W zero image.

    The image is made on the device of the model's first parameter (``meta``: no memory, no
    compute). The model is put in eval mode with ``requires_grad_(False)`` (so that
    ``FlopCounterMode``'s module tracker installs no autograd hooks, which fail on tensors
    made from parameters under ``inference_mode``). FLOPs as ``FlopCounterMode`` counts them
    (2 per multiply-add); "used" parameters are those passed to any torch function during
    the forward, each counted once.
    """
    device = next(model.parameters()).device
    model.eval().requires_grad_(False)
    x = torch.zeros(1, 3, *size, device=device)
    use, counter = _ParameterUse(), FlopCounterMode(display=False)
    with torch.inference_mode(), counter, use:
        model(x)
    used = sum(p.numel() for p in model.parameters() if id(p) in use.used)
    return used, counter.get_total_flops()


def _count_on(
    spec: str,
    device: str,
    size: tuple[int, int],
    num_classes: int,
    output_stride: int | None,
    aux: bool,
) -> tuple[int, int, int]:
    """(all parameters, parameters used in eval, FlopCounterMode FLOPs) on ``device``."""
    with torch.device(device):
        model = build_bench_model(
            spec, num_classes=num_classes, output_stride=output_stride, aux=aux
        )
        total = sum(p.numel() for p in model.parameters())
        del model
        model = build_bench_model(
            spec, num_classes=num_classes, output_stride=output_stride, aux=False
        )
    return (total, *inference_cost(model, size))


def count_flops(
    spec: str,
    *,
    size: Sequence[int] | int = (1024, 2048),
    num_classes: int = 19,
    output_stride: int | None = None,
    aux: bool = True,
    device: str = "meta",
) -> FlopsResult:
    """Parameters and FLOPs of one model spec on one ``size`` image (see the module docstring).

    ``device="meta"`` counts without memory or compute; if the model cannot run there
    (a data-dependent op), it is counted on the CPU (``FlopsResult.device`` says which).
    ``aux`` is the benchmarked model's (it sets ``params_m`` only: the inference count and
    the FLOPs are always of the model without the auxiliary FCN head).
    """
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    try:
        total, used, flops = _count_on(
            spec, device, (height, width), num_classes, output_stride, aux
        )
    except (NotImplementedError, RuntimeError):
        if device != "meta":
            raise
        device = "cpu"
        total, used, flops = _count_on(
            spec, device, (height, width), num_classes, output_stride, aux
        )
    return FlopsResult(
        model=spec,
        size=(height, width),
        params_m=total / 1e6,
        infer_params_m=used / 1e6,
        gflops=flops / 1e9,
        gmacs=flops / 2e9,
        device=device,
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


def _to_syncbn(
    model: nn.Module, spec: str, dev: torch.device, *, train: bool
) -> tuple[nn.Module, bool]:
    """SyncBatchNorm on a 1-rank NCCL group (DDP-wrapped for training); also whether this
    call started the process group (the caller destroys it)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    started = False
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
        )
        started = True
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    n_sync = sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    if n_sync == 0:
        raise RuntimeError(f"{spec}: no BatchNorm layer was converted to SyncBatchNorm")
    if train:
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        model = DistributedDataParallel(model, device_ids=[index])
    return model, started


def _make_step(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    mode: str,
    amp: str,
    dev: torch.device,
    spec: str,
) -> Callable[[], None]:
    """One timed step: an inference forward, or a training step (CE + 0.4 x aux CE, SGD)."""
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

    return step


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
    output_stride: int | None = None,
    aux: bool = True,
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

    model = build_bench_model(spec, num_classes=num_classes, output_stride=output_stride, aux=aux)
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
        model, group_started = _to_syncbn(model, spec, dev, train=mode == "train")
    step = _make_step(model, x, target, mode=mode, amp=amp, dev=dev, spec=spec)

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


def _align(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def _flops_note(sizes: set[tuple[int, int]]) -> str:
    at = ", ".join(f"1x3x{h}x{w}" for h, w in sorted(sizes))
    return (
        f"GFLOPs: torch.utils.flop_counter on one {at} image, eval mode, 2 FLOPs per "
        "multiply-add; GMACs = GFLOPs / 2 (what papers call FLOPs); infer M = parameters "
        "used by the eval forward without auxiliary heads"
    )


def format_table(results: Sequence[BenchResult]) -> str:
    """A plain-text table of results (with the size and FLOPs columns if they were counted)."""
    header = ("model", "mode", "device", "amp", "ch_last", "syncbn", "input", "img/s", "ms/iter",
              "peak MiB", "base MiB", "params M")  # fmt: skip
    with_flops = any(r.gflops is not None for r in results)
    if with_flops:
        header += ("infer M", "GFLOPs", "GMACs", "at")
    rows = [header]
    for r in results:
        row = (
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
            f"{r.params_m:.2f}",
        )
        if with_flops:
            if r.gflops is None or r.flops_size is None:
                row += ("-", "-", "-", "-")
            else:
                row += (
                    f"{r.infer_params_m:.3f}",
                    f"{r.gflops:.2f}",
                    f"{r.gmacs:.2f}",
                    f"{r.flops_size[0]}x{r.flops_size[1]}",
                )
        rows.append(row)
    kinds = {r.mem_kind for r in results}
    note = {
        "peak_rss": "peak MiB = peak process RSS (base = before building the model)",
        "cuda_max_allocated": "peak MiB = torch.cuda.max_memory_allocated",
    }
    notes = [note[k] for k in sorted(kinds)]
    if with_flops:
        notes.append(_flops_note({r.flops_size for r in results if r.flops_size is not None}))
    return "\n".join(_align(rows) + notes)


def format_flops_table(results: Sequence[FlopsResult]) -> str:
    """A plain-text table of :func:`count_flops` results."""
    rows = [("model", "params M", "infer M", "GFLOPs", "GMACs", "at", "counted on")]
    for r in results:
        rows.append(
            (
                r.model,
                f"{r.params_m:.3f}",
                f"{r.infer_params_m:.3f}",
                f"{r.gflops:.2f}",
                f"{r.gmacs:.2f}",
                f"{r.size[0]}x{r.size[1]}",
                r.device,
            )
        )
    return "\n".join([*_align(rows), _flops_note({r.size for r in results})])


def attach_flops(results: Sequence[BenchResult], flops: Sequence[FlopsResult]) -> None:
    """Copy each model's size and FLOPs into its timed results (in place)."""
    by_model = {f.model: f for f in flops}
    for r in results:
        f = by_model.get(r.model)
        if f is not None:
            r.infer_params_m, r.gflops, r.gmacs, r.flops_size = (
                f.infer_params_m,
                f.gflops,
                f.gmacs,
                f.size,
            )


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
    p.add_argument(
        "--output-stride",
        type=int,
        default=None,
        help="backbone output stride (default: the model's)",
    )
    p.add_argument(
        "--no-aux", action="store_true", help="build every model without an auxiliary FCN head"
    )
    p.add_argument(
        "--flops",
        action="store_true",
        help="also count parameters and FLOPs (meta device, batch 1, at --flops-size)",
    )
    p.add_argument(
        "--flops-only", action="store_true", help="count parameters and FLOPs, time nothing"
    )
    p.add_argument(
        "--flops-size", type=int, nargs="+", default=None, metavar="H [W]",
        help="image size of the FLOP count (default: --size)",
    )  # fmt: skip
    p.add_argument("--no-isolate", action="store_true", help="run all cases in this process")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    return p


def main(argv: Sequence[str] | None = None) -> list[BenchResult] | list[FlopsResult]:
    """Run ``seg-bench`` and print the table; returns the results (``--flops-only``: the counts)."""
    args = _parser().parse_args(argv)
    if len(args.size) not in (1, 2):
        raise SystemExit("seg-bench: error: --size takes H or H W")
    size = (args.size[0], args.size[-1])
    if args.flops_size is not None and len(args.flops_size) not in (1, 2):
        raise SystemExit("seg-bench: error: --flops-size takes H or H W")
    flops_size = size if args.flops_size is None else (args.flops_size[0], args.flops_size[-1])
    flops = []
    if args.flops or args.flops_only:
        flops = [
            count_flops(
                spec,
                size=flops_size,
                num_classes=args.num_classes,
                output_stride=args.output_stride,
                aux=not args.no_aux,
            )
            for spec in args.models
        ]
    if args.flops_only:
        print(format_flops_table(flops))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(
                json.dumps([dataclasses.asdict(f) for f in flops], indent=2) + "\n"
            )
        return flops
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
        output_stride=args.output_stride,
        aux=not args.no_aux,
    )
    attach_flops(results, flops)
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
