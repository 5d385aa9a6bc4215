"""Run configuration: one YAML file -> typed dataclasses.

A config file shows everything a run builds (no inheritance, no ``type=``
strings beyond the packages' own ``create_*`` names). It is read with
``yaml.safe_load`` and converted section by section into the dataclasses
below. Unknown keys, wrong types, bad choices and missing required values raise
:class:`ConfigError`, whose message names the file, the dotted key, the value
and (for typos) the nearest valid key.

Command-line overrides use dotted keys, the value being parsed as YAML::

    seg-train --config run.yaml --set optimizer.lr=0.02 data.root=/data/cityscapes \\
        --set model.backbone_kwargs.contract_dilation=false data.train_transforms.1.RandomCrop.size=[512,512]

Integers in a dotted key index lists (``data.train_transforms.1``).

YAML is read strictly: a key given twice in one mapping is an error (plain YAML keeps the
last one silently), and numbers in exponent notation without a dot (``1e3``, ``1e-45``,
YAML 1.1 reads them as strings) are numbers; a float with an integral value (``4e4``) is
accepted for an integer key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

__all__ = [
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvaluationConfig",
    "LoggingConfig",
    "LossConfig",
    "ModelConfig",
    "OptimizerConfig",
    "ScheduleConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "load_config",
    "yaml_load",
]


class ConfigError(ValueError):
    """A configuration problem; the message names the file, the key and the fix."""


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects duplicate keys and reads ``1e3`` as a number."""

    source = "<text>"

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *base" may override keys
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.setdefault(key, line)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if first != line or seen.get(("__count", key)):
                raise ConfigError(
                    f"{self.source}:{line}: key {key!r} appears twice in one mapping (lines "
                    f"{first} and {line}); YAML would silently keep only the last value: "
                    "remove one"
                )
            seen[("__count", key)] = 1
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 needs a dot in a float ("1.0e-4"); "1e-4" and "1e3" would be strings.
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def yaml_load(text: str, source: str = "<text>") -> Any:
    """Parse YAML strictly (see the module docstring); errors are :class:`ConfigError`."""
    loader = _StrictLoader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()


class _Required:
    """Marker default for fields that a config file must set."""

    def __repr__(self) -> str:
        return "<required>"


REQUIRED: Any = _Required()


def _req() -> Any:
    return field(default=REQUIRED)


