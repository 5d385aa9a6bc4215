"""``seg-train``: the iteration-based training loop on HuggingFace accelerate.

Written in the style of accelerate's examples (``examples/nlp_example.py``,
``by_feature/checkpointing.py``): :func:`get_dataloaders` -> :func:`build` ->
:func:`train` -> :func:`main`, one ``accelerator.prepare``, step work gated on
``accelerator.sync_gradients``, files written by the main process only::

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

One iteration is one optimizer step over ``data.batch_size * train.grad_accum``
images (``data.batch_size`` is the total over processes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
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
    find_resume_checkpoint,
    get_rng_state,
    iteration_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    set_rng_state,
)
from .config import Config, ConfigError, load_config
from .logging_utils import RunLogger
from .losses import SegmentationLoss, build_loss
from .optim import WarmupPolyLR, build_optimizer, build_scheduler

__all__ = ["TrainResult", "TrainingDiverged", "build", "cli", "get_dataloaders", "main", "train"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the iteration and the last checkpoint."""


@dataclass
class TrainResult:
    """What a finished run produced (paths are inside ``output_dir``)."""

    iteration: int
    metrics: dict[str, Any] | None
    best_miou: float | None
    checkpoint: Path | None
    files: dict[str, Path] = field(default_factory=dict)


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
_INCOMPATIBLE = ("model.", "data.dataset", "optimizer.name", "optimizer.head_lr_mult")


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
    # where files go and how often they are written do not change the computation
    benign = [
        k for k in changed if k != "output_dir" and not k.startswith(("logging.", "checkpoint."))
    ]
    if benign:
        warnings.warn(
            f"resuming from {path} with a config that differs in {benign}: the result will "
            "not match an uninterrupted run",
            stacklevel=3,
        )


def _resolve_resume(resume: str | None, cfg: Config) -> tuple[Path, dict[str, Any]] | None:
    if resume is None:
        existing = iteration_checkpoints(cfg.output_dir)
        if existing:
            raise CheckpointError(
                f"output_dir {cfg.output_dir} already holds checkpoints "
                f"({existing[-1][1].name}, ...). Pass --resume auto to continue that run, "
                "or choose another output_dir (--set output_dir=...)."
            )
        return None
    if resume == "auto":
        return find_resume_checkpoint(cfg.output_dir)
    path = Path(resume)
    return path, load_checkpoint(path)


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
    optimizer = build_optimizer(model, cfg.optimizer)
    scheduler = build_scheduler(optimizer, cfg.schedule, max_iters=cfg.train.max_iters)
    criterion = build_loss(cfg.loss, align_corners=cfg.model.align_corners)
    return model, optimizer, scheduler, criterion


