"""The one registry helper: its behaviour, its twin in seg_data, and every registry using it."""

from __future__ import annotations

import inspect

import pytest

import seg_backbones.registry as backbone_registry
import seg_data.registry as data_registry
from seg_backbones import _registry as backbones
from seg_data import transforms
from seg_data.datasets import _registry as datasets
from seg_heads import _registry as heads
from seg_trainer import losses

REGISTRIES = {
    "backbone": backbones.BACKBONES,
    "model": heads.HEADS,
    "dataset": datasets.DATASETS,
    "transform": transforms.TRANSFORMS,
    "loss": losses.LOSSES,
}


def test_imagenet_statistics_agree_across_packages():
    # seg_data (Normalize's default) and seg_heads (a model's input_norm) are siblings: the
    # two spellings of the ImageNet statistics must not drift
    import seg_data
    from seg_heads import IMAGENET_RGB

    assert list(seg_data.IMAGENET_MEAN) == IMAGENET_RGB["mean"]
    assert list(seg_data.IMAGENET_STD) == IMAGENET_RGB["std"]


def test_seg_data_keeps_an_identical_copy():
    # seg_data is a leaf package and cannot import seg_backbones: the copy must not drift
    assert inspect.getsource(data_registry) == inspect.getsource(backbone_registry)


@pytest.mark.parametrize("cls", [backbone_registry.Registry, data_registry.Registry])
def test_registry_registers_lists_and_fails_loudly(cls):
    reg = cls("widget", hint=" (or 'x:<any>')")

    @reg.register("b", size=2)
    def b():
        return "b"

    reg.register("a")(str)
    assert reg.names() == ["a", "b"] and list(reg) == ["a", "b"] and len(reg) == 2
    assert reg.get("b") is b and "a" in reg and "c" not in reg
    assert reg.meta("b") == {"size": 2}
    with pytest.raises(KeyError, match=r"unknown widget 'c'; valid names are \['a', 'b'\] \(or"):
        reg.get("c")
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.register("a")(int)
    with pytest.raises(TypeError, match=r"explicit name, e\.g\. @register_widget\('my_widget'\)"):
        reg.register(b)  # the bare-decorator mistake


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_every_registry_is_a_registry_of_its_kind(kind):
    reg = REGISTRIES[kind]
    assert isinstance(reg, backbone_registry.Registry | data_registry.Registry)
    assert reg.kind == kind and len(reg) > 0
