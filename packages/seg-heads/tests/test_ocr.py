"""OCRNet (seg_heads.ocr) and its mmseg converter: sizes and layout equal to mmseg's, outputs,
the attention math, gradients, errors. Logits are compared with mmsegmentation itself by the
parity session (tests/parity), from the MMSegArch entries checked at the end."""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seg_heads import SegmentationModel, create_model
from seg_heads.convert import MMSEG_ARCHS, from_mmseg
from seg_heads.ocr import ObjectAttentionBlock, OCRHead, SpatialGatherModule

# Computed once with mmsegmentation 1.2.2 itself (mmcv-lite, /work/venv-mmseg) from
# configs/ocrnet/ocrnet_hr{18,48}_4xb2-40k_cityscapes-512x1024.py built with BN (19 classes):
# parameters of the whole CascadeEncoderDecoder, of decode_head[0] (FCN soft regions) and of
# decode_head[1] (OCR); state-dict key count and sha256 of the sorted "key:shape" lines
# (first 16 hex digits) of decode_head.0.* and decode_head.1.* with the prefix removed.
# (The OCRNet paper gives 70.3M parameters for HRNetV2-W48 + OCR.)
MMSEG = {
    "hrnet_w18": {
        "params": (12_080_036, 78_589, 2_439_187),
        "fcn": (8, "f00cdf515f25bde3"),
        "ocr": (50, "4a1f00899cb787b9"),
    },
    "hrnet_w48": {
        "params": (70_371_446, 533_539, 4_512_787),
        "fcn": (8, "e7dfaa4b59cdda03"),
        "ocr": (50, "05dd7a7db76e903b"),
    },
}
SOFT = "decode_head.soft_region_head."


