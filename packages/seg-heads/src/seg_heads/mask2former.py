"""Mask2Former (Cheng et al., "Masked-attention Mask Transformer for Universal Image
Segmentation", CVPR 2022; official code facebookresearch/Mask2Former), in pure PyTorch.

A mask-classification head over four backbone levels (strides 4, 8, 16, 32):

1. **Pixel decoder** (:class:`MSDeformAttnPixelDecoder`, official ``MSDeformAttnPixelDecoder``):
   the three coarsest levels are projected to ``conv_dim`` (1x1 conv + GroupNorm(32)),
   flattened, concatenated and refined by ``encoder_layers`` (6) multi-scale deformable
   attention encoder layers (Zhu et al., Deformable DETR; 8 heads, 3 levels, 4 points,
   FFN ``encoder_ffn_dim`` 1024, post-norm), with sine position embeddings plus a learned
   level embedding. The stride-4 level joins FPN-style (lateral 1x1 conv + GN, bilinear
   upsampling of the stride-8 map, 3x3 conv + GN + ReLU) and a 1x1 conv gives the
   ``mask_dim`` per-pixel embeddings (the "mask features").
   The deformable attention samples with :func:`torch.nn.functional.grid_sample`
   (bilinear, zero padding, ``align_corners=False``: exactly what the official CUDA op
   computes), so there is no compiled op and the model exports to ONNX / ``torch.export``.
2. **Transformer decoder** (:class:`MaskedAttentionDecoder`, official
   ``MultiScaleMaskedTransformerDecoder``): ``num_queries`` (100) learnable query features
   and query position embeddings go through ``decoder_layers`` (9) layers of masked cross
   attention -> self attention -> FFN (``ffn_dim`` 2048, post-norm unless ``pre_norm``),
   round-robin over the stride-32/16/8 maps (each with its sine position embedding and
   level embedding). Before layer 1 and after every layer a shared LayerNorm, class
   head (``num_classes + 1``, the last is "no object") and 3-layer mask MLP give a
   prediction; each prediction's mask logits, resized to the next layer's level and
   thresholded at sigmoid 0.5, restrict that layer's cross attention (a query whose mask
   is empty attends everywhere, as the official code does).

Outputs of ``forward(features, input_size=(H, W))`` (the head has ``wants_input_size``):

- ``"class_logits"`` N x Q x (K+1) and ``"mask_logits"`` N x Q x H/4 x W/4: the last
  prediction, always;
- ``"out"`` N x K x H x W: the semantic scores of the official semantic inference
  (``MaskFormer.semantic_inference``): mask logits resized bilinearly to the input size
  (``align_corners=False``), ``softmax`` over the classes without the no-object class,
  ``sigmoid`` masks, ``einsum("nqc,nqhw->nchw")``;
- in training also ``"deep_supervision"``: the ``decoder_layers`` earlier predictions
  (from the learnable queries before layer 1, then after each layer but the last), in
  order, each a dict with ``"class_logits"`` and ``"mask_logits"``: what the trainer's
  Hungarian-matching loss consumes (losses live in ``seg_trainer``, not here).

We follow the official semantic inference, not transformers'
``Mask2FormerImageProcessor.post_process_semantic_segmentation``, which first resizes the
mask logits to a fixed 384 x 384, takes the class-mask product there and only then resizes
the scores to the target size. That fixed intermediate size is a transformers choice (it
blurs masks of images larger than 384 and adds a second interpolation); the paper's
numbers come from the official code, which resizes straight to the input. The raw logits
(``class_queries_logits`` / ``masks_queries_logits`` in transformers) are identical to
transformers' (:func:`seg_heads.convert.from_hf`, tested in float64 to 1e-6).

Backbones: any with four levels at strides 4..32, e.g. ``resnet50`` / ``resnet101``
(``output_stride=32``, the default here) or ``timm:swin_{tiny,small,base,large}_*``; the
official Swin (``D2SwinTransformer``) LayerNorms every output, which is
``backbone_kwargs={"out_norm": True}``. Sizes with 150 classes (paper Table 3: R50 44M,
R101 63M, Swin-T 47M, Swin-S 69M, Swin-B 107M): ours 44.0M, 63.0M, 47.4M, 68.8M, 106.9M.

Defaults are the official ADE20K / Cityscapes semantic configs
(``maskformer2_R50_bs16_160k.yaml``): 100 queries, hidden 256, 8 heads, FFN 2048,
``DEC_LAYERS: 10`` (= 9 decoder layers: the official code and transformers subtract the
prediction made from the learnable queries), 6 encoder layers of FFN 1024, conv and mask
dims 256, dropout 0. Initialisation follows the official code (Xavier for the attention
and FFN matrices, Deformable DETR's sampling-offset grid, detectron2's ``c2_xavier_fill``
for the pixel-decoder convs, N(0, 1) embeddings).

Differences from the official code, none of which changes the function:

- the attentions are written out (``q``/``k``/``v`` linears instead of
  ``nn.MultiheadAttention``'s packed ``in_proj_weight``, batch-first), so a boolean mask
  becomes ``masked_fill(-inf)`` before the softmax;
- the padding masks of the official pixel decoder are always empty for a batch of equal
  sizes (``valid_ratios`` are 1), so they are left out; pad the batch before the model.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seg_backbones import FeatureInfo

from ._layers import check_in_index
from ._registry import register_head

__all__ = [
    "MSDeformAttn",
    "MSDeformAttnPixelDecoder",
    "Mask2FormerHead",
    "MaskedAttentionDecoder",
    "ms_deform_attn",
    "sine_position_embedding",
]

NUM_LEVELS = 3  # levels of the deformable encoder and of the decoder's round robin
GN_GROUPS = 32  # the official GroupNorm groups


# ------------------------------------------------------------------------------ building blocks


def sine_position_embedding(
    height: Any, width: Any, num_feats: int, *, like: Tensor, temperature: float = 10000.0
) -> Tensor:
    """DETR's normalised sine embedding of a ``height x width`` map, ``(H*W) x 2*num_feats``.

    Positions ``1..H`` / ``1..W`` scaled to ``(0, 2 pi]`` (``/ (H + 1e-6) * 2 pi``, the
    official ``PositionEmbeddingSine(normalize=True)`` without a padding mask); channel
    ``2i`` is ``sin(p / T^(2i/F))``, ``2i+1`` is ``cos(p / T^(2i/F))``; the first
    ``num_feats`` channels encode y, the next x.
    """
    y = torch.arange(1, height + 1, dtype=like.dtype, device=like.device)
    x = torch.arange(1, width + 1, dtype=like.dtype, device=like.device)
    y = y / (y[-1:] + 1e-6) * (2 * math.pi)
    x = x / (x[-1:] + 1e-6) * (2 * math.pi)
    dim_t = torch.arange(num_feats, dtype=torch.int64, device=like.device).to(like.dtype)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)

    def encode(p: Tensor) -> Tensor:  # L -> L x F, sin/cos interleaved
        p = p[:, None] / dim_t
        return torch.stack((p[:, 0::2].sin(), p[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = encode(y)[:, None, :].expand(-1, x.shape[0], -1)
    pos_x = encode(x)[None, :, :].expand(y.shape[0], -1, -1)
    return torch.cat((pos_y, pos_x), dim=2).flatten(0, 1)


def ms_deform_attn(
    values: Sequence[Tensor], sampling_grids: Tensor, attention_weights: Tensor
) -> Tensor:
    """Multi-scale deformable attention core (the official CUDA op), with ``grid_sample``.

    Args:
        values: per level ``(N * heads) x head_dim x H_l x W_l``.
        sampling_grids: ``N x Lq x heads x L x P x 2`` locations in ``[-1, 1]`` (x, y).
        attention_weights: ``N x Lq x heads x L x P``, softmax-normalised over ``L x P``.

    Returns:
        ``N x Lq x (heads * head_dim)``: per head, the weighted sum of the bilinearly
        sampled values (zero outside the map; pixel centres at ``(i + 0.5) / size``).
    """
    n, lq, heads, levels, points, _ = sampling_grids.shape
    sampled = []
    for level, value in enumerate(values):
        grid = sampling_grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # N*h x Lq x P x 2
        sampled.append(
            F.grid_sample(value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        )  # N*h x d x Lq x P
    weights = attention_weights.transpose(1, 2).reshape(n * heads, 1, lq, levels * points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)  # N*h x d x Lq
    return out.view(n, -1, lq).transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (Deformable DETR; official ``MSDeformAttn``).

    Each query predicts, per head, level and point, a sampling offset (in pixels of that
    level, added to its reference point) and a weight (softmax over levels x points).
    """

    def __init__(self, dim: int, *, num_heads: int, num_levels: int, num_points: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"mask2former: dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads = dim, num_heads
        self.num_levels, self.num_points = num_levels, num_points
        self.sampling_offsets = nn.Linear(dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's init: offsets start on rings around the reference point."""
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.num_heads, dtype=torch.float32) * (2 * math.pi / self.num_heads)
        grid = torch.stack([theta.cos(), theta.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True).values
        grid = grid.view(self.num_heads, 1, 1, 2).repeat(1, self.num_levels, self.num_points, 1)
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value: Tensor,
        shapes: Sequence[tuple[Any, Any]],
    ) -> Tensor:
        """``query`` N x Lq x C, ``reference_points`` Lq x 2 in ``[0, 1]`` (x, y), ``value``
        N x S x C: the ``shapes`` maps (``H_l x W_l`` each) flattened and concatenated."""
        n, lq, _ = query.shape
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        value = self.value_proj(value)
        per_level = value.split([h * w for h, w in shapes], dim=1)
        values = [
            v.transpose(1, 2).reshape(n * heads, self.dim // heads, h, w)
            for v, (h, w) in zip(per_level, shapes, strict=True)
        ]
        offsets = self.sampling_offsets(query).view(n, lq, heads, levels, points, 2)
        weights = self.attention_weights(query).view(n, lq, heads, levels * points)
        weights = weights.softmax(-1).view(n, lq, heads, levels, points)
        grids = []
        for level, (h, w) in enumerate(shapes):  # offsets are in pixels of each level
            off = offsets[:, :, :, level]
            loc = reference_points[None, :, None, None, :] + torch.stack(
                (off[..., 0] / w, off[..., 1] / h), dim=-1
            )
            grids.append(2 * loc - 1)
        out = ms_deform_attn(values, torch.stack(grids, dim=3), weights)
        return self.output_proj(out)


class _DeformableEncoderLayer(nn.Module):
    """Deformable self-attention over all levels, then an FFN; post-norm (official)."""

    def __init__(
        self, dim: int, *, ffn_dim: int, num_heads: int, num_points: int, dropout: float
    ) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(
            dim, num_heads=num_heads, num_levels=NUM_LEVELS, num_points=num_points
        )
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, pos: Tensor, reference_points: Tensor, shapes: Sequence[tuple[Any, Any]]
    ) -> Tensor:
        x = self.norm1(x + self.dropout(self.self_attn(x + pos, reference_points, x, shapes)))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm2(x + self.dropout(ffn))


def _conv_gn(cin: int, cout: int, kernel_size: int, *, bias: bool, relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2, bias=bias),
        nn.GroupNorm(GN_GROUPS, cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _c2_xavier_fill(conv: nn.Conv2d) -> None:
    """detectron2's ``c2_xavier_fill``: Kaiming uniform with ``a=1``, zero bias."""
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class MSDeformAttnPixelDecoder(nn.Module):
    """The pixel decoder: deformable encoder on the 3 coarsest levels, FPN on the finer ones.

    Args:
        in_channels: channels of the levels read, finest first (strides 4, 8, 16, 32).
        conv_dim: width of the encoder and the FPN (``CONVS_DIM``, 256).
        mask_dim: width of the per-pixel mask embeddings (``MASK_DIM``, 256).
        encoder_layers: deformable encoder layers (6).
        encoder_ffn_dim: their FFN width (1024).
        num_heads: deformable attention heads (8).
        num_points: sampling points per head and level (4).
        dropout: in the encoder layers (0.0).

    ``forward`` returns ``(mask_features N x mask_dim x H/4 x W/4, [stride-32, stride-16,
    stride-8 maps])``: the multi-scale maps the transformer decoder attends to.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        *,
        conv_dim: int = 256,
        mask_dim: int = 256,
        encoder_layers: int = 6,
        encoder_ffn_dim: int = 1024,
        num_heads: int = 8,
        num_points: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        in_channels = [int(c) for c in in_channels]
        if len(in_channels) < NUM_LEVELS + 1:
            raise ValueError(
                f"mask2former: the pixel decoder reads >= {NUM_LEVELS + 1} levels (strides 4, 8, "
                f"16, 32), got {len(in_channels)} with channels {in_channels}"
            )
        if conv_dim % GN_GROUPS:
            raise ValueError(
                f"mask2former: conv_dim={conv_dim} must be a multiple of {GN_GROUPS} (GroupNorm)"
            )
        self.num_fpn_levels = len(in_channels) - NUM_LEVELS
        self.conv_dim = conv_dim
        # coarsest first, as the official code (and level_embed's order)
        self.input_proj = nn.ModuleList(
            _conv_gn(c, conv_dim, 1, bias=True, relu=False)
            for c in in_channels[self.num_fpn_levels :][::-1]
        )
        self.level_embed = nn.Parameter(torch.empty(NUM_LEVELS, conv_dim))
        self.encoder = nn.ModuleList(
            _DeformableEncoderLayer(
                conv_dim,
                ffn_dim=encoder_ffn_dim,
                num_heads=num_heads,
                num_points=num_points,
                dropout=dropout,
            )
            for _ in range(encoder_layers)
        )
        # FPN over the finer levels, coarsest (stride 4 when there is one) first
        fine = in_channels[: self.num_fpn_levels][::-1]
        self.lateral_convs = nn.ModuleList(
            _conv_gn(c, conv_dim, 1, bias=False, relu=False) for c in fine
        )
        self.output_convs = nn.ModuleList(
            _conv_gn(conv_dim, conv_dim, 3, bias=False, relu=True) for _ in fine
        )
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in self.encoder:  # MSDeformAttnTransformerEncoderOnly._reset_parameters
            for p in layer.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
            layer.self_attn.reset_parameters()
        nn.init.normal_(self.level_embed)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight)
            nn.init.zeros_(proj[0].bias)
        for seq in (*self.lateral_convs, *self.output_convs):
            _c2_xavier_fill(seq[0])
        _c2_xavier_fill(self.mask_features)

    def forward(self, levels: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        coarse = list(levels[self.num_fpn_levels :])[::-1]  # stride 32, 16, 8
        maps = [proj(x) for proj, x in zip(self.input_proj, coarse, strict=True)]
        shapes = [(m.shape[-2], m.shape[-1]) for m in maps]
        tokens = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)  # N x S x C
        half = self.conv_dim // 2
        pos = torch.cat(
            [
                sine_position_embedding(h, w, half, like=tokens) + self.level_embed[i]
                for i, (h, w) in enumerate(shapes)
            ]
        )[None]
        reference_points = torch.cat([_reference_points(h, w, like=tokens) for h, w in shapes])
        for layer in self.encoder:
            tokens = layer(tokens, pos, reference_points, shapes)
        n = tokens.shape[0]
        outs = [
            t.transpose(1, 2).reshape(n, self.conv_dim, h, w)
            for t, (h, w) in zip(
                tokens.split([h * w for h, w in shapes], dim=1), shapes, strict=True
            )
        ]
        y = outs[-1]
        fine = list(levels[: self.num_fpn_levels])[::-1]
        for lateral, output, x in zip(self.lateral_convs, self.output_convs, fine, strict=True):
            cur = lateral(x)
            y = output(
                cur + F.interpolate(y, size=cur.shape[-2:], mode="bilinear", align_corners=False)
            )
        return self.mask_features(y), outs


def _reference_points(height: Any, width: Any, *, like: Tensor) -> Tensor:
    """Pixel centres of a ``height x width`` map, normalised to ``[0, 1]``: ``(H*W) x 2`` (x, y)."""
    y = (torch.arange(height, dtype=like.dtype, device=like.device) + 0.5) / height
    x = (torch.arange(width, dtype=like.dtype, device=like.device) + 0.5) / width
    return torch.stack(
        (x[None, :].expand(y.shape[0], -1), y[:, None].expand(-1, x.shape[0])), dim=-1
    ).flatten(0, 1)


class _Attention(nn.Module):
    """Multi-head attention, batch-first, ``q``/``k``/``v``/``out`` projections.

    ``mask``: boolean, ``True`` = may not attend, broadcast to ``N x heads x Lq x Lk``.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(
                f"mask2former: hidden_dim {dim} is not divisible by num_heads {num_heads}"
            )
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        # nn.MultiheadAttention + the official layers' Xavier init: the packed (3C x C)
        # in_proj_weight is Xavier-uniform as one matrix, its bias and out_proj's are zero
        bound = math.sqrt(6.0 / (dim + 3 * dim))
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.uniform_(proj.weight, -bound, bound)
            nn.init.zeros_(proj.bias)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(
        self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None
    ) -> Tensor:
        n, lq, dim = query.shape
        heads = self.num_heads

        def split(x: Tensor) -> Tensor:  # N x L x C -> N x heads x L x C/heads
            return x.view(n, -1, heads, dim // heads).transpose(1, 2)

        q = split(self.q_proj(query)) * (dim // heads) ** -0.5
        k, v = split(self.k_proj(key)), split(self.v_proj(value))
        scores = q @ k.transpose(-2, -1)
        if mask is not None:
            scores = scores.masked_fill(mask, float("-inf"))
        attn = self.dropout(scores.softmax(-1))
        return self.out_proj((attn @ v).transpose(1, 2).reshape(n, lq, dim))


class _DecoderLayer(nn.Module):
    """Masked cross attention -> self attention -> FFN (official order), post- or pre-norm."""

    def __init__(
        self, dim: int, *, num_heads: int, ffn_dim: int, dropout: float, pre_norm: bool
    ) -> None:
        super().__init__()
        self.pre_norm = pre_norm
        self.cross_attn = _Attention(dim, num_heads, dropout)
        self.cross_norm = nn.LayerNorm(dim)
        self.self_attn = _Attention(dim, num_heads, dropout)
        self.self_norm = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.ffn_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        for lin in (self.linear1, self.linear2):  # FFNLayer._reset_parameters
            nn.init.xavier_uniform_(lin.weight)

    def forward(
        self, x: Tensor, query_pos: Tensor, memory: Tensor, memory_pos: Tensor, mask: Tensor | None
    ) -> Tensor:
        def cross(h: Tensor) -> Tensor:
            return self.cross_attn(h + query_pos, memory + memory_pos, memory, mask)

        def self_attn(h: Tensor) -> Tensor:
            q = h + query_pos
            return self.self_attn(q, q, h)

        def ffn(h: Tensor) -> Tensor:
            return self.linear2(self.dropout(F.relu(self.linear1(h))))

        for block, norm in (
            (cross, self.cross_norm),
            (self_attn, self.self_norm),
            (ffn, self.ffn_norm),
        ):
            if self.pre_norm:
                x = x + self.dropout(block(norm(x)))
            else:
                x = norm(x + self.dropout(block(x)))
        return x


class _MLP(nn.Module):
    """``num_layers`` linears with ReLU between (DETR's ``MLP``; ``layers.{i}``)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class MaskedAttentionDecoder(nn.Module):
    """The transformer decoder with masked attention and the class / mask predictions.

    Args:
        in_channels: channels of the pixel decoder's maps (``conv_dim``).
        num_classes: K; the class head has K + 1 outputs (the last: no object).
        mask_dim: channels of the mask features.
        num_queries: learnable queries (100).
        hidden_dim: query width (256).
        num_heads: attention heads (8).
        ffn_dim: FFN width (2048).
        decoder_layers: layers (9 = the official ``DEC_LAYERS: 10`` minus one).
        pre_norm: pre-LayerNorm layers (official ``PRE_NORM``, False).
        enforce_input_proj: a 1x1 conv on the maps even if ``in_channels == hidden_dim``.
        dropout: in the attentions and FFNs (0.0).

    ``forward(mask_features, maps)`` returns the ``decoder_layers + 1`` predictions
    ``(class_logits N x Q x (K+1), mask_logits N x Q x h x w)``, first to last.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        mask_dim: int = 256,
        num_queries: int = 100,
        hidden_dim: int = 256,
        num_heads: int = 8,
        ffn_dim: int = 2048,
        decoder_layers: int = 9,
        pre_norm: bool = False,
        enforce_input_proj: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.input_proj = nn.ModuleList()
        for _ in range(NUM_LEVELS):
            if in_channels != hidden_dim or enforce_input_proj:
                conv = nn.Conv2d(in_channels, hidden_dim, 1)
                _c2_xavier_fill(conv)
                self.input_proj.append(conv)
            else:
                self.input_proj.append(nn.Identity())
        self.level_embed = nn.Embedding(NUM_LEVELS, hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.layers = nn.ModuleList(
            _DecoderLayer(
                hidden_dim, num_heads=num_heads, ffn_dim=ffn_dim, dropout=dropout, pre_norm=pre_norm
            )
            for _ in range(decoder_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = _MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def _predict(
        self, x: Tensor, mask_features: Tensor, mask_size: Any | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(class_logits, mask_logits, attention mask at mask_size or None)``."""
        h = self.decoder_norm(x)
        class_logits = self.class_embed(h)
        mask_logits = torch.einsum("nqc,nchw->nqhw", self.mask_embed(h), mask_features)
        if mask_size is None:
            return class_logits, mask_logits, None
        m = F.interpolate(mask_logits, size=mask_size, mode="bilinear", align_corners=False)
        attn_mask = (m.sigmoid().flatten(2) < 0.5).detach()  # N x Q x HW, True = blocked
        # a query whose mask is empty attends everywhere (official: rows all True -> False)
        attn_mask = attn_mask & ~attn_mask.all(-1, keepdim=True)
        return class_logits, mask_logits, attn_mask[:, None]  # broadcast over heads

    def forward(self, mask_features: Tensor, maps: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
        memory, memory_pos, sizes = [], [], []
        for i, (proj, m) in enumerate(zip(self.input_proj, maps, strict=True)):
            h, w = m.shape[-2], m.shape[-1]
            sizes.append((h, w))
            memory.append(proj(m).flatten(2).transpose(1, 2) + self.level_embed.weight[i])
            memory_pos.append(
                sine_position_embedding(h, w, self.hidden_dim // 2, like=mask_features)[None]
            )
        n = mask_features.shape[0]
        x = self.query_feat.weight[None].expand(n, -1, -1)
        query_pos = self.query_embed.weight[None].expand(n, -1, -1)
        num = len(self.layers)
        class_logits, mask_logits, attn_mask = self._predict(
            x, mask_features, sizes[0] if num else None
        )
        predictions = [(class_logits, mask_logits)]
        for i, layer in enumerate(self.layers):
            level = i % NUM_LEVELS
            x = layer(x, query_pos, memory[level], memory_pos[level], attn_mask)
            next_size = sizes[(i + 1) % NUM_LEVELS] if i + 1 < num else None
            class_logits, mask_logits, attn_mask = self._predict(x, mask_features, next_size)
            predictions.append((class_logits, mask_logits))
        return predictions


# ---------------------------------------------------------------------------------------- head


class Mask2FormerHead(nn.Module):
    """Pixel decoder + masked-attention transformer decoder + semantic inference.

    Args:
        in_channels: channels of the four levels read (strides 4, 8, 16, 32).
        num_classes: K semantic classes (the class head adds "no object").
        in_index: the backbone outputs read ((0, 1, 2, 3)).
        num_queries, hidden_dim, num_heads, ffn_dim, decoder_layers, pre_norm,
            enforce_input_proj: of :class:`MaskedAttentionDecoder`.
        conv_dim, mask_dim, encoder_layers, encoder_ffn_dim, num_points: of
            :class:`MSDeformAttnPixelDecoder` (``num_heads`` is shared, as officially).
        dropout: in every attention and FFN (0.0, official).

    ``forward(features, input_size=(H, W))`` returns the dict of the module docstring.
    """

    wants_input_size = True

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        *,
        in_index: Sequence[int] = (0, 1, 2, 3),
        num_queries: int = 100,
        hidden_dim: int = 256,
        num_heads: int = 8,
        ffn_dim: int = 2048,
        decoder_layers: int = 9,
        pre_norm: bool = False,
        enforce_input_proj: bool = False,
        conv_dim: int = 256,
        mask_dim: int = 256,
        encoder_layers: int = 6,
        encoder_ffn_dim: int = 1024,
        num_points: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        in_index = tuple(in_index)
        if len(in_index) != len(in_channels):
            raise ValueError(
                f"mask2former: in_index={in_index} and in_channels={list(in_channels)} must "
                "name the same list of levels"
            )
        if decoder_layers < 0 or num_queries < 1:
            raise ValueError(
                f"mask2former: decoder_layers={decoder_layers} must be >= 0 and "
                f"num_queries={num_queries} >= 1"
            )
        self.in_index = in_index
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.pixel_decoder = MSDeformAttnPixelDecoder(
            in_channels,
            conv_dim=conv_dim,
            mask_dim=mask_dim,
            encoder_layers=encoder_layers,
            encoder_ffn_dim=encoder_ffn_dim,
            num_heads=num_heads,
            num_points=num_points,
            dropout=dropout,
        )
        self.predictor = MaskedAttentionDecoder(
            conv_dim,
            num_classes,
            mask_dim=mask_dim,
            num_queries=num_queries,
            hidden_dim=hidden_dim,
            num_heads=num_heads,
            ffn_dim=ffn_dim,
            decoder_layers=decoder_layers,
            pre_norm=pre_norm,
            enforce_input_proj=enforce_input_proj,
            dropout=dropout,
        )

    def forward(self, features: Sequence[Tensor], input_size: Any = None) -> dict[str, Any]:
        levels = [features[i] for i in self.in_index]
        mask_features, maps = self.pixel_decoder(levels)
        predictions = self.predictor(mask_features, maps)
        class_logits, mask_logits = predictions[-1]
        size = mask_logits.shape[-2:] if input_size is None else input_size
        out: dict[str, Any] = {
            "out": semantic_inference(class_logits, mask_logits, size),
            "class_logits": class_logits,
            "mask_logits": mask_logits,
        }
        if self.training:
            out["deep_supervision"] = [
                {"class_logits": c, "mask_logits": m} for c, m in predictions[:-1]
            ]
        return out


def semantic_inference(class_logits: Tensor, mask_logits: Tensor, size: Any) -> Tensor:
    """The official ``semantic_inference``: N x K x H x W scores at ``size``.

    Mask logits resized bilinearly (``align_corners=False``), ``softmax`` class
    probabilities without the no-object class, ``sigmoid`` masks, summed over queries.
    """
    masks = F.interpolate(mask_logits, size=size, mode="bilinear", align_corners=False)
    probs = class_logits.softmax(-1)[..., :-1]
    return torch.einsum("nqc,nqhw->nchw", probs, masks.sigmoid())


@register_head(
    "mask2former",
    output_stride=32,
    tiny={
        "backbone": "resnet18_deep",
        "aux": False,
        "head_kwargs": {
            "num_queries": 8,
            "hidden_dim": 32,
            "num_heads": 4,
            "ffn_dim": 64,
            "decoder_layers": 3,
            "conv_dim": 32,
            "mask_dim": 32,
            "encoder_layers": 1,
            "encoder_ffn_dim": 64,
        },
    },
)
def _mask2former(
    feature_info: Sequence[FeatureInfo],
    num_classes: int,
    *,
    output_stride: int,
    align_corners: bool,
    **head_kwargs: Any,
) -> nn.Module:
    """Mask2Former (official ADE20K/Cityscapes semantic configs) on four backbone levels."""
    del output_stride  # the decoders take whatever strides the levels have
    if align_corners:
        raise ValueError(
            "mask2former: align_corners=True is not supported; Mask2Former resizes with "
            "align_corners=False everywhere (official code); use align_corners=False"
        )
    in_index = check_in_index(
        feature_info, head_kwargs.pop("in_index", (0, 1, 2, 3)), head="mask2former"
    )
    levels = (in_index,) if isinstance(in_index, int) else in_index
    strides = [feature_info[i][1] for i in levels]
    if len(levels) < NUM_LEVELS + 1 or strides != sorted(strides):
        info = [tuple(feature_info[i]) for i in levels]
        raise ValueError(
            f"mask2former: in_index={levels} must name >= {NUM_LEVELS + 1} backbone levels, "
            f"finest first (strides 4, 8, 16, 32); they are (channels, stride) {info}. Use a "
            "backbone with four levels (resnet50, resnet101, timm:swin_*)"
        )
    return Mask2FormerHead(
        [feature_info[i][0] for i in levels], num_classes, in_index=levels, **head_kwargs
    )
