"""Checkpoints: atomic write, weights_only loading, clear errors, retention, RNG state."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

import seg_trainer.checkpoint as ck
from seg_trainer.checkpoint import (
    CheckpointError,
    find_resume_checkpoint,
    get_rng_state,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    set_rng_state,
)


def state(it=3):
    return {
        "model": {"w": torch.arange(6.0)},
        "config": {"seed": 0},
        "iteration": it,
        "rng": [get_rng_state()],
    }


def test_round_trip_with_weights_only(tmp_path):
    path = save_checkpoint(state(), tmp_path / "c" / "iter_0000003.pth")
    raw = torch.load(path, weights_only=True)  # RNG states are tensors/lists, not numpy objects
    assert raw["iteration"] == 3
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], torch.arange(6.0))
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_write_is_atomic_when_saving_fails(tmp_path, monkeypatch):
    path = save_checkpoint(state(1), tmp_path / "iter_0000001.pth")
    before = path.read_bytes()

    def exploding_save(obj, f):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(ck.torch, "save", exploding_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(state(2), path)
    assert path.read_bytes() == before  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # temp file removed


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_file_is_a_clear_error(tmp_path, damage):
    path = save_checkpoint(state(), tmp_path / "iter_0000003.pth")
    data = path.read_bytes()
    path.write_bytes(
        {"truncate": data[: len(data) // 2], "garbage": os.urandom(256), "empty": b""}[damage]
    )
    with pytest.raises(CheckpointError, match=r"iter_0000003.pth: cannot read this checkpoint"):
        load_checkpoint(path)


def test_foreign_or_missing_file(tmp_path):
    path = tmp_path / "foreign.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match=r"missing keys.*seg-convert"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match=r"nothing\.pth"):
        load_checkpoint(tmp_path / "nothing.pth")


def test_safetensors_model_with_yaml_beside_it(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="config YAML beside it"):
        load_checkpoint(tmp_path / "model.safetensors")
    (tmp_path / "model.yaml").write_text("model:\n  name: pspnet\n")
    loaded = load_checkpoint(tmp_path / "model.safetensors")
    assert loaded["config"] == {"model": {"name": "pspnet"}}
    assert torch.equal(loaded["model"]["w"], torch.ones(2))


def test_resume_auto_takes_newest_readable_and_prunes(tmp_path):
    folder = tmp_path / "checkpoints"
    for it in (2, 4, 6):
        save_checkpoint(state(it), folder / f"iter_{it:07d}.pth")
    (folder / ".iter_0000008.pth.tmp-123").write_bytes(b"half")  # a killed write: ignored
    path, loaded = find_resume_checkpoint(tmp_path)
    assert path.name == "iter_0000006.pth" and loaded["iteration"] == 6
    (folder / "iter_0000006.pth").write_bytes(b"broken")
    with pytest.warns(UserWarning, match="iter_0000006.pth"):
        path, loaded = find_resume_checkpoint(tmp_path)
    assert loaded["iteration"] == 4
    assert [p.name for p in prune_checkpoints(tmp_path, keep_last=1)] == [
        "iter_0000002.pth",
        "iter_0000004.pth",
    ]
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="no readable checkpoint"):
        find_resume_checkpoint(tmp_path)
    assert find_resume_checkpoint(tmp_path / "empty") is None


def test_rng_state_restores_every_generator(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    path = save_checkpoint(state(), tmp_path / "iter_0000003.pth")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(load_checkpoint(path)["rng"][0])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
