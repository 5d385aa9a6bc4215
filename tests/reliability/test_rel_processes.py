"""Real processes: SIGTERM, Ctrl-C, a second signal, kill -9 mid-save, a concurrent run,
full disks (RLIMIT_FSIZE) and full memory (RLIMIT_AS).

The tools run as real subprocesses (``_tool.py``) and get real signals; the limits are
set inside the child, so the faults are the operating system's, not mocks.
"""

from __future__ import annotations

import json
import re
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from reliability_helpers import (
    all_finite,
    assert_same_weights,
    config_data,
    finish,
    logged_iterations,
    no_traceback,
    run_tool,
    start_tool,
    train_losses,
    wait_for,
    write_config,
)

from seg_trainer.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from seg_trainer.config import config_from_dict
from seg_trainer.train import main as train_main

pytestmark = [
    pytest.mark.usefixtures("signal_safe"),
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and resource limits"),
]

LONG = {"max_iters": 1000, "log_interval": 1}  # runs until a signal stops it
CONSTANT = {"name": "constant"}  # the LR does not depend on max_iters: a shorter rerun matches


def seg_train(cfg: Path, *args: str) -> int:
    return train_main(["--config", str(cfg), "--cpu", *args])


def _stop_records(run: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
    return [r for r in lines if r["type"] == "stop"]


def test_sigterm_finishes_the_step_saves_and_resumes_bit_for_bit(tmp_path, capsys):
    sections = {"deterministic": True, "schedule": CONSTANT}
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "run", train=LONG, **sections)
    run = tmp_path / "run"
    proc = start_tool("seg-train", "--config", cfg, "--cpu")
    wait_for(proc, lambda: len(logged_iterations(run)) >= 2, "two logged iterations")
    proc.send_signal(signal.SIGTERM)  # cluster pre-emption, docker stop
    rc, _, err = finish(proc)
    assert rc == 75, err[-3000:]
    no_traceback(err)
    assert "SIGTERM received: finishing the current step" in err
    n = int(re.search(r"stopped after iteration (\d+) of 1000", err).group(1))
    ckpt = run / "checkpoints" / f"iter_{n:07d}.pth"
    assert str(ckpt) in err and "--resume auto" in err
    assert ckpt.is_file() and all_finite(ckpt)
    assert _stop_records(run)[-1]["iter"] == n and not (run / ".seg-train.lock").exists()

    # continue to n + 3 and compare with an uninterrupted run of n + 3 iterations
    total = n + 3
    with pytest.warns(UserWarning, match="train.max_iters"):
        assert seg_train(cfg, "--resume", "auto", "--set", f"train.max_iters={total}") == 0
    assert f"resumed from {ckpt} at iteration {n}" in capsys.readouterr().out
    ref_cfg = write_config(
        tmp_path / "ref.yaml", tmp_path / "ref", train={**LONG, "max_iters": total}, **sections
    )
    assert seg_train(ref_cfg) == 0
    name = f"checkpoints/iter_{total:07d}.pth"
    assert_same_weights(tmp_path / "ref" / name, run / name)
    assert train_losses(run) == train_losses(tmp_path / "ref")  # every iteration, bit for bit


def test_ctrl_c_saves_and_a_concurrent_run_is_refused(tmp_path, capsys):
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "run", train=LONG)
    run = tmp_path / "run"
    proc = start_tool("seg-train", "--config", cfg, "--cpu")
    wait_for(proc, lambda: len(logged_iterations(run)) >= 1, "a logged iteration")
    # a second run into the same folder while the first one holds it
    assert seg_train(cfg, "--set", "train.max_iters=2") == 6
    err = capsys.readouterr().err
    assert f"is in use by another seg-train run (pid {proc.pid}" in err
    no_traceback(err)
    assert not list(run.glob("checkpoints/*.pth"))  # the refused run wrote nothing

    proc.send_signal(signal.SIGINT)  # Ctrl-C
    rc, _, err = finish(proc)
    assert rc == 75, err[-3000:]
    assert "SIGINT received" in err and "KeyboardInterrupt" not in err
    no_traceback(err)
    n = int(re.search(r"stopped after iteration (\d+)", err).group(1))
    assert (run / "checkpoints" / f"iter_{n:07d}.pth").is_file()
    assert not (run / ".seg-train.lock").exists()


def test_a_second_sigterm_stops_at_once_and_leaves_no_half_checkpoint(tmp_path):
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "run", train=LONG)
    run, marker = tmp_path / "run", tmp_path / "saving"
    proc = start_tool(
        "seg-train", "--config", cfg, "--cpu", env={"RELIABILITY_SLOW_SAVE": str(marker)}
    )
    wait_for(proc, lambda: len(logged_iterations(run)) >= 1, "a logged iteration")
    proc.send_signal(signal.SIGTERM)
    wait_for(proc, marker.exists, "the stop checkpoint being written (and hanging)")
    proc.send_signal(signal.SIGTERM)  # the second: no waiting for the save
    rc, _, err = finish(proc, timeout=20)
    assert rc == -signal.SIGTERM, err[-3000:]
    assert "send it again to stop at once" in err
    left = list((run / "checkpoints").iterdir())
    assert left and all(p.name.startswith(".iter_") and ".tmp-" in p.name for p in left)
    assert not list(run.glob("checkpoints/*.pth"))  # only the temporary file: no half *.pth


