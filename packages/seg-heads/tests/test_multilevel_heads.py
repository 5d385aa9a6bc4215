"""DeepLabV3+, UPerNet and Semantic FPN: shapes, gradients, level validation, mmseg's layout,
parameter counts and the mmseg converter.

The head forwards are compared with functional transcriptions of mmsegmentation 1.2.2
(``decode_heads/{sep_aspp,uper,fpn}_head.py``, ``necks/fpn.py``, mmcv's ``ConvModule`` and
``DepthwiseSeparableConvModule``) over state dicts in mmseg's key layout, written here
independently of the heads. The whole models are compared with mmsegmentation itself by the
parity session (``tests/parity``, from the ``MMSEG_ARCHS`` entries).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seg_heads import SegmentationModel, create_model
from seg_heads.convert import from_mmseg
from seg_heads.convert.mmseg import MMSEG_ARCHS
from seg_heads.fpn import FPNHead
from seg_heads.sep_aspp import DepthwiseSeparableASPPHead
from seg_heads.uper import UPerHead

SMALL = "resnet18_deep"  # feature_info (64, 4), (128, 8), (256, 16), (512, 32)
NARROW = {
    "deeplabv3plus": {"channels": 32, "c1_channels": 8},
    "upernet": {"channels": 32},
    "fpn": {"channels": 16, "neck_channels": 24},
}


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize("name", sorted(NARROW))
@pytest.mark.parametrize("size", [(61, 83), (33, 47)])
def test_odd_sizes_shapes_and_every_parameter_learns(name: str, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = create_model(name, backbone=SMALL, num_classes=3, head_kwargs=NARROW[name])
    out = model(torch.randn(2, 3, *size))
    assert list(out) == ["out"] and out["out"].shape == (2, 3, *size)
    out["out"].square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"


@pytest.mark.parametrize("name", sorted(NARROW))
def test_heads_follow_feature_info_of_any_backbone(name: str, tiny_backbone) -> None:
    """Odd widths and strides (4, 8, 8, 8): the heads read channels and strides from feature_info."""
    from seg_heads._registry import get_head_builder

    info = tiny_backbone.feature_info
    kwargs = dict(NARROW[name], **({"rates": (1, 2, 3)} if name == "deeplabv3plus" else {}))
    head = get_head_builder(name)(info, 4, output_stride=8, align_corners=True, **kwargs)
    model = SegmentationModel(tiny_backbone, head, align_corners=True).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 50, 61))["out"].shape == (1, 4, 50, 61)


def test_newcomer_calls_build_the_mmseg_models() -> None:
    with torch.device("meta"):  # structure only: no memory, no init cost
        dl = create_model("deeplabv3plus", backbone="resnet50_v1c", output_stride=8, num_classes=19)
        up = create_model("upernet", backbone="resnet50_v1c", num_classes=150)
    assert dl.build_config["output_stride"] == 8 and dl.decode_head.rates == (12, 24, 36)
    assert (dl.decode_head.in_index, dl.decode_head.c1_in_index) == (3, 0)
    assert up.build_config["output_stride"] == 32  # the registered default
    assert up.decode_head.in_index == (0, 1, 2, 3)
    assert up.decode_head.in_channels == (256, 512, 1024, 2048)
    dl16 = create_model("deeplabv3plus", backbone=SMALL, output_stride=16, num_classes=2)
    assert dl16.decode_head.rates == (6, 12, 18)


@pytest.mark.parametrize(
    ("name", "head_kwargs", "match"),
    [
        ("upernet", {"in_index": (0, 1, 4)}, r"upernet: in_index=\(0, 1, 4\).*0\.\.3"),
        ("fpn", {"in_index": (0, 9)}, r"fpn: in_index=\(0, 9\).*0\.\.3"),
        ("deeplabv3plus", {"in_index": 4}, r"deeplabv3plus: in_index=4.*0\.\.3"),
        ("deeplabv3plus", {"c1_in_index": -5}, r"c1_in_index.*in_index=-5.*0\.\.3"),
        ("upernet", {"in_index": 3}, r"upernet: in_index must be a sequence"),
        ("fpn", {"in_index": (3, 0)}, r"fpn: .*smallest stride.*\(32, 4\)"),
    ],
)
def test_level_errors_name_the_model_backbone_and_levels(
    name: str, head_kwargs: dict, match: str
) -> None:
    with pytest.raises(ValueError, match=match) as info:
        create_model(name, backbone=SMALL, num_classes=3, head_kwargs=head_kwargs)
    msg = str(info.value)
    assert f"create_model({name!r}, backbone={SMALL!r})" in msg
    if "0..3" in match:  # the backbone's levels are listed
        assert "(512, 32)" in msg


def test_deeplabv3plus_needs_rates_beyond_stride_16() -> None:
    with pytest.raises(ValueError, match=r"deeplabv3plus.*head_kwargs"):
        create_model("deeplabv3plus", backbone=SMALL, num_classes=3, output_stride=32)


def test_negative_in_index_is_normalised() -> None:
    m = create_model(
        "upernet", backbone=SMALL, num_classes=3, head_kwargs={"in_index": (-3, -2, -1)}
    )
    assert m.decode_head.in_index == (1, 2, 3) and len(m.decode_head.lateral_convs) == 2


# --------------------------------------------------------------------------- mmseg's layout


def _conv_module(shapes: dict, p: str, cin: int, cout: int, k: int, groups: int = 1) -> None:
    """mmcv ConvModule with BN: ``conv`` without bias, ``bn``."""
    shapes[f"{p}.conv.weight"] = (cout, cin // groups, k, k)
    for n in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{p}.bn.{n}"] = (cout,)
    shapes[f"{p}.bn.num_batches_tracked"] = ()


def _dsconv(shapes: dict, p: str, cin: int, cout: int) -> None:
    """mmcv DepthwiseSeparableConvModule: depthwise 3x3 ConvModule, pointwise 1x1 ConvModule."""
    _conv_module(shapes, f"{p}.depthwise_conv", cin, cin, 3, groups=cin)
    _conv_module(shapes, f"{p}.pointwise_conv", cin, cout, 1)


def mmseg_shapes(name: str, cin: list[int], c: int, k: int, **kw: int) -> dict[str, tuple]:
    """Key -> shape of mmseg's decode head (and FPN neck) for in_channels ``cin``."""
    s: dict[str, tuple] = {}
    h = "decode_head"
    if name == "deeplabv3plus":
        c1 = kw["c1"]
        _conv_module(s, f"{h}.image_pool.1", cin[3], c, 1)
        _conv_module(s, f"{h}.aspp_modules.0", cin[3], c, 1)
        for i in (1, 2, 3):
            _dsconv(s, f"{h}.aspp_modules.{i}", cin[3], c)
        _conv_module(s, f"{h}.bottleneck", 5 * c, c, 3)
        _conv_module(s, f"{h}.c1_bottleneck", cin[0], c1, 1)
        _dsconv(s, f"{h}.sep_bottleneck.0", c + c1, c)
        _dsconv(s, f"{h}.sep_bottleneck.1", c, c)
    elif name == "upernet":
        for i in range(4):
            _conv_module(s, f"{h}.psp_modules.{i}.1", cin[3], c, 1)
        _conv_module(s, f"{h}.bottleneck", cin[3] + 4 * c, c, 3)
        for i in range(3):
            _conv_module(s, f"{h}.lateral_convs.{i}", cin[i], c, 1)
        for i in range(3):
            _conv_module(s, f"{h}.fpn_convs.{i}", c, c, 3)
        _conv_module(s, f"{h}.fpn_bottleneck", 4 * c, c, 3)
    else:  # fpn: a neck without norm (convs with bias), then the head
        n = kw["neck"]
        for i in range(4):
            s[f"neck.lateral_convs.{i}.conv.weight"] = (n, cin[i], 1, 1)
            s[f"neck.lateral_convs.{i}.conv.bias"] = (n,)
        for i in range(4):
            s[f"neck.fpn_convs.{i}.conv.weight"] = (n, n, 3, 3)
            s[f"neck.fpn_convs.{i}.conv.bias"] = (n,)
        for i in range(4):  # strides 4, 8, 16, 32: 1, 1, 2, 3 convs; Upsample between
            for j in range(max(1, i)):
                _conv_module(s, f"{h}.scale_heads.{i}.{2 * j}", n if j == 0 else c, c, 3)
    s[f"{h}.conv_seg.weight"] = (k, c, 1, 1)
    s[f"{h}.conv_seg.bias"] = (k,)
    return s


