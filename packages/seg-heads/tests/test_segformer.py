"""SegFormer all-MLP head: both variants layer for layer, the model, and parameter counts
against transformers' own models and the numbers mmseg 1.2.2's models have."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seg_heads import create_model
from seg_heads.segformer import SegFormerHead

DEPTHS = {0: (2, 2, 2, 2), 1: (2, 2, 2, 2), 2: (3, 4, 6, 3), 3: (3, 4, 18, 3), 4: (3, 8, 27, 3), 5: (3, 6, 40, 3)}  # fmt: skip
# sum(p.numel()) of mmseg 1.2.2's segformer_mit-b{0..5}_8xb2-160k_ade20k-512x512 models, built
# from their configs with mmseg itself (tests/parity/make_mmseg_refs.py --structure)
MMSEG_PARAMS = [3_753_718, 13_716_822, 24_761_686, 44_637_526, 61_408_086, 82_008_406]
PAPER_M = [3.8, 13.7, 27.5, 47.3, 64.1, 84.7]  # SegFormer paper, Table 1 (ADE20K)


def _n(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_newcomer_call_and_stride4_logits() -> None:
    torch.manual_seed(0)
    model = create_model("segformer", backbone="mit_b0", num_classes=150).eval()
    assert model.build_config["output_stride"] == 32 and model.aux_head is None
    x = torch.randn(1, 3, 97, 129)
    with torch.no_grad():
        feats = model.backbone(x)
        logits = model.decode_head(feats)
        out = model(x)
    assert logits.shape == (1, 150, 25, 33)  # stride 4 (ceil)
    assert out["out"].shape == (1, 150, 97, 129)
    want = F.interpolate(logits, size=(97, 129), mode="bilinear", align_corners=False)
    assert torch.equal(out["out"], want)


def test_mmseg_variant_structure() -> None:
    head = SegFormerHead([32, 64, 160, 256], 150)
    assert head.in_index == (0, 1, 2, 3) and head.channels == 256
    for conv, c in zip(head.convs, [32, 64, 160, 256], strict=True):
        assert conv.conv.weight.shape == (256, c, 1, 1) and conv.conv.bias is None
        assert isinstance(conv.bn, nn.BatchNorm2d) and isinstance(conv.activate, nn.ReLU)
    assert head.fusion_conv.conv.weight.shape == (256, 1024, 1, 1)
    assert isinstance(head.dropout, nn.Dropout2d) and head.dropout.p == 0.1
    assert head.conv_seg.weight.shape == (150, 256, 1, 1) and head.conv_seg.bias is not None


def test_hf_variant_structure() -> None:
    head = SegFormerHead([64, 128, 320, 512], 19, variant="hf", channels=768)
    for conv, c in zip(head.convs, [64, 128, 320, 512], strict=True):
        assert isinstance(conv, nn.Conv2d) and conv.weight.shape == (768, c, 1, 1)
        assert conv.bias is not None
    assert head.fusion_conv.conv.weight.shape == (768, 4 * 768, 1, 1)
    assert head.fusion_conv.conv.bias is None and isinstance(head.fusion_conv.bn, nn.BatchNorm2d)
    assert type(head.dropout) is nn.Dropout


@pytest.mark.parametrize(("variant", "order"), [("mmseg", [0, 1, 2, 3]), ("hf", [3, 2, 1, 0])])
def test_forward_concatenates_in_each_references_order(variant: str, order: list[int]) -> None:
    """mmseg: torch.cat(outs) in level order; HF/NVlabs: torch.cat(all_hidden_states[::-1])."""
    torch.manual_seed(0)
    head = SegFormerHead([8, 12, 16, 20], 3, channels=6, variant=variant).eval()  # type: ignore[arg-type]
    feats = [torch.randn(1, c, 32 // 2**i, 40 // 2**i) for i, c in enumerate([8, 12, 16, 20])]
    with torch.no_grad():
        ups = [
            F.interpolate(conv(f), size=(32, 40), mode="bilinear", align_corners=False)
            for conv, f in zip(head.convs, feats, strict=True)
        ]
        want = head.conv_seg(head.fusion_conv(torch.cat([ups[i] for i in order], 1)))
        assert torch.allclose(head(feats), want, atol=1e-6)
        wrong = head.conv_seg(head.fusion_conv(torch.cat([ups[i] for i in order[::-1]], 1)))
        assert not torch.allclose(head(feats), wrong, atol=1e-3)


def test_options_errors_and_in_index() -> None:
    model = create_model(
        "segformer",
        backbone="mit_b0",
        num_classes=4,
        align_corners=True,
        backbone_kwargs={"depths": (1, 1, 1, 1)},
        head_kwargs={"in_index": (1, 2, 3), "channels": 32, "dropout": 0.0},
    )
    head = model.decode_head
    assert head.in_index == (1, 2, 3) and head.in_channels == (64, 160, 256)
    assert head.align_corners and isinstance(head.dropout, nn.Identity)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64))["out"].shape == (1, 4, 64, 64)
    with pytest.raises(ValueError, match=r"segformer: in_index=\(0, 4\)"):
        create_model(
            "segformer", backbone="mit_b0", num_classes=4, head_kwargs={"in_index": (0, 4)}
        )
    with pytest.raises(ValueError, match=r"variant 'paper'.*\['mmseg', 'hf'\]"):
        create_model(
            "segformer", backbone="mit_b0", num_classes=4, head_kwargs={"variant": "paper"}
        )
    with pytest.raises(
        ValueError, match=r"create_model\('segformer', backbone='mit_b0'\).*output_stride=32"
    ):
        create_model("segformer", backbone="mit_b0", num_classes=4, output_stride=8)


def test_build_config_rebuilds_the_model() -> None:
    kw = {"backbone_kwargs": {"layer_norm_eps": 1e-5}, "head_kwargs": {"variant": "hf"}}
    with torch.device("meta"):
        model = create_model("segformer", backbone="mit_b1", num_classes=19, **kw)
        again = create_model(**model.build_config)
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in again.state_dict().items()
    }


@pytest.mark.parametrize("b", range(6))
def test_parameter_counts_equal_mmseg_hf_and_the_paper(b: int) -> None:
    transformers = pytest.importorskip("transformers")  # in seg-heads' test extra; a guard only
    dims = [32, 64, 160, 256] if b == 0 else [64, 128, 320, 512]
    width = 256 if b < 2 else 768  # the Hub's / the paper's decoder width
    with torch.device("meta"):
        ours_mmseg = create_model("segformer", backbone=f"mit_b{b}", num_classes=150)
        ours_hf = create_model(
            "segformer",
            backbone=f"mit_b{b}",
            num_classes=150,
            head_kwargs={"variant": "hf", "channels": width},
        )
        hf = transformers.SegformerForSemanticSegmentation(
            transformers.SegformerConfig(
                hidden_sizes=dims, depths=list(DEPTHS[b]), decoder_hidden_size=width, num_labels=150
            )
        )
    assert _n(ours_hf) == _n(hf)
    assert _n(ours_hf.backbone) == _n(hf.segformer)
    assert _n(ours_mmseg) == MMSEG_PARAMS[b]
    assert round(_n(ours_hf) / 1e6, 1) == PAPER_M[b]
    # mmseg's head at the same width: a BN (2 x 256) per level instead of a linear bias (256)
    with torch.device("meta"):
        same_width = create_model(
            "segformer", backbone=f"mit_b{b}", num_classes=150, head_kwargs={"variant": "hf"}
        )
    assert _n(ours_mmseg) - _n(same_width) == 4 * 256