@dataclass
class ModelConfig:
    """Exactly the keyword arguments of ``seg_heads.create_model(name, **rest)``."""

    name: str = _req()  # "pspnet" | "deeplabv3" | "denseaspp" | "fcn" (seg_heads.list_models())
    backbone: str = _req()  # e.g. "resnet101_deep" (seg_backbones.list_backbones())
    num_classes: int = _req()
    output_stride: int | None = None  # None: the model's default (8 dilated heads, 32 multi-level)
    aux: bool = True
    align_corners: bool = False
    pretrained_backbone: str | None = None  # local path to backbone weights (never downloaded)
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    head_kwargs: dict[str, Any] = field(default_factory=dict)
    aux_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Dataset (``seg_data.create_dataset``), transforms and loaders.

    ``batch_size`` is the TOTAL number of images per forward/backward step over
    all processes (accelerate ``split_batches``): it must be divisible by the
    number of processes, and each process gets ``batch_size / num_processes``.
    One optimizer step sees ``batch_size * train.grad_accum`` images.
    """

    dataset: str = _req()  # seg_data.list_datasets()
    root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    test_split: str | None = None
    dataset_options: dict[str, Any] = field(default_factory=dict)
    train_transforms: list[dict[str, Any]] = field(default_factory=list)
    val_transforms: list[dict[str, Any]] = field(default_factory=list)
    batch_size: int = 8
    num_workers: int = 4


@dataclass
class OptimizerConfig:
    """SGD (or AdamW) over four parameter groups: backbone/head x decay/no-decay."""

    name: str = "sgd"  # "sgd" | "adamw"
    lr: float = 0.01
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    weight_decay: float = 5e-4
    decay_norm_and_bias: bool = False  # False: no weight decay on norm weights and biases
    head_lr_mult: float = 1.0  # LR multiplier for everything outside model.backbone


@dataclass
class ScheduleConfig:
    """Poly decay ``(lr - min_lr) * (1 - it / max_iters) ** power + min_lr`` with linear warmup."""

    name: str = "poly"  # "poly" | "constant"
    power: float = 0.9
    min_lr: float = 1e-4  # the floor (mmseg's eta_min); applies to every parameter group
    warmup_iters: int = 0
    warmup_ratio: float = 1e-6  # LR factor at iteration 0 of the warmup (mmseg's warmup_ratio)


@dataclass
class LossConfig:
    """Cross-entropy on ``out`` (+ ``aux_weight`` x the same loss on ``aux``)."""

    name: str = "ce"  # "ce" | "ohem"
    ignore_index: int = 255
    class_weights: list[float] | None = None
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 100000  # per process and forward step
    aux_weight: float = 0.4


@dataclass
class TrainConfig:
    """The iteration-based loop; one iteration = one optimizer step."""

    max_iters: int = _req()
    log_interval: int = 50
    grad_accum: int = 1
    clip_grad: float | None = None  # max global grad norm; null = no clipping
    mixed_precision: str = "no"  # "no" | "fp16" | "bf16" (accelerate)
    sync_bn: bool = True  # convert BN to SyncBatchNorm when running on several CUDA GPUs


@dataclass
class EvaluationConfig:
    """Evaluation during (every ``interval`` iterations) and at the end of training."""

    interval: int = 0  # 0 = only at the end
    mode: str = "whole"  # "whole" | "slide" | "multiscale"
    crop_size: list[int] | None = None  # [h, w] (slide)
    stride: list[int] | None = None  # [h, w] (slide)
    scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False
    batch_size: int = 1  # per process
    save_predictions: bool = False


@dataclass
class CheckpointConfig:
    """Checkpoints in ``<output_dir>/checkpoints``: ``iter_XXXXXXX.pth`` and ``best.pth``."""

    interval: int = 1000  # iterations between checkpoints (0 = only at the end)
    keep_last: int = 3  # iteration checkpoints kept (older ones are deleted)
    keep_best: bool = True  # keep best.pth (highest val mIoU)


@dataclass
class LoggingConfig:
    """Progress bar, JSON lines (always) and TensorBoard (when installed)."""

    tensorboard: bool = True
    progress_bar: bool = True
    num_vis: int = 4  # val images in the prediction grid at the end (0 = none)


@dataclass
class Config:
    """A whole run. ``output_dir`` receives everything the run writes."""

    output_dir: str = _req()
    seed: int = 0
    deterministic: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved config as plain YAML/JSON-able data (round-trips)."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """The fully resolved config as YAML text."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---------------------------------------------------------------------------------- conversion

_CHOICES: dict[str, tuple[Any, ...]] = {
    "optimizer.name": ("sgd", "adamw"),
    "schedule.name": ("poly", "constant"),
    "loss.name": ("ce", "ohem"),
    "train.mixed_precision": ("no", "fp16", "bf16"),
    "evaluation.mode": ("whole", "slide", "multiscale"),
    "model.output_stride": (None, 8, 16, 32),
}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{origin.__name__}[{args}]"
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any"
    return getattr(tp, "__name__", str(tp))


def _value_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _Ctx:
    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, key: str, message: str) -> ConfigError:
        where = f"{self.source}: " if self.source else ""
        return ConfigError(f"{where}key '{key}': {message}")