def random_state_dict(shapes: dict[str, tuple], seed: int) -> dict[str, Tensor]:
    """Well-scaled random values; BN with non-trivial statistics, non-zero biases."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, Tensor] = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(3)
        elif key.endswith("running_var") or (len(shape) == 1 and key.endswith("bn.weight")):
            sd[key] = torch.rand(shape, generator=g, dtype=torch.float64) + 0.5
        elif len(shape) == 1:
            sd[key] = torch.rand(shape, generator=g, dtype=torch.float64) * 0.4 - 0.2
        else:
            std = math.sqrt(2.0 / math.prod(shape[1:]))
            sd[key] = torch.randn(shape, generator=g, dtype=torch.float64) * std
    return sd


HEADS = {
    "deeplabv3plus": lambda cin, ac: DepthwiseSeparableASPPHead(
        cin[3], cin[0], 5, rates=(2, 3, 5), channels=16, c1_channels=6, align_corners=ac
    ),
    "upernet": lambda cin, ac: UPerHead(cin, 5, channels=16, align_corners=ac),
    "fpn": lambda cin, ac: FPNHead(
        cin, (4, 8, 16, 32), 5, neck_channels=12, channels=10, align_corners=ac
    ),
}
WIDTHS = {"deeplabv3plus": (16, {"c1": 6}), "upernet": (16, {}), "fpn": (10, {"neck": 12})}
CIN = [8, 12, 20, 24]


@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_keys_and_shapes_are_mmseg_s(name: str) -> None:
    c, kw = WIDTHS[name]
    want = mmseg_shapes(name, CIN, c, 5, **kw)
    got = {
        ("" if k.startswith("neck.") else "decode_head.") + k: tuple(v.shape)
        for k, v in HEADS[name](CIN, False).state_dict().items()
    }
    got = {k.replace("decode_head.neck.", "neck."): v for k, v in got.items()}
    assert got == want


def _bn(t: Tensor, sd: dict, p: str) -> Tensor:
    w, b, m, v = (sd[f"{p}.{n}"] for n in ("weight", "bias", "running_mean", "running_var"))
    return F.batch_norm(t, m, v, w, b, training=False, eps=1e-5)


def _cm(t: Tensor, sd: dict, p: str, pad: int = 0, dil: int = 1, groups: int = 1) -> Tensor:
    """mmcv ConvModule(conv, BN, ReLU)."""
    t = F.conv2d(t, sd[f"{p}.conv.weight"], None, 1, pad, dil, groups)
    return F.relu(_bn(t, sd, f"{p}.bn"))


def _ds(t: Tensor, sd: dict, p: str, dil: int = 1) -> Tensor:
    """mmcv DepthwiseSeparableConvModule, 3x3, padding = dilation."""
    t = _cm(t, sd, f"{p}.depthwise_conv", pad=dil, dil=dil, groups=t.shape[1])
    return _cm(t, sd, f"{p}.pointwise_conv")


def mmseg_head_forward(name: str, sd: dict, xs: list[Tensor], ac: bool) -> Tensor:
    """mmseg 1.2.2's forward of the head (eval mode), from mmseg keys."""

    def up(t: Tensor, size: torch.Size) -> Tensor:
        return F.interpolate(t, size=size, mode="bilinear", align_corners=ac)

    h = "decode_head"
    if name == "deeplabv3plus":  # DepthwiseSeparableASPPHead, dilations (1, 2, 3, 5)
        x = xs[3]
        outs = [up(_cm(F.adaptive_avg_pool2d(x, 1), sd, f"{h}.image_pool.1"), x.shape[2:])]
        outs.append(_cm(x, sd, f"{h}.aspp_modules.0"))
        outs += [_ds(x, sd, f"{h}.aspp_modules.{i}", d) for i, d in ((1, 2), (2, 3), (3, 5))]
        y = _cm(torch.cat(outs, 1), sd, f"{h}.bottleneck", pad=1)
        c1 = _cm(xs[0], sd, f"{h}.c1_bottleneck")
        y = torch.cat([up(y, c1.shape[2:]), c1], 1)
        y = _ds(_ds(y, sd, f"{h}.sep_bottleneck.0"), sd, f"{h}.sep_bottleneck.1")
    elif name == "upernet":  # UPerHead
        x = xs[3]
        ppm = [up(_cm(F.adaptive_avg_pool2d(x, s), sd, f"{h}.psp_modules.{i}.1"), x.shape[2:])
               for i, s in enumerate((1, 2, 3, 6))]  # fmt: skip
        lat = [_cm(xs[i], sd, f"{h}.lateral_convs.{i}") for i in range(3)]
        lat.append(_cm(torch.cat([x, *ppm], 1), sd, f"{h}.bottleneck", pad=1))
        for i in (3, 2, 1):
            lat[i - 1] = lat[i - 1] + up(lat[i], lat[i - 1].shape[2:])
        outs = [_cm(lat[i], sd, f"{h}.fpn_convs.{i}", pad=1) for i in range(3)] + [lat[3]]
        outs = [outs[0]] + [up(o, outs[0].shape[2:]) for o in outs[1:]]
        y = _cm(torch.cat(outs, 1), sd, f"{h}.fpn_bottleneck", pad=1)
    else:  # FPN neck (nearest top-down, no norm, no act) + FPNHead
        lat = [F.conv2d(xs[i], sd[f"neck.lateral_convs.{i}.conv.weight"],
                        sd[f"neck.lateral_convs.{i}.conv.bias"]) for i in range(4)]  # fmt: skip
        for i in (3, 2, 1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[2:])
        feats = [F.conv2d(lat[i], sd[f"neck.fpn_convs.{i}.conv.weight"],
                          sd[f"neck.fpn_convs.{i}.conv.bias"], padding=1) for i in range(4)]  # fmt: skip
        y = None
        for i, t in enumerate(feats):
            for j in range(max(1, i)):
                t = _cm(t, sd, f"{h}.scale_heads.{i}.{2 * j}", pad=1)
                if i > 0:  # mmseg Upsample(scale_factor=2): size int(2 * s)
                    t = up(t, (int(t.shape[2] * 2.0), int(t.shape[3] * 2.0)))
            y = t if y is None else y + up(t, y.shape[2:])
    return F.conv2d(y, sd[f"{h}.conv_seg.weight"], sd[f"{h}.conv_seg.bias"])


