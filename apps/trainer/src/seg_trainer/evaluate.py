"""Evaluation: a dataset-level confusion matrix over all processes, and the ``seg-eval`` CLI.

:func:`evaluate` runs the model over a dataset and accumulates a
``seg_metrics.ConfusionMatrix`` on the device; the only cross-process
communication is one ``all_reduce`` of that matrix at the end. Memory is flat
in the number of images: predictions are folded into the matrix (and written
to disk when asked) batch by batch, never kept.

Distributed correctness. A loader passed through ``accelerator.prepare`` (or a
``DistributedSampler``) pads the last batches with repeated samples so that
every process gets the same number of batches; a confusion matrix summed
over processes would then count those images twice. :func:`evaluate`
therefore never iterates a prepared loader: it takes the dataset, batch size,
collate function and worker count of the loader it is given and iterates its
own unpadded shard ``indices[rank::world_size]``. Every image is counted
exactly once, and the metrics equal a single-process run bit for bit (the
matrix holds integer counts). Shards may differ by one image; that is fine
because nothing is synchronised per batch (the model is unwrapped from DDP, so
no buffer broadcast runs in forward).

Logits are resized to the label's size: labels stay at their original
resolution, as in mmseg's ``rescale=True`` testing. NaN logits are an error
(:class:`~seg_trainer.errors.EvaluationFailed` naming the image), never a
prediction: ``argmax`` would silently count them as class 0.

``seg-eval --backend onnxruntime|openvino --checkpoint model.onnx`` evaluates the file
``seg-export`` wrote: the config comes from its metadata, the model from
:func:`seg_trainer.backends.runtime_model` (on the CPU), and the loader, the inference
modes and the metrics are this module's, unchanged. Its metrics JSON and saved
predictions get the backend's name (``eval_<split>_<mode>_onnxruntime.json``,
``predictions_<split>_onnxruntime/``) so that they never overwrite PyTorch's. A runtime
that is not installed is one line naming ``pip install 'seg-trainer[deploy]'`` and exit
status 9 (:mod:`seg_trainer.errors`).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from seg_trainer.backends import BACKENDS
from seg_trainer.build import ShardSampler
from seg_trainer.errors import EvaluationFailed, report_errors
from seg_trainer.inference import MODES, inference_spec, predict_logits
from seg_trainer.visualize import colorize

__all__ = [
    "check_classes",
    "cli",
    "evaluate",
    "load_model",
    "make_shard_loader",
]


def check_classes(cfg: Any, dataset: Any, split: str, *, ignore_index: int | None = None) -> None:
    """Raise ``ConfigError`` when ``model.num_classes`` (or ``loss.ignore_index``) does not
    fit ``dataset``: a mismatch would otherwise fail only at the first out-of-range label
    (``IndexError: Target 9 is out of bounds``) or after training, at the final evaluation.
    """
    from seg_trainer.config import ConfigError

    classes = getattr(dataset, "classes", None)
    k = getattr(dataset, "num_classes", None) or (len(classes) if classes else None)
    name = cfg.data.dataset
    if k is not None and k != cfg.model.num_classes:
        shown = ""
        if classes:
            shown = (
                f" ({', '.join(map(str, list(classes)[:8]))}{', ...' if len(classes) > 8 else ''})"
            )
        raise ConfigError(
            f"key 'model.num_classes': {cfg.model.num_classes}, but dataset {name!r} "
            f"({split} split) has {k} classes{shown}. Set model.num_classes: {k}, or change "
            "the dataset's classes (data.dataset_options)"
        )
    void = getattr(dataset, "ignore_index", None)
    if ignore_index is not None and void is not None and ignore_index != void:
        raise ConfigError(
            f"key 'loss.ignore_index': {ignore_index}, but dataset {name!r} marks void pixels "
            f"as {void}: they would be trained as class {void}, which does not exist. Set "
            f"loss.ignore_index: {void}"
        )


def make_shard_loader(
    dataloader: DataLoader, num_processes: int, process_index: int
) -> tuple[DataLoader, list[int]]:
    """Rebuild ``dataloader`` (unprepared, or prepared by accelerate) over this process's shard.

    The shard is :class:`~seg_trainer.build.ShardSampler`'s: indices ``process_index,
    process_index + num_processes, ...``, which partition the dataset exactly (no padding,
    sizes differ by at most one). Returns the loader (``drop_last=False``) and the dataset
    indices it yields, in order.
    """
    dataset: Dataset = dataloader.dataset
    batch_size = dataloader.batch_size
    if batch_size is None:  # a loader built on a batch_sampler (e.g. accelerate's shards)
        batch_size = getattr(dataloader.batch_sampler, "batch_size", None) or 1
    if not 0 <= process_index < num_processes:
        raise ValueError(f"process_index {process_index} is not in [0, {num_processes})")
    sampler = ShardSampler(len(dataset), rank=process_index, world_size=num_processes)  # type: ignore[arg-type]
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        drop_last=False,
        num_workers=dataloader.num_workers,
        collate_fn=dataloader.collate_fn,
        pin_memory=dataloader.pin_memory,
        worker_init_fn=dataloader.worker_init_fn,
        persistent_workers=False,
        # its own generator: evaluating must not consume the global torch RNG (the
        # loader draws a worker base seed), or training randomness after an evaluation
        # would depend on evaluation.interval
        generator=torch.Generator().manual_seed(0),
    )
    return loader, list(sampler)


def _sample_name(meta: Any, index: int) -> str:
    """File stem for a saved prediction: the image's stem when the meta gives a path."""
    if isinstance(meta, dict):
        for key in ("image_path", "img_path", "path", "filename", "name"):
            value = meta.get(key)
            if isinstance(value, (str, Path)) and str(value):
                return Path(value).stem
    return f"{index:06d}"


