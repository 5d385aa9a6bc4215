"""Backbone registry: a :class:`~seg_backbones.registry.Registry` of builder functions.

``create_backbone(name, **options)`` looks the name up here; names of the form
``timm:<model>`` are routed to :mod:`seg_backbones.timm_wrapper` instead.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from .registry import Registry

__all__ = ["build_checked", "create_backbone", "list_backbones", "register_backbone"]

BACKBONES: Registry[Callable[..., nn.Module]] = Registry(
    "backbone",
    hint=" or 'timm:<model>' for any timm model (needs `pip install seg-backbones[timm]`)",
)


def register_backbone(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a builder function under ``name``: ``@register_backbone("resnet50")``.

    The builder takes keyword-only options and returns a module with ``feature_info``; a
    duplicate name is an error.
    """
    return BACKBONES.register(name)


def list_backbones() -> list[str]:
    """Sorted names accepted by :func:`create_backbone` (``timm:<model>`` is also accepted)."""
    return BACKBONES.names()


def create_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Build the backbone registered as ``name`` with keyword-only ``kwargs``.

    ``timm:<model>`` wraps any timm model's ``features_only`` output (requires the
    ``timm`` extra). Unknown names raise a ``KeyError`` listing the valid names.
    """
    if name.startswith("timm:"):
        from .timm_wrapper import create_timm_backbone

        return create_timm_backbone(name[len("timm:") :], **kwargs)
    return BACKBONES.get(name)(**kwargs)


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
