"""seg-export and the runtime backends: files, metadata, equality with the PyTorch path.

The backends must be drop-in modules for ``predict_logits`` (whole, slide, multi-scale +
flip) and for ``evaluate`` (same metrics as PyTorch), which is how seg-infer / seg-eval use
them. OpenVINO tests run when ``openvino`` is installed (it is in the test extra).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seg_trainer.build import build_dataset, build_model
from seg_trainer.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from seg_trainer.config import config_from_dict
from seg_trainer.evaluate import load_model
from seg_trainer.inference import predict_logits

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from seg_heads.export import load_torch_export, read_onnx_metadata  # noqa: E402
from seg_trainer.backends import (  # noqa: E402
    OnnxRuntimeModel,
    available_backends,
    exported_config,
    normalize_image,
    runtime_model,
)
from seg_trainer.export import cli  # noqa: E402

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(
    not HAS_OPENVINO, reason="openvino is not installed (pip install 'seg-trainer[deploy]')"
)

CONFIG = {
    "output_dir": "unused",
    "model": {"name": "pspnet", "backbone": "resnet18", "num_classes": 3, "output_stride": 16,
              "aux": True, "head_kwargs": {"channels": 8}, "aux_kwargs": {"channels": 8}},
    "data": {"dataset": "synthetic", "dataset_options": {"num_samples": 4, "size": [40, 52],
             "num_classes": 3},
             "val_transforms": [{"Normalize": {"mean": [120.0, 110.0, 100.0],
                                               "std": [50.0, 60.0, 70.0]}}],
             "num_workers": 0},
    "evaluation": {"batch_size": 2},
    "train": {"max_iters": 1},
}  # fmt: skip
SIZE = ["48", "64"]


def _close(got: torch.Tensor, ref: torch.Tensor) -> bool:
    """Equal to fp32 rounding: ``<= 1e-4 + 1e-5 * max |ref|`` (seg_heads.export's criterion).

    These logits reach ~15; onnxruntime's and OpenVINO's convolutions then differ from
    PyTorch's by 5e-5..1.6e-4.
    """
    return (
        got.shape == ref.shape
        and (got - ref).abs().max().item() <= 1e-4 + 1e-5 * ref.abs().max().item()
    )


def _trained_like(model: torch.nn.Module) -> None:
    """BatchNorm statistics of real activations (as after training), random affines."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64, generator=g))
        model.decode_head.conv_seg.weight.mul_(300.0)  # logits of a trained model: O(10)
    model.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    cfg = config_from_dict(CONFIG)
    torch.manual_seed(0)
    model = build_model(cfg)
    _trained_like(model)
    path = tmp_path_factory.mktemp("ckpt") / "model.pth"
    save_checkpoint(
        {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "config": cfg.to_dict(),
         "iteration": 7},
        path,
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def exported(checkpoint: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    _run(["--checkpoint", str(checkpoint), "--format", "onnx", "--output", str(out),
          "--size", *SIZE])  # fmt: skip
    return out


def _run(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli(argv)
    assert exc.value.code == 0


def _torch_model(checkpoint: Path) -> tuple[torch.nn.Module, object]:
    state = load_checkpoint(checkpoint)
    cfg = config_from_dict(state["config"])
    return load_model(cfg, state, checkpoint).eval(), cfg


def test_onnx_file_carries_what_the_runtime_needs(exported: Path, checkpoint: Path, capsys) -> None:
    meta = read_onnx_metadata(exported)
    cfg = config_from_dict(CONFIG)
    ds = build_dataset(cfg, "val")
    assert meta["class_names"] == list(ds.classes)
    assert meta["palette"] == np.asarray(ds.palette).tolist()
    assert meta["mean"] == [120.0, 110.0, 100.0] and meta["std"] == [50.0, 60.0, 70.0]
    assert meta["color_order"] == "RGB" and meta["num_classes"] == 3
    assert meta["iteration"] == 7 and meta["max_abs_diff"] <= 1e-3
    assert exported_config(exported)["model"] == cfg.to_dict()["model"]
    graph = onnx.load(str(exported)).graph
    assert [o.name for o in graph.output] == ["out"]  # the aux head is not exported


@pytest.mark.parametrize(
    "options",
    [
        {"mode": "whole"},
        {"mode": "slide", "crop_size": (32, 32), "stride": (21, 21)},
        {"mode": "multiscale", "scales": (0.75, 1.0, 1.25), "flip": True},
    ],
    ids=["whole", "slide", "multiscale-flip"],
)
@pytest.mark.parametrize("backend", ["onnxruntime", pytest.param("openvino", marks=needs_openvino)])
def test_backends_equal_pytorch_in_every_inference_mode(
    exported: Path, checkpoint: Path, backend: str, options: dict
) -> None:
    model, _ = _torch_model(checkpoint)
    runtime = runtime_model(exported, backend, threads=1)
    images = torch.randn(2, 3, 45, 67, generator=torch.Generator().manual_seed(0))
    ref = predict_logits(model, images, num_classes=3, **options)
    got = predict_logits(runtime, images, num_classes=3, **options)
    assert got.shape == ref.shape == (2, 3, 45, 67) and got.dtype == torch.float32
    assert _close(got, ref) and ref.abs().max() > 1.0


def test_evaluate_through_onnxruntime_gives_the_pytorch_metrics(
    exported: Path, checkpoint: Path
) -> None:
    """What seg-eval --backend onnxruntime does: evaluate() with the runtime module."""
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from seg_data import collate
    from seg_trainer.evaluate import evaluate

    model, cfg = _torch_model(checkpoint)
    loader = DataLoader(build_dataset(cfg, "val"), batch_size=2, collate_fn=collate)
    acc = Accelerator(cpu=True)
    kwargs = {"num_classes": 3, "progress": False}
    ref = evaluate(model, loader, acc, **kwargs)
    got = evaluate(OnnxRuntimeModel(exported, threads=1), loader, acc, **kwargs)
    assert got.confusion.tolist() == ref.confusion.tolist()
    assert abs(got.miou - ref.miou) < 1e-9


def test_normalize_image_equals_the_val_transforms(exported: Path) -> None:
    from seg_data import build_transforms

    image = np.random.default_rng(0).integers(0, 256, (21, 30, 3), dtype=np.uint8)
    cfg = config_from_dict(CONFIG)
    sample = build_transforms(cfg.data.val_transforms)(
        {"image": image, "label": np.zeros((21, 30), np.uint8)}, np.random.default_rng(0)
    )
    expected = torch.from_numpy(sample["image"]).permute(2, 0, 1)[None]
    assert torch.equal(normalize_image(image, read_onnx_metadata(exported)), expected)
    bgr = {"mean": [1.0, 2.0, 3.0], "std": [1.0, 1.0, 1.0], "color_order": "BGR"}
    out = normalize_image(image, bgr)
    assert torch.equal(out[0, 0], torch.from_numpy(image[..., 2].astype(np.float32) - 1.0))


def test_torch_export_and_fold_bn(checkpoint: Path, tmp_path: Path) -> None:
    model, _ = _torch_model(checkpoint)
    x = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        ref = model(x)["out"]
    _run(["--checkpoint", str(checkpoint), "--format", "torch-export", "--fold-bn",
          "--output", str(tmp_path / "m.pt2"), "--size", *SIZE])  # fmt: skip
    program, meta = load_torch_export(tmp_path / "m.pt2")
    assert meta["fold_bn"] is True and meta["class_names"]
    with torch.no_grad():
        got = program.module()(x)
    assert _close(got, ref)
    _run(["--checkpoint", str(checkpoint), "--format", "onnx", "--fold-bn", "--no-dynamic",
          "--opset", "16", "--output", str(tmp_path / "s.onnx"), "--size", "50", "70"])  # fmt: skip
    ops = {n.op_type for n in onnx.load(str(tmp_path / "s.onnx")).graph.node}
    assert "BatchNormalization" not in ops
    got = OnnxRuntimeModel(tmp_path / "s.onnx")(x)
    assert _close(got, ref)


def test_int8_quantisation_with_calibration_images(
    checkpoint: Path, tmp_path: Path, capsys
) -> None:
    rng = np.random.default_rng(0)
    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(calib / f"{i}.png")
    out = tmp_path / "int8.onnx"
    _run(["--checkpoint", str(checkpoint), "--format", "onnx", "--output", str(out),
          "--size", *SIZE, "--int8", "--calib-data", str(calib), "--calib-images", "3"])  # fmt: skip
    text = capsys.readouterr().out
    assert "calibrated on 3 images" in text and "of pixels keep their class" in text
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    meta = read_onnx_metadata(out)
    assert meta["quantization"] == "int8 static QDQ" and meta["num_classes"] == 3
    logits = OnnxRuntimeModel(out)(torch.randn(1, 3, 37, 41))
    assert logits.shape == (1, 3, 37, 41) and torch.isfinite(logits).all()


def test_errors_are_clear(checkpoint: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli(["--format", "onnx", "--output", str(tmp_path / "x.onnx")])
    assert exc.value.code == 2 and "--checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["--checkpoint", str(checkpoint), "--format", "onnx", "--output", "x.onnx", "--int8"])
    assert "--calib-data" in capsys.readouterr().err
    with pytest.raises(ValueError, match="use --backend torch"):
        runtime_model(checkpoint, "onnxruntime")
    with pytest.raises(ValueError, match="valid"):
        runtime_model(checkpoint, "tensorrt")
    with pytest.raises(FileNotFoundError):
        runtime_model(tmp_path / "missing.onnx", "onnxruntime")
    assert available_backends()[:2] == ["torch", "onnxruntime"]
    assert ("openvino" in available_backends()) == HAS_OPENVINO


def _code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        cli(argv)
    return exc.value.code


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_exit_codes_name_the_problem(checkpoint: Path, tmp_path: Path, capsys) -> None:
    """The scheme of seg_trainer.errors: 2 config/option, 3 checkpoint; one line each."""
    out = ["--format", "onnx", "--output", str(tmp_path / "x.onnx")]
    assert _code(["--checkpoint", str(checkpoint), *out, "--set", "model.name=nope"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("seg-export: config error:") and "'nope'" in line
    assert _code(["--checkpoint", str(checkpoint), *out, "--size", "1", "48"]) == 2
    assert "--size" in capsys.readouterr().err
    broken = tmp_path / "broken.pth"
    broken.write_bytes(checkpoint.read_bytes()[:100])
    assert _code(["--checkpoint", str(broken), *out]) == 3
    assert _one_line(capsys.readouterr().err).startswith("seg-export: checkpoint error:")
    assert _code(["--checkpoint", str(checkpoint), *out, "--set", "model.num_classes=5"]) == 3
    assert "shape mismatches" in _one_line(capsys.readouterr().err)
    assert _code(["--checkpoint", str(tmp_path / "none.pth"), *out]) == 2
    assert "not found" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "x.onnx").exists()


def test_unexportable_model_is_exit_10_naming_the_op(
    checkpoint: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """Both exporters fail (as for an op without an ONNX symbolic): one error, exit 10."""
    import seg_heads.export as seg_export

    def refuse(*args, **kwargs):
        raise RuntimeError(
            "Exporting the operator 'aten::fancy_pool' to ONNX opset version 17 is not supported"
        )

    monkeypatch.setattr(seg_export, "_onnx_legacy", refuse)
    monkeypatch.setattr(seg_export, "_onnx_dynamo", refuse)
    target = tmp_path / "x.onnx"
    argv = ["--checkpoint", str(checkpoint), "--format", "onnx", "--output", str(target),
            "--size", *SIZE]  # fmt: skip
    assert _code(argv) == 10
    err = capsys.readouterr().err
    assert err.startswith("seg-export: export failed: cannot export") and "Traceback" not in err
    assert "aten::fancy_pool" in err and not target.exists()