def _save_prediction(
    pred: np.ndarray,
    name: str,
    save_dir: Path,
    palette: np.ndarray | None,
    label_id_fn: Callable[[np.ndarray], np.ndarray] | None,
    ignore_index: int,
) -> None:
    """Write ``pred/<name>.png`` (indices), ``color/<name>.png`` and ``label_ids/<name>.png``."""
    if pred.max(initial=0) > 255:
        raise ValueError("index PNGs hold at most 256 classes; this prediction has more")
    Image.fromarray(pred.astype(np.uint8)).save(save_dir / "pred" / f"{name}.png")
    if palette is not None:
        Image.fromarray(colorize(pred, palette, ignore_index=ignore_index)).save(
            save_dir / "color" / f"{name}.png"
        )
    if label_id_fn is not None:
        ids = np.asarray(label_id_fn(pred))
        Image.fromarray(ids.astype(np.uint8)).save(save_dir / "label_ids" / f"{name}.png")


def _batches(
    loader: DataLoader, indices: Sequence[int]
) -> Iterator[tuple[dict[str, Any], list[int]]]:
    """Yield each batch with the dataset indices of its samples."""
    start = 0
    for batch in loader:
        n = len(batch["image"])
        yield batch, list(indices[start : start + n])
        start += n


def _check_logits(logits: Tensor, metas: Sequence[Any], indices: Sequence[int]) -> None:
    """NaN logits would be counted as class 0 by argmax: refuse them, naming the image."""
    nan = torch.isnan(logits).any(dim=1)  # N x H x W
    if not bool(nan.any()):
        return
    per_image = nan.flatten(1).sum(1).tolist()
    first = next(i for i, n in enumerate(per_image) if n)
    meta = metas[first] if first < len(metas) else None
    name = (meta or {}).get("filename") if isinstance(meta, dict) else None
    raise EvaluationFailed(
        f"the model produced NaN logits for {int(sum(per_image))} pixels (first image: "
        f"{name or f'index {indices[first]}'}); the weights or the inputs are not finite, or "
        "fp16 overflowed (try train.mixed_precision=bf16 or no). NaN is not a prediction: "
        "these pixels are not counted as any class"
    )


def _prediction_dirs(
    save_dir: str | Path | None, palette: Any, label_id_fn: Callable[..., Any] | None
) -> Path | None:
    """Create the folders :func:`evaluate` writes predictions into (``None``: no saving)."""
    if save_dir is None:
        return None
    out_dir = Path(save_dir)
    (out_dir / "pred").mkdir(parents=True, exist_ok=True)
    if palette is not None:
        (out_dir / "color").mkdir(parents=True, exist_ok=True)
    if label_id_fn is not None:
        (out_dir / "label_ids").mkdir(parents=True, exist_ok=True)
    return out_dir


