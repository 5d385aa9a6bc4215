"""ResNet fidelity: torchvision parity, parameter counts, dilation per block, options."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from seg_backbones import FrozenBatchNorm2d, create_backbone, load_pretrained

torchvision = pytest.importorskip("torchvision")

X_SHAPE = (1, 3, 65, 81)  # odd, small: every stride-2 op must round up as torchvision's


def _meta(name: str, **kwargs) -> nn.Module:
    """Structure only (no init, no memory): for tests that inspect attributes."""
    with torch.device("meta"):
        return create_backbone(name, **kwargs)


def _torchvision_features(tv: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
    feats = []
    for layer in (tv.layer1, tv.layer2, tv.layer3, tv.layer4):
        x = layer(x)
        feats.append(x)
    return feats


def _randomise_bn_stats(model: nn.Module) -> None:
    # non-trivial running statistics, so eval-mode parity also checks they were loaded
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.fixture(scope="module")
def tv_resnet50_state() -> dict[str, torch.Tensor]:
    """A randomly initialised torchvision resnet50 state dict with non-trivial BN statistics."""
    torch.manual_seed(0)
    tv = torchvision.models.resnet50()
    _randomise_bn_stats(tv)
    return tv.state_dict()


@pytest.mark.parametrize(
    ("output_stride", "replace"),
    [(32, [False, False, False]), (16, [False, False, True]), (8, [False, True, True])],
)
def test_torchvision_resnet50_parity(
    tv_resnet50_state: dict[str, torch.Tensor], output_stride: int, replace: list[bool]
) -> None:
    tv = torchvision.models.resnet50(replace_stride_with_dilation=replace)
    tv.load_state_dict(tv_resnet50_state)
    tv.eval()
    bb = create_backbone("resnet50", output_stride=output_stride)
    load_pretrained(bb, tv_resnet50_state, source="torchvision")
    bb.eval()
    x = torch.randn(X_SHAPE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, ref = bb(x), _torchvision_features(tv, x)
    for a, b in zip(ours, ref, strict=True):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() <= 1e-5


@pytest.mark.parametrize("depth", [18, 50, 101])
def test_param_count_equals_torchvision(depth: int) -> None:
    with torch.device("meta"):
        tv = getattr(torchvision.models, f"resnet{depth}")()
    n_tv = sum(p.numel() for k, p in tv.named_parameters() if not k.startswith("fc."))
    bb = _meta(f"resnet{depth}")
    assert sum(p.numel() for p in bb.parameters()) == n_tv
    tv_keys = {k for k in tv.state_dict() if not k.startswith("fc.")}
    assert set(bb.state_dict()) == tv_keys


def test_deep_stems_match_references() -> None:
    v1c = _meta("resnet50_v1c")
    assert [tuple(v1c.stem[i].weight.shape) for i in (0, 3, 6)] == [
        (32, 3, 3, 3),
        (32, 32, 3, 3),
        (64, 32, 3, 3),
    ]
    assert v1c.stem[0].stride == (2, 2) and v1c.stem[3].stride == (1, 1)
    deep = _meta("resnet50_deep")
    assert [tuple(deep.stem[i].weight.shape) for i in (0, 3, 6)] == [
        (64, 3, 3, 3),
        (64, 64, 3, 3),
        (128, 64, 3, 3),
    ]
    assert deep.layer1[0].conv1.in_channels == 128
    assert deep.layer1[0].downsample[0].in_channels == 128
    # each conv followed by norm + ReLU
    assert [type(m).__name__ for m in deep.stem] == ["Conv2d", "BatchNorm2d", "ReLU"] * 3


def _dilations(layer: nn.Sequential, conv: str = "conv2") -> list[int]:
    out = []
    for block in layer:
        c = getattr(block, conv)
        assert c.padding == c.dilation  # "same" padding for a 3x3 conv
        out.append(c.dilation[0])
    return out


@pytest.mark.parametrize(
    ("output_stride", "contract", "layer3", "layer4"),
    [
        (8, True, [1, 2, 2, 2, 2, 2], [2, 4, 4]),
        (8, False, [2] * 6, [4, 4, 4]),
        (16, True, [1] * 6, [1, 2, 2]),
        (16, False, [1] * 6, [2, 2, 2]),
        (32, True, [1] * 6, [1, 1, 1]),
    ],
)
def test_dilation_per_block(
    output_stride: int, contract: bool, layer3: list[int], layer4: list[int]
) -> None:
    bb = _meta("resnet50", output_stride=output_stride, contract_dilation=contract)
    assert _dilations(bb.layer1) == [1] * 3 and _dilations(bb.layer2) == [1] * 4
    assert _dilations(bb.layer3) == layer3
    assert _dilations(bb.layer4) == layer4
    # stride on the 3x3 conv of the first block (torchvision / mmseg "pytorch" style)
    strides = {8: (2, 1, 1), 16: (2, 2, 1), 32: (2, 2, 2)}[output_stride]
    for layer, s in zip((bb.layer2, bb.layer3, bb.layer4), strides, strict=True):
        assert layer[0].conv1.stride == (1, 1)
        assert layer[0].conv2.stride == (s, s)
        assert layer[0].downsample[0].stride == (s, s)


@pytest.mark.parametrize(
    ("output_stride", "mode", "contract", "layer4"),
    [
        (8, "multiply", False, [4, 8, 16]),  # DeepLabV3 paper / PKUSeg
        (8, "multiply", True, [2, 8, 16]),  # torchcv: the formerly strided conv gets D // 2
        (8, "absolute", True, [1, 2, 4]),  # mmseg: grid as given, never contracted
        (8, "absolute", False, [1, 2, 4]),
        (16, "multiply", False, [2, 4, 8]),
        (16, "multiply", True, [1, 4, 8]),
        (16, "absolute", True, [1, 2, 4]),
    ],
)
def test_multi_grid(output_stride: int, mode: str, contract: bool, layer4: list[int]) -> None:
    bb = _meta(
        "resnet101_v1c",
        output_stride=output_stride,
        multi_grid=(1, 2, 4),
        multi_grid_mode=mode,
        contract_dilation=contract,
    )
    assert _dilations(bb.layer4) == layer4
    # layer3 is untouched by the grid
    if output_stride == 8:
        expected3 = ([1] if contract else [2]) + [2] * 22
    else:
        expected3 = [1] * 23
    assert _dilations(bb.layer3) == expected3


def test_basic_block_dilation() -> None:
    # mmseg BasicBlock (7x7 and _v1c defaults): conv1 dilated, conv2 at dilation 1
    bb = _meta("resnet18", output_stride=8)
    assert _dilations(bb.layer3, "conv1") == [1, 2]
    assert _dilations(bb.layer4, "conv1") == [2, 4]
    assert _dilations(bb.layer4, "conv2") == [1, 1]
    assert _dilations(_meta("resnet18_v1c", output_stride=8).layer4, "conv2") == [1, 1]
    # CSAIL/torchcv _nostride_dilate (_deep default): the formerly strided conv1 gets D // 2,
    # every other 3x3 conv D
    bb = _meta("resnet18_deep", output_stride=8)
    assert _dilations(bb.layer3, "conv1") == [1, 2]
    assert _dilations(bb.layer3, "conv2") == [2, 2]
    assert _dilations(bb.layer4, "conv1") == [2, 4]
    assert _dilations(bb.layer4, "conv2") == [4, 4]
    bb = _meta("resnet34", output_stride=16, basic_block_dilation="both")
    assert _dilations(bb.layer4, "conv2") == [2, 2, 2]
    bb = _meta("resnet34_deep", output_stride=8, contract_dilation=False)
    assert _dilations(bb.layer4, "conv1") == [4, 4, 4]
    bb = _meta("resnet34_deep", output_stride=8, basic_block_dilation="conv1")
    assert _dilations(bb.layer4, "conv2") == [1, 1, 1]


@pytest.mark.parametrize(
    ("norm", "cls"),
    [
        ("bn", nn.BatchNorm2d),
        ("syncbn", nn.SyncBatchNorm),
        ("gn", nn.GroupNorm),
        ("frozen_bn", FrozenBatchNorm2d),
    ],
)
def test_norm_layer(norm: str, cls: type) -> None:
    bb = _meta("resnet18_v1c", norm_layer=norm)
    assert isinstance(bb.stem[1], cls) and isinstance(bb.layer4[1].bn2, cls)
    if norm == "gn":
        assert bb.stem[1].num_groups == 32
    if norm == "frozen_bn":
        assert not any(p.requires_grad for n, p in bb.named_parameters() if "bn" in n)


def test_norm_layer_callable() -> None:
    bb = _meta("resnet18", norm_layer=lambda c: nn.GroupNorm(8, c))
    assert bb.bn1.num_groups == 8


def test_frozen_bn_matches_bn_in_eval() -> None:
    torch.manual_seed(0)
    ref = create_backbone("resnet18")
    _randomise_bn_stats(ref)
    frozen = create_backbone("resnet18", norm_layer="frozen_bn")
    load_pretrained(frozen, ref.state_dict())  # drops num_batches_tracked
    x = torch.randn(X_SHAPE)
    with torch.no_grad():
        for a, b in zip(frozen.train()(x), ref.eval()(x), strict=True):
            # same affine map, computed as x * scale + shift instead of by the BN kernel
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_norm_eval_keeps_bn_in_eval() -> None:
    bb = create_backbone("resnet18", norm_eval=True).train()
    assert bb.training
    bns = [m for m in bb.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert bb.layer1[0].conv1.training  # only norm layers are switched
    bb = create_backbone("resnet18").train()
    assert all(m.training for m in bb.modules())


@pytest.mark.parametrize("frozen_stages", [-1, 0, 2, 4])
def test_frozen_stages(frozen_stages: int) -> None:
    bb = create_backbone("resnet18_deep", frozen_stages=frozen_stages).train()
    groups = [bb.stem, bb.layer1, bb.layer2, bb.layer3, bb.layer4]
    for i, m in enumerate(groups):
        frozen = i <= frozen_stages
        assert all(p.requires_grad != frozen for p in m.parameters())
        assert all(mod.training != frozen for mod in m.modules())
    bb = create_backbone("resnet18", frozen_stages=0).train()
    assert not bb.conv1.weight.requires_grad and not bb.bn1.training
    assert bb.layer1[0].conv1.weight.requires_grad


def test_zero_init_residual() -> None:
    def nonzero(w: torch.Tensor) -> int:
        return int(torch.count_nonzero(w.detach()))

    bb = create_backbone("resnet50", zero_init_residual=True)
    assert all(nonzero(b.bn3.weight) == 0 for layer in (bb.layer1, bb.layer4) for b in layer)
    assert nonzero(bb.layer1[0].bn2.weight) > 0
    bb = create_backbone("resnet18", zero_init_residual=True)
    assert nonzero(bb.layer2[1].bn2.weight) == 0
    assert nonzero(create_backbone("resnet18").layer2[1].bn2.weight) > 0


def test_in_chans() -> None:
    bb = create_backbone("resnet18_v1c", in_chans=4).eval()
    assert bb.stem[0].in_channels == 4
    with torch.no_grad():
        assert bb(torch.randn(1, 4, 33, 33))[-1].shape == (1, 512, 2, 2)
