"""DDRNet and PIDNet backbones: feature contract, structure, weight import (no mmseg needed).

Logit parity with mmsegmentation 1.2.2 itself is the CI parity session's (``nox -s parity``,
``seg_heads.convert.MMSEG_ARCHS``); here the structure is checked against counts measured
from mmseg's own models.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from seg_backbones import IncompatibleWeightsError, create_backbone, load_pretrained
from seg_backbones.ddrnet import DAPPM, PAPPM
from seg_backbones.pidnet import Bag, LightBag

# (channels, reduction) per output: DDRNet [stage3, out], PIDNet [p, d, out]
FEATURES = {
    "ddrnet_23_slim": [(64, 8), (128, 8)],
    "ddrnet_23": [(128, 8), (256, 8)],
    "pidnet_s": [(64, 8), (64, 8), (128, 8)],
    "pidnet_m": [(128, 8), (128, 8), (256, 8)],
    "pidnet_l": [(128, 8), (128, 8), (256, 8)],
}

# Parameters of the mmseg 1.2.2 backbones alone (``backbone.*`` of the configs
# ddrnet/ddrnet_23-slim_in1k-pre_*, ddrnet_23_in1k-pre_*, pidnet/pidnet-{s,m,l}_*), MEASURED
# by building mmseg's models (tests/parity/make_mmseg_refs.py --structure), not derived.
MMSEG_BACKBONE_PARAMS = {
    "ddrnet_23_slim": 5_620_576,
    "ddrnet_23": 19_850_688,
    "pidnet_s": 7_475_232,
    "pidnet_m": 28_240_256,
    "pidnet_l": 36_343_712,
}

NARROW = {"channels": 8, "ppm_channels": 16}  # a cheap CPU model of the same structure


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", sorted(FEATURES))
def test_feature_info_and_parameter_count_match_mmseg(name: str) -> None:
    with torch.device("meta"):
        bb = create_backbone(name)
    assert [tuple(f) for f in bb.feature_info] == FEATURES[name]
    assert _n_params(bb) == MMSEG_BACKBONE_PARAMS[name]


@pytest.mark.parametrize("name", sorted(FEATURES))
@pytest.mark.parametrize("size", [(97, 129), (64, 72)])
def test_outputs_match_feature_info_in_train_and_eval(name: str, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    bb = create_backbone(name, **NARROW)
    x = torch.randn(2, 3, *size)
    c = NARROW["channels"]
    base = FEATURES[name][0][0] // 2  # the first output has 2c channels
    widths = [c * f[0] // base for f in FEATURES[name]]
    for train in (True, False):
        bb.train(train)
        with torch.no_grad():
            feats = bb(x)
        assert isinstance(feats, list) and len(feats) == len(bb.feature_info)
        for f, info, w in zip(feats, bb.feature_info, widths, strict=True):
            assert info.channels == w
            assert f.shape == (2, w, math.ceil(size[0] / 8), math.ceil(size[1] / 8))


@pytest.mark.parametrize("name", sorted(FEATURES))
def test_every_parameter_gets_a_gradient(name: str) -> None:
    torch.manual_seed(0)
    bb = create_backbone(name, **NARROW).train()
    feats = bb(torch.randn(2, 3, 64, 80))
    sum(f.mean() for f in feats).backward()
    assert not [n for n, p in bb.named_parameters() if p.grad is None]


@pytest.mark.parametrize("name", sorted(FEATURES))
def test_only_output_stride_32(name: str) -> None:
    with torch.device("meta"):
        assert create_backbone(name, output_stride=32) is not None
        for bad in (8, 16):
            with pytest.raises(ValueError, match=rf"{name}: output_stride must be 32.*\[32\]"):
                create_backbone(name, output_stride=bad)
        with pytest.raises(TypeError, match=r"unknown option.*'widht'"):
            create_backbone(name, widht=3)


def test_variants_use_their_pyramid_pooling_and_fusion() -> None:
    with torch.device("meta"):
        s, m, large = (create_backbone(f"pidnet_{v}") for v in "sml")
        ddr = create_backbone("ddrnet_23_slim")
    assert type(s.spp) is PAPPM and type(m.spp) is PAPPM and type(large.spp) is DAPPM
    assert type(ddr.spp) is DAPPM
    assert (
        isinstance(s.dfm, LightBag) and isinstance(m.dfm, LightBag) and isinstance(large.dfm, Bag)
    )
    # mmseg's pools: avg 5/2/2, 9/4/4, 17/8/8, then global
    pools = [ddr.spp.scales[i][0] for i in (1, 2, 3)]
    assert [(p.kernel_size, p.stride, p.padding) for p in pools] == [
        (5, 2, 2),
        (9, 4, 4),
        (17, 8, 8),
    ]
    assert isinstance(ddr.spp.scales[4][0], nn.AdaptiveAvgPool2d)
    # PAPPM refines the four pooled scales with one grouped conv, DAPPM with four
    assert s.spp.processes.conv.groups == 4 and len(ddr.spp.processes) == 4
    # PIDNet-L: 3 stem blocks, 4 I-branch blocks; S/M: 2 and 3
    assert len(large.stem[2]) == 3 and len(large.i_branch_layers[0]) == 4
    assert len(s.stem[2]) == 2 and len(s.i_branch_layers[0]) == 3
    # the last block of a branch layer has no output ReLU, the first BasicBlock has one
    layer = ddr.spatial_branch_layers[0]
    assert layer[0].act is not None and layer[1].act is None
    assert ddr.context_branch_layers[2][0].act is None  # a Bottleneck alone


@pytest.mark.parametrize("name", ["ddrnet_23_slim", "pidnet_s"])
def test_mmseg_layout_weights_load_strictly(name: str) -> None:
    torch.manual_seed(0)
    src = create_backbone(name, **NARROW).eval()
    # an mmseg checkpoint's backbone: our names under "backbone."
    sd = {f"backbone.{k}": v.clone() for k, v in src.state_dict().items()}
    dst = create_backbone(name, **NARROW).eval()
    load_pretrained(dst, sd)
    x = torch.randn(1, 3, 48, 56)
    with torch.no_grad():
        for a, b in zip(src(x), dst(x), strict=True):
            assert torch.equal(a, b)
    broken = dict(sd)
    broken.pop(next(k for k in broken if k.endswith("spp.shortcut.conv.weight")))
    with pytest.raises(
        IncompatibleWeightsError, match=r"missing keys.*spp\.shortcut\.conv\.weight"
    ):
        load_pretrained(create_backbone(name, **NARROW), broken)
    full = dict(sd, **{"decode_head.conv_seg.weight": torch.zeros(3, 16, 1, 1)})
    with pytest.raises(IncompatibleWeightsError, match="from_mmseg"):
        load_pretrained(create_backbone(name, **NARROW), full)
