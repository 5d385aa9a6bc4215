"""``from_hf`` for ``UperNetForSemanticSegmentation`` against transformers itself.

transformers' UperNet with small random ``ConvNextConfig`` / ``SwinConfig`` backbones
(non-trivial LayerNorm/BatchNorm affines and running statistics, O(1) logits) is saved
with ``save_pretrained`` (the Hub's file layout), converted with ``from_hf`` and compared
with transformers' logits (already at the input size) in float64 (SDPA attention: the
eager path computes softmax in float32), and by argmax in float32.

``transformers`` is in seg-heads' ``test`` extra; ``importorskip`` is only a guard.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seg_heads import create_model
from seg_heads.convert import from_hf
from seg_heads.convert._upernet_hf import upernet_build_config

transformers = pytest.importorskip("transformers")
pytest.importorskip("timm")

H, W = 96, 160  # Swin stages 3 and 4 (6x10, 3x5) are padded to the 7x7 window
LABELS = ["wall", "sky", "road", "tree", "person"]
STAGES = ["stage1", "stage2", "stage3", "stage4"]


def _randomize(model: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm | nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.05)
            if isinstance(m, nn.Conv2d):  # He init: O(1) activations through the heads
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2 / fan_in) ** 0.5)
        for name, p in model.named_parameters():
            if re.search(r"(relative_position_bias_table|layer_scale_parameter)$", name):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif name.endswith("bias") and bool((p == 0).all()):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def _backbone_config(kind: str, out_features: list[str]) -> object:
    if kind == "convnext":
        return transformers.ConvNextConfig(
            hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 2, 1], out_features=out_features
        )
    return transformers.SwinConfig(
        embed_dim=8, depths=[2, 2, 2, 2], num_heads=[1, 1, 2, 2], window_size=7,
        out_features=out_features, attn_implementation="sdpa",
    )  # fmt: skip


CASES = {
    "convnext": ("convnext", STAGES, {}),
    "swin": ("swin", STAGES, {}),
    # two aux convs + conv_cat; three levels (the aux head reads stage4 = level 2)
    "convnext-3-levels-concat": (
        "convnext", STAGES[1:], {"auxiliary_num_convs": 2, "auxiliary_concat_input": True},
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_from_hf_upernet_equals_transformers(case: str, tmp_path) -> None:
    kind, out_features, extra = CASES[case]
    torch.manual_seed(0)
    cfg = transformers.UperNetConfig(
        backbone_config=_backbone_config(kind, out_features),
        hidden_size=16,
        auxiliary_channels=8,
        auxiliary_in_channels=None,
        id2label=dict(enumerate(LABELS)),
        label2id={n: i for i, n in enumerate(LABELS)},
        **extra,
    )
    hf = transformers.UperNetForSemanticSegmentation(cfg).eval()
    _randomize(hf)
    hf.save_pretrained(tmp_path)

    model = from_hf(tmp_path).eval()
    assert model.class_names == LABELS
    assert model.build_config["backbone"].startswith(f"timm:{kind}")
    rebuilt = create_model(**model.build_config)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    unused = "backbone.swin.layernorm."  # SwinModel's final norm: no backbone output uses it
    n_hf = sum(p.numel() for n, p in hf.named_parameters() if not n.startswith(unused))
    assert sum(p.numel() for p in model.parameters()) == n_hf

    x = torch.randn(2, 3, H, W, dtype=torch.float64)
    hf64, ours64 = hf.double(), model.double()
    with torch.no_grad():
        feats = hf64.backbone(x).feature_maps
        ref_aux = F.interpolate(
            hf64.auxiliary_head(feats), size=(H, W), mode="bilinear", align_corners=False
        )
        ref = hf64(pixel_values=x).logits  # already at the input size
        out = ours64(x)
    assert ref.shape == out["out"].shape == (2, len(LABELS), H, W)
    assert ref.abs().max() > 0.5  # O(1) logits: the comparison below means something
    assert float((out["out"] - ref).abs().max()) <= 1e-6
    assert float((out["aux"] - ref_aux).abs().max()) <= 1e-6

    x32 = x.float()
    with torch.no_grad():
        ref32 = hf.float()(pixel_values=x32).logits
        out32 = model.float()(x32)["out"]
    agree = (ref32.argmax(1) == out32.argmax(1)).double().mean()
    assert agree >= 0.999


def test_unsupported_backbone_is_named() -> None:
    cfg = {"architectures": ["UperNetForSemanticSegmentation"], "num_labels": 3,
           "backbone_config": {"model_type": "resnet"}}  # fmt: skip
    with pytest.raises(ValueError, match=r"model_type='resnet'.*\['convnext', 'swin'\]"):
        upernet_build_config(cfg, "here")


def test_swin_variant_names() -> None:
    """Published sizes map to timm's variant names (any other size still converts)."""
    bc = {"model_type": "swin", "embed_dim": 128, "depths": [2, 2, 18, 2],
          "num_heads": [4, 8, 16, 32], "window_size": 12}  # fmt: skip
    build = upernet_build_config({"num_labels": 150, "backbone_config": bc}, "here")
    assert build["backbone"] == "timm:swin_base_patch4_window12_384"
    assert build["backbone_kwargs"]["out_norm"] is True
    assert build["aux_kwargs"]["in_index"] == 2 and build["output_stride"] == 32
