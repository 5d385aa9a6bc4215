"""``seg-infer``: segment arbitrary images with a checkpoint; write masks, colours and overlays.

    seg-infer --checkpoint runs/demo/checkpoints/best.pth --input photos/ --output preds/
    seg-infer --checkpoint weights/dlv3.safetensors --input a.jpg b.png --output preds/ --mode slide
    seg-infer --backend onnxruntime --checkpoint model.onnx --input photos/ --output preds/

``--backend torch`` (default) runs a checkpoint in PyTorch; ``--backend onnxruntime`` or
``openvino`` runs the ``.onnx`` file ``seg-export`` wrote, given as ``--checkpoint``, on the
CPU (``--threads``): its config is the one stored in the file's metadata, and everything
else below (transforms, modes, resizing, outputs) is the same code for every backend.
A runtime that is not installed is one line naming ``pip install 'seg-trainer[deploy]'``
and exit status 9.

For each input image ``<name>`` it writes

* ``<output>/masks/<name>.png``: class indices (8-bit grey PNG, values 0..K-1);
* ``<output>/color/<name>.png``: the mask in the dataset's palette;
* ``<output>/overlay/<name>.png``: the image blended with the palette colours (``--alpha``).

The checkpoint (or ONNX file) carries its resolved config (``--config`` overrides it). Images are
prepared with the config's ``data.val_transforms`` (e.g. ``Resize``, ``Normalize``,
``Pad``); padding added by them is cut off and the prediction is resized back to
the image's own size. Inference uses ``evaluation.mode`` (``--mode`` overrides) with
its crop, stride, scales and flip. The palette and class names come from the ONNX
metadata, else from the dataset when it can be opened (always for ``synthetic``), else the
VOC colour map (:func:`seg_trainer.inference.palette_and_classes`).

Images are read by ``seg_data.read_image``, the reader training and evaluation use:
EXIF orientation applied, 16-bit images scaled to 8 bits, float images refused by
name. Two inputs never write the same output: names that would collide (``a.jpg``
and ``a.png``, also differing only in case, or equal names from two input folders)
get their extension (``a_jpg``, ``a_png``) and, if still equal, a number; the
renames are printed. The same file given twice is processed once.

Memory: with ``--mode slide`` (no flip) the logits of an image are never held at
full size (:func:`seg_trainer.inference.slide_labels`), resizing back to the image
size and the colour/overlay pictures work a band of rows at a time, so an 8000 x 6000
photo needs about its own size a few times over. ``--mode whole`` on an image too
large for memory is reported with the advice to use slide mode.

Inputs that cannot be read or predicted are reported with the reason, the remaining
images are still processed, the count printed is the number of images whose three
outputs were all written, and the exit status is 5 (the data-error code of
:mod:`seg_trainer.errors`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from seg_trainer.backends import BACKENDS
from seg_trainer.errors import EXIT_DATA, report_errors
from seg_trainer.inference import (
    MODES,
    inference_spec,
    palette_and_classes,
    predict_logits,
    prepare_image,
    resize_labels,
    slide_labels,
)
from seg_trainer.visualize import colorize, overlay

__all__ = ["IMAGE_SUFFIXES", "cli", "find_images", "predict_mask"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def find_images(inputs: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """``(path, output name)`` for every image: files as given, folders searched recursively.

    Output names keep the sub-folder of images found in a folder (``a/b.jpg`` -> ``a/b``).
    They never collide, also not on a case-insensitive file system: inputs that would share
    a name get their extension (``a_jpg``, ``a_png``) and, if that is not enough, a number
    (``a_2``). The same file given twice is listed once.

    Raises:
        FileNotFoundError: an input does not exist, or no image was found.
    """
    found: list[tuple[Path, str]] = []
    seen_files: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            pairs = [(p, p.relative_to(path).with_suffix("").as_posix()) for p in files]
        elif path.is_file():
            pairs = [(path, path.stem)]
        else:
            raise FileNotFoundError(f"--input {item}: no such file or folder")
        for p, name in pairs:
            if p.resolve() not in seen_files:
                seen_files.add(p.resolve())
                found.append((p, name))
    if not found:
        raise FileNotFoundError(
            f"no images found in {', '.join(map(str, inputs))} (looked for {', '.join(IMAGE_SUFFIXES)})"
        )
    return list(zip([p for p, _ in found], _unique_names(found)))


def _unique_names(found: list[tuple[Path, str]]) -> list[str]:
    """Collision-free output names (compared case-insensitively)."""
    names = [name for _, name in found]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, name in enumerate(names):
        groups[name.casefold()].append(i)
    for idxs in groups.values():
        if len(idxs) > 1:
            for i in idxs:
                names[i] = f"{names[i]}_{found[i][0].suffix.lstrip('.').lower()}"
    taken: set[str] = set()
    for i, name in enumerate(names):
        unique, n = name, 1
        while unique.casefold() in taken:
            n += 1
            unique = f"{name}_{n}"
        names[i] = unique
        taken.add(unique.casefold())
    return names


def _read_image(path: Path) -> np.ndarray:
    """``seg_data.read_image`` (kept for callers of the old private helper; use seg_data's)."""
    from seg_data import read_image

    return read_image(path)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seg-infer",
        description="Segment images with a PKUSeg checkpoint: index masks, colour masks, overlays.",
    )
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
        "(pip install 'seg-trainer[deploy]')",
    )
    p.add_argument("--threads", type=int, help="onnxruntime/openvino threads (their default)")
    p.add_argument("--input", required=True, nargs="+", help="image files and/or folders")
    p.add_argument("--output", required=True, type=Path, help="output folder")
    p.add_argument("--config", help="YAML config (default: the one stored in the checkpoint)")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    p.add_argument("--mode", choices=MODES, help="override evaluation.mode")
    p.add_argument(
        "--device", default="auto", help="--backend torch: auto (CUDA when available) | cpu | cuda"
    )
    p.add_argument("--cpu", action="store_true", help="same as --device cpu")
    p.add_argument("--alpha", type=float, default=0.5, help="colour weight of the overlays")
    p.add_argument("--debug", action="store_true", help="show tracebacks of reported errors")
    return p


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc)
    signs = ("can't allocate memory", "out of memory", "DefaultCPUAllocator")
    # oneDNN reports a failed scratchpad allocation as "could not create a primitive"
    return isinstance(exc, RuntimeError) and any(s in text for s in (*signs, "create a primitive"))


