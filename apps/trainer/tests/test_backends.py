"""The runtime backends of seg-infer / seg-eval: model loading, dynamic shapes, error paths.

``seg_trainer.backends.stored_config`` / ``load_inference_model`` are what both commands
call for ``--backend``; a missing runtime (onnxruntime / OpenVINO not installed, simulated
by hiding the module) must be one line naming ``pip install 'seg-trainer[deploy]'`` and exit
status 9, a file that does not fit the backend one line and exit status 3. The equality of
the metrics and masks through every backend is in test_evaluate.py and test_infer.py.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from seg_trainer.build import build_model
from seg_trainer.checkpoint import CHECKPOINT_FORMAT, CheckpointError, save_checkpoint
from seg_trainer.config import config_from_dict
from seg_trainer.errors import EXIT_CHECKPOINT, EXIT_CONFIG, EXIT_MISSING_DEPENDENCY
from seg_trainer.inference import predict_logits

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from seg_heads.export import to_onnx
from seg_trainer import evaluate, export, infer
from seg_trainer.backends import (
    BackendUnavailable,
    OnnxRuntimeModel,
    load_inference_model,
    runtime_model,
    stored_config,
)

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
DEPLOY = "pip install 'seg-trainer[deploy]'"

CONFIG = {
    "output_dir": "unused",
    "model": {"name": "fcn", "backbone": "resnet18", "num_classes": 3, "output_stride": 16,
              "aux": False, "head_kwargs": {"channels": 8, "num_convs": 1}},
    "data": {"dataset": "synthetic", "dataset_options": {"num_samples": 2, "size": [24, 32],
             "num_classes": 3}, "val_transforms": [{"Normalize": {}}], "num_workers": 0},
    "evaluation": {"batch_size": 2},
    "train": {"max_iters": 1},
}  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A checkpoint, its seg-export ONNX file and a bare ONNX file (no trainer config)."""
    root = tmp_path_factory.mktemp("backends")
    cfg = config_from_dict(CONFIG)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    ckpt = root / "model.pth"
    save_checkpoint(
        {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "config": cfg.to_dict(),
         "iteration": 5},
        ckpt,
    )  # fmt: skip
    onnx_path = root / "model.onnx"
    argv = ["--checkpoint", str(ckpt), "--format", "onnx", "--output", str(onnx_path),
            "--size", "32", "32"]  # fmt: skip
    assert export.main(argv) == 0
    bare = root / "bare.onnx"
    to_onnx(model, bare, size=(32, 32))
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (21, 30, 3), dtype=np.uint8)).save(images / "a.png")
    return {"ckpt": ckpt, "onnx": onnx_path, "bare": bare, "config": config, "images": images}


def _exit(main_cli, argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main_cli(argv)
    return exc.value.code


def _eval_argv(model: Path, backend: str, out: Path) -> list[str]:
    return ["--checkpoint", str(model), "--backend", backend, "--no-progress", "--cpu",
            "--set", f"output_dir={out}"]  # fmt: skip


def _infer_argv(model: Path, backend: str, files: dict[str, Path], out: Path) -> list[str]:
    return ["--checkpoint", str(model), "--backend", backend, "--input", str(files["images"]),
            "--output", str(out), "--cpu"]  # fmt: skip


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_stored_config_and_loading_for_each_backend(files: dict[str, Path]) -> None:
    stored, checkpoint = stored_config(files["ckpt"], "torch")
    assert checkpoint["iteration"] == 5 and stored["model"]["name"] == "fcn"
    stored_onnx, none = stored_config(files["onnx"], "onnxruntime")
    assert none is None and stored_onnx == stored  # seg-export stored the resolved config
    assert stored_config(files["bare"], "onnxruntime") == (None, None)
    cfg = config_from_dict(stored)
    torch_model = load_inference_model(cfg, files["ckpt"], "torch", checkpoint=checkpoint)
    ort_model = load_inference_model(cfg, files["onnx"], "onnxruntime", threads=1)
    assert not torch_model.training and isinstance(ort_model, OnnxRuntimeModel)
    assert ort_model.num_classes == 3
    with pytest.raises(ValueError, match="unknown backend"):
        stored_config(files["onnx"], "tensorrt")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_runtime_takes_any_batch_and_shape_in_every_mode(
    files: dict[str, Path], backend: str
) -> None:
    """Dynamic batch/H/W: odd sizes, windows smaller than the crop (padded), flip."""
    if backend == "openvino" and not HAS_OPENVINO:
        pytest.skip("openvino is not installed")
    stored, checkpoint = stored_config(files["ckpt"], "torch")
    cfg = config_from_dict(stored)
    ref_model = load_inference_model(cfg, files["ckpt"], "torch", checkpoint=checkpoint)
    runtime = runtime_model(files["onnx"], backend, threads=1)
    g = torch.Generator().manual_seed(1)
    for batch, h, w, options in [
        (1, 33, 47, {"mode": "whole"}),
        (3, 19, 26, {"mode": "whole", "flip": True}),
        (2, 33, 47, {"mode": "slide", "crop_size": (40, 24), "stride": (16, 16)}),
        (1, 29, 35, {"mode": "multiscale", "scales": (0.5, 1.5), "flip": True}),
    ]:
        x = torch.randn(batch, 3, h, w, generator=g)
        ref = predict_logits(ref_model, x, num_classes=3, **options)
        got = predict_logits(runtime, x, num_classes=3, **options)
        assert got.shape == ref.shape == (batch, 3, h, w)
        assert (got - ref).abs().max().item() <= 1e-4 + 1e-5 * ref.abs().max().item()


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("tool", ["seg-eval", "seg-infer"])
def test_missing_runtime_is_one_line_and_exit_9(
    files: dict[str, Path], tmp_path: Path, monkeypatch, capsys, backend: str, tool: str
) -> None:
    monkeypatch.setitem(sys.modules, backend, None)  # `import backend` now raises ImportError
    with pytest.raises(BackendUnavailable, match="seg-trainer\\[deploy\\]"):
        runtime_model(files["onnx"], backend)
    capsys.readouterr()
    if tool == "seg-eval":
        code = _exit(evaluate.cli, _eval_argv(files["onnx"], backend, tmp_path))
    else:
        code = _exit(infer.cli, _infer_argv(files["onnx"], backend, files, tmp_path / "o"))
    assert code == EXIT_MISSING_DEPENDENCY == 9
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"{tool}: missing dependency: --backend {backend} needs")
    assert DEPLOY in line