def test_kill_9_during_a_save_then_the_next_start_cleans_up(tmp_path, capsys):
    cfg = write_config(
        tmp_path / "cfg.yaml",
        tmp_path / "run",
        train={"max_iters": 4, "log_interval": 1},
        checkpoint={"interval": 2},
    )
    run, marker = tmp_path / "run", tmp_path / "saving"
    proc = start_tool(
        "seg-train", "--config", cfg, "--cpu", env={"RELIABILITY_SLOW_SAVE": str(marker)}
    )
    wait_for(proc, marker.exists, "a checkpoint being written")
    proc.kill()  # SIGKILL in the middle of torch.save's file
    rc, _, _ = finish(proc)
    assert rc == -signal.SIGKILL
    tmp = list((run / "checkpoints").iterdir())
    assert len(tmp) == 1 and ".iter_0000002.pth.tmp-" in tmp[0].name  # no half iter_*.pth
    assert (run / ".seg-train.lock").exists()  # the dead process's lock

    assert seg_train(cfg, "--resume", "auto") == 0
    err = capsys.readouterr().err
    assert "took over the stale lock" in err and f"pid {proc.pid}" in err
    assert "removed 1 temporary file(s)" in err and "no checkpoint in" in err
    assert not list(run.rglob("*.tmp-*"))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "best.pth",
        "iter_0000002.pth",
        "iter_0000004.pth",
    ]


def test_full_disk_fails_cleanly_and_keeps_the_old_files(tmp_path):
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "run", train={"max_iters": 2})
    run = tmp_path / "run"
    assert seg_train(cfg) == 0
    config_before = (run / "config.yaml").read_bytes()
    assert len(config_before) > 1000
    # resuming rewrites config.yaml: a disk that takes only 1000 bytes per file
    more = ("--resume", "auto", "--set", "train.max_iters=4")
    proc = run_tool("seg-train", "--config", cfg, "--cpu", *more,
                    env={"RELIABILITY_FILE_LIMIT": "1000"})  # fmt: skip
    assert proc.returncode == 7, proc.stderr[-3000:]
    no_traceback(proc.stderr)
    assert f"cannot write {run / 'config.yaml'}" in proc.stderr
    assert (run / "config.yaml").read_bytes() == config_before  # atomic: intact
    # room for config.yaml and the log, not for a checkpoint (a few tens of kB)
    proc = run_tool("seg-train", "--config", cfg, "--cpu", *more,
                    env={"RELIABILITY_FILE_LIMIT": "12000"})  # fmt: skip
    assert proc.returncode == 7, proc.stderr[-3000:]
    no_traceback(proc.stderr)
    assert f"cannot write checkpoint {run / 'checkpoints' / 'iter_0000004.pth'}" in proc.stderr
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["best.pth", "iter_0000002.pth"] and all_finite(run / "checkpoints" / names[1])


@pytest.fixture(scope="module")
def wide_checkpoint(tmp_path_factory) -> Path:
    """A tiny model with 17 classes: full-size logits of a 3 MP image take 200 MB."""
    data = config_data(Path("unused"))
    data["model"]["num_classes"] = 17
    data["data"]["dataset_options"]["num_classes"] = 17
    cfg = config_from_dict(data)
    torch.manual_seed(0)
    from seg_trainer.build import build_model

    state = {"format": CHECKPOINT_FORMAT, "model": build_model(cfg).state_dict(),
             "config": cfg.to_dict(), "iteration": 0}  # fmt: skip
    return save_checkpoint(state, tmp_path_factory.mktemp("wide") / "model.pth")


def test_large_images_slide_in_bounded_memory_and_whole_mode_says_so(tmp_path, wide_checkpoint):
    h, w = 1500, 2000  # 3 MP
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 255 // (w + h)], -1)
    (tmp_path / "in").mkdir()
    Image.fromarray(img.astype(np.uint8)).save(tmp_path / "in" / "big.png")
    common = ["--checkpoint", wide_checkpoint, "--input", tmp_path / "in", "--cpu",
              "--set", "evaluation.crop_size=[256,256]", "evaluation.stride=[256,256]"]  # fmt: skip
    limit = {"RELIABILITY_MEMORY_MB": "300"}  # whole mode needs > 450 MB more, slide < 150
    whole = run_tool("seg-infer", *common, "--output", tmp_path / "w", "--mode", "whole", env=limit)
    assert whole.returncode == 5, whole.stderr[-3000:]
    no_traceback(whole.stderr)
    assert "2000x1500 image does not fit in memory in whole mode" in whole.stderr
    assert "--mode slide" in whole.stderr
    assert "wrote 0 predictions" in whole.stdout
    slide = run_tool("seg-infer", *common, "--output", tmp_path / "s", "--mode", "slide", env=limit)
    assert slide.returncode == 0, slide.stderr[-3000:]
    assert "wrote 1 predictions" in slide.stdout
    mask = np.array(Image.open(tmp_path / "s" / "masks" / "big.png"))
    assert mask.shape == (h, w) and mask.max() < 17
    overlay = Image.open(tmp_path / "s" / "overlay" / "big.png")
    assert overlay.size == (w, h)