def _evaluate_batch(
    net: nn.Module,
    batch: dict[str, Any],
    batch_indices: Sequence[int],
    metas: Sequence[Any],
    cm: Any,
    accelerator: Any,
    keep_predictions: bool,
    predict_kwargs: dict[str, Any],
) -> list[np.ndarray]:
    """Predict one batch, add it to ``cm``; return the predictions when they are to be saved."""
    device = accelerator.device
    images = batch["image"].to(device, non_blocking=True)
    labels = batch.get("label")
    # One call for the whole batch when the labels share a size, else per image.
    if labels is None or isinstance(labels, Tensor):
        groups = [(slice(None), labels)]
    else:
        groups = [(slice(i, i + 1), lab[None]) for i, lab in enumerate(labels)]
    preds: list[np.ndarray] = []
    for sl, lab in groups:
        out_size = None if lab is None else tuple(lab.shape[-2:])
        with accelerator.autocast():
            logits = predict_logits(net, images[sl], out_size=out_size, **predict_kwargs)
        _check_logits(logits, metas[sl], batch_indices[sl])
        pred = logits.argmax(dim=1)
        if lab is not None:
            cm.update(pred, lab.to(device, non_blocking=True))
        if keep_predictions:
            preds.extend(pred.cpu().numpy())
        del logits
    return preds


def _predict_all(
    net: nn.Module,
    loader: Any,
    indices: Sequence[int],
    cm: Any,
    accelerator: Any,
    kwargs: dict[str, Any],
    *,
    out_dir: Any,
    palette: np.ndarray | None,
    label_id_fn: Callable[[np.ndarray], np.ndarray] | None,
    ignore_index: int,
    check_stop: Callable[[], None] | None,
    progress: bool,
) -> None:
    """Predict this process's shard into ``cm`` (and the prediction folders), with a bar."""
    from tqdm.auto import tqdm

    mode = kwargs["mode"]
    bar = tqdm(
        total=len(indices),
        desc=f"eval ({mode})",
        unit="img",
        disable=not (progress and accelerator.is_main_process),
        dynamic_ncols=True,
    )
    try:
        with torch.no_grad():
            for batch, batch_indices in _batches(loader, indices):
                if check_stop is not None:
                    check_stop()
                metas = batch.get("meta") or [None] * len(batch_indices)
                preds_for_saving = _evaluate_batch(
                    net, batch, batch_indices, metas, cm, accelerator, out_dir is not None, kwargs
                )
                for pred_np, meta, idx in zip(preds_for_saving, metas, batch_indices):
                    _save_prediction(
                        pred_np,
                        _sample_name(meta, idx),
                        out_dir,
                        palette,
                        label_id_fn,
                        ignore_index,
                    )  # type: ignore[arg-type]
                bar.update(len(batch_indices))
    finally:
        bar.close()


def evaluate(
    model: nn.Module,
    dataloader: DataLoader,
    accelerator: Any,
    *,
    num_classes: int,
    ignore_index: int = 255,
    mode: str = "whole",
    crop_size: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    align_corners: bool = False,
    class_names: Sequence[str] | None = None,
    save_dir: str | Path | None = None,
    palette: Any = None,
    label_id_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    progress: bool = True,
    check_stop: Callable[[], None] | None = None,
) -> Any:
    """Evaluate ``model`` over the whole dataset of ``dataloader`` on every process.

    Args:
        model: the segmentation model (wrapped by ``accelerator.prepare`` or not); it is
            unwrapped, put in eval mode for the run and restored to its mode afterwards.
        dataloader: a loader yielding ``{"image": N x 3 x H x W, "label": N x H x W or list,
            "meta": [...]}`` (``seg_data.collate``). Only its dataset, batch size, collate
            function and worker count are used (see the module docstring).
        accelerator: an ``accelerate.Accelerator`` (device, process index/count, autocast).
        num_classes: classes ``K``; ``ignore_index``: label value left out of the metrics.
        mode, crop_size, stride, scales, flip, align_corners: passed to
            :func:`seg_trainer.inference.predict_logits`.
        class_names: row names of the printed table.
        save_dir: when set, write predictions (each process writes its own images) as
            ``save_dir/pred/<stem>.png`` (class indices), ``save_dir/color/<stem>.png``
            (with ``palette``) and ``save_dir/label_ids/<stem>.png`` (with ``label_id_fn``,
            e.g. Cityscapes trainId -> labelId for the test server).
        label_id_fn: maps an ``H x W`` array of predicted train ids to dataset label ids.
        progress: show a progress bar on the main process.
        check_stop: called before each batch; may raise to abort the evaluation (the
            trainer's stop signal).

    Raises:
        EvaluationFailed: the model produced NaN logits (names the first image).

    Returns:
        The ``seg_metrics`` result of the all-reduced confusion matrix (same on every
        process); the per-class table is printed on the main process.
    """
    from seg_metrics import ConfusionMatrix

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    device = accelerator.device
    loader, indices = make_shard_loader(
        dataloader, accelerator.num_processes, accelerator.process_index
    )
    out_dir = _prediction_dirs(save_dir, palette, label_id_fn)
    pal = None if palette is None else np.asarray(palette, dtype=np.uint8)

    net = accelerator.unwrap_model(model)
    was_training = net.training
    net.eval()
    cm = ConfusionMatrix(num_classes=num_classes, ignore_index=ignore_index, device=device)
    kwargs = dict(
        mode=mode,
        crop_size=crop_size,
        stride=stride,
        scales=tuple(scales),
        flip=flip,
        num_classes=num_classes,
        align_corners=align_corners,
    )
    try:
        _predict_all(
            net, loader, indices, cm, accelerator, kwargs,
            out_dir=out_dir, palette=pal, label_id_fn=label_id_fn, ignore_index=ignore_index,
            check_stop=check_stop, progress=progress,
        )  # fmt: skip
    finally:
        net.train(was_training)
    cm.all_reduce()
    result = cm.compute()
    if accelerator.is_main_process:
        accelerator.print(result.table(class_names))
    return result


