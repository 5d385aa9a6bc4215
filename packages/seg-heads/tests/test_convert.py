"""Checkpoint conversion: torchvision against torchvision itself, mmseg against a
functional transcription of mmseg's forward over state dicts in mmseg's key layout.

These tests run without mmsegmentation (the seg-heads test environment does not hold
it; the ``parity`` nox session compares every ``from_mmseg`` arch with mmsegmentation
1.2.2 itself, see tests/parity/). Here ``mmseg_state_dict`` writes the keys
mmseg's modules produce (read from ``mmseg/models/backbones/resnet.py``,
``mmseg/models/utils/res_layer.py``, ``decode_heads/{psp,aspp,fcn}_head.py``,
``decode_head.py`` and mmcv's ``ConvModule``), independently of the converter's
tables, and ``mmseg_forward`` computes mmseg's ``EncoderDecoder`` logits from
those keys with plain ``torch.nn.functional`` calls.
"""

from __future__ import annotations

import argparse
import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from seg_backbones import IncompatibleWeightsError
from seg_heads import IMAGENET_RGB, create_model
from seg_heads.convert import convert, from_mmseg, from_torchvision, load_checkpoint

# --------------------------------------------------------------------------- torchvision

tvseg = pytest.importorskip("torchvision.models.segmentation")


def _randomize_bn_stats(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)


@pytest.mark.parametrize(
    "arch", ["deeplabv3_resnet50", "fcn_resnet50", "deeplabv3_resnet101", "fcn_resnet101"]
)
def test_from_torchvision_reproduces_torchvision(arch: str, tmp_path) -> None:
    torch.manual_seed(0)
    ref = getattr(tvseg, arch)(weights=None, weights_backbone=None, aux_loss=True, num_classes=5)
    _randomize_bn_stats(ref, 1)
    ref.eval()
    src: object = ref.state_dict()
    if arch == "deeplabv3_resnet50":  # also through a bare state-dict file
        torch.save(ref.state_dict(), tmp_path / "tv.pth")
        src = tmp_path / "tv.pth"
    model = from_torchvision(src, arch=arch).eval()
    side = 33 if arch.endswith("101") else 65  # keep the 2-core CI fast
    x = torch.randn(1, 3, side, side)
    with torch.no_grad():
        want, got = ref(x), model(x)
    assert set(got) == {"out", "aux"}
    for k in ("out", "aux"):
        assert got[k].shape == want[k].shape == (1, 5, side, side)
        assert (got[k] - want[k]).abs().max().item() <= 1e-5, k
    assert model.build_config["num_classes"] == 5
    assert model.input_norm == IMAGENET_RGB
    rebuilt = create_model(**model.build_config)
    rebuilt.load_state_dict(model.state_dict())  # strict: the config rebuilds this model


def test_from_torchvision_without_aux_and_wrong_arch() -> None:
    torch.manual_seed(0)
    ref = tvseg.fcn_resnet50(weights=None, weights_backbone=None, aux_loss=False, num_classes=3)
    model = from_torchvision(ref.state_dict(), arch="fcn_resnet50")
    assert model.aux_head is None and model.build_config["aux"] is False
    with pytest.raises(KeyError, match="classifier"):  # FCN weights are not DeepLabV3 weights
        from_torchvision(ref.state_dict(), arch="deeplabv3_resnet50")
    with pytest.raises(KeyError, match="valid archs"):
        from_torchvision(ref.state_dict(), arch="lraspp_mobilenet_v3_large")


@pytest.mark.parametrize("rates", [(12, 24, 36), (6, 12, 18)])
def test_torchvision_aspp_head_on_a_map_larger_than_its_rates(rates: tuple[int, ...]) -> None:
    """The full-model tests run on 9x9 maps, where rates >= 9 only see the centre tap;
    here a 41x41 map checks the atrous rates and the branch order for real."""
    from seg_heads import ASPPHead
    from seg_heads.convert._common import rename as _rename
    from seg_heads.convert.torchvision import _TV_ASPP_RULES

    torch.manual_seed(0)
    ref = tvseg.deeplabv3.DeepLabHead(32, 3, atrous_rates=rates)
    _randomize_bn_stats(ref, 2)
    ref.eval()
    ours = ASPPHead(32, 3, variant="torchvision", rates=rates).eval()
    sd = _rename({f"classifier.{k}": v for k, v in ref.state_dict().items()}, _TV_ASPP_RULES, "t")
    ours.load_state_dict({k[len("decode_head.") :]: v for k, v in sd.items()})
    x = torch.randn(1, 32, 41, 41)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max().item() <= 1e-5


