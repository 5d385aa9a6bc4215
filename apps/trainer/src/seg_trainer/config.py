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

import copy
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
    "EMAConfig",
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
    decay_norm_and_bias: bool = False  # False: no weight decay on norm weights, biases, nn.Embedding weights and Swin position tables
    head_lr_mult: float = 1.0  # LR multiplier for everything outside model.backbone
    # layer-wise LR decay (mmseg's LearningRateDecayOptimizerConstructor), timm ConvNeXt/Swin
    layer_decay: float | None = None  # decay rate, e.g. 0.9; null = off
    layer_decay_type: str = "layer_wise"  # "layer_wise" | "stage_wise"
    layer_decay_num_layers: int | None = None  # mmseg's num_layers; null = the backbone's own


@dataclass
class ScheduleConfig:
    """Poly, cosine or step decay of the LR by iteration, with linear warmup (seg_trainer.optim)."""

    name: str = "poly"  # "poly" | "cosine" | "step" | "constant"
    power: float = 0.9  # poly
    min_lr: float = 1e-4  # the floor (mmseg's eta_min) of poly and cosine; every parameter group
    milestones: list[int] = field(default_factory=list)  # step: iterations where the LR drops
    gamma: float = 0.1  # step: LR factor at each milestone
    warmup_iters: int = 0
    warmup_ratio: float = 1e-6  # LR factor at iteration 0 of the warmup (mmseg's warmup_ratio)


DEFAULT_AUX_WEIGHT = 0.4  # mmseg, PKUSeg, torchcv, CSAIL and the PSPNet paper


def _dataset_ignore_index() -> int:
    """The label value every seg_data dataset marks void pixels with (255)."""
    from seg_data import SegmentationDataset

    return int(SegmentationDataset.ignore_index)


def _default_loss_terms() -> dict[str, list[dict[str, Any]]]:
    return {"out": [{"name": "ce", "weight": 1.0}]}


@dataclass
class LossConfig:
    """Weighted loss terms per model output (seg_trainer.losses.SegmentationLoss).

    ``terms`` maps an output key (``out``, ``aux``, ``aux1``, ``boundary``, ``detail``, ...)
    to a list of terms ``{"name": ..., "weight": ..., **create_loss options}``. ``aux`` is
    the default of every ``aux*`` output without its own entry; without an ``aux`` entry
    either, an ``aux*`` output gets the ``out`` terms scaled by ``aux_weight``.
    ``ignore_index`` is the dataset's (``seg_data``'s void label, 255); a config need not
    state it, and any other value is refused when the config is loaded.

    In YAML the section is a list of terms (for ``out``), or a mapping of output keys to
    lists plus ``ignore_index`` / ``aux_weight``, or the older single-loss form
    ``{name: ce|ohem, class_weights, ohem_thresh, ohem_min_kept, aux_weight, ignore_index}``;
    :meth:`to_dict` writes the mapping form.
    """

    terms: dict[str, list[dict[str, Any]]] = field(default_factory=_default_loss_terms)
    aux_weight: float = DEFAULT_AUX_WEIGHT
    ignore_index: int = field(default_factory=_dataset_ignore_index)  # the dataset's (255)
    legacy: bool = field(default=False, compare=False, repr=False)  # read from the old form

    def to_dict(self) -> dict[str, Any]:
        """The YAML mapping form: ``{ignore_index, aux_weight, <output>: [terms], ...}``."""
        out: dict[str, Any] = {"ignore_index": self.ignore_index, "aux_weight": self.aux_weight}
        for key, terms in self.terms.items():
            out[key] = copy.deepcopy([dict(t) for t in terms])
        return out


