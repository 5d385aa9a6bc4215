"""MobileNetV3: feature contract, dilation layout, torchvision parity, weight layouts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seg_backbones import IncompatibleWeightsError, create_backbone, load_pretrained
from seg_backbones.mobilenetv3 import InvertedResidual, SamePadConv2d

torch.set_num_threads(1)  # tiny forwards on a shared 2-core machine

NAMES = ("mobilenet_v3_large", "mobilenet_v3_small")
H, W = 97, 130  # odd height: every stride-2 op must round up, as torchvision's do
# (channels) per level, and the features.<i> each level is taken from
LEVELS = {
    "mobilenet_v3_large": ((16, 24, 40, 960), (1, 3, 4, 16)),
    "mobilenet_v3_small": ((16, 16, 24, 576), (0, 1, 2, 12)),
}
# torchvision's documented num_params (ImageNet classifiers) and classifier widths
TV_PARAMS = {
    "mobilenet_v3_large": (5_483_032, 960, 1280),
    "mobilenet_v3_small": (2_542_856, 576, 1024),
}


def _randomize(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
        elif isinstance(m, nn.Conv2d) and m.bias is not None:
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) * 0.2 - 0.1)


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("name", NAMES)
def test_outputs_match_feature_info(name: str, output_stride: int) -> None:
    with torch.device("meta"):  # shapes only: the same arithmetic as on the CPU
        bb = create_backbone(name, output_stride=output_stride).eval()
        feats = bb(torch.randn(1, 3, H, W))
    channels, indices = LEVELS[name]
    assert bb.out_indices == indices
    reductions = (2, 4, 8, output_stride)
    assert bb.feature_info == list(zip(channels, reductions, strict=True))
    assert len(feats) == 4
    for f, (c, r) in zip(feats, bb.feature_info, strict=True):
        assert f.shape == (1, c, math.ceil(H / r), math.ceil(W / r))


@pytest.mark.parametrize("variant", ["torchvision", "mmseg"])
def test_cpu_forward_matches_feature_info(variant: str) -> None:
    torch.manual_seed(0)
    bb = create_backbone("mobilenet_v3_small", output_stride=8, variant=variant).eval()
    with torch.no_grad():
        feats = bb(torch.randn(1, 3, 64, 81))
    for f, (c, r) in zip(feats, bb.feature_info, strict=True):
        assert f.shape == (1, c, math.ceil(64 / r), math.ceil(81 / r))


def _depthwise(bb: nn.Module) -> list[tuple[int, int]]:
    """(stride, dilation) of every block's depthwise conv, features.1 onwards."""
    out = []
    for layer in bb.features:
        if isinstance(layer, InvertedResidual):
            conv = next(
                m for m in layer.block.modules() if isinstance(m, nn.Conv2d) and m.groups > 1
            )
            assert conv.padding[0] == conv.dilation[0] * (conv.kernel_size[0] - 1) // 2
            out.append((conv.stride[0], conv.dilation[0]))
    return out


def test_dilation_layout_large() -> None:
    # blocks 1..15; strided ones: 2, 4, 7, 13 (torchvision's C1..C4)
    s = {2: 2, 4: 2, 7: 2, 13: 2}
    plain = [(s.get(i, 1), 1) for i in range(1, 16)]
    with torch.device("meta"):
        layouts = {
            os_: _depthwise(create_backbone("mobilenet_v3_large", output_stride=os_))
            for os_ in (8, 16, 32)
        }
    assert layouts[32] == plain
    # OS16 = torchvision dilated=True: C4 and after at dilation 2, stride 1
    assert layouts[16] == plain[:12] + [(1, 2)] * 3
    # OS8 = mmseg lraspp_m-v3-d8: layer7..12 dilation 2, layer13..15 dilation 4
    assert layouts[8] == plain[:6] + [(1, 2)] * 6 + [(1, 4)] * 3


def test_dilation_layout_small() -> None:
    with torch.device("meta"):
        os8 = _depthwise(create_backbone("mobilenet_v3_small", output_stride=8))
    # mmseg small d8: layer4..8 dilation 2, layer9..11 dilation 4
    assert os8 == [(2, 1), (2, 1), (1, 1)] + [(1, 2)] * 5 + [(1, 4)] * 3


