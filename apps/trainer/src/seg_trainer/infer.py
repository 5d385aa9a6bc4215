"""``seg-infer``: segment arbitrary images with a checkpoint; write masks, colours and overlays.

    seg-infer --checkpoint runs/demo/checkpoints/best.pth --input photos/ --output preds/
    seg-infer --checkpoint weights/dlv3.safetensors --input a.jpg b.png --output preds/ --mode slide

For each input image ``<name>`` it writes

* ``<output>/masks/<name>.png``: class indices (8-bit grey PNG, values 0..K-1);
* ``<output>/color/<name>.png``: the mask in the dataset's palette;
* ``<output>/overlay/<name>.png``: the image blended with the palette colours (``--alpha``).

The checkpoint carries its resolved config (``--config`` overrides it). Images are
prepared with the config's ``data.val_transforms`` (e.g. ``Resize``, ``Normalize``,
``Pad``); padding added by them is cut off and the prediction is resized back to
the image's own size. Inference uses ``evaluation.mode`` (``--mode`` overrides) with
its crop, stride, scales and flip. The palette and class names come from the
dataset when it can be opened (always for ``synthetic``), else the VOC colour map.

Unreadable inputs are reported with the reason, the remaining images are still
processed, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from seg_trainer.inference import MODES, predict_logits
from seg_trainer.visualize import colorize, overlay

__all__ = ["IMAGE_SUFFIXES", "cli", "find_images", "voc_palette"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def voc_palette(num_classes: int) -> np.ndarray:
    """The Pascal VOC colour map (class bits interleaved into R, G, B) for ``num_classes``."""
    pal = np.zeros((num_classes, 3), dtype=np.uint8)
    for i in range(num_classes):
        c, rgb = i, [0, 0, 0]
        for j in range(8):
            for ch in range(3):
                rgb[ch] |= ((c >> ch) & 1) << (7 - j)
            c >>= 3
        pal[i] = rgb
    return pal


def find_images(inputs: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """``(path, output name)`` for every image: files as given, folders searched recursively.

    Output names keep the sub-folder of images found in a folder (``a/b.jpg`` -> ``a/b``) and
    get a numeric suffix when two inputs would write the same name.

    Raises:
        FileNotFoundError: an input does not exist, or no image was found.
    """
    found: list[tuple[Path, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            found += [(p, p.relative_to(path).with_suffix("").as_posix()) for p in files]
        elif path.is_file():
            found.append((path, path.stem))
        else:
            raise FileNotFoundError(f"--input {item}: no such file or folder")
    if not found:
        raise FileNotFoundError(
            f"no images found in {', '.join(map(str, inputs))} (looked for {', '.join(IMAGE_SUFFIXES)})"
        )
    seen: dict[str, int] = {}
    named = []
    for path, name in found:
        n = seen.get(name, 0)
        seen[name] = n + 1
        named.append((path, name if n == 0 else f"{name}_{n}"))
    return named


def _read_image(path: Path) -> np.ndarray:
    """RGB uint8 ``H x W x 3``; raises ``ValueError`` naming the file when it cannot be decoded."""
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{path}: cannot read this image ({exc})") from None


def _prepare(image: np.ndarray, transforms: Any) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Apply the val transforms; return the ``3 x H x W`` tensor and the box of real pixels.

    A dummy label travels with the image: transforms that pad fill it with 255, so its
    non-ignored area is where the image is. When the transforms leave the label at its
    size (``resize_label=False``) the whole transformed image counts.
    """
    h, w = image.shape[:2]
    sample = {"image": image, "label": np.zeros((h, w), dtype=np.uint8)}
    if transforms is not None:
        sample = transforms(sample, np.random.default_rng(0))
    img = np.ascontiguousarray(sample["image"], dtype=np.float32)
    tensor = torch.from_numpy(img).permute(2, 0, 1).contiguous()
    th, tw = img.shape[:2]
    label = np.asarray(sample["label"])
    box = (0, th, 0, tw)
    if label.shape == (th, tw):
        valid = label != 255
        rows, cols = np.flatnonzero(valid.any(1)), np.flatnonzero(valid.any(0))
        if rows.size and cols.size:
            box = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
    return tensor, box


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seg-infer",
        description="Segment images with a PKUSeg checkpoint: index masks, colour masks, overlays.",
    )
    p.add_argument(
        "--checkpoint", required=True, help="checkpoint (.pth) or seg-convert .safetensors"
    )
    p.add_argument("--input", required=True, nargs="+", help="image files and/or folders")
    p.add_argument("--output", required=True, type=Path, help="output folder")
    p.add_argument("--config", help="YAML config (default: the one stored in the checkpoint)")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    p.add_argument("--mode", choices=MODES, help="override evaluation.mode")
    p.add_argument("--device", default="auto", help="auto (CUDA when available) | cpu | cuda")
    p.add_argument("--cpu", action="store_true", help="same as --device cpu")
    p.add_argument("--alpha", type=float, default=0.5, help="colour weight of the overlays")
    return p