def predict_mask(
    model: torch.nn.Module, image: np.ndarray, transforms: Any, cfg: Any, device: torch.device
) -> np.ndarray:
    """Class ids (``H x W`` uint8) of an RGB uint8 image, at the image's own size.

    Slide mode without flip never holds full-size logits (:func:`slide_labels`); resizing
    back to the image size is done a band of rows at a time (:func:`resize_labels`).
    """
    ev = cfg.evaluation
    tensor, (y1, y2, x1, x2) = prepare_image(image, transforms, contiguous=False)
    x = tensor[None].to(device)
    del tensor
    size = image.shape[:2]
    if not (ev.mode == "slide" and not ev.flip and (y2 - y1, x2 - x1) == size):
        x = x.contiguous()
    if ev.mode == "slide" and not ev.flip and (y2 - y1, x2 - x1) == size:
        labels = slide_labels(
            model, x, crop_size=ev.crop_size, stride=ev.stride, num_classes=cfg.model.num_classes
        )[0, y1:y2, x1:x2]
    else:
        logits = predict_logits(model, x, **inference_spec(cfg))[:, :, y1:y2, x1:x2]
        del x
        labels = resize_labels(logits, size, align_corners=cfg.model.align_corners)[0]
    return labels.cpu().numpy().astype(np.uint8)


