"""Weight import: read a checkpoint, recognise its key layout, map it to ours, load strictly.

Our layout (see the package README): torchvision's for the 7x7 stem
(``conv1``, ``bn1``, ``layerN.M.{conv,bn}K``, ``layerN.M.downsample.{0,1}``) and an
``nn.Sequential`` called ``stem`` for both deep stems (``stem.0`` conv, ``stem.1``
norm, ``stem.3``/``stem.4``, ``stem.6``/``stem.7``), as mmseg's ``ResNetV1c``.

Source layouts recognised (all share torchvision's ``layerN.M.*`` block keys):

=============== ===========================================================
``torchvision`` ``conv1``, ``bn1`` (7x7 stem); also timm/mmseg 7x7 ResNets
``timm``        ``conv1.0/.1/.3/.4/.6`` + ``bn1`` (``resnet50c``/``101c`` deep stem)
``mmseg``       ``stem.0/.1/.3/.4/.6/.7`` (mmseg/mmpretrain ``ResNetV1c``)
``csail``       ``conv1/bn1/conv2/bn2/conv3/bn3`` (CSAIL ``3x3resnet`` stem)
=============== ===========================================================
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = [
    "SOURCES",
    "IncompatibleWeightsError",
    "check_state_dict",
    "convert_state_dict",
    "detect_source",
    "load_pretrained",
    "read_state_dict",
]

Source = Literal["auto", "torchvision", "timm", "mmseg", "csail"]
SOURCES: tuple[str, ...] = ("auto", "torchvision", "timm", "mmseg", "csail")

# classifier weights are ignored by name: ``fc.*`` (torchvision, timm, CSAIL) and
# ``head.fc.*`` (mmpretrain classification checkpoints)
_CLASSIFIER_PREFIXES = ("fc.", "head.fc.")
# wrappers around the state dict in training checkpoints
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
_MAX_LISTED = 50

_TIMM_STEM = {"conv1.0": "stem.0", "conv1.1": "stem.1", "conv1.3": "stem.3",
              "conv1.4": "stem.4", "conv1.6": "stem.6", "bn1": "stem.7"}  # fmt: skip
_CSAIL_STEM = {"conv1": "stem.0", "bn1": "stem.1", "conv2": "stem.3",
               "bn2": "stem.4", "conv3": "stem.6", "bn3": "stem.7"}  # fmt: skip


class IncompatibleWeightsError(ValueError):
    """A state dict does not fit a model: missing, unexpected or mis-shaped keys."""


# ----------------------------------------------------------------------------------------
# reading


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read ``.pth``/``.pt``/``.bin``/``.ckpt`` (``torch.load(weights_only=True)``) or ``.safetensors``.

    Wrappers (``{"state_dict": ...}``, ``{"model": ...}``) are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    if path.suffix not in (".pth", ".pt", ".bin", ".ckpt", ".tar"):
        raise ValueError(
            f"cannot read weights file {str(path)!r}: unknown suffix {path.suffix!r}; "
            "use .pth/.pt (torch.save) or .safetensors"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{str(path)!r} pickles objects other than tensors, which loading with "
            "weights_only=True refuses (PKUSeg never unpickles arbitrary objects). If you trust "
            "the file, re-save only its tensors (the state dict) to a new .pth or "
            ".safetensors file in a trusted environment and load that.\n"
            f"(torch said: {str(e).splitlines()[0]})"
        ) from e
    return _unwrap(obj, where=str(path))


def _unwrap(obj: Any, *, where: str) -> dict[str, Tensor]:
    while isinstance(obj, Mapping):
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            return dict(obj)
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    keys = list(obj)[:10] if isinstance(obj, Mapping) else None
    raise ValueError(
        f"{where}: expected a state dict (str -> Tensor) or one wrapped under "
        f"{list(_WRAPPER_KEYS)}, got {type(obj).__name__}"
        + (f" with keys {keys}" if keys is not None else "")
    )


# ----------------------------------------------------------------------------------------
# layout detection and conversion


def detect_source(state_dict: Mapping[str, Any]) -> str:
    """Name the key layout of a backbone state dict: torchvision, timm, mmseg or csail."""
    keys = set(state_dict)
    if "stem.0.weight" in keys:
        return "mmseg"
    if "conv1.0.weight" in keys:
        return "timm"
    if "conv2.weight" in keys and "conv3.weight" in keys:
        return "csail"
    if "conv1.weight" in keys:
        return "torchvision"
    raise ValueError(
        "cannot recognise the key layout of this state dict (looked for 'stem.0.weight' "
        "(mmseg), 'conv1.0.weight' (timm deep stem), 'conv2.weight' + 'conv3.weight' "
        f"(csail), 'conv1.weight' (torchvision)); first keys: {sorted(keys)[:10]}. "
        "Pass source=... explicitly or strip a prefix first."
    )


def _strip_prefixes(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    for prefix in ("module.", "backbone."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    if any(k.startswith("backbone.") for k in sd):
        others = sorted({k.split(".")[0] for k in sd if not k.startswith("backbone.")})
        raise IncompatibleWeightsError(
            "this looks like a full segmentation checkpoint (keys 'backbone.*' next to "
            f"{others}); load it with seg_heads' converter, or keep the backbone part: "
            "{k[len('backbone.'):]: v for k, v in sd.items() if k.startswith('backbone.')}"
        )
    return sd


def _rename_stem(sd: dict[str, Tensor], table: Mapping[str, str]) -> dict[str, Tensor]:
    out = {}
    for k, v in sd.items():
        module, _, param = k.rpartition(".")
        out[f"{table[module]}.{param}" if module in table else k] = v
    return out


def convert_state_dict(
    state_dict: Mapping[str, Tensor],
    *,
    source: Source = "auto",
    model: nn.Module | None = None,
) -> dict[str, Tensor]:
    """Map a backbone state dict in ``source``'s key layout to ours.

    ``source``: ``"auto"`` (detected from the keys), ``"torchvision"``, ``"timm"``,
    ``"mmseg"`` or ``"csail"``. Classifier weights (``fc.*``, ``head.fc.*``) are
    dropped; a common ``module.`` or ``backbone.`` prefix is stripped. With
    ``model``, the result is checked strictly against it (see :func:`load_pretrained`)
    and ``num_batches_tracked`` buffers are reconciled with the model's.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; valid sources are {list(SOURCES)}")
    sd = {k: v for k, v in state_dict.items() if not k.startswith(_CLASSIFIER_PREFIXES)}
    sd = _strip_prefixes(sd)
    sd = {k: v for k, v in sd.items() if not k.startswith(_CLASSIFIER_PREFIXES)}
    if source == "auto":
        source = detect_source(sd)  # type: ignore[assignment]
    if source == "timm" and "conv1.0.weight" in sd:
        sd = _rename_stem(sd, _TIMM_STEM)
    elif source == "csail":
        sd = _rename_stem(sd, _CSAIL_STEM)
    if model is not None:
        sd = _reconcile_buffers(sd, model.state_dict())
        check_state_dict(model, sd, source=source)
    return sd


