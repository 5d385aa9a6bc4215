"""Inference backends: exported ONNX files run by onnxruntime or OpenVINO, as PyTorch modules.

``seg-infer`` and ``seg-eval`` run the PyTorch model through
:func:`seg_trainer.inference.predict_logits`; a backend module takes its place and
nothing else changes: the same ``data.val_transforms`` prepare the image (the exported
graph takes the *normalised* ``N x 3 x H x W`` float image, like the PyTorch model), and
whole, sliding-window and multi-scale + flip inference call it exactly as they call the
model (it returns the ``out`` logits ``N x K x H x W`` as a CPU float tensor on the
images' device).

```python
from seg_trainer.backends import runtime_model, exported_config
model = runtime_model("model.onnx", "onnxruntime")     # or "openvino"
logits = predict_logits(model, images, mode="slide", crop_size=..., stride=..., num_classes=K)
cfg_dict = exported_config("model.onnx")    # the trainer config seg-export stored, or None
```

The ONNX file's metadata (``seg_heads.export.read_onnx_metadata``) carries the class names,
palette, mean/std and colour order, so :func:`normalize_image` prepares a picture without
any config. onnxruntime and OpenVINO are optional (``pip install seg-trainer[deploy]``);
a missing one raises :class:`BackendUnavailable` naming the package (``seg-infer`` /
``seg-eval`` report it as one line with exit code 9, :mod:`seg_trainer.errors`).

The command-line tools load the model of ``--backend`` with :func:`load_inference_model`:
``torch`` builds the config's model and loads the checkpoint strictly, the runtimes open
the ``.onnx`` file; with both, the config is the one stored in the file (``--config``
replaces it, ``--set`` edits it) and the rest of the code path is the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from seg_trainer.checkpoint import CheckpointError
from seg_trainer.errors import MissingDependency

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "NotAnExportedModel",
    "OnnxRuntimeModel",
    "OpenVINOModel",
    "available_backends",
    "exported_config",
    "load_inference_model",
    "normalize_image",
    "runtime_model",
    "stored_config",
]

BACKENDS = ("torch", "onnxruntime", "openvino")
_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


class BackendUnavailable(MissingDependency):
    """The runtime of a backend is not installed; the message says what to install."""


class NotAnExportedModel(CheckpointError, ValueError):
    """A runtime backend was given something other than an ONNX file (or the reverse), or
    the runtime cannot load the file; the message names the file and the fix."""


def _require(backend: str) -> Any:
    import importlib

    try:
        return importlib.import_module(_PACKAGES[backend])
    except ImportError as exc:
        raise BackendUnavailable(
            f"--backend {backend} needs the {_PACKAGES[backend]!r} package: "
            "pip install 'seg-trainer[deploy]'"
        ) from exc


def available_backends() -> list[str]:
    """The backends whose runtime can be imported here (``"torch"`` always)."""
    import importlib.util

    return ["torch"] + [b for b, pkg in _PACKAGES.items() if importlib.util.find_spec(pkg)]


def _metadata(path: Path) -> dict[str, Any]:
    try:
        from seg_heads.export import read_onnx_metadata
    except ImportError:  # pragma: no cover - onnx missing: metadata unknown
        return {}
    try:
        return read_onnx_metadata(path)
    except Exception:  # the onnx package could not parse it: the runtime will say why
        return {}


def _check_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model not found: {path}")
    if path.suffix.lower() != ".onnx":
        raise NotAnExportedModel(
            f"{path}: the onnxruntime / openvino backends run ONNX files (.onnx, written by "
            "seg-export --format onnx); use --backend torch for checkpoints"
        )
    return path


def _unloadable(path: Path, backend: str, exc: BaseException) -> NotAnExportedModel:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return NotAnExportedModel(
        f"{path}: {backend} cannot load this file ({first}); is it a complete ONNX file "
        "written by seg-export --format onnx?"
    )


#: how onnxruntime / OpenVINO word a failed allocation (seg-infer reports MemoryError as
#: "does not fit in memory, use slide mode", as it does for PyTorch)
_OUT_OF_MEMORY = ("bad_alloc", "bad allocation", "failed to allocate", "out of memory")


class _RuntimeModel(nn.Module):
    """Common part: metadata, the tensor <-> array conversion, no parameters.

    A failure of the runtime is a ``RuntimeError`` naming the backend and the input shape;
    a failed allocation a ``MemoryError`` (what PyTorch's CPU allocator raises).
    """

    backend = ""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = _check_file(path)
        self.metadata: dict[str, Any] = _metadata(self.path)
        self.num_classes: int | None = self.metadata.get("num_classes")

    def _run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected N x 3 x H x W images, got {tuple(images.shape)}")
        x = np.ascontiguousarray(images.detach().to("cpu", torch.float32).numpy())
        try:
            result = self._run(x)
        except MemoryError:
            raise
        except Exception as exc:  # the runtimes' own types, none of them a RuntimeError
            shape = "x".join(map(str, x.shape))
            text = str(exc).strip()
            first = text.splitlines()[0] if text else type(exc).__name__
            if any(sign in text.lower() for sign in _OUT_OF_MEMORY):
                raise MemoryError(
                    f"{self.backend} ran out of memory on a {shape} input ({first})"
                ) from exc
            raise RuntimeError(f"{self.backend} failed on a {shape} input: {first}") from exc
        out = torch.from_numpy(np.asarray(result, dtype=np.float32))
        return out.to(images.device)

    def extra_repr(self) -> str:
        return f"{self.path}"


class OnnxRuntimeModel(_RuntimeModel):
    """An ONNX file run by onnxruntime (CPU by default).

    Args:
        path: the ``.onnx`` file (input ``input``, output ``out``, as ``seg-export`` writes).
        threads: intra-op threads (default: onnxruntime's, one per physical core).
        providers: execution providers, e.g. ``["CUDAExecutionProvider",
            "CPUExecutionProvider"]`` (default: CPU).
    """

    backend = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        *,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
    ) -> None:
        super().__init__(path)
        ort = _require("onnxruntime")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(
                str(self.path), options, providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as exc:  # onnxruntime's own exception types
            raise _unloadable(self.path, "onnxruntime", exc) from exc
        self.input_name = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        self.output_name = "out" if "out" in outputs else outputs[0]

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: x})[0]


class OpenVINOModel(_RuntimeModel):
    """An ONNX file compiled and run by OpenVINO (``device="CPU"``; dynamic shapes kept).

    Args:
        path: the ``.onnx`` file.
        device: an OpenVINO device name (``"CPU"``, ``"GPU"``, ``"AUTO"``).
        threads: ``INFERENCE_NUM_THREADS`` (default: OpenVINO's).
        hint: ``PERFORMANCE_HINT`` (``"LATENCY"``: one image at a time, as seg-infer runs).
        precision: ``INFERENCE_PRECISION_HINT``; ``"f32"`` (default) keeps PyTorch's results.
            OpenVINO's own CPU default is bf16 on CPUs with AMX / AVX512-BF16 (logits then
            differ by ~1e-2 relative); pass ``"bf16"`` for that speed, ``None`` for the default.
    """

    backend = "openvino"

    def __init__(
        self,
        path: str | Path,
        *,
        device: str = "CPU",
        threads: int | None = None,
        hint: str = "LATENCY",
        precision: str | None = "f32",
    ) -> None:
        super().__init__(path)
        ov = _require("openvino")
        core = ov.Core()
        config: dict[str, Any] = {"PERFORMANCE_HINT": hint}
        if precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self.compiled = core.compile_model(core.read_model(str(self.path)), device, config)
        except Exception as exc:  # OpenVINO raises RuntimeError for everything
            raise _unloadable(self.path, "openvino", exc) from exc
        outputs = self.compiled.outputs
        names = [o.get_any_name() for o in outputs]
        self.output = outputs[names.index("out")] if "out" in names else outputs[0]
        self.request = self.compiled.create_infer_request()

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.request.infer([x])[self.output]


def runtime_model(
    path: str | Path, backend: str, *, threads: int | None = None, **options: Any
) -> nn.Module:
    """The exported ``path`` as a module for ``backend`` (``"onnxruntime"`` | ``"openvino"``).

    The module maps normalised ``N x 3 x H x W`` images to ``N x K x H x W`` logits and can
    be passed wherever ``seg-infer`` / ``seg-eval`` pass the PyTorch model. ``"torch"`` is
    not handled here: checkpoints are loaded by ``seg_trainer.evaluate.load_model``.
    """
    if backend == "onnxruntime":
        return OnnxRuntimeModel(path, threads=threads, **options)
    if backend == "openvino":
        return OpenVINOModel(path, threads=threads, **options)
    if backend == "torch":
        raise ValueError("backend 'torch' loads checkpoints with seg_trainer.evaluate.load_model")
    raise ValueError(f"unknown backend {backend!r}; valid: {list(BACKENDS)}")


def exported_config(path: str | Path) -> dict[str, Any] | None:
    """The resolved trainer config ``seg-export`` stored in an ONNX file, or None."""
    config = _metadata(_check_file(path)).get("seg_trainer.config")
    return config if isinstance(config, dict) else None


def normalize_image(image: np.ndarray, metadata: Mapping[str, Any]) -> Tensor:
    """``1 x 3 x H x W`` input of an exported model from an RGB ``H x W x 3`` uint8 picture.

    Uses the metadata's ``mean``/``std`` (0-255 scale, listed in ``color_order``) and
    ``color_order`` (``"BGR"`` flips the channels first), as ``seg_data``'s ``Normalize``.
    """
    if "mean" not in metadata or "std" not in metadata:
        raise KeyError(
            "the exported model's metadata has no mean/std; pass the image through the "
            "trainer's data.val_transforms instead"
        )
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 RGB image, got shape {img.shape}")
    if str(metadata.get("color_order", "RGB")).upper() == "BGR":
        img = img[:, :, ::-1]
    mean = np.asarray(metadata["mean"], dtype=np.float32)
    inv_std = 1.0 / np.asarray(metadata["std"], dtype=np.float32)  # as seg_data's Normalize
    img = (img - mean) * inv_std
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]


def stored_config(path: str | Path, backend: str) -> tuple[dict[str, Any] | None, Any]:
    """The trainer config stored with the model of ``backend``, and the loaded checkpoint.

    ``"torch"``: the checkpoint's ``config`` (and the checkpoint, loaded once); the runtimes:
    the config ``seg-export`` wrote into the ONNX metadata (checkpoint ``None``).

    Raises:
        FileNotFoundError: no such file.
        NotAnExportedModel: an ``.onnx`` file with ``backend="torch"``, or a checkpoint
            with a runtime backend (a :class:`~seg_trainer.checkpoint.CheckpointError`).
        CheckpointError: the checkpoint is corrupt.
    """
    from seg_trainer.checkpoint import load_checkpoint

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {list(BACKENDS)}")
    if backend == "torch":
        if Path(path).suffix.lower() == ".onnx":
            raise NotAnExportedModel(
                f"{path} is an exported ONNX model: run it with --backend onnxruntime (or "
                "openvino); --backend torch loads checkpoints (.pth, .safetensors)"
            )
        checkpoint = load_checkpoint(path)
        stored = checkpoint.get("config")
        return (stored if isinstance(stored, dict) else None), checkpoint
    return exported_config(path), None


def load_inference_model(
    cfg: Any,
    path: str | Path,
    backend: str,
    *,
    checkpoint: Mapping[str, Any] | None = None,
    threads: int | None = None,
) -> nn.Module:
    """The eval-mode model ``seg-infer`` / ``seg-eval`` run for ``backend``.

    ``"torch"``: the model of ``cfg`` with ``checkpoint`` (loaded from ``path`` when not
    given) loaded strictly (``seg_trainer.evaluate.load_model``); the runtimes:
    :func:`runtime_model`, whose number of classes must equal ``cfg.model.num_classes``.

    Raises:
        BackendUnavailable: the runtime is not installed.
        CheckpointError: the file does not fit ``cfg`` or cannot be loaded.
    """
    if backend == "torch":
        from seg_trainer.checkpoint import load_checkpoint
        from seg_trainer.evaluate import load_model

        state = dict(checkpoint) if checkpoint is not None else load_checkpoint(path)
        return load_model(cfg, state, path).eval()
    model = runtime_model(path, backend, threads=threads)
    k = model.num_classes
    if k is not None and k != cfg.model.num_classes:
        raise CheckpointError(
            f"{path} predicts {k} classes but the config has model.num_classes "
            f"{cfg.model.num_classes}; pass the config the model was exported with "
            f"(or none: the file carries it)"
        )
    return model.eval()