def test_seg_export_without_onnx_is_exit_9(
    files: dict[str, Path], tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    argv = ["--checkpoint", str(files["ckpt"]), "--format", "onnx",
            "--output", str(tmp_path / "m.onnx")]  # fmt: skip
    assert _exit(export.cli, argv) == 9
    line = _one_line(capsys.readouterr().err)
    assert "'onnxruntime'" in line and DEPLOY in line and not (tmp_path / "m.onnx").exists()
    # torch.export needs neither
    argv = ["--checkpoint", str(files["ckpt"]), "--format", "torch-export",
            "--output", str(tmp_path / "m.pt2"), "--size", "32", "32"]  # fmt: skip
    assert _exit(export.cli, argv) == 0 and (tmp_path / "m.pt2").is_file()


def test_file_that_does_not_fit_the_backend_is_exit_3(
    files: dict[str, Path], tmp_path: Path, capsys
) -> None:
    out = tmp_path / "o"
    assert _exit(evaluate.cli, _eval_argv(files["onnx"], "torch", out)) == EXIT_CHECKPOINT
    assert "--backend onnxruntime" in _one_line(capsys.readouterr().err)
    assert _exit(infer.cli, _infer_argv(files["ckpt"], "onnxruntime", files, out)) == 3
    assert "use --backend torch" in _one_line(capsys.readouterr().err)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(files["onnx"].read_bytes()[:200])
    with pytest.raises(CheckpointError, match="onnxruntime cannot load"):
        runtime_model(broken, "onnxruntime")
    broken_argv = [
        *_infer_argv(broken, "onnxruntime", files, out),
        "--config",
        str(files["config"]),
    ]
    assert _exit(infer.cli, broken_argv) == 3
    assert "cannot load this file" in _one_line(capsys.readouterr().err)
    # a config that does not fit the exported model
    argv = [*_infer_argv(files["onnx"], "onnxruntime", files, out), "--set", "model.num_classes=4"]
    assert _exit(infer.cli, argv) == 3
    assert "predicts 3 classes" in _one_line(capsys.readouterr().err)
    missing = _infer_argv(tmp_path / "none.onnx", "onnxruntime", files, out)
    assert _exit(infer.cli, missing) == EXIT_CONFIG
    assert "not found" in _one_line(capsys.readouterr().err)


def test_onnx_without_a_stored_config_needs_config(
    files: dict[str, Path], tmp_path: Path, capsys
) -> None:
    out = tmp_path / "o"
    argv = _infer_argv(files["bare"], "onnxruntime", files, out)
    assert _exit(infer.cli, argv) == EXIT_CONFIG
    assert "carries no config; pass --config" in _one_line(capsys.readouterr().err)
    assert _exit(infer.cli, [*argv, "--config", str(files["config"])]) == 0
    assert np.asarray(Image.open(out / "masks" / "a.png")).shape == (21, 30)


def test_runtime_out_of_memory_is_reported_like_pytorchs(
    files: dict[str, Path], tmp_path: Path, monkeypatch, capsys
) -> None:
    """onnxruntime's exceptions are no RuntimeError: a failed allocation must still reach
    seg-infer's "does not fit in memory" report (exit 5), other failures name the backend."""

    class OrtError(Exception):  # like onnxruntime_pybind11_state.RuntimeException
        pass

    def bad_alloc(self, x):
        raise OrtError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : std::bad_alloc")

    monkeypatch.setattr(OnnxRuntimeModel, "_run", bad_alloc)
    argv = _infer_argv(files["onnx"], "onnxruntime", files, tmp_path / "o")
    assert _exit(infer.cli, argv) == 5
    err = capsys.readouterr().err
    assert "does not fit in memory in whole mode" in err and "Traceback" not in err

    def broken(self, x):
        raise OrtError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions")

    monkeypatch.setattr(OnnxRuntimeModel, "_run", broken)
    with pytest.raises(RuntimeError, match=r"onnxruntime failed on a 1x3x8x8 input: .*INVALID"):
        runtime_model(files["onnx"], "onnxruntime")(torch.zeros(1, 3, 8, 8))