@dataclass
class EMAConfig:
    """Exponential moving average of the weights (seg_trainer.ema.ModelEma).

    timm's ``ModelEmaV3`` semantics (timm/utils/model_ema.py), updated after every optimizer
    step with ``step`` = the iteration just finished (1-based), as timm's train.py: the decay
    of update ``step`` is 0 while ``step <= update_after_step + 1`` (the EMA becomes a copy),
    then ``decay``, or with ``warmup`` ``clamp(1 - (1 + n / warmup_gamma) ** -warmup_power,
    min_decay, decay)`` with ``n = step - update_after_step - 1``. Every floating-point entry
    of the state dict (parameters and BN statistics) is averaged and integer buffers copied;
    ``exclude_buffers: true`` averages parameters only and copies every buffer.
    """

    enabled: bool = False
    decay: float = 0.9999
    min_decay: float = 0.0
    warmup: bool = False  # timm's use_warmup
    warmup_gamma: float = 1.0
    warmup_power: float = 2 / 3
    update_after_step: int = 0
    exclude_buffers: bool = False


@dataclass
class TrainConfig:
    """The iteration-based loop; one iteration = one optimizer step."""

    max_iters: int = _req()
    log_interval: int = 50
    grad_accum: int = 1
    clip_grad: float | None = None  # max global grad norm; null = no clipping
    mixed_precision: str = "no"  # "no" | "fp16" | "bf16" (accelerate)
    sync_bn: bool = True  # convert BN to SyncBatchNorm when running on several CUDA GPUs
    ema: EMAConfig = field(default_factory=EMAConfig)  # evaluated and kept as best_ema.pth
    compile: bool = False  # torch.compile the model for training (nn.Module.compile)
    grad_checkpointing: bool = False  # recompute backbone blocks in backward (less memory)


