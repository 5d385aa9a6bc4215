"""SegFormer checkpoints: HuggingFace ``SegformerForSemanticSegmentation`` directories and
mmsegmentation 1.2.2 ``segformer_mit-b{0..5}`` files (also the NVlabs release, which mmseg
0.x wrote), as PKUSeg ``create_model("segformer", backbone="mit_bX", ...)`` models.

The encoder keys go through :func:`seg_backbones.mit.convert_mit_state_dict` (the MiT key
mapping lives beside the family); this module maps the decode-head keys:

=================================== ============================== ============================
ours (``decode_head.``)             mmseg 1.2.2 (variant mmseg)     HF / NVlabs (variant hf)
=================================== ============================== ============================
``convs.{i}.conv`` / ``.bn``        ``convs.{i}.conv`` / ``.bn``    --
``convs.{i}`` (1x1 conv, bias)      --                              ``linear_c.{i}.proj`` /
                                                                    ``linear_c{i+1}.proj`` (linear)
``fusion_conv.conv``                ``fusion_conv.conv``            ``linear_fuse`` / ``linear_fuse.conv``
``fusion_conv.bn``                  ``fusion_conv.bn``              ``batch_norm`` / ``linear_fuse.bn``
``conv_seg``                        ``conv_seg``                    ``classifier`` / ``linear_pred``
=================================== ============================== ============================

LayerNorm eps follows each source's code, not its config: HF 1e-5 everywhere (its
``layer_norm_eps`` is unused), mmseg 1e-6 everywhere, NVlabs 1e-6 with 1e-5 in the
patch-embedding and spatial-reduction norms.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from seg_backbones.mit import MIT_VARIANTS, convert_mit_state_dict

from ..model import IMAGENET_RGB, SegmentationModel
from ._common import BackboneConverter, build_and_load, require
from .hf import register_hf_arch
from .mmseg import MMSegArch, register_mmseg_arch

__all__ = ["from_hf_segformer", "mmseg_segformer"]

_HEAD_RULES: list[tuple[str, str]] = [(r"decode_head\.(.+)", r"decode_head.\1")]

# transformers' SegformerConfig defaults, for config.json files that omit a field
_HF_DEFAULTS: dict[str, Any] = {
    "num_channels": 3,
    "num_encoder_blocks": 4,
    "depths": [2, 2, 2, 2],
    "sr_ratios": [8, 4, 2, 1],
    "hidden_sizes": [32, 64, 160, 256],
    "patch_sizes": [7, 3, 3, 3],
    "strides": [4, 2, 2, 2],
    "num_attention_heads": [1, 2, 5, 8],
    "mlp_ratios": [4, 4, 4, 4],
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "classifier_dropout_prob": 0.1,
    "drop_path_rate": 0.1,
    "decoder_hidden_size": 256,
}
# HF config field -> (our MiT option, our default)
_HF_TO_MIT: dict[str, tuple[str, Any]] = {
    "num_attention_heads": ("num_heads", (1, 2, 5, 8)),
    "sr_ratios": ("sr_ratios", (8, 4, 2, 1)),
    "mlp_ratios": ("mlp_ratios", (4, 4, 4, 4)),
    "patch_sizes": ("patch_sizes", (7, 3, 3, 3)),
    "strides": ("strides", (4, 2, 2, 2)),
    "hidden_dropout_prob": ("drop_rate", 0.0),
    "attention_probs_dropout_prob": ("attn_drop_rate", 0.0),
    "drop_path_rate": ("drop_path_rate", 0.1),
    "num_channels": ("in_chans", 3),
}


def _linear_to_conv(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """The per-level linear projections (D x C) as our 1x1 convs (D x C x 1 x 1)."""
    return {
        k: v[:, :, None, None] if re.fullmatch(r"decode_head\.convs\.\d+\.weight", k) and v.ndim == 2
        else v
        for k, v in sd.items()
    }  # fmt: skip


def _mit_backbone(source: str) -> BackboneConverter:
    """Our MiT keys from the checkpoint's ``backbone.*`` keys in ``source``'s layout."""

    def convert(sd: dict[str, Tensor], backbone: nn.Module) -> dict[str, Tensor]:
        return convert_mit_state_dict(sd, source=source)  # type: ignore[arg-type]

    return convert


def _mit_name(embed_dims: tuple[int, ...], depths: tuple[int, ...]) -> tuple[str, dict[str, Any]]:
    """The registered MiT variant with these sizes, else ``mit_b0`` with explicit sizes."""
    for name, arch in MIT_VARIANTS.items():
        if arch["embed_dims"] == embed_dims and arch["depths"] == depths:
            return name, {}
    return "mit_b0", {"embed_dims": embed_dims, "depths": depths}


# ------------------------------------------------------------------------------ HuggingFace


def _hf_config(config: Mapping[str, Any], where: str) -> dict[str, Any]:
    cfg = {k: config.get(k, v) for k, v in _HF_DEFAULTS.items()}
    if cfg["num_encoder_blocks"] != 4 or cfg["hidden_act"] != "gelu":
        raise ValueError(
            f"{where}: num_encoder_blocks={cfg['num_encoder_blocks']}, "
            f"hidden_act={cfg['hidden_act']!r}; PKUSeg's MiT has 4 stages and GELU (as every "
            "SegFormer on the Hub)"
        )
    return cfg


def _hf_keys(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """HF keys -> ``backbone.*`` (HF encoder layout, converted by seg_backbones) + our head keys."""
    head = [
        (r"decode_head\.linear_(?:c|projections)\.(\d)\.proj\.(\w+)", r"decode_head.convs.\1.\2"),
        (r"decode_head\.linear_fuse\.weight", "decode_head.fusion_conv.conv.weight"),
        (r"decode_head\.batch_norm\.(\w+)", r"decode_head.fusion_conv.bn.\1"),
        (r"decode_head\.classifier\.(\w+)", r"decode_head.conv_seg.\1"),
    ]
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        new = re.sub(r"^segformer\.", "backbone.", k)
        for pattern, repl in head:
            new, n = re.subn(f"^{pattern}$", repl, new)
            if n:
                break
        out[new] = v
    return _linear_to_conv(out)


@register_hf_arch("SegformerForSemanticSegmentation")
def from_hf_segformer(
    config: Mapping[str, Any], state_dict: dict[str, Tensor], where: str
) -> SegmentationModel:
    """A transformers SegFormer (``config.json`` + weights) as our model with variant ``"hf"``.

    Sizes, depths, heads, sr ratios, dropouts and ``decoder_hidden_size`` come from the
    config, ``num_classes`` from the classifier weights; every LayerNorm gets eps 1e-5
    (what transformers computes with). Our ``"out"`` equals HF's 1/4-resolution logits
    resized to the input (bilinear, ``align_corners=False``).
    """
    cfg = _hf_config(config, where)
    sd = _hf_keys(state_dict)
    num_classes = int(require(sd, "decode_head.conv_seg.weight", where).shape[0])
    labels = config.get("id2label")
    if labels and len(labels) != num_classes:
        raise ValueError(
            f"{where}: config.json's id2label has {len(labels)} classes, the classifier "
            f"weights {num_classes}"
        )
    dims = tuple(int(c) for c in cfg["hidden_sizes"])
    depths = tuple(int(d) for d in cfg["depths"])
    backbone, backbone_kwargs = _mit_name(dims, depths)
    for field, (option, default) in _HF_TO_MIT.items():
        value = cfg[field]
        value = tuple(int(x) for x in value) if isinstance(value, list | tuple) else value
        if value != default:
            backbone_kwargs[option] = value
    backbone_kwargs["layer_norm_eps"] = 1e-5  # transformers' nn.LayerNorm(dim) everywhere
    head_kwargs: dict[str, Any] = {"variant": "hf", "channels": int(cfg["decoder_hidden_size"])}
    if cfg["classifier_dropout_prob"] != 0.1:
        head_kwargs["dropout"] = float(cfg["classifier_dropout_prob"])
    build = _build(backbone, num_classes, False, backbone_kwargs, head_kwargs)
    return build_and_load(
        sd,
        where=where,
        build=build,
        backbone_source=_mit_backbone("hf"),
        head_prefixes=("decode_head",),
        rules=_HEAD_RULES,
        input_norm=IMAGENET_RGB,  # from_hf replaces it with preprocessor_config.json's
    )


def _build(
    backbone: str,
    num_classes: int,
    align_corners: bool,
    backbone_kwargs: dict[str, Any],
    head_kwargs: dict[str, Any],
) -> dict[str, Any]:
    return {
        "name": "segformer",
        "backbone": backbone,
        "num_classes": num_classes,
        "output_stride": 32,
        "aux": False,
        "align_corners": align_corners,
        "pretrained_backbone": None,
        "backbone_kwargs": backbone_kwargs,
        "head_kwargs": head_kwargs,
        "aux_kwargs": {},
    }


# ------------------------------------------------------------------------------ mmseg / NVlabs

_NVLABS_HEAD: list[tuple[str, str]] = [
    (r"decode_head\.linear_c(\d)\.proj\.(\w+)", "decode_head.convs.{\\1}.\\2"),
    (r"decode_head\.linear_fuse\.(conv|bn)\.(\w+)", r"decode_head.fusion_conv.\1.\2"),
    (r"decode_head\.linear_pred\.(\w+)", r"decode_head.conv_seg.\1"),
]


def _nvlabs_keys(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        if k.startswith("decode_head.conv_seg."):
            continue  # mmseg 0.x's BaseDecodeHead classifier, unused by NVlabs' head (linear_pred)
        new = k
        for pattern, repl in _NVLABS_HEAD:
            new, n = re.subn(f"^{pattern}$", repl, k)
            if n:
                break
        out[re.sub(r"\{(\d)\}", lambda m: str(int(m.group(1)) - 1), new)] = v  # c1 -> convs.0
    return _linear_to_conv(out)


def mmseg_segformer(backbone: str) -> Callable[..., SegmentationModel]:
    """The converter of mmseg's ``segformer_mit-bX`` (mmseg 1.x keys, or NVlabs' 0.x release).

    mmseg 1.x files (``backbone.layers.*``, ``decode_head.convs.{i}.conv``) give variant
    ``"mmseg"``; NVlabs files (``backbone.patch_embed1.*``, ``decode_head.linear_c1.proj``)
    variant ``"hf"`` (the same head) with the official LayerNorm eps (1e-5 in the patch
    embeddings and spatial reductions). Width and ``num_classes`` come from the weights.
    """

    def convert(sd: dict[str, Tensor], *, where: str, align_corners: bool) -> SegmentationModel:
        nvlabs = "backbone.patch_embed1.proj.weight" in sd or any(
            k.startswith("decode_head.linear_c") for k in sd
        )
        if nvlabs:
            sd = _nvlabs_keys(sd)
        num_classes = int(require(sd, "decode_head.conv_seg.weight", where).shape[0])
        width = int(require(sd, "decode_head.fusion_conv.conv.weight", where).shape[0])
        head_kwargs: dict[str, Any] = {"variant": "hf" if nvlabs else "mmseg", "channels": width}
        backbone_kwargs = {"patch_norm_eps": 1e-5} if nvlabs else {}
        return build_and_load(
            sd,
            where=where,
            build=_build(backbone, num_classes, align_corners, backbone_kwargs, head_kwargs),
            backbone_source=_mit_backbone("official" if nvlabs else "mmseg"),
            head_prefixes=("decode_head",),
            rules=_HEAD_RULES,
            input_norm=IMAGENET_RGB,
        )

    return convert


# odd sizes exercise every patch embedding's rounding and the resizes to stride 4
for _b in range(6):
    register_mmseg_arch(
        f"segformer_mit-b{_b}",
        MMSegArch(
            mmseg_segformer(f"mit_b{_b}"),
            f"segformer/segformer_mit-b{_b}_8xb2-160k_ade20k-512x512.py",
            input_size=(225, 257),
        ),
    )
