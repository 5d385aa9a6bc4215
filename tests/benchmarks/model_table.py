"""The seg-heads README model tables: parameters and FLOPs of each model at given sizes.

Run directly (never run by CI)::

    python tests/benchmarks/model_table.py --table classic --size 512
    python tests/benchmarks/model_table.py --table realtime --size 1024x2048
    python tests/benchmarks/model_table.py --table mask2former --size 1024x2048 512x512 640x640

Prints a Markdown table. ``classic``: the ADE20K models (150 classes); ``realtime``: the
real-time family at Cityscapes' 19 classes, built as mmseg's configs build them (head
widths included); ``mask2former``: Mask2Former at ADE20K's 150 classes (the size its
published parameter counts are for); ``--only LABEL ...`` keeps some rows, ``--num-classes``
overrides the table's class count.

Columns:

* ``params``: every parameter of the model as listed (auxiliary FCN heads where the row
  asks for one, and training-only branches such as BiSeNetV2's boosters or PIDNet's P/D
  heads);
* ``inference params``: the parameters that the eval-mode forward of the model built
  without the auxiliary FCN head actually uses (``seg_trainer.bench.inference_cost``
  traces which parameters reach a torch function), i.e. what the papers count for
  real-time models, whose training-only heads do not run at inference;
* ``GFLOPs (2/MAC)`` and ``GMACs`` at each size: ``torch.utils.flop_counter.FlopCounterMode``
  on that eval forward (batch 1, no auxiliary FCN head), which counts convolutions, matmuls
  and attention, not element-wise ops, norms, activations or resizes, and counts a
  multiply-add as 2 FLOPs. Papers (and mmseg's ``get_flops``, fvcore) count it as 1 and call
  that FLOPs, so the GMACs columns are the ones to compare with the published figures.

Everything is counted on the ``meta`` device (no memory, no compute: seconds for every
size); a model that cannot run there is counted on the CPU (the last column says so).
``FlopCounterMode`` gives the same count on meta as on a real CPU forward
(``apps/trainer/tests/test_bench.py``).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from seg_heads import create_model
from seg_trainer.bench import inference_cost

Row = tuple[str, dict[str, Any], str, str]  # label, create_model kwargs, published, source

CLASSIC: list[Row] = [
    ("PSPNet R50-D8", dict(name="pspnet", backbone="resnet50_v1c", aux=True), "", ""),
    ("DeepLabV3 R50-D8", dict(name="deeplabv3", backbone="resnet50_v1c", aux=True), "", ""),
    ("DeepLabV3+ R50-D8", dict(name="deeplabv3plus", backbone="resnet50_v1c", aux=True), "", ""),
    ("DenseASPP R50 (OS8)", dict(name="denseaspp", backbone="resnet50_v1c"), "", ""),
    ("FCN R50-D8", dict(name="fcn", backbone="resnet50_v1c", aux=True), "", ""),
    ("UPerNet R50", dict(name="upernet", backbone="resnet50_v1c", aux=True), "", ""),
    ("Semantic FPN R50", dict(name="fpn", backbone="resnet50_v1c"), "", ""),
    (
        "SegFormer MiT-B0",
        dict(name="segformer", backbone="mit_b0"),
        "3.8M params, 8.4 GFLOPs at 512x512",
        "SegFormer paper, Table 1 (ADE20K)",
    ),
    (
        "SegFormer MiT-B5 (768-ch head)",
        dict(name="segformer", backbone="mit_b5", head_kwargs={"channels": 768}),
        "84.7M params, 183.3 GFLOPs at 640x640",
        "SegFormer paper, Table 1 (ADE20K)",
    ),
    ("OCRNet HRNetV2-W18", dict(name="ocrnet", backbone="hrnet_w18"), "", ""),
    ("OCRNet HRNetV2-W48", dict(name="ocrnet", backbone="hrnet_w48"), "", ""),
    (
        "UPerNet ConvNeXt-T",
        dict(name="upernet", backbone="timm:convnext_tiny", aux=True),
        "60M params, 939 GFLOPs at 512x2048",
        "ConvNeXt paper, Table 3 (ADE20K)",
    ),
    (
        "UPerNet Swin-T",
        dict(name="upernet", backbone="timm:swin_tiny_patch4_window7_224", aux=True),
        "60M params, 945 GFLOPs at 512x2048",
        "Swin paper, Table 3 (ADE20K)",
    ),
]

_DDR = "DDRNet paper, Cityscapes comparison table (full resolution)"
_PID = "PIDNet paper, Cityscapes comparison table (full resolution)"
REALTIME: list[Row] = [
    (
        "LR-ASPP MobileNetV3-Large (torchvision, OS16)",
        dict(name="lraspp", backbone="mobilenet_v3_large"),
        "",
        "= torchvision `lraspp_mobilenet_v3_large` (3,221,538 params at 21 classes)",
    ),
    (
        "LR-ASPP MobileNetV3-Large (mmseg `lraspp_m-v3-d8`, OS8)",
        dict(
            name="lraspp",
            backbone="mobilenet_v3_large",
            output_stride=8,
            backbone_kwargs={"variant": "mmseg"},
            head_kwargs={"variant": "mmseg"},
        ),
        "",
        "",
    ),
    (
        "BiSeNetV2",
        dict(name="bisenetv2", backbone="bisenetv2"),
        "21.15 GFLOPs at 512x1024 (recalled, not re-checked)",
        "BiSeNetV2 paper, Cityscapes comparison table",
    ),
    (
        "Fast-SCNN",
        dict(name="fast_scnn", backbone="fast_scnn"),
        "1.11M params",
        "Fast-SCNN paper (Cityscapes)",
    ),
    ("STDC1 (STDC1-Seg)", dict(name="stdc", backbone="stdc1"), "", ""),
    ("STDC2 (STDC2-Seg)", dict(name="stdc", backbone="stdc2"), "", ""),
    (
        "DDRNet-23-slim",
        dict(name="ddrnet", backbone="ddrnet_23_slim", head_kwargs={"channels": 64}),
        "5.7M params, 36.3 GFLOPs at 1024x2048",
        _DDR,
    ),
    (
        "DDRNet-23",
        dict(name="ddrnet", backbone="ddrnet_23", head_kwargs={"channels": 128}),
        "20.1M params, 143.1 GFLOPs at 1024x2048",
        _DDR,
    ),
    (
        "PIDNet-S",
        dict(name="pidnet", backbone="pidnet_s", head_kwargs={"channels": 128}),
        "7.6M params, 47.6 GFLOPs at 1024x2048",
        _PID,
    ),
    (
        "PIDNet-M",
        dict(name="pidnet", backbone="pidnet_m", head_kwargs={"channels": 128}),
        "34.4M params, 197.4 GFLOPs at 1024x2048",
        _PID,
    ),
    (
        "PIDNet-L",
        dict(name="pidnet", backbone="pidnet_l", head_kwargs={"channels": 256}),
        "36.9M params, 275.8 GFLOPs at 1024x2048",
        _PID,
    ),
]

_M2F = "Mask2Former paper (ADE20K semantic; FLOPs recalled, see the README)"
_SWIN = {"out_norm": True}
MASK2FORMER: list[Row] = [
    (
        "Mask2Former R50",
        dict(name="mask2former", backbone="resnet50"),
        "44M params, 71G FLOPs at 512x512",
        _M2F,
    ),
    ("Mask2Former R101", dict(name="mask2former", backbone="resnet101"), "63M params", _M2F),
    (
        "Mask2Former Swin-T",
        dict(
            name="mask2former",
            backbone="timm:swin_tiny_patch4_window7_224",
            backbone_kwargs=_SWIN,
        ),
        "47M params, 74G FLOPs at 512x512",
        _M2F,
    ),
    (
        "Mask2Former Swin-S",
        dict(
            name="mask2former",
            backbone="timm:swin_small_patch4_window7_224",
            backbone_kwargs=_SWIN,
        ),
        "69M params, 98G FLOPs at 512x512",
        _M2F,
    ),
    (
        "Mask2Former Swin-B (window 12)",
        dict(
            name="mask2former",
            backbone="timm:swin_base_patch4_window12_384",
            backbone_kwargs=_SWIN,
        ),
        "107M params, 223G FLOPs at 640x640",
        _M2F,
    ),
    (
        "Mask2Former Swin-L (window 12)",
        dict(
            name="mask2former",
            backbone="timm:swin_large_patch4_window12_384",
            backbone_kwargs=_SWIN,
        ),
        "403G FLOPs at 640x640",
        _M2F,
    ),
]

TABLES: dict[str, tuple[list[Row], int]] = {
    "classic": (CLASSIC, 150),
    "realtime": (REALTIME, 19),
    "mask2former": (MASK2FORMER, 150),
}


def count(
    kwargs: dict[str, Any], num_classes: int, sizes: list[tuple[int, int]]
) -> tuple[int, int, list[int | str], str]:
    """(all parameters, inference parameters, FLOPs per size, device counted on).

    A size the model refuses (e.g. mmseg's LR-ASPP below 392 px) gives the error's first
    words instead of a count.
    """
    with torch.device("meta"):
        params = sum(
            p.numel() for p in create_model(num_classes=num_classes, **kwargs).parameters()
        )
    deployed = {**kwargs, "aux": False}
    for device in ("meta", "cpu"):
        try:
            used, flops = 0, []
            for size in sizes:
                with torch.device(device):
                    model = create_model(num_classes=num_classes, **deployed)
                try:
                    used, f = inference_cost(model, size)
                except ValueError as e:
                    flops.append(f"refused: {str(e).splitlines()[0][:60]}")
                    continue
                flops.append(f)
            return params, used, flops, device
        except (NotImplementedError, RuntimeError):
            if device == "cpu":
                raise
    raise AssertionError("unreachable")


def _size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w or h)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", choices=list(TABLES), default="classic")
    parser.add_argument(
        "--size", nargs="+", default=["512"], metavar="HxW", help="one or more: 512, 1024x2048"
    )
    parser.add_argument("--num-classes", type=int, default=None, help="default: the table's")
    parser.add_argument("--only", nargs="*", default=None, help="row labels to keep")
    args = parser.parse_args(argv)
    rows, num_classes = TABLES[args.table]
    num_classes = args.num_classes or num_classes
    sizes = [_size(s) for s in args.size]
    at = [f"{h}x{w}" for h, w in sizes]
    flop_cols = [f"GFLOPs (2/MAC) at {a} | GMACs at {a}" for a in at]
    print(f"| model | params | inference params | {' | '.join(flop_cols)} | published | source |")
    print("|---|---|---|" + "---|---|" * len(sizes) + "---|---|")
    for label, kwargs, paper, source in rows:
        if args.only and label not in args.only:
            continue
        try:
            params, used, flops, device = count(kwargs, num_classes, sizes)
        except (KeyError, ValueError, ImportError) as e:  # a family not installed or registered
            dashes = " | ".join(["-"] * (2 + 2 * len(sizes)))
            print(f"| {label} | {dashes} | {paper} | not built: {str(e).splitlines()[0][:80]} |")
            continue
        cells = " | ".join(
            f"{f / 1e9:.1f} | {f / 2e9:.1f}" if isinstance(f, int) else f"- | {f}" for f in flops
        )
        note = "" if device == "meta" else " (counted on the CPU)"
        print(
            f"| {label} | {params / 1e6:.2f}M | {used / 1e6:.2f}M | {cells} | {paper} "
            f"| {source}{note} |"
        )
    print(f"\n{num_classes} classes; FLOPs of the eval forward without auxiliary FCN heads.")


if __name__ == "__main__":
    main()