# ------------------------------------------------------------------------------------------ CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seg-eval",
        description=(
            "Evaluate a checkpoint on a dataset split (whole, sliding-window or multi-scale + "
            "flip), print the per-class table and save metrics JSON in output_dir. Runs on 1..N "
            "processes: accelerate launch [--multi_gpu --num_processes N] apps/trainer/eval.py ..."
        ),
    )
    p.add_argument("--config", help="YAML config (default: the config stored in the checkpoint)")
    p.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint (.pth) or seg-convert .safetensors; with --backend onnxruntime|openvino "
        "the .onnx file written by seg-export",
    )
    p.add_argument(
        "--backend",
        default="torch",
        choices=BACKENDS,
        help="torch (default): PyTorch; onnxruntime / openvino: the exported .onnx on the CPU "
        "(pip install 'seg-trainer[deploy]'); same transforms, modes and metrics",
    )
    p.add_argument("--threads", type=int, help="onnxruntime/openvino threads (their default)")
    p.add_argument("--cpu", action="store_true", help="run on CPU (Accelerator(cpu=True))")
    p.add_argument(
        "--split",
        default="val",
        choices=["train", "val", "test"],
        help="which split to evaluate: the config's data.<split>_split (default: val)",
    )
    p.add_argument("--mode", choices=MODES, help="override evaluation.mode")
    p.add_argument(
        "--save-predictions",
        action="store_true",
        help="write index / colour / labelId PNGs under <output_dir>/predictions_<split> "
        "(predictions_<split>_<backend> for onnxruntime / openvino)",
    )
    p.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides, e.g. --set data.root=/data/cityscapes evaluation.stride=[513,513]",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks of reported errors")
    return p


def _load_config(args: argparse.Namespace, stored: dict[str, Any] | None) -> Any:
    """The config stored with the model (checkpoint or ONNX file), ``--config``/``--set`` applied."""
    from seg_trainer.config import ConfigError, apply_overrides, config_from_dict, load_config

    overrides = list(args.set)
    if args.mode:
        overrides.append(f"evaluation.mode={args.mode}")
    if args.save_predictions:
        overrides.append("evaluation.save_predictions=true")
    if args.config:
        return load_config(args.config, overrides)
    if not isinstance(stored, dict):
        raise ConfigError(f"{args.checkpoint} carries no config; pass --config CONFIG.yaml")
    data = apply_overrides(json.loads(json.dumps(stored)), overrides)
    return config_from_dict(data, source=f"{args.checkpoint} (stored config)")


