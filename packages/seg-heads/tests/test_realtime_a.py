"""BiSeNetV2, Fast-SCNN and STDC models: mmseg's sizes and key layout, training outputs,
the ``from_mmseg`` converters (with and without the training-only heads)."""

from __future__ import annotations

import hashlib
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seg_heads import create_model, tiny_config
from seg_heads.convert import MMSEG_ARCHS, from_mmseg

torch.set_num_threads(1)

# Measured with mmsegmentation 1.2.2 itself (mmcv-lite, /work/venv-mmseg), the full models
# of configs/bisenetv2/bisenetv2_fcn_4xb4-160k_cityscapes-1024x1024.py,
# configs/fastscnn/fast_scnn_8xb4-160k_cityscapes-512x1024.py and
# configs/stdc/stdc{1,2}_4xb12-80k_cityscapes-512x1024.py (19 classes) built with BN:
# sum(p.numel() for p in model.parameters()) (auxiliary heads included), the number of
# state-dict keys and sha256 over the sorted "key:shape" lines (first 16 hex digits).
# mmseg's STDC counts 3 more parameters: STDCHead.fusion_kernel, a frozen constant of its
# boundary targets, which are the trainer's (not held by our detail head).
MMSEG = {
    "bisenetv2_fcn": (14_804_255, 385, "7b6405129669bbe3"),
    "fast_scnn": (1_456_617, 282, "740d3da48f07b002"),
    "stdc1": (8_573_022, 258, "7056372dd015043f"),
    "stdc2": (12_603_486, 402, "5b9d08a76fde165c"),
}
FUSION_KERNEL = 3
BUILD = {  # arch -> create_model name, backbone
    "bisenetv2_fcn": ("bisenetv2", "bisenetv2"),
    "fast_scnn": ("fast_scnn", "fast_scnn"),
    "stdc1": ("stdc", "stdc1"),
    "stdc2": ("stdc", "stdc2"),
}
STDC_CONSTANTS = {
    "auxiliary_head.2.laplacian_kernel": torch.tensor(
        [-1.0, -1, -1, -1, 8, -1, -1, -1, -1]
    ).reshape(1, 1, 3, 3),
    "auxiliary_head.2.fusion_kernel": torch.tensor([0.6, 0.3, 0.1]).reshape(1, 3, 1, 1),
}


