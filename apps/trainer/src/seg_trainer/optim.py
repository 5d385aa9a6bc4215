"""Optimizer parameter groups and the iteration-based LR schedule.

Parameter groups (:func:`param_groups`): the model's parameters are split into
backbone (names starting with ``backbone.``) and head (everything else: decode
head and auxiliary head), and each of those into decayed and not decayed.
By default normalisation weights/biases and all biases get no weight decay
(``optimizer.decay_norm_and_bias: false``); mmseg's default configs decay
everything (set it to ``true`` to match them). Head groups get
``lr * head_lr_mult`` (10 in PyTorch-Encoding; 1 in mmseg).

Schedule (:class:`WarmupPolyLR`): mmseg's ``PolyLR`` with ``eta_min`` and linear
warmup, a pure function of the iteration ``it`` (0-based, the iteration about to run)::

    poly(it)   = (lr_g - min_lr) * (1 - it / max_iters) ** power + min_lr
    warmup(it) = poly(it) * (1 - (1 - it / warmup_iters) * (1 - warmup_ratio))   for it < warmup_iters

where ``lr_g`` is the group's base LR (``lr`` or ``lr * head_lr_mult``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from .config import OptimizerConfig, ScheduleConfig

__all__ = ["WarmupPolyLR", "build_optimizer", "build_scheduler", "param_groups", "schedule_lr"]

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
)


def _is_norm(module: nn.Module) -> bool:
    # seg_backbones' FrozenBatchNorm2d has no parameters; any other norm class is matched by name.
    return isinstance(module, _NORM_TYPES) or "norm" in type(module).__name__.lower()


def param_groups(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    head_lr_mult: float = 1.0,
    decay_norm_and_bias: bool = False,
) -> list[dict[str, Any]]:
    """Split trainable parameters into up to four named groups.

    Groups (empty ones are dropped): ``backbone``, ``backbone_no_decay``, ``head``,
    ``head_no_decay``. Each has ``lr``, ``initial_lr`` (the same), ``weight_decay``,
    ``lr_mult`` and ``name``.
    """
    no_decay_ids: set[int] = set()
    if not decay_norm_and_bias:
        for module in model.modules():
            for pname, p in module.named_parameters(recurse=False):
                if _is_norm(module) or pname == "bias":
                    no_decay_ids.add(id(p))
    buckets: dict[str, list[nn.Parameter]] = {
        "backbone": [],
        "backbone_no_decay": [],
        "head": [],
        "head_no_decay": [],
    }
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "backbone" if name.startswith("backbone.") else "head"
        buckets[part + ("_no_decay" if id(p) in no_decay_ids else "")].append(p)
    groups = []
    for name, params in buckets.items():
        if not params:
            continue
        mult = head_lr_mult if name.startswith("head") else 1.0
        groups.append(
            {
                "name": name,
                "params": params,
                "lr": lr * mult,
                "initial_lr": lr * mult,
                "lr_mult": mult,
                "weight_decay": 0.0 if name.endswith("no_decay") else weight_decay,
            }
        )
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return groups


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov) or AdamW over :func:`param_groups`."""
    groups = param_groups(
        model,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        head_lr_mult=cfg.head_lr_mult,
        decay_norm_and_bias=cfg.decay_norm_and_bias,
    )
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    raise ValueError(f"optimizer.name: unknown optimizer {cfg.name!r}; valid names: 'sgd', 'adamw'")


def schedule_lr(
    it: int,
    base_lr: float,
    *,
    max_iters: int,
    name: str = "poly",
    power: float = 0.9,
    min_lr: float = 0.0,
    warmup_iters: int = 0,
    warmup_ratio: float = 1e-6,
) -> float:
    """The learning rate for (0-based) iteration ``it`` of a group whose base LR is ``base_lr``."""
    it = min(max(it, 0), max_iters)
    if name == "poly":
        lr = (base_lr - min_lr) * (1.0 - it / max_iters) ** power + min_lr
    elif name == "constant":
        lr = base_lr
    else:
        raise ValueError(
            f"schedule.name: unknown schedule {name!r}; valid names: 'poly', 'constant'"
        )
    if it < warmup_iters:
        k = (1.0 - it / warmup_iters) * (1.0 - warmup_ratio)
        lr = lr * (1.0 - k)
    return lr


class WarmupPolyLR(LRScheduler):
    """Per-iteration LR scheduler computing :func:`schedule_lr` from ``last_epoch`` (= iteration).

    Call ``step()`` once per optimizer step. Its ``state_dict()`` holds only numbers and
    strings (loads with ``torch.load(weights_only=True)``).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        max_iters: int,
        name: str = "poly",
        power: float = 0.9,
        min_lr: float = 0.0,
        warmup_iters: int = 0,
        warmup_ratio: float = 1e-6,
        last_epoch: int = -1,
    ) -> None:
        self.max_iters = max_iters
        self.name = name
        self.power = power
        self.min_lr = min_lr
        self.warmup_iters = warmup_iters
        self.warmup_ratio = warmup_ratio
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        return self.lrs_at(self.last_epoch)

    def lrs_at(self, it: int) -> list[float]:
        """Every group's LR for iteration ``it`` (a pure function of ``it`` and the settings)."""
        return [
            schedule_lr(
                it,
                base,
                max_iters=self.max_iters,
                name=self.name,
                power=self.power,
                min_lr=self.min_lr,
                warmup_iters=self.warmup_iters,
                warmup_ratio=self.warmup_ratio,
            )
            for base in self.base_lrs
        ]


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, *, max_iters: int
) -> WarmupPolyLR:
    """The schedule described by the config's ``schedule`` section."""
    return WarmupPolyLR(
        optimizer,
        max_iters=max_iters,
        name=cfg.name,
        power=cfg.power,
        min_lr=cfg.min_lr,
        warmup_iters=cfg.warmup_iters,
        warmup_ratio=cfg.warmup_ratio,
    )
