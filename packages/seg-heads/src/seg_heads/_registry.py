"""Model registry: a dict of decode-head builders filled by a decorator.

Each head file registers one builder per model name::

    @register_model("pspnet")
    def _pspnet(in_channels, num_classes, *, output_stride, align_corners, **head_kwargs): ...

:func:`seg_heads.create_model` looks the name up here, builds the backbone and
the optional auxiliary head, and composes a :class:`~seg_heads.SegmentationModel`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

__all__ = ["get_head_builder", "list_models", "register_model"]

HeadBuilder = Callable[..., nn.Module]

_MODELS: dict[str, HeadBuilder] = {}


def register_model(name: str) -> Callable[[HeadBuilder], HeadBuilder]:
    """Register a decode-head builder under ``name``; registering a name twice is an error."""

    def decorator(fn: HeadBuilder) -> HeadBuilder:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered ({_MODELS[name]!r})")
        _MODELS[name] = fn
        return fn

    return decorator


def list_models() -> list[str]:
    """Sorted model names accepted by :func:`seg_heads.create_model`."""
    return sorted(_MODELS)


def get_head_builder(name: str) -> HeadBuilder:
    """The decode-head builder registered as ``name``; unknown names list the valid ones."""
    try:
        return _MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; valid names are {list_models()}") from None
