"""BiSeNetV2, Fast-SCNN, STDC1/2 backbones: feature contract, mmseg's layout, blocks, weights."""

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
from seg_backbones.bisenetv2 import GELayer
from seg_backbones.fast_scnn import InvertedResidual
from seg_backbones.stdc import STDCModule

torch.set_num_threads(1)  # tiny forwards on a shared 2-core CI machine

# Measured with mmsegmentation 1.2.2 itself (mmcv-lite, /work/venv-mmseg): the backbone of
# configs/bisenetv2/bisenetv2_fcn_4xb4-160k_cityscapes-1024x1024.py,
# configs/fastscnn/fast_scnn_8xb4-160k_cityscapes-512x1024.py and
# configs/stdc/stdc{1,2}_4xb12-80k_cityscapes-512x1024.py built with BN:
# sum(p.numel() for p in model.backbone.parameters()), the number of backbone state-dict
# keys, and sha256 over the sorted "key:shape" lines (backbone. stripped; first 16 hex digits).
MMSEG = {
    "bisenetv2": (2_157_712, 321, "611b71e682379d7d"),
    "fast_scnn": (1_361_392, 240, "05ac1fc52bb05451"),
    "stdc1": (7_679_904, 224, "cdd610d32e75fa88"),
    "stdc2": (11_710_368, 368, "52f1a32e8cfd5129"),
}
# mmseg's out_indices: (channels, stride) of every output
FEATURES = {
    "bisenetv2": [(128, 8), (16, 4), (32, 8), (64, 16), (128, 32)],
    "fast_scnn": [(64, 8), (128, 32), (128, 8)],
    "stdc1": [(256, 8), (128, 16), (128, 8), (256, 8)],
    "stdc2": [(256, 8), (128, 16), (128, 8), (256, 8)],
}
NAMES = sorted(MMSEG)


def _digest(sd: dict[str, torch.Tensor]) -> str:
    lines = sorted(f"{k}:{tuple(v.shape)}" for k, v in sd.items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def test_registered() -> None:
    assert set(NAMES) <= set(list_backbones())


@pytest.mark.parametrize("name", NAMES)
def test_layout_and_parameter_count_equal_mmseg(name: str) -> None:
    bb = create_backbone(name)
    n_params, n_keys, digest = MMSEG[name]
    sd = bb.state_dict()
    assert sum(p.numel() for p in bb.parameters()) == n_params
    assert len(sd) == n_keys
    assert _digest(sd) == digest


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [(64, 96), (67, 101)])
def test_feature_info_matches_outputs(name: str, size: tuple[int, int]) -> None:
    bb = _randomise(create_backbone(name))
    assert bb.feature_info == [FeatureInfo(*f) for f in FEATURES[name]]
    with torch.no_grad():
        feats = bb(torch.randn(1, 3, *size))
    assert len(feats) == len(bb.feature_info)
    for f, (c, r) in zip(feats, bb.feature_info, strict=True):
        # stride-2 convs with padding 1 (and the 3x3 stride-2 pools) give ceil(H / stride)
        assert f.shape == (1, c, math.ceil(size[0] / r), math.ceil(size[1] / r))
        assert torch.isfinite(f).all()


@pytest.mark.parametrize("name", NAMES)
def test_output_stride_other_than_32_fails(name: str) -> None:
    with pytest.raises(ValueError, match=r"output_stride must be 32.*valid choices: \[32\]"):
        create_backbone(name, output_stride=8)
    with pytest.raises(TypeError, match=r"unknown option.*'widht'"):
        create_backbone(name, widht=3)


def test_bisenetv2_blocks_follow_mmseg() -> None:
    bb = create_backbone("bisenetv2")
    # detail branch: 2, 3, 3 convs, the first of each with stride 2
    assert [len(s) for s in bb.detail.detail_branch] == [2, 3, 3]
    assert [s[0].conv.stride for s in bb.detail.detail_branch] == [(2, 2)] * 3
    # semantic branch: 2, 2, 4 GE layers after the stem; only the first of a stage strides
    for name, depth in (("stage2", 2), ("stage3", 2), ("stage4", 4)):
        stage = getattr(bb.semantic, name)
        assert len(stage) == depth and all(isinstance(b, GELayer) for b in stage)
        assert stage[0].shortcut is not None and all(b.shortcut is None for b in stage[1:])
        assert stage[0].dwconv[0].activate is None  # stride-2 depthwise conv: BN, no ReLU
    # BGA: the depthwise-separable units have a BN after the depthwise conv only
    unit = bb.bga.detail_dwconv[0]
    assert unit.depthwise_conv.bn is not None and unit.pointwise_conv.bn is None
    assert unit.pointwise_conv.conv.bias is not None
    assert bb.semantic.stage4_CEBlock.gap[1].num_features == 128


