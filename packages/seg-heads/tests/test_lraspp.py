"""LR-ASPP and DeepLabV3 on MobileNetV3: torchvision parity, the mmseg variant, create_model.

torchvision models are compared with torchvision itself (random weights, non-trivial BN
statistics, eval mode). mmseg's ``lraspp_m-v3-d8`` is compared with mmsegmentation 1.2.2
itself by the parity session (``tests/parity``); here the mmseg variant is checked against
a functional transcription of mmseg's ``LRASPPHead.forward`` and through ``from_mmseg``
on a state dict in mmseg's key layout.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import seg_heads.convert._lraspp  # noqa: F401  (registers lraspp_m-v3-d8 with from_mmseg)
from seg_heads import IMAGENET_RGB, create_model
from seg_heads.convert import from_mmseg, from_torchvision
from seg_heads.lraspp import LRASPPHead

tvseg = pytest.importorskip("torchvision.models.segmentation")

H, W = 97, 130  # odd height: every stride-2 op rounds up


def _randomize(model: nn.Module, seed: int) -> None:
    """Non-trivial BN statistics and affines; classifiers scaled so the logits are O(1)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.out_channels == 5:  # the classifiers (5 classes)
            m.weight.data.mul_(20.0)
            m.bias.data.copy_(torch.rand(5, generator=g) - 0.5)


def _compare(ref: nn.Module, ours: nn.Module, keys: set[str]) -> dict[str, float]:
    diffs = {}
    x = torch.randn(1, 3, H, W)
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-6)):
        with torch.no_grad():
            want, got = ref.to(dtype)(x.to(dtype)), ours.to(dtype)(x.to(dtype))
        assert set(got) == set(want) == keys
        for k in keys:
            assert got[k].shape == want[k].shape == (1, 5, H, W)
            assert want[k].std() > 0.3  # logits O(1): the tolerance means something
            diffs[f"{k}/{dtype}"] = (got[k] - want[k]).abs().max().item()
            assert diffs[f"{k}/{dtype}"] <= tol, (k, dtype, diffs)
    return diffs


def test_lraspp_equals_torchvision() -> None:
    torch.manual_seed(0)
    ref = tvseg.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5)
    _randomize(ref, 1)
    ref.eval()
    model = from_torchvision(ref.state_dict(), arch="lraspp_mobilenet_v3_large").eval()
    _compare(ref, model, {"out"})
    cfg = model.build_config
    assert cfg["output_stride"] == 16 and cfg["head_kwargs"] == {"variant": "torchvision"}
    assert model.decode_head.in_index == (2, 3) and model.input_norm == IMAGENET_RGB
    create_model(**cfg).load_state_dict(model.state_dict())  # strict: the config rebuilds it


@pytest.mark.parametrize("aux", [True, False])
def test_deeplabv3_mobilenet_equals_torchvision(aux: bool) -> None:
    torch.manual_seed(0)
    ref = tvseg.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=5, aux_loss=aux
    )
    _randomize(ref, 2)
    ref.eval()
    model = from_torchvision(ref.state_dict(), arch="deeplabv3_mobilenet_v3_large").eval()
    _compare(ref, model, {"out", "aux"} if aux else {"out"})
    assert model.decode_head.rates == (12, 24, 36)  # torchvision's, kept at output stride 16
    assert (model.aux_head is not None) == aux
    create_model(**model.build_config).load_state_dict(model.state_dict())


def _n(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_param_counts_equal_torchvision() -> None:
    ours = create_model("lraspp", backbone="mobilenet_v3_large", num_classes=21)
    ref = tvseg.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21)
    assert _n(ours) == _n(ref) == 3_221_538  # torchvision's documented num_params
    ours = create_model(
        "deeplabv3",
        backbone="mobilenet_v3_large",
        num_classes=21,
        output_stride=16,
        aux=True,
        head_kwargs={"variant": "torchvision", "rates": (12, 24, 36)},
        aux_kwargs={"variant": "torchvision"},
    )
    assert _n(ours) == 11_029_328  # torchvision's documented num_params (with aux)


