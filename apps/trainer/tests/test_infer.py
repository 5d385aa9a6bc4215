"""Tests for seg_trainer.infer (seg-infer): masks, colours, overlays; unreadable inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seg_data import voc_colormap
from seg_trainer.build import build_model
from seg_trainer.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from seg_trainer.config import config_from_dict
from seg_trainer.infer import cli, find_images

CONFIG = {
    "output_dir": "unused",
    "model": {"name": "fcn", "backbone": "resnet18", "num_classes": 3, "output_stride": 32,
              "aux": False, "head_kwargs": {"channels": 8, "num_convs": 1}},
    "data": {"dataset": "synthetic", "dataset_options": {"num_samples": 3, "size": [32, 32],
             "num_classes": 3}, "val_transforms": [{"Normalize": {}}], "num_workers": 0},
    "train": {"max_iters": 1},
}  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    cfg = config_from_dict(CONFIG)
    torch.manual_seed(0)
    model = build_model(cfg)
    path = tmp_path_factory.mktemp("ckpt") / "model.pth"
    save_checkpoint(
        {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "config": cfg.to_dict(),
         "iteration": 0},
        path,
    )  # fmt: skip
    return path


def _write_images(folder: Path) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (30, 41, 3), dtype=np.uint8) for _ in range(2)]
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(images[0]).save(folder / "a.png")
    Image.fromarray(images[1]).save(folder / "sub" / "b.jpg", quality=100)
    return images


def test_voc_palette_matches_the_voc_colour_map() -> None:
    pal = voc_colormap(21)
    assert pal[0].tolist() == [0, 0, 0]
    assert pal[1].tolist() == [128, 0, 0]
    assert pal[15].tolist() == [192, 128, 128]  # person


def test_find_images_names_and_errors(tmp_path: Path) -> None:
    _write_images(tmp_path / "in")
    (tmp_path / "in" / "notes.txt").write_text("x")
    found = find_images([tmp_path / "in", tmp_path / "in" / "a.png"])
    assert [n for _, n in found] == ["a", "sub/b"]  # the same file given twice: once
    with pytest.raises(FileNotFoundError, match="no such file"):
        find_images([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images found"):
        find_images([tmp_path / "empty"])


def test_masks_colours_and_overlays(tmp_path: Path, checkpoint: Path, capsys) -> None:
    images = _write_images(tmp_path / "in")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        cli(["--checkpoint", str(checkpoint), "--input", str(tmp_path / "in"), "--output", str(out),
             "--cpu"])  # fmt: skip
    assert exc.value.code == 0
    assert "wrote 2 predictions" in capsys.readouterr().out

    # expected mask of a.png: normalise, forward, resize back, argmax
    cfg = config_from_dict(CONFIG)
    model = build_model(cfg)
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    model.eval()
    mean = torch.tensor([123.675, 116.28, 103.53])[:, None, None]
    std = torch.tensor([58.395, 57.12, 57.375])[:, None, None]
    x = (torch.from_numpy(images[0]).permute(2, 0, 1).float() - mean) / std
    with torch.no_grad():
        expected = model(x[None])["out"].argmax(1)[0].numpy()
    mask = np.array(Image.open(out / "masks" / "a.png"))
    assert mask.shape == (30, 41) and np.array_equal(mask, expected)
    # the synthetic dataset's palette (VOC colour map) colours the mask
    colour = np.array(Image.open(out / "color" / "a.png"))
    assert np.array_equal(colour, voc_colormap(3)[mask])
    blend = np.array(Image.open(out / "overlay" / "a.png")).astype(int)
    ref = np.round(0.5 * images[0] + 0.5 * voc_colormap(3)[mask].astype(float)).astype(int)
    assert np.abs(blend - ref).max() <= 1
    assert (out / "masks" / "sub" / "b.png").is_file()


def test_unreadable_inputs_are_reported_and_others_processed(
    tmp_path: Path, checkpoint: Path, capsys
) -> None:
    _write_images(tmp_path / "in")
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        cli(["--checkpoint", str(checkpoint), "--input", str(tmp_path / "in"), "--output", str(out),
             "--cpu"])  # fmt: skip
    assert exc.value.code == 5  # the data-error code: some inputs failed
    captured = capsys.readouterr()
    assert "wrote 2 predictions" in captured.out
    assert "cannot decode image" in captured.err and "broken.png" in captured.err
    assert (out / "masks" / "a.png").is_file() and not (out / "masks" / "broken.png").exists()


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path, capsys) -> None:
    _write_images(tmp_path / "in")
    with pytest.raises(SystemExit) as exc:
        cli(["--checkpoint", str(tmp_path / "none.pth"), "--input", str(tmp_path / "in"),
             "--output", str(tmp_path / "o")])  # fmt: skip
    assert exc.value.code == 2
    assert "checkpoint not found" in capsys.readouterr().err


# ------------------------------------------------ seg-infer --backend onnxruntime | openvino


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> dict[str, Path]:
    """A checkpoint whose model predicts every class (trained-like BatchNorm statistics,
    centred logits of O(10)), its seg-export ONNX file, and input images of odd sizes."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from seg_trainer.export import main as export_main

    config = {**CONFIG, "evaluation": {"crop_size": [24, 24], "stride": [16, 16]}}
    config["model"] = {**CONFIG["model"], "output_stride": 8}
    cfg = config_from_dict(config)
    rng = np.random.default_rng(1)
    pictures = {  # blocks of colour: predictions that change across the image
        name: np.asarray(
            Image.fromarray(rng.integers(0, 256, (h // 6, w // 6, 3), dtype=np.uint8)).resize(
                (w, h), Image.NEAREST
            )
        )
        for name, (h, w) in {"a": (30, 41), "b": (45, 57)}.items()
    }
    torch.manual_seed(0)
    model = build_model(cfg)
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64, generator=g))
        model.decode_head.conv_seg.weight.mul_(300.0)
        model.eval()
        mean = torch.tensor([123.675, 116.28, 103.53])[:, None, None]
        std = torch.tensor([58.395, 57.12, 57.375])[:, None, None]
        x = (torch.from_numpy(pictures["b"].copy()).permute(2, 0, 1).float() - mean) / std
        logits = model(x[None])["out"]  # centre the classes: each one is predicted somewhere
        model.decode_head.conv_seg.bias.sub_(logits.mean((0, 2, 3)))
    root = tmp_path_factory.mktemp("deployed")
    ckpt, onnx_path = root / "model.pth", root / "model.onnx"
    save_checkpoint({"format": CHECKPOINT_FORMAT, "model": model.state_dict(),
                     "config": cfg.to_dict(), "iteration": 0}, ckpt)  # fmt: skip
    assert export_main(["--checkpoint", str(ckpt), "--format", "onnx", "--output",
                        str(onnx_path), "--size", "32", "32"]) == 0  # fmt: skip
    images = root / "images"
    images.mkdir()
    for name, picture in pictures.items():
        Image.fromarray(picture).save(images / f"{name}.png")
    return {"torch": ckpt, "onnxruntime": onnx_path, "openvino": onnx_path, "images": images}


