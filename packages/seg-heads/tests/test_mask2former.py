"""Mask2Former: the output contract, the pure-PyTorch deformable attention on hand-made
cases, masked attention, sizes against the paper.

Equality with transformers' implementation (class and mask logits, float64) is in
``test_convert_mask2former_hf.py``; the registry-wide forward/backward and export contracts
build the registered tiny config (``test_models.py``, ``test_export.py``).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from seg_heads import create_model, tiny_config
from seg_heads.mask2former import (
    Mask2FormerHead,
    MaskedAttentionDecoder,
    ms_deform_attn,
    semantic_inference,
    sine_position_embedding,
)

TINY = tiny_config("mask2former")
K = 5


def _tiny(**head_kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    config = dict(TINY, head_kwargs={**TINY["head_kwargs"], **head_kwargs})
    return create_model("mask2former", num_classes=K, **config)


def test_output_contract_in_training_and_eval() -> None:
    model = _tiny(decoder_layers=3)
    head = model.decode_head
    assert isinstance(head, Mask2FormerHead) and head.wants_input_size
    assert not getattr(head, "returns_aux", False)
    q = head.num_queries
    x = torch.randn(2, 3, 70, 90)
    out = model.train()(x)
    assert set(out) == {"out", "class_logits", "mask_logits", "deep_supervision"}
    assert out["out"].shape == (2, K, 70, 90)
    assert out["class_logits"].shape == (2, q, K + 1)
    assert out["mask_logits"].shape == (2, q, math.ceil(70 / 4), math.ceil(90 / 4))
    ds = out["deep_supervision"]
    assert len(ds) == 3  # the learnable queries' prediction, then layers 1 and 2
    for pred in ds:
        assert set(pred) == {"class_logits", "mask_logits"}
        assert pred["class_logits"].shape == out["class_logits"].shape
        assert pred["mask_logits"].shape == out["mask_logits"].shape
    # each prediction is a different one (every layer changes the queries)
    assert not torch.allclose(ds[-1]["class_logits"], out["class_logits"])

    model.eval()
    with torch.no_grad():
        ev = model(x)
    assert set(ev) == {"out", "class_logits", "mask_logits"}
    assert not any(k.startswith("aux") for k in ev)


def test_out_is_the_official_semantic_inference() -> None:
    """``out`` = einsum of softmax(classes)[..., :-1] and sigmoid(masks at the input size)."""
    model = _tiny().eval()
    x = torch.randn(1, 3, 61, 83)
    with torch.no_grad():
        out = model(x)
    cls, masks = out["class_logits"][0], out["mask_logits"][0]
    masks = F.interpolate(masks[None], size=(61, 83), mode="bilinear", align_corners=False)[0]
    probs = cls.softmax(-1)[:, :-1]  # Q x K
    expected = (probs[:, :, None, None] * masks.sigmoid()[:, None]).sum(0)
    assert torch.allclose(out["out"][0], expected, atol=1e-6)
    # without the no-object class the scores are not a distribution: no "softmax over K"
    assert not torch.allclose(out["out"].sum(1), torch.ones(1, 61, 83))


def test_semantic_inference_drops_no_object() -> None:
    cls = torch.tensor([[[0.0, 0.0, 50.0], [10.0, 0.0, 0.0]]])  # q0: no object, q1: class 0
    masks = torch.full((1, 2, 2, 2), 30.0)  # sigmoid ~ 1 everywhere
    out = semantic_inference(cls, masks, (4, 4))
    assert out.shape == (1, 2, 4, 4)
    assert torch.allclose(out[0, 0], torch.ones(4, 4), atol=1e-3)
    assert out[0, 1].max() < 1e-3


def test_deformable_sampling_at_pixel_centres_reads_the_pixel() -> None:
    """Location ((x + 0.5) / W, (y + 0.5) / H) picks value[y, x] (official op semantics)."""
    h, w = 3, 5
    value = torch.arange(h * w, dtype=torch.float64).view(1, 1, h, w)  # N*heads=1, d=1
    ys = torch.tensor([0, 2, 1], dtype=torch.float64)
    xs = torch.tensor([4, 0, 3], dtype=torch.float64)
    loc = torch.stack([(xs + 0.5) / w, (ys + 0.5) / h], -1)  # Lq=3 x 2
    grids = (2 * loc - 1).view(1, 3, 1, 1, 1, 2)  # N x Lq x heads x L x P x 2
    weights = torch.ones(1, 3, 1, 1, 1, dtype=torch.float64)
    out = ms_deform_attn([value], grids, weights)
    assert out.shape == (1, 3, 1)
    assert out[0, :, 0].tolist() == pytest.approx((ys * w + xs).tolist(), abs=1e-12)


def test_deformable_sampling_is_bilinear_with_zero_padding_and_weighted() -> None:
    value = torch.tensor([[[[1.0, 3.0]]]], dtype=torch.float64)  # 1 x 2 map
    # centres at x = 0.25, 0.75: point 0 midway between them -> 2; point 1 at the map's
    # right edge, half a pixel past the last centre -> half-way to the zero padding -> 1.5
    loc = torch.tensor([[0.5, 0.5], [1.0, 0.5]], dtype=torch.float64)
    grids = (2 * loc - 1).view(1, 1, 1, 1, 2, 2)
    weights = torch.tensor([0.25, 0.75], dtype=torch.float64).view(1, 1, 1, 1, 2)
    out = ms_deform_attn([value], grids, weights)
    assert out.item() == pytest.approx(0.25 * 2.0 + 0.75 * 1.5)


def test_sine_position_embedding_formula() -> None:
    pos = sine_position_embedding(2, 3, 4, like=torch.zeros((), dtype=torch.float64))
    assert pos.shape == (6, 8)
    scale = 2 * math.pi
    y, x = 2 / (2 + 1e-6) * scale, 1 / (3 + 1e-6) * scale  # row 1 (y=2), column 0 (x=1)
    dim_t = [10000 ** (2 * (i // 2) / 4) for i in range(4)]
    expected_y = [math.sin(y / dim_t[0]), math.cos(y / dim_t[1]),
                  math.sin(y / dim_t[2]), math.cos(y / dim_t[3])]  # fmt: skip
    expected_x = [math.sin(x / dim_t[0]), math.cos(x / dim_t[1]),
                  math.sin(x / dim_t[2]), math.cos(x / dim_t[3])]  # fmt: skip
    assert pos[3].tolist() == pytest.approx(expected_y + expected_x)


def test_attention_mask_blocks_background_and_unblocks_empty_masks() -> None:
    dec = MaskedAttentionDecoder(8, K, mask_dim=4, num_queries=2, hidden_dim=8, num_heads=2,
                                 ffn_dim=16, decoder_layers=1).double()  # fmt: skip
    with torch.no_grad():
        last = dec.mask_embed.layers[-1]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([1.0, -1.0, 0.0, 0.0]))  # q-independent mask embedding
    feats = torch.zeros(1, 4, 2, 2, dtype=torch.float64)
    feats[0, 0, 0, 0] = 5.0  # channel 0: one pixel foreground ...
    feats[0, 1] = 1.0  # ... channel 1: -1 everywhere
    x = torch.randn(1, 2, 8, dtype=torch.float64)
    _, mask_logits, attn = dec._predict(x, feats, (2, 2))
    assert attn.shape == (1, 1, 2, 4) and attn.dtype == torch.bool
    assert attn[0, 0, 0].tolist() == [False, True, True, True]
    # a mask that is empty everywhere (all logits < 0) would block every key: unblocked
    with torch.no_grad():
        dec.mask_embed.layers[-1].bias.copy_(torch.tensor([0.0, -1.0, 0.0, 0.0]))
    _, mask_logits, attn = dec._predict(x, feats, (2, 2))
    assert (mask_logits < 0).all() and not attn.any()


def test_defaults_are_the_papers_and_sizes_match_table_3() -> None:
    model = create_model("mask2former", backbone="resnet50", num_classes=150)
    head = model.decode_head
    pred, pix = head.predictor, head.pixel_decoder
    assert head.num_queries == 100 and len(pred.layers) == 9 and pred.num_heads == 8
    assert pred.layers[0].linear1.out_features == 2048 and pred.hidden_dim == 256
    assert len(pix.encoder) == 6 and pix.encoder[0].linear1.out_features == 1024
    attn = pix.encoder[0].self_attn
    assert (attn.num_heads, attn.num_levels, attn.num_points) == (8, 3, 4)
    assert pred.class_embed.out_features == 151
    assert all(isinstance(p, torch.nn.Identity) for p in pred.input_proj)  # 256 == 256
    n = sum(p.numel() for p in model.parameters())
    assert round(n / 1e6) == 44  # paper Table 3 (ADE20K): R50 44M


def test_swin_tiny_builds_and_runs() -> None:
    pytest.importorskip("timm")
    model = create_model(
        "mask2former", backbone="timm:swin_tiny_patch4_window7_224", num_classes=150,
        backbone_kwargs={"out_norm": True},  # the official D2SwinTransformer's output norms
    )  # fmt: skip
    assert round(sum(p.numel() for p in model.parameters()) / 1e6) == 47  # paper: Swin-T 47M
    small = create_model(
        "mask2former", backbone="timm:swin_tiny_patch4_window7_224", num_classes=3,
        head_kwargs=TINY["head_kwargs"],
    ).eval()  # fmt: skip
    with torch.no_grad():
        out = small(torch.randn(1, 3, 64, 96))
    assert out["out"].shape == (1, 3, 64, 96) and out["mask_logits"].shape[-2:] == (16, 24)


def test_bad_options_are_named() -> None:
    with pytest.raises(ValueError, match="align_corners"):
        create_model("mask2former", num_classes=3, align_corners=True, **TINY)
    with pytest.raises(ValueError, match=r"in_index=\(1, 2, 3\)"):
        _tiny(in_index=(1, 2, 3))
    with pytest.raises(ValueError, match="conv_dim=24"):
        _tiny(conv_dim=24)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        _tiny(hidden_dim=30)
