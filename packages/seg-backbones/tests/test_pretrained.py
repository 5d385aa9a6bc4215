"""Weight import: every source layout round-trips; wrong key sets raise teaching errors."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from seg_backbones import (
    IncompatibleWeightsError,
    convert_state_dict,
    create_backbone,
    detect_source,
    load_pretrained,
)

StateDict = dict[str, Tensor]

# Key layouts of the reference implementations, written out here from their sources
# (independently of the package's own tables):
# timm resnet.py deep stem: conv1 = Sequential(conv, bn, act, conv, bn, act, conv); bn1
TIMM_STEM = {"stem.0": "conv1.0", "stem.1": "conv1.1", "stem.3": "conv1.3",
             "stem.4": "conv1.4", "stem.6": "conv1.6", "stem.7": "bn1"}  # fmt: skip
# CSAIL mit_semseg/models/resnet.py: conv1/bn1/relu1, conv2/bn2/relu2, conv3/bn3/relu3
CSAIL_STEM = {"stem.0": "conv1", "stem.1": "bn1", "stem.3": "conv2",
              "stem.4": "bn2", "stem.6": "conv3", "stem.7": "bn3"}  # fmt: skip


def _rename(sd: StateDict, table: dict[str, str]) -> StateDict:
    out = {}
    for k, v in sd.items():
        module, _, param = k.rpartition(".")
        out[f"{table.get(module, module)}.{param}"] = v
    return out


def _fc(num_features: int) -> StateDict:
    return {"fc.weight": torch.randn(1000, num_features), "fc.bias": torch.randn(1000)}


def to_torchvision(sd: StateDict) -> StateDict:
    return {**sd, **_fc(512)}


def to_timm(sd: StateDict) -> StateDict:
    return {**_rename(sd, TIMM_STEM), **_fc(512)}


def to_mmseg(sd: StateDict) -> StateDict:
    # mmpretrain ResNetV1c classification checkpoint: backbone.* + head.fc.*
    out = {f"backbone.{k}": v for k, v in sd.items()}
    out["head.fc.weight"] = torch.randn(1000, 512)
    out["head.fc.bias"] = torch.randn(1000)
    return out


def to_csail(sd: StateDict) -> StateDict:
    return {**_rename(sd, CSAIL_STEM), **_fc(512)}


# (source, our model, converter to the source's layout)
CASES: list[tuple[str, str, Callable[[StateDict], StateDict]]] = [
    ("torchvision", "resnet18", to_torchvision),
    ("timm", "resnet18_v1c", to_timm),
    ("mmseg", "resnet18_v1c", to_mmseg),
    ("csail", "resnet18_deep", to_csail),
]
IDS = [c[0] for c in CASES]


def _random_model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = create_backbone(name)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.fill_(seed + 7)
    return model


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize(("source", "name", "to_foreign"), CASES, ids=IDS)
@pytest.mark.parametrize("given", ["explicit", "auto"])
def test_round_trip(source: str, name: str, to_foreign: Callable, given: str) -> None:
    ref = _random_model(name)
    foreign = to_foreign(ref.state_dict())
    assert set(foreign) != set(ref.state_dict())  # the layouts really differ
    model = create_backbone(name)
    load_pretrained(model, foreign, source=source if given == "explicit" else "auto")
    _assert_same_state(model, ref)


@pytest.mark.parametrize(("source", "name", "to_foreign"), CASES, ids=IDS)
def test_detect_and_convert(source: str, name: str, to_foreign: Callable) -> None:
    ref = _random_model(name).state_dict()
    foreign = to_foreign(ref)
    stripped = {k.removeprefix("backbone."): v for k, v in foreign.items()}
    assert detect_source(stripped) == source
    for sd in (foreign, stripped):  # prefix already stripped (as seg_heads passes it) or not
        out = convert_state_dict(sd, source=source)
        assert out.keys() == ref.keys()
        assert all(torch.equal(out[k], ref[k]) for k in ref)


@pytest.mark.parametrize(("source", "name", "to_foreign"), CASES, ids=IDS)
def test_missing_key_is_listed(source: str, name: str, to_foreign: Callable) -> None:
    foreign = to_foreign(_random_model(name).state_dict())
    dropped = next(k for k in foreign if k.startswith(("layer3", "backbone.layer3")))
    del foreign[dropped]
    with pytest.raises(IncompatibleWeightsError, match="missing keys 1") as exc:
        load_pretrained(create_backbone(name), foreign, source=source)
    assert dropped.removeprefix("backbone.") in str(exc.value)


@pytest.mark.parametrize(("source", "name", "to_foreign"), CASES, ids=IDS)
def test_unexpected_key_is_listed(source: str, name: str, to_foreign: Callable) -> None:
    foreign = to_foreign(_random_model(name).state_dict())
    prefix = "backbone." if source == "mmseg" else ""
    foreign[f"{prefix}layer4.9.conv1.weight"] = torch.zeros(1)
    with pytest.raises(IncompatibleWeightsError, match="unexpected keys 1") as exc:
        load_pretrained(create_backbone(name), foreign, source=source)
    assert "layer4.9.conv1.weight" in str(exc.value)


@pytest.mark.parametrize(("source", "name", "to_foreign"), CASES, ids=IDS)
def test_shape_mismatch_names_key_and_shapes(source: str, name: str, to_foreign: Callable) -> None:
    foreign = to_foreign(_random_model(name).state_dict())
    key = next(k for k in foreign if k.endswith("layer2.0.conv1.weight"))
    foreign[key] = torch.zeros(3, 3, 3, 3)
    with pytest.raises(IncompatibleWeightsError) as exc:
        load_pretrained(create_backbone(name), foreign, source=source)
    msg = str(exc.value)
    assert "layer2.0.conv1.weight" in msg and "(3, 3, 3, 3)" in msg and "(128, 64, 3, 3)" in msg


def test_wrong_layout_for_model_gives_stem_hint() -> None:
    tv = to_torchvision(_random_model("resnet18").state_dict())
    with pytest.raises(IncompatibleWeightsError, match="7x7 stem"):
        load_pretrained(create_backbone("resnet18_deep"), tv)
    v1c = to_mmseg(_random_model("resnet18_v1c").state_dict())
    with pytest.raises(IncompatibleWeightsError, match="32 is mmseg") as exc:
        load_pretrained(create_backbone("resnet18_deep"), v1c)
    assert "stem.0.weight: checkpoint (32, 3, 3, 3) vs model (64, 3, 3, 3)" in str(exc.value)


def test_full_segmentation_checkpoint_is_refused_with_a_fix() -> None:
    sd = to_mmseg(_random_model("resnet18_v1c").state_dict())
    sd["decode_head.conv_seg.weight"] = torch.zeros(19, 512, 1, 1)
    with pytest.raises(IncompatibleWeightsError, match="decode_head"):
        load_pretrained(create_backbone("resnet18_v1c"), sd)


def test_unknown_source() -> None:
    with pytest.raises(ValueError, match="valid sources"):
        load_pretrained(create_backbone("resnet18"), {}, source="caffe")  # type: ignore[arg-type]


def test_files_pth_wrapped_and_safetensors(tmp_path) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    ref = _random_model("resnet18_deep")
    foreign = to_csail(ref.state_dict())
    pth = tmp_path / "w.pth"
    torch.save({"state_dict": foreign, "meta": {"epoch": 3}}, pth)
    model = load_pretrained(create_backbone("resnet18_deep"), pth)
    _assert_same_state(model, ref)
    st = tmp_path / "w.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in foreign.items()}, str(st))
    model = load_pretrained(create_backbone("resnet18_deep"), str(st), source="csail")
    _assert_same_state(model, ref)
    torch.save({"model": foreign}, tmp_path / "m.pt")
    _assert_same_state(load_pretrained(create_backbone("resnet18_deep"), tmp_path / "m.pt"), ref)


class _NotATensor:
    pass


def test_file_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        load_pretrained(create_backbone("resnet18"), tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "obj": _NotATensor()}, bad)
    with pytest.raises(ValueError, match="weights_only"):
        load_pretrained(create_backbone("resnet18"), bad)
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="suffix"):
        load_pretrained(create_backbone("resnet18"), tmp_path / "w.npz")


def test_old_checkpoint_without_num_batches_tracked() -> None:
    ref = _random_model("resnet18_deep")
    foreign = {k: v for k, v in to_csail(ref.state_dict()).items() if "num_batches" not in k}
    model = load_pretrained(create_backbone("resnet18_deep"), foreign)
    for k, v in ref.state_dict().items():
        if "num_batches" not in k:
            assert torch.equal(model.state_dict()[k], v), k


# ---- real reference libraries -----------------------------------------------------------


def _randomise_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def test_timm_deep_stem_parity() -> None:
    """timm's ResNet-C (deep stem 32-32-64, as resnet50c) == our *_v1c, output for output."""
    timm_resnet = pytest.importorskip("timm.models.resnet")
    torch.manual_seed(0)
    ref = timm_resnet.ResNet(
        block=timm_resnet.BasicBlock, layers=[2, 2, 2, 2], stem_type="deep", stem_width=32
    )
    _randomise_bn(ref)
    ref.eval()
    assert detect_source(ref.state_dict()) == "timm"
    model = load_pretrained(create_backbone("resnet18_v1c"), ref.state_dict()).eval()
    x = torch.randn(1, 3, 65, 81)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[-1], ref.forward_features(x), rtol=1e-5, atol=1e-5)