def _reconcile_buffers(sd: dict[str, Tensor], model_sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    # num_batches_tracked carries no weights: drop where the model has none (FrozenBatchNorm2d,
    # GroupNorm) and take the model's where the checkpoint has none (old checkpoints)
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked") or k in model_sd}
    for k, v in model_sd.items():
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = v
    return sd


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    more = f", ... ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return f"{len(keys)}: [{shown}{more}]"


def _stem_hint(model: nn.Module, sd: Mapping[str, Tensor]) -> str:
    stem_type = getattr(model, "stem_type", None)
    if stem_type == "deep" and "conv1.weight" in sd and "stem.0.weight" not in sd:
        return (
            "\nhint: the weights have a 7x7 stem (torchvision layout) but the model has a deep "
            "stem; build 'resnetXX' instead of 'resnetXX_v1c'/'resnetXX_deep'."
        )
    if stem_type == "7x7" and "stem.0.weight" in sd:
        return (
            "\nhint: the weights have a deep stem but the model has the 7x7 stem; build "
            "'resnetXX_v1c' (stem width 32) or 'resnetXX_deep' (stem width 64)."
        )
    w = sd.get("stem.0.weight")
    ref = model.state_dict().get("stem.0.weight")
    if w is not None and ref is not None and w.shape[0] != ref.shape[0]:
        return (
            f"\nhint: the weights' deep stem starts with {w.shape[0]} channels, the model's with "
            f"{ref.shape[0]}: 32 is mmseg/timm ResNetV1c ('resnetXX_v1c'), 64 is the CSAIL "
            "3x3-Res stem ('resnetXX_deep')."
        )
    return ""


def check_state_dict(model: nn.Module, sd: Mapping[str, Tensor], *, source: str = "?") -> None:
    """Raise :class:`IncompatibleWeightsError` unless ``sd`` has exactly ``model``'s keys and shapes."""
    model_sd = model.state_dict()
    missing = [k for k in model_sd if k not in sd]
    unexpected = [k for k in sd if k not in model_sd]
    mismatched = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(model_sd[k].shape)}"
        for k in sd
        if k in model_sd and sd[k].shape != model_sd[k].shape
    ]
    if not (missing or unexpected or mismatched):
        return
    parts = [f"weights (source={source!r}) do not fit {type(model).__name__}:"]
    if missing:
        parts.append(f"missing keys {_listing(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {_listing(unexpected)}")
    if mismatched:
        parts.append(f"shape mismatches {_listing(mismatched)}")
    raise IncompatibleWeightsError("\n".join(parts) + _stem_hint(model, sd))


