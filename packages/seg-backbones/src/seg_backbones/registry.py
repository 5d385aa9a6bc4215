"""``Registry``: the one registry helper of PKUSeg (backbones, heads, datasets, transforms, losses).

A registry is a dict from a name to a builder (a function or a class), filled by a decorator
that always takes the name::

    BACKBONES = Registry("backbone")

    @BACKBONES.register("resnet18")
    def resnet18(**kwargs): ...

    BACKBONES.get("resnet18")     # the builder
    BACKBONES.get("resnet81")     # KeyError: unknown backbone 'resnet81'; valid names are [...]

Each package wraps its registry in three module functions named after what it holds
(``register_backbone`` / ``list_backbones`` / ``create_backbone``, ``register_head`` /
``list_models`` / ``create_model``, ...). ``seg_data`` is a leaf package and keeps a copy of
this file (``seg_data/registry.py``); a cross-package test keeps the two identical.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> builder, with per-name metadata; unknown names fail listing the valid ones."""

    def __init__(self, kind: str, *, hint: str = "") -> None:
        self.kind = kind
        self.hint = hint  # appended to the unknown-name error (e.g. other accepted forms)
        self._items: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **meta: Any) -> Callable[[T], T]:
        """Decorator registering its target under ``name``; a duplicate name is an error."""
        if not isinstance(name, str) or not name:
            raise TypeError(
                f"register a {self.kind} under an explicit name, e.g. "
                f"@register_{self.kind}('my_{self.kind}'); got {name!r}"
            )

        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered ({self._items[name]!r})"
                )
            self._items[name] = obj
            self._meta[name] = dict(meta)
            return obj

        return decorator

    def get(self, name: str) -> T:
        """The builder registered as ``name``; a ``KeyError`` listing the valid names if none."""
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(
                f"unknown {self.kind} {name!r}; valid names are {self.names()}{self.hint}"
            ) from None

    def meta(self, name: str) -> dict[str, Any]:
        """The keyword metadata ``name`` was registered with (checked like :meth:`get`)."""
        self.get(name)
        return self._meta[name]

    def names(self) -> list[str]:
        """Sorted registered names."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
