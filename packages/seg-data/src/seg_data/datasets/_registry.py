"""The dataset registry: a :class:`~seg_data.registry.Registry` of dataset classes."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..registry import Registry
from .base import SegmentationDataset

__all__ = ["create_dataset", "list_datasets", "register_dataset"]

DATASETS: Registry[type[SegmentationDataset]] = Registry("dataset")
# Arguments create_dataset passes itself; everything else is a dataset option.
_COMMON = ("root", "split", "transforms", "seed")


def register_dataset(
    name: str,
) -> Callable[[type[SegmentationDataset]], type[SegmentationDataset]]:
    """Class decorator registering a dataset under ``name`` (also set as ``cls.name``)."""
    register = DATASETS.register(name)

    def deco(cls: type[SegmentationDataset]) -> type[SegmentationDataset]:
        register(cls)
        cls.name = name
        return cls

    return deco


def list_datasets() -> list[str]:
    """Registered dataset names, sorted."""
    return DATASETS.names()


def _options_of(name: str) -> dict[str, Any]:
    """The options (beyond root, split, transforms, seed) of a dataset, with their defaults."""
    cls = _get(name)
    sig = inspect.signature(cls.__init__)
    return {
        k: p.default
        for k, p in sig.parameters.items()
        if k != "self" and k not in _COMMON and p.kind is p.KEYWORD_ONLY
    }


def dataset_options(name: str) -> dict[str, Any]:
    """The options (beyond root, split, transforms, seed) of a dataset, with their defaults."""
    return _options_of(name)


def _get(name: str) -> type[SegmentationDataset]:
    return DATASETS.get(name)


def create_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    split: str = "train",
    transforms: Any = None,
    seed: int = 0,
    **dataset_options: Any,
) -> SegmentationDataset:
    """Build a registered dataset.

    Args:
        name: one of :func:`list_datasets`.
        root: the folder the dataset was downloaded/extracted to (not used by ``synthetic``).
        split: split name (``train``, ``val``, ...; dataset specific).
        transforms: a config list for :func:`~seg_data.build_transforms`, a ``Compose`` or a
            ``callable(sample, rng)``; None returns the decoded sample unchanged.
        seed: base seed; sample randomness is ``f(seed, epoch, index)``.
        **dataset_options: dataset-specific options (see each dataset's docstring); unknown
            ones raise naming the option and listing the valid ones.
    """
    cls = _get(name)
    valid = _options_of(name)
    for key in dataset_options:
        if key not in valid:
            listed = ", ".join(valid) if valid else "(none)"
            raise TypeError(f"dataset {name!r} has no option {key!r}; valid options: {listed}")
    params = inspect.signature(cls.__init__).parameters
    if "root" not in params:
        if root is not None:
            raise TypeError(f"dataset {name!r} is generated and takes no root (got {root!r})")
        return cls(split=split, transforms=transforms, seed=seed, **dataset_options)
    return cls(root, split=split, transforms=transforms, seed=seed, **dataset_options)