def _convert(value: Any, tp: Any, key: str, ctx: _Ctx) -> Any:
    """Check/convert ``value`` to the annotated type ``tp``; raise naming ``key``."""
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, ctx)
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ctx.error(key, f"must be set (expected {_type_name(tp)}), got null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, ctx)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    bad = ctx.error(
        key, f"expected {_type_name(tp)}, got {type(value).__name__} {_value_repr(value)}"
    )
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{key}.{i}", ctx) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise bad
        _, val_tp = typing.get_args(tp)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ctx.error(f"{key}.{k}", f"keys must be strings, got {type(k).__name__}")
            out[k] = _convert(v, val_tp, f"{key}.{k}", ctx)
        return out
    if tp is bool:
        if not isinstance(value, bool):
            raise ctx.error(key, f"expected true or false, got {_value_repr(value)}")
        return value
    if tp is int:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)  # 4e4 iterations
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML 1.1 reads "1e-4" (no dot) as a string; accept it as a float.
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    raise bad from None
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported config annotation {tp!r} at {key}")  # programming error


def _build(cls: type, data: Any, prefix: str, ctx: _Ctx) -> Any:
    section = prefix or "top level"
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ctx.error(section, f"expected a mapping of keys, got {_value_repr(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in data:
        if k not in fields:
            full = f"{prefix}.{k}" if prefix else str(k)
            close = difflib.get_close_matches(str(k), list(fields), n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ctx.error(
                full, f"unknown key in {section}; {hint}valid keys: {', '.join(fields)}"
            )
    kwargs = {}
    for name, f in fields.items():
        full = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], full, ctx)
        elif f.default is REQUIRED:
            raise ctx.error(full, f"missing required value ({_type_name(hints[name])})")
        elif dataclasses.is_dataclass(hints[name]):
            kwargs[name] = _build(hints[name], {}, full, ctx)
    return cls(**kwargs)


def _validate(cfg: Config, ctx: _Ctx) -> None:
    if not cfg.output_dir.strip():
        raise ctx.error(
            "output_dir", "is empty; name the folder that receives the run, e.g. work_dirs/run1"
        )
    for key, choices in _CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ctx.error(key, f"{value!r} is not one of {list(choices)}{hint}")

    def positive(key: str, value: float, *, zero_ok: bool = False) -> None:
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
            need = ">= 0" if zero_ok else "> 0"
            raise ctx.error(key, f"must be {need}, got {value!r}")

    positive("model.num_classes", cfg.model.num_classes)
    positive("data.batch_size", cfg.data.batch_size)
    positive("data.num_workers", cfg.data.num_workers, zero_ok=True)
    positive("optimizer.lr", cfg.optimizer.lr)
    positive("optimizer.momentum", cfg.optimizer.momentum, zero_ok=True)
    positive("optimizer.weight_decay", cfg.optimizer.weight_decay, zero_ok=True)
    positive("optimizer.head_lr_mult", cfg.optimizer.head_lr_mult)
    positive("schedule.power", cfg.schedule.power, zero_ok=True)
    positive("schedule.min_lr", cfg.schedule.min_lr, zero_ok=True)
    positive("schedule.warmup_iters", cfg.schedule.warmup_iters, zero_ok=True)
    positive("schedule.warmup_ratio", cfg.schedule.warmup_ratio, zero_ok=True)
    positive("loss.aux_weight", cfg.loss.aux_weight, zero_ok=True)
    positive("loss.ohem_min_kept", cfg.loss.ohem_min_kept, zero_ok=True)
    positive("train.max_iters", cfg.train.max_iters)
    positive("train.log_interval", cfg.train.log_interval)
    positive("train.grad_accum", cfg.train.grad_accum)
    positive("evaluation.interval", cfg.evaluation.interval, zero_ok=True)
    positive("evaluation.batch_size", cfg.evaluation.batch_size)
    positive("checkpoint.interval", cfg.checkpoint.interval, zero_ok=True)
    positive("checkpoint.keep_last", cfg.checkpoint.keep_last)
    positive("logging.num_vis", cfg.logging.num_vis, zero_ok=True)
    if cfg.train.clip_grad is not None:
        positive("train.clip_grad", cfg.train.clip_grad)
    if cfg.schedule.min_lr > cfg.optimizer.lr:
        raise ctx.error(
            "schedule.min_lr",
            f"the floor {cfg.schedule.min_lr} is above optimizer.lr={cfg.optimizer.lr}",
        )
    if not 0.0 < cfg.loss.ohem_thresh <= 1.0:
        raise ctx.error("loss.ohem_thresh", f"must be in (0, 1], got {cfg.loss.ohem_thresh}")
    weights = cfg.loss.class_weights
    if weights is not None:
        if len(weights) != cfg.model.num_classes:
            raise ctx.error(
                "loss.class_weights",
                f"has {len(weights)} values but model.num_classes is {cfg.model.num_classes}",
            )
        if not all(math.isfinite(w) and w >= 0 for w in weights):
            raise ctx.error("loss.class_weights", f"values must be finite and >= 0: {weights}")
    ev = cfg.evaluation
    for key, pair in (("evaluation.crop_size", ev.crop_size), ("evaluation.stride", ev.stride)):
        if pair is not None and (len(pair) != 2 or min(pair) <= 0):
            raise ctx.error(key, f"must be two positive integers [h, w], got {pair}")
    if ev.mode == "slide" and (ev.crop_size is None or ev.stride is None):
        raise ctx.error(
            "evaluation.mode",
            "'slide' needs evaluation.crop_size and evaluation.stride ([h, w] each)",
        )
    if not ev.scales or min(ev.scales) <= 0:
        raise ctx.error(
            "evaluation.scales", f"must be a non-empty list of positive floats, got {ev.scales}"
        )
    for key, transforms in (
        ("data.train_transforms", cfg.data.train_transforms),
        ("data.val_transforms", cfg.data.val_transforms),
    ):
        for i, t in enumerate(transforms):
            if len(t) != 1:
                raise ctx.error(
                    f"{key}.{i}",
                    "each transform is a one-key mapping {Name: {options}}, "
                    f"got keys {list(t)}",
                )