@pytest.mark.parametrize("name", sorted(HEADS))
@pytest.mark.parametrize("align_corners", [False, True])
def test_heads_equal_mmseg_forward_with_mmseg_weights(name: str, align_corners: bool) -> None:
    c, kw = WIDTHS[name]
    sd = random_state_dict(mmseg_shapes(name, CIN, c, 5, **kw), seed=7)
    head = HEADS[name](CIN, align_corners).double().eval()
    head.load_state_dict({k.removeprefix("decode_head."): v for k, v in sd.items()})  # strict
    g = torch.Generator().manual_seed(1)
    # A 97x129 input at strides 4..32 (ceil); DeepLabV3+ at OS8: 13x17 for the ASPP.
    sizes = [(25, 33), (13, 17), (13, 17), (13, 17)] if name == "deeplabv3plus" else None
    sizes = sizes or [(25, 33), (13, 17), (7, 9), (4, 5)]
    xs = [torch.randn(1, ch, *hw, generator=g, dtype=torch.float64) for ch, hw in zip(CIN, sizes)]
    with torch.no_grad():
        want = mmseg_head_forward(name, sd, xs, align_corners)
        got = head(xs)
    assert got.shape == want.shape == (1, 5, 25, 33)
    assert want.abs().max() > 0.1
    assert (got - want).abs().max().item() <= 1e-10


