"""Mix Transformer (MiT-B0..B5), the encoder of SegFormer.

Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with
Transformers" (NeurIPS 2021). Layer for layer as the official code (NVlabs/SegFormer
``mmseg/models/backbones/mix_transformer.py``), mmsegmentation 1.2.2
``mmseg/models/backbones/mit.py`` and transformers ``models/segformer/modeling_segformer.py``:

* four stages, each an overlapping patch embedding (conv 7x7 stride 4 padding 3, then
  3x3 stride 2 padding 1; LayerNorm over the tokens), ``depths[i]`` transformer blocks
  and a final LayerNorm; outputs at strides 4/8/16/32, as NCHW maps;
* a block is ``x + DropPath(Attn(LN(x)))`` then ``x + DropPath(MixFFN(LN(x)))``;
* efficient self-attention: queries from every token, keys/values from the map reduced
  by a ``sr_ratio`` x ``sr_ratio`` conv with that stride (8/4/2/1) + LayerNorm; computed
  with ``scaled_dot_product_attention`` in the model's dtype (float64 stays float64);
* Mix-FFN: Linear (x ``mlp_ratio``) -> 3x3 depthwise conv -> GELU -> Linear;
* stochastic depth rising linearly from 0 to ``drop_path_rate`` (0.1, as the configs of
  mmseg, NVlabs and HF) over all blocks.

Variants (embed dims, depths; heads (1, 2, 5, 8), sr ratios (8, 4, 2, 1), MLP ratio 4):
B0 (32, 64, 160, 256) x (2, 2, 2, 2); B1..B5 (64, 128, 320, 512) x B1 (2, 2, 2, 2),
B2 (3, 4, 6, 3), B3 (3, 4, 18, 3), B4 (3, 8, 27, 3), B5 (3, 6, 40, 3). Any architecture
argument can be overridden by keyword (``create_backbone("mit_b0", depths=(1, 1, 1, 1))``),
as timm merges a variant's arguments with the caller's.

LayerNorm eps, the one place the references disagree: mmseg uses 1e-6 for every
LayerNorm (``layer_norm_eps=1e-6``, our default); the official code 1e-6 in the blocks and
stage norms but PyTorch's 1e-5 in the patch-embedding and spatial-reduction norms
(``patch_norm_eps=1e-5``); transformers 1e-5 everywhere, whatever ``layer_norm_eps`` its
config says (``layer_norm_eps=1e-5``).

Our state-dict layout (``stages.{i}``: ``patch_embed.{proj,norm}``,
``blocks.{j}.{norm1,attn.{q,kv,sr,norm,proj},norm2,mlp.{fc1,dwconv,fc2}}``, ``norm``) is the
official one nested as timm's PVT-v2; :func:`convert_mit_state_dict` maps the official,
mmseg and HF layouts to it (see ``_from_official`` / ``_from_mmseg`` / ``_from_hf``), and
``MixVisionTransformer.load_pretrained_state_dict`` (what :func:`seg_backbones.load_pretrained`
calls) loads them strictly.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ._features import FeatureInfo
from ._registry import register_backbone
from .pretrained import IncompatibleWeightsError, check_state_dict

__all__ = [
    "MIT_SOURCES",
    "MIT_VARIANTS",
    "DropPath",
    "EfficientSelfAttention",
    "MiTBlock",
    "MiTStage",
    "MixFFN",
    "MixVisionTransformer",
    "OverlapPatchEmbed",
    "convert_mit_state_dict",
    "detect_mit_source",
]

MiTSource = Literal["auto", "pkuseg", "official", "mmseg", "hf"]
MIT_SOURCES: tuple[str, ...] = ("auto", "pkuseg", "official", "mmseg", "hf")


class DropPath(nn.Module):
    """Stochastic depth: zero a sample's residual branch with probability ``p`` (training only)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _tokens_to_map(x: Tensor, hw: tuple[int, int]) -> Tensor:
    """(B, H*W, C) -> (B, C, H, W)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], hw[0], hw[1])


class OverlapPatchEmbed(nn.Module):
    """Conv ``patch_size`` x ``patch_size``, stride ``stride``, padding ``patch_size // 2``; LayerNorm."""

    def __init__(
        self, in_chans: int, dim: int, *, patch_size: int, stride: int, eps: float
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride=stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = self.proj(x)
        hw = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), hw


