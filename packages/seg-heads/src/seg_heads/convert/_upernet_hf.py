"""HuggingFace ``UperNetForSemanticSegmentation`` directories (ConvNeXt and Swin backbones,
e.g. ``openmmlab/upernet-convnext-tiny``, ``openmmlab/upernet-swin-base``) as PKUSeg
``create_model("upernet", backbone="timm:convnext_*" | "timm:swin_*", ...)`` models.

The backbone is timm's (``seg_backbones.timm_wrapper``) built from ``backbone_config``
(depths, widths, heads, window: any size converts, the timm name is only the closest
variant), with ``out_norm=True`` for HF's ``hidden_states_norms``; its keys are mapped by
the wrapper (``load_pretrained_state_dict(source="hf")``). Head keys:

=============================================== ==========================================
HF                                              ours
=============================================== ==========================================
``decode_head.psp_modules.{i}.1.conv``           ``decode_head.psp_modules.{i}.1.conv``
``decode_head.<m>.batch_norm`` (every ConvModule) ``decode_head.<m>.bn``
``decode_head.classifier``                       ``decode_head.conv_seg``
``auxiliary_head.convs.{i}`` / ``conv_cat``      ``aux_head.convs.{i}`` / ``conv_cat``
``auxiliary_head.classifier``                    ``aux_head.conv_seg``
=============================================== ==========================================

HF's heads read every backbone level (decode) and level 2 (auxiliary FCN head: 3x3 convs,
``auxiliary_channels``, ``auxiliary_num_convs``, ``auxiliary_concat_input``); all resizes
use ``align_corners=False``; neither head has dropout, so ours are built with
``dropout=0.0`` (mmseg's heads use 0.1 in training: pass ``head_kwargs`` to change it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ..model import IMAGENET_RGB, SegmentationModel
from ._common import build_and_load
from .hf import register_hf_arch

__all__ = ["from_hf_upernet", "upernet_build_config"]

_HEAD_RULES: list[tuple[str, str]] = [
    (r"decode_head\.classifier\.(weight|bias)", r"decode_head.conv_seg.\1"),
    (r"decode_head\.(.+)\.batch_norm\.(\w+)", r"decode_head.\1.bn.\2"),
    (r"decode_head\.(.+)\.conv\.weight", r"decode_head.\1.conv.weight"),
    (r"auxiliary_head\.classifier\.(weight|bias)", r"aux_head.conv_seg.\1"),
    (r"auxiliary_head\.(.+)\.batch_norm\.(\w+)", r"aux_head.\1.bn.\2"),
    (r"auxiliary_head\.(.+)\.conv\.weight", r"aux_head.\1.conv.weight"),
]

# backbone weights HF saves that no backbone output uses: the final (pooling) LayerNorm
_UNUSED_BACKBONE_KEYS = ("layernorm.", "swin.layernorm.")

# timm variants, by (widths, depths): ConvNeXt; (embed_dim, depths, heads, window): Swin
_CONVNEXT_NAMES: dict[tuple[tuple[int, ...], tuple[int, ...]], str] = {
    ((96, 192, 384, 768), (3, 3, 9, 3)): "convnext_tiny",
    ((96, 192, 384, 768), (3, 3, 27, 3)): "convnext_small",
    ((128, 256, 512, 1024), (3, 3, 27, 3)): "convnext_base",
    ((192, 384, 768, 1536), (3, 3, 27, 3)): "convnext_large",
    ((256, 512, 1024, 2048), (3, 3, 27, 3)): "convnext_xlarge",
}
_SWIN_NAMES: dict[tuple[int, tuple[int, ...], tuple[int, ...], int], str] = {
    (96, (2, 2, 6, 2), (3, 6, 12, 24), 7): "swin_tiny_patch4_window7_224",
    (96, (2, 2, 18, 2), (3, 6, 12, 24), 7): "swin_small_patch4_window7_224",
    (128, (2, 2, 18, 2), (4, 8, 16, 32), 7): "swin_base_patch4_window7_224",
    (128, (2, 2, 18, 2), (4, 8, 16, 32), 12): "swin_base_patch4_window12_384",
    (192, (2, 2, 18, 2), (6, 12, 24, 48), 7): "swin_large_patch4_window7_224",
    (192, (2, 2, 18, 2), (6, 12, 24, 48), 12): "swin_large_patch4_window12_384",
}


def _check(ok: bool, where: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{where}: {message}")


def _out_indices(bc: Mapping[str, Any], num_stages: int, where: str) -> tuple[int, ...]:
    """HF ``out_features`` (``stage1``..) -> timm ``out_indices`` (0-based stage numbers)."""
    names = bc.get("out_features") or [f"stage{i + 1}" for i in range(num_stages)]
    valid = [f"stage{i + 1}" for i in range(num_stages)]
    bad = [n for n in names if n not in valid]
    _check(not bad, where, f"backbone_config.out_features {bad} are not stages {valid}")
    return tuple(valid.index(n) for n in names)


def _convnext_backbone(bc: Mapping[str, Any], where: str) -> tuple[str, dict[str, Any], list[int]]:
    dims = tuple(int(d) for d in bc.get("hidden_sizes", (96, 192, 384, 768)))
    depths = tuple(int(d) for d in bc.get("depths", (3, 3, 9, 3)))
    _check(bc.get("hidden_act", "gelu") == "gelu", where, "ConvNeXt hidden_act must be 'gelu'")
    ls = float(bc.get("layer_scale_init_value", 1e-6))
    kwargs: dict[str, Any] = {
        "depths": depths,
        "dims": dims,
        "patch_size": int(bc.get("patch_size", 4)),
        "ls_init_value": ls if ls > 0 else None,
        "drop_path_rate": float(bc.get("drop_path_rate", 0.0)),
        "in_chans": int(bc.get("num_channels", 3)),
        "out_indices": _out_indices(bc, len(depths), where),
        "out_norm": True,
    }
    name = "timm:" + _CONVNEXT_NAMES.get((dims, depths), "convnext_tiny")
    return name, kwargs, [dims[i] for i in kwargs["out_indices"]]


def _swin_backbone(bc: Mapping[str, Any], where: str) -> tuple[str, dict[str, Any], list[int]]:
    embed_dim = int(bc.get("embed_dim", 96))
    depths = tuple(int(d) for d in bc.get("depths", (2, 2, 6, 2)))
    heads = tuple(int(h) for h in bc.get("num_heads", (3, 6, 12, 24)))
    window = int(bc.get("window_size", 7))
    _check(bc.get("hidden_act", "gelu") == "gelu", where, "Swin hidden_act must be 'gelu'")
    _check(
        not bc.get("use_absolute_embeddings", False),
        where,
        "Swin with use_absolute_embeddings=True has no timm equivalent",
    )
    eps = float(bc.get("layer_norm_eps", 1e-5))
    _check(eps == 1e-5, where, f"Swin layer_norm_eps={eps}: timm's Swin uses 1e-5")
    image_size = bc.get("image_size", 224)
    kwargs: dict[str, Any] = {
        "embed_dim": embed_dim,
        "depths": depths,
        "num_heads": heads,
        "window_size": window,
        "mlp_ratio": float(bc.get("mlp_ratio", 4.0)),
        "qkv_bias": bool(bc.get("qkv_bias", True)),
        "patch_size": int(bc.get("patch_size", 4)),
        "img_size": list(image_size) if isinstance(image_size, list | tuple) else int(image_size),
        "drop_path_rate": float(bc.get("drop_path_rate", 0.1)),
        "in_chans": int(bc.get("num_channels", 3)),
        "out_indices": _out_indices(bc, len(depths), where),
        "out_norm": True,
    }
    name = _SWIN_NAMES.get((embed_dim, depths, heads, window), "swin_tiny_patch4_window7_224")
    return "timm:" + name, kwargs, [embed_dim * 2**i for i in kwargs["out_indices"]]


_BACKBONES = {"convnext": _convnext_backbone, "swin": _swin_backbone}


def upernet_build_config(config: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``create_model`` arguments of the twin of an HF ``UperNetConfig`` (as a dict)."""
    bc = config.get("backbone_config")
    model_type = (bc or {}).get("model_type")
    _check(
        isinstance(bc, Mapping)
        and model_type in _BACKBONES
        and not config.get("use_timm_backbone"),
        where,
        f"backbone_config.model_type={model_type!r} is not convertible; from_hf converts "
        f"UperNet with {sorted(_BACKBONES)} backbones",
    )
    backbone, backbone_kwargs, channels = _BACKBONES[model_type](bc, where)
    n = len(channels)
    num_classes = len(config.get("id2label") or {}) or int(config.get("num_labels", 0))
    _check(num_classes > 0, where, "config.json has neither id2label nor num_labels")
    aux = bool(config.get("use_auxiliary_head", True))
    aux_kwargs: dict[str, Any] = {}
    if aux:
        num_convs = int(config.get("auxiliary_num_convs", 1))
        _check(num_convs >= 1, where, f"auxiliary_num_convs={num_convs}: our FCN head needs >= 1")
        _check(n > 2, where, f"the auxiliary head reads backbone level 2, the backbone has {n}")
        aux_in = config.get("auxiliary_in_channels")
        _check(
            aux_in is None or int(aux_in) == channels[2],
            where,
            f"auxiliary_in_channels={aux_in} but backbone level 2 has {channels[2]} channels "
            "(HF's model fails on this config too)",
        )
        aux_kwargs = {
            "in_index": 2,
            "variant": "mmseg",
            "channels": int(config.get("auxiliary_channels", 256)),
            "num_convs": num_convs,
            "concat_input": bool(config.get("auxiliary_concat_input", False)),
            "kernel_size": 3,
            "dropout": 0.0,
        }
    return {
        "name": "upernet",
        "backbone": backbone,
        "num_classes": num_classes,
        "output_stride": 32,
        "aux": aux,
        "align_corners": False,
        "backbone_kwargs": backbone_kwargs,
        "head_kwargs": {
            "in_index": tuple(range(n)),
            "channels": int(config.get("hidden_size", 512)),
            "pool_scales": tuple(int(s) for s in config.get("pool_scales", (1, 2, 3, 6))),
            "dropout": 0.0,
        },
        "aux_kwargs": aux_kwargs,
    }


def _load_backbone(sd: dict[str, Tensor], backbone: nn.Module) -> dict[str, Tensor]:
    sd = {k: v for k, v in sd.items() if not k.startswith(_UNUSED_BACKBONE_KEYS)}
    backbone.load_pretrained_state_dict(sd, source="hf")  # strict, raises naming the keys
    return dict(backbone.state_dict())


@register_hf_arch("UperNetForSemanticSegmentation")
def from_hf_upernet(
    config: Mapping[str, Any], state_dict: dict[str, Tensor], where: str
) -> SegmentationModel:
    """Build the twin of a ``UperNetForSemanticSegmentation`` and load its weights strictly."""
    return build_and_load(
        state_dict,
        where=where,
        build=upernet_build_config(config, where),
        backbone_source=_load_backbone,
        head_prefixes=("decode_head", "auxiliary_head"),
        rules=_HEAD_RULES,
        input_norm=IMAGENET_RGB,
    )