def test_timm_wrapper_loads_timm_weights() -> None:
    timm = pytest.importorskip("timm")
    ref = timm.create_model("resnet18")
    _randomise_bn(ref)
    bb = create_backbone("timm:resnet18")
    with pytest.warns(UserWarning, match=r"fc\.weight"):
        load_pretrained(bb, ref.state_dict())
    bb.eval(), ref.eval()
    x = torch.randn(1, 3, 65, 81)
    with torch.no_grad():
        torch.testing.assert_close(bb(x)[-1], ref.forward_features(x))
    sd = dict(ref.state_dict())
    del sd["layer1.0.conv1.weight"]
    with pytest.raises(IncompatibleWeightsError, match=r"layer1\.0\.conv1\.weight"):
        load_pretrained(bb, sd)


def test_module_without_a_family_converter_loads_strictly(tmp_path) -> None:
    ref = nn.Conv2d(3, 4, 3)
    path = tmp_path / "conv.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, path)
    got = load_pretrained(nn.Conv2d(3, 4, 3), path)  # wrapper and module. prefix removed
    assert torch.equal(got.weight, ref.weight) and torch.equal(got.bias, ref.bias)
    with pytest.raises(
        IncompatibleWeightsError, match=r"(?s)state dict: .*missing keys 1: \[bias\]"
    ):
        load_pretrained(nn.Conv2d(3, 4, 3), {"weight": ref.weight})
    with pytest.raises(ValueError, match="no weight converter"):
        load_pretrained(nn.Conv2d(3, 4, 3), path, source="mmseg")