def _palette_and_classes(cfg: Any) -> tuple[np.ndarray, list[str] | None]:
    from seg_trainer.build import build_dataset

    try:
        ds = build_dataset(cfg, "val")
        palette, classes = np.asarray(ds.palette, dtype=np.uint8), list(ds.classes)
    except Exception:
        return voc_palette(cfg.model.num_classes), None
    if len(palette) != cfg.model.num_classes:
        return voc_palette(cfg.model.num_classes), None
    return palette, classes


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``seg-infer``; returns the exit status (0, or 1 when some inputs were unreadable)."""
    from seg_data import build_transforms
    from seg_trainer.checkpoint import load_checkpoint
    from seg_trainer.config import apply_overrides, config_from_dict, load_config
    from seg_trainer.evaluate import load_model

    args = _parser().parse_args(argv)
    images = find_images(args.input)
    checkpoint = load_checkpoint(args.checkpoint)
    overrides = list(args.set) + ([f"evaluation.mode={args.mode}"] if args.mode else [])
    if args.config:
        cfg = load_config(args.config, overrides)
    else:
        stored = checkpoint.get("config")
        if not isinstance(stored, dict):
            raise FileNotFoundError(
                f"{args.checkpoint} carries no config; pass --config CONFIG.yaml"
            )
        data = apply_overrides(json.loads(json.dumps(stored)), overrides)
        cfg = config_from_dict(data, source=f"{args.checkpoint} (stored config)")

    device = torch.device(
        "cpu"
        if args.cpu
        else ("cuda" if torch.cuda.is_available() else "cpu")
        if args.device == "auto"
        else args.device
    )
    model = load_model(cfg, checkpoint, args.checkpoint).to(device).eval()
    transforms = build_transforms(cfg.data.val_transforms) if cfg.data.val_transforms else None
    palette, _ = _palette_and_classes(cfg)
    ev = cfg.evaluation
    for sub in ("masks", "color", "overlay"):
        (args.output / sub).mkdir(parents=True, exist_ok=True)

    failures: list[str] = []
    for path, name in images:
        try:
            image = _read_image(path)
        except ValueError as exc:
            failures.append(str(exc))
            continue
        tensor, (y1, y2, x1, x2) = _prepare(image, transforms)
        logits = predict_logits(
            model,
            tensor[None].to(device),
            mode=ev.mode,
            crop_size=ev.crop_size,
            stride=ev.stride,
            scales=tuple(ev.scales),
            flip=ev.flip,
            num_classes=cfg.model.num_classes,
            align_corners=cfg.model.align_corners,
        )[:, :, y1:y2, x1:x2]
        logits = F.interpolate(
            logits, size=image.shape[:2], mode="bilinear", align_corners=cfg.model.align_corners
        )
        mask = logits.argmax(1)[0].cpu().numpy().astype(np.uint8)
        for sub, picture in (
            ("masks", mask),
            ("color", colorize(mask, palette)),
            ("overlay", overlay(image, mask, palette, alpha=args.alpha)),
        ):
            out = args.output / sub / f"{name}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(picture).save(out)
    done = len(images) - len(failures)
    print(f"seg-infer: wrote {done} predictions to {args.output} (masks/, color/, overlay/)")
    if failures:
        print(
            f"seg-infer: {len(failures)} input(s) could not be read:\n  " + "\n  ".join(failures),
            file=sys.stderr,
        )
        return 1
    return 0


def cli(argv: Sequence[str] | None = None) -> None:
    """Console entry point ``seg-infer``."""
    from seg_trainer.checkpoint import CheckpointError
    from seg_trainer.config import ConfigError

    try:
        status = main(argv)
    except (ConfigError, CheckpointError, FileNotFoundError) as exc:
        print(f"seg-infer: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(status)


if __name__ == "__main__":
    cli()
