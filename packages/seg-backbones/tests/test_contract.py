"""Feature contract: every registered backbone's outputs match its ``feature_info``."""

from __future__ import annotations

import math

import pytest
import torch

from seg_backbones import FeatureInfo, create_backbone, list_backbones

H, W = 97, 129  # odd on purpose: every stride-2 op must round up, as torchvision's do

RESNETS = [f"resnet{d}{s}" for d in (18, 34, 50, 101) for s in ("", "_v1c", "_deep")] + [
    "resnet152"
]
NAMES = RESNETS + [f"mit_b{i}" for i in range(6)] + ["hrnet_w18", "hrnet_w48"]
NAMES += ["mobilenet_v3_large", "mobilenet_v3_small"]

EXPANSION = {18: 1, 34: 1, 50: 4, 101: 4, 152: 4}


def test_list_backbones_has_the_documented_names() -> None:
    assert set(NAMES) <= set(list_backbones())


def _check_outputs(bb: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        feats = bb(x)
    assert isinstance(feats, list) and len(feats) == len(bb.feature_info) >= 1
    for f, info in zip(feats, bb.feature_info, strict=True):
        assert isinstance(info, FeatureInfo)
        assert f.shape == (
            1,
            info.channels,
            math.ceil(H / info.reduction),
            math.ceil(W / info.reduction),
        )


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("name", list_backbones())
def test_outputs_match_feature_info(name: str, output_stride: int) -> None:
    # Shapes only, so the forward runs on the meta device (same shape arithmetic as CPU,
    # no compute): this keeps the full registry x output-stride grid fast on small CI
    # machines. Real CPU forwards are checked below and in the parity tests.
    with torch.device("meta"):
        try:
            bb = create_backbone(name, output_stride=output_stride).eval()
        except ValueError as e:  # a family that cannot dilate says so, naming itself
            assert output_stride != 32, f"{name} must support output_stride=32: {e}"
            assert name in str(e) and "output_stride" in str(e) and "32" in str(e), str(e)
            return
        _check_outputs(bb, torch.randn(1, 3, H, W))


@pytest.mark.parametrize(
    ("name", "output_stride"),
    [
        ("resnet18", 8),
        ("resnet18", 16),
        ("resnet18", 32),
        ("resnet18_v1c", 8),
        ("resnet18_deep", 8),
    ],
)
def test_cpu_outputs_match_feature_info(name: str, output_stride: int) -> None:
    torch.manual_seed(0)
    bb = create_backbone(name, output_stride=output_stride).eval()
    _check_outputs(bb, torch.randn(1, 3, H, W))


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("depth", [18, 50])
def test_feature_info_values(depth: int, output_stride: int) -> None:
    e = EXPANSION[depth]
    reductions = {8: (4, 8, 8, 8), 16: (4, 8, 16, 16), 32: (4, 8, 16, 32)}[output_stride]
    expected = [(64 * e * 2**i, r) for i, r in enumerate(reductions)]
    with torch.device("meta"):
        bb = create_backbone(f"resnet{depth}", output_stride=output_stride)
    assert bb.feature_info == expected


@pytest.mark.parametrize("name", RESNETS)
def test_resnets_dilate_to_every_output_stride(name: str) -> None:
    for output_stride in (8, 16, 32):
        with torch.device("meta"):
            assert create_backbone(name, output_stride=output_stride).feature_info[-1][1] == (
                output_stride
            )


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(KeyError, match="resnet50_v1c") as exc:
        create_backbone("resnet51")
    assert "resnet51" in str(exc.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"output_stride": 4}, "output_stride"),
        ({"multi_grid": (1, 2, 4)}, "multi_grid"),  # resnet18 layer4 has 2 blocks
        ({"multi_grid": (1, 2, 4), "multi_grid_mode": "sum"}, "multi_grid_mode"),
        ({"frozen_stages": 5}, "frozen_stages"),
        ({"norm_layer": "ln"}, "norm_layer"),
        ({"basic_block_dilation": "conv2"}, "basic_block_dilation"),
    ],
)
def test_invalid_options_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create_backbone("resnet18", **kwargs)


def test_options_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        create_backbone("resnet18", 8)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"resnet50_v1c: unknown option\(s\) \['outputstride'\]"):
        create_backbone("resnet50_v1c", outputstride=8)


def test_timm_wrapper_contract() -> None:
    pytest.importorskip("timm")
    bb = create_backbone("timm:resnet18", output_stride=8).eval()
    assert bb.feature_info == [(64, 4), (128, 8), (256, 8), (512, 8)]
    with torch.no_grad():
        feats = bb(torch.randn(1, 3, H, W))
    for f, (c, r) in zip(feats, bb.feature_info, strict=True):
        assert f.shape == (1, c, math.ceil(H / r), math.ceil(W / r))
    with pytest.raises(KeyError, match="timm"):
        create_backbone("timm:not_a_model")
