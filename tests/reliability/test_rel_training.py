"""seg-train in one process: start-up validation, and nothing lost when something fails.

Each test makes one fault of issue 16 and checks the outcome: the named error, its exit
code (seg_trainer.errors), no traceback, and every checkpoint still in place.
"""

from __future__ import annotations

import errno
import re
import shutil
import warnings
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability_helpers import (
    all_finite,
    config_data,
    corrupt,
    folder_dataset,
    folder_sections,
    no_traceback,
    train_losses,
    write_config,
)

from seg_trainer.checkpoint import load_checkpoint
from seg_trainer.config import ConfigError, load_config
from seg_trainer.train import main as train_main

pytestmark = pytest.mark.usefixtures("signal_safe")


def seg_train(cfg: Path, *args: str) -> int:
    return train_main(["--config", str(cfg), "--cpu", *args])


def untouched(run: Path) -> None:
    """Nothing of a run was started: no log, no checkpoint."""
    assert not (run / "log.jsonl").exists()
    assert not list(run.glob("checkpoints/*.pth"))


# ------------------------------------------------------------------ start-up validation


@pytest.mark.parametrize(
    ("override", "key", "says"),
    [
        ("model.num_classes=7", "'model.num_classes'", "has 3 classes"),  # the demo case
        ("model.num_classes=2", "'model.num_classes'", "has 3 classes"),  # IndexError before
        ("loss.ignore_index=0", "'loss.ignore_index'", "marks void pixels as 255"),
    ],
)
def test_class_count_and_ignore_index_are_checked_before_training(
    tmp_path, capsys, override, key, says
):
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "run")
    assert seg_train(cfg, "--set", override) == 2
    err = capsys.readouterr().err
    assert key in err and says in err
    no_traceback(err)
    untouched(tmp_path / "run")


def test_corrupt_first_val_image_fails_before_training(tmp_path, capsys):
    root = folder_dataset(tmp_path / "data")
    bad = corrupt(root / "images" / "val" / "img00.png")
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "run", **folder_sections(root))
    assert seg_train(cfg) == 5
    err = capsys.readouterr().err
    assert "data error" in err and str(bad) in err
    no_traceback(err)
    untouched(tmp_path / "run")


def test_free_space_is_checked_before_training(tmp_path, capsys, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 500, 500))
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "run")
    assert seg_train(cfg) == 7
    err = capsys.readouterr().err
    assert "not enough free space" in err and "checkpoints" in err
    no_traceback(err)
    untouched(tmp_path / "run")


def test_unwritable_output_dir_fails_before_training(tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "a_file" / "run")
    assert seg_train(cfg) == 7
    err = capsys.readouterr().err
    assert "cannot write into" in err and "a_file" in err
    no_traceback(err)


# ------------------------------------------------------------------ failures lose nothing


def test_final_evaluation_failure_keeps_the_final_checkpoint(tmp_path, capsys):
    # checkpoint.interval 0 (as the demo and CamVid recipes): the only checkpoint is the final
    root = folder_dataset(tmp_path / "data", val=4)
    bad = corrupt(root / "images" / "val" / "img03.png")  # not in the first val batch
    cfg = write_config(
        tmp_path / "cfg.yaml", tmp_path / "run", **folder_sections(root), train={"max_iters": 3}
    )
    assert seg_train(cfg) == 8
    err = capsys.readouterr().err
    final = tmp_path / "run" / "checkpoints" / "iter_0000003.pth"
    assert "final evaluation failed" in err and bad.name in err and str(final) in err
    no_traceback(err)
    assert load_checkpoint(final)["iteration"] == 3 and all_finite(final)


def test_corrupt_training_image_is_one_line_and_checkpointed(tmp_path, capsys):
    root = folder_dataset(tmp_path / "data", train=8)
    bad = corrupt(root / "images" / "train" / "img05.png")
    cfg = write_config(
        tmp_path / "cfg.yaml", tmp_path / "run", **folder_sections(root), train={"max_iters": 6}
    )
    assert seg_train(cfg) == 5
    err = capsys.readouterr().err
    assert "data error" in err and str(bad) in err and "training stopped at iteration" in err
    no_traceback(err)
    named = re.search(r"newest checkpoint: (\S+);", err).group(1)
    if named != "none":  # the steps done before the bad batch are saved
        assert Path(named).is_file() and all_finite(Path(named))


def test_disk_full_during_a_save_keeps_older_checkpoints(tmp_path, capsys, monkeypatch):
    cfg = write_config(
        tmp_path / "cfg.yaml",
        tmp_path / "run",
        train={"max_iters": 6},
        checkpoint={"interval": 2, "keep_last": 3},
    )
    real_save, calls = torch.save, []

    def save_until_full(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_full)
    assert seg_train(cfg) == 7
    err = capsys.readouterr().err
    assert "cannot write checkpoint" in err and "iter_0000004.pth" in err
    assert "no space left" in err
    no_traceback(err)
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["iter_0000002.pth"]  # no temp file
    assert load_checkpoint(ckpts / "iter_0000002.pth")["iteration"] == 2


