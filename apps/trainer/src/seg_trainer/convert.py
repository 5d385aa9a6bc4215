"""``seg-convert``: a torchvision or mmsegmentation checkpoint -> safetensors + a PKUSeg config.

    seg-convert --from torchvision --arch deeplabv3_resnet50 --input deeplabv3.pth \\
        --output weights/deeplabv3_r50_tv.safetensors

writes ``deeplabv3_r50_tv.safetensors`` (the PKUSeg model's state dict) and
``deeplabv3_r50_tv.yaml`` beside it: a complete, valid trainer config whose
``model`` section is ``model.build_config`` (``seg_heads.create_model`` kwargs,
read by ``seg_heads.convert`` from the weights and ``--arch``) and whose
``data.val_transforms`` hold the input normalisation the weights expect
(``model.input_norm``). ``seg-eval --checkpoint OUT.safetensors --set
data.root=...`` then evaluates it, and ``seg-infer --checkpoint OUT.safetensors``
runs it on images. Input files are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from safetensors.torch import save_file
from torch import nn

__all__ = ["DATASET_BY_NUM_CLASSES", "cli", "config_for_model", "convert_checkpoint"]

DATASET_BY_NUM_CLASSES = {19: "cityscapes", 150: "ade20k", 21: "voc", 60: "pascal_context",
                          59: "pascal_context", 11: "camvid"}  # fmt: skip
"""The ``data.dataset`` written when ``--dataset`` is not given (classes of the usual sets)."""


def _plain(value: Any) -> Any:
    """YAML-safe data: tuples to lists, recursively."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_for_model(
    model: nn.Module, *, dataset: str | None = None, output_dir: str = "runs/converted"
) -> dict[str, Any]:
    """A trainer config (plain dict) that rebuilds ``model`` and normalises inputs for it.

    ``model`` must carry ``build_config`` (and ``input_norm``) as every model from
    ``seg_heads.create_model`` / ``seg_heads.convert`` does.
    """
    build = getattr(model, "build_config", None)
    if not isinstance(build, dict):
        raise ValueError(
            "the model has no build_config; build it with seg_heads.create_model/convert"
        )
    build = _plain(build)
    num_classes = int(build["num_classes"])
    if dataset is None:
        dataset = DATASET_BY_NUM_CLASSES.get(num_classes)
        if dataset is None:
            raise ValueError(
                f"cannot guess the dataset of a {num_classes}-class model; pass --dataset NAME "
                "(seg_data.list_datasets())"
            )
    val_transforms = []
    norm = getattr(model, "input_norm", None)
    if norm is not None:
        order = norm.get("color_order", "RGB")
        if order not in ("RGB", "BGR"):
            raise ValueError(f"unknown input_norm color_order {order!r}; expected RGB or BGR")
        step: dict[str, Any] = {"mean": list(norm["mean"]), "std": list(norm["std"])}
        if order == "BGR":  # seg_data's Normalize: mean/std in the output channel order
            step["to_bgr"] = True
        val_transforms.append({"Normalize": step})
    return {
        "output_dir": output_dir,
        "model": build,
        "data": {"dataset": dataset, "val_transforms": val_transforms},
        # Required by the schema. This file is for evaluation and inference; to fine-tune,
        # copy a recipe from apps/trainer/configs.
        "train": {"max_iters": 1},
    }


def convert_checkpoint(
    source: str,
    arch: str,
    input_path: str | Path,
    output_path: str | Path,
    *,
    dataset: str | None = None,
    align_corners: bool | None = None,
) -> tuple[Path, Path]:
    """Convert ``input_path`` and write ``output_path`` (.safetensors) and its ``.yaml``.

    Returns the two paths written.
    """
    from seg_heads.convert import convert

    out = Path(output_path)
    if out.suffix != ".safetensors":
        raise ValueError(f"--output must end with .safetensors; got {out}")
    kwargs: dict[str, Any] = {}
    if align_corners is not None:
        if source != "mmseg":
            raise ValueError(
                "--align-corners applies to --from mmseg only (torchvision uses False)"
            )
        kwargs["align_corners"] = align_corners
    model = convert(str(input_path), source=source, arch=arch, **kwargs)
    config = config_for_model(model, dataset=dataset, output_dir=f"runs/{out.stem}")

    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(
        state,
        str(out),
        metadata={
            "format": "pt",
            "source": source,
            "arch": arch,
            "converted_from": Path(input_path).name,
        },
    )
    yaml_path = out.with_suffix(".yaml")
    header = (
        f"# Written by seg-convert from {Path(input_path).name} ({source} {arch}).\n"
        f"# Weights: {out.name}. model: rebuilds the architecture (seg_heads.create_model kwargs);\n"
        "# data.val_transforms: the input normalisation the weights expect.\n"
        f"# Evaluate: seg-eval --checkpoint {out.name} --set data.root=/path/to/{config['data']['dataset']}\n"
    )
    yaml_path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return out, yaml_path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seg-convert",
        description="Convert a torchvision or mmsegmentation checkpoint to PKUSeg safetensors + YAML.",
    )
    p.add_argument("--from", dest="source", required=True, choices=["torchvision", "mmseg"])
    p.add_argument(
        "--arch",
        required=True,
        help="torchvision: deeplabv3_resnet50|deeplabv3_resnet101|fcn_resnet50|fcn_resnet101; "
        "mmseg: pspnet_r50-d8, deeplabv3_r101-d8, ... (or the full config name)",
    )
    p.add_argument("--input", required=True, type=Path, help="checkpoint file (.pth)")
    p.add_argument("--output", required=True, type=Path, help="OUT.safetensors (OUT.yaml beside)")
    p.add_argument("--dataset", help="data.dataset of the YAML (default: guessed from num_classes)")
    p.add_argument(
        "--align-corners",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mmseg only: the config's align_corners (True in mmseg's 769x769 Cityscapes configs)",
    )
    return p


def cli(argv: Sequence[str] | None = None) -> None:
    """Console entry point ``seg-convert``."""
    args = _parser().parse_args(argv)
    try:
        weights, config = convert_checkpoint(
            args.source,
            args.arch,
            args.input,
            args.output,
            dataset=args.dataset,
            align_corners=args.align_corners,
        )
    except (ValueError, KeyError, TypeError, FileNotFoundError, RuntimeError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"seg-convert: error: {'; '.join(str(msg).splitlines())}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"wrote {weights}\nwrote {config}")


if __name__ == "__main__":
    cli()