def _too_large(path: Path, image: np.ndarray, mode: str) -> str:
    h, w = image.shape[:2]
    if mode == "slide":
        return (
            f"{path}: {w}x{h} image does not fit in memory even in slide mode; lower "
            "evaluation.crop_size (--set evaluation.crop_size=[512,512] evaluation.stride=[341,341])"
        )
    return (
        f"{path}: {w}x{h} image does not fit in memory in {mode} mode; use sliding windows: "
        "--mode slide --set evaluation.crop_size=[512,512] evaluation.stride=[341,341] "
        "(memory then grows with the crop, not the image)"
    )


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    """The config stored with the model (``--config``/``--set``/``--mode`` applied) and the
    checkpoint (``None`` for the runtime backends)."""
    from seg_trainer.backends import stored_config
    from seg_trainer.config import ConfigError, apply_overrides, config_from_dict, load_config

    stored, checkpoint = stored_config(args.checkpoint, args.backend)
    overrides = list(args.set) + ([f"evaluation.mode={args.mode}"] if args.mode else [])
    if args.config:
        return load_config(args.config, overrides), checkpoint
    if not isinstance(stored, dict):
        raise ConfigError(f"{args.checkpoint} carries no config; pass --config CONFIG.yaml")
    data = apply_overrides(json.loads(json.dumps(stored)), overrides)
    return config_from_dict(data, source=f"{args.checkpoint} (stored config)"), checkpoint


def main(argv: Sequence[str] | argparse.Namespace | None = None) -> int:
    """Run ``seg-infer``; returns the exit status (0, or 5 when some inputs failed).

    Documented errors (:mod:`seg_trainer.errors`) are raised; :func:`cli` reports them.
    """
    from seg_data import DatasetError, build_transforms, read_image
    from seg_trainer.backends import load_inference_model

    args = argv if isinstance(argv, argparse.Namespace) else _parser().parse_args(argv)
    images = find_images(args.input)
    cfg, checkpoint = _load(args)
    device = torch.device(
        "cpu"
        if args.cpu or args.backend != "torch"  # the runtimes take CPU arrays
        else ("cuda" if torch.cuda.is_available() else "cpu")
        if args.device == "auto"
        else args.device
    )
    model = load_inference_model(
        cfg, args.checkpoint, args.backend, checkpoint=checkpoint, threads=args.threads
    ).to(device)
    transforms = build_transforms(cfg.data.val_transforms) if cfg.data.val_transforms else None
    palette, _ = palette_and_classes(cfg, getattr(model, "metadata", None))
    for sub in ("masks", "color", "overlay"):
        (args.output / sub).mkdir(parents=True, exist_ok=True)
    renamed = [(p, n) for p, n in images if n != _plain_name(p, args.input)]
    if renamed:
        print(
            f"seg-infer: {len(renamed)} input(s) would share an output name with another; "
            "written as: " + ", ".join(f"{p} -> {n}.png" for p, n in renamed[:10])
        )

    failures: list[str] = []
    written = 0
    for path, name in images:
        try:
            image = read_image(path)
        except DatasetError as exc:
            failures.append(str(exc))
            continue
        try:
            mask = predict_mask(model, image, transforms, cfg, device)
        except (RuntimeError, MemoryError) as exc:
            if not _is_out_of_memory(exc):
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            failures.append(_too_large(path, image, cfg.evaluation.mode))
            continue
        for sub, picture in (
            ("masks", mask),
            ("color", colorize(mask, palette)),
            ("overlay", overlay(image, mask, palette, alpha=args.alpha)),
        ):
            out = args.output / sub / f"{name}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(picture).save(out)
        written += 1
    print(f"seg-infer: wrote {written} predictions to {args.output} (masks/, color/, overlay/)")
    if failures:
        print(
            f"seg-infer: {len(failures)} input(s) failed:\n  " + "\n  ".join(failures),
            file=sys.stderr,
        )
        return EXIT_DATA
    return 0


def _plain_name(path: Path, inputs: Sequence[str]) -> str:
    """The output name ``path`` would get without collisions (for reporting renames)."""
    for item in inputs:
        base = Path(item)
        if base.is_dir() and base in path.parents:
            return path.relative_to(base).with_suffix("").as_posix()
    return path.stem


def cli(argv: Sequence[str] | None = None) -> None:
    """Console entry point ``seg-infer`` (exit codes: :mod:`seg_trainer.errors`)."""
    args = _parser().parse_args(argv)
    raise SystemExit(report_errors("seg-infer", lambda: main(args), debug=args.debug))


if __name__ == "__main__":
    cli()