def _n(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _digest(sd: dict[str, torch.Tensor], prefix: str) -> tuple[int, str]:
    lines = sorted(f"{k[len(prefix) :]}:{tuple(v.shape)}" for k, v in sd.items())
    return len(lines), hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def _to_mmseg(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our keys -> mmseg CascadeEncoderDecoder keys (the converter's inverse)."""
    out = {}
    for k, v in sd.items():
        if k.startswith(SOFT):
            k = "decode_head.0." + k[len(SOFT) :]
        elif k.startswith("decode_head."):
            k = "decode_head.1." + k[len("decode_head.") :]
        out[k] = v
    return out


@pytest.mark.parametrize("backbone", sorted(MMSEG))
def test_sizes_and_layout_equal_mmseg(backbone: str) -> None:
    with torch.device("meta"):
        model = create_model("ocrnet", backbone=backbone, num_classes=19)
    total, fcn, ocr = MMSEG[backbone]["params"]
    head = model.decode_head
    assert (_n(model), _n(head.soft_region_head), _n(head) - _n(head.soft_region_head)) == (
        total,
        fcn,
        ocr,
    )
    sd = model.state_dict()
    soft = {k: v for k, v in sd.items() if k.startswith(SOFT)}
    ocr_sd = {k: v for k, v in sd.items() if k.startswith("decode_head.") and k not in soft}
    assert _digest(soft, SOFT) == MMSEG[backbone]["fcn"]
    assert _digest(ocr_sd, "decode_head.") == MMSEG[backbone]["ocr"]


def test_structure_follows_mmseg() -> None:
    with torch.device("meta"):
        head = create_model("ocrnet", backbone="hrnet_w18", num_classes=19).decode_head
    assert head.in_index == (0, 1, 2, 3) and head.returns_aux
    soft = head.soft_region_head  # FCNHead: one 1x1 conv of 270, no concat, no dropout
    assert soft.convs[0].conv.weight.shape == (270, 270, 1, 1) and len(soft.convs) == 1
    assert soft.conv_cat is None and isinstance(soft.dropout, nn.Identity)
    assert head.bottleneck.conv.weight.shape == (512, 270, 3, 3)
    ocb = head.object_context_block
    assert [u.conv.weight.shape[:2] for u in ocb.query_project] == [(256, 512), (256, 256)]
    assert [u.conv.weight.shape[:2] for u in ocb.key_project] == [(256, 512), (256, 256)]
    assert ocb.value_project.conv.weight.shape[:2] == (256, 512)
    assert ocb.out_project.conv.weight.shape[:2] == (512, 256)
    assert ocb.bottleneck.conv.weight.shape == (512, 1024, 1, 1)
    assert isinstance(head.dropout, nn.Identity) and head.conv_seg.weight.shape == (19, 512, 1, 1)


def test_ocrnet_hrnet_w18_outputs() -> None:
    torch.manual_seed(0)
    model = create_model("ocrnet", backbone="hrnet_w18", num_classes=19).eval()
    assert model.build_config["output_stride"] == 32
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = model.backbone(x)
        head = model.decode_head(feats)
        out = model(x)
    assert set(head) == {"out", "aux"}
    assert head["out"].shape == head["aux"].shape == (1, 19, 16, 16)  # stride 4
    assert set(out) == {"out", "aux"}
    assert out["out"].shape == out["aux"].shape == (1, 19, 64, 64)
    want = F.interpolate(head["aux"], size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out["aux"], want)


def test_spatial_gather_and_object_attention_math() -> None:
    """The two OCR modules against the paper's formulas written with einsum."""
    torch.manual_seed(0)
    feats, logits = torch.randn(2, 6, 5, 7), torch.randn(2, 3, 5, 7)
    regions = SpatialGatherModule()(feats, logits)
    w = logits.flatten(2).softmax(-1)  # each region's distribution over the pixels
    want = torch.einsum("nkp,ncp->nck", w, feats.flatten(2)).unsqueeze(-1)
    torch.testing.assert_close(regions, want)

    block = ObjectAttentionBlock(6, 4, nn.BatchNorm2d).eval()
    with torch.no_grad():
        got = block(feats, regions)
        q = block.query_project(feats).flatten(2)  # n c p
        k = block.key_project(regions).flatten(2)  # n c k
        v = block.value_project(regions).flatten(2)
        att = (torch.einsum("ncp,nck->npk", q, k) / 2.0).softmax(-1)  # 4 channels: / sqrt(4)
        ctx = torch.einsum("npk,nck->ncp", att, v).reshape(2, 4, 5, 7)
        want = block.bottleneck(torch.cat([block.out_project(ctx), feats], 1))
    torch.testing.assert_close(got, want)


def test_gradients_reach_every_parameter(tiny_backbone) -> None:
    head = OCRHead([c for c, _ in tiny_backbone.feature_info], 4, channels=16, ocr_channels=8)
    model = SegmentationModel(tiny_backbone, head).train()
    out = model(torch.randn(2, 3, 40, 44))
    (out["out"].mean() + 0.4 * out["aux"].mean()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not no_grad, no_grad[:5]


def test_in_index_and_build_config() -> None:
    model = create_model(
        "ocrnet",
        backbone="resnet18",
        num_classes=3,
        head_kwargs={"in_index": (-2, -1), "channels": 32, "ocr_channels": 16},
    )
    assert model.decode_head.in_index == (2, 3) and model.decode_head.in_channels == (256, 512)
    again = create_model(**model.build_config)
    assert {k: v.shape for k, v in again.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    with pytest.raises(ValueError, match=r"ocrnet: in_index=\(0, 4\)"):
        create_model("ocrnet", backbone="resnet18", num_classes=3, head_kwargs={"in_index": (0, 4)})


def test_hrnet_at_another_output_stride_is_refused() -> None:
    with pytest.raises(ValueError, match=r"hrnet_w18: output_stride must be 32"):
        create_model("ocrnet", backbone="hrnet_w18", num_classes=3, output_stride=8)


def test_aux_head_is_refused() -> None:
    """OCRNet's soft-region logits are its "aux" output: a second auxiliary head is an error
    (at build time once create_model checks ``returns_aux``; at the first forward until then)."""
    with pytest.raises((ValueError, RuntimeError), match="aux"):
        model = create_model(
            "ocrnet",
            backbone="resnet18",
            num_classes=3,
            aux=True,
            head_kwargs={"channels": 16, "ocr_channels": 8},
            aux_kwargs={"channels": 8},
        )
        model.eval()(torch.randn(1, 3, 32, 32))


# ------------------------------------------------------------------------------ converter


def test_mmseg_arch_entries() -> None:
    for w in (18, 48):
        spec = MMSEG_ARCHS[f"ocrnet_hr{w}"]
        assert spec.config == f"ocrnet/ocrnet_hr{w}_4xb2-40k_cityscapes-512x1024.py"
        assert not spec.align_corners and spec.input_size == (200, 264)


def test_from_mmseg_round_trip() -> None:
    torch.manual_seed(0)
    src = create_model("ocrnet", backbone="hrnet_w18", num_classes=7).eval()
    with torch.no_grad():
        for m in src.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.8, 1.2)
    ckpt = {"meta": {}, "state_dict": _to_mmseg(src.state_dict())}
    model = from_mmseg(ckpt["state_dict"], arch="ocrnet_hr18_4xb2-80k_cityscapes-512x1024").eval()
    assert model.build_config["head_kwargs"] == {
        "channels": 512,
        "ocr_channels": 256,
        "soft_region_channels": 270,
    }
    assert model.input_norm["color_order"] == "RGB"
    x = torch.randn(1, 3, 48, 56)
    with torch.no_grad():
        a, b = src(x), model(x)
    assert torch.equal(a["out"], b["out"]) and torch.equal(a["aux"], b["aux"])


def test_from_mmseg_errors() -> None:
    with torch.device("meta"):
        sd = _to_mmseg(create_model("ocrnet", backbone="hrnet_w18", num_classes=3).state_dict())
    with pytest.raises(ValueError, match=r"width 18 .* use arch='ocrnet_hr18'"):
        from_mmseg(sd, arch="ocrnet_hr48")
    bad = dict(sd)
    bad["decode_head.0.conv_cat.conv.weight"] = bad["decode_head.0.convs.0.conv.weight"]
    with pytest.raises(ValueError, match="soft-region FCNHead"):
        from_mmseg(bad, arch="ocrnet_hr18")
    missing = {k: v for k, v in sd.items() if k != "decode_head.1.conv_seg.weight"}
    with pytest.raises(KeyError, match=r"decode_head\.1\.conv_seg\.weight"):
        from_mmseg(missing, arch="ocrnet_hr18")