def _validate_train(cfg: Config, ctx: _Ctx) -> None:
    """The ``train.ema`` numbers (their ranges as timm's ModelEmaV3 needs them)."""
    ema = cfg.train.ema
    for key, value in (("decay", ema.decay), ("min_decay", ema.min_decay)):
        if not (math.isfinite(value) and 0.0 <= value < 1.0):
            raise ctx.error(f"train.ema.{key}", f"must be in [0, 1), e.g. 0.9999, got {value!r}")
    if ema.min_decay > ema.decay:
        raise ctx.error(
            "train.ema.min_decay", f"{ema.min_decay} is above train.ema.decay={ema.decay}"
        )
    for key, value in (("warmup_gamma", ema.warmup_gamma), ("warmup_power", ema.warmup_power)):
        if not (math.isfinite(value) and value > 0):
            raise ctx.error(f"train.ema.{key}", f"must be > 0, got {value!r}")
    if ema.update_after_step < 0:
        raise ctx.error("train.ema.update_after_step", f"must be >= 0, got {ema.update_after_step}")


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
        data = dataclasses.asdict(self)
        data["loss"] = self.loss.to_dict()
        return data

    def to_yaml(self) -> str:
        """The fully resolved config as YAML text."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---------------------------------------------------------------------------------- conversion

_CHOICES: dict[str, tuple[Any, ...]] = {
    "optimizer.name": ("sgd", "adamw"),
    "optimizer.layer_decay_type": ("layer_wise", "stage_wise"),
    "schedule.name": ("poly", "cosine", "step", "constant"),
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
    if tp is LossConfig:
        return _loss_config(value, key, ctx)
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


# ------------------------------------------------------------------------- the loss section

_LEGACY_LOSS_KEYS = ("name", "ignore_index", "class_weights", "ohem_thresh", "ohem_min_kept")
_LEGACY_ONLY = ("name", "class_weights", "ohem_thresh", "ohem_min_kept")
_LOSS_SECTION_KEYS = ("ignore_index", "aux_weight")
_LOSS_FORMS = (
    "the loss section is a list of terms for 'out' ([{name: ce, weight: 1.0}, ...]), or a "
    "mapping of output keys (out, aux, aux1, boundary, detail, ...) to lists of terms plus "
    "ignore_index and aux_weight"
)


def _loss_term(value: Any, key: str, ctx: _Ctx) -> dict[str, Any]:
    """One term ``{name, weight, **options}`` (a bare string is ``{name: <it>}``)."""
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, Mapping):
        raise ctx.error(
            key, f"a loss term is a mapping {{name: ..., weight: ..., options}}, got {value!r}"
        )
    for k in value:
        if not isinstance(k, str):
            raise ctx.error(f"{key}.{k}", f"keys must be strings, got {type(k).__name__}")
    if "name" not in value:
        raise ctx.error(f"{key}.name", "missing: every loss term names its loss (e.g. ce, dice)")
    name = _convert(value["name"], str, f"{key}.name", ctx)
    weight = _convert(value.get("weight", 1.0), float, f"{key}.weight", ctx)
    if not math.isfinite(weight) or weight < 0:
        raise ctx.error(f"{key}.weight", f"must be >= 0, got {weight!r}")
    options = {k: v for k, v in value.items() if k not in ("name", "weight")}
    return {"name": name, "weight": weight, **options}


def _legacy_loss(value: Mapping[str, Any], key: str, ctx: _Ctx) -> LossConfig:
    """The single-loss form ``{name, ignore_index, class_weights, ohem_thresh, ohem_min_kept,
    aux_weight}`` as terms: ``out: [{name, class_weights, (thresh, min_kept)}]``, aux* outputs
    get the same term x ``aux_weight``, as before."""
    valid = (*_LEGACY_LOSS_KEYS, "aux_weight")
    for k in value:
        if k not in valid:
            close = difflib.get_close_matches(str(k), valid, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ctx.error(
                f"{key}.{k}",
                f"unknown key in the single-loss form of {key} (it has {', '.join(_LEGACY_ONLY)}"
                f"); {hint}valid keys: {', '.join(valid)}. Or use the term lists: {_LOSS_FORMS}",
            )
    name = _convert(value.get("name", "ce"), str, f"{key}.name", ctx)
    if name not in ("ce", "ohem"):
        close = difflib.get_close_matches(name, ["ce", "ohem"], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ctx.error(
            f"{key}.name",
            f"{name!r} is not one of ['ce', 'ohem']{hint}; other losses take the term-list "
            f"form: {_LOSS_FORMS}",
        )
    term: dict[str, Any] = {"name": name, "weight": 1.0}
    weights = _convert(value.get("class_weights"), list[float] | None, f"{key}.class_weights", ctx)
    if weights is not None:
        term["class_weights"] = weights
    if name == "ohem":
        term["thresh"] = _convert(value.get("ohem_thresh", 0.7), float, f"{key}.ohem_thresh", ctx)
        term["min_kept"] = _convert(
            value.get("ohem_min_kept", 100000), int, f"{key}.ohem_min_kept", ctx
        )
    aux_weight = _convert(
        value.get("aux_weight", DEFAULT_AUX_WEIGHT), float, f"{key}.aux_weight", ctx
    )
    ignore = _convert(value.get("ignore_index"), int | None, f"{key}.ignore_index", ctx)
    return LossConfig(
        terms={"out": [term]},
        aux_weight=aux_weight,
        ignore_index=_dataset_ignore_index() if ignore is None else ignore,
        legacy=True,
    )


def _loss_config(value: Any, key: str, ctx: _Ctx) -> LossConfig:
    """Read any of the three YAML forms of the loss section (see :class:`LossConfig`)."""
    if value is None:
        value = {}
    if isinstance(value, (list, tuple)):
        value = {"out": list(value)}
    if not isinstance(value, Mapping):
        raise ctx.error(
            key, f"expected a list or a mapping, got {_value_repr(value)}; {_LOSS_FORMS}"
        )
    if any(k in value for k in _LEGACY_ONLY):
        outputs = [
            k for k, v in value.items() if isinstance(v, (list, tuple)) and k != "class_weights"
        ]
        if outputs:
            raise ctx.error(
                f"{key}.{outputs[0]}",
                f"the single-loss keys ({', '.join(k for k in _LEGACY_ONLY if k in value)}) "
                "cannot be mixed with term lists; move them into the terms, e.g. "
                "out: [{name: ohem, thresh: 0.7, min_kept: 100000, class_weights: [...]}]",
            )
        return _legacy_loss(value, key, ctx)
    terms: dict[str, list[dict[str, Any]]] = {}
    for out_key, items in value.items():
        if out_key in _LOSS_SECTION_KEYS:
            continue
        full = f"{key}.{out_key}"
        if not isinstance(out_key, str):
            raise ctx.error(full, f"keys must be strings, got {type(out_key).__name__}")
        if not isinstance(items, (list, tuple)):
            choices = [*_LOSS_SECTION_KEYS, *_LEGACY_ONLY, "aux_weight"]
            close = difflib.get_close_matches(out_key, choices, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ctx.error(
                full,
                f"expected a list of loss terms for output '{out_key}', got "
                f"{_value_repr(items)}; {hint}{_LOSS_FORMS}",
            )
        terms[out_key] = [_loss_term(t, f"{full}.{i}", ctx) for i, t in enumerate(items)]
    if not terms:
        terms = _default_loss_terms()
    elif "out" not in terms:
        raise ctx.error(
            f"{key}.out",
            f"missing: the terms of the main output 'out' (given: {', '.join(terms)})",
        )
    aux_weight = _convert(
        value.get("aux_weight", DEFAULT_AUX_WEIGHT), float, f"{key}.aux_weight", ctx
    )
    if not math.isfinite(aux_weight) or aux_weight < 0:
        raise ctx.error(f"{key}.aux_weight", f"must be >= 0, got {aux_weight!r}")
    ignore = _convert(value.get("ignore_index"), int | None, f"{key}.ignore_index", ctx)
    return LossConfig(
        terms=terms,
        aux_weight=aux_weight,
        ignore_index=_dataset_ignore_index() if ignore is None else ignore,
    )


def _validate_loss(cfg: Config, ctx: _Ctx) -> None:
    """``loss.ignore_index`` must be the dataset's; every term is checked by building it."""
    loss = cfg.loss
    void = _dataset_ignore_index()
    if loss.ignore_index != void:
        raise ctx.error(
            "loss.ignore_index",
            f"{loss.ignore_index}, but dataset {cfg.data.dataset!r} marks void pixels as "
            f"{void}: they would be trained as class {void}, which does not exist. Remove the "
            f"key (the loss takes the dataset's ignore index) or set loss.ignore_index: {void}",
        )
    from .losses import build_loss

    build_loss(
        loss,
        align_corners=cfg.model.align_corners,
        num_classes=cfg.model.num_classes,
        error=ctx.error,
    )


