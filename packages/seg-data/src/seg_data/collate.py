"""Batching and DataLoader worker seeding."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["collate", "seed_worker"]


def collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples: ``{"image": N x 3 x H x W, "label": N x H x W, "meta": [dict, ...]}``.

    All images (and all labels) of a batch must share one size: add ``RandomCrop`` + ``Pad``
    for training, or use ``batch_size=1`` when evaluating images of different sizes.
    """
    if not batch:
        raise ValueError("collate got an empty batch")
    for key in ("image", "label"):
        shapes = {tuple(s[key].shape) for s in batch}
        if len(shapes) > 1:
            raise ValueError(
                f"collate: the {key}s of a batch differ in size {sorted(shapes)}; crop/pad them to "
                "one size (RandomCrop + Pad) or use batch_size=1"
            )
    return {
        "image": torch.stack([s["image"] for s in batch]),
        "label": torch.stack([s["label"] for s in batch]),
        "meta": [s["meta"] for s in batch],
    }


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` seeding Python's and numpy's global RNGs from torch's worker seed.

    seg_data transforms do not need it (they draw from a per-sample generator), but code that
    uses ``random`` or ``np.random`` directly then differs between workers and runs reproducibly
    for a seeded ``DataLoader(generator=...)``.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
