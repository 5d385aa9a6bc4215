"""Checkpoints: atomic writes, safe loading, retention and RNG state.

A training checkpoint is a plain dict saved with ``torch.save`` and loadable with
``torch.load(weights_only=True)`` (tensors, numbers, strings, lists, dicts only)::

    {"format": "seg_trainer.checkpoint/1", "iteration": int, "epoch": int,
     "model": state_dict, "optimizer": ..., "scheduler": ..., "scaler": ... | None,
     "rng": [per-process RNG states], "config": resolved config (plain dict),
     "best_miou": float | None, "metrics": {...} | None, "world_size": int,
     "ema": state_dict | None, "best_ema_miou": float | None, "ema_metrics": {...} | None}

(one schema, built by ``seg_trainer.train._checkpoint_record``; ``ema`` holds the
``train.ema`` weights, with the model's keys). Files live in ``<output_dir>/checkpoints/``:
``iter_0004000.pth`` (the last ``keep_last`` are kept), ``best.pth`` (highest val mIoU)
and, with ``train.ema``, ``best_ema.pth`` (highest val mIoU of the EMA weights, stored as
its ``model``): ``format``, ``iteration``, ``model``, ``config``, ``metrics``, ``best_miou``
and ``weights`` (``"model"`` | ``"ema"``) only, loadable as any checkpoint. Writes go to a temporary file in the same folder, are flushed to
disk and renamed over the target with ``os.replace``, so a crash (even SIGKILL)
never leaves a half-written ``*.pth`` (the next run removes the temporary file,
:func:`seg_trainer.rundir.remove_leftovers`). A failed write (disk full, quota)
raises :class:`CheckpointWriteError` naming the file and the free space, and
leaves the previous files untouched.
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from .errors import StorageError
from .rundir import human_bytes, is_temp_file, temp_path

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "CheckpointWriteError",
    "checkpoint_dir",
    "checkpoint_files",
    "find_resume_checkpoint",
    "get_rng_state",
    "iteration_checkpoints",
    "load_checkpoint",
    "non_finite",
    "prune_checkpoints",
    "save_checkpoint",
    "set_rng_state",
]

CHECKPOINT_FORMAT = "seg_trainer.checkpoint/1"
_ITER_RE = re.compile(r"^iter_(\d+)\.pth$")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt or does not fit the run; the message says which."""


class CheckpointWriteError(StorageError):
    """Writing a checkpoint failed (disk full, quota, I/O error); older files are intact."""


def checkpoint_dir(output_dir: str | Path) -> Path:
    """``<output_dir>/checkpoints``."""
    return Path(output_dir) / "checkpoints"


def _write_failed(path: Path, exc: BaseException, written: int) -> CheckpointWriteError:
    """A clear error for a failed checkpoint write (torch buries ENOSPC in enforce text)."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT) or (free is not None and free < 1 << 20):
        cause = "no space left on the device" if code != errno.EDQUOT else "disk quota exceeded"
    elif isinstance(exc, OSError) and exc.strerror:
        cause = exc.strerror
    else:  # torch's "[enforce fail at inline_container.cc:...] . unexpected pos ..."
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        cause = f"the write stopped after {human_bytes(written)} ({text.split('] ')[-1]})"
    where = f"; {human_bytes(free)} free there" if free is not None else ""
    return CheckpointWriteError(
        f"cannot write checkpoint {path}: {cause}{where}. Older checkpoints are intact. Free "
        "some space (or lower checkpoint.keep_last) and resume with --resume auto"
    )


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same folder + ``os.replace``).

    Raises:
        CheckpointWriteError: the write failed (disk full ...); ``path`` is unchanged.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(dict(state), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        written = tmp.stat().st_size if tmp.exists() else 0
        raise _write_failed(path, exc, written) from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def _load_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError

    from seg_backbones import read_state_dict

    try:
        model = read_state_dict(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    candidates = [path.with_suffix(".yaml"), path.with_suffix(".yml"), path.parent / "config.yaml"]
    cfg_path = next((c for c in candidates if c.is_file()), None)
    if cfg_path is None:
        raise CheckpointError(
            f"{path}: a .safetensors model needs its config YAML beside it "
            f"(looked for {', '.join(c.name for c in candidates)}); seg-convert writes it, "
            "or pass --config explicitly"
        )
    try:
        config = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise CheckpointError(f"{cfg_path}: not valid YAML ({exc})") from None
    return {"model": model, "config": config, "iteration": 0, "config_path": str(cfg_path)}


_GLOBAL_RE = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def _unreadable(path: Path, exc: Exception) -> CheckpointError:
    """Why ``torch.load(weights_only=True)`` failed, without torch's advice to load unsafely."""
    text = str(exc)
    found = _GLOBAL_RE.search(text)
    if "Weights only load failed" in text and found:
        what = f" (the first is {found.group(1)})"
        return CheckpointError(
            f"{path}: refused: the file holds pickled Python objects{what} besides tensors. "
            "PKUSeg loads checkpoints safely (weights only), because unpickling can run "
            "arbitrary code. A checkpoint from another library must be converted with "
            "seg-convert; a PKUSeg checkpoint never holds such objects."
        )
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if "Weights only load failed" in text:  # keep the reason, drop torch's unsafe advice
        reason = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
        first = reason.group(1).strip() if reason else "not a weights-only file"
    return CheckpointError(
        f"{path}: cannot read this checkpoint ({type(exc).__name__}: {first}). "
        "The file is truncated, corrupt or not a PKUSeg checkpoint; delete it or pass "
        "another file (--resume PATH)."
    )