def test_fast_scnn_blocks_follow_mmseg() -> None:
    bb = create_backbone("fast_scnn")
    bns = [m for m in bb.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.momentum == 0.01 for m in bns)  # the config's norm_cfg
    blocks = [m for m in bb.modules() if isinstance(m, InvertedResidual)]
    assert len(blocks) == 9
    # mmseg passes the backbone's act_cfg (ReLU) to its inverted residuals, not ReLU6
    assert not any(isinstance(m, nn.ReLU6) for m in bb.modules())
    assert [b.use_res_connect for b in blocks] == [False, True, True] * 2 + [False, True, True]
    assert [m[0].output_size for m in bb.global_feature_extractor.ppm] == [1, 2, 3, 6]
    assert bb.global_feature_extractor.out.conv.in_channels == 128 + 4 * 32
    assert bb.learning_to_downsample.dsconv1.depthwise_conv.activate is None
    assert bb.learning_to_downsample.dsconv1.pointwise_conv.activate is not None


@pytest.mark.parametrize(("name", "depths"), [("stdc1", [2, 2, 2]), ("stdc2", [4, 5, 3])])
def test_stdc_stages_follow_mmseg(name: str, depths: list[int]) -> None:
    bb = create_backbone(name)
    stages = bb.backbone.stages
    assert [len(s) for s in stages[2:]] == depths
    for stage in stages[2:]:
        assert stage[0].with_downsample and not any(m.with_downsample for m in stage[1:])
    m = stages[2][0]
    assert isinstance(m, STDCModule)
    # 1x1 to half the width, then 3x3 convs to 1/4, 1/8, 1/8: concatenated back to 256
    assert [layer.conv.out_channels for layer in m.layers] == [128, 64, 32, 32]
    assert [layer.conv.kernel_size for layer in m.layers] == [(1, 1)] + [(3, 3)] * 3
    assert m.downsample.conv.groups == 128 and isinstance(m.skip, nn.AvgPool2d)
    assert bb.ffm.attention[1].conv.bias is None and bb.ffm.attention[1].bn is None


def test_stdc_context_path_upsamples_nearest() -> None:
    """The context path of mmseg's STDCContextPathNet resizes with 'nearest' (REFERENCES.md)."""
    torch.manual_seed(0)
    bb = _randomise(create_backbone("stdc1"))
    x = torch.randn(1, 3, 75, 99)  # stride 32: 3x4 -> stride 16: 5x7, non-integer ratios
    with torch.no_grad():
        feats = bb(x)
        outs = bb.backbone(x)
        up = bb.conv_avg(F.adaptive_avg_pool2d(outs[2], 1)).expand_as(bb.arms[0](outs[2]))
        ctx16 = bb.convs[0](F.interpolate(bb.arms[0](outs[2]) + up, size=outs[1].shape[-2:]))
        bilinear = bb.convs[0](
            F.interpolate(bb.arms[0](outs[2]) + up, size=outs[1].shape[-2:], mode="bilinear")
        )
    assert torch.equal(feats[0], outs[0])
    assert torch.allclose(feats[1], ctx16, atol=1e-6)
    assert not torch.allclose(feats[1], bilinear, atol=1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_mmseg_backbone_weights_load_strictly(name: str, tmp_path) -> None:
    src = _randomise(create_backbone(name), seed=1)
    # the backbone.* part of an mmseg checkpoint, as a file
    path = tmp_path / "bb.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in src.state_dict().items()}}, path)
    dst = load_pretrained(create_backbone(name), str(path), source="mmseg").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(src(x), dst(x), strict=True):
            assert torch.equal(a, b)
    full = {f"backbone.{k}": v for k, v in src.state_dict().items()}
    full["decode_head.conv_seg.weight"] = torch.zeros(19, 8, 1, 1)
    with pytest.raises(IncompatibleWeightsError, match="from_mmseg"):
        load_pretrained(create_backbone(name), full, source="mmseg")
    broken = dict(src.state_dict())
    broken.pop(next(iter(broken)))
    with pytest.raises(IncompatibleWeightsError, match="missing keys"):
        load_pretrained(create_backbone(name), broken, source="mmseg")
    with pytest.raises(ValueError, match="valid sources"):
        load_pretrained(create_backbone(name), src.state_dict(), source="timm")


def test_stdcnet_alone_loads_into_the_stdc_backbone() -> None:
    """ImageNet STDCNet weights (keys ``stages.*``) fill the inner STDCNet only."""
    src = _randomise(create_backbone("stdc1"), seed=2)
    dst = create_backbone("stdc1")
    before = {k: v.clone() for k, v in dst.state_dict().items() if not k.startswith("backbone.")}
    load_pretrained(dst, src.backbone.state_dict(), source="auto")
    for k, v in src.backbone.state_dict().items():
        assert torch.equal(dst.backbone.state_dict()[k], v), k
    after = dst.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # context path untouched
