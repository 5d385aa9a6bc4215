"""HRNetV2 (seg_backbones.hrnet): feature contract, mmseg's layout and sizes, fusion, weights, errors."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seg_backbones import (
    FeatureInfo,
    IncompatibleWeightsError,
    create_backbone,
    list_backbones,
    load_pretrained,
)
from seg_backbones.hrnet import HRModule, HRNet

torch.set_num_threads(1)  # tiny forwards on a shared 2-core CI machine

WIDTHS = {"hrnet_w18": (18, 36, 72, 144), "hrnet_w48": (48, 96, 192, 384)}

# Computed once with mmsegmentation 1.2.2 itself (mmcv-lite, /work/venv-mmseg): the backbone
# of configs/ocrnet/ocrnet_hr{18,48}_4xb2-40k_cityscapes-512x1024.py built with BN:
# sum(p.numel() for p in model.backbone.parameters()), the number of state-dict keys, and
# sha256 over the sorted "key:shape" lines (first 16 hex digits). timm's hrnet_w18 backbone
# part (stem, layer1, transitions, stages) has the same 9,562,260 parameters.
MMSEG = {
    "hrnet_w18": (9_562_260, 1830, "3fd57fa4971680c3"),
    "hrnet_w48": (65_325_120, 1830, "c0fc96e6e87ce238"),
}


def _digest(sd: dict[str, torch.Tensor]) -> str:
    lines = sorted(f"{k}:{tuple(v.shape)}" for k, v in sd.items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def _tiny() -> HRNet:
    """A narrow HRNet (widths 4..32, one module per stage, one block per branch): fast."""
    torch.manual_seed(0)
    return HRNet(widths=(4, 8, 16, 32), stage_modules=(1, 1, 1), num_blocks=1)


def test_registered() -> None:
    assert {"hrnet_w18", "hrnet_w48"} <= set(list_backbones())


@pytest.mark.parametrize("name", sorted(MMSEG))
def test_layout_and_parameter_count_equal_mmseg(name: str) -> None:
    with torch.device("meta"):
        bb = create_backbone(name)
    n_params, n_keys, digest = MMSEG[name]
    assert sum(p.numel() for p in bb.parameters()) == n_params
    sd = bb.state_dict()
    assert len(sd) == n_keys and _digest(sd) == digest
    assert bb.feature_info == [FeatureInfo(c, 4 * 2**i) for i, c in enumerate(WIDTHS[name])]


def _check_shapes(bb: nn.Module, h: int, w: int) -> None:
    with torch.no_grad():
        feats = bb(torch.randn(1, 3, h, w))
    assert len(feats) == len(bb.feature_info) == 4
    for f, info in zip(feats, bb.feature_info, strict=True):
        assert f.shape == (
            1,
            info.channels,
            math.ceil(h / info.reduction),
            math.ceil(w / info.reduction),
        )


@pytest.mark.parametrize(("h", "w"), [(64, 64), (67, 93)])  # 67x93: every fuse resize is odd
def test_w18_cpu_outputs_match_feature_info(h: int, w: int) -> None:
    torch.manual_seed(0)
    _check_shapes(create_backbone("hrnet_w18").eval(), h, w)


def test_w48_cpu_outputs_match_feature_info() -> None:
    torch.manual_seed(0)
    _check_shapes(create_backbone("hrnet_w48").eval(), 33, 45)


def test_structure_follows_mmseg() -> None:
    with torch.device("meta"):
        bb = create_backbone("hrnet_w18")
    assert (bb.conv1.stride, bb.conv2.stride, bb.conv1.out_channels) == ((2, 2), (2, 2), 64)
    assert len(bb.layer1) == 4 and bb.layer1[0].conv3.out_channels == 256
    assert [len(getattr(bb, f"stage{s}")) for s in (2, 3, 4)] == [1, 4, 3]
    for s, n in ((2, 2), (3, 3), (4, 4)):
        for module in getattr(bb, f"stage{s}"):
            assert len(module.branches) == n and all(len(b) == 4 for b in module.branches)
    fuse = bb.stage4[0].fuse_layers
    up = fuse[0][3]  # 1x1 conv + BN, then bilinear x8
    assert up[0].kernel_size == (1, 1) and up[2].scale_factor == 8.0
    down = fuse[3][0]  # 3 stride-2 convs: ReLU after all but the last
    assert len(down) == 3 and [len(step) for step in down] == [3, 3, 2]
    assert [step[0].out_channels for step in down] == [18, 18, 144]
    assert isinstance(fuse[2][2], nn.Identity)
    assert isinstance(bb.transition2[0], nn.Identity) and bb.transition2[2][0][0].stride == (2, 2)


def test_fusion_upsamples_bilinear_then_resizes_to_the_branch_as_mmseg() -> None:
    """Branch 1 -> 0: conv-BN, mmseg's Upsample(x2, bilinear, align_corners=False) by size
    int(2 * s), then the resize to branch 0's size (here 9 -> 18 -> 17, 5 -> 10 -> 9)."""
    torch.manual_seed(0)
    m = HRModule((3, 5), 1, nn.BatchNorm2d).eval()
    x0, x1 = torch.randn(1, 3, 17, 9), torch.randn(1, 5, 9, 5)
    with torch.no_grad():
        got = m([x0, x1])[0]
        b0, b1 = m.branches[0](x0), m.branches[1](x1)
        conv, bn = m.fuse_layers[0][1][0], m.fuse_layers[0][1][1]
        up = F.interpolate(bn(conv(b1)), size=(18, 10), mode="bilinear", align_corners=False)
        up = F.interpolate(up, size=(17, 9), mode="bilinear", align_corners=False)
        want = torch.relu(b0 + up)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    bb = create_backbone("hrnet_w18").train()
    feats = bb(torch.randn(2, 3, 64, 64))
    sum(f.mean() for f in feats).backward()
    no_grad = [n for n, p in bb.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not no_grad, no_grad[:5]


def test_frozen_stages_and_norm_eval() -> None:
    torch.manual_seed(0)
    bb = HRNet(widths=(4, 8, 16, 32), stage_modules=(1, 1, 1), num_blocks=1, frozen_stages=2)
    bb.train()
    frozen = ("conv1", "bn1", "conv2", "bn2", "layer1", "transition1", "stage2", "transition2")
    for n, p in bb.named_parameters():
        assert p.requires_grad == (not n.startswith(frozen)), n
    assert not bb.stage2.training and not bb.bn1.training and bb.stage3.training
    bb = HRNet(widths=(4, 8, 16, 32), stage_modules=(1, 1, 1), num_blocks=1, norm_eval=True)
    bb.train()
    assert not any(m.training for m in bb.modules() if isinstance(m, nn.BatchNorm2d))


@pytest.mark.parametrize("output_stride", [8, 16])
def test_output_stride_other_than_32_is_refused_by_name(output_stride: int) -> None:
    with pytest.raises(ValueError, match=r"hrnet_w18: output_stride must be 32.*\[32\]"):
        create_backbone("hrnet_w18", output_stride=output_stride)


def test_option_errors() -> None:
    with pytest.raises(TypeError, match=r"hrnet_w48: unknown option\(s\) \['contract_dilation'\]"):
        create_backbone("hrnet_w48", contract_dilation=True)
    with pytest.raises(ValueError, match="frozen_stages"):
        create_backbone("hrnet_w18", frozen_stages=5)
    with pytest.raises(ValueError, match="norm_layer"):
        create_backbone("hrnet_w18", norm_layer="ln")


def test_loads_mmseg_and_classification_layouts() -> None:
    src = _tiny()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.rand_like(p))
    sd = src.state_dict()
    # an mmseg backbone file (``backbone.`` prefix) and the official/timm ImageNet layout,
    # which adds the classification head
    head = {"incre_modules.0.0.conv1.weight": torch.zeros(1), "classifier.weight": torch.zeros(1)}
    for weights, source in (
        ({f"backbone.{k}": v for k, v in sd.items()}, "mmseg"),
        ({**sd, **head}, "official"),
        ({f"module.{k}": v for k, v in {**sd, **head}.items()}, "auto"),
    ):
        dst = _tiny()
        load_pretrained(dst, weights, source=source)
        assert all(torch.equal(dst.state_dict()[k], v) for k, v in sd.items())