def test_nan_stop_names_a_checkpoint_that_is_finite(tmp_path, capsys):
    # lr 1e6: the weights blow up (BN statistics first) before the loss does
    cfg = write_config(
        tmp_path / "cfg.yaml",
        tmp_path / "run",
        optimizer={"lr": 1e6},
        schedule={"min_lr": 0.0},
        train={"max_iters": 20},
        checkpoint={"interval": 1, "keep_last": 50},
    )
    assert seg_train(cfg) == 4
    err = capsys.readouterr().err
    no_traceback(err)
    named = re.search(r"Last good checkpoint: (\S+?)\. ", err).group(1)
    written = sorted((tmp_path / "run" / "checkpoints").glob("*.pth"))
    assert all(all_finite(p) for p in written), [p.name for p in written]
    assert named == "none" or (Path(named) in written and all_finite(Path(named)))


# ------------------------------------------------------------------ the output folder


def test_fresh_run_refuses_a_folder_with_any_checkpoint(tmp_path, capsys):
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "run", train={"max_iters": 2})
    best = tmp_path / "run" / "checkpoints" / "best.pth"
    best.parent.mkdir(parents=True)
    torch.save({"model": {}, "config": {}, "iteration": 9, "best_miou": 0.9}, best)
    before = best.read_bytes()
    assert seg_train(cfg) == 3
    err = capsys.readouterr().err
    assert "best.pth" in err and "--overwrite" in err and "--resume auto" in err
    assert seg_train(cfg, "--resume", "auto") == 3  # nothing to continue from, best.pth stays
    assert "no iter_*.pth" in capsys.readouterr().err
    assert best.read_bytes() == before
    assert seg_train(cfg, "--overwrite") == 0
    assert "removed the previous run" in capsys.readouterr().out
    assert load_checkpoint(best)["iteration"] == 2  # the new run's


def test_resume_auto_without_checkpoint_says_so_and_must_fails(tmp_path, capsys):
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "run", train={"max_iters": 2})
    assert seg_train(cfg, "--resume", "must") == 3
    err = capsys.readouterr().err
    assert "--resume must: no iter_*.pth checkpoint" in err
    no_traceback(err)
    assert seg_train(cfg, "--resume", "auto") == 0
    err = capsys.readouterr().err
    assert "--resume auto: no checkpoint in" in err and "starting a fresh run" in err


def test_log_is_append_only_with_a_resume_marker(tmp_path):
    cfg = write_config(
        tmp_path / "cfg.yaml",
        tmp_path / "run",
        train={"max_iters": 4},
        checkpoint={"interval": 2, "keep_last": 5},
    )
    run = tmp_path / "run"
    assert seg_train(cfg) == 0
    first = train_losses(run)
    (run / "checkpoints" / "iter_0000004.pth").unlink()  # as if killed before saving it
    log = run / "log.jsonl"
    with open(log, "a") as f:
        f.write('{"type": "train", "it')  # a line torn by a kill
    before = log.read_bytes()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert seg_train(cfg, "--resume", "auto") == 0
    after = train_losses(run)
    assert log.read_bytes().startswith(before)  # appended, never rewritten
    assert any("not JSON" in str(w.message) for w in caught)  # readers skip the torn line
    assert '"type": "start", "iter": 2, "resumed_from"' in log.read_text()
    assert after == first  # iterations 3 and 4 once, as recomputed (equal: exact resume)


def test_config_yaml_and_metrics_are_written_atomically(tmp_path, monkeypatch):
    from seg_trainer.errors import StorageError
    from seg_trainer.rundir import atomic_write_text

    target = atomic_write_text(tmp_path / "config.yaml", "old: 1\n")

    def no_fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr("seg_trainer.rundir.os.fsync", no_fsync)
    with pytest.raises(StorageError, match="cannot write"):
        atomic_write_text(target, "new: 2\n")
    assert target.read_text() == "old: 1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # no temp file left
    monkeypatch.undo()
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "run", train={"max_iters": 1})
    assert seg_train(cfg) == 0
    assert (tmp_path / "run" / "config.yaml").read_text() == load_config(cfg).to_yaml()
    assert not list((tmp_path / "run").glob(".*tmp-*"))


def test_debug_shows_the_traceback(tmp_path, capsys):
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "run")
    assert seg_train(cfg, "--set", "model.num_classes=7") == 2  # one line ...
    with pytest.raises(ConfigError, match=r"model\.num_classes"):  # ... or, asked, the exception
        seg_train(cfg, "--set", "model.num_classes=7", "--debug")


def test_leftover_temp_files_of_killed_saves_are_removed(tmp_path, capsys):
    # (a real SIGKILL in the middle of a save: test_rel_processes.py)
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "run", train={"max_iters": 1})
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / ".iter_0000004.pth.tmp-4242").write_bytes(b"\0" * 1000)
    (tmp_path / "run" / ".config.yaml.tmp-4242").write_text("half")
    assert seg_train(cfg) == 0
    assert "removed 2 temporary file(s)" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.tmp-*"))
    shutil.rmtree(tmp_path / "run")


def test_binary_masks_saved_as_0_255_are_flagged_at_start_up(tmp_path):
    from PIL import Image

    root = folder_dataset(tmp_path / "data", train=4, val=2, classes=("background", "object"))
    for mask in root.glob("masks/*/*.png"):  # 0 / 255 instead of 0 / 1
        Image.fromarray((np.array(Image.open(mask)) > 0).astype(np.uint8) * 255).save(mask)
    cfg = write_config(
        tmp_path / "cfg.yaml",
        tmp_path / "run",
        **folder_sections(root),
        model={**config_data(tmp_path)["model"], "num_classes": 2},
        train={"max_iters": 1},
    )
    with pytest.warns(UserWarning, match=r"only class 0 and ignore.*binary_mask: true"):
        assert seg_train(cfg) == 0