def test_fpn_neck_upsamples_nearest_and_has_no_norm() -> None:
    head = FPNHead([8, 8], (4, 8), 2, neck_channels=4, channels=4)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in head.neck.modules())
    assert all(m.bias is not None for m in head.neck.modules() if isinstance(m, nn.Conv2d))
    assert [len(s) for s in head.scale_heads] == [1, 2]  # conv; conv, 2x upsample
    fpn4 = FPNHead([8] * 4, (4, 8, 16, 32), 2)
    assert [sum(isinstance(m, nn.Conv2d) for m in s.modules()) for s in fpn4.scale_heads] == [
        1, 1, 2, 3,
    ]  # fmt: skip


# --------------------------------------------------------------------------- mmseg's counts

# Computed once with mmsegmentation 1.2.2 itself (/work/venv-mmseg: Config.fromfile of the
# cityscapes configs below, norm_cfg BN, MODELS.build, sum of p.numel()), 19 classes:
#   deeplabv3plus_r50-d8_4xb2-40k_cityscapes-512x1024: 43,589,878 (decode_head 17,697,923)
#   upernet_r50_4xb2-40k_cityscapes-512x1024:          66,415,238 (decode_head 40,523,283)
#   fpn_r50_4xb2-80k_cityscapes-512x1024:              28,497,907 (neck 3,344,384 + decode_head
#                                                       1,626,259; the config has no aux head)
# ResNetV1c-50 backbone 23,527,264; FCN auxiliary head 2,364,691.
MMSEG_R50_COUNTS = {
    "deeplabv3plus": (43_589_878, 17_697_923, True),
    "upernet": (66_415_238, 40_523_283, True),
    "fpn": (28_497_907, 3_344_384 + 1_626_259, False),
}