def _validate_schedule(cfg: Config, ctx: _Ctx) -> None:
    """The step schedule's milestones and gamma; the layer-decay settings."""
    sch, opt = cfg.schedule, cfg.optimizer
    if sch.name == "step":
        if not sch.milestones:
            raise ctx.error(
                "schedule.milestones", "'step' needs a list of iterations, e.g. [60000, 80000]"
            )
        if any(m <= 0 for m in sch.milestones) or sorted(set(sch.milestones)) != sch.milestones:
            raise ctx.error(
                "schedule.milestones",
                f"must be increasing positive iterations, got {sch.milestones}",
            )
        if not math.isfinite(sch.gamma) or not 0.0 < sch.gamma <= 1.0:
            raise ctx.error("schedule.gamma", f"must be in (0, 1], got {sch.gamma!r}")
    elif sch.milestones:
        raise ctx.error(
            "schedule.milestones", f"applies to schedule.name 'step' only (name is {sch.name!r})"
        )
    if opt.layer_decay is not None and not (
        math.isfinite(opt.layer_decay) and 0.0 < opt.layer_decay <= 1.0
    ):
        raise ctx.error("optimizer.layer_decay", f"must be in (0, 1], got {opt.layer_decay!r}")
    if opt.layer_decay_num_layers is not None and opt.layer_decay_num_layers < 1:
        raise ctx.error(
            "optimizer.layer_decay_num_layers", f"must be >= 1, got {opt.layer_decay_num_layers}"
        )


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
    _validate_schedule(cfg, ctx)
    _validate_train(cfg, ctx)
    _validate_loss(cfg, ctx)
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