def test_create_model_as_a_newcomer_types_it() -> None:
    torch.manual_seed(0)
    model = create_model("lraspp", backbone="mobilenet_v3_large", num_classes=11)
    assert model.build_config["output_stride"] == 16  # the registered default
    assert isinstance(model.decode_head, LRASPPHead) and model.decode_head.variant == "torchvision"
    out = model(torch.randn(2, 3, 65, 80))
    assert list(out) == ["out"] and out["out"].shape == (2, 11, 65, 80)
    out["out"].mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    small = create_model("lraspp", backbone="mobilenet_v3_small", num_classes=3, aux=True).eval()
    with torch.no_grad():
        out = small(torch.randn(1, 3, 40, 52))
    assert out["out"].shape == out["aux"].shape == (1, 3, 40, 52)
    assert small.decode_head.in_channels == (24, 576) and small.aux_head.in_channels == 24


def test_head_options_are_validated() -> None:
    with pytest.raises(ValueError, match="variant"):
        create_model(
            "lraspp", backbone="mobilenet_v3_small", num_classes=3, head_kwargs={"variant": "paper"}
        )
    with pytest.raises(ValueError, match=r"lraspp: in_index=\(2, 7\)"):
        create_model(
            "lraspp", backbone="mobilenet_v3_small", num_classes=3, head_kwargs={"in_index": (2, 7)}
        )
    with pytest.raises(ValueError, match=r"reads 2 levels, \(low, high\)"):
        create_model(
            "lraspp",
            backbone="mobilenet_v3_small",
            num_classes=3,
            head_kwargs={"in_index": (0, 1, 3)},
        )
    with pytest.raises(ValueError, match=r"output_stride must be one of \[8, 16, 32\]"):
        create_model("lraspp", backbone="mobilenet_v3_small", num_classes=3, output_stride=4)


# ------------------------------------------------------------------------------ mmseg variant


def _mmseg_model(num_classes: int = 5) -> nn.Module:
    return create_model(
        "lraspp",
        backbone="mobilenet_v3_small",
        num_classes=num_classes,
        output_stride=8,
        backbone_kwargs={"variant": "mmseg"},
        head_kwargs={"variant": "mmseg"},
    )


def test_mmseg_head_structure() -> None:
    model = create_model(
        "lraspp",
        backbone="mobilenet_v3_large",
        num_classes=19,
        output_stride=8,
        head_kwargs={"variant": "mmseg"},
    )
    head = model.decode_head
    assert head.in_index == (0, 1, 3) and head.in_channels == (16, 24, 960)  # mmseg's config
    pool = head.image_pool[0]
    assert isinstance(pool, nn.AvgPool2d) and pool.kernel_size == 49 and pool.stride == (16, 20)
    assert pool.padding == 0
    assert all(m.eps == 1e-3 for m in head.modules() if isinstance(m, nn.BatchNorm2d))
    assert isinstance(head.dropout, nn.Dropout2d) and head.dropout.p == 0.1
    # mmseg 1.2.2 LRASPPHead's state-dict keys and shapes (lraspp_m-v3-d8, 19 classes)
    want = {
        "convs.conv0.weight": (32, 16, 1, 1),
        "convs.conv1.weight": (64, 24, 1, 1),
        "conv_ups.conv_up0.conv.weight": (128, 160, 1, 1),
        "conv_ups.conv_up1.conv.weight": (128, 192, 1, 1),
        "conv_up_input.weight": (128, 128, 1, 1),
        "conv_up_input.bias": (128,),
        "aspp_conv.conv.weight": (128, 960, 1, 1),
        "image_pool.1.conv.weight": (128, 960, 1, 1),
        "conv_seg.weight": (19, 128, 1, 1),
        "conv_seg.bias": (19,),
    }
    bn = {
        f"{m}.bn.{p}"
        for m in ("conv_ups.conv_up0", "conv_ups.conv_up1", "aspp_conv")
        for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    }
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert set(shapes) == set(want) | bn
    assert {k: shapes[k] for k in want} == want
    # mmseg's parameter count for lraspp_m-v3-d8 (19 classes), measured with mmseg 1.2.2
    assert _n(model) == 3_284_547


