"""``seg-export``: a checkpoint (or a config) to ONNX or a torch.export program; BN folding, int8.

    seg-export --checkpoint work_dirs/run/checkpoints/best.pth --format onnx --output model.onnx
    seg-export --checkpoint best.pth --format torch-export --output model.pt2 --size 512 512
    seg-export --checkpoint best.pth --format onnx --output model_int8.onnx \\
        --int8 --calib-data ../data/camvid/train --calib-images 32

The model is built from the checkpoint's stored config (``--config`` overrides it, ``--set``
edits it) and loaded strictly, as ``seg-eval`` does (``--config`` alone exports a randomly
initialised model). The file maps the normalised ``N x 3 x H x W`` image (what
``data.val_transforms`` produce) to the ``out`` logits, with dynamic batch, height and width
(``--no-dynamic`` fixes ``1 x 3 x H x W``). Exports are checked against PyTorch on two other
shapes (max abs difference <= 1e-4, printed; see ``seg_heads.export``).

ONNX files carry in their metadata the class names and palette of the dataset, the
``Normalize`` mean/std and colour order, and the whole resolved config
(``seg_trainer.config``), so that ``seg-infer``/``seg-eval --backend onnxruntime|openvino``
need nothing else.

``--int8``: post-training static quantisation with onnxruntime (QDQ, per-channel int8
weights, uint8 activations, MinMax calibration) on ``--calib-images`` images of
``--calib-data`` (a folder of images, e.g. the training split; evenly spaced over the sorted
files), prepared with ``data.val_transforms``. The int8 file is compared with the fp32 one
on the calibration images (argmax agreement and max logit difference, printed).

Errors are one line and an exit code (:mod:`seg_trainer.errors`; ``--debug`` shows the
traceback): 2 a bad config or option (or a missing file named on the command line), 3 a
corrupt or unfitting checkpoint, 7 the output cannot be written, 9 onnx / onnxruntime not
installed (``pip install 'seg-trainer[deploy]'``), 10 the model cannot be exported or its
export does not reproduce PyTorch (the message names the op).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["cli", "main", "quantize_int8"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seg-export",
        description="Export a PKUSeg checkpoint to ONNX or torch.export (.pt2) for deployment.",
    )
    p.add_argument("--checkpoint", help="checkpoint (.pth) or seg-convert .safetensors")
    p.add_argument("--config", help="YAML config (default: the one stored in the checkpoint)")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    p.add_argument("--format", required=True, choices=["onnx", "torch-export"])
    p.add_argument("--output", required=True, type=Path, help="the .onnx / .pt2 file to write")
    p.add_argument(
        "--dynamic",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="dynamic batch, height and width (default); --no-dynamic: 1 x 3 x H x W",
    )
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--exporter", default="auto", choices=["auto", "legacy", "dynamo"])
    p.add_argument("--fold-bn", action="store_true", help="fold BatchNorm into the convs first")
    p.add_argument(
        "--size",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        help="example input size (default: evaluation.crop_size, else 512 512)",
    )
    p.add_argument("--int8", action="store_true", help="ONNX only: static int8 quantisation")
    p.add_argument("--calib-data", type=Path, help="--int8: folder of calibration images")
    p.add_argument("--calib-images", type=int, default=32, help="--int8: how many (32)")
    p.add_argument("--no-validate", action="store_true", help="skip the check against PyTorch")
    p.add_argument("--atol", type=float, default=1e-4, help="validation tolerance (1e-4)")
    p.add_argument("--debug", action="store_true", help="show tracebacks of reported errors")
    return p


def _config(args: argparse.Namespace, checkpoint: dict[str, Any] | None) -> Any:
    from seg_trainer.config import ConfigError, apply_overrides, config_from_dict, load_config

    if args.config:
        return load_config(args.config, list(args.set))
    stored = checkpoint.get("config") if checkpoint else None
    if not isinstance(stored, dict):
        raise ConfigError(f"{args.checkpoint}: the checkpoint carries no config; pass --config")
    data = apply_overrides(json.loads(json.dumps(stored)), list(args.set))
    return config_from_dict(data, source=f"{args.checkpoint} (stored config)")


def _input_norm(cfg: Any) -> dict[str, Any] | None:
    from seg_trainer.build import find_normalize

    found = find_normalize(cfg)
    if found is None:
        return None
    mean, std, to_bgr = found
    return {"mean": mean, "std": std, "color_order": "BGR" if to_bgr else "RGB"}


def calibration_images(cfg: Any, folder: Path, count: int) -> list[np.ndarray]:
    """``count`` images of ``folder`` (evenly spaced), through ``data.val_transforms``."""
    from seg_data import build_transforms, read_image
    from seg_trainer.infer import find_images
    from seg_trainer.inference import prepare_image

    if count < 1:
        raise ValueError(f"--calib-images must be >= 1, got {count}")
    found = find_images([folder])
    picks = np.linspace(0, len(found) - 1, num=min(count, len(found))).round().astype(int)
    transforms = build_transforms(cfg.data.val_transforms) if cfg.data.val_transforms else None
    images = []
    for i in sorted(set(picks.tolist())):
        tensor, _ = prepare_image(read_image(found[i][0]), transforms)
        images.append(tensor[None].numpy())
    return images


def quantize_int8(fp32: Path, output: Path, images: Sequence[np.ndarray]) -> None:
    """onnxruntime static quantisation of ``fp32`` to ``output`` calibrated on ``images``.

    QDQ format, per-channel symmetric int8 weights, uint8 activations (the fast pair on x86
    VNNI/AMX), MinMax ranges; ``quant_pre_process`` (shape inference, graph optimisation)
    first when it succeeds on the dynamic graph. The fp32 file's metadata is copied over.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(images)

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self.items, None)
            return None if item is None else {"input": item}

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "pre.onnx"
        try:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            quant_pre_process(str(fp32), str(source), skip_symbolic_shape=True)
        except Exception:  # optional step: quantise the file as exported
            source = fp32
        quantize_static(
            str(source),
            str(output),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    meta = onnx.load(str(fp32), load_external_data=False).metadata_props
    quant = onnx.load(str(output))
    del quant.metadata_props[:]
    for prop in meta:
        quant.metadata_props.add(key=prop.key, value=prop.value)
    quant.metadata_props.add(key="quantization", value=json.dumps("int8 static QDQ"))
    onnx.save(quant, str(output))


def _compare_int8(fp32: Path, int8: Path, images: Sequence[np.ndarray]) -> str:
    from seg_trainer.backends import OnnxRuntimeModel

    a, b = OnnxRuntimeModel(fp32), OnnxRuntimeModel(int8)
    agree, total, worst = 0, 0, 0.0
    for img in images[:8]:
        x = torch.from_numpy(img)
        la, lb = a(x), b(x)
        agree += int((la.argmax(1) == lb.argmax(1)).sum())
        total += la[:, 0].numel()
        worst = max(worst, (la - lb).abs().max().item())
    return (
        f"int8 vs fp32 on {min(len(images), 8)} calibration images: "
        f"{100.0 * agree / max(total, 1):.2f}% of pixels keep their class, max |logit diff| "
        f"{worst:.3g}"
    )


def _require(*modules: str) -> None:
    """Raise ``MissingDependency`` naming the extra when one of ``modules`` is missing."""
    import importlib.util

    from seg_trainer.errors import MissingDependency

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependency(
            f"ONNX export needs {', '.join(repr(m) for m in missing)}: "
            "pip install 'seg-trainer[deploy]'"
        )


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.checkpoint and not args.config:
        parser.error("pass --checkpoint CKPT (or --config CONFIG.yaml for random weights)")
    if args.int8 and (args.format != "onnx" or args.calib_data is None):
        parser.error("--int8 needs --format onnx and --calib-data DIR (calibration images)")
    if args.size is not None and min(args.size) < 2:
        parser.error(f"--size H W must be at least 2 x 2, got {args.size[0]} {args.size[1]}")
    if args.int8 and args.calib_images < 1:
        parser.error(f"--calib-images must be >= 1, got {args.calib_images}")


def main(argv: Sequence[str] | argparse.Namespace | None = None) -> int:
    """Run ``seg-export``; returns the exit status.

    Documented errors (:mod:`seg_trainer.errors`) are raised; :func:`cli` reports them.
    """
    from seg_heads.export import ExportError, fold_bn, to_onnx, to_torch_export
    from seg_trainer.build import build_model
    from seg_trainer.checkpoint import load_checkpoint
    from seg_trainer.errors import StorageError
    from seg_trainer.evaluate import load_model
    from seg_trainer.inference import palette_and_classes

    if isinstance(argv, argparse.Namespace):
        args = argv
    else:
        parser = _parser()
        args = parser.parse_args(argv)
        _check_args(parser, args)
    if args.format == "onnx":
        _require("onnx", *(() if args.no_validate and not args.int8 else ("onnxruntime",)))
    checkpoint = load_checkpoint(args.checkpoint) if args.checkpoint else None
    cfg = _config(args, checkpoint)
    if checkpoint is None:
        print(
            "seg-export: no --checkpoint: exporting randomly initialised weights", file=sys.stderr
        )
        model = build_model(cfg)
    else:
        model = load_model(cfg, checkpoint, args.checkpoint)
    model.eval()
    if args.fold_bn:
        model = fold_bn(model)
        print(f"seg-export: folded {model.folded_bn} BatchNorm layers into their convs")
    palette, classes = palette_and_classes(cfg)
    size = args.size or cfg.evaluation.crop_size or (512, 512)
    common: dict[str, Any] = {
        "size": tuple(size),
        "dynamic": args.dynamic,
        "class_names": classes,
        "palette": palette,
        "input_norm": _input_norm(cfg),
        "metadata": {
            "seg_trainer.config": cfg.to_dict(),
            "checkpoint": str(args.checkpoint) if args.checkpoint else None,
            "iteration": checkpoint.get("iteration") if checkpoint else None,
            "fold_bn": bool(args.fold_bn),
        },
        "validate": not args.no_validate,
        "atol": args.atol,
    }
    try:
        args.output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"--output {args.output}: cannot create its folder: {exc}") from exc
    if args.format == "torch-export":
        report = to_torch_export(model, args.output, **common)
        print(f"seg-export: wrote {report}")
        return 0
    if not args.int8:
        report = to_onnx(model, args.output, opset=args.opset, exporter=args.exporter, **common)
        print(f"seg-export: wrote {report}")
        return 0
    images = calibration_images(cfg, args.calib_data, args.calib_images)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        report = to_onnx(model, fp32, opset=args.opset, exporter=args.exporter, **common)
        print(f"seg-export: fp32 graph {report}")
        try:
            quantize_int8(fp32, args.output, images)
        except Exception as exc:  # onnxruntime's quantiser raises anything
            raise ExportError(
                f"int8 quantisation of the fp32 graph failed: {type(exc).__name__}: {exc}"
            ) from exc
        print(f"seg-export: wrote {args.output} (int8, calibrated on {len(images)} images)")
        print(f"seg-export: {_compare_int8(fp32, args.output, images)}")
    return 0


def cli(argv: Sequence[str] | None = None) -> None:
    """Console entry point ``seg-export`` (exit codes: :mod:`seg_trainer.errors`)."""
    from seg_trainer.errors import report_errors

    parser = _parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    raise SystemExit(report_errors("seg-export", lambda: main(args), debug=args.debug))


if __name__ == "__main__":
    cli()
