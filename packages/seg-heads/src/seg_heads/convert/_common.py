"""What every converter shares: reading a checkpoint safely, renaming keys, strict loading.

Files are read with ``torch.load(..., weights_only=True)``. The only extra types allowed
are the numpy scalar, dtype and array reconstructors that the model zoos' ``meta`` dicts
contain; anything else fails with an explanation (there is no fallback to full unpickling).
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..model import SegmentationModel, create_model

__all__ = [
    "BackboneConverter",
    "StateDictSource",
    "build_and_load",
    "convert_resnet_backbone",
    "load_checkpoint",
    "load_strict",
    "match_arch",
    "rename",
    "require",
    "split_prefix",
]

StateDictSource = str | os.PathLike[str] | Mapping[str, Any]


def _zoo_safe_globals() -> list[Any]:
    """numpy reconstructors found in model-zoo ``meta`` dicts: plain data, no code.

    Empty without numpy (the ``zoo`` extra): such files then fail to load, explaining why.
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


def load_checkpoint(src: StateDictSource) -> dict[str, Tensor]:
    """Read a state dict from a path or a mapping, unwrapping the zoos' containers.

    Accepts a bare state dict, or a dict holding it under ``"state_dict"`` (mmseg,
    mmcv/mmengine, with ``"meta"`` beside it) or ``"model"`` (torchvision's reference
    scripts); strips a ``module.`` prefix (DataParallel/DDP) when every key has it.
    """
    where = "the given mapping"
    if isinstance(src, Mapping):
        obj: Any = src
    else:
        where = os.fspath(src)
        if not os.path.isfile(where):
            raise FileNotFoundError(f"checkpoint file not found: {where!r}")
        try:
            with torch.serialization.safe_globals(_zoo_safe_globals()):
                obj = torch.load(where, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise RuntimeError(
                f"{where}: torch.load(weights_only=True) refused an object in this file, and "
                "seg_heads never falls back to full unpickling (it can run arbitrary code). "
                "If you trust the file, re-save its weights alone (the 'state_dict' tensors) "
                f"to a new file in a trusted environment and convert that. Original error: {e}"
            ) from e
    if not isinstance(obj, Mapping):
        raise TypeError(f"{where}: expected a state dict (a mapping), got {type(obj).__name__}")
    for wrapper in ("state_dict", "model"):
        if wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
            break
    sd = dict(obj)
    bad = [k for k, v in sd.items() if not isinstance(v, Tensor)]
    if bad:
        raise TypeError(
            f"{where}: not a state dict: non-tensor entries {bad[:8]} (top-level keys "
            f"{list(sd)[:8]}); expected tensors, or a dict with the weights under "
            "'state_dict' or 'model'"
        )
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def match_arch(arch: str, table: Mapping[str, Any], what: str) -> str:
    """``arch`` itself or the known name it starts with (config names carry suffixes)."""
    if arch in table:
        return arch
    hits = [k for k in table if arch.startswith(k + "_")]
    if hits:
        return max(hits, key=len)
    raise KeyError(f"unknown {what} arch {arch!r}; valid archs are {sorted(table)}")


def rename(sd: Mapping[str, Tensor], rules: list[tuple[str, str]], where: str) -> dict[str, Tensor]:
    """Rename every key by the first matching ``(regex, replacement)``; unmatched keys fail."""
    out: dict[str, Tensor] = {}
    unmatched: list[str] = []
    for key, value in sd.items():
        for pattern, repl in rules:
            new, n = re.subn(f"^{pattern}$", repl, key)
            if n:
                out[new] = value
                break
        else:
            unmatched.append(key)
    if unmatched:
        raise KeyError(
            f"{where}: {len(unmatched)} keys match no known layout, e.g. {unmatched[:8]}; "
            "is `arch` right for this checkpoint?"
        )
    return out


BackboneConverter = Callable[[dict[str, Tensor], nn.Module], dict[str, Tensor]]
"""``(backbone keys of the checkpoint, prefix stripped; our backbone) -> our backbone keys``."""


def convert_resnet_backbone(
    sd: Mapping[str, Tensor], source: str, backbone: nn.Module
) -> dict[str, Tensor]:
    """A ResNet backbone's keys in ``source``'s layout -> ours (seg_backbones' converter)."""
    from seg_backbones import convert_state_dict

    return dict(convert_state_dict(dict(sd), source=source, model=backbone))


def load_strict(model: nn.Module, sd: Mapping[str, Tensor], where: str) -> None:
    """``model.load_state_dict(sd, strict=True)`` with an error listing what does not fit."""
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    mismatched = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in sd and sd[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        raise RuntimeError(
            f"{where}: the converted weights do not fit the model "
            f"(build_config={getattr(model, 'build_config', None)}): "
            f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}, "
            f"shape mismatches {mismatched[:8]}. Check `arch` and that the file is complete."
        )
    model.load_state_dict(sd, strict=True)


def split_prefix(sd: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries under ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def require(sd: Mapping[str, Tensor], key: str, where: str) -> Tensor:
    """``sd[key]``, or an error naming the key and the layout the file has."""
    if key not in sd:
        raise KeyError(
            f"{where}: expected key {key!r} is missing; keys start with "
            f"{sorted({k.split('.')[0] for k in sd})}. Is `arch` right for this checkpoint?"
        )
    return sd[key]


def build_and_load(
    sd: dict[str, Tensor],
    *,
    where: str,
    build: dict[str, Any],
    backbone_source: str | BackboneConverter,
    head_prefixes: tuple[str, ...],
    rules: list[tuple[str, str]],
    input_norm: dict[str, Any],
) -> SegmentationModel:
    """``create_model(**build)``, then load ``sd`` into it strictly.

    ``backbone.*`` keys go through ``backbone_source`` (a ResNet layout name for
    :func:`convert_resnet_backbone`, or a :data:`BackboneConverter`); every other
    key must start with one of ``head_prefixes`` and is renamed by ``rules``.
    """
    model = create_model(**build)
    head_sd = {k: v for k, v in sd.items() if not k.startswith("backbone.")}
    unknown = sorted({k.split(".")[0] for k in head_sd} - set(head_prefixes))
    if unknown:
        raise KeyError(
            f"{where}: unexpected top-level keys {unknown}; this converter knows "
            f"{['backbone', *head_prefixes]}. Is `arch` right for this checkpoint?"
        )
    bb_sd = split_prefix(sd, "backbone.")
    if isinstance(backbone_source, str):
        bb_new = convert_resnet_backbone(bb_sd, backbone_source, model.backbone)
    else:
        bb_new = backbone_source(bb_sd, model.backbone)
    new_sd = {f"backbone.{k}": v for k, v in bb_new.items()}
    new_sd.update(rename(head_sd, rules, where))
    load_strict(model, new_sd, where)
    model.input_norm = dict(input_norm)
    return model
