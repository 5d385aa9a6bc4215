"""The seg-heads README model table: parameters and FLOPs of each model at 512x512.

Run directly (never run by CI): ``python tests/benchmarks/model_table.py [--size 512]
[--only NAME ...]``. Prints a Markdown table. Parameters are counted on the meta device
(every model in the table, at its full size); FLOPs are counted with
``torch.utils.flop_counter.FlopCounterMode`` on one real forward in eval mode (batch 1,
fp32, CPU), which counts convolutions, matmuls and attention, not element-wise ops,
norms or resizes. ``FlopCounterMode`` counts a multiply-add as 2 FLOPs; papers (and
mmseg's ``get_flops``, fvcore) count it as 1 and call that FLOPs, so the "GMACs" column
is the one to compare with the papers' figures.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from seg_heads import create_model

# (label, create_model kwargs, num_classes, paper/zoo figure, source)
ROWS: list[tuple[str, dict, str, str]] = [
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


def count(kwargs: dict, num_classes: int, size: int) -> tuple[float, float]:
    """(parameters, FLOPs as FlopCounterMode counts them) of one model."""
    with torch.device("meta"):
        model = create_model(num_classes=num_classes, **kwargs)
    params = sum(p.numel() for p in model.parameters())
    model = create_model(num_classes=num_classes, **kwargs).eval()
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.randn(1, 3, size, size))
    return float(params), float(counter.get_total_flops())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--num-classes", type=int, default=150)
    parser.add_argument("--only", nargs="*", default=None, help="row labels to keep")
    args = parser.parse_args(argv)
    print(
        f"| model | params | GFLOPs (2/MAC) | GMACs at {args.size}x{args.size} | published | source |"
    )
    print("|---|---|---|---|---|---|")
    for label, kwargs, paper, source in ROWS:
        if args.only and label not in args.only:
            continue
        try:
            params, flops = count(kwargs, args.num_classes, args.size)
        except (KeyError, ValueError, ImportError) as e:  # a family not installed or registered
            print(f"| {label} | - | - | - | {paper} | not built: {str(e).splitlines()[0][:80]} |")
            continue
        print(
            f"| {label} | {params / 1e6:.2f}M | {flops / 1e9:.1f} | {flops / 2e9:.1f} "
            f"| {paper} | {source} |"
        )


if __name__ == "__main__":
    main()