def _label_id_fn(dataset: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    """The dataset's trainId -> labelId mapping for its test server (Cityscapes), else None."""
    if getattr(dataset, "name", None) == "cityscapes":
        from seg_data import train_id_to_label_id

        return train_id_to_label_id
    return None


def load_model(cfg: Any, checkpoint: dict[str, Any], path: str | Path) -> nn.Module:
    """Build the model of ``cfg`` and load ``checkpoint["model"]`` strictly, explaining misfits."""
    from seg_backbones import IncompatibleWeightsError
    from seg_backbones.pretrained import check_state_dict
    from seg_trainer.build import build_model
    from seg_trainer.checkpoint import CheckpointError

    model = build_model(cfg)
    try:
        check_state_dict(model, checkpoint["model"], where=str(path), limit=5)
    except IncompatibleWeightsError as exc:
        found = str(exc).replace(":\n", ": ").replace("\n", "; ")  # one line: the CLI prints it
        raise CheckpointError(
            f"{found}. It does not fit the model built from the config ({cfg.model.name} / "
            f"{cfg.model.backbone}, {cfg.model.num_classes} classes): pass the config the "
            "checkpoint was trained with (--config) or fix model.* (e.g. model.num_classes) "
            "with --set"
        ) from None
    model.load_state_dict(checkpoint["model"], strict=True)
    return model


def main(argv: Sequence[str] | argparse.Namespace | None = None) -> dict[str, Any]:
    """Run ``seg-eval`` (arguments, or parsed ones); returns the metrics written to JSON."""
    from accelerate import Accelerator

    from seg_trainer.backends import load_inference_model, stored_config
    from seg_trainer.build import build_dataloader, build_dataset
    from seg_trainer.rundir import atomic_write_text

    args = _parser().parse_args(argv) if not isinstance(argv, argparse.Namespace) else argv
    backend = getattr(args, "backend", "torch")
    stored, checkpoint = stored_config(args.checkpoint, backend)
    cfg = _load_config(args, stored)
    runtime = backend != "torch"  # onnxruntime / openvino: CPU arrays, their own precision
    accelerator = Accelerator(
        cpu=args.cpu or runtime, mixed_precision="no" if runtime else cfg.train.mixed_precision
    )
    split = args.split

    model = load_inference_model(
        cfg, args.checkpoint, backend, checkpoint=checkpoint, threads=getattr(args, "threads", None)
    )
    model.to(accelerator.device)

    dataset = build_dataset(cfg, split)
    check_classes(cfg, dataset, split)
    ev = cfg.evaluation
    # training's evaluation loader; evaluate() iterates this process's shard of it
    loader = build_dataloader(dataset, cfg, train=False)
    out_dir = Path(cfg.output_dir)
    tag = "" if backend == "torch" else f"_{backend}"  # never overwrite PyTorch's results
    save_dir = out_dir / f"predictions_{split}{tag}" if ev.save_predictions else None
    spec = inference_spec(cfg)
    result = evaluate(
        model,
        loader,
        accelerator,
        ignore_index=getattr(dataset, "ignore_index", cfg.loss.ignore_index),
        **spec,
        class_names=getattr(dataset, "classes", None),
        save_dir=save_dir,
        palette=getattr(dataset, "palette", None),
        label_id_fn=_label_id_fn(dataset),
        progress=not args.no_progress,
    )
    metrics = {
        "checkpoint": str(args.checkpoint),
        "backend": backend,
        "iteration": (checkpoint or {}).get(
            "iteration", getattr(model, "metadata", {}).get("iteration")
        ),
        "split": split,
        "num_images": len(dataset),  # type: ignore[arg-type]
        "num_processes": accelerator.num_processes,
        "evaluation": {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in spec.items()
            if k in ("mode", "crop_size", "stride", "scales", "flip")
        },
        "metrics": _jsonable(result.to_dict(getattr(dataset, "classes", None), confusion=True)),
    }
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"eval_{split}_{ev.mode}{tag}.json"
        atomic_write_text(path, json.dumps(metrics, indent=2, allow_nan=False) + "\n")
        accelerator.print(f"metrics written to {path}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return metrics


def _jsonable(value: Any) -> Any:
    """Plain JSON data: tensors/arrays to lists, NaN (classes absent from the set) to null."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (Tensor, np.ndarray)):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def cli(argv: Sequence[str] | None = None) -> None:
    """Console entry point ``seg-eval``: documented errors are one line and an exit code
    (the table in :mod:`seg_trainer.errors`), ``--debug`` shows their traceback."""
    args = _parser().parse_args(argv)

    def run() -> int:
        main(args)
        return 0

    raise SystemExit(report_errors("seg-eval", run, debug=args.debug))


if __name__ == "__main__":
    cli()
