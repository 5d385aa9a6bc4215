"""Turn peer checkpoints (torchvision, mmsegmentation) into ready PKUSeg models.

```python
from seg_heads.convert import from_torchvision, from_mmseg
model = from_torchvision("deeplabv3_resnet50.pth", arch="deeplabv3_resnet50")
model = from_mmseg("pspnet_r50-d8_512x1024_40k_cityscapes.pth", arch="pspnet_r50-d8")
model(x)["out"]   # the peer's logits on the same (already normalised) input
```

Every converted model is built by :func:`seg_heads.create_model` and carries
``model.build_config`` (``create_model(**build_config)`` rebuilds the
architecture) and ``model.input_norm`` (the normalisation the weights expect).
``num_classes``, the auxiliary head and the head widths are read from the
weights; what the weights cannot tell (atrous rates, ``align_corners``) comes
from ``arch`` and the arguments.

Files are read with ``torch.load(..., weights_only=True)``. The only extra
types allowed are the numpy scalar, dtype and array reconstructors that the
model zoos' ``meta`` dicts contain; anything else fails with an explanation
(there is no fallback to full unpickling).
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .model import IMAGENET_RGB, SegmentationModel, create_model

__all__ = [
    "MMSEG_ARCHS",
    "TORCHVISION_ARCHS",
    "convert",
    "from_mmseg",
    "from_torchvision",
    "load_checkpoint",
]

StateDictSource = str | os.PathLike[str] | Mapping[str, Any]

# arch -> (model name, backbone name)
TORCHVISION_ARCHS: dict[str, tuple[str, str]] = {
    "deeplabv3_resnet50": ("deeplabv3", "resnet50"),
    "deeplabv3_resnet101": ("deeplabv3", "resnet101"),
    "fcn_resnet50": ("fcn", "resnet50"),
    "fcn_resnet101": ("fcn", "resnet101"),
}
"""torchvision ``models.segmentation`` builders that :func:`from_torchvision` converts."""

# arch -> (model name, backbone name); all use mmseg's D8 setting: strides (1, 2, 1, 1),
# dilations (1, 1, 2, 4), contract_dilation=True, ASPP dilations (1, 12, 24, 36).
MMSEG_ARCHS: dict[str, tuple[str, str]] = {
    "pspnet_r50-d8": ("pspnet", "resnet50_v1c"),
    "pspnet_r101-d8": ("pspnet", "resnet101_v1c"),
    "deeplabv3_r50-d8": ("deeplabv3", "resnet50_v1c"),
    "deeplabv3_r101-d8": ("deeplabv3", "resnet101_v1c"),
    "fcn_r50-d8": ("fcn", "resnet50_v1c"),
    "fcn_r101-d8": ("fcn", "resnet101_v1c"),
}
"""mmsegmentation config prefixes that :func:`from_mmseg` converts (ResNetV1c, output stride 8)."""


# ----------------------------------------------------------------------------- loading


def _zoo_safe_globals() -> list[Any]:
    """numpy reconstructors found in model-zoo ``meta`` dicts: plain data, no code.

    Empty without numpy (the ``zoo`` extra): such files then fail to load, explaining why.
    """
    try:
        import numpy as np
    except ImportError:
        return []

    multiarray = np._core.multiarray
    dtype_classes = [
        getattr(np.dtypes, n)
        for n in dir(np.dtypes)
        if n.endswith("DType") and n not in ("ObjectDType", "VoidDType", "StringDType")
    ]
    return [
        multiarray.scalar,
        (multiarray.scalar, "numpy.core.multiarray.scalar"),  # numpy 1.x pickles
        multiarray._reconstruct,
        (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        *dtype_classes,
    ]


def load_checkpoint(src: StateDictSource) -> dict[str, Tensor]:
    """Read a state dict from a path or a mapping, unwrapping the zoos' containers.

    Accepts a bare state dict, or a dict holding it under ``"state_dict"`` (mmseg,
    mmcv/mmengine, with ``"meta"`` beside it) or ``"model"`` (torchvision's reference
    scripts); strips a ``module.`` prefix (DataParallel/DDP) when every key has it.
    """
    where = "the given mapping"
    if isinstance(src, Mapping):
        obj: Any = src
    else:
        where = os.fspath(src)
        if not os.path.isfile(where):
            raise FileNotFoundError(f"checkpoint file not found: {where!r}")
        try:
            with torch.serialization.safe_globals(_zoo_safe_globals()):
                obj = torch.load(where, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise RuntimeError(
                f"{where}: torch.load(weights_only=True) refused an object in this file, and "
                "seg_heads never falls back to full unpickling (it can run arbitrary code). "
                "If you trust the file, re-save its weights alone (the 'state_dict' tensors) "
                f"to a new file in a trusted environment and convert that. Original error: {e}"
            ) from e
    if not isinstance(obj, Mapping):
        raise TypeError(f"{where}: expected a state dict (a mapping), got {type(obj).__name__}")
    for wrapper in ("state_dict", "model"):
        if wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
            break
    sd = dict(obj)
    bad = [k for k, v in sd.items() if not isinstance(v, Tensor)]
    if bad:
        raise TypeError(
            f"{where}: not a state dict: non-tensor entries {bad[:8]} (top-level keys "
            f"{list(sd)[:8]}); expected tensors, or a dict with the weights under "
            "'state_dict' or 'model'"
        )
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _match_arch(arch: str, table: Mapping[str, Any], what: str) -> str:
    """``arch`` itself or the known name it starts with (config names carry suffixes)."""
    if arch in table:
        return arch
    hits = [k for k in table if arch.startswith(k + "_")]
    if hits:
        return max(hits, key=len)
    raise KeyError(f"unknown {what} arch {arch!r}; valid archs are {sorted(table)}")


def _rename(
    sd: Mapping[str, Tensor], rules: list[tuple[str, str]], where: str
) -> dict[str, Tensor]:
    """Rename every key by the first matching ``(regex, replacement)``; unmatched keys fail."""
    out: dict[str, Tensor] = {}
    unmatched: list[str] = []
    for key, value in sd.items():
        for pattern, repl in rules:
            new, n = re.subn(f"^{pattern}$", repl, key)
            if n:
                out[new] = value
                break
        else:
            unmatched.append(key)
    if unmatched:
        raise KeyError(
            f"{where}: {len(unmatched)} keys match no known layout, e.g. {unmatched[:8]}; "
            "is `arch` right for this checkpoint?"
        )
    return out


def _convert_backbone(
    sd: Mapping[str, Tensor], source: str, backbone: nn.Module
) -> dict[str, Tensor]:
    from seg_backbones import convert_state_dict

    return dict(convert_state_dict(dict(sd), source=source, model=backbone))


def _load_strict(model: nn.Module, sd: Mapping[str, Tensor], where: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    mismatched = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in sd and sd[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        raise RuntimeError(
            f"{where}: the converted weights do not fit the model "
            f"(build_config={getattr(model, 'build_config', None)}): "
            f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}, "
            f"shape mismatches {mismatched[:8]}. Check `arch` and that the file is complete."
        )
    model.load_state_dict(sd, strict=True)


def _split(sd: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def _require(sd: Mapping[str, Tensor], key: str, where: str) -> Tensor:
    if key not in sd:
        raise KeyError(
            f"{where}: expected key {key!r} is missing; keys start with "
            f"{sorted({k.split('.')[0] for k in sd})}. Is `arch` right for this checkpoint?"
        )
    return sd[key]


def _convert(
    sd: dict[str, Tensor],
    *,
    where: str,
    build: dict[str, Any],
    backbone_source: str,
    head_prefixes: tuple[str, ...],
    rules: list[tuple[str, str]],
    input_norm: dict[str, Any],
) -> SegmentationModel:
    model = create_model(**build)
    head_sd = {k: v for k, v in sd.items() if not k.startswith("backbone.")}
    unknown = sorted({k.split(".")[0] for k in head_sd} - set(head_prefixes))
    if unknown:
        raise KeyError(
            f"{where}: unexpected top-level keys {unknown}; this converter knows "
            f"{['backbone', *head_prefixes]}. Is `arch` right for this checkpoint?"
        )
    new_sd = {
        f"backbone.{k}": v
        for k, v in _convert_backbone(
            _split(sd, "backbone."), backbone_source, model.backbone
        ).items()
    }
    new_sd.update(_rename(head_sd, rules, where))
    _load_strict(model, new_sd, where)
    model.input_norm = dict(input_norm)
    return model


# ----------------------------------------------------------------------------- torchvision

# torchvision DeepLabHead / FCNHead (nn.Sequential indices) -> PKUSeg names
_TV_ASPP_RULES: list[tuple[str, str]] = [
    (r"classifier\.0\.convs\.([0-3])\.0\.(.+)", r"decode_head.aspp_modules.\1.conv.\2"),
    (r"classifier\.0\.convs\.([0-3])\.1\.(.+)", r"decode_head.aspp_modules.\1.bn.\2"),
    (r"classifier\.0\.convs\.4\.1\.(.+)", r"decode_head.image_pool.1.conv.\1"),
    (r"classifier\.0\.convs\.4\.2\.(.+)", r"decode_head.image_pool.1.bn.\1"),
    (r"classifier\.0\.project\.0\.(.+)", r"decode_head.project.conv.\1"),
    (r"classifier\.0\.project\.1\.(.+)", r"decode_head.project.bn.\1"),
    (r"classifier\.1\.(.+)", r"decode_head.bottleneck.conv.\1"),
    (r"classifier\.2\.(.+)", r"decode_head.bottleneck.bn.\1"),
    (r"classifier\.4\.(.+)", r"decode_head.conv_seg.\1"),
]
_TV_FCN_RULES: list[tuple[str, str]] = [
    (r"classifier\.0\.(.+)", r"decode_head.convs.0.conv.\1"),
    (r"classifier\.1\.(.+)", r"decode_head.convs.0.bn.\1"),
    (r"classifier\.4\.(.+)", r"decode_head.conv_seg.\1"),
]
_TV_AUX_RULES: list[tuple[str, str]] = [
    (r"aux_classifier\.0\.(.+)", r"aux_head.convs.0.conv.\1"),
    (r"aux_classifier\.1\.(.+)", r"aux_head.convs.0.bn.\1"),
    (r"aux_classifier\.4\.(.+)", r"aux_head.conv_seg.\1"),
]


def from_torchvision(src: StateDictSource, *, arch: str) -> SegmentationModel:
    """Build the PKUSeg twin of a torchvision segmentation model and load its weights.

    Args:
        src: path of a ``.pth`` file or a state dict of
            ``torchvision.models.segmentation.<arch>`` (with or without ``aux_classifier``).
        arch: one of :data:`TORCHVISION_ARCHS` (``"deeplabv3_resnet50"``, ...).

    The twin: torchvision ResNet backbone (7x7 stem) at output stride 8 with
    contracted dilation (``replace_stride_with_dilation=[False, True, True]``),
    the ``variant="torchvision"`` head, ``align_corners=False``, ``num_classes``
    read from ``classifier.4.weight``; ``input_norm`` is ImageNet RGB (torchvision's
    mean/std x 255). Outputs equal torchvision's (``"out"`` and ``"aux"``).
    """
    arch = _match_arch(arch, TORCHVISION_ARCHS, "torchvision")
    name, backbone = TORCHVISION_ARCHS[arch]
    where = f"from_torchvision({arch!r})"
    sd = load_checkpoint(src)
    num_classes = int(_require(sd, "classifier.4.weight", where).shape[0])
    aux = any(k.startswith("aux_classifier.") for k in sd)
    build = {
        "name": name,
        "backbone": backbone,
        "num_classes": num_classes,
        "output_stride": 8,
        "aux": aux,
        "align_corners": False,
        "pretrained_backbone": None,
        "backbone_kwargs": {"contract_dilation": True},
        "head_kwargs": {"variant": "torchvision"},
        "aux_kwargs": {"variant": "torchvision"},
    }
    rules = (_TV_ASPP_RULES if name == "deeplabv3" else _TV_FCN_RULES) + _TV_AUX_RULES
    return _convert(
        sd,
        where=where,
        build=build,
        backbone_source="torchvision",
        head_prefixes=("classifier", "aux_classifier"),
        rules=rules,
        input_norm=IMAGENET_RGB,
    )


# ----------------------------------------------------------------------------- mmseg

# PKUSeg heads use mmseg's module names; only the auxiliary head's prefix differs.
_MMSEG_RULES: list[tuple[str, str]] = [
    (r"decode_head\.(.+)", r"decode_head.\1"),
    (r"auxiliary_head\.(.+)", r"aux_head.\1"),
]


def _fcn_options(sd: Mapping[str, Tensor], prefix: str) -> dict[str, Any]:
    """FCNHead width, depth and ``concat_input`` as stored in mmseg weights."""
    n = 0
    while f"{prefix}convs.{n}.conv.weight" in sd:
        n += 1
    return {
        "variant": "mmseg",
        "channels": int(sd[f"{prefix}convs.0.conv.weight"].shape[0]),
        "num_convs": n,
        "concat_input": f"{prefix}conv_cat.conv.weight" in sd,
        "kernel_size": int(sd[f"{prefix}convs.0.conv.weight"].shape[-1]),
    }


def from_mmseg(
    src: StateDictSource, *, arch: str, align_corners: bool = False
) -> SegmentationModel:
    """Build the PKUSeg twin of an mmsegmentation model and load its weights.

    Args:
        src: path of an mmseg model-zoo ``.pth`` (``{"meta": ..., "state_dict": ...}``) or
            a state dict with mmseg keys (``backbone.stem.*``, ``backbone.layerN.*``,
            ``decode_head.*``, ``auxiliary_head.*``).
        arch: one of :data:`MMSEG_ARCHS`, or a config name starting with one
            (``"pspnet_r50-d8_512x1024_40k_cityscapes"``).
        align_corners: the config's ``align_corners`` (mmseg: False, but True in its
            769x769 Cityscapes configs); used by the heads and the final resize.

    The twin: ``resnet{50,101}_v1c`` at output stride 8 with ``contract_dilation=True``;
    mmseg heads with ``num_classes`` from ``decode_head.conv_seg.weight`` and widths and
    the auxiliary head (mmseg ``FCNHead`` on layer3) read from the weights;
    ``input_norm`` is mmseg's RGB mean/std. Outputs equal mmseg's
    ``EncoderDecoder`` logits resized to the input (``"out"``; ``"aux"`` as its aux head).
    """
    arch = _match_arch(arch, MMSEG_ARCHS, "mmseg")
    name, backbone = MMSEG_ARCHS[arch]
    where = f"from_mmseg({arch!r})"
    sd = load_checkpoint(src)
    num_classes = int(_require(sd, "decode_head.conv_seg.weight", where).shape[0])
    if name == "fcn":
        head_kwargs = _fcn_options(sd, "decode_head.")
    else:
        width_key = "decode_head.bottleneck.conv.weight"
        head_kwargs = {"channels": int(_require(sd, width_key, where).shape[0])}
        if name == "pspnet":
            n_bins = sum(
                1 for k in sd if re.fullmatch(r"decode_head\.psp_modules\.\d+\.1\.conv\.weight", k)
            )
            if n_bins != 4:
                raise ValueError(
                    f"{where}: {n_bins} pyramid-pooling branches in decode_head.psp_modules; "
                    "mmseg's PSPNet configs use pool_scales (1, 2, 3, 6)"
                )
    aux = any(k.startswith("auxiliary_head.") for k in sd)
    aux_kwargs = _fcn_options(sd, "auxiliary_head.") if aux else {}
    build = {
        "name": name,
        "backbone": backbone,
        "num_classes": num_classes,
        "output_stride": 8,
        "aux": aux,
        "align_corners": align_corners,
        "pretrained_backbone": None,
        "backbone_kwargs": {"contract_dilation": True},
        "head_kwargs": head_kwargs,
        "aux_kwargs": aux_kwargs,
    }
    return _convert(
        sd,
        where=where,
        build=build,
        backbone_source="mmseg",
        head_prefixes=("decode_head", "auxiliary_head"),
        rules=_MMSEG_RULES,
        input_norm=IMAGENET_RGB,
    )


_CONVERTERS: dict[str, Callable[..., SegmentationModel]] = {
    "torchvision": from_torchvision,
    "mmseg": from_mmseg,
}


def convert(src: StateDictSource, *, source: str, arch: str, **kwargs: Any) -> SegmentationModel:
    """Dispatch to ``from_<source>``: ``convert(path, source="mmseg", arch="pspnet_r50-d8")``.

    ``source`` is ``"torchvision"`` or ``"mmseg"``; ``kwargs`` go to that converter
    (``align_corners`` for mmseg).
    """
    try:
        fn = _CONVERTERS[source]
    except KeyError:
        raise KeyError(
            f"unknown checkpoint source {source!r}; valid: {sorted(_CONVERTERS)}"
        ) from None
    return fn(src, arch=arch, **kwargs)