def test_timm_hrnet_w18_weights_load() -> None:
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        ref = timm.create_model("hrnet_w18")
    sd = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in ref.state_dict().items()}
    bb = create_backbone("hrnet_w18")
    load_pretrained(bb, sd, source="timm")  # strict: every backbone key present and shaped
    assert not bb.conv1.weight.any()


def test_weight_errors_name_the_keys() -> None:
    sd = _tiny().state_dict()
    wide = HRNet(widths=(6, 12, 24, 48), stage_modules=(1, 1, 1), num_blocks=1)
    with pytest.raises(IncompatibleWeightsError, match=r"shape mismatches .*transition1\.0\.0"):
        load_pretrained(wide, sd)
    with pytest.raises(IncompatibleWeightsError, match=r"missing keys .*conv1\.weight"):
        load_pretrained(_tiny(), {k: v for k, v in sd.items() if k != "conv1.weight"})
    full = {
        **{f"backbone.{k}": v for k, v in sd.items()},
        "decode_head.conv_seg.weight": sd["conv1.weight"],
    }
    with pytest.raises(IncompatibleWeightsError, match="from_mmseg"):
        load_pretrained(_tiny(), full)
    with pytest.raises(ValueError, match="valid sources"):
        load_pretrained(_tiny(), sd, source="torchvision")
