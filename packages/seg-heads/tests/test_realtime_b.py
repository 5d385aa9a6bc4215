"""DDRNet and PIDNet models and their mmseg converters (no mmseg needed).

Logit parity with mmsegmentation 1.2.2 itself is checked by the CI parity session
(``nox -s parity``) for every arch registered here; these tests check the structure
against counts measured from mmseg, the training outputs, and the converters' key layout.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from seg_heads import create_model
from seg_heads.convert import MMSEG_ARCHS, from_mmseg

# mmseg arch -> (our model, backbone, head channels of the config)
ARCHS = {
    "ddrnet_23-slim_in1k-pre": ("ddrnet", "ddrnet_23_slim", 64),
    "ddrnet_23_in1k-pre": ("ddrnet", "ddrnet_23", 128),
    "pidnet-s": ("pidnet", "pidnet_s", 128),
    "pidnet-m": ("pidnet", "pidnet_m", 128),
    "pidnet-l": ("pidnet", "pidnet_l", 256),
}

# Parameters of mmseg 1.2.2's whole models (19 classes; training-only heads included) for
# the configs ddrnet/ddrnet_23-slim_in1k-pre_2xb6-120k_cityscapes-1024x1024.py,
# ddrnet/ddrnet_23_in1k-pre_*, pidnet/pidnet-{s,m,l}_2xb6-120k_1024x1024-cityscapes.py,
# MEASURED by building mmseg's models (tests/parity/make_mmseg_refs.py), not derived.
MMSEG_PARAMS = {
    "ddrnet_23-slim_in1k-pre": 5_734_278,
    "ddrnet_23_in1k-pre": 20_299_238,
    "pidnet-s": 7_720_871,
    "pidnet-m": 28_762_983,
    "pidnet-l": 37_314_183,
}
# ... of which the training-only branches (DDRHead aux_head + aux_cls_seg; PIDHead p_head,
# d_head, p_cls_seg, d_cls_seg), measured the same way
MMSEG_TRAIN_ONLY_PARAMS = {
    "ddrnet_23-slim_in1k-pre": 38_355,
    "ddrnet_23_in1k-pre": 150_419,
    "pidnet-s": 95_220,
    "pidnet-m": 224_596,
    "pidnet-l": 374_740,
}

NARROW = {"channels": 8, "ppm_channels": 16}  # cheap CPU backbones of the same structure


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _mmseg_twin(arch: str, **head_kwargs: object) -> nn.Module:
    name, backbone, channels = ARCHS[arch]
    head_kwargs.setdefault("channels", channels)
    return create_model(name, backbone=backbone, num_classes=19, head_kwargs=head_kwargs)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_parameter_counts_match_mmseg(arch: str) -> None:
    train_key = "aux_branch" if arch.startswith("ddrnet") else "train_branches"
    with torch.device("meta"):
        full = _mmseg_twin(arch)
        deploy = _mmseg_twin(arch, **{train_key: False})
    assert _n_params(full) == MMSEG_PARAMS[arch]
    assert _n_params(full) - _n_params(deploy) == MMSEG_TRAIN_ONLY_PARAMS[arch]


def _narrow(name: str, **kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    backbone = "ddrnet_23_slim" if name == "ddrnet" else "pidnet_s"
    return create_model(
        name,
        backbone=backbone,
        num_classes=5,
        backbone_kwargs=NARROW,
        head_kwargs={"channels": 8, **kwargs},
    )


def test_ddrnet_outputs_aux_in_training_only() -> None:
    model = _narrow("ddrnet").train()
    x = torch.randn(2, 3, 61, 75)
    out = model(x)
    assert sorted(out) == ["aux", "out"]
    assert out["out"].shape == out["aux"].shape == (2, 5, 61, 75)
    assert not torch.allclose(out["out"], out["aux"])
    model.eval()
    with torch.no_grad():
        assert list(model(x)) == ["out"]
    # without the auxiliary branch: no aux output, and the model may take an FCN aux head
    bare = _narrow("ddrnet", aux_branch=False).train()
    assert list(bare(x)) == ["out"] and bare.decode_head.aux_head is None


def test_pidnet_training_outputs_and_raw_boundary_logits() -> None:
    model = _narrow("pidnet").train()
    x = torch.randn(2, 3, 61, 75)
    out = model(x)
    assert sorted(out) == ["aux", "boundary", "out"]
    assert out["out"].shape == out["aux"].shape == (2, 5, 61, 75)
    # the D branch's boundary logits: one channel at stride 8, not resized
    assert out["boundary"].shape == (2, 1, math.ceil(61 / 8), math.ceil(75 / 8))
    model.eval()
    with torch.no_grad():
        assert list(model(x)) == ["out"]
    bare = _narrow("pidnet", train_branches=False).train()
    assert list(bare(x)) == ["out"] and bare.decode_head.p_head is None


def test_pidnet_head_structure_matches_mmseg() -> None:
    with torch.device("meta"):
        head = _mmseg_twin("pidnet-l").decode_head
    assert head.i_head.conv.bn.num_features == 256 and head.i_head.conv.conv.out_channels == 256
    assert head.p_head.conv.bn.num_features == 128  # in_channels // 2
    assert head.d_head.conv.conv.out_channels == 64  # in_channels // 4
    assert head.d_cls_seg.out_channels == 1 and head.d_cls_seg.bias is not None
    assert isinstance(head.dropout, nn.Dropout2d) and head.dropout.p == 0.1  # mmseg default
    with torch.device("meta"):
        ddr = _mmseg_twin("ddrnet_23-slim_in1k-pre").decode_head
    assert isinstance(ddr.dropout, nn.Identity)  # the configs' dropout_ratio=0
    assert ddr.head[0].bn.num_features == 128 and ddr.aux_head[0].bn.num_features == 64


@pytest.mark.parametrize("name", ["ddrnet", "pidnet"])
def test_aux_head_and_bad_in_index_are_refused(name: str) -> None:
    backbone = "ddrnet_23_slim" if name == "ddrnet" else "pidnet_s"
    with torch.device("meta"):
        with pytest.raises(ValueError, match="already returns its own auxiliary"):
            create_model(name, backbone=backbone, num_classes=3, aux=True)
        with pytest.raises(ValueError, match=f"{name}: in_index must be"):
            create_model(name, backbone=backbone, num_classes=3, head_kwargs={"in_index": -1})


def test_archs_are_registered_with_the_config_align_corners() -> None:
    for arch in ARCHS:
        spec = MMSEG_ARCHS[arch]
        assert spec.config.split("/")[1].startswith(arch + "_")
        # PIDNet's decode head (the final resize) uses align_corners=True, DDRNet's False
        assert spec.align_corners is arch.startswith("pidnet")
        h, w = spec.input_size
        # mmseg needs multiples of 8; >= 9 px at stride 64 so the 17/8/8 pool gives 2 bins
        assert h % 8 == 0 and w % 8 == 0 and min(h, w) // 64 >= 9


def _mmseg_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our state dict in mmseg's ``EncoderDecoder`` layout: the same names."""
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("arch", ["ddrnet_23-slim_in1k-pre", "pidnet-s"])
def test_converter_round_trip(arch: str) -> None:
    torch.manual_seed(0)
    src = _mmseg_twin(arch, channels=32).eval()
    sd = _mmseg_state_dict(src)
    model = from_mmseg(sd, arch=arch + "_2xb6-120k_some-config").eval()
    cfg = model.build_config
    assert cfg["backbone"] == ARCHS[arch][1] and cfg["head_kwargs"]["channels"] == 32
    assert model.align_corners is arch.startswith("pidnet")
    assert model.input_norm is not None and model.input_norm["color_order"] == "RGB"
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in sd.items())
    src.align_corners = model.align_corners
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x)["out"], src(x)["out"])
    # the training branches load into ours: training outputs agree too (BN in eval)
    model.train()
    src.train()
    for m in (*model.modules(), *src.modules()):
        if isinstance(m, nn.BatchNorm2d | nn.Dropout2d):
            m.eval()
    with torch.no_grad():
        a, b = model(x), src(x)
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("arch", ["ddrnet_23-slim_in1k-pre", "pidnet-s"])
def test_checkpoint_without_training_branches_loads(arch: str) -> None:
    torch.manual_seed(0)
    sd = _mmseg_state_dict(_mmseg_twin(arch, channels=16))
    train_only = ("aux_head", "aux_cls_seg", "p_head", "d_head", "p_cls_seg", "d_cls_seg")
    stripped = {k: v for k, v in sd.items() if k.split(".")[1] not in train_only}
    assert len(stripped) < len(sd)
    model = from_mmseg(stripped, arch=arch).train()
    assert list(model(torch.randn(2, 3, 32, 40))) == ["out"]
    if arch.startswith("pidnet"):
        partial = {k: v for k, v in sd.items() if not k.startswith("decode_head.d_")}
        with pytest.raises(ValueError, match="only part of PIDNet's training heads"):
            from_mmseg(partial, arch=arch)


