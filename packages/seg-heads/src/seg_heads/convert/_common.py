"""What every converter shares: renaming keys and building + loading strictly.

Files are read by :func:`seg_backbones.read_state_dict` (``torch.load`` with
``weights_only=True``; the only extra types allowed are the numpy reconstructors that the
model zoos' ``meta`` dicts contain; no fallback to full unpickling), exported here as
``load_checkpoint``; keys are checked by :func:`seg_backbones.pretrained.check_state_dict`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from seg_backbones import convert_state_dict
from seg_backbones import read_state_dict as load_checkpoint
from seg_backbones.pretrained import check_state_dict

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
    return dict(convert_state_dict(dict(sd), source=source, model=backbone))


def load_strict(model: nn.Module, sd: Mapping[str, Tensor], where: str) -> None:
    """``model.load_state_dict(sd, strict=True)``, or :class:`~seg_backbones.IncompatibleWeightsError`
    naming ``where`` and every missing, unexpected or mis-shaped key."""
    check_state_dict(
        model,
        sd,
        where=where,
        hint=f"the model was built with {getattr(model, 'build_config', None)}; check `arch` "
        "and that the file is complete",
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
