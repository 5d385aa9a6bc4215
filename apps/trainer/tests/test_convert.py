"""Tests for seg_trainer.convert (seg-convert): torchvision -> safetensors + YAML -> same logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from seg_heads import create_model
from seg_trainer.build import build_model
from seg_trainer.checkpoint import load_checkpoint
from seg_trainer.config import config_from_dict
from seg_trainer.convert import cli, config_for_model


def _randomise_bn(model: torch.nn.Module) -> None:
    """Non-trivial running statistics, so that BN buffers must be converted too."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def test_torchvision_deeplabv3_round_trip(tmp_path: Path, capsys) -> None:
    segmentation = pytest.importorskip("torchvision.models.segmentation")
    torch.manual_seed(0)
    tv = segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=3, aux_loss=True
    )
    _randomise_bn(tv)
    tv.eval()
    src = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), src)
    out = tmp_path / "out" / "dlv3.safetensors"

    cli(["--from", "torchvision", "--arch", "deeplabv3_resnet50", "--input", str(src),
         "--output", str(out), "--dataset", "synthetic"])  # fmt: skip
    assert "wrote" in capsys.readouterr().out
    assert out.is_file() and out.with_suffix(".yaml").is_file()

    ckpt = load_checkpoint(out)  # trainer-core's loader: weights + the YAML beside them
    cfg = config_from_dict(ckpt["config"])
    assert cfg.model.name == "deeplabv3" and cfg.model.num_classes == 3
    assert cfg.data.dataset == "synthetic"
    assert cfg.data.val_transforms[0]["Normalize"]["mean"] == [123.675, 116.28, 103.53]
    model = build_model(cfg)
    model.load_state_dict(ckpt["model"], strict=True)
    model.eval()

    x = torch.randn(1, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, ours = tv(x), model(x)
    torch.testing.assert_close(ours["out"], ref["out"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours["aux"], ref["aux"], rtol=1e-4, atol=1e-4)


def test_config_for_model_normalisation_and_dataset_guess() -> None:
    model = create_model("fcn", backbone="resnet18", num_classes=19, output_stride=8, aux=False)
    model.input_norm = {"mean": [104.0, 116.0, 122.0], "std": [1, 1, 1], "color_order": "BGR"}
    cfg = config_for_model(model)
    assert cfg["data"]["dataset"] == "cityscapes"
    assert cfg["data"]["val_transforms"] == [
        {"Normalize": {"mean": [104.0, 116.0, 122.0], "std": [1, 1, 1], "to_bgr": True}}
    ]
    rebuilt = config_from_dict(yaml.safe_load(yaml.safe_dump(cfg)))  # a valid trainer config
    assert rebuilt.model.backbone == "resnet18" and rebuilt.model.aux is False

    model7 = create_model("fcn", backbone="resnet18", num_classes=7, output_stride=8, aux=False)
    with pytest.raises(ValueError, match="--dataset"):
        config_for_model(model7)


def test_cli_errors_are_reported(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli(["--from", "torchvision", "--arch", "deeplabv3_resnet50", "--input",
             str(tmp_path / "missing.pth"), "--output", str(tmp_path / "o.safetensors")])  # fmt: skip
    assert exc.value.code == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["--from", "torchvision", "--arch", "deeplabv3_resnet50", "--input", "x.pth",
             "--output", str(tmp_path / "o.pt")])  # fmt: skip
    assert ".safetensors" in capsys.readouterr().err