def test_wrong_variant_names_the_right_arch() -> None:
    with torch.device("meta"):
        pid_l = _mmseg_state_dict(_mmseg_twin("pidnet-l"))
        pid_s = _mmseg_state_dict(_mmseg_twin("pidnet-s"))
        ddr = _mmseg_state_dict(_mmseg_twin("ddrnet_23_in1k-pre"))
        with pytest.raises(ValueError, match="use arch='pidnet-l'"):
            from_mmseg(pid_l, arch="pidnet-m")
        with pytest.raises(ValueError, match="use arch='pidnet-s'"):
            from_mmseg(pid_s, arch="pidnet-l")
        with pytest.raises(ValueError, match="use arch='ddrnet_23_in1k-pre'"):
            from_mmseg(ddr, arch="ddrnet_23-slim_in1k-pre")
        # the full-size converted twins (meta: shapes only) have mmseg's layout throughout
        model = from_mmseg(pid_l, arch="pidnet-l")
        assert _n_params(model) == MMSEG_PARAMS["pidnet-l"]
        with pytest.raises(KeyError, match="unexpected top-level keys"):
            from_mmseg(
                dict(pid_s, **{"auxiliary_head.x": pid_s["decode_head.conv_seg.bias"]}),
                arch="pidnet-s",
            )


@pytest.mark.parametrize(
    ("name", "backbone", "mmseg_params"),
    [  # mmseg 1.2.2's full models (training branches included), counted with mmseg itself
        ("pidnet", "pidnet_s", 7_720_871),
        ("pidnet", "pidnet_m", 28_762_983),
        ("pidnet", "pidnet_l", 37_314_183),
        ("ddrnet", "ddrnet_23_slim", 5_734_278),
        ("ddrnet", "ddrnet_23", 20_299_238),
    ],
)
def test_create_model_defaults_are_the_published_widths(
    name: str, backbone: str, mmseg_params: int
) -> None:
    """No head_kwargs: the head width follows the backbone variant (PIDNet-L 256, DDRNet-23 128)."""
    with torch.device("meta"):
        model = create_model(name, backbone=backbone, num_classes=19)
    assert sum(p.numel() for p in model.parameters()) == mmseg_params
