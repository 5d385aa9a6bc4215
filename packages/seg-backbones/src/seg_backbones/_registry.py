"""Backbone registry: a small dict of builder functions filled by a decorator.

``create_backbone(name, **options)`` looks the name up here; names of the form
``timm:<model>`` are routed to :mod:`seg_backbones.timm_wrapper` instead.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

__all__ = ["build_checked", "create_backbone", "list_backbones", "register_backbone"]

_BACKBONES: dict[str, Callable[..., nn.Module]] = {}

F = TypeVar("F", bound=Callable[..., nn.Module])


def register_backbone(fn: F) -> F:
    """Register ``fn`` under its ``__name__``; a duplicate name is an error."""
    name = fn.__name__
    if name in _BACKBONES:
        raise ValueError(f"backbone {name!r} is already registered ({_BACKBONES[name]!r})")
    _BACKBONES[name] = fn
    return fn


def list_backbones() -> list[str]:
    """Sorted names accepted by :func:`create_backbone` (``timm:<model>`` is also accepted)."""
    return sorted(_BACKBONES)


def create_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Build the backbone registered as ``name`` with keyword-only ``kwargs``.

    ``timm:<model>`` wraps any timm model's ``features_only`` output (requires the
    ``timm`` extra). Unknown names raise a ``KeyError`` listing the valid names.
    """
    if name.startswith("timm:"):
        from .timm_wrapper import create_timm_backbone

        return create_timm_backbone(name[len("timm:") :], **kwargs)
    try:
        builder = _BACKBONES[name]
    except KeyError:
        raise KeyError(
            f"unknown backbone {name!r}; valid names are {list_backbones()} "
            "or 'timm:<model>' for any timm model (needs `pip install seg-backbones[timm]`)"
        ) from None
    return builder(**kwargs)


def build_checked(
    name: str, factory: Callable[..., nn.Module], kwargs: dict[str, Any]
) -> nn.Module:
    """``factory(name, **kwargs)``; an option ``factory`` does not take is a ``TypeError``
    naming the variant and listing its keyword-only options (the family builders register
    ``**kwargs`` wrappers, so Python itself would not say which variant was asked)."""
    options = {
        n for n, p in inspect.signature(factory).parameters.items() if p.kind is p.KEYWORD_ONLY
    }
    unknown = sorted(set(kwargs) - options)
    if unknown:
        raise TypeError(
            f"{name}: unknown option(s) {unknown}; valid keyword options are {sorted(options)}"
        )
    return factory(name, **kwargs)
