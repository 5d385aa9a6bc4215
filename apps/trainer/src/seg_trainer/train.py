"""``seg-train``: the iteration-based training loop on HuggingFace accelerate.

Written in the style of accelerate's examples (``examples/nlp_example.py``,
``by_feature/checkpointing.py``): :func:`get_dataloaders` -> :func:`build` ->
:func:`train` -> :func:`main`, one ``accelerator.prepare``, step work gated on
``accelerator.sync_gradients``, files written by the main process only; the loop's
position lives in one :class:`TrainState`, the built objects in one :class:`Run`, and
each part of an iteration is a small function::

    seg-train --config apps/trainer/configs/demo/pspnet_r18-deep_synthetic.yaml --cpu
    accelerate launch apps/trainer/train.py --config CONFIG [--set key=value ...] [--resume auto]

Exact resume. A dataset sample depends only on ``(seed, epoch, index)`` (the
seg_data contract) and the training order of an epoch only on ``(seed, epoch)``
(:class:`seg_trainer.build.EpochSampler`). A checkpoint stores the model,
optimizer, scheduler, grad scaler, every process's RNG state and the iteration;
resuming restores them and skips the batches already seen in the current epoch
(at the sampler, without loading them), so a resumed run computes the same
iterations as an uninterrupted one (bit for bit on CPU with the same number of
processes and ``deterministic: true``).

Nothing lost (apps/trainer/README.md, "Reliability", lists the guarantees):

* before the first iteration: the output folder is locked for this run, leftovers of
  killed saves are removed, a folder holding checkpoints is refused without
  ``--resume``/``--overwrite``, and :func:`preflight` checks class counts, the ignore
  index, one decoded val batch, write access and free space;
* checkpoints are written only with finite weights, so the one a NaN stop names is good;
* SIGTERM/SIGINT finish the current step, write a checkpoint and exit with 75 (a second
  signal stops at once);
* the final checkpoint is written before the final evaluation, so an evaluation failure
  loses nothing.

One iteration is one optimizer step over ``data.batch_size * train.grad_accum``
images (``data.batch_size`` is the total over processes).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .build import build_dataloader, build_dataset, build_model, find_normalize
from .checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    checkpoint_dir,
    checkpoint_files,
    find_resume_checkpoint,
    get_rng_state,
    iteration_checkpoints,
    load_checkpoint,
    non_finite,
    prune_checkpoints,
    save_checkpoint,
    set_rng_state,
)
from .config import Config, ConfigError, load_config
from .ema import ModelEma
from .errors import (
    EvaluationFailed,
    TrainingDiverged,
    TrainingInterrupted,
    report_errors,
)
from .logging_utils import RunLogger
from .losses import SegmentationLoss, build_loss
from .optim import WarmupPolyLR, build_optimizer, build_scheduler
from .rundir import (
    RunLock,
    atomic_write_text,
    check_free_space,
    check_writable,
    human_bytes,
    remove_leftovers,
)

__all__ = [
    "Run",
    "TrainResult",
    "TrainState",
    "TrainingDiverged",
    "TrainingInterrupted",
    "build",
    "cli",
    "enable_grad_checkpointing",
    "get_dataloaders",
    "main",
    "preflight",
    "train",
]


@dataclass
class TrainResult:
    """What a finished run produced (paths are inside ``output_dir``)."""

    iteration: int
    metrics: dict[str, Any] | None
    best_miou: float | None
    checkpoint: Path | None
    files: dict[str, Path] = field(default_factory=dict)


@dataclass
class TrainState:
    """Where the loop stands (what a checkpoint stores besides the modules and RNGs)."""

    iteration: int = 0
    epoch: int = 0
    skip: int = 0  # batches of `epoch` already seen (resuming mid-epoch)
    best_miou: float | None = None
    metrics: dict[str, Any] | None = None  # of the newest evaluation
    best_ema_miou: float | None = None  # train.ema: the same for the EMA weights
    ema_metrics: dict[str, Any] | None = None
    checkpoint: Path | None = None  # the newest checkpoint, written or resumed from: finite
    last_eval_iter: int = -1
    last_ckpt_iter: int = -1


@dataclass
class Run:
    """Everything :func:`train` built for one run, shared by the steps of the loop."""

    cfg: Config
    accelerator: Any
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: WarmupPolyLR
    criterion: SegmentationLoss
    train_loader: Any
    val_loader: Any
    train_set: Any
    val_set: Any
    stop: _StopSignal
    logger: RunLogger | None = None  # main process only
    sampler: Any = None
    loader_generator: Any = None
    ema: ModelEma | None = None  # train.ema.enabled

    @property
    def unwrapped(self) -> nn.Module:
        """The model without DDP (the EMA's source, the checkpoints' layout)."""
        return self.accelerator.unwrap_model(self.model)

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.output_dir)

    @property
    def is_main(self) -> bool:
        return bool(self.accelerator.is_main_process)

    @property
    def class_names(self) -> list[str] | None:
        return list(getattr(self.val_set, "classes", None) or []) or None


# ------------------------------------------------------------------------------------- helpers


def _seed_everything(seed: int, *, deterministic: bool) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only: a few CUDA kernels (e.g. bilinear upsampling backward) have no
        # deterministic implementation; they warn instead of stopping the run.
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def _make_accelerator(cfg: Config, *, cpu: bool) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, GradientAccumulationPlugin

    # sync_with_dataloader=False: an iteration is always grad_accum batches, also across
    # epoch boundaries, so (iteration, batches seen) stay in a fixed ratio for resuming.
    return Accelerator(
        cpu=cpu,
        mixed_precision=cfg.train.mixed_precision,
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=cfg.train.grad_accum, sync_with_dataloader=False
        ),
        # The loader yields data.batch_size images per step in total, split across processes:
        # the same images per iteration for any number of processes.
        dataloader_config=DataLoaderConfiguration(split_batches=True),
    )


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and prefix.count(".") < 1:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


# Keys whose change makes a checkpoint unusable (different parameters or labels).
_INCOMPATIBLE = (
    "model.",
    "data.dataset",
    "optimizer.name",
    "optimizer.head_lr_mult",
    "optimizer.layer_decay",  # also layer_decay_type / layer_decay_num_layers: the groups change
)


def _check_compatible(ckpt_cfg: Any, cfg: Config, path: Path) -> None:
    if not isinstance(ckpt_cfg, dict):
        raise CheckpointError(f"{path}: its 'config' entry is not a mapping")
    old, new = _flatten(ckpt_cfg), _flatten(cfg.to_dict())
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    fatal = [k for k in changed if k.startswith(_INCOMPATIBLE)]
    if fatal:
        details = "; ".join(
            f"{k}: checkpoint {old.get(k)!r} vs config {new.get(k)!r}" for k in fatal
        )
        raise CheckpointError(
            f"{path} does not fit this config ({details}). Resume with the config the run "
            "was started with (it is saved as <output_dir>/config.yaml), or start a new "
            "output_dir."
        )
    # where files go and how often they are written do not change the computation, nor does
    # recomputing activations in backward (bit-identical gradients, tests/test_train_resume.py)
    same = ("output_dir", "train.grad_checkpointing")
    benign = [k for k in changed if k not in same and not k.startswith(("logging.", "checkpoint."))]
    if benign:
        warnings.warn(
            f"resuming from {path} with a config that differs in {benign}: the result will "
            "not match an uninterrupted run",
            stacklevel=3,
        )


def _denormalize(
    image: torch.Tensor, norm: tuple[list[float], list[float], bool] | None
) -> np.ndarray:
    """3 x H x W normalised float tensor -> H x W x 3 uint8 RGB picture."""
    x = image.detach().float().cpu()
    if norm is not None:
        mean, std, to_bgr = norm
        x = x * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
        if to_bgr:
            x = x.flip(0)
    elif x.max() <= 1.5:
        x = x * 255.0
    return x.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _broadcast_buffers(model: nn.Module, accelerator: Any) -> None:
    """Copy process 0's buffers (BN running statistics) to every process.

    Without SyncBatchNorm each process's running statistics follow its own last
    batches; evaluating with them would make the shards disagree with each other
    and with the checkpoint (written by process 0). mmseg's DistEvalHook does the
    same (``broadcast_bn_buffer=True``).
    """
    if accelerator.num_processes == 1:
        return
    import torch.distributed as dist

    for buf in model.buffers():
        dist.broadcast(buf.data, src=0)


def _metrics_dict(result: Any) -> dict[str, Any]:
    def num(v: Any) -> float | None:
        v = float(v)
        return v if math.isfinite(v) else None

    out: dict[str, Any] = {
        "mIoU": num(result.miou),
        "mAcc": num(result.macc),
        "aAcc": num(result.aacc),
    }
    iou = getattr(result, "iou", None)
    if iou is not None:
        out["IoU"] = [num(v) for v in np.asarray(iou, dtype=np.float64).tolist()]
    return out


def _note(run_or_accelerator: Any, message: str) -> None:
    """An informational line on the main process's stderr."""
    acc = getattr(run_or_accelerator, "accelerator", run_or_accelerator)
    if acc.is_main_process:
        print(f"seg-train: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- stop signals


class _StopNow(Exception):
    """Raised inside an evaluation to abort it after a stop signal."""


class _StopSignal:
    """SIGTERM/SIGINT handler: the first asks the loop to stop after the current step.

    The handler records the signal and restores the previous handlers, so a second
    signal takes the default action at once: SIGTERM kills the process, SIGINT raises
    ``KeyboardInterrupt``. Installed only in the main thread.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.name: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> _StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        self.name = signal.Signals(signum).name
        self.restore()
        os.write(
            2,
            f"seg-train: {self.name} received: finishing the current step, then writing a "
            "checkpoint (send it again to stop at once, without saving)\n".encode(),
        )

    def requested(self, accelerator: Any) -> bool:
        """Whether any process got a stop signal (one all-reduce when there are several)."""
        flag = self.name is not None
        if accelerator.num_processes > 1:
            t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
            flag = bool(accelerator.reduce(t, reduction="sum").item() > 0)
            if flag and self.name is None:
                self.name = "a signal (on another process)"
        return flag

    def check(self) -> None:
        """Raise :class:`_StopNow` when this process got a stop signal (single process)."""
        if self.name is not None:
            raise _StopNow


def _quiet_worker(worker_id: int, inner: Callable[[int], Any] | None = None) -> None:
    """DataLoader ``worker_init_fn``: workers ignore SIGINT/SIGTERM (Ctrl-C reaches the
    whole process group); the main process stops them when it stops."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if inner is not None:
        inner(worker_id)


def _quiet_workers(loader: Any) -> None:
    if loader.num_workers > 0:
        loader.worker_init_fn = functools.partial(_quiet_worker, inner=loader.worker_init_fn)


# ------------------------------------------------------------------------ the output folder


_RUN_FILES = ("log.jsonl", "metrics.json", "config.yaml", "predictions.png", "training_curves.png")
_RUN_DIRS = ("tensorboard", "predictions")


def _tidy_output_dir(cfg: Config, resume: str | None, overwrite: bool) -> None:
    """Main process, lock held: remove leftovers; refuse or clear a previous run."""
    out = Path(cfg.output_dir)
    leftovers = remove_leftovers(out)
    if leftovers:
        size = human_bytes(sum(n for _, n in leftovers))
        print(
            f"seg-train: removed {len(leftovers)} temporary file(s) ({size}) left by saves "
            f"that were killed half-way: {', '.join(p.name for p, _ in leftovers[:3])}",
            file=sys.stderr,
        )
    existing = checkpoint_files(out)
    names = ", ".join(p.name for p in existing[:4]) + (", ..." if len(existing) > 4 else "")
    if existing and overwrite:
        removed = _clear_previous_run(out, existing)
        print(f"seg-train: --overwrite: removed the previous run in {out}: {removed}")
    elif existing and resume is None:
        raise CheckpointError(
            f"output_dir {out} already holds checkpoints ({names}). Pass --resume auto to "
            "continue that run, --overwrite to replace it, or choose another output_dir "
            "(--set output_dir=...)."
        )
    elif existing and resume in ("auto", "must") and not iteration_checkpoints(out):
        raise CheckpointError(
            f"--resume {resume}: {checkpoint_dir(out)} holds {names} but no iter_*.pth to "
            "continue from (best.pth holds only the model). A fresh run would replace them: "
            "pass --overwrite to do that, or choose another output_dir."
        )


def _clear_previous_run(out: Path, checkpoints: list[Path]) -> str:
    for p in checkpoints:
        p.unlink()
    gone = [f"{len(checkpoints)} checkpoint(s)"]
    for name in _RUN_FILES:
        if (out / name).is_file():
            (out / name).unlink()
            gone.append(name)
    for name in _RUN_DIRS:
        if (out / name).is_dir():
            shutil.rmtree(out / name)
            gone.append(name + "/")
    return ", ".join(gone)


def _resolve_resume(
    resume: str | None, cfg: Config, accelerator: Any
) -> tuple[Path, dict[str, Any]] | None:
    if resume is None:
        return None
    if resume in ("auto", "must"):
        found = find_resume_checkpoint(cfg.output_dir)
        if found is None and resume == "must":
            raise CheckpointError(
                f"--resume must: no iter_*.pth checkpoint in {checkpoint_dir(cfg.output_dir)} "
                "to continue from (use --resume auto to start fresh when there is none)"
            )
        if found is None:
            _note(
                accelerator,
                f"--resume auto: no checkpoint in {checkpoint_dir(cfg.output_dir)}: starting "
                "a fresh run",
            )
        return found
    path = Path(resume)
    return path, load_checkpoint(path)


# ------------------------------------------------------------------------------ the four steps


def get_dataloaders(cfg: Config) -> tuple[Any, Any, Any, Any]:
    """Train and val datasets and their (not yet prepared) loaders."""
    train_set = build_dataset(cfg, "train")
    val_set = build_dataset(cfg, "val")
    train_loader = build_dataloader(train_set, cfg, train=True)
    val_loader = build_dataloader(val_set, cfg, train=False)
    return train_loader, val_loader, train_set, val_set


def build(
    cfg: Config, accelerator: Any
) -> tuple[nn.Module, torch.optim.Optimizer, WarmupPolyLR, SegmentationLoss]:
    """Model (SyncBatchNorm on several CUDA GPUs), optimizer, LR schedule and loss."""
    model = build_model(cfg)
    if cfg.train.sync_bn and accelerator.num_processes > 1 and accelerator.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.train.grad_checkpointing:
        enable_grad_checkpointing(model)
    optimizer = build_optimizer(model, cfg.optimizer)
    scheduler = build_scheduler(optimizer, cfg.schedule, max_iters=cfg.train.max_iters)
    criterion = build_loss(
        cfg.loss, align_corners=cfg.model.align_corners, num_classes=cfg.model.num_classes
    )
    return model, optimizer, scheduler, criterion


# ---------------------------------------------------------------- gradient checkpointing


@contextlib.contextmanager
def _keep_bn_statistics(module: nn.Module) -> Any:
    """Restore the BN running statistics a recomputation updated (a second time) on exit."""
    saved = [
        (m, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, mean, var, count in saved:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)


def _recompute_contexts(block: nn.Module) -> tuple[Any, Any]:
    """``torch.utils.checkpoint``'s ``context_fn``: (forward, recomputation) contexts."""
    return contextlib.nullcontext(), _keep_bn_statistics(block)


class _CheckpointedBlocks(nn.Sequential):
    """A stage of blocks, each recomputed in backward instead of keeping its activations.

    The same children as the ``nn.Sequential`` it replaces (same state-dict keys). Per block,
    as mmseg's ResNet ``with_cp`` and timm's ``checkpoint_seq``; non-reentrant
    ``torch.utils.checkpoint`` (RNG state replayed, so dropout draws the same). Unlike theirs,
    the recomputation does not update the BN running statistics a second time: training
    with and without checkpointing is bit-identical on CPU (tests/test_train_resume.py,
    apps/trainer/tests/test_train_units.py).
    Only in training mode with gradients enabled; evaluation runs the plain blocks.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return super().forward(x)
        from torch.utils.checkpoint import checkpoint

        # torch.compile plans the recomputation itself (and takes no such context_fn)
        compiling = torch.compiler.is_compiling()
        for block in self:
            options = (
                {} if compiling else {"context_fn": functools.partial(_recompute_contexts, block)}
            )
            x = checkpoint(block, x, use_reentrant=False, **options)
        return x


def enable_grad_checkpointing(model: nn.Module) -> None:
    """``train.grad_checkpointing``: recompute the backbone's blocks in backward.

    - Our ResNets (``seg_backbones`` ``resnet*``): every block of layer1..layer4
      (:class:`_CheckpointedBlocks`, BN-exact).
    - timm backbones (``timm:<name>``) whose modules have timm's ``grad_checkpointing``
      switch (what timm's ``set_grad_checkpointing`` sets: ConvNeXt stages, ViT/DeiT/EVA
      blocks, ...): those switches, i.e. timm's own checkpointing. timm's recomputation
      updates BatchNorm statistics a second time (a warning says so when the backbone has
      BatchNorm; the LayerNorm models named here have none).
    - other timm ``features_only`` models built as timm's ``FeatureListNet``/``FeatureHookNet``
      (e.g. ``timm:resnet50``): every block of each ``nn.Sequential`` stage, as ours
      (BN-exact); else the model's ``set_grad_checkpointing`` (e.g. EfficientNet's features
      model, which checkpoints per stage; BatchNorm warning as above).
    - Swin is refused: our wrapper runs its blocks itself (HF-style padding), so timm's
      switch would do nothing.

    Raises:
        ConfigError: the backbone is none of these.
    """
    from seg_backbones.resnet import ResNet
    from seg_backbones.timm_wrapper import TimmBackbone

    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, ResNet):
        _checkpoint_stages(backbone, [f"layer{i}" for i in range(1, 5)])
        return
    if isinstance(backbone, TimmBackbone) and backbone.family != "swin":
        timm_model = backbone.model
        switches = [
            m
            for m in timm_model.modules()
            if m is not timm_model and isinstance(getattr(m, "grad_checkpointing", None), bool)
        ]
        if switches:
            for m in switches:
                m.grad_checkpointing = True
            _warn_bn_recompute(timm_model, backbone.name)
            return
        from timm.models._features import FeatureDictNet, FeatureHookNet

        # timm's features wrappers call each child in turn: checkpoint the blocks of its stages
        stages = [n for n, m in timm_model.named_children() if type(m) is nn.Sequential]
        if isinstance(timm_model, FeatureDictNet | FeatureHookNet) and stages:
            _checkpoint_stages(timm_model, stages)
            return
        if hasattr(timm_model, "set_grad_checkpointing"):  # e.g. EfficientNetFeatures
            timm_model.set_grad_checkpointing(True)
            _warn_bn_recompute(timm_model, backbone.name)
            return
    name = type(backbone).__name__ if backbone is not None else type(model).__name__
    family = f" ({backbone.name})" if isinstance(backbone, TimmBackbone) else ""
    raise ConfigError(
        f"key 'train.grad_checkpointing': not implemented for the backbone {name}{family}; it "
        "works with the seg_backbones ResNets and timm backbones other than Swin. Set it to "
        "false"
    )


def _warn_bn_recompute(model: nn.Module, name: str) -> None:
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        warnings.warn(
            f"train.grad_checkpointing: timm's checkpointing of {name} recomputes its "
            "BatchNorm layers in backward, which updates their running statistics a second "
            "time per step (timm's behaviour)",
            stacklevel=4,
        )


def _checkpoint_stages(parent: nn.Module, names: Sequence[str]) -> None:
    for name in names:
        stage = getattr(parent, name)
        if not isinstance(stage, _CheckpointedBlocks):
            setattr(parent, name, _CheckpointedBlocks(*stage))


def _build_run(cfg: Config, accelerator: Any, stop: _StopSignal) -> Run:
    train_loader, val_loader, train_set, val_set = get_dataloaders(cfg)
    _quiet_workers(train_loader)
    _quiet_workers(val_loader)
    sampler, generator = train_loader.sampler, train_loader.generator
    model, optimizer, scheduler, criterion = build(cfg, accelerator)
    # the EMA copies the eager model (before compiling); it starts as a copy (decay 0 at step 1)
    ema = ModelEma.from_config(model, cfg.train.ema) if cfg.train.ema.enabled else None
    if cfg.train.compile:
        model.compile()  # in place: the state-dict keys stay those of the eager model
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    return Run(
        cfg=cfg,
        accelerator=accelerator,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        criterion=criterion.to(accelerator.device),
        train_loader=train_loader,
        val_loader=val_loader,
        train_set=train_set,
        val_set=val_set,
        stop=stop,
        sampler=sampler,
        loader_generator=generator,
        ema=None if ema is None else ema.to(accelerator.device),
    )


def _checkpoint_bytes(run: Run) -> tuple[int, int]:
    """Estimated sizes of an iteration checkpoint and of best.pth (model only; with the EMA
    on, plus best_ema.pth), in bytes."""
    model = run.unwrapped
    model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    params = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    opt = run.cfg.optimizer
    slots = 2 if opt.name == "adamw" else int(opt.momentum > 0)
    ema = model_bytes if run.ema is not None else 0  # the EMA weights, and best_ema.pth
    return model_bytes + slots * params + ema, model_bytes + ema


def preflight(run: Run) -> None:
    """Everything that can be checked before the first iteration, each a named error.

    Class counts of both splits against ``model.num_classes`` and the ignore index
    (:func:`seg_trainer.evaluate.check_classes`), one decoded val batch and one train
    sample (a corrupt file fails now, naming it, not after hours), write access to the
    checkpoint folder and enough free space for the checkpoints this run keeps.

    Raises:
        ConfigError, seg_data.DatasetError, StorageError.
    """
    from .evaluate import check_classes

    cfg = run.cfg
    check_classes(cfg, run.train_set, "train", ignore_index=cfg.loss.ignore_index)
    check_classes(cfg, run.val_set, "val", ignore_index=cfg.loss.ignore_index)
    labels = [
        run.val_set[i]["label"] for i in range(min(cfg.evaluation.batch_size, len(run.val_set)))
    ]
    run.train_set[0]
    _warn_binary_masks(cfg, labels)
    if run.is_main:
        folder = checkpoint_dir(cfg.output_dir)
        check_writable(folder)
        ckpt, best = _checkpoint_bytes(run)
        have = sum(p.stat().st_size for p in checkpoint_files(cfg.output_dir))
        need = ckpt * (cfg.checkpoint.keep_last + 1) + (best if cfg.checkpoint.keep_best else 0)
        check_free_space(
            folder,
            max(need - have, ckpt),
            f"{cfg.checkpoint.keep_last} kept checkpoints of ~{human_bytes(ckpt)} each (one "
            "more while the next is written) and best.pth",
        )


def _warn_binary_masks(cfg: Config, labels: list[torch.Tensor]) -> None:
    if not labels or cfg.model.num_classes < 2:
        return
    values = torch.unique(torch.cat([lab.reshape(-1) for lab in labels]))
    if set(values.tolist()) == {0, cfg.loss.ignore_index}:
        warnings.warn(
            f"the first val labels hold only class 0 and ignore ({cfg.loss.ignore_index}): "
            "binary masks saved as 0/255? 255 reads as ignore and the model would learn "
            "background only. Check with: python -m seg_data check --dataset "
            f"{cfg.data.dataset} --root ... (the folder dataset has dataset_options: "
            "{binary_mask: true})",
            stacklevel=2,
        )


def _restore(run: Run, resumed: tuple[Path, dict[str, Any]] | None) -> TrainState:
    """The state to start from: fresh, or the resumed checkpoint loaded into the run."""
    cfg, acc = run.cfg, run.accelerator
    if resumed is None:
        torch.manual_seed(cfg.seed + acc.process_index)  # per-process dropout streams
        return TrainState()
    path, ckpt = resumed
    start = int(ckpt["iteration"])
    lacking = [k for k in ("optimizer", "scheduler") if k not in ckpt]
    if lacking:
        raise CheckpointError(
            f"{path} holds no {' / '.join(lacking)} state (best.pth and seg-convert files "
            "hold only the model): resume from an iter_*.pth checkpoint, or start a new run "
            "with model.pretrained_backbone / seg-eval for evaluation"
        )
    bad = non_finite(ckpt["model"], ckpt["optimizer"], {"ema": ckpt.get("ema") or {}})
    if bad:
        raise CheckpointError(
            f"{path} holds non-finite values ({', '.join(bad)}): resuming would diverge at "
            "once; resume from an earlier checkpoint (--resume PATH)"
        )
    try:
        run.unwrapped.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])
        _restore_ema(run, path, ckpt)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: does not fit the model/optimizer built from the config: {exc}"
        ) from None
    # The schedule follows the config (e.g. a longer max_iters), at the saved iteration.
    run.scheduler.max_iters = cfg.train.max_iters
    for group, lr in zip(run.optimizer.param_groups, run.scheduler.lrs_at(start)):
        group["lr"] = lr
    if acc.scaler is not None and ckpt.get("scaler") is not None:
        acc.scaler.load_state_dict(ckpt["scaler"])
    rng = ckpt.get("rng") or []
    if len(rng) == acc.num_processes:
        set_rng_state(rng[acc.process_index])
    else:
        warnings.warn(
            f"{path} holds RNG states of {len(rng)} processes, this run has "
            f"{acc.num_processes}: random draws (dropout) will differ from the original run",
            stacklevel=2,
        )
        torch.manual_seed(cfg.seed + start + acc.process_index)
    epoch, skip = divmod(start * cfg.train.grad_accum, len(run.train_set) // cfg.data.batch_size)
    acc.print(f"resumed from {path} at iteration {start}")
    return TrainState(
        iteration=start,
        epoch=epoch,
        skip=skip,
        best_miou=_best_miou(ckpt.get("best_miou"), cfg),
        best_ema_miou=_best_miou(ckpt.get("best_ema_miou"), cfg, "best_ema.pth"),
        checkpoint=path,
        last_ckpt_iter=start,
    )


def _restore_ema(run: Run, path: Path, ckpt: dict[str, Any]) -> None:
    """The EMA weights of the checkpoint; a copy of the model when it has none (EMA just on)."""
    if run.ema is None:
        return
    if ckpt.get("ema") is not None:
        run.ema.module.load_state_dict(ckpt["ema"])
        return
    warnings.warn(
        f"{path} holds no EMA weights (train.ema was off): the EMA starts from the resumed "
        "model's weights",
        stacklevel=3,
    )
    run.ema.module.load_state_dict(run.unwrapped.state_dict())


def _best_miou(saved: float | None, cfg: Config, name: str = "best.pth") -> float | None:
    """The best mIoU so far: the checkpoint's, or best.pth's (best_ema.pth's) when that is
    higher (the final evaluation runs after the final checkpoint, so it may know a newer
    value)."""
    best = checkpoint_dir(cfg.output_dir) / name
    if best.is_file():
        try:
            other = torch.load(best, map_location="cpu", weights_only=True, mmap=True)
            other = other.get("best_miou") if isinstance(other, dict) else None
        except Exception:  # an unreadable best.pth is replaced by the next better one
            other = None
        if isinstance(other, float) and (saved is None or other > saved):
            return other
    return saved


def _start_files(run: Run, state: TrainState, resumed: Path | None) -> None:
    """config.yaml (atomic) and the log with its start marker (main process)."""
    if not run.is_main:
        return
    atomic_write_text(run.out_dir / "config.yaml", run.cfg.to_yaml())
    run.logger = RunLogger(run.out_dir, tensorboard=run.cfg.logging.tensorboard)
    run.logger.log(
        {
            "type": "start",
            "iter": state.iteration,
            "resumed_from": None if resumed is None else str(resumed),
        }
    )


# ------------------------------------------------------------------------------------ the loop


class _Window:
    """Training-loss and speed statistics between two log lines."""

    def __init__(self) -> None:
        self.reset()
        self.lr = self.lr_head = 0.0

    def reset(self) -> None:
        self.loss, self.parts, self.n, self.iters = 0.0, {}, 0, 0
        self.start = time.perf_counter()

    def add(self, loss: float, parts: dict[str, Any]) -> None:
        self.loss += loss
        for k, v in parts.items():
            self.parts[k] = self.parts.get(k, 0.0) + float(v)
        self.n += 1


def _train_step(run: Run, state: TrainState, batch: dict[str, Any], window: _Window) -> bool:
    """One forward/backward (one micro-batch); True when it completed an optimizer step."""
    acc, cfg = run.accelerator, run.cfg
    with acc.accumulate(run.model):
        outputs = run.model(batch["image"])
        loss, parts = run.criterion(outputs, batch["label"])
        mean_loss = acc.reduce(loss.detach(), reduction="mean")
        if not torch.isfinite(mean_loss):
            _diverged(
                run,
                state,
                f"loss is {mean_loss.item()} at iteration {state.iteration + 1} "
                f"(epoch {state.epoch})",
            )
        acc.backward(loss)
        if acc.sync_gradients and cfg.train.clip_grad is not None:
            acc.clip_grad_norm_(run.model.parameters(), cfg.train.clip_grad)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
    window.add(mean_loss.item(), parts)
    if not acc.sync_gradients:
        return False
    window.lr = run.optimizer.param_groups[0]["lr"]  # the LR this step used
    window.lr_head = run.optimizer.param_groups[-1]["lr"]
    run.scheduler.step()
    state.iteration += 1
    if run.ema is not None:
        run.ema.update(run.unwrapped, state.iteration)
    window.iters += 1
    return True


def _log_train(run: Run, state: TrainState, window: _Window, bar: Any) -> None:
    acc = run.accelerator
    elapsed = time.perf_counter() - window.start
    names = sorted(window.parts)
    parts_mean = (
        acc.reduce(
            torch.tensor([window.parts[k] / window.n for k in names], device=acc.device),
            reduction="mean",
        ).tolist()
        if names
        else []
    )
    images = run.cfg.data.batch_size * run.cfg.train.grad_accum * window.iters
    record = {
        "type": "train",
        "iter": state.iteration,
        "epoch": state.epoch,
        "loss": window.loss / window.n,
        "lr": window.lr,
        **dict(zip(names, parts_mean)),
        "lr_head": window.lr_head,
        "time_per_iter": elapsed / window.iters,
        "images_per_s": images / max(elapsed, 1e-9),
    }
    if torch.cuda.is_available() and acc.device.type == "cuda":
        record["max_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if run.logger is not None:
        run.logger.log(record)
    bar.set_postfix(
        loss=f"{record['loss']:.4f}", lr=f"{window.lr:.2e}", img_s=f"{record['images_per_s']:.1f}"
    )
    window.reset()


def _after_step(run: Run, state: TrainState, window: _Window, bar: Any) -> None:
    """Logging, periodic evaluation and checkpoint after an optimizer step."""
    cfg, it = run.cfg, state.iteration
    if it % cfg.train.log_interval == 0 or it == cfg.train.max_iters:
        _log_train(run, state, window, bar)
    not_last = it < cfg.train.max_iters
    due_eval = bool(cfg.evaluation.interval) and it % cfg.evaluation.interval == 0 and not_last
    due_ckpt = bool(cfg.checkpoint.interval) and it % cfg.checkpoint.interval == 0 and not_last
    if due_eval or due_ckpt:
        _check_weights(run, state)
    metrics_now = _evaluate_or_fail(run, state) if due_eval else None
    if due_ckpt:
        _save(run, state, metrics_now)


def _train_loop(run: Run, state: TrainState) -> None:
    from tqdm.auto import tqdm

    cfg, acc = run.cfg, run.accelerator
    bar = tqdm(
        total=cfg.train.max_iters,
        initial=state.iteration,
        desc="train",
        unit="it",
        dynamic_ncols=True,
        disable=not (acc.is_local_main_process and cfg.logging.progress_bar),
    )
    window = _Window()
    run.model.train()
    try:
        while state.iteration < cfg.train.max_iters:
            run.sampler.start = state.skip * cfg.data.batch_size  # resume mid-epoch
            state.skip = 0
            run.train_loader.set_epoch(state.epoch)
            run.train_set.set_epoch(state.epoch)
            run.loader_generator.manual_seed(cfg.seed * 1_000_003 + state.epoch)
            for batch in _batches(run, state):
                if not _train_step(run, state, batch, window):
                    continue
                bar.update(1)
                with contextlib.suppress(_StopNow):  # a stop signal during an evaluation
                    _after_step(run, state, window, bar)
                if run.stop.requested(acc):
                    _stop(run, state)
                if state.iteration >= cfg.train.max_iters:
                    break
            else:
                state.epoch += 1
    finally:
        bar.close()


def _batches(run: Run, state: TrainState) -> Any:
    """The epoch's batches; a dataset error names the last checkpoint (one is written first
    when the run is a single process and it is behind)."""
    from seg_data import DatasetError

    it = iter(run.train_loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except DatasetError as exc:
            behind = state.iteration > max(state.last_ckpt_iter, 0)
            if run.accelerator.num_processes == 1 and behind:
                _save(run, state, None)
            where = state.checkpoint or "none"
            raise type(exc)(
                f"{exc} [training stopped at iteration {state.iteration}; newest checkpoint: "
                f"{where}; fix the file and continue with --resume auto]"
            ) from exc
        yield batch


# ---------------------------------------------------------------------- saving and stopping


def _check_weights(run: Run, state: TrainState) -> None:
    """Stop (TrainingDiverged) when weights or optimizer state hold NaN/inf, before they are
    evaluated or written: every checkpoint on disk is finite."""
    ema = {} if run.ema is None else {"ema": run.ema.module.state_dict()}
    bad = non_finite(run.unwrapped.state_dict(), run.optimizer.state_dict(), ema)
    flag = torch.tensor([float(bool(bad))], device=run.accelerator.device)
    if run.accelerator.num_processes > 1:
        flag = run.accelerator.reduce(flag, reduction="sum")
    if flag.item() > 0:
        names = ", ".join(bad) if bad else "on another process"
        _diverged(
            run,
            state,
            f"the weights are not finite after iteration {state.iteration} ({names}); no "
            "checkpoint was written with them",
        )


def _diverged(run: Run, state: TrainState, what: str) -> None:
    last = state.checkpoint if state.checkpoint is not None else "none (no checkpoint yet)"
    msg = (
        f"{what}; training stopped. Last good checkpoint: {last}. Lower optimizer.lr, set "
        "train.clip_grad or check the data, then resume with --resume auto or a checkpoint "
        "path."
    )
    if run.logger is not None:
        run.logger.log({"type": "error", "iter": state.iteration + 1, "message": msg})
    raise TrainingDiverged(msg)


def _checkpoint_record(
    run: Run,
    state: TrainState,
    model_state: dict[str, torch.Tensor],
    metrics: dict[str, Any] | None,
    *,
    rng: list[Any] | None = None,
    best_miou: float | None = None,
    weights: str = "model",
) -> dict[str, Any]:
    """The one checkpoint schema (seg_trainer.checkpoint's docstring lists it).

    With ``rng`` an iteration checkpoint (everything to resume: optimizer, scheduler, scaler,
    RNGs, the EMA and :class:`TrainState`'s bests); without, a model-only file (best.pth,
    best_ema.pth) holding ``model_state`` (the EMA's for best_ema.pth, ``weights: "ema"``),
    loadable by seg-eval/seg-infer like any checkpoint.
    """
    acc = run.accelerator
    record: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "iteration": state.iteration,
        "model": model_state,
        "config": run.cfg.to_dict(),
        "metrics": metrics,
        "best_miou": state.best_miou if best_miou is None else best_miou,
    }
    if rng is None:
        record["weights"] = weights
        return record
    record.update(
        epoch=state.epoch,
        optimizer=run.optimizer.state_dict(),
        scheduler=run.scheduler.state_dict(),
        scaler=acc.scaler.state_dict() if acc.scaler is not None else None,
        rng=rng,
        world_size=acc.num_processes,
        ema=None if run.ema is None else run.ema.module.state_dict(),
        best_ema_miou=state.best_ema_miou,
        ema_metrics=state.ema_metrics if metrics is not None else None,
    )
    return record


def _save(run: Run, state: TrainState, metrics: dict[str, Any] | None) -> Path:
    """Write iter_<iteration>.pth (all state, every process's RNG) and prune old ones."""
    from accelerate.utils import gather_object

    acc = run.accelerator
    _check_weights(run, state)
    rng_all = gather_object([get_rng_state()])  # every process's RNG, in rank order
    model_state = acc.get_state_dict(run.model)
    if run.ema is not None:
        run.ema.broadcast_buffers(acc)  # process 0's, as the model's (identical everywhere)
        run.ema.check_synchronized(acc)
    path = checkpoint_dir(run.out_dir) / f"iter_{state.iteration:07d}.pth"
    if run.is_main:
        ckpt = _checkpoint_record(run, state, model_state, metrics, rng=rng_all)
        save_checkpoint(ckpt, path)
        prune_checkpoints(run.out_dir, run.cfg.checkpoint.keep_last)
    acc.wait_for_everyone()
    state.checkpoint, state.last_ckpt_iter = path, state.iteration
    return path


def _stop(run: Run, state: TrainState) -> None:
    """After a stop signal: write a checkpoint of the finished step and raise."""
    if state.iteration > state.last_ckpt_iter and state.iteration > 0:
        _save(run, state, None)
    name = run.stop.name or "a signal"
    path = state.checkpoint
    if run.logger is not None:
        run.logger.log(
            {"type": "stop", "iter": state.iteration, "signal": name, "checkpoint": str(path)}
        )
    written = (
        f"checkpoint {path} holds iteration {state.iteration}; continue with --resume auto"
        if path is not None
        else "no checkpoint (no iteration had finished)"
    )
    raise TrainingInterrupted(
        f"{name}: stopped after iteration {state.iteration} of {run.cfg.train.max_iters}; "
        + written,
        signal_name=name,
        checkpoint=path,
    )


# ------------------------------------------------------------------------------- evaluation


def _evaluate(run: Run, state: TrainState, save_dir: Path | None = None) -> dict[str, Any]:
    """Evaluate on every process (and the EMA weights, when on); log; keep best.pth and
    best_ema.pth when their mIoU improved."""
    acc = run.accelerator
    _broadcast_buffers(run.unwrapped, acc)
    metrics = _evaluate_model(run, run.model, save_dir)
    run.model.train()
    record = {"type": "val", "iter": state.iteration, **_headline(metrics)}
    state.metrics, state.last_eval_iter = metrics, state.iteration
    if run.ema is not None:
        run.ema.broadcast_buffers(acc)
        state.ema_metrics = _evaluate_model(run, run.ema.module, None)
        record.update({f"ema/{k}": v for k, v in _headline(state.ema_metrics).items()})
    if run.logger is not None:
        run.logger.log(record)
    miou = metrics["mIoU"]
    if miou is not None and (state.best_miou is None or miou > state.best_miou):
        state.best_miou = miou
        _keep_best(run, state, acc.get_state_dict(run.model), metrics, "best.pth")
    if run.ema is not None:
        assert state.ema_metrics is not None
        miou = state.ema_metrics["mIoU"]
        if miou is not None and (state.best_ema_miou is None or miou > state.best_ema_miou):
            state.best_ema_miou = miou
            _keep_best(run, state, run.ema.module.state_dict(), state.ema_metrics, "best_ema.pth")
    return metrics


def _evaluate_model(run: Run, model: nn.Module, save_dir: Path | None) -> dict[str, Any]:
    """The metrics of ``model`` (the training model or the EMA) on the val set, sharded."""
    from .evaluate import evaluate
    from .inference import inference_spec

    cfg, acc = run.cfg, run.accelerator
    result = evaluate(
        model,
        run.val_loader,
        acc,
        ignore_index=cfg.loss.ignore_index,
        **inference_spec(cfg),
        class_names=run.class_names,
        palette=getattr(run.val_set, "palette", None),
        progress=cfg.logging.progress_bar,
        save_dir=save_dir,
        check_stop=run.stop.check if acc.num_processes == 1 else None,
    )
    return _metrics_dict(result)


def _keep_best(
    run: Run, state: TrainState, model_state: dict[str, Any], metrics: dict[str, Any], name: str
) -> None:
    """best.pth (the model) or best_ema.pth (the EMA weights) with checkpoint.keep_best."""
    if not run.cfg.checkpoint.keep_best:
        return
    if run.is_main:
        ema = name == "best_ema.pth"
        best = _checkpoint_record(
            run,
            state,
            model_state,
            metrics,
            best_miou=metrics["mIoU"],
            weights="ema" if ema else "model",
        )
        save_checkpoint(best, checkpoint_dir(run.out_dir) / name)
    run.accelerator.wait_for_everyone()


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in ("mIoU", "mAcc", "aAcc")}


def _evaluate_or_fail(
    run: Run, state: TrainState, save_dir: Path | None = None, *, final: bool = False
) -> dict[str, Any]:
    """:func:`_evaluate`; a failure becomes :class:`EvaluationFailed` with every checkpoint
    in place (a periodic one first writes the checkpoint of this iteration)."""
    try:
        return _evaluate(run, state, save_dir)
    except (_StopNow, TrainingInterrupted, TrainingDiverged):
        raise
    except Exception as exc:
        cause = f"{type(exc).__name__}: {exc}"
        behind = state.last_ckpt_iter < state.iteration
        if not final and run.accelerator.num_processes == 1 and behind:
            _save(run, state, None)
        where = state.checkpoint or "none"
        what = "final evaluation" if final else f"evaluation at iteration {state.iteration}"
        msg = (
            f"the {what} failed ({cause}). Nothing is lost: checkpoint {where} holds "
            f"iteration {state.iteration} and every checkpoint is in place. Fix the cause, "
            f"then evaluate with seg-eval --checkpoint {where}"
            + ("" if final else " or continue with --resume auto")
        )
        if run.logger is not None:
            run.logger.log({"type": "error", "iter": state.iteration, "message": msg})
        raise EvaluationFailed(msg) from exc


def _finish(run: Run, state: TrainState) -> TrainResult:
    """The final checkpoint (first, so nothing can lose it), final evaluation, files."""
    cfg, acc = run.cfg, run.accelerator
    if state.last_ckpt_iter != state.iteration:
        _save(run, state, state.metrics)
    save_dir = run.out_dir / "predictions" if cfg.evaluation.save_predictions else None
    if state.last_eval_iter != state.iteration or save_dir is not None:
        try:
            _evaluate_or_fail(run, state, save_dir, final=True)
        except _StopNow:
            raise TrainingInterrupted(
                f"{run.stop.name}: stopped during the final evaluation; checkpoint "
                f"{state.checkpoint} holds all {state.iteration} iterations (evaluate it with "
                "seg-eval)",
                signal_name=run.stop.name or "a signal",
                checkpoint=state.checkpoint,
            ) from None
    files: dict[str, Path] = {}
    if run.is_main:
        files = _write_outputs(run, state)
    acc.wait_for_everyone()
    return TrainResult(
        iteration=state.iteration,
        metrics=state.metrics,
        best_miou=state.best_miou,
        checkpoint=state.checkpoint,
        files=files,
    )


def _write_outputs(run: Run, state: TrainState) -> dict[str, Path]:
    """metrics.json, pictures and the summary (main process)."""
    out, cfg = run.out_dir, run.cfg
    assert run.logger is not None
    run.logger.close()
    files: dict[str, Path] = {"checkpoint": state.checkpoint}  # type: ignore[dict-item]
    for key, name in (("best", "best.pth"), ("best_ema", "best_ema.pth")):
        if (checkpoint_dir(out) / name).exists():
            files[key] = checkpoint_dir(out) / name
    files["config"] = out / "config.yaml"
    files["log"] = out / "log.jsonl"
    summary = {"iter": state.iteration, "class_names": run.class_names, **(state.metrics or {})}
    if run.ema is not None:
        summary["ema"] = state.ema_metrics
    files["metrics"] = atomic_write_text(out / "metrics.json", json.dumps(summary, indent=2))
    try:
        model = run.accelerator.unwrap_model(run.model)
        files.update(_save_pictures(cfg, model, run.val_set, run.accelerator.device))
    except Exception as exc:  # pictures are a convenience: never fail a finished run
        warnings.warn(f"could not draw the pictures: {type(exc).__name__}: {exc}", stacklevel=2)
    if cfg.evaluation.save_predictions:
        files["predictions"] = out / "predictions"
    width = max(len(k) for k in files)
    lines = [f"  {k:<{width}}  {v}" for k, v in files.items()]
    miou = (state.metrics or {}).get("mIoU")
    ema = (state.ema_metrics or {}).get("mIoU") if run.ema is not None else None
    ema_text = "" if ema is None else f" (EMA {ema:.4f})"
    run.accelerator.print(
        f"done: {state.iteration} iterations, val mIoU "
        f"{miou if miou is None else f'{miou:.4f}'}{ema_text}; outputs in {out}:\n"
        + "\n".join(lines)
    )
    return files


def train(
    cfg: Config, *, cpu: bool = False, resume: str | None = None, overwrite: bool = False
) -> TrainResult:
    """Run (or continue) the training described by ``cfg``.

    Args:
        resume: ``None`` (a fresh run; an output_dir holding checkpoints is refused),
            ``"auto"`` (the newest readable iter_*.pth, or a fresh start saying so),
            ``"must"`` (the newest readable iter_*.pth, an error when there is none)
            or a checkpoint path.
        overwrite: a fresh run may replace the checkpoints and logs of a previous run.

    Raises:
        ConfigError: the config cannot be built or does not fit the dataset (names the key).
        CheckpointError: the checkpoint is corrupt or does not fit ``cfg``; the folder
            holds checkpoints and neither ``resume`` nor ``overwrite`` was given.
        seg_data.DatasetError: a data file is missing or corrupt (names it).
        OutputDirBusy, StorageError: the folder is locked by another run / not writable.
        TrainingDiverged: the loss or the weights became NaN/inf.
        TrainingInterrupted: SIGTERM/SIGINT; a checkpoint of the last step was written.
        EvaluationFailed: an evaluation failed; every checkpoint is in place.
    """
    if resume is not None and overwrite:
        raise ConfigError("--overwrite starts a new run: it cannot be combined with --resume")
    accelerator = _make_accelerator(cfg, cpu=cpu)
    world = accelerator.num_processes
    if cfg.data.batch_size % world:
        raise ConfigError(
            f"key 'data.batch_size': {cfg.data.batch_size} (the total over processes) is not "
            f"divisible by the {world} processes; use a multiple of {world}"
        )
    _seed_everything(cfg.seed, deterministic=cfg.deterministic)
    stop = _StopSignal()
    state = TrainState()
    run: Run | None = None
    with ExitStack() as stack:
        if accelerator.is_main_process:
            lock = stack.enter_context(RunLock(cfg.output_dir))
            if lock.stale:
                _note(
                    accelerator,
                    f"took over the stale lock of a run that is gone (pid {lock.stale.get('pid')} "
                    f"on host {lock.stale.get('host')} is no longer running)",
                )
            _tidy_output_dir(cfg, resume, overwrite)
        accelerator.wait_for_everyone()
        resumed = _resolve_resume(resume, cfg, accelerator)
        if resumed is not None:
            _check_compatible(resumed[1]["config"], cfg, resumed[0])
        run = _build_run(cfg, accelerator, stop)
        stack.callback(lambda: run.logger.close() if run.logger is not None else None)
        preflight(run)
        state = _restore(run, resumed)
        _start_files(run, state, None if resumed is None else resumed[0])
        accelerator.wait_for_everyone()
        stack.callback(stop.restore)
        stop.install()
        try:
            _train_loop(run, state)
            return _finish(run, state)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(
                "second Ctrl-C: stopped at once, without saving; newest checkpoint: "
                f"{state.checkpoint or 'none'}"
            ) from None
    raise AssertionError("unreachable")  # pragma: no cover


def _save_pictures(
    cfg: Config, model: nn.Module, val_set: Any, device: torch.device
) -> dict[str, Path]:
    """Prediction grid of the first val images and training curves (main process)."""
    from .inference import inference_spec, predict_logits
    from .visualize import save_prediction_grid, save_training_curves

    out_dir = Path(cfg.output_dir)
    files: dict[str, Path] = {}
    files["curves"] = save_training_curves(out_dir / "log.jsonl", out_dir / "training_curves.png")
    palette = getattr(val_set, "palette", None)
    n = min(cfg.logging.num_vis, len(val_set))
    if n == 0 or palette is None:
        return files
    norm = find_normalize(cfg)
    was_training = model.training
    model.eval()
    images, labels, preds = [], [], []
    spec = inference_spec(cfg)
    with torch.no_grad():
        for i in range(n):
            sample = val_set[i]
            label = sample["label"]
            logits = predict_logits(
                model,
                sample["image"][None].to(device),
                out_size=tuple(label.shape[-2:]),
                **spec,
            )
            images.append(_denormalize(sample["image"], norm))
            labels.append(label.cpu().numpy())
            preds.append(logits.argmax(1)[0].cpu().numpy())
    model.train(was_training)
    # predictions are at the label's size; the picture must match it
    if images[0].shape[:2] != labels[0].shape:
        return files
    files["predictions_png"] = save_prediction_grid(
        images,
        labels,
        preds,
        palette,
        out_dir / "predictions.png",
        ignore_index=cfg.loss.ignore_index,
        max_rows=n,
    )
    return files


# ------------------------------------------------------------------------------------------ CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seg-train",
        description="Train a PKUSeg segmentation model from a YAML config (run under "
        "`accelerate launch` for several GPUs or nodes). Exit codes: 0 done, 2 config, "
        "3 checkpoint, 4 diverged, 5 data, 6 output_dir busy, 7 storage, 8 evaluation "
        "failed (checkpoints kept), 75 stopped by a signal (checkpoint written).",
    )
    p.add_argument("--config", required=True, help="YAML config file (see apps/trainer/configs/)")
    p.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override config values, e.g. --set optimizer.lr=0.02 data.root=/data/cityscapes",
    )
    p.add_argument("--cpu", action="store_true", help="run on CPU (Accelerator(cpu=True))")
    p.add_argument(
        "--resume",
        metavar="auto|must|PATH",
        default=None,
        help="continue a run: 'auto' = newest readable checkpoint in output_dir (a fresh "
        "start when there is none, said so), 'must' = the same but an error when there is "
        "none, or a checkpoint path",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in an output_dir that holds a previous run's checkpoints, "
        "deleting them (without it such a folder is refused)",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks of reported errors")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, train, return the exit status (errors are printed, not raised)."""
    args = _parser().parse_args(argv)

    def run() -> int:
        cfg = load_config(args.config, args.overrides)
        train(cfg, cpu=args.cpu, resume=args.resume, overwrite=args.overwrite)
        return 0

    return report_errors("seg-train", run, debug=args.debug)


def cli() -> None:
    """Console script ``seg-train``."""
    sys.exit(main())
