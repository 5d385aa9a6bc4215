"""Head registry: a :class:`~seg_backbones.registry.Registry` of decode-head builders.

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

from seg_backbones.registry import Registry

__all__ = [
    "default_output_stride",
    "get_head_builder",
    "list_models",
    "register_head",
    "tiny_config",
]

HeadBuilder = Callable[..., nn.Module]

HEADS: Registry[HeadBuilder] = Registry("model")

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

    tiny = copy.deepcopy(dict(_DEFAULT_TINY if tiny is None else tiny))
    return HEADS.register(name, output_stride=output_stride, tiny=tiny)


def tiny_config(name: str) -> dict[str, Any]:
    """``create_model(name, num_classes=K, **tiny_config(name))`` builds a small test model."""
    return copy.deepcopy(HEADS.meta(name)["tiny"])


def default_output_stride(name: str) -> int:
    """The output stride ``create_model(name, ...)`` uses when none is given."""
    return HEADS.meta(name)["output_stride"]


def list_models() -> list[str]:
    """Sorted model names accepted by :func:`seg_heads.create_model`."""
    return HEADS.names()


def get_head_builder(name: str) -> HeadBuilder:
    """The decode-head builder registered as ``name``; unknown names list the valid ones."""
    return HEADS.get(name)