@pytest.mark.parametrize("name", sorted(MMSEG_R50_COUNTS))
def test_parameter_counts_equal_mmseg(name: str) -> None:
    total, head, aux = MMSEG_R50_COUNTS[name]
    with torch.device("meta"):
        m = create_model(name, backbone="resnet50_v1c", num_classes=19, aux=aux)
    assert (_n_params(m), _n_params(m.decode_head)) == (total, head)


# --------------------------------------------------------------------------- converter

ARCHS = {"deeplabv3plus_r50-d8": "deeplabv3plus", "upernet_r50": "upernet", "fpn_r50": "fpn"}
# Narrow heads (the converter reads every width from the weights) keep the test fast.
ROUND_TRIP_WIDTHS = {
    "deeplabv3plus": {"channels": 24, "c1_channels": 16},
    "upernet": {"channels": 24},
    "fpn": {"channels": 16, "neck_channels": 32},
}


def _to_mmseg_layout(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our keys -> mmseg's (the backbone's names are mmseg's ResNetV1c ones)."""
    out = {}
    for k, v in sd.items():
        k = k.replace("decode_head.neck.", "neck.", 1)
        out[k.replace("aux_head.", "auxiliary_head.", 1) if k.startswith("aux_head.") else k] = v
    return out


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_from_mmseg_round_trip(arch: str) -> None:
    name = ARCHS[arch]
    torch.manual_seed(0)
    aux = name != "fpn"
    src = create_model(
        name,
        backbone="resnet50_v1c",
        num_classes=4,
        aux=aux,
        head_kwargs=ROUND_TRIP_WIDTHS[name],
        aux_kwargs={"channels": 32},
    ).eval()
    g = torch.Generator().manual_seed(2)
    for m in src.modules():  # distinct statistics: a misplaced BN cannot go unnoticed
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2, generator=g)
            m.running_var.uniform_(0.5, 1.5, generator=g)
    sd = _to_mmseg_layout(src.state_dict())
    model = from_mmseg(sd, arch=MMSEG_ARCHS[arch].config.split("/")[-1].removesuffix(".py"))
    model.eval()
    cfg = model.build_config
    assert cfg["name"] == name and cfg["backbone"] == "resnet50_v1c" and cfg["aux"] is aux
    assert cfg["output_stride"] == (8 if name == "deeplabv3plus" else 32)
    x = torch.randn(1, 3, 65, 79)
    with torch.no_grad():
        want, got = src(x), model(x)
    assert set(got) == set(want) == ({"out", "aux"} if aux else {"out"})
    for k in got:
        assert torch.equal(got[k], want[k]), k
    assert cfg["head_kwargs"] == ROUND_TRIP_WIDTHS[name]
    assert cfg["aux_kwargs"].get("channels", 32) == 32
    again = create_model(**cfg)
    again.load_state_dict(model.state_dict())  # strict: build_config rebuilds it


def test_mmseg_arch_table_entries() -> None:
    for depth in (50, 101):
        dl = MMSEG_ARCHS[f"deeplabv3plus_r{depth}-d8"]
        assert (
            dl.config == f"deeplabv3plus/deeplabv3plus_r{depth}-d8_4xb2-40k_cityscapes-512x1024.py"
        )
        assert min(dl.input_size) >= 321  # rate 36 at OS8 sees real data
        up, fpn = MMSEG_ARCHS[f"upernet_r{depth}"], MMSEG_ARCHS[f"fpn_r{depth}"]
        assert up.config == f"upernet/upernet_r{depth}_4xb2-40k_cityscapes-512x1024.py"
        assert fpn.config == f"sem_fpn/fpn_r{depth}_4xb2-80k_cityscapes-512x1024.py"
        for spec in (up, fpn):  # the PPM's 6x6 bins need a >= 6x6 stride-32 map
            assert min(math.ceil(s / 32) for s in spec.input_size) >= 6


def test_from_mmseg_names_the_missing_key() -> None:
    shapes = mmseg_shapes("upernet", [256, 512, 1024, 2048], 512, 3)
    sd = {k: torch.zeros(s) for k, s in shapes.items() if "psp_modules.3" not in k}
    with pytest.raises(ValueError, match=r"3 pyramid-pooling branches"):
        from_mmseg(sd, arch="upernet_r50")
    fpn = random_state_dict(mmseg_shapes("fpn", CIN, 4, 3, neck=4), 0)
    no_neck = {k: v for k, v in fpn.items() if not k.startswith("neck.")}
    with pytest.raises(KeyError, match=r"neck\.lateral_convs\.0\.conv\.weight"):
        from_mmseg(no_neck, arch="fpn_r50")