def _mmseg_head_forward(sd: dict, feats: list, align_corners: bool = False) -> torch.Tensor:
    """mmseg 1.2.2 ``LRASPPHead.forward`` (eval), written with functional calls over its keys."""

    def cbr(x, p, eps=1e-3):
        x = F.conv2d(x, sd[f"{p}.conv.weight"])
        x = F.batch_norm(
            x,
            sd[f"{p}.bn.running_mean"],
            sd[f"{p}.bn.running_var"],
            sd[f"{p}.bn.weight"],
            sd[f"{p}.bn.bias"],
            eps=eps,
        )
        return F.relu(x)

    def resize(x, like):
        return F.interpolate(x, like.shape[-2:], mode="bilinear", align_corners=align_corners)

    inputs = [feats[0], feats[1], feats[3]]
    x = inputs[-1]
    pooled = torch.sigmoid(F.conv2d(F.avg_pool2d(x, 49, (16, 20)), sd["image_pool.1.conv.weight"]))
    x = cbr(x, "aspp_conv") * resize(pooled, x)
    x = F.conv2d(x, sd["conv_up_input.weight"], sd["conv_up_input.bias"])
    for i in (1, 0):
        x = resize(x, inputs[i])
        x = torch.cat([x, F.conv2d(inputs[i], sd[f"convs.conv{i}.weight"])], 1)
        x = cbr(x, f"conv_ups.conv_up{i}")
    return F.conv2d(x, sd["conv_seg.weight"], sd["conv_seg.bias"])


def test_mmseg_head_matches_a_transcription_of_mmseg() -> None:
    torch.manual_seed(0)
    model = _mmseg_model()
    _randomize(model, 3)
    model = model.double().eval()
    x = torch.randn(1, 3, 400, 560, dtype=torch.float64)  # stride-8 map 50x70: pooled 1x2
    with torch.no_grad():
        feats = model.backbone(x)
        got = model.decode_head(feats)
        sd = model.decode_head.state_dict()
        want = _mmseg_head_forward(sd, feats)
    assert got.shape == want.shape == (1, 5, 200, 280)  # at the stride of level 0
    assert (got - want).abs().max().item() <= 1e-10


def test_mmseg_pooling_needs_a_49_pixel_map() -> None:
    model = _mmseg_model().eval()
    with pytest.raises(ValueError, match=r"49x49 window.*392 px at output stride 8"):
        model(torch.randn(1, 3, 256, 512))


def _to_mmseg_keys(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict with the backbone renamed to mmseg's ``layer<i>`` keys."""
    from seg_backbones.mobilenetv3 import _mmseg_names

    inverse = {ours: mm for mm, ours in _mmseg_names(model.backbone).items()}
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("backbone."):
            module, _, param = k[len("backbone.") :].rpartition(".")
            k = f"backbone.{inverse[module]}.{param}"
        out[k] = v
    return out


def test_from_mmseg_round_trip() -> None:
    """Our mmseg-variant weights, renamed to mmseg's keys, come back through from_mmseg."""
    torch.manual_seed(0)
    src = create_model(
        "lraspp",
        backbone="mobilenet_v3_large",
        num_classes=4,
        output_stride=8,
        backbone_kwargs={"variant": "mmseg"},
        head_kwargs={"variant": "mmseg"},
    )
    mm = _to_mmseg_keys(src)
    assert "backbone.layer16.conv.weight" in mm and "backbone.layer4.se.conv1.conv.bias" in mm
    model = from_mmseg(
        {"meta": {}, "state_dict": mm}, arch="lraspp_m-v3-d8_512x1024_320k_cityscapes"
    )
    again = from_mmseg(mm, arch="mobilenet-v3-d8_lraspp_4xb4-320k_cityscapes-512x1024")
    assert again.build_config == model.build_config
    head_kwargs = {"variant": "mmseg", "channels": 128, "branch_channels": [32, 64]}
    assert model.build_config == {**src.build_config, "head_kwargs": head_kwargs}
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    small = create_model(
        "lraspp",
        backbone="mobilenet_v3_small",
        num_classes=4,
        output_stride=8,
        head_kwargs={"variant": "mmseg"},
    )
    with pytest.raises(ValueError, match="MobileNetV3-Large"):
        from_mmseg(_to_mmseg_keys(small), arch="lraspp_m-v3-d8")


def test_from_torchvision_names_the_arch_when_weights_do_not_fit() -> None:
    ref = tvseg.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3)
    with pytest.raises(KeyError, match=r"classifier\.4\.weight.*valid archs"):
        from_torchvision(ref.state_dict(), arch="deeplabv3_mobilenet_v3_large")