class EfficientSelfAttention(nn.Module):
    """Multi-head attention with keys/values from a ``sr_ratio``-times reduced map (PVT, SegFormer)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        sr_ratio: int,
        qkv_bias: bool,
        attn_drop: float,
        proj_drop: float,
        eps: float,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.attn_drop = attn_drop
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)  # keys then values, as the official
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=eps)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        b, n, c = x.shape
        heads, head_dim = self.num_heads, c // self.num_heads
        q = self.q(x).reshape(b, n, heads, head_dim).transpose(1, 2)
        kv_in = x
        if self.sr_ratio > 1:
            kv_in = self.norm(self.sr(_tokens_to_map(x, hw)).flatten(2).transpose(1, 2))
        k, v = self.kv(kv_in).reshape(b, -1, 2, heads, head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0
        )  # softmax(q k^T / sqrt(head_dim)) v, in x's dtype
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


class MixFFN(nn.Module):
    """``fc1`` -> 3x3 depthwise ``dwconv`` (positional information) -> GELU -> ``fc2``."""

    def __init__(self, dim: int, hidden: int, *, drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        x = self.dwconv(_tokens_to_map(self.fc1(x), hw)).flatten(2).transpose(1, 2)
        return self.drop(self.fc2(self.drop(self.act(x))))


class MiTBlock(nn.Module):
    """Pre-norm transformer block: efficient self-attention and Mix-FFN, each with DropPath."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp_ratio: int,
        sr_ratio: int,
        qkv_bias: bool,
        drop: float,
        attn_drop: float,
        drop_path: float,
        eps: float,
        patch_eps: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = EfficientSelfAttention(
            dim,
            num_heads,
            sr_ratio=sr_ratio,
            qkv_bias=qkv_bias,
            attn_drop=attn_drop,
            proj_drop=drop,
            eps=patch_eps,
        )
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MixFFN(dim, dim * mlp_ratio, drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.mlp(self.norm2(x), hw))


class MiTStage(nn.Module):
    """``patch_embed`` -> ``blocks`` -> ``norm``; returns an NCHW map."""

    def __init__(self, patch_embed: OverlapPatchEmbed, blocks: list[MiTBlock], norm: nn.LayerNorm):
        super().__init__()
        self.patch_embed = patch_embed
        self.blocks = nn.ModuleList(blocks)
        self.norm = norm
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        x, hw = self.patch_embed(x)
        for block in self.blocks:
            if self.grad_checkpointing and x.requires_grad:
                x = checkpoint(block, x, hw, use_reentrant=False)
            else:
                x = block(x, hw)
        return _tokens_to_map(self.norm(x), hw)