def train(cfg: Config, *, cpu: bool = False, resume: str | None = None) -> TrainResult:
    """Run (or continue, ``resume="auto"`` or a checkpoint path) the training described by ``cfg``.

    Raises:
        ConfigError: the config cannot be built (names the key).
        CheckpointError: the checkpoint to resume from is corrupt or does not fit ``cfg``.
        TrainingDiverged: the loss became NaN/inf (names the iteration).
    """
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    from .evaluate import evaluate

    accelerator = _make_accelerator(cfg, cpu=cpu)
    is_main = accelerator.is_main_process
    out_dir = Path(cfg.output_dir)
    world = accelerator.num_processes
    if cfg.data.batch_size % world:
        raise ConfigError(
            f"key 'data.batch_size': {cfg.data.batch_size} (the total over processes) is not "
            f"divisible by the {world} processes; use a multiple of {world}"
        )
    _seed_everything(cfg.seed, deterministic=cfg.deterministic)

    resumed = _resolve_resume(resume, cfg)
    if resumed is not None:
        _check_compatible(resumed[1]["config"], cfg, resumed[0])
    start_iter = int(resumed[1]["iteration"]) if resumed else 0

    # ---- data, model, optimizer: one prepare
    train_loader, val_loader, train_set, val_set = get_dataloaders(cfg)
    sampler = train_loader.sampler
    loader_generator = train_loader.generator
    model, optimizer, scheduler, criterion = build(cfg, accelerator)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    criterion = criterion.to(accelerator.device)
    num_classes = cfg.model.num_classes
    ignore_index = cfg.loss.ignore_index
    class_names = list(getattr(val_set, "classes", None) or []) or None
    palette = getattr(val_set, "palette", None)

    best_miou: float | None = None
    ckpt_path: Path | None = None
    if resumed is not None:
        path, state = resumed
        lacking = [k for k in ("optimizer", "scheduler") if k not in state]
        if lacking:
            raise CheckpointError(
                f"{path} holds no {' / '.join(lacking)} state (best.pth and seg-convert files "
                "hold only the model): resume from an iter_*.pth checkpoint, or start a new run "
                "with model.pretrained_backbone / seg-eval for evaluation"
            )
        try:
            accelerator.unwrap_model(model).load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(
                f"{path}: does not fit the model/optimizer built from the config: {exc}"
            ) from None
        # The schedule follows the config (e.g. a longer max_iters), at the saved iteration.
        scheduler.max_iters = cfg.train.max_iters
        for group, lr in zip(optimizer.param_groups, scheduler.lrs_at(start_iter)):
            group["lr"] = lr
        if accelerator.scaler is not None and state.get("scaler") is not None:
            accelerator.scaler.load_state_dict(state["scaler"])
        rng = state.get("rng") or []
        if len(rng) == world:
            set_rng_state(rng[accelerator.process_index])
        else:
            warnings.warn(
                f"{path} holds RNG states of {len(rng)} processes, this run has {world}: "
                "random draws (dropout) will differ from the original run",
                stacklevel=2,
            )
            torch.manual_seed(cfg.seed + start_iter + accelerator.process_index)
        best_miou = state.get("best_miou")
        ckpt_path = path
        accelerator.print(f"resumed from {path} at iteration {start_iter}")
    else:
        torch.manual_seed(cfg.seed + accelerator.process_index)  # per-process dropout streams

    # ---- output folder, resolved config, logs (main process)
    logger: RunLogger | None = None
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
        log_path = out_dir / "log.jsonl"
        if log_path.exists():  # drop records of iterations that will be redone
            keep = []
            for line in log_path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if resumed is not None and int(rec.get("iter", 0)) <= start_iter:
                    keep.append(line)
            log_path.write_text("".join(k + "\n" for k in keep), encoding="utf-8")
        logger = RunLogger(out_dir, tensorboard=cfg.logging.tensorboard)
    accelerator.wait_for_everyone()

    eval_kwargs = dict(
        num_classes=num_classes,
        ignore_index=ignore_index,
        mode=cfg.evaluation.mode,
        crop_size=cfg.evaluation.crop_size,
        stride=cfg.evaluation.stride,
        scales=tuple(cfg.evaluation.scales),
        flip=cfg.evaluation.flip,
        align_corners=cfg.model.align_corners,
        class_names=class_names,
        palette=palette,
        progress=cfg.logging.progress_bar,
    )

    def run_eval(iteration: int, *, save_dir: Path | None = None) -> dict[str, Any]:
        """Evaluate on every process; log; keep best.pth when the mIoU improved."""
        nonlocal best_miou
        _broadcast_buffers(accelerator.unwrap_model(model), accelerator)
        result = evaluate(model, val_loader, accelerator, save_dir=save_dir, **eval_kwargs)
        model.train()
        metrics = _metrics_dict(result)
        if logger is not None:
            logger.log(
                {
                    "type": "val",
                    "iter": iteration,
                    "mIoU": metrics["mIoU"],
                    "mAcc": metrics["mAcc"],
                    "aAcc": metrics["aAcc"],
                }
            )
        miou = metrics["mIoU"]
        if miou is not None and (best_miou is None or miou > best_miou):
            best_miou = miou
            if cfg.checkpoint.keep_best:
                model_state = accelerator.get_state_dict(model)
                if is_main:
                    best = {
                        "format": CHECKPOINT_FORMAT,
                        "iteration": iteration,
                        "model": model_state,
                        "config": cfg.to_dict(),
                        "metrics": metrics,
                        "best_miou": best_miou,
                    }
                    save_checkpoint(best, checkpoint_dir(out_dir) / "best.pth")
                accelerator.wait_for_everyone()
        return metrics

    def save(iteration: int, epoch: int, metrics: dict[str, Any] | None) -> Path:
        """Write iter_<iteration>.pth (all state, every process's RNG) and prune old ones."""
        rng_all = gather_object([get_rng_state()])  # every process's RNG, in rank order
        model_state = accelerator.get_state_dict(model)
        path = checkpoint_dir(out_dir) / f"iter_{iteration:07d}.pth"
        if is_main:
            state = {
                "format": CHECKPOINT_FORMAT,
                "iteration": iteration,
                "epoch": epoch,
                "model": model_state,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": accelerator.scaler.state_dict()
                if accelerator.scaler is not None
                else None,
                "rng": rng_all,
                "config": cfg.to_dict(),
                "best_miou": best_miou,
                "metrics": metrics,
                "world_size": world,
            }
            save_checkpoint(state, path)
            prune_checkpoints(out_dir, cfg.checkpoint.keep_last)
        accelerator.wait_for_everyone()
        return path

    # ---- the loop
    max_iters = cfg.train.max_iters
    accum = cfg.train.grad_accum
    batches_per_epoch = len(train_set) // cfg.data.batch_size
    epoch, skip = divmod(start_iter * accum, batches_per_epoch)
    iteration = start_iter
    last_eval_iter = last_ckpt_iter = -1
    metrics: dict[str, Any] | None = None
    images_per_iter = cfg.data.batch_size * accum
    bar = tqdm(
        total=max_iters,
        initial=start_iter,
        desc="train",
        unit="it",
        dynamic_ncols=True,
        disable=not (accelerator.is_local_main_process and cfg.logging.progress_bar),
    )
    window_loss, window_parts, window_n = 0.0, {}, 0
    window_start = time.perf_counter()
    window_iters = 0
    model.train()
    try:
        while iteration < max_iters:
            sampler.start = skip * cfg.data.batch_size  # resume mid-epoch: skip seen batches
            skip = 0
            train_loader.set_epoch(epoch)
            train_set.set_epoch(epoch)
            loader_generator.manual_seed(cfg.seed * 1_000_003 + epoch)
            for batch in train_loader:
                with accelerator.accumulate(model):
                    outputs = model(batch["image"])
                    loss, parts = criterion(outputs, batch["label"])
                    mean_loss = accelerator.reduce(loss.detach(), reduction="mean")
                    if not torch.isfinite(mean_loss):
                        last = ckpt_path if ckpt_path is not None else "none (no checkpoint yet)"
                        msg = (
                            f"loss is {mean_loss.item()} at iteration {iteration + 1} (epoch {epoch}); "
                            f"training stopped. Last good checkpoint: {last}. Lower optimizer.lr, "
                            "set train.clip_grad or check the data, then resume with --resume "
                            "auto or a checkpoint path."
                        )
                        if logger is not None:
                            logger.log({"type": "error", "iter": iteration + 1, "message": msg})
                        raise TrainingDiverged(msg)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.train.clip_grad is not None:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.train.clip_grad)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                window_loss += mean_loss.item()
                for k, v in parts.items():
                    window_parts[k] = window_parts.get(k, 0.0) + float(v)
                window_n += 1
                if not accelerator.sync_gradients:
                    continue

                # ---- one optimizer step done
                lr = optimizer.param_groups[0]["lr"]  # the LR this step used
                lr_head = optimizer.param_groups[-1]["lr"]
                scheduler.step()
                iteration += 1
                window_iters += 1
                bar.update(1)
                if iteration % cfg.train.log_interval == 0 or iteration == max_iters:
                    elapsed = time.perf_counter() - window_start
                    parts_mean = (
                        accelerator.reduce(
                            torch.tensor(
                                [window_parts.get(k, 0.0) / window_n for k in sorted(window_parts)],
                                device=accelerator.device,
                            ),
                            reduction="mean",
                        ).tolist()
                        if window_parts
                        else []
                    )
                    record = {
                        "type": "train",
                        "iter": iteration,
                        "epoch": epoch,
                        "loss": window_loss / window_n,
                        "lr": lr,
                        **{k: v for k, v in zip(sorted(window_parts), parts_mean)},
                        "lr_head": lr_head,
                        "time_per_iter": elapsed / window_iters,
                        "images_per_s": images_per_iter * window_iters / max(elapsed, 1e-9),
                    }
                    if torch.cuda.is_available() and accelerator.device.type == "cuda":
                        record["max_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
                    if logger is not None:
                        logger.log(record)
                    bar.set_postfix(
                        loss=f"{record['loss']:.4f}",
                        lr=f"{lr:.2e}",
                        img_s=f"{record['images_per_s']:.1f}",
                    )
                    window_loss, window_parts, window_n = 0.0, {}, 0
                    window_start, window_iters = time.perf_counter(), 0
                metrics_now = None
                if (
                    cfg.evaluation.interval
                    and iteration % cfg.evaluation.interval == 0
                    and iteration < max_iters
                ):
                    metrics_now = metrics = run_eval(iteration)
                    last_eval_iter = iteration
                if (
                    cfg.checkpoint.interval
                    and iteration % cfg.checkpoint.interval == 0
                    and iteration < max_iters
                ):
                    ckpt_path = save(iteration, epoch, metrics_now)
                    last_ckpt_iter = iteration
                if iteration >= max_iters:
                    break
            else:
                epoch += 1
                continue
            break
    finally:
        bar.close()

    # ---- the end: final evaluation and checkpoint, pictures, summary
    files: dict[str, Path] = {}
    save_dir = out_dir / "predictions" if cfg.evaluation.save_predictions else None
    if last_eval_iter != iteration or save_dir is not None:
        metrics = run_eval(iteration, save_dir=save_dir)
    if last_ckpt_iter != iteration:
        ckpt_path = save(iteration, epoch, metrics)
    if is_main:
        assert logger is not None
        logger.close()
        files["checkpoint"] = ckpt_path  # type: ignore[assignment]
        if (checkpoint_dir(out_dir) / "best.pth").exists():
            files["best"] = checkpoint_dir(out_dir) / "best.pth"
        files["config"] = out_dir / "config.yaml"
        files["log"] = out_dir / "log.jsonl"
        metrics_path = out_dir / "metrics.json"
        metrics_path.write_text(
            json.dumps(
                {"iter": iteration, "class_names": class_names, **(metrics or {})}, indent=2
            ),
            encoding="utf-8",
        )
        files["metrics"] = metrics_path
        files.update(
            _save_pictures(cfg, accelerator.unwrap_model(model), val_set, accelerator.device)
        )
        if save_dir is not None:
            files["predictions"] = save_dir
        width = max(len(k) for k in files)
        lines = [f"  {k:<{width}}  {v}" for k, v in files.items()]
        miou = metrics["mIoU"] if metrics else None
        accelerator.print(
            f"done: {iteration} iterations, val mIoU {miou if miou is None else f'{miou:.4f}'}; "
            f"outputs in {out_dir}:\n" + "\n".join(lines)
        )
    accelerator.wait_for_everyone()
    return TrainResult(
        iteration=iteration, metrics=metrics, best_miou=best_miou, checkpoint=ckpt_path, files=files
    )


def _save_pictures(
    cfg: Config, model: nn.Module, val_set: Any, device: torch.device
) -> dict[str, Path]:
    """Prediction grid of the first val images and training curves (main process)."""
    from .inference import predict_logits
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
    ev = cfg.evaluation
    with torch.no_grad():
        for i in range(n):
            sample = val_set[i]
            label = sample["label"]
            logits = predict_logits(
                model,
                sample["image"][None].to(device),
                mode=ev.mode,
                crop_size=ev.crop_size,
                stride=ev.stride,
                scales=tuple(ev.scales),
                flip=ev.flip,
                num_classes=cfg.model.num_classes,
                align_corners=cfg.model.align_corners,
                out_size=tuple(label.shape[-2:]),
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
        "`accelerate launch` for several GPUs or nodes).",
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
        metavar="auto|PATH",
        default=None,
        help="continue a run: 'auto' = newest readable checkpoint in output_dir, or a checkpoint path",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, train, return the exit status (errors are printed, not raised)."""
    args = _parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        train(cfg, cpu=args.cpu, resume=args.resume)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"seg-train: config error: {exc}", file=sys.stderr)
        return 2
    except CheckpointError as exc:
        print(f"seg-train: checkpoint error: {exc}", file=sys.stderr)
        return 3
    except TrainingDiverged as exc:
        print(f"seg-train: {exc}", file=sys.stderr)
        return 4
    return 0


def cli() -> None:
    """Console script ``seg-train``."""
    sys.exit(main())
