"""Weight import shared by every family: read a state dict safely, check it strictly, load it.

This is the one home of these helpers for all of PKUSeg (seg_heads' converters and the
trainer use them too):

* :func:`read_state_dict`: a ``.pth``/``.pt``/``.bin``/``.ckpt`` file (``torch.load`` with
  ``weights_only=True``; the only extra types allowed are the numpy scalar/array
  reconstructors that model-zoo ``meta`` dicts contain), a ``.safetensors`` file, or a
  mapping; zoo wrappers (``{"state_dict": ...}``, ``{"model": ...}``) are unwrapped and a
  ``module.`` prefix (DataParallel/DDP) is stripped.
* :func:`check_state_dict`: exactly the model's keys and shapes, or
  :class:`IncompatibleWeightsError` listing what does not fit.
* :func:`load_pretrained`: read, then hand the state dict to the family's own converter,
  ``model.load_pretrained_state_dict(sd, source=...)``, which lives next to the family (as
  timm keeps ``checkpoint_filter_fn`` in each model file): ResNet's layouts (torchvision,
  timm, mmseg, CSAIL) are in :mod:`seg_backbones.resnet`, MiT's in :mod:`seg_backbones.mit`,
  and so on.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "IncompatibleWeightsError",
    "backbone_part",
    "check_state_dict",
    "load_pretrained",
    "read_state_dict",
    "reconcile_buffers",
]

# wrappers around the state dict in training checkpoints and model-zoo files
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
_MAX_LISTED = 50


class IncompatibleWeightsError(ValueError):
    """A state dict does not fit a model: missing, unexpected or mis-shaped keys."""


# ----------------------------------------------------------------------------------------
# reading


def _zoo_safe_globals() -> list[Any]:
    """numpy reconstructors found in model-zoo ``meta`` dicts (mmseg, mmcv): plain data, no code.

    Empty without numpy: such files then fail to load, explaining why.
    """
    try:
        import numpy as np
    except ImportError:
        return []

    multiarray = np._core.multiarray
    dtype_classes = [
        getattr(np.dtypes, n)
        for n in dir(np.dtypes)
        if n.endswith("DType") and n not in ("ObjectDType", "VoidDType", "StringDType")
    ]
    return [
        multiarray.scalar,
        (multiarray.scalar, "numpy.core.multiarray.scalar"),  # numpy 1.x pickles
        multiarray._reconstruct,
        (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        *dtype_classes,
    ]


def read_state_dict(src: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Tensor]:
    """The state dict in a file (``.pth``/``.pt``/``.bin``/``.ckpt``/``.safetensors``) or a mapping.

    Files are read with ``torch.load(weights_only=True)`` (PKUSeg never unpickles arbitrary
    objects) or safetensors. Wrappers (``"state_dict"``, ``"model"``,
    ``"model_state_dict"``, ``"module"``; mmseg's ``"meta"`` beside them is ignored) are
    unwrapped, and a ``module.`` prefix on every key is stripped.

    Raises:
        FileNotFoundError: no such file.
        ValueError: an unknown suffix, or a file that pickles objects other than tensors.
        TypeError: the content is not a state dict (names the non-tensor entries).
    """
    if isinstance(src, Mapping):
        return _unwrap(src, where="the given mapping")
    path = Path(src)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {str(path)!r}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return _unwrap(load_file(str(path), device="cpu"), where=str(path))
    if path.suffix not in _SUFFIXES:
        raise ValueError(
            f"cannot read weights file {str(path)!r}: unknown suffix {path.suffix!r}; "
            f"use {'/'.join(_SUFFIXES)} (torch.save) or .safetensors"
        )
    try:
        with torch.serialization.safe_globals(_zoo_safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{str(path)!r} pickles objects other than tensors, which loading with "
            "weights_only=True refuses (PKUSeg never unpickles arbitrary objects: it can run "
            "code). If you trust the file, re-save only its tensors (the state dict) to a new "
            ".pth or .safetensors file in a trusted environment and load that.\n"
            f"(torch said: {str(e).strip().splitlines()[0]})"
        ) from e
    return _unwrap(obj, where=str(path))


def _unwrap(obj: Any, *, where: str) -> dict[str, Tensor]:
    while isinstance(obj, Mapping):
        if all(isinstance(v, Tensor) for v in obj.values()):
            sd = dict(obj)
            if sd and all(k.startswith("module.") for k in sd):
                sd = {k[len("module.") :]: v for k, v in sd.items()}
            return sd
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
            raise TypeError(
                f"{where}: not a state dict: non-tensor entries {bad[:8]} (keys "
                f"{list(obj)[:8]}); expected tensors, or a dict with the weights under one of "
                f"{list(_WRAPPER_KEYS)}"
            )
        obj = inner
    raise TypeError(f"{where}: expected a state dict (str -> Tensor), got {type(obj).__name__}")


def backbone_part(sd: Mapping[str, Tensor], *, use: str | None) -> dict[str, Tensor]:
    """``sd`` without a ``module.`` / ``backbone.`` prefix that every key shares.

    A state dict with ``backbone.*`` keys next to others (``decode_head.*``, ...) is a whole
    segmentation model, not a backbone: :class:`IncompatibleWeightsError` saying to load it
    with ``use`` (the converter of the whole model). ``use=None`` skips that check, for a
    family whose own keys include ``backbone.*`` (STDC's context path holds its STDCNet so).
    """
    sd = dict(sd)
    for prefix in ("module.", "backbone."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    if use is not None and any(k.startswith("backbone.") for k in sd):
        others = sorted({k.split(".")[0] for k in sd if not k.startswith("backbone.")})
        raise IncompatibleWeightsError(
            f"this looks like a full segmentation checkpoint (keys 'backbone.*' next to "
            f"{others}); load it with {use}, or keep the backbone part: "
            "{k[len('backbone.'):]: v for k, v in sd.items() if k.startswith('backbone.')}"
        )
    return sd


# ----------------------------------------------------------------------------------------
# checking


def reconcile_buffers(sd: dict[str, Tensor], model_sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``num_batches_tracked`` carries no weights: dropped where the model has none
    (FrozenBatchNorm2d, GroupNorm), taken from the model where the file has none (old files)."""
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked") or k in model_sd}
    for k, v in model_sd.items():
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = v
    return sd


def listing(keys: list[str], limit: int = _MAX_LISTED) -> str:
    """``"N: [k1, k2, ...]"``, at most ``limit`` shown."""
    shown = ", ".join(keys[:limit])
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return f"{len(keys)}: [{shown}{more}]"


def check_state_dict(
    model: nn.Module,
    sd: Mapping[str, Tensor],
    *,
    source: str = "",
    where: str = "",
    hint: str = "",
    limit: int = _MAX_LISTED,
) -> None:
    """Raise :class:`IncompatibleWeightsError` unless ``sd`` has exactly ``model``'s keys and shapes.

    The message starts with ``where`` (the file or the converter) and the ``source`` layout,
    lists the missing, unexpected and mis-shaped keys (with both shapes) and ends with
    ``hint`` (a family's guess at the cause) on its own line; at most ``limit`` keys are
    named per list.
    """
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
    head = f"{where}: " if where else ""
    layout = f" (source={source!r})" if source else ""
    parts = [f"{head}weights{layout} do not fit {type(model).__name__}:"]
    if missing:
        parts.append(f"missing keys {listing(missing, limit)}")
    if unexpected:
        parts.append(f"unexpected keys {listing(unexpected, limit)}")
    if mismatched:
        parts.append(f"shape mismatches {listing(mismatched, limit)}")
    raise IncompatibleWeightsError("\n".join(parts) + (f"\nhint: {hint}" if hint else ""))


# ----------------------------------------------------------------------------------------
# loading


def load_pretrained(
    model: nn.Module,
    weights: str | os.PathLike[str] | Mapping[str, Any],
    *,
    source: str = "auto",
) -> nn.Module:
    """Load ``weights`` (a file path or a state dict) into ``model`` strictly and return it.

    The file is read with :func:`read_state_dict`. Every backbone family converts its own
    layouts with its ``load_pretrained_state_dict(sd, *, source)`` method, and the valid
    ``source`` values are the family's (ResNet: ``"auto"``, ``"torchvision"``, ``"timm"``,
    ``"mmseg"``, ``"csail"``; see each family's docstring). A module without that method
    takes the state dict as is (``source="auto"`` only). Classifier weights are ignored by
    name; any other missing, unexpected or mis-shaped key raises
    :class:`IncompatibleWeightsError` naming the file and the keys (and both shapes).
    """
    where = str(weights) if isinstance(weights, str | os.PathLike) else "state dict"
    family_loader = getattr(model, "load_pretrained_state_dict", None)
    if family_loader is None and source != "auto":
        raise ValueError(
            f"{type(model).__name__} has no weight converter (load_pretrained_state_dict), so "
            f"source={source!r} cannot be honoured; valid sources are ['auto']"
        )
    sd = read_state_dict(weights)
    try:
        if family_loader is not None:
            family_loader(sd, source=source)
        else:
            sd = reconcile_buffers(sd, model.state_dict())
            check_state_dict(model, sd)
            model.load_state_dict(sd, strict=True)
    except IncompatibleWeightsError as e:
        raise IncompatibleWeightsError(f"{where}: {e}") from None
    return model
