"""HuggingFace ``save_pretrained`` directories -> PKUSeg models with equal logits.

```python
from seg_heads.convert import from_hf
model = from_hf("segformer-b0-finetuned-ade-512-512/")   # config.json + model.safetensors
model.class_names                                        # from config.json's id2label
```

Reading a directory needs neither ``transformers`` nor network access: ``config.json``
is plain JSON and the weights are ``model.safetensors`` (preferred) or
``pytorch_model.bin`` read with ``torch.load(weights_only=True)``.

:data:`HF_ARCHS` maps the ``architectures[0]`` of ``config.json`` (e.g.
``"SegformerForSemanticSegmentation"``) to the function that builds our twin from the
config and the state dict; a family adds itself with :func:`register_hf_arch`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from ..model import IMAGENET_RGB, SegmentationModel
from ._common import load_checkpoint

__all__ = ["HF_ARCHS", "HFConverter", "from_hf", "read_hf_directory", "register_hf_arch"]

HFConverter = Callable[[Mapping[str, Any], dict[str, Tensor], str], SegmentationModel]
"""``(config.json as a dict, state dict, where) -> SegmentationModel`` with weights loaded."""

HF_ARCHS: dict[str, HFConverter] = {}
"""``config.json`` ``architectures[0]`` names that :func:`from_hf` converts."""


def register_hf_arch(architecture: str) -> Callable[[HFConverter], HFConverter]:
    """Decorator: register the converter of the transformers class ``architecture``."""

    def decorator(fn: HFConverter) -> HFConverter:
        if architecture in HF_ARCHS:
            raise ValueError(f"HF architecture {architecture!r} is already registered")
        HF_ARCHS[architecture] = fn
        return fn

    return decorator


def read_hf_directory(
    directory: str | os.PathLike[str],
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(config, state_dict)`` of a ``save_pretrained`` directory, without transformers."""
    root = Path(directory)
    config_path = root / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{str(root)!r} is not a HuggingFace save_pretrained directory: no config.json"
        )
    config = json.loads(config_path.read_text(encoding="utf-8"))
    safetensors = root / "model.safetensors"
    bin_file = root / "pytorch_model.bin"
    if safetensors.is_file() or bin_file.is_file():  # bin: torch.load(weights_only=True)
        sd = load_checkpoint(safetensors if safetensors.is_file() else bin_file)
    else:
        sharded = sorted(p.name for p in root.glob("*.safetensors.index.json"))
        hint = f" (sharded checkpoints {sharded} are not supported)" if sharded else ""
        raise FileNotFoundError(f"{str(root)!r}: no model.safetensors or pytorch_model.bin{hint}")
    return config, dict(sd)


def class_names(config: Mapping[str, Any]) -> list[str] | None:
    """``id2label`` as a list ordered by class index, or ``None`` when absent."""
    id2label = config.get("id2label")
    if not id2label:
        return None
    return [str(id2label[k]) for k in sorted(id2label, key=int)]


def input_norm(directory: Path) -> dict[str, Any]:
    """The image processor's mean/std (``preprocessor_config.json``), else ImageNet RGB."""
    pre = directory / "preprocessor_config.json"
    if pre.is_file():
        cfg = json.loads(pre.read_text(encoding="utf-8"))
        mean, std = cfg.get("image_mean"), cfg.get("image_std")
        if mean and std:
            scale = 255.0 if max(mean) <= 1.0 else 1.0
            return {
                "mean": [m * scale for m in mean],
                "std": [s * scale for s in std],
                "color_order": "RGB",
            }
    return dict(IMAGENET_RGB)


def from_hf(directory: str | os.PathLike[str]) -> SegmentationModel:
    """Build the PKUSeg twin of a transformers segmentation model saved with ``save_pretrained``.

    The converted model's ``"out"`` equals transformers' logits resized to the input
    (bilinear, ``align_corners=False``); ``model.class_names`` is ``id2label`` and
    ``model.input_norm`` the preprocessor's mean/std (ImageNet when absent).
    """
    root = Path(directory)
    config, sd = read_hf_directory(root)
    archs = config.get("architectures") or []
    if not archs or archs[0] not in HF_ARCHS:
        raise KeyError(
            f"{str(root / 'config.json')!r}: architectures={archs} is not convertible; "
            f"from_hf converts {sorted(HF_ARCHS)}"
        )
    model = HF_ARCHS[archs[0]](config, sd, f"from_hf({str(root)!r}, {archs[0]})")
    model.class_names = class_names(config)
    model.input_norm = input_norm(root)
    return model
