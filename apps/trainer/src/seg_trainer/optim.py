"""Optimizer parameter groups and the iteration-based LR schedules.

Parameter groups (:func:`param_groups`): the model's parameters are split into
backbone (names starting with ``backbone.``) and head (everything else: decode
head and auxiliary head), and each of those into decayed and not decayed.
By default normalisation weights/biases, all biases, embeddings (``nn.Embedding``
weights, e.g. Mask2Former's query features, query and level embeddings) and Swin's
position tables (``relative_position_bias_table``, ``absolute_pos_embed``) get no weight
decay (``optimizer.decay_norm_and_bias: false``), as the official Mask2Former
(``WEIGHT_DECAY_NORM`` / ``WEIGHT_DECAY_EMBED`` 0, position tables 0) and mmseg's Swin
and Mask2Former recipes (``decay_mult=0`` custom keys); mmseg's default configs decay
everything (set it to ``true`` to match them). Head groups get
``lr * head_lr_mult`` (10 in PyTorch-Encoding; 1 in mmseg).

Layer-wise LR decay (``optimizer.layer_decay``, :func:`layer_id`): mmseg's
``LearningRateDecayOptimizerConstructor``. Each backbone parameter gets a layer id ``i``
in ``0 .. num_layers + 1`` and the LR ``lr * decay ** (num_layers + 1 - i)``; the head
(and what mmseg leaves outside the backbone's layers, e.g. the output norms) gets id
``num_layers + 1``, i.e. ``lr`` (times ``head_lr_mult``). The backbone is then split into
one decayed and one not decayed group per layer id (named ``backbone_layer<i>`` and
``backbone_layer<i>_no_decay``, the highest id first); no decay, as that constructor, on
every 1-D parameter (norms, biases, ConvNeXt's layer scale) unless ``decay_norm_and_bias``.
See :func:`layer_id` for the ids of timm's ConvNeXt and Swin.

Schedules (:class:`WarmupPolyLR`), pure functions of the iteration ``it`` (0-based, the
iteration about to run), ``lr_g`` being the group's base LR and ``T = max_iters``::

    poly(it)     = (lr_g - min_lr) * (1 - it / T) ** power + min_lr           (mmseg PolyLR)
    cosine(it)   = min_lr + (lr_g - min_lr) * (1 + cos(pi * it / T)) / 2      (CosineAnnealingLR,
                                                                      by iteration, eta_min)
    step(it)     = lr_g * gamma ** (number of milestones <= it)               (MultiStepLR;
                                                                      min_lr does not apply)
    constant(it) = lr_g
    warmup(it)   = f(it) * (1 - (1 - it / warmup_iters) * (1 - warmup_ratio))   for it < warmup_iters

The warmup multiplies the schedule's own value (mmseg 0.x's runner warmup; mmseg 1.x
configs chain a ``LinearLR`` and start the decay after it, which differs by the decay
over the warmup iterations only).
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from .config import ConfigError, OptimizerConfig, ScheduleConfig

__all__ = [
    "WarmupPolyLR",
    "build_optimizer",
    "build_scheduler",
    "layer_decay_groups",
    "layer_id",
    "param_groups",
    "schedule_lr",
]

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


# Swin's position tables (timm names; mmseg's Swin/Mask2Former recipes: decay_mult 0).
_NO_DECAY_PARAM_NAMES = frozenset({"relative_position_bias_table", "absolute_pos_embed"})


def _never_decayed(module: nn.Module, pname: str) -> bool:
    """Whether parameter ``pname`` of ``module`` gets no weight decay by default."""
    return (
        _is_norm(module)
        or isinstance(module, nn.Embedding)
        or pname == "bias"
        or pname in _NO_DECAY_PARAM_NAMES
    )


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
    ``head_no_decay``. Not decayed unless ``decay_norm_and_bias``: norm parameters, biases,
    ``nn.Embedding`` weights and Swin's ``relative_position_bias_table`` /
    ``absolute_pos_embed``. Each has ``lr``, ``initial_lr`` (the same), ``weight_decay``,
    ``lr_mult`` and ``name``.
    """
    no_decay_ids: set[int] = set()
    if not decay_norm_and_bias:
        for module in model.modules():
            for pname, p in module.named_parameters(recurse=False):
                if _never_decayed(module, pname):
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


# ------------------------------------------------------------------ layer-wise LR decay

_CONVNEXT_STEM = re.compile(r"^backbone\.model\.stem[._]")
_CONVNEXT_DOWN = re.compile(r"^backbone\.model\.stages[._](\d+)\.downsample\.")
_CONVNEXT_BLOCK = re.compile(r"^backbone\.model\.stages[._](\d+)\.blocks\.(\d+)\.")
_SWIN_EMBED = re.compile(r"^backbone\.model\.(patch_embed\.|absolute_pos_embed)")
_SWIN_DOWN = re.compile(r"^backbone\.model\.layers[._](\d+)\.downsample\.")
_SWIN_BLOCK = re.compile(r"^backbone\.model\.layers[._](\d+)\.blocks\.(\d+)\.")
_LAYER_FAMILIES = ("convnext", "swin")


