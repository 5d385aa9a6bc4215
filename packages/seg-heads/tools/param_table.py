"""Print the parameter-count table of the seg-heads README (run: python tools/param_table.py)."""

from __future__ import annotations

import torch

from seg_heads import create_model

ROWS = [
    ("pspnet", {}),
    ("deeplabv3", {}),
    ("deeplabv3", {"variant": "torchvision"}),
    ("denseaspp", {}),
]


def millions(model: torch.nn.Module, skip_aux: bool = False) -> str:
    n = sum(
        p.numel()
        for name, p in model.named_parameters()
        if not (skip_aux and name.startswith("aux_head."))
    )
    return f"{n / 1e6:.2f}M"


def main() -> None:
    print("| model | backbone | 19 classes | 19 classes + aux | 150 classes | 150 classes + aux |")
    print("|---|---|---|---|---|---|")
    for depth in (50, 101):
        for name, head_kwargs in ROWS:
            label = name + (" (torchvision)" if head_kwargs else "")
            backbone = f"resnet{depth}_deep"
            cells = []
            for k in (19, 150):
                with torch.device("meta"):
                    m = create_model(
                        name,
                        backbone=backbone,
                        num_classes=k,
                        aux=True,
                        head_kwargs=head_kwargs,
                    )
                cells += [millions(m, skip_aux=True), millions(m)]
            print(f"| {label} | {backbone}, OS8 | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
