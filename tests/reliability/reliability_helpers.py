"""Helpers of the reliability suite (imported by its tests; fixtures are in conftest.py): tiny runs, real subprocesses, small folder datasets.

Every run uses the ``reliability_tiny`` backbone (:mod:`_tinynet`) on 32x32 synthetic
scenes, so a training starts and checkpoints in seconds; the subprocess tests run the real
command-line entry points (``_tool.py``), with real signals.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _tinynet  # noqa: E402, F401  (registers the backbone in this process too)

TOOL = HERE / "_tool.py"
# 2 shared cores: one thread per process avoids oversubscription (10x slower steps)
ENV = {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def config_data(output_dir: Path, **sections: Any) -> dict[str, Any]:
    """A tiny run: 12 scenes, batch 4 (3 batches per epoch), dropout on, deterministic."""
    data: dict[str, Any] = {
        "output_dir": str(output_dir),
        "seed": 1,
        "deterministic": False,  # CPU kernels are deterministic; the exact-resume test sets it
        "model": {
            "name": "fcn",
            "backbone": "reliability_tiny",
            "num_classes": 3,
            "aux": True,
            "head_kwargs": {"channels": 8, "num_convs": 1},
            "aux_kwargs": {"channels": 8},
        },
        "data": {
            "dataset": "synthetic",
            "dataset_options": {"num_samples": 12, "size": [32, 32], "num_classes": 3},
            "train_transforms": [{"RandomFlip": {"prob": 0.5}}, {"Normalize": {}}],
            "val_transforms": [{"Normalize": {}}],
            "batch_size": 4,
            "num_workers": 0,
        },
        "optimizer": {"lr": 0.02},
        "schedule": {"min_lr": 0.0001},
        "train": {"max_iters": 6, "log_interval": 1},
        "evaluation": {"interval": 0, "batch_size": 2},
        "checkpoint": {"interval": 0, "keep_last": 3},
        "logging": {"tensorboard": False, "progress_bar": False, "num_vis": 0},
    }
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(data.get(name), dict):
            data[name] = {**data[name], **values}
        else:
            data[name] = values
    return data


def write_config(path: Path, output_dir: Path, **sections: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_data(output_dir, **sections)))
    return path


def tool_cmd(tool: str, *args: str) -> list[str]:
    return [sys.executable, str(TOOL), tool, *map(str, args)]


def run_tool(
    tool: str, *args: str, timeout: float = 120, env: dict[str, str] | None = None, **kw: Any
) -> subprocess.CompletedProcess:
    """Run a command-line tool to its end in a fresh process."""
    return subprocess.run(
        tool_cmd(tool, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **ENV, **(env or {})},
        **kw,
    )


STARTED: list[subprocess.Popen] = []  # killed after each test (conftest.py)


def start_tool(tool: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a command-line tool in a fresh process (stdout, stderr: text pipes)."""
    proc = subprocess.Popen(
        tool_cmd(tool, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **ENV, **(env or {})},
    )
    STARTED.append(proc)
    return proc


def wait_for(
    proc: subprocess.Popen, condition: Callable[[], bool], what: str, timeout: float = 120
) -> None:
    """Poll ``condition`` until true; fail (with the process's stderr) if it exits first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"process exited ({proc.returncode}) before {what}:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"process did not exit in {timeout} s:\n{err[-3000:]}")
    return proc.returncode, out, err


def logged_iterations(run: Path) -> list[int]:
    log = run / "log.jsonl"
    if not log.is_file():
        return []
    out = []
    for line in log.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("type") == "train":
            out.append(rec["iter"])
    return out


def train_losses(run: Path) -> dict[int, float]:
    """``{iteration: loss}`` as the log stands: after a ``start`` marker at iteration N, the
    records of later iterations logged before it are replaced (independent of the product's
    reader, so the test also checks it)."""
    out: dict[int, float] = {}
    for line in (run / "log.jsonl").read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("type") == "start":
            out = {k: v for k, v in out.items() if k <= rec["iter"]}
        elif rec.get("type") == "train":
            out[rec["iter"]] = rec["loss"]
    return out


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def all_finite(path: Path) -> bool:
    state = torch.load(path, weights_only=True)
    tensors = list(state["model"].values())
    for slot in (state.get("optimizer") or {}).get("state", {}).values():
        tensors += [v for v in slot.values() if isinstance(v, torch.Tensor)]
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def no_traceback(text: str) -> None:
    assert "Traceback" not in text, text[-3000:]


def folder_dataset(
    root: Path,
    *,
    train: int = 8,
    val: int = 4,
    classes: tuple[str, ...] = ("background", "thing", "stuff"),
    size: tuple[int, int] = (32, 32),
) -> Path:
    """``root/{images,masks}/{train,val}`` of random images and banded 0..K-1 masks."""
    rng = np.random.default_rng(0)
    (root / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    for split, n in (("train", train), ("val", val)):
        for i in range(n):
            img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            mask = np.zeros(size, np.uint8)
            for k in range(len(classes)):
                mask[k * size[0] // len(classes) :] = k
            for sub in ("images", "masks"):
                (root / sub / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / "images" / split / f"img{i:02d}.png")
            Image.fromarray(mask).save(root / "masks" / split / f"img{i:02d}.png")
    return root


def folder_sections(root: Path, **data: Any) -> dict[str, Any]:
    """Config sections training on :func:`folder_dataset` (no transforms but Normalize)."""
    return {
        "data": {
            "dataset": "folder",
            "root": str(root),
            "dataset_options": {},
            "train_transforms": [{"Normalize": {}}],
            "val_transforms": [{"Normalize": {}}],
            "batch_size": 4,
            "num_workers": 0,
            **data,
        }
    }


def corrupt(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[:60])  # a truncated PNG
    return path