def test_residuals_follow_the_papers_strides() -> None:
    bb = create_backbone("mobilenet_v3_large", output_stride=8)
    blocks = [m for m in bb.features if isinstance(m, InvertedResidual)]
    res = [i + 1 for i, b in enumerate(blocks) if b.use_res_connect]
    assert res == [1, 3, 5, 6, 8, 9, 10, 12, 14, 15]
    assert [i + 1 for i, b in enumerate(blocks) if b.is_strided] == [2, 4, 7, 13]


@pytest.mark.parametrize(("variant", "momentum"), [("torchvision", 0.01), ("mmseg", 0.1)])
def test_batch_norm_eps_is_1e3(variant: str, momentum: float) -> None:
    bb = create_backbone("mobilenet_v3_small", variant=variant)
    bns = [m for m in bb.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 and m.momentum == momentum for m in bns)
    frozen = create_backbone("mobilenet_v3_small", norm_layer="frozen_bn")
    assert {m.eps for m in frozen.modules() if type(m).__name__ == "FrozenBatchNorm2d"} == {1e-3}


@pytest.mark.parametrize("name", NAMES)
def test_param_count_equals_torchvision(name: str) -> None:
    total, c_in, hidden = TV_PARAMS[name]
    classifier = c_in * hidden + hidden + hidden * 1000 + 1000
    bb = create_backbone(name)
    assert sum(p.numel() for p in bb.parameters()) == total - classifier


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dilated", [False, True])
def test_equals_torchvision_features(name: str, dilated: bool) -> None:
    tvm = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    ref = getattr(tvm, name)(weights=None, dilated=dilated)
    _randomize(ref, 1)
    ref = ref.eval().double()
    bb = create_backbone(name, output_stride=16 if dilated else 32).double().eval()
    load_pretrained(bb, ref.state_dict())  # classifier.* dropped, the rest strictly by name
    x = torch.randn(1, 3, H, W, dtype=torch.float64)
    with torch.no_grad():
        got = bb(x)
        want, y = [], x
        for i, layer in enumerate(ref.features):
            y = layer(y)
            if i in bb.out_indices:
                want.append(y)
    assert len(got) == len(want) == 4
    for g_, w_ in zip(got, want, strict=True):
        assert g_.shape == w_.shape
        assert (g_ - w_).abs().max().item() <= 1e-10


def _mmseg_key_map(name: str) -> dict[str, str]:
    """Our module prefix -> mmseg's, transcribed from mmseg's MobileNetV3 / InvertedResidualV3.

    mmseg: ``layer0`` ConvModule (conv, bn); ``layer<i>`` InvertedResidualV3 with
    ``expand_conv`` (when in != mid), ``depthwise_conv``, ``se`` (conv1.conv, conv2.conv),
    ``linear_conv``; the last ``layer<N>`` ConvModule.
    """
    large = name.endswith("large")
    mids = (
        (16, 64, 72, 72, 120, 120, 240, 200, 184, 184, 480, 672, 672, 960, 960)
        if large
        else (16, 72, 88, 96, 240, 240, 120, 144, 288, 576, 576)
    )
    outs = (
        (16, 24, 24, 40, 40, 40, 80, 80, 80, 80, 112, 112, 160, 160, 160)
        if large
        else (16, 24, 24, 40, 40, 40, 48, 48, 96, 96, 96)
    )
    se = (
        (0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 1)
        if large
        else (1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1)
    )
    table = {"features.0.0": "layer0.conv", "features.0.1": "layer0.bn"}
    cin = 16
    for i, (mid, out, has_se) in enumerate(zip(mids, outs, se, strict=True), start=1):
        parts = (["expand_conv"] if cin != mid else []) + ["depthwise_conv"]
        parts += ["se"] if has_se else []
        for j, part in enumerate([*parts, "linear_conv"]):
            if part == "se":
                table[f"features.{i}.block.{j}.fc1"] = f"layer{i}.se.conv1.conv"
                table[f"features.{i}.block.{j}.fc2"] = f"layer{i}.se.conv2.conv"
            else:
                table[f"features.{i}.block.{j}.0"] = f"layer{i}.{part}.conv"
                table[f"features.{i}.block.{j}.1"] = f"layer{i}.{part}.bn"
        cin = out
    n = len(mids) + 1
    table[f"features.{n}.0"] = f"layer{n}.conv"
    table[f"features.{n}.1"] = f"layer{n}.bn"
    return table