def _stage_depths(model: nn.Module, family: str) -> list[int]:
    pattern = _CONVNEXT_BLOCK if family == "convnext" else _SWIN_BLOCK
    depths: dict[int, int] = {}
    for name, _ in model.named_parameters():
        m = pattern.match(name)
        if m:
            stage, block = int(m.group(1)), int(m.group(2))
            depths[stage] = max(depths.get(stage, 0), block + 1)
    return [depths.get(i, 0) for i in range(max(depths) + 1)] if depths else []


def default_num_layers(family: str, decay_type: str, depths: list[int]) -> int:
    """``num_layers`` when the config leaves it unset: the largest id the backbone's own
    blocks use (ConvNeXt layer-wise: ``4 + (depths[2] - 1) // 3``, e.g. 12 for ConvNeXt-B
    as mmseg's configs; stage-wise: the number of stages; Swin layer-wise: its blocks).
    mmseg's stage-wise ConvNeXt recipes set 6 (T/S) or 12 (B/L/XL): give it explicitly."""
    if decay_type == "stage_wise":
        return len(depths)
    if family == "convnext":
        return 4 + (depths[2] - 1) // 3 if len(depths) > 2 else len(depths)
    return sum(depths)


def layer_id(name: str, *, family: str, decay_type: str, num_layers: int, depths: list[int]) -> int:
    """The layer id of parameter ``name`` of a model (``backbone.model.*``: a timm backbone).

    ConvNeXt, as mmseg's ``get_layer_id_for_convnext`` / ``get_stage_id_for_convnext`` with
    timm's names (timm's ``stem`` is mmseg's ``downsample_layers.0``, ``stages.i.downsample``
    its ``downsample_layers.i``, ``stages.i.blocks.j`` its ``stages.i.j``):

    * ``layer_wise``: stem 0; stage 0 blocks 1; stage 1 (and its downsample) 2; stage 2
      downsample 3, blocks ``3 + j // 3``; stage 3 (and its downsample) ``num_layers``;
    * ``stage_wise``: stem and downsamples 0; stage ``i`` blocks ``i + 1``.

    Swin (mmseg has no layer decay for Swin; ours, in the same scheme as its ViT/BEiT ids):

    * ``layer_wise``: patch embedding 0; block ``j`` of stage ``i`` ``1 + j + sum(depths[:i])``;
      a stage's patch merging (at its start in timm) the id of its first block;
    * ``stage_wise``: patch embedding 0; stage ``i`` (with its patch merging) ``i + 1``.

    Everything else (the heads, the backbone's output norms, as in mmseg) ``num_layers + 1``.
    """
    top = num_layers + 1
    if family == "convnext":
        if _CONVNEXT_STEM.match(name):
            return 0
        m = _CONVNEXT_DOWN.match(name)
        if m:
            if decay_type == "stage_wise":
                return 0
            return {0: 0, 1: 2, 2: 3}.get(int(m.group(1)), num_layers)
        m = _CONVNEXT_BLOCK.match(name)
        if m:
            stage, block = int(m.group(1)), int(m.group(2))
            if decay_type == "stage_wise":
                return stage + 1
            return {0: 1, 1: 2, 2: 3 + block // 3}.get(stage, num_layers)
        return top
    if family == "swin":
        if _SWIN_EMBED.match(name):
            return 0
        m = _SWIN_DOWN.match(name) or _SWIN_BLOCK.match(name)
        if m:
            stage = int(m.group(1))
            if decay_type == "stage_wise":
                return stage + 1
            block = int(m.group(2)) if m.re is _SWIN_BLOCK else 0
            return 1 + block + sum(depths[:stage])
        return top
    raise ValueError(f"no layer ids for backbone family {family!r}; supported: {_LAYER_FAMILIES}")


def _backbone_family(model: nn.Module) -> str:
    backbone = getattr(model, "backbone", None)
    family = getattr(backbone, "family", None)
    if family not in _LAYER_FAMILIES:
        name = getattr(backbone, "name", type(backbone).__name__)
        raise ConfigError(
            f"key 'optimizer.layer_decay': backbone {name!r} has no layer ids (family "
            f"{family!r}); supported: the timm ConvNeXt and Swin backbones (timm:convnext_*, "
            "timm:swin_*). Remove optimizer.layer_decay"
        )
    return str(family)


def layer_decay_groups(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    decay: float,
    decay_type: str = "layer_wise",
    num_layers: int | None = None,
    head_lr_mult: float = 1.0,
    decay_norm_and_bias: bool = False,
) -> list[dict[str, Any]]:
    """Parameter groups with layer-wise LR decay (see the module docstring and :func:`layer_id`).

    Groups: ``backbone_layer<i>`` / ``backbone_layer<i>_no_decay`` (highest id first), then
    ``head`` / ``head_no_decay``; each has ``lr`` = ``initial_lr``, ``weight_decay``,
    ``lr_mult`` (``decay ** (num_layers + 1 - i)``, times ``head_lr_mult`` for the head),
    ``layer_id`` and ``name``.
    """
    if decay_type not in ("layer_wise", "stage_wise"):
        raise ValueError(f"decay_type must be 'layer_wise' or 'stage_wise', got {decay_type!r}")
    family = _backbone_family(model)
    depths = _stage_depths(model, family)
    if num_layers is None:
        num_layers = default_num_layers(family, decay_type, depths)
    buckets: dict[tuple[str, int, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = not decay_norm_and_bias and (p.ndim <= 1 or name.endswith(".bias"))
        if name.startswith("backbone."):
            part = "backbone"
            lid = layer_id(
                name, family=family, decay_type=decay_type, num_layers=num_layers, depths=depths
            )
        else:
            part, lid = "head", num_layers + 1
        buckets.setdefault((part, lid, no_decay), []).append(p)
    if not buckets:
        raise ValueError("the model has no trainable parameters")
    groups = []
    order = sorted(buckets, key=lambda k: (k[0] == "head", -k[1], k[2]))
    for part, lid, no_decay in order:
        mult = decay ** (num_layers + 1 - lid)
        if part == "head":
            mult *= head_lr_mult
        name = "head" if part == "head" else f"backbone_layer{lid}"
        groups.append(
            {
                "name": name + ("_no_decay" if no_decay else ""),
                "params": buckets[(part, lid, no_decay)],
                "lr": lr * mult,
                "initial_lr": lr * mult,
                "lr_mult": mult,
                "layer_id": lid,
                "weight_decay": 0.0 if no_decay else weight_decay,
            }
        )
    return groups


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov) or AdamW over :func:`param_groups` (or, with
    ``layer_decay``, :func:`layer_decay_groups`)."""
    if cfg.layer_decay is not None:
        groups = layer_decay_groups(
            model,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            decay=cfg.layer_decay,
            decay_type=cfg.layer_decay_type,
            num_layers=cfg.layer_decay_num_layers,
            head_lr_mult=cfg.head_lr_mult,
            decay_norm_and_bias=cfg.decay_norm_and_bias,
        )
    else:
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


SCHEDULES = ("poly", "cosine", "step", "constant")


def schedule_lr(
    it: int,
    base_lr: float,
    *,
    max_iters: int,
    name: str = "poly",
    power: float = 0.9,
    min_lr: float = 0.0,
    milestones: tuple[int, ...] | list[int] = (),
    gamma: float = 0.1,
    warmup_iters: int = 0,
    warmup_ratio: float = 1e-6,
) -> float:
    """The learning rate for (0-based) iteration ``it`` of a group whose base LR is ``base_lr``."""
    it = min(max(it, 0), max_iters)
    if name == "poly":
        lr = (base_lr - min_lr) * (1.0 - it / max_iters) ** power + min_lr
    elif name == "cosine":
        lr = min_lr + (base_lr - min_lr) * (1.0 + math.cos(math.pi * it / max_iters)) / 2.0
    elif name == "step":
        lr = base_lr * gamma ** sum(1 for m in milestones if m <= it)
    elif name == "constant":
        lr = base_lr
    else:
        raise ValueError(
            f"schedule.name: unknown schedule {name!r}; valid names: {', '.join(SCHEDULES)}"
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
        milestones: tuple[int, ...] | list[int] = (),
        gamma: float = 0.1,
        warmup_iters: int = 0,
        warmup_ratio: float = 1e-6,
        last_epoch: int = -1,
    ) -> None:
        if name not in SCHEDULES:
            raise ValueError(
                f"schedule.name: unknown schedule {name!r}; valid names: {', '.join(SCHEDULES)}"
            )
        self.max_iters = max_iters
        self.name = name
        self.power = power
        self.min_lr = min_lr
        self.milestones = [int(m) for m in milestones]
        self.gamma = gamma
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
                milestones=self.milestones,
                gamma=self.gamma,
                warmup_iters=self.warmup_iters,
                warmup_ratio=self.warmup_ratio,
            )
            for base in self.base_lrs
        ]


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, *, max_iters: int
) -> WarmupPolyLR:
    """The schedule described by the config's ``schedule`` section.

    Raises ``ConfigError`` when ``min_lr`` (poly, cosine) is above a group's base LR (with
    layer decay the lowest layers' LRs are small): its LR would rise instead of decay.
    """
    if cfg.name in ("poly", "cosine"):
        lowest = min(optimizer.param_groups, key=lambda g: g.get("initial_lr", g["lr"]))
        base = lowest.get("initial_lr", lowest["lr"])
        if cfg.min_lr > base:
            raise ConfigError(
                f"key 'schedule.min_lr': {cfg.min_lr} is above the base LR {base:.3g} of "
                f"parameter group {lowest.get('name', '?')!r} (layer decay / head_lr_mult): "
                "its LR would rise; lower schedule.min_lr (mmseg's layer-decay recipes use 0)"
            )
    return WarmupPolyLR(
        optimizer,
        max_iters=max_iters,
        name=cfg.name,
        power=cfg.power,
        min_lr=cfg.min_lr,
        milestones=list(cfg.milestones),
        gamma=cfg.gamma,
        warmup_iters=cfg.warmup_iters,
        warmup_ratio=cfg.warmup_ratio,
    )
