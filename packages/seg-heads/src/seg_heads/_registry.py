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

from collections.abc import Callable

from torch import nn

__all__ = ["default_output_stride", "get_head_builder", "list_models", "register_head"]

HeadBuilder = Callable[..., nn.Module]

_HEADS: dict[str, HeadBuilder] = {}
_OUTPUT_STRIDES: dict[str, int] = {}


def register_head(name: str, *, output_stride: int = 8) -> Callable[[HeadBuilder], HeadBuilder]:
    """Register a decode-head builder under the model name ``name``; a duplicate is an error.

    ``output_stride`` is the model's default backbone output stride, used when
    ``create_model`` is not given one: 8 for the dilated-context heads (PSPNet,
    DeepLabV3, ...), 32 for the multi-level decoders (UPerNet, FPN, SegFormer, ...).
    """

    def decorator(fn: HeadBuilder) -> HeadBuilder:
        if name in _HEADS:
            raise ValueError(f"model {name!r} is already registered ({_HEADS[name]!r})")
        _HEADS[name] = fn
        _OUTPUT_STRIDES[name] = output_stride
        return fn

    return decorator


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