@pytest.mark.parametrize("name", NAMES)
def test_mmseg_layout_loads(name: str) -> None:
    torch.manual_seed(0)
    src = create_backbone(name, output_stride=8, variant="mmseg")
    _randomize(src, 2)
    table = _mmseg_key_map(name)
    mm = {}
    for k, v in src.state_dict().items():
        module, _, param = k.rpartition(".")
        mm[f"backbone.{table[module]}.{param}"] = v  # with mmseg's "backbone." prefix
    dst = create_backbone(name, output_stride=8, variant="mmseg")
    load_pretrained(dst, mm)  # source="auto" detects mmseg, the prefix is stripped
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    del mm[next(iter(mm))]
    with pytest.raises(IncompatibleWeightsError, match="missing keys"):
        load_pretrained(dst, mm, source="mmseg")


def test_torchvision_classifier_is_dropped_and_seg_checkpoints_are_refused() -> None:
    bb = create_backbone("mobilenet_v3_small")
    sd = {f"features.{k[len('features.') :]}": v for k, v in bb.state_dict().items()}
    sd["classifier.0.weight"] = torch.zeros(1024, 576)
    load_pretrained(bb, sd)
    seg = {f"backbone.{k[len('features.') :]}": v for k, v in bb.state_dict().items()}
    seg["classifier.low_classifier.weight"] = torch.zeros(3, 24, 1, 1)
    with pytest.raises(IncompatibleWeightsError, match="from_torchvision"):
        load_pretrained(bb, seg)
    with pytest.raises(ValueError, match="valid sources"):
        load_pretrained(bb, sd, source="timm")


@pytest.mark.parametrize("size", [(16, 16), (17, 16), (20, 23)])
def test_same_padding_is_tensorflows(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    conv = SamePadConv2d(2, 3, 5, stride=2, bias=False)
    x = torch.randn(1, 2, *size)
    pads = []
    for n in reversed(size):  # F.pad order: (left, right, top, bottom)
        total = max((math.ceil(n / 2) - 1) * 2 + 5 - n, 0)
        pads += [total // 2, total - total // 2]
    want = F.conv2d(F.pad(x, pads), conv.weight, stride=2)
    assert torch.equal(conv(x), want)
    assert want.shape[-2:] == tuple(math.ceil(n / 2) for n in size)


def test_mmseg_padding_differs_from_torchvision_only_on_even_sizes() -> None:
    torch.manual_seed(0)
    tv = create_backbone("mobilenet_v3_small", output_stride=8)
    _randomize(tv, 3)
    mm = create_backbone("mobilenet_v3_small", output_stride=8, variant="mmseg")
    mm.load_state_dict(tv.state_dict())
    tv.eval()
    mm.eval()
    with torch.no_grad():
        odd = torch.randn(1, 3, 33, 49)  # 33 -> 17 -> 9 -> 5: odd at every stride-2 conv
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(tv(odd), mm(odd), strict=True))
        even = torch.randn(1, 3, 32, 48)
        assert not torch.allclose(tv(even)[0], mm(even)[0], atol=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"output_stride": 4}, r"mobilenet_v3_large: output_stride must be one of \[8, 16, 32\]"),
        ({"output_stride": True}, "output_stride"),
        ({"variant": "timm"}, r"variant 'timm'.*torchvision"),
        ({"frozen_stages": 17}, r"frozen_stages must be an int in \[-1, 16\]"),
        ({"norm_layer": "ln"}, "norm_layer"),
    ],
)
def test_invalid_options_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create_backbone("mobilenet_v3_large", **kwargs)


def test_unknown_option_and_keyword_only() -> None:
    with pytest.raises(TypeError, match=r"mobilenet_v3_small: unknown option\(s\) \['dilated'\]"):
        create_backbone("mobilenet_v3_small", dilated=True)


def test_frozen_stages_and_norm_eval() -> None:
    bb = create_backbone("mobilenet_v3_small", frozen_stages=2, norm_eval=True).train()
    frozen = [
        i for i, m in enumerate(bb.features) if not any(p.requires_grad for p in m.parameters())
    ]
    assert frozen == [0, 1, 2]
    assert all(not m.training for m in bb.modules() if isinstance(m, nn.BatchNorm2d))