@pytest.mark.parametrize(
    "options",
    [
        ["--mode", "whole"],
        ["--mode", "slide"],
        ["--mode", "whole", "--set", "evaluation.flip=true"],
    ],
    ids=["whole", "slide", "whole-flip"],
)
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_runtime_backends_write_the_pytorch_masks(
    deployed: dict[str, Path], tmp_path: Path, backend: str, options: list[str], capsys
) -> None:
    if backend == "openvino":
        pytest.importorskip("openvino")
    outs = {}
    for b in ("torch", backend):
        outs[b] = tmp_path / b
        argv = [
            "--checkpoint",
            str(deployed[b]),
            "--backend",
            b,
            "--input",
            str(deployed["images"]),
            "--output",
            str(outs[b]),
            "--cpu",
            "--threads",
            "1",
        ]
        with pytest.raises(SystemExit) as exc:
            cli([*argv, *options])  # fmt: skip
        assert exc.value.code == 0
        assert "wrote 2 predictions" in capsys.readouterr().out
    for name, size in (("a", (30, 41)), ("b", (45, 57))):
        ref = np.asarray(Image.open(outs["torch"] / "masks" / f"{name}.png"))
        got = np.asarray(Image.open(outs[backend] / "masks" / f"{name}.png"))
        assert ref.shape == got.shape == size
        assert len(np.unique(ref)) >= 2  # not one class everywhere
        assert (got != ref).mean() <= 0.001  # fp32 rounding may move a tie, nothing more
        for sub in ("color", "overlay"):
            a = np.asarray(Image.open(outs["torch"] / sub / f"{name}.png"))
            b = np.asarray(Image.open(outs[backend] / sub / f"{name}.png"))
            assert (np.any(a != b, axis=-1) <= (got != ref)).all()
