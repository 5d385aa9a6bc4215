"""Build what a config describes: the model, the datasets and their loaders.

Only the packages' own ``create_*`` names are used (``seg_heads.create_model``,
``seg_data.create_dataset``, ``seg_data.build_transforms``); errors from them are
re-raised naming the config key to fix.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from .config import Config, ConfigError

__all__ = [
    "EpochSampler",
    "ShardSampler",
    "build_dataloader",
    "build_dataset",
    "build_model",
    "build_torchvision_model",
    "find_normalize",
]


TORCHVISION_PREFIX = "torchvision:"


def build_torchvision_model(cfg: Config) -> nn.Module:
    """A torchvision segmentation model as a baseline (``model.name: torchvision:ARCH``).

    Random initialisation only (``weights=None, weights_backbone=None``: nothing is
    downloaded). ``model.backbone`` must name the architecture's backbone (the suffix of
    ARCH, e.g. ``mobilenet_v3_large``) so a config reads truthfully; the other seg_heads
    options do not apply and must stay at their defaults. torchvision's models return a
    dict with "out" (and "aux" when ``aux: true``), as ours do.
    """
    m = cfg.model
    arch = m.name[len(TORCHVISION_PREFIX) :]
    try:
        from torchvision.models import segmentation
    except ImportError as exc:  # optional extra
        raise ConfigError(
            f"model.name {m.name!r} needs torchvision: pip install 'seg-trainer[torchvision]'"
        ) from exc
    available = sorted(
        n for n in dir(segmentation) if n.islower() and callable(getattr(segmentation, n))
    )
    available = [n for n in available if "_" in n and not n.startswith("_")]
    if arch not in available:
        raise ConfigError(
            f"model.name: unknown torchvision model {arch!r}; valid: "
            + ", ".join(TORCHVISION_PREFIX + n for n in available)
        )
    if not arch.endswith(m.backbone):
        raise ConfigError(
            f"model.backbone: {m.backbone!r} is not the backbone of {arch!r}; "
            f"write the suffix of the architecture name"
        )
    unused = [
        key
        for key, value in (
            ("pretrained_backbone", m.pretrained_backbone),
            ("backbone_kwargs", m.backbone_kwargs),
            ("head_kwargs", m.head_kwargs),
            ("aux_kwargs", m.aux_kwargs),
            ("align_corners", m.align_corners),
        )
        if value
    ]
    if unused:
        raise ConfigError(f"model.{unused[0]} does not apply to torchvision models; remove it")
    kwargs: dict[str, Any] = {"weights": None, "weights_backbone": None}
    if m.aux:
        kwargs["aux_loss"] = True
    try:
        return getattr(segmentation, arch)(num_classes=m.num_classes, **kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"model: cannot build torchvision model {arch!r}: {exc}") from exc


def build_model(cfg: Config) -> nn.Module:
    """``seg_heads.create_model(cfg.model.name, **rest of cfg.model)``.

    ``model.name: torchvision:ARCH`` builds a torchvision baseline instead
    (:func:`build_torchvision_model`).
    """
    from seg_heads import create_model

    m = cfg.model
    if m.name.startswith(TORCHVISION_PREFIX):
        return build_torchvision_model(cfg)
    try:
        return create_model(
            m.name,
            backbone=m.backbone,
            num_classes=m.num_classes,
            output_stride=m.output_stride,
            aux=m.aux,
            align_corners=m.align_corners,
            pretrained_backbone=m.pretrained_backbone,
            backbone_kwargs=dict(m.backbone_kwargs),
            head_kwargs=dict(m.head_kwargs),
            aux_kwargs=dict(m.aux_kwargs),
        )
    except (KeyError, ValueError, TypeError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise ConfigError(f"model: cannot build model {m.name!r} / {m.backbone!r}: {msg}") from exc


def _split_name(cfg: Config, split: str) -> str:
    d = cfg.data
    names = {"train": d.train_split, "val": d.val_split, "test": d.test_split}
    if split not in names:
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    name = names[split]
    if name is None:
        raise ConfigError(
            f"key 'data.{split}_split' is not set; set it to the dataset's split name"
        )
    return name


def build_dataset(cfg: Config, split: str) -> Dataset:
    """``seg_data.create_dataset`` for ``split`` in ``"train" | "val" | "test"``.

    ``"train"`` uses ``data.train_transforms``, the others ``data.val_transforms``;
    the split name passed to the dataset is ``data.<split>_split``.
    """
    from seg_data import build_transforms, create_dataset

    d = cfg.data
    key = "data.train_transforms" if split == "train" else "data.val_transforms"
    spec = d.train_transforms if split == "train" else d.val_transforms
    split_name = _split_name(cfg, split)
    try:
        transforms = build_transforms(spec)
    except (KeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"key '{key}': {exc}") from exc
    kwargs: dict[str, Any] = dict(d.dataset_options)
    if d.root is not None:
        kwargs["root"] = d.root
    try:
        return create_dataset(
            d.dataset, split=split_name, transforms=transforms, seed=cfg.seed, **kwargs
        )
    except (KeyError, TypeError) as exc:
        raise ConfigError(
            f"data: cannot create dataset {d.dataset!r} (split {split_name!r}, options "
            f"{sorted(kwargs)}): {exc}; check data.dataset, data.root and data.dataset_options"
        ) from exc


class EpochSampler(Sampler[int]):
    """Shuffled (or ordered) indices whose order is a function of ``(seed, epoch)`` only.

    ``start`` skips that many indices of the current epoch's order (used to resume
    mid-epoch without loading the skipped samples); it is not reset by ``set_epoch``.
    """

    def __init__(self, num_samples: int, *, seed: int = 0, shuffle: bool = True) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[int]:
        """This epoch's full index order."""
        if not self.shuffle:
            return list(range(self.num_samples))
        g = torch.Generator()
        g.manual_seed((self.seed * 1_000_003 + self.epoch) % (2**63))
        return torch.randperm(self.num_samples, generator=g).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start :])

    def __len__(self) -> int:
        return max(self.num_samples - self.start, 0)


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...``: every sample exactly once over all processes.

    Used for evaluation: unlike accelerate's even-batch padding, no sample is
    duplicated, so confusion matrices can be summed across processes.
    """

    def __init__(self, num_samples: int, *, rank: int = 0, world_size: int = 1) -> None:
        self.num_samples = num_samples
        self.rank = rank
        self.world_size = world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.num_samples, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.num_samples, self.world_size))


def build_dataloader(
    dataset: Dataset,
    cfg: Config,
    *,
    train: bool,
) -> DataLoader:
    """The loader for training (before ``accelerator.prepare``) or evaluation.

    Training: :class:`EpochSampler` (order = f(seed, epoch)), batch ``data.batch_size``
    (the total over processes: accelerate splits it, ``split_batches=True``), full
    batches only, a seeded generator (so the global RNG is never consumed).
    Evaluation: every sample in order, ``evaluation.batch_size`` per process, never
    prepared: :func:`seg_trainer.evaluate.evaluate` iterates this process's
    :class:`ShardSampler` shard of it, so no sample is repeated.
    """
    from seg_data import collate

    workers = cfg.data.num_workers
    generator = torch.Generator()
    generator.manual_seed(cfg.seed)
    common: dict[str, Any] = {
        "collate_fn": collate,
        "num_workers": workers,
        "pin_memory": torch.cuda.is_available(),
        "generator": generator,
        "persistent_workers": False,
    }
    if train:
        n = len(dataset)  # type: ignore[arg-type]
        if n < cfg.data.batch_size:
            raise ConfigError(
                f"key 'data.batch_size': {cfg.data.batch_size} is larger than the training set "
                f"({n} samples); lower it"
            )
        sampler = EpochSampler(n, seed=cfg.seed, shuffle=True)
        return DataLoader(
            dataset, batch_size=cfg.data.batch_size, sampler=sampler, drop_last=True, **common
        )
    return DataLoader(
        dataset, batch_size=cfg.evaluation.batch_size, shuffle=False, drop_last=False, **common
    )


def find_normalize(cfg: Config) -> tuple[list[float], list[float], bool] | None:
    """``(mean, std, to_bgr)`` of the ``Normalize`` step in ``data.val_transforms``, if any.

    Used to turn normalised tensors back into pictures (defaults: ImageNet RGB, as
    ``seg_data``'s ``Normalize``).
    """
    from seg_data import IMAGENET_MEAN, IMAGENET_STD

    for step in cfg.data.val_transforms:
        ((name, opts),) = step.items()
        if name == "Normalize":
            opts = opts or {}
            mean = opts.get("mean", IMAGENET_MEAN)
            std = opts.get("std", IMAGENET_STD)
            to_bgr = bool(opts.get("to_bgr", False))
            return [float(x) for x in mean], [float(x) for x in std], to_bgr
    return None