def config_from_dict(data: Mapping[str, Any], *, source: str = "") -> Config:
    """Build and validate a :class:`Config` from plain data (e.g. a checkpoint's ``"config"``)."""
    ctx = _Ctx(source)
    cfg = _build(Config, data, "", ctx)
    _validate(cfg, ctx)
    return cfg


# ------------------------------------------------------------------------------------ overrides


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(
            f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. optimizer.lr=0.02"
        )
    try:
        value = yaml_load(raw, f"--set {item!r}") if raw.strip() else None
    except ConfigError as exc:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({exc})") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a raw config mapping in place.

    Missing intermediate mappings are created; integer parts index lists. Unknown
    keys are reported later, by the schema, like keys in the file.
    """
    for item in overrides:
        parts, value = _parse_override(item)
        node: Any = data
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                try:
                    index = int(part)
                    node[index]
                except (ValueError, IndexError):
                    raise ConfigError(
                        f"--set {item!r}: '{where}' indexes a list of {len(node)} items; "
                        f"use an integer 0..{len(node) - 1}"
                    ) from None
                if last:
                    node[index] = value
                else:
                    node = node[index]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    if node.get(part) is None:
                        node[part] = {}
                    node = node[part]
            else:
                parent = ".".join(parts[:depth]) or "top level"
                raise ConfigError(
                    f"--set {item!r}: '{parent}' is a {type(node).__name__} ({_value_repr(node)}), "
                    "not a mapping; set it as a whole instead"
                )
    return data


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config file, apply ``--set`` style overrides and validate it.

    Raises:
        FileNotFoundError: the file does not exist.
        ConfigError: bad YAML, unknown key (with the nearest valid key), wrong type,
            invalid choice or missing required value; the message names the file and key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    data = yaml_load(path.read_text(encoding="utf-8"), str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of sections, got {type(data).__name__}"
        )
    source = str(path) + (" (with --set overrides)" if overrides else "")
    apply_overrides(data, overrides)
    return config_from_dict(data, source=source)
