"""torchvision baselines (`model.name: torchvision:ARCH`) build through the same config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from seg_trainer.build import build_model
from seg_trainer.config import ConfigError, load_config

pytest.importorskip("torchvision")

CAMVID = Path(__file__).resolve().parents[1] / "configs" / "camvid"


def _cfg(name: str, backbone: str, *extra: str):
    return load_config(
        CAMVID / "pspnet_r18-deep_camvid_288x288.yaml",
        [
            f"model.name={name}",
            f"model.backbone={backbone}",
            "model.backbone_kwargs={}",
            "model.head_kwargs={}",
            "model.aux_kwargs={}",
            *extra,
        ],
    )


@pytest.mark.parametrize(
    ("arch", "backbone", "aux"),
    [
        ("lraspp_mobilenet_v3_large", "mobilenet_v3_large", False),
        ("fcn_resnet50", "resnet50", True),
    ],
)
def test_torchvision_model_builds_random_init_with_our_output_dict(arch, backbone, aux):
    from torchvision.models import segmentation

    cfg = _cfg(f"torchvision:{arch}", backbone, f"model.aux={str(aux).lower()}")
    model = build_model(cfg).eval()
    assert type(model) is type(getattr(segmentation, arch)(weights=None, weights_backbone=None))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 40, 48))
    assert out["out"].shape == (1, 11, 40, 48)
    assert ("aux" in out) is aux


def test_unknown_torchvision_model_lists_valid_names():
    with pytest.raises(ConfigError, match=r"unknown torchvision model 'nope'.*lraspp_mobilenet"):
        build_model(_cfg("torchvision:nope", "x"))


def test_backbone_must_match_and_seg_heads_options_are_refused():
    with pytest.raises(ConfigError, match=r"model\.backbone"):
        build_model(_cfg("torchvision:lraspp_mobilenet_v3_large", "resnet50", "model.aux=false"))
    with pytest.raises(ConfigError, match=r"model\.head_kwargs does not apply"):
        build_model(
            _cfg(
                "torchvision:lraspp_mobilenet_v3_large",
                "mobilenet_v3_large",
                "model.aux=false",
                "model.head_kwargs={channels: 3}",
            )
        )