# ----------------------------------------------------------------------------------------
# loading


def load_pretrained(
    model: nn.Module,
    weights: str | os.PathLike[str] | Mapping[str, Any],
    *,
    source: Source = "auto",
) -> nn.Module:
    """Load ``weights`` (a file path or a state dict) into ``model`` strictly and return it.

    Files: ``.pth``/``.pt`` read with ``torch.load(weights_only=True)``, or ``.safetensors``;
    ``state_dict``/``model`` wrappers are unwrapped. ``source="auto"`` detects the key
    layout (torchvision, timm, mmseg, csail); keys are mapped with
    :func:`convert_state_dict`. Classifier weights (``fc.*``) are ignored by name; any
    other missing, unexpected or mis-shaped key raises :class:`IncompatibleWeightsError`
    naming the keys (and both shapes). A backbone with a ``load_pretrained_state_dict(sd,
    *, source)`` method (timm, MiT, HRNet, ...) converts and loads its own layouts; its
    valid ``source`` values are its own.
    """
    # Families other than ResNet convert their own layouts, next to the model (as timm's
    # checkpoint_filter_fn): the backbone's ``load_pretrained_state_dict(sd, source=...)``.
    family_loader = getattr(model, "load_pretrained_state_dict", None)
    if family_loader is None and source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; valid sources are {list(SOURCES)}")
    where = str(weights) if isinstance(weights, str | os.PathLike) else "state dict"
    sd = read_state_dict(weights) if isinstance(weights, str | os.PathLike) else dict(weights)
    sd = _unwrap(sd, where=where)
    if family_loader is not None:
        try:
            family_loader(sd, source=source)
        except IncompatibleWeightsError as e:
            raise IncompatibleWeightsError(f"{where}: {e}") from None
        return model
    try:
        sd = convert_state_dict(sd, source=source, model=model)
    except IncompatibleWeightsError as e:
        raise IncompatibleWeightsError(f"{where}: {e}") from None
    model.load_state_dict(sd, strict=True)
    return model