def _digest(sd: dict[str, torch.Tensor]) -> str:
    lines = sorted(f"{k}:{tuple(v.shape)}" for k, v in sd.items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _to_mmseg(model: nn.Module, *, stdc: bool) -> dict[str, torch.Tensor]:
    """Our state dict in mmseg's key layout (the inverse of the converter's renaming)."""
    out = {}
    for k, v in model.state_dict().items():
        k = re.sub(r"^decode_head\.head\.", "decode_head.", k)
        k = re.sub(r"^decode_head\.aux_heads\.(\d+)\.", r"auxiliary_head.\1.", k)
        k = re.sub(r"^decode_head\.detail_head\.", "auxiliary_head.2.", k)
        out[k] = v
    if stdc and any(k.startswith("auxiliary_head.2.") for k in out):
        out.update(STDC_CONSTANTS)
    return out


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


@pytest.mark.parametrize("arch", sorted(MMSEG))
def test_full_model_equals_mmseg_in_size_and_layout(arch: str) -> None:
    name, backbone = BUILD[arch]
    model = create_model(name, backbone=backbone, num_classes=19)
    n_params, n_keys, digest = MMSEG[arch]
    stdc = name == "stdc"
    assert _n_params(model) == n_params - (FUSION_KERNEL if stdc else 0)
    sd = _to_mmseg(model, stdc=stdc)
    assert len(sd) == n_keys
    assert _digest(sd) == digest


def test_default_widths_follow_the_configs() -> None:
    bis = create_model("bisenetv2", backbone="bisenetv2", num_classes=19).decode_head
    assert bis.head.in_index == 0 and bis.head.channels == 1024 and len(bis.head.convs) == 1
    assert [h.in_index for h in bis.aux_heads] == [1, 2, 3, 4]
    assert [h.channels for h in bis.aux_heads] == [16, 64, 256, 1024]
    assert all(len(h.convs) == 2 and h.conv_cat is None for h in bis.aux_heads)
    fast = create_model("fast_scnn", backbone="fast_scnn", num_classes=19).decode_head
    assert fast.head.in_index == 2 and len(fast.head.convs) == 2
    assert fast.head.convs[0].depthwise_conv.activate is None
    assert [h.in_index for h in fast.aux_heads] == [1, 0]  # mmseg's in_index -2, -3
    assert all(m.momentum == 0.01 for m in fast.modules() if isinstance(m, nn.BatchNorm2d))
    stdc = create_model("stdc", backbone="stdc1", num_classes=19).decode_head
    assert stdc.head.in_index == 3 and stdc.head.channels == 256
    assert [h.in_index for h in stdc.aux_heads] == [2, 1]
    assert stdc.detail_head.in_index == 0 and stdc.detail_head.conv_seg.out_channels == 2


@pytest.mark.parametrize("name", ["bisenetv2", "fast_scnn", "stdc"])
def test_training_outputs_and_eval_outputs(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, **tiny_config(name))
    x = torch.randn(2, 3, 67, 93)
    out = model.train()(x)
    want = {"bisenetv2": 4, "fast_scnn": 2, "stdc": 2}[name]
    extra = {"detail"} if name == "stdc" else set()
    assert set(out) == {"out", *(f"aux{i}" for i in range(want)), *extra}
    for k in ("out", *(f"aux{i}" for i in range(want))):
        assert out[k].shape == (2, 5, 67, 93), k
    if name == "stdc":  # raw stride-8 logits of the detail head: 2 channels, not resized
        assert out["detail"].shape == (2, 2, math.ceil(67 / 8), math.ceil(93 / 8))
    with torch.no_grad():
        assert list(model.eval()(x)) == ["out"]
    with pytest.raises(ValueError, match="already returns its own auxiliary"):
        create_model(name, num_classes=5, **dict(tiny_config(name), aux=True))


def test_stdc_aux_logits_resize_with_the_aux_heads_align_corners() -> None:
    """mmseg's STDC decode head has align_corners=True, its auxiliary heads False."""
    torch.manual_seed(0)
    model = create_model("stdc", num_classes=5, align_corners=True, **tiny_config("stdc"))
    model.train()
    for m in model.modules():
        if isinstance(m, nn.Dropout2d):
            m.eval()
    x = torch.randn(2, 3, 67, 93)  # batch 2: pooled BN layers train on 1x1 maps
    with torch.no_grad():
        feats = model.backbone(x)
        out = model(x)
        raw = model.decode_head.aux_heads[0](feats)
        main = model.decode_head.head(feats)
    args = {"size": (67, 93), "mode": "bilinear"}
    assert torch.allclose(out["aux0"], F.interpolate(raw, align_corners=False, **args))
    assert not torch.allclose(out["aux0"], F.interpolate(raw, align_corners=True, **args))
    assert torch.allclose(out["out"], F.interpolate(main, align_corners=True, **args))


def test_registered_archs() -> None:
    assert MMSEG_ARCHS["bisenetv2_fcn"].config == (
        "bisenetv2/bisenetv2_fcn_4xb4-160k_cityscapes-1024x1024.py"
    )
    assert MMSEG_ARCHS["fast_scnn"].config == "fastscnn/fast_scnn_8xb4-160k_cityscapes-512x1024.py"
    for n in ("stdc1", "stdc2"):
        assert MMSEG_ARCHS[n].config == f"stdc/{n}_4xb12-80k_cityscapes-512x1024.py"
        assert MMSEG_ARCHS[n].align_corners
    assert not MMSEG_ARCHS["bisenetv2_fcn"].align_corners
    assert not MMSEG_ARCHS["fast_scnn"].align_corners


@pytest.mark.parametrize(
    ("arch", "config_name"),
    [
        ("bisenetv2_fcn", "bisenetv2_fcn_4xb4-160k_cityscapes-1024x1024"),
        ("fast_scnn", "fast_scnn_8xb4-160k_cityscapes-512x1024"),
        ("stdc1", "stdc1_4xb12-80k_cityscapes-512x1024"),
        ("stdc2", "stdc2_4xb12-80k_cityscapes-512x1024"),
    ],
)
@pytest.mark.parametrize("training_heads", [True, False])
def test_from_mmseg_round_trip(arch: str, config_name: str, training_heads: bool) -> None:
    """An mmseg-layout state dict (with or without the auxiliary heads) converts strictly to
    a model with the same weights and logits."""
    name, backbone = BUILD[arch]
    torch.manual_seed(0)
    src = _randomise(create_model(name, backbone=backbone, num_classes=7)).eval()
    sd = _to_mmseg(src, stdc=name == "stdc")
    if not training_heads:
        sd = {k: v for k, v in sd.items() if not k.startswith("auxiliary_head.")}
    model = from_mmseg(sd, arch=config_name).eval()
    assert model.build_config["name"] == name and model.build_config["num_classes"] == 7
    assert model.input_norm["color_order"] == "RGB"
    assert model.align_corners == MMSEG_ARCHS[arch].align_corners
    head = model.decode_head
    assert bool(len(head.aux_heads)) == training_heads
    assert hasattr(head, "detail_head") == (training_heads and name == "stdc")
    own = model.state_dict()
    for k, v in _to_mmseg(model, stdc=name == "stdc").items():
        assert torch.equal(v, sd[k]), k
    assert len(own) == len(sd) - (2 if name == "stdc" and training_heads else 0)
    x = torch.randn(1, 3, 64, 80)
    src.align_corners = model.align_corners
    with torch.no_grad():
        assert torch.equal(model(x)["out"], src(x)["out"])
    if training_heads:  # training resumes with the mmseg auxiliary weights
        for a, b in zip(model.decode_head.aux_heads, src.decode_head.aux_heads, strict=True):
            assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_converter_errors_name_the_problem() -> None:
    torch.manual_seed(0)
    stdc2 = _to_mmseg(create_model("stdc", backbone="stdc2", num_classes=3), stdc=True)
    with pytest.raises(ValueError, match="this is stdc2"):
        from_mmseg(stdc2, arch="stdc1")
    bis = _to_mmseg(create_model("bisenetv2", backbone="bisenetv2", num_classes=3), stdc=False)
    partial = {k: v for k, v in bis.items() if not k.startswith("auxiliary_head.3.")}
    with pytest.raises(ValueError, match=r"auxiliary_head indices \[0, 1, 2\]"):
        from_mmseg(partial, arch="bisenetv2_fcn")
    with pytest.raises(KeyError, match=r"decode_head\.conv_seg\.weight"):
        from_mmseg({k: v for k, v in bis.items() if k.startswith("backbone.")}, arch="fast_scnn")
    bad = dict(stdc2)
    bad["auxiliary_head.2.fusion_kernel"] = torch.zeros(3)
    with pytest.raises(ValueError, match="fusion_kernel"):
        from_mmseg(bad, arch="stdc2")
