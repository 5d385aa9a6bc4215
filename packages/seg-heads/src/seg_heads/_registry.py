"""Head registry: a dict of decode-head builders filled by a decorator.

Each head file registers one builder per model name::

    @register_head("pspnet")
    def _pspnet(feature_info, num_classes, *, output_stride, align_corners, **head_kwargs): ...

A builder receives the backbone's whole ``feature_info`` (a list of
``FeatureInfo(channels, reduction)``, one per backbone output) and returns a
head module whose ``forward(features)`` takes the backbone's whole feature list
and reads the levels it declares in its ``in_index`` (an int or a tuple of
ints, validated against ``feature_info`` with :func:`seg_heads.check_in_index`).
A head returns the logits (a tensor) or a dict with ``"out"`` and optional
extra outputs: keys starting with ``"aux"`` are logits resized to the input
like ``"out"``; any other key is passed through unresized.

:func:`seg_heads.create_model` looks the name up here, builds the backbone and
the optional auxiliary head, and composes a :class:`~seg_heads.SegmentationModel`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

__all__ = [
    "default_output_stride",
    "get_head_builder",
    "list_models",
    "register_head",
    "tiny_config",
]

HeadBuilder = Callable[..., nn.Module]

_HEADS: dict[str, HeadBuilder] = {}
_OUTPUT_STRIDES: dict[str, int] = {}
_TINY: dict[str, dict[str, Any]] = {}

_DEFAULT_TINY: dict[str, Any] = {
    "backbone": "resnet18_deep",
    "aux": True,
    "head_kwargs": {"channels": 16},
    "aux_kwargs": {"channels": 8},
}


def register_head(
    name: str, *, output_stride: int = 8, tiny: Mapping[str, Any] | None = None
) -> Callable[[HeadBuilder], HeadBuilder]:
    """Register a decode-head builder under the model name ``name``; a duplicate is an error.

    ``output_stride`` is the model's default backbone output stride, used when
    ``create_model`` is not given one: 8 for the dilated-context heads (PSPNet,
    DeepLabV3, ...), 32 for the multi-level decoders (UPerNet, FPN, SegFormer, ...).

    ``tiny`` is the :func:`~seg_heads.create_model` keyword arguments (all but ``name`` and
    ``num_classes``) of a small, cheap model of this kind, which the registry-wide contract
    tests (forward/backward, export) build; default :data:`_DEFAULT_TINY` (``resnet18_deep``,
    16-channel head, an auxiliary head). A model with its own backbone family names it here.
    """

    def decorator(fn: HeadBuilder) -> HeadBuilder:
        if name in _HEADS:
            raise ValueError(f"model {name!r} is already registered ({_HEADS[name]!r})")
        _HEADS[name] = fn
        _OUTPUT_STRIDES[name] = output_stride
        _TINY[name] = copy.deepcopy(dict(_DEFAULT_TINY if tiny is None else tiny))
        return fn

    return decorator


def tiny_config(name: str) -> dict[str, Any]:
    """``create_model(name, num_classes=K, **tiny_config(name))`` builds a small test model."""
    get_head_builder(name)
    return copy.deepcopy(_TINY[name])


def default_output_stride(name: str) -> int:
    """The output stride ``create_model(name, ...)`` uses when none is given."""
    get_head_builder(name)
    return _OUTPUT_STRIDES[name]


def list_models() -> list[str]:
    """Sorted model names accepted by :func:`seg_heads.create_model`."""
    return sorted(_HEADS)


def get_head_builder(name: str) -> HeadBuilder:
    """The decode-head builder registered as ``name``; unknown names list the valid ones."""
    try:
        return _HEADS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; valid names are {list_models()}") from None
