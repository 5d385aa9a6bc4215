"""HuggingFace ``Mask2FormerForUniversalSegmentation`` directories (Swin and ResNet backbones,
e.g. ``facebook/mask2former-swin-large-ade-semantic``) as PKUSeg
``create_model("mask2former", backbone="timm:swin_*" | "resnet50" | ..., ...)`` models.

Our ``class_logits`` / ``mask_logits`` equal transformers' ``class_queries_logits`` /
``masks_queries_logits`` (float64, random weights: ``tests/test_convert_mask2former_hf.py``);
``"out"`` is the official semantic inference on them (see :mod:`seg_heads.mask2former`).

Backbones: Swin (``SwinBackbone``, with its ``hidden_states_norms``) becomes timm's Swin
through the UperNet converter's helpers (:mod:`seg_heads.convert._upernet_hf`); ResNet
(``ResNetBackbone``, ``layer_type`` basic/bottleneck, the torchvision widths) becomes our
``resnet{18,34,50,101,152}`` (7x7 stem, stride on the 3x3 conv: HF's defaults
``downsample_in_bottleneck=False``, ``downsample_in_first_stage=False``). transformers'
timm backbones (``use_timm_backbone=True``) are refused. Keys
(``mpl`` = ``model.pixel_level_module``, ``mtm`` = ``model.transformer_module``):

=============================================================== ===============================================
HF                                                              ours
=============================================================== ===============================================
``mpl.encoder.*``                                                ``backbone.*`` (Swin: timm wrapper; ResNet below)
``mpl.decoder.level_embed`` / ``input_projections.{i}``          ``decode_head.pixel_decoder.level_embed`` / ``input_proj.{i}``
``mpl.decoder.encoder.layers.{i}.self_attn.*``                   ``decode_head.pixel_decoder.encoder.{i}.self_attn.*``
``... .self_attn_layer_norm`` / ``fc1`` / ``fc2`` / ``final_layer_norm`` ``... .norm1`` / ``linear1`` / ``linear2`` / ``norm2``
``mpl.decoder.adapter_1`` / ``layer_1`` / ``mask_projection``     ``... .lateral_convs.0`` / ``output_convs.0`` / ``mask_features``
``mtm.queries_features`` / ``queries_embedder`` / ``level_embed`` ``decode_head.predictor.query_feat`` / ``query_embed`` / ``level_embed``
``mtm.input_projections.{i}`` (only if ``feature_size != hidden_dim``) ``decode_head.predictor.input_proj.{i}``
``mtm.decoder.layers.{i}.cross_attn.in_proj_*`` (packed q, k, v)   ``decode_head.predictor.layers.{i}.cross_attn.{q,k,v}_proj.*``
``... .cross_attn.out_proj`` / ``self_attn.{q,k,v,out}_proj``       same names
``... .cross_attn_layer_norm`` / ``self_attn_layer_norm`` / ``final_layer_norm`` ``... .cross_norm`` / ``self_norm`` / ``ffn_norm``
``mtm.decoder.layernorm`` / ``mask_predictor.mask_embedder.{j}.0`` ``decode_head.predictor.decoder_norm`` / ``mask_embed.layers.{j}``
``class_predictor``                                              ``decode_head.predictor.class_embed``
``criterion.empty_weight`` (the loss's class weights)            dropped
=============================================================== ===============================================

HF ResNet -> torchvision layout: ``embedder.embedder.{convolution,normalization}`` ->
``conv1`` / ``bn1``; ``encoder.stages.{s}.layers.{b}.layer.{k}`` -> ``layer{s+1}.{b}.conv{k+1}``
/ ``bn{k+1}``; ``.shortcut`` -> ``.downsample.0`` / ``.1``.

HF's ``decoder_layers`` counts the prediction from the learnable queries, as the official
``DEC_LAYERS``: ``decoder_layers=10`` is our ``decoder_layers=9``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from ..model import IMAGENET_RGB, SegmentationModel
from ._common import build_and_load, convert_resnet_backbone
from ._upernet_hf import _load_backbone as _load_hf_swin
from ._upernet_hf import _swin_backbone
from .hf import register_hf_arch

__all__ = ["from_hf_mask2former", "mask2former_build_config"]

_PD = r"model\.pixel_level_module\.decoder\."
_TM = r"model\.transformer_module\."
_OPD = "decode_head.pixel_decoder."
_OTM = "decode_head.predictor."
_W = r"(weight|bias)"

_HEAD_RULES: list[tuple[str, str]] = [
    (rf"{_PD}level_embed", _OPD + "level_embed"),
    (rf"{_PD}input_projections\.(\d)\.([01])\.{_W}", _OPD + r"input_proj.\1.\2.\3"),
    (rf"{_PD}encoder\.layers\.(\d+)\.self_attn\.(\w+)\.{_W}", _OPD + r"encoder.\1.self_attn.\2.\3"),
    (rf"{_PD}encoder\.layers\.(\d+)\.self_attn_layer_norm\.{_W}", _OPD + r"encoder.\1.norm1.\2"),
    (rf"{_PD}encoder\.layers\.(\d+)\.fc([12])\.{_W}", _OPD + r"encoder.\1.linear\2.\3"),
    (rf"{_PD}encoder\.layers\.(\d+)\.final_layer_norm\.{_W}", _OPD + r"encoder.\1.norm2.\2"),
    (rf"{_PD}adapter_1\.([01])\.{_W}", _OPD + r"lateral_convs.0.\1.\2"),
    (rf"{_PD}layer_1\.([01])\.{_W}", _OPD + r"output_convs.0.\1.\2"),
    (rf"{_PD}mask_projection\.{_W}", _OPD + r"mask_features.\1"),
    (rf"{_TM}queries_features\.weight", _OTM + "query_feat.weight"),
    (rf"{_TM}queries_embedder\.weight", _OTM + "query_embed.weight"),
    (rf"{_TM}level_embed\.weight", _OTM + "level_embed.weight"),
    (rf"{_TM}input_projections\.(\d)\.{_W}", _OTM + r"input_proj.\1.\2"),
    (rf"{_TM}decoder\.layers\.(\d+)\.(cross_attn|self_attn)\.([qkv]_proj|out_proj)\.{_W}",
     _OTM + r"layers.\1.\2.\3.\4"),
    (rf"{_TM}decoder\.layers\.(\d+)\.cross_attn_layer_norm\.{_W}", _OTM + r"layers.\1.cross_norm.\2"),
    (rf"{_TM}decoder\.layers\.(\d+)\.self_attn_layer_norm\.{_W}", _OTM + r"layers.\1.self_norm.\2"),
    (rf"{_TM}decoder\.layers\.(\d+)\.fc([12])\.{_W}", _OTM + r"layers.\1.linear\2.\3"),
    (rf"{_TM}decoder\.layers\.(\d+)\.final_layer_norm\.{_W}", _OTM + r"layers.\1.ffn_norm.\2"),
    (rf"{_TM}decoder\.layernorm\.{_W}", _OTM + r"decoder_norm.\1"),
    (rf"{_TM}decoder\.mask_predictor\.mask_embedder\.(\d)\.0\.{_W}", _OTM + r"mask_embed.layers.\1.\2"),
    (rf"class_predictor\.{_W}", _OTM + r"class_embed.\1"),
]  # fmt: skip

# Mask2FormerConfig's defaults, for config.json files that omit a field
_DEFAULTS: dict[str, Any] = {
    "feature_size": 256,
    "mask_feature_size": 256,
    "hidden_dim": 256,
    "encoder_feedforward_dim": 1024,
    "activation_function": "relu",
    "encoder_layers": 6,
    "decoder_layers": 10,
    "num_attention_heads": 8,
    "dropout": 0.0,
    "dim_feedforward": 2048,
    "pre_norm": False,
    "enforce_input_projection": False,
    "common_stride": 4,
    "num_queries": 100,
    "feature_strides": [4, 8, 16, 32],
}
_STAGES = ["stage1", "stage2", "stage3", "stage4"]

# (layer_type, depths) -> our torchvision-layout ResNet
_RESNETS: dict[tuple[str, tuple[int, ...]], str] = {
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
    ("bottleneck", (3, 8, 36, 3)): "resnet152",
}
_HF_STAGE = r"encoder\.stages\.(\d)\.layers\.(\d+)\."
# HF counts stages and convs from 0, torchvision from 1
_RESNET_RULES: list[tuple[str, Callable[[re.Match[str]], str]]] = [
    (r"embedder\.embedder\.convolution\.weight", lambda m: "conv1.weight"),
    (r"embedder\.embedder\.normalization\.(\w+)", lambda m: f"bn1.{m[1]}"),
    (rf"{_HF_STAGE}shortcut\.convolution\.weight",
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.0.weight"),
    (rf"{_HF_STAGE}shortcut\.normalization\.(\w+)",
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.1.{m[3]}"),
    (rf"{_HF_STAGE}layer\.(\d)\.convolution\.weight",
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.conv{int(m[3]) + 1}.weight"),
    (rf"{_HF_STAGE}layer\.(\d)\.normalization\.(\w+)",
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.bn{int(m[3]) + 1}.{m[4]}"),
]  # fmt: skip


def _check(ok: bool, where: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{where}: {message}")


def _resnet_backbone(bc: Mapping[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    layer_type = str(bc.get("layer_type", "bottleneck"))
    depths = tuple(int(d) for d in bc.get("depths", (3, 4, 6, 3)))
    name = _RESNETS.get((layer_type, depths))
    _check(
        name is not None,
        where,
        f"ResNet layer_type={layer_type!r}, depths={list(depths)} is not one of "
        f"{sorted(f'{t} {list(d)}' for t, d in _RESNETS)}",
    )
    expansion = 4 if layer_type == "bottleneck" else 1
    widths = [64 * 2**i * expansion for i in range(4)]
    sizes = [int(s) for s in bc.get("hidden_sizes", (256, 512, 1024, 2048))]
    _check(
        sizes == widths and int(bc.get("embedding_size", 64)) == 64,
        where,
        f"ResNet hidden_sizes={sizes}, embedding_size={bc.get('embedding_size', 64)}: "
        f"{name} has {widths} and 64",
    )
    _check(bc.get("hidden_act", "relu") == "relu", where, "ResNet hidden_act must be 'relu'")
    _check(
        not bc.get("downsample_in_first_stage", False)
        and not bc.get("downsample_in_bottleneck", False),
        where,
        "ResNet downsample_in_first_stage / downsample_in_bottleneck must be False "
        "(torchvision's layout)",
    )
    return name, {"in_chans": int(bc.get("num_channels", 3))}  # type: ignore[return-value]


def _load_hf_resnet(sd: dict[str, Tensor], backbone: nn.Module) -> dict[str, Tensor]:
    """HF ``ResNetBackbone`` keys -> torchvision's -> ours (seg_backbones' converter)."""
    out = {}
    for k, v in sd.items():
        for pattern, rename in _RESNET_RULES:
            m = re.fullmatch(pattern, k)
            if m:
                out[rename(m)] = v
                break
        else:
            out[k] = v  # reported by the strict converter
    return convert_resnet_backbone(out, "torchvision", backbone)


def mask2former_build_config(config: Mapping[str, Any], where: str) -> tuple[dict[str, Any], str]:
    """``(create_model arguments, backbone kind)`` of the twin of an HF ``Mask2FormerConfig``."""
    cfg = {k: config.get(k, v) for k, v in _DEFAULTS.items()}
    bc = config.get("backbone_config")
    model_type = (bc or {}).get("model_type") if isinstance(bc, Mapping) else None
    _check(
        model_type in ("swin", "resnet") and not config.get("use_timm_backbone"),
        where,
        f"backbone_config.model_type={model_type!r}"
        f"{' (use_timm_backbone=True)' if config.get('use_timm_backbone') else ''} is not "
        "convertible; from_hf converts Mask2Former with ['resnet', 'swin'] backbones",
    )
    assert isinstance(bc, Mapping)
    out_features = list(bc.get("out_features") or [])
    _check(
        out_features == _STAGES,
        where,
        f"backbone_config.out_features={out_features}: Mask2Former reads {_STAGES}",
    )
    _check(
        [int(s) for s in cfg["feature_strides"]] == [4, 8, 16, 32] and cfg["common_stride"] == 4,
        where,
        f"feature_strides={cfg['feature_strides']}, common_stride={cfg['common_stride']}: "
        "the converter supports the standard [4, 8, 16, 32] and 4",
    )
    _check(
        cfg["activation_function"] == "relu",
        where,
        f"activation_function={cfg['activation_function']!r}: the decoder FFN uses ReLU",
    )
    _check(int(cfg["decoder_layers"]) >= 1, where, "decoder_layers must be >= 1")
    if model_type == "swin":
        backbone, backbone_kwargs, _ = _swin_backbone(bc, where)
    else:
        backbone, backbone_kwargs = _resnet_backbone(bc, where)
    num_classes = len(config.get("id2label") or {}) or int(config.get("num_labels", 0))
    _check(num_classes > 0, where, "config.json has neither id2label nor num_labels")
    build = {
        "name": "mask2former",
        "backbone": backbone,
        "num_classes": num_classes,
        "output_stride": 32,
        "aux": False,
        "align_corners": False,
        "backbone_kwargs": backbone_kwargs,
        "head_kwargs": {
            "num_queries": int(cfg["num_queries"]),
            "hidden_dim": int(cfg["hidden_dim"]),
            "num_heads": int(cfg["num_attention_heads"]),
            "ffn_dim": int(cfg["dim_feedforward"]),
            "decoder_layers": int(cfg["decoder_layers"]) - 1,
            "pre_norm": bool(cfg["pre_norm"]),
            "enforce_input_proj": bool(cfg["enforce_input_projection"]),
            "conv_dim": int(cfg["feature_size"]),
            "mask_dim": int(cfg["mask_feature_size"]),
            "encoder_layers": int(cfg["encoder_layers"]),
            "encoder_ffn_dim": int(cfg["encoder_feedforward_dim"]),
            "dropout": float(cfg["dropout"]),
        },
    }
    return build, str(model_type)


def _hf_keys(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop the loss's ``criterion.*``, ``backbone.*`` for the encoder, q/k/v of the packed
    cross-attention projections (``nn.MultiheadAttention``'s ``in_proj_*``)."""
    out: dict[str, Tensor] = {}
    prefix = "model.pixel_level_module.encoder."
    for k, v in sd.items():
        if k.startswith("criterion."):
            continue
        if k.startswith(prefix):
            out["backbone." + k[len(prefix) :]] = v
            continue
        m = re.fullmatch(r"(.+\.cross_attn)\.in_proj_(weight|bias)", k)
        if m:
            for name, part in zip(("q", "k", "v"), v.chunk(3), strict=True):
                out[f"{m[1]}.{name}_proj.{m[2]}"] = part
            continue
        out[k] = v
    return out


@register_hf_arch("Mask2FormerForUniversalSegmentation")
def from_hf_mask2former(
    config: Mapping[str, Any], state_dict: dict[str, Tensor], where: str
) -> SegmentationModel:
    """Build the twin of a ``Mask2FormerForUniversalSegmentation`` and load its weights strictly."""
    build, kind = mask2former_build_config(config, where)
    sd = _hf_keys(state_dict)
    weight = sd.get("class_predictor.weight")
    if weight is not None and weight.shape[0] != build["num_classes"] + 1:
        raise ValueError(
            f"{where}: class_predictor has {weight.shape[0]} outputs but config.json names "
            f"{build['num_classes']} classes (+1 no-object expected)"
        )
    return build_and_load(
        sd,
        where=where,
        build=build,
        backbone_source=_load_hf_swin if kind == "swin" else _load_hf_resnet,
        head_prefixes=("model", "class_predictor"),
        rules=_HEAD_RULES,
        input_norm=IMAGENET_RGB,
    )