# --------------------------------------------------------------------------- mmseg layout

DEPTH_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def mmseg_shapes(
    depth: int, head: str, num_classes: int, *, aux_channels: int = 256
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of an mmseg ResNetV1c-D8 EncoderDecoder state dict.

    Mirrors the module tree: ``ConvModule`` = ``conv`` (no bias under a norm) + ``bn``;
    ``ResNetV1c`` stem = Sequential(conv, bn, relu) x 3 with 32-32-64 channels;
    Bottleneck ``conv1/bn1/conv2/bn2/conv3/bn3`` and ``downsample.0/1``;
    ``BaseDecodeHead.conv_seg`` (with bias).
    """
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(p: str, cout: int, cin: int, k: int, bias: bool = False) -> None:
        shapes[f"{p}.weight"] = (cout, cin, k, k)
        if bias:
            shapes[f"{p}.bias"] = (cout,)

    def bn(p: str, c: int) -> None:
        for n in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{p}.{n}"] = (c,)
        shapes[f"{p}.num_batches_tracked"] = ()

    def conv_module(p: str, cin: int, cout: int, k: int) -> None:
        conv(f"{p}.conv", cout, cin, k)
        bn(f"{p}.bn", cout)

    for i, (cin, cout) in enumerate([(3, 32), (32, 32), (32, 64)]):
        conv(f"backbone.stem.{3 * i}", cout, cin, 3)
        bn(f"backbone.stem.{3 * i + 1}", cout)
    inplanes = 64
    for i, n in enumerate(DEPTH_BLOCKS[depth]):
        planes = 64 * 2**i
        for j in range(n):
            p = f"backbone.layer{i + 1}.{j}"
            conv(f"{p}.conv1", planes, inplanes if j == 0 else planes * 4, 1)
            bn(f"{p}.bn1", planes)
            conv(f"{p}.conv2", planes, planes, 3)
            bn(f"{p}.bn2", planes)
            conv(f"{p}.conv3", planes * 4, planes, 1)
            bn(f"{p}.bn3", planes * 4)
            if j == 0:
                conv(f"{p}.downsample.0", planes * 4, inplanes, 1)
                bn(f"{p}.downsample.1", planes * 4)
        inplanes = planes * 4

    shapes.update(mmseg_head_shapes(head, num_classes))
    conv_module("auxiliary_head.convs.0", 1024, aux_channels, 3)
    conv("auxiliary_head.conv_seg", num_classes, aux_channels, 1, bias=True)
    return shapes


def mmseg_head_shapes(
    head: str, num_classes: int, in_channels: int = 2048, channels: int = 512
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of mmseg's PSPHead / ASPPHead / FCNHead (``decode_head.*``)."""
    c_in, c = in_channels, channels
    shapes: dict[str, tuple[int, ...]] = {}

    def conv_module(p: str, cin: int, cout: int, k: int) -> None:
        shapes[f"{p}.conv.weight"] = (cout, cin, k, k)
        for n in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{p}.bn.{n}"] = (cout,)
        shapes[f"{p}.bn.num_batches_tracked"] = ()

    if head == "pspnet":
        for i in range(4):
            conv_module(f"decode_head.psp_modules.{i}.1", c_in, c, 1)
        conv_module("decode_head.bottleneck", c_in + 4 * c, c, 3)
    elif head == "deeplabv3":
        conv_module("decode_head.image_pool.1", c_in, c, 1)
        for i, d in enumerate((1, 12, 24, 36)):
            conv_module(f"decode_head.aspp_modules.{i}", c_in, c, 1 if d == 1 else 3)
        conv_module("decode_head.bottleneck", 5 * c, c, 3)
    elif head == "fcn":
        conv_module("decode_head.convs.0", c_in, c, 3)
        conv_module("decode_head.convs.1", c, c, 3)
        conv_module("decode_head.conv_cat", c_in + c, c, 3)
    shapes["decode_head.conv_seg.weight"] = (num_classes, c, 1, 1)
    shapes["decode_head.conv_seg.bias"] = (num_classes,)
    return shapes


def mmseg_state_dict(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, Tensor]:
    """Random but well-scaled values (BN in eval mode with non-trivial statistics)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, Tensor] = {}
    for k, shape in shapes.items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        elif k.endswith("running_mean") or (k.endswith(".bias")):
            sd[k] = torch.rand(shape, generator=g) * 0.2 - 0.1
        elif len(shape) == 1:  # norm weight; damp the residual branches (bn3)
            scale = 0.2 if k.endswith("bn3.weight") else 1.0
            sd[k] = (torch.rand(shape, generator=g) + 0.5) * scale
        else:
            fan_in = math.prod(shape[1:])
            sd[k] = torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in)
    return sd


def mmseg_forward(
    sd: dict[str, Tensor], x: Tensor, *, depth: int, head: str, align_corners: bool
) -> dict[str, Tensor]:
    """mmseg EncoderDecoder.encode_decode (+ the aux head), eval mode, from mmseg keys."""

    def bn(t: Tensor, p: str) -> Tensor:
        return F.batch_norm(
            t, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"],
            sd[f"{p}.bias"], training=False, eps=1e-5,
        )  # fmt: skip

    def conv(t: Tensor, p: str, stride: int = 1, pad: int = 0, dil: int = 1) -> Tensor:
        return F.conv2d(t, sd[f"{p}.weight"], sd.get(f"{p}.bias"), stride, pad, dil)

    def conv_module(t: Tensor, p: str, pad: int = 0, dil: int = 1) -> Tensor:
        return F.relu(bn(conv(t, f"{p}.conv", 1, pad, dil), f"{p}.bn"))

    def resize(t: Tensor, size: tuple[int, ...]) -> Tensor:
        return F.interpolate(t, size=size, mode="bilinear", align_corners=align_corners)

    # ResNetV1c, strides (1, 2, 1, 1), dilations (1, 1, 2, 4), contract_dilation=True
    t = x
    for i, stride in enumerate((2, 1, 1)):
        t = F.relu(bn(conv(t, f"backbone.stem.{3 * i}", stride, 1), f"backbone.stem.{3 * i + 1}"))
    t = F.max_pool2d(t, 3, 2, 1)
    outs = []
    for i, (n, stride, dilation) in enumerate(
        zip(DEPTH_BLOCKS[depth], (1, 2, 1, 1), (1, 1, 2, 4), strict=True)
    ):
        for j in range(n):
            p = f"backbone.layer{i + 1}.{j}"
            d = (dilation // 2 if dilation > 1 else dilation) if j == 0 else dilation
            s = stride if j == 0 else 1
            out = F.relu(bn(conv(t, f"{p}.conv1"), f"{p}.bn1"))
            out = F.relu(bn(conv(out, f"{p}.conv2", s, d, d), f"{p}.bn2"))
            out = bn(conv(out, f"{p}.conv3"), f"{p}.bn3")
            identity = t
            if j == 0:
                identity = bn(conv(t, f"{p}.downsample.0", s), f"{p}.downsample.1")
            t = F.relu(out + identity)
        outs.append(t)

    y = mmseg_decode_head(sd, outs[3], head=head, align_corners=align_corners)
    a = conv(conv_module(outs[2], "auxiliary_head.convs.0", pad=1), "auxiliary_head.conv_seg")
    in_size = tuple(x.shape[-2:])
    return {"out": resize(y, in_size), "aux": resize(a, in_size)}


def mmseg_decode_head(
    sd: dict[str, Tensor], f: Tensor, *, head: str, align_corners: bool
) -> Tensor:
    """mmseg PSPHead / ASPPHead (dilations 1, 12, 24, 36) / FCNHead forward, eval mode."""

    def bn(t: Tensor, p: str) -> Tensor:
        return F.batch_norm(
            t, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"],
            sd[f"{p}.bias"], training=False, eps=1e-5,
        )  # fmt: skip

    def conv_module(t: Tensor, p: str, pad: int = 0, dil: int = 1) -> Tensor:
        t = F.conv2d(t, sd[f"{p}.conv.weight"], None, 1, pad, dil)
        return F.relu(bn(t, f"{p}.bn"))

    def resize(t: Tensor, size: tuple[int, ...]) -> Tensor:
        return F.interpolate(t, size=size, mode="bilinear", align_corners=align_corners)

    size = tuple(f.shape[-2:])
    if head == "pspnet":
        cat = [f] + [
            resize(conv_module(F.adaptive_avg_pool2d(f, s), f"decode_head.psp_modules.{i}.1"), size)
            for i, s in enumerate((1, 2, 3, 6))
        ]
        y = conv_module(torch.cat(cat, 1), "decode_head.bottleneck", pad=1)
    elif head == "deeplabv3":
        cat = [resize(conv_module(F.adaptive_avg_pool2d(f, 1), "decode_head.image_pool.1"), size)]
        for i, d in enumerate((1, 12, 24, 36)):
            pad = 0 if d == 1 else d
            cat.append(conv_module(f, f"decode_head.aspp_modules.{i}", pad=pad, dil=d))
        y = conv_module(torch.cat(cat, 1), "decode_head.bottleneck", pad=1)
    else:  # fcn: convs, then conv_cat over [input, convs(input)]
        y = conv_module(conv_module(f, "decode_head.convs.0", pad=1), "decode_head.convs.1", pad=1)
        y = conv_module(torch.cat([f, y], 1), "decode_head.conv_cat", pad=1)
    return F.conv2d(y, sd["decode_head.conv_seg.weight"], sd["decode_head.conv_seg.bias"])


@pytest.fixture(scope="module")
def mmseg_r50() -> dict[str, dict[str, Tensor]]:
    return {
        head: mmseg_state_dict(mmseg_shapes(50, head, 4), seed=i)
        for i, head in enumerate(("pspnet", "deeplabv3", "fcn"))
    }


@pytest.mark.parametrize(
    ("head", "align_corners"),
    [("pspnet", False), ("pspnet", True), ("deeplabv3", False), ("fcn", False)],
)
def test_from_mmseg_reproduces_mmseg_logits(mmseg_r50, head: str, align_corners: bool) -> None:
    sd = mmseg_r50[head]
    model = from_mmseg(dict(sd), arch=f"{head}_r50-d8", align_corners=align_corners).eval()
    torch.manual_seed(0)
    x = torch.randn(1, 3, 49, 57)  # small for CI; the head tests above use large maps
    with torch.no_grad():
        want = mmseg_forward(sd, x, depth=50, head=head, align_corners=align_corners)
        got = model(x)
    for k in ("out", "aux"):
        assert got[k].shape == want[k].shape == (1, 4, 49, 57)
        assert want[k].abs().max() > 0.1  # the comparison is not between near-zero maps
        assert (got[k] - want[k]).abs().max().item() <= 1e-4, k
    cfg = model.build_config
    assert cfg["backbone"] == "resnet50_v1c" and cfg["align_corners"] is align_corners
    assert cfg["aux_kwargs"]["channels"] == 256 and model.input_norm == IMAGENET_RGB


@pytest.mark.parametrize("head", ["pspnet", "deeplabv3", "fcn"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_heads_load_mmseg_head_keys_and_match_on_a_large_map(
    head: str, align_corners: bool
) -> None:
    """Head names equal mmseg's; a 41x41 map exercises the ASPP rates 12/24/36 for real."""
    from seg_heads import ASPPHead, FCNHead, PSPHead

    sd = mmseg_state_dict(mmseg_head_shapes(head, 3, in_channels=32, channels=16), seed=5)
    ours = {
        "pspnet": PSPHead(32, 3, channels=16, align_corners=align_corners),
        "deeplabv3": ASPPHead(32, 3, channels=16, align_corners=align_corners),
        "fcn": FCNHead(32, 3, channels=16),
    }[head].eval()
    ours.load_state_dict({k[len("decode_head.") :]: v for k, v in sd.items()})  # strict
    f = torch.rand(2, 32, 41, 41)
    with torch.no_grad():
        want = mmseg_decode_head(sd, f, head=head, align_corners=align_corners)
        assert (ours(f) - want).abs().max().item() <= 1e-5


@pytest.mark.parametrize("head", ["pspnet", "deeplabv3"])
def test_from_mmseg_r101_loads_strictly_and_reads_widths(head: str) -> None:
    sd = mmseg_state_dict(mmseg_shapes(101, head, 7, aux_channels=512), seed=3)
    model = from_mmseg(sd, arch=f"{head}_r101-d8_512x1024_40k_cityscapes")
    assert model.build_config["num_classes"] == 7
    assert model.decode_head.conv_seg.out_channels == 7
    assert model.aux_head.channels == 512  # read from auxiliary_head.convs.0.conv.weight
    ours = model.state_dict()
    assert torch.equal(ours["decode_head.conv_seg.weight"], sd["decode_head.conv_seg.weight"])
    assert torch.equal(
        ours["aux_head.convs.0.bn.running_var"], sd["auxiliary_head.convs.0.bn.running_var"]
    )
    assert torch.equal(
        ours["backbone.layer3.22.conv2.weight"], sd["backbone.layer3.22.conv2.weight"]
    )


def test_from_mmseg_fails_loudly_on_missing_and_extra_keys(mmseg_r50) -> None:
    sd = dict(mmseg_r50["pspnet"])
    missing = dict(sd)
    del missing["decode_head.bottleneck.bn.running_var"]
    with pytest.raises(IncompatibleWeightsError, match=r"decode_head\.bottleneck\.bn\.running_var"):
        from_mmseg(missing, arch="pspnet_r50-d8")
    extra = dict(sd)
    extra["decode_head.extra_conv.weight"] = torch.zeros(1)
    with pytest.raises(IncompatibleWeightsError, match=r"decode_head\.extra_conv\.weight"):
        from_mmseg(extra, arch="pspnet_r50-d8")
    stranger = dict(sd)
    stranger["neck.conv.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match="neck"):
        from_mmseg(stranger, arch="pspnet_r50-d8")
    with pytest.raises(KeyError, match="valid archs"):
        from_mmseg(sd, arch="ccnet_r50-d8")
    with pytest.raises(
        (IncompatibleWeightsError, KeyError)
    ):  # PSP weights are not DeepLabV3 weights
        from_mmseg(sd, arch="deeplabv3_r50-d8")


def test_zoo_file_with_meta_loads_with_weights_only(mmseg_r50, tmp_path) -> None:
    meta = {
        "CLASSES": ("road", "sidewalk", "building", "wall"),
        "PALETTE": [[128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156]],
        "config": "model = dict(type='EncoderDecoder')",
        "seed": np.int64(42),
        "hook_msgs": {"best_score": np.float64(0.7826), "last_ckpt": "iter_40000.pth"},
        "palette_array": np.arange(12, dtype=np.uint8).reshape(4, 3),
    }
    path = tmp_path / "pspnet_r50-d8_zoo.pth"
    torch.save({"meta": meta, "state_dict": mmseg_r50["pspnet"]}, path)
    with pytest.raises(pickle.UnpicklingError):  # the allow-list is what makes it load
        torch.load(path, weights_only=True)
    model = convert(path, source="mmseg", arch="pspnet_r50-d8")
    assert torch.equal(
        model.state_dict()["decode_head.bottleneck.conv.weight"],
        mmseg_r50["pspnet"]["decode_head.bottleneck.conv.weight"],
    )


def test_untrusted_objects_are_refused_not_unpickled(mmseg_r50, tmp_path) -> None:
    path = tmp_path / "ckpt_with_args.pth"
    torch.save({"state_dict": mmseg_r50["pspnet"], "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(ValueError, match="weights_only"):
        from_mmseg(path, arch="pspnet_r50-d8")


def test_load_checkpoint_unwraps_and_strips_module_prefix(tmp_path) -> None:
    t = torch.ones(2)
    assert load_checkpoint({"model": {"module.a.weight": t}}) == {"a.weight": t}
    assert load_checkpoint({"state_dict": {"a": t}, "meta": {}}) == {"a": t}
    with pytest.raises(TypeError, match="non-tensor"):
        load_checkpoint({"weights": {"a": t}})
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        load_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(KeyError, match="valid"):
        convert({"a": t}, source="detectron2", arch="x")