def non_finite(*states: Mapping[str, Any], limit: int = 5) -> list[str]:
    """Dotted names of floating-point tensors holding NaN/inf in nested state dicts."""
    bad: list[str] = []

    def walk(value: Any, name: str) -> None:
        if len(bad) >= limit:
            return
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                bad.append(name)
        elif isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, f"{name}.{k}" if name else str(k))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{name}.{i}")

    for state in states:
        walk(state, "")
    return bad


def checkpoint_files(output_dir: str | Path) -> list[Path]:
    """Every checkpoint of a run (``iter_*.pth``, ``best.pth``, any ``*.pth``), temp files not."""
    folder = checkpoint_dir(output_dir)
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.suffix == ".pth" and p.is_file() and not is_temp_file(p)
    )


def load_checkpoint(
    path: str | Path, *, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)``.

    Accepts our ``.pth`` checkpoints (training or ``best.pth``) and ``.safetensors``
    model files written by seg-convert (their config is read from the YAML beside
    them). The result has at least ``"model"``, ``"config"`` and ``"iteration"``.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file is truncated/corrupt, not a checkpoint, or lacks keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # garbage bytes raise anything (IndexError, UnpicklingError, ...)
        raise _unreadable(path, exc) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(state).__name__}")
    missing = [k for k in ("model", "config", "iteration") if k not in state]
    if missing:
        raise CheckpointError(
            f"{path}: not a PKUSeg checkpoint (missing keys {missing}; has {sorted(state)[:10]}). "
            "Foreign checkpoints (torchvision, mmseg) must be converted first with seg-convert."
        )
    return state


def iteration_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """``[(iteration, path), ...]`` of ``iter_*.pth`` in the run's checkpoint folder, oldest first."""
    folder = checkpoint_dir(output_dir)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _ITER_RE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def find_resume_checkpoint(output_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable ``iter_*.pth`` of a run (for ``--resume auto``), loaded.

    Unreadable newer files are skipped with a warning naming them. Returns ``None``
    when the folder holds no iteration checkpoint at all.

    Raises:
        CheckpointError: checkpoints exist but none of them can be read.
    """
    candidates = iteration_checkpoints(output_dir)
    errors = []
    for _, path in reversed(candidates):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as exc:
            warnings.warn(f"--resume auto: skipping unreadable checkpoint: {exc}", stacklevel=2)
            errors.append(str(exc))
    if errors:
        raise CheckpointError(
            f"--resume auto: no readable checkpoint in {checkpoint_dir(output_dir)}:\n  "
            + "\n  ".join(errors)
        )
    return None


def prune_checkpoints(output_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` ``iter_*.pth`` files; return the deleted paths."""
    items = iteration_checkpoints(output_dir)
    doomed = [p for _, p in items[: max(len(items) - keep_last, 0)]]
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed


# ------------------------------------------------------------------------------------ RNG state


def get_rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and lists (``weights_only``-loadable)."""
    version, mt, gauss = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [version, list(mt), gauss],
        "numpy": [
            str(np_state[0]),
            torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore states saved by :func:`get_rng_state`."""
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(int(x) for x in mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
