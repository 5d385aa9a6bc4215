"""``from_hf`` for ``Mask2FormerForUniversalSegmentation`` against transformers itself.

Small random transformers Mask2Former models (Swin and ResNet backbones; non-trivial
LayerNorm/GroupNorm/BatchNorm affines and running statistics, no zero biases, O(1) logits)
are saved with ``save_pretrained`` (the Hub's layout, ``criterion.empty_weight`` included),
converted with ``from_hf`` and compared in float64 with transformers'
``class_queries_logits`` / ``masks_queries_logits`` (Swin with SDPA attention: its eager
path computes the softmax in float32; Mask2Former's own attentions compute in the input
dtype). ``out`` is checked against the official semantic inference of transformers' logits.

``transformers`` is in seg-heads' ``test`` extra; ``importorskip`` is only a guard.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from seg_heads import create_model
from seg_heads.convert import from_hf
from seg_heads.convert._mask2former_hf import mask2former_build_config

transformers = pytest.importorskip("transformers")
pytest.importorskip("timm")

LABELS = ["wall", "sky", "road", "tree", "person"]
STAGES = ["stage1", "stage2", "stage3", "stage4"]


def _randomize(model: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm | nn.BatchNorm2d | nn.GroupNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.05)
        for name, p in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif name.endswith("bias") and bool((p == 0).all()):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            elif re.search(r"sampling_offsets\.weight|attention_weights\.weight", name):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)  # zero-initialised
        # O(1) class and mask logits (the default init gives ~0.3)
        model.class_predictor.weight.mul_(4)
        model.model.transformer_module.decoder.mask_predictor.mask_embedder.get_submodule(
            "2.0"
        ).weight.mul_(4)


def _backbone_config(kind: str) -> object:
    if kind == "swin":
        return transformers.SwinConfig(
            embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=7,
            out_features=STAGES, attn_implementation="sdpa",
        )  # fmt: skip
    if kind == "resnet18":
        return transformers.ResNetConfig(
            layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512],
            out_features=STAGES,
        )  # fmt: skip
    return transformers.ResNetConfig(layer_type="bottleneck", out_features=STAGES)  # ResNet-50


SMALL = {"feature_size": 32, "mask_feature_size": 32, "hidden_dim": 64, "num_queries": 6,
         "encoder_feedforward_dim": 48, "dim_feedforward": 48, "encoder_layers": 2,
         "decoder_layers": 5, "num_attention_heads": 4}  # fmt: skip
CASES = {
    # Swin stages 3 and 4 (6x10, 3x5) are padded to the 7x7 window
    "swin": ("swin", (96, 160), {}),
    "resnet18-odd-size": ("resnet18", (97, 129), {}),
    # bottleneck blocks; pre-norm decoder; the decoder's input projections (32 == 32)
    "resnet50-pre-norm-projected": (
        "resnet50", (64, 96),
        {"pre_norm": True, "enforce_input_projection": True, "hidden_dim": 32},
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_from_hf_mask2former_equals_transformers(case: str, tmp_path) -> None:
    kind, (h, w), extra = CASES[case]
    torch.manual_seed(0)
    cfg = transformers.Mask2FormerConfig(
        backbone_config=_backbone_config(kind),
        id2label=dict(enumerate(LABELS)),
        label2id={n: i for i, n in enumerate(LABELS)},
        **{**SMALL, **extra},
    )
    hf = transformers.Mask2FormerForUniversalSegmentation(cfg).eval()
    _randomize(hf)
    hf.save_pretrained(tmp_path)
    assert "criterion.empty_weight" in load_file(str(tmp_path / "model.safetensors"))

    model = from_hf(tmp_path).eval()
    assert model.class_names == LABELS
    build = model.build_config
    assert build["head_kwargs"]["decoder_layers"] == SMALL["decoder_layers"] - 1
    assert build["backbone"].startswith("timm:swin" if kind == "swin" else kind)
    rebuilt = create_model(**build)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    unused = "model.pixel_level_module.encoder.swin.layernorm."  # SwinBackbone's, unused
    n_hf = sum(p.numel() for n, p in hf.named_parameters() if not n.startswith(unused))
    assert sum(p.numel() for p in model.parameters()) == n_hf

    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    hf64, ours64 = hf.double(), model.double()
    with torch.no_grad():
        ref = hf64(pixel_values=x)
        out = ours64(x)
    ref_cls, ref_masks = ref.class_queries_logits, ref.masks_queries_logits
    assert out["class_logits"].shape == ref_cls.shape == (2, SMALL["num_queries"], len(LABELS) + 1)
    assert out["mask_logits"].shape == ref_masks.shape
    assert ref_cls.abs().max() > 0.5 and ref_masks.abs().max() > 0.5  # O(1): a real comparison
    # the masked attention is active: some but not all pixels fall outside the masks
    assert 0.05 < float((ref_masks < 0).double().mean()) < 0.95
    assert float((out["class_logits"] - ref_cls).abs().max()) <= 1e-6
    assert float((out["mask_logits"] - ref_masks).abs().max()) <= 1e-6

    masks = F.interpolate(ref_masks, size=(h, w), mode="bilinear", align_corners=False)
    semantic = torch.einsum("nqc,nqhw->nchw", ref_cls.softmax(-1)[..., :-1], masks.sigmoid())
    assert float((out["out"] - semantic).abs().max()) <= 1e-6


def test_unsupported_backbones_are_named() -> None:
    cfg = {"architectures": ["Mask2FormerForUniversalSegmentation"], "num_labels": 3,
           "backbone_config": {"model_type": "convnext", "out_features": STAGES}}  # fmt: skip
    with pytest.raises(ValueError, match=r"model_type='convnext'.*\['resnet', 'swin'\]"):
        mask2former_build_config(cfg, "here")
    cfg["backbone_config"] = {"model_type": "resnet", "out_features": STAGES}
    cfg["use_timm_backbone"] = True
    with pytest.raises(ValueError, match="use_timm_backbone"):
        mask2former_build_config(cfg, "here")
    cfg["use_timm_backbone"] = False
    cfg["backbone_config"] = {"model_type": "resnet", "out_features": STAGES,
                              "hidden_sizes": [8, 16, 32, 64]}  # fmt: skip
    with pytest.raises(ValueError, match=r"hidden_sizes=\[8, 16, 32, 64\]"):
        mask2former_build_config(cfg, "here")
    cfg["backbone_config"] = {"model_type": "swin", "out_features": STAGES[1:]}
    with pytest.raises(ValueError, match="out_features"):
        mask2former_build_config(cfg, "here")


def test_hub_swin_large_config_maps_to_timm_and_paper_sizes() -> None:
    """``facebook/mask2former-swin-large-ade-semantic``'s architecture fields."""
    bc = {"model_type": "swin", "embed_dim": 192, "depths": [2, 2, 18, 2],
          "num_heads": [6, 12, 24, 48], "window_size": 12, "image_size": 384,
          "out_features": STAGES}  # fmt: skip
    build, kind = mask2former_build_config({"num_labels": 150, "backbone_config": bc}, "here")
    assert kind == "swin" and build["backbone"] == "timm:swin_large_patch4_window12_384"
    assert build["backbone_kwargs"]["out_norm"] is True
    head = build["head_kwargs"]
    assert head["decoder_layers"] == 9 and head["num_queries"] == 100
    assert head["conv_dim"] == head["mask_dim"] == head["hidden_dim"] == 256