class MixVisionTransformer(nn.Module):
    """MiT backbone returning the four stage outputs (strides 4/8/16/32) as a list.

    Use :func:`seg_backbones.create_backbone` (``"mit_b0"`` .. ``"mit_b5"``); the module
    docstring explains every option.
    """

    def __init__(
        self,
        *,
        name: str,
        embed_dims: Sequence[int],
        depths: Sequence[int],
        num_heads: Sequence[int],
        sr_ratios: Sequence[int],
        mlp_ratios: Sequence[int],
        patch_sizes: Sequence[int],
        strides: Sequence[int],
        qkv_bias: bool,
        drop_rate: float,
        attn_drop_rate: float,
        drop_path_rate: float,
        layer_norm_eps: float,
        patch_norm_eps: float,
        in_chans: int,
        grad_checkpointing: bool,
    ) -> None:
        super().__init__()
        self.name = name
        total = sum(depths)
        # stochastic depth rises linearly over all blocks (= torch.linspace(0, rate, total))
        dpr = [drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
        self.stages = nn.ModuleList()
        self.feature_info: list[FeatureInfo] = []
        cin, reduction, start = in_chans, 1, 0
        for i, dim in enumerate(embed_dims):
            blocks = [
                MiTBlock(
                    dim,
                    num_heads[i],
                    mlp_ratio=mlp_ratios[i],
                    sr_ratio=sr_ratios[i],
                    qkv_bias=qkv_bias,
                    drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=dpr[start + j],
                    eps=layer_norm_eps,
                    patch_eps=patch_norm_eps,
                )
                for j in range(depths[i])
            ]
            embed = OverlapPatchEmbed(
                cin, dim, patch_size=patch_sizes[i], stride=strides[i], eps=patch_norm_eps
            )
            self.stages.append(MiTStage(embed, blocks, nn.LayerNorm(dim, eps=layer_norm_eps)))
            cin, reduction, start = dim, reduction * strides[i], start + depths[i]
            self.feature_info.append(FeatureInfo(dim, reduction))
        self.set_grad_checkpointing(grad_checkpointing)
        self._init_weights()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass (saves memory at 1024x1024, costs time)."""
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def _init_weights(self) -> None:
        # the official/mmseg init: trunc-normal(0.02) linears, LN 1/0, conv N(0, sqrt(2/fan_out))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
            elif isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, std=math.sqrt(2.0 / fan_out))
            else:
                continue
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def load_pretrained_state_dict(
        self, state_dict: Mapping[str, Tensor], *, source: MiTSource = "auto"
    ) -> None:
        """Load MiT weights in the official, mmseg, HF or our layout strictly (see the module doc).

        :func:`seg_backbones.load_pretrained` calls this. ``source="auto"`` detects the
        layout from the keys; missing, unexpected or mis-shaped keys raise
        :class:`~seg_backbones.IncompatibleWeightsError` listing them.
        """
        sd, found = _convert(state_dict, source)
        check_state_dict(self, sd, source=found)
        self.load_state_dict(sd, strict=True)


# ----------------------------------------------------------------------------------------
# weight layouts -> ours (timm's checkpoint_filter_fn, per source)

# (regex, replacement) over full keys; the first match wins, unmatched keys are kept as they
# are (so that the strict check lists them as unexpected)
_OFFICIAL_RULES: list[tuple[str, str]] = [
    (r"patch_embed(\d)\.(proj|norm)\.(\w+)", r"stages.{\1}.patch_embed.\2.\3"),
    (r"block(\d)\.(\d+)\.mlp\.dwconv\.dwconv\.(\w+)", r"stages.{\1}.blocks.\2.mlp.dwconv.\3"),
    (r"block(\d)\.(\d+)\.(.+)", r"stages.{\1}.blocks.\2.\3"),
    (r"norm(\d)\.(\w+)", r"stages.{\1}.norm.\2"),
]
_MMSEG_RULES: list[tuple[str, str]] = [
    (r"layers\.(\d)\.0\.projection\.(\w+)", r"stages.\1.patch_embed.proj.\2"),
    (r"layers\.(\d)\.0\.norm\.(\w+)", r"stages.\1.patch_embed.norm.\2"),
    (
        r"layers\.(\d)\.1\.(\d+)\.attn\.attn\.in_proj_(weight|bias)",
        r"stages.\1.blocks.\2.attn.qkv.\3",
    ),
    (r"layers\.(\d)\.1\.(\d+)\.attn\.attn\.out_proj\.(\w+)", r"stages.\1.blocks.\2.attn.proj.\3"),
    (r"layers\.(\d)\.1\.(\d+)\.ffn\.layers\.0\.(\w+)", r"stages.\1.blocks.\2.mlp.fc1.\3"),
    (r"layers\.(\d)\.1\.(\d+)\.ffn\.layers\.1\.(\w+)", r"stages.\1.blocks.\2.mlp.dwconv.\3"),
    (r"layers\.(\d)\.1\.(\d+)\.ffn\.layers\.4\.(\w+)", r"stages.\1.blocks.\2.mlp.fc2.\3"),
    (r"layers\.(\d)\.1\.(\d+)\.(.+)", r"stages.\1.blocks.\2.\3"),  # norm1/2, attn.sr, attn.norm
    (r"layers\.(\d)\.2\.(\w+)", r"stages.\1.norm.\2"),
]
_HF_BLOCK = {  # transformers' Hub layout (4.x and the files 5.x writes), then 5.x's module names
    "layer_norm_1": "norm1",
    "layer_norm_2": "norm2",
    "attention.self.query": "attn.q",
    "attention.self.key": "attn.k",
    "attention.self.value": "attn.v",
    "attention.self.sr": "attn.sr",
    "attention.self.layer_norm": "attn.norm",
    "attention.output.dense": "attn.proj",
    "mlp.dense1": "mlp.fc1",
    "mlp.dwconv.dwconv": "mlp.dwconv",
    "mlp.dense2": "mlp.fc2",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.q_proj": "attn.q",
    "attention.k_proj": "attn.k",
    "attention.v_proj": "attn.v",
    "attention.sequence_reduction.sequence_reduction": "attn.sr",
    "attention.sequence_reduction.layer_norm": "attn.norm",
    "attention.o_proj": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_HF_RULES: list[tuple[str, str]] = [
    (r"encoder\.patch_embeddings\.(\d)\.proj\.(\w+)", r"stages.\1.patch_embed.proj.\2"),
    (r"encoder\.patch_embeddings\.(\d)\.layer_norm\.(\w+)", r"stages.\1.patch_embed.norm.\2"),
    (r"encoder\.block\.(\d)\.(\d+)\.(.+)\.(\w+)", r"stages.\1.blocks.\2.<\3>.\4"),
    (r"encoder\.layer_norm\.(\d)\.(\w+)", r"stages.\1.norm.\2"),
    (r"stages\.(\d)\.patch_embeddings\.proj\.(\w+)", r"stages.\1.patch_embed.proj.\2"),
    (r"stages\.(\d)\.patch_embeddings\.layer_norm\.(\w+)", r"stages.\1.patch_embed.norm.\2"),
    (r"stages\.(\d)\.blocks\.(\d+)\.(.+)\.(\w+)", r"stages.\1.blocks.\2.<\3>.\4"),
    (r"stages\.(\d)\.layer_norm\.(\w+)", r"stages.\1.norm.\2"),
]
# keys that carry no backbone weights: ImageNet classifiers (official ``head``, HF ``classifier``)
_IGNORED = {"official": ("head.",), "hf": ("classifier.",), "mmseg": (), "pkuseg": ()}


def detect_mit_source(state_dict: Mapping[str, Any]) -> str:
    """Name the layout of a MiT state dict: ``pkuseg``, ``official``, ``mmseg`` or ``hf``."""
    keys = set(_strip(dict(state_dict)))
    probes = [
        ("pkuseg", "stages.0.patch_embed.proj.weight"),
        ("official", "patch_embed1.proj.weight"),
        ("mmseg", "layers.0.0.projection.weight"),
        ("hf", "encoder.patch_embeddings.0.proj.weight"),
        ("hf", "stages.0.patch_embeddings.proj.weight"),
    ]
    for source, key in probes:
        if key in keys:
            return source
    raise ValueError(
        f"cannot recognise this MiT state dict's layout: looked for {[k for _, k in probes]}; "
        f"first keys: {sorted(keys)[:10]}. Pass source= one of {list(MIT_SOURCES[1:])}."
    )


def _strip(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop wrapper prefixes (``module.``, ``backbone.``, HF's ``segformer.``)."""
    for prefix in ("module.", "backbone.", "segformer."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    if any(k.startswith("segformer.") for k in sd):  # HF SegformerForImageClassification
        sd = {k.removeprefix("segformer."): v for k, v in sd.items()}
    return sd


def _rename(sd: Mapping[str, Tensor], rules: list[tuple[str, str]]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        new = key
        for pattern, repl in rules:
            new, n = re.subn(f"^{pattern}$", repl, key)
            if n:
                break
        # official stage numbers are 1-based: "{2}" -> "1"
        new = re.sub(r"\{(\d)\}", lambda m: str(int(m.group(1)) - 1), new)
        new = re.sub(r"<(.+)>", lambda m: _HF_BLOCK.get(m.group(1), m.group(1)), new)
        out[new] = value
    return out


def _merge_hf_kv(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """HF's separate key/value projections -> our ``kv`` (keys first, then values)."""
    for k in [k for k in sd if re.search(r"\.attn\.k\.(weight|bias)$", k)]:
        v_key = k.replace(".attn.k.", ".attn.v.")
        if v_key in sd:
            sd[k.replace(".attn.k.", ".attn.kv.")] = torch.cat([sd.pop(k), sd.pop(v_key)], 0)
    return sd


def _split_mmseg(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """mmseg's ``in_proj`` (q; k; v stacked) -> ``q`` and ``kv``; 1x1-conv FFN weights -> linear."""
    for k in [k for k in sd if ".attn.qkv." in k]:
        qkv = sd.pop(k)
        dim = qkv.shape[0] // 3
        sd[k.replace(".qkv.", ".q.")] = qkv[:dim]
        sd[k.replace(".qkv.", ".kv.")] = qkv[dim:]
    for k in list(sd):
        if re.search(r"\.mlp\.fc[12]\.weight$", k) and sd[k].ndim == 4:
            sd[k] = sd[k].flatten(1)
    return sd


def convert_mit_state_dict(
    state_dict: Mapping[str, Tensor], *, source: MiTSource = "auto"
) -> dict[str, Tensor]:
    """Map a MiT state dict in ``source``'s layout to ours (no checking; see the loader).

    ``source``: ``"official"`` (NVlabs ImageNet files: ``patch_embed1.proj``,
    ``block1.0.attn.q/kv/sr``, ``norm1``; ``head.*`` dropped), ``"mmseg"``
    (``layers.i.0.projection``, ``layers.i.1.j.attn.attn.in_proj_weight``,
    ``ffn.layers.{0,1,4}``, ``layers.i.2``), ``"hf"`` (``[segformer.]encoder.*`` as on the
    Hub, or transformers 5's ``stages.i.*`` module names; ``classifier.*`` dropped),
    ``"pkuseg"`` (ours) or ``"auto"``. A common ``module.``/``backbone.`` prefix is stripped;
    a whole segmentation checkpoint (``decode_head.*``) is refused with the converter to use.
    """
    return _convert(state_dict, source)[0]


def _convert(state_dict: Mapping[str, Tensor], source: str) -> tuple[dict[str, Tensor], str]:
    """:func:`convert_mit_state_dict` and the source it used (detected when ``"auto"``)."""
    if source not in MIT_SOURCES:
        raise ValueError(f"unknown MiT weight source {source!r}; valid: {list(MIT_SOURCES)}")
    sd = _strip(dict(state_dict))
    heads = sorted({k.split(".")[0] for k in sd if k.startswith(("decode_head.", "auxiliary_"))})
    if heads:
        raise IncompatibleWeightsError(
            f"this is a whole segmentation checkpoint (keys {heads} beside the encoder); convert "
            "it with seg_heads.convert.from_mmseg(path, arch='segformer_mit-bX') or from_hf(dir)"
        )
    if source == "auto":
        source = detect_mit_source(sd)
    sd = {k: v for k, v in sd.items() if not k.startswith(_IGNORED[source])}
    if source == "official":
        sd = _rename(sd, _OFFICIAL_RULES)
    elif source == "mmseg":
        sd = _split_mmseg(_rename(sd, _MMSEG_RULES))
    elif source == "hf":
        sd = _merge_hf_kv(_rename(sd, _HF_RULES))
    return sd, source


# ----------------------------------------------------------------------------------------
# variants: plain data merged with the user's keyword-only options

_WIDE = (64, 128, 320, 512)
MIT_VARIANTS: dict[str, dict[str, tuple[int, ...]]] = {  # the other arguments are shared
    "mit_b0": {"embed_dims": (32, 64, 160, 256), "depths": (2, 2, 2, 2)},
    "mit_b1": {"embed_dims": _WIDE, "depths": (2, 2, 2, 2)},
    "mit_b2": {"embed_dims": _WIDE, "depths": (3, 4, 6, 3)},
    "mit_b3": {"embed_dims": _WIDE, "depths": (3, 4, 18, 3)},
    "mit_b4": {"embed_dims": _WIDE, "depths": (3, 8, 27, 3)},
    "mit_b5": {"embed_dims": _WIDE, "depths": (3, 6, 40, 3)},
}


def _create_mit(
    name: str,
    *,
    embed_dims: Sequence[int] | None = None,
    depths: Sequence[int] | None = None,
    num_heads: Sequence[int] = (1, 2, 5, 8),
    sr_ratios: Sequence[int] = (8, 4, 2, 1),
    mlp_ratios: Sequence[int] = (4, 4, 4, 4),
    patch_sizes: Sequence[int] = (7, 3, 3, 3),
    strides: Sequence[int] = (4, 2, 2, 2),
    qkv_bias: bool = True,
    drop_rate: float = 0.0,
    attn_drop_rate: float = 0.0,
    drop_path_rate: float = 0.1,
    layer_norm_eps: float = 1e-6,
    patch_norm_eps: float | None = None,
    output_stride: int = 32,
    in_chans: int = 3,
    grad_checkpointing: bool = False,
) -> MixVisionTransformer:
    arch = {
        "embed_dims": embed_dims if embed_dims is not None else MIT_VARIANTS[name]["embed_dims"],
        "depths": depths if depths is not None else MIT_VARIANTS[name]["depths"],
        "num_heads": num_heads,
        "sr_ratios": sr_ratios,
        "mlp_ratios": mlp_ratios,
        "patch_sizes": patch_sizes,
        "strides": strides,
    }
    arch = {k: tuple(int(x) for x in v) for k, v in arch.items()}
    bad = {k: v for k, v in arch.items() if len(v) != 4 or min(v) < 1}
    if bad:
        raise ValueError(f"{name}: each of {sorted(arch)} needs 4 positive ints, got {bad}")
    valid_os = math.prod(arch["strides"])
    if output_stride != valid_os:
        raise ValueError(
            f"{name} supports only output_stride={valid_os} (its strided patch embeddings "
            f"cannot be dilated), got output_stride={output_stride!r}"
        )
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"{name}: drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
    return MixVisionTransformer(
        name=name,
        **arch,
        qkv_bias=qkv_bias,
        drop_rate=drop_rate,
        attn_drop_rate=attn_drop_rate,
        drop_path_rate=drop_path_rate,
        layer_norm_eps=layer_norm_eps,
        patch_norm_eps=layer_norm_eps if patch_norm_eps is None else patch_norm_eps,
        in_chans=in_chans,
        grad_checkpointing=grad_checkpointing,
    )


_OPTIONS = frozenset(
    n for n, p in inspect.signature(_create_mit).parameters.items() if p.kind is p.KEYWORD_ONLY
)


def _build(name: str, kwargs: dict[str, Any]) -> MixVisionTransformer:
    unknown = sorted(set(kwargs) - _OPTIONS)
    if unknown:
        raise TypeError(
            f"{name}: unknown option(s) {unknown}; valid keyword options are {sorted(_OPTIONS)}"
        )
    return _create_mit(name, **kwargs)


@register_backbone("mit_b0")
def mit_b0(**kwargs: Any) -> MixVisionTransformer:
    """MiT-B0: dims (32, 64, 160, 256), depths (2, 2, 2, 2); 3.3M parameters."""
    return _build("mit_b0", kwargs)


@register_backbone("mit_b1")
def mit_b1(**kwargs: Any) -> MixVisionTransformer:
    """MiT-B1: dims (64, 128, 320, 512), depths (2, 2, 2, 2); 13.2M parameters."""
    return _build("mit_b1", kwargs)


@register_backbone("mit_b2")
def mit_b2(**kwargs: Any) -> MixVisionTransformer:
    """MiT-B2: dims (64, 128, 320, 512), depths (3, 4, 6, 3); 24.2M parameters."""
    return _build("mit_b2", kwargs)


@register_backbone("mit_b3")
def mit_b3(**kwargs: Any) -> MixVisionTransformer:
    """MiT-B3: dims (64, 128, 320, 512), depths (3, 4, 18, 3); 44.1M parameters."""
    return _build("mit_b3", kwargs)


@register_backbone("mit_b4")
def mit_b4(**kwargs: Any) -> MixVisionTransformer:
    """MiT-B4: dims (64, 128, 320, 512), depths (3, 8, 27, 3); 60.8M parameters."""
    return _build("mit_b4", kwargs)


@register_backbone("mit_b5")
def mit_b5(**kwargs: Any) -> MixVisionTransformer:
    """MiT-B5: dims (64, 128, 320, 512), depths (3, 6, 40, 3); 81.4M parameters."""
    return _build("mit_b5", kwargs)
