"""Config files, checkpoint refusals and metrics: the smaller cases of issue 16."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from reliability_helpers import config_data, no_traceback, write_config

from seg_metrics import ConfusionMatrix
from seg_trainer.checkpoint import CheckpointError, load_checkpoint
from seg_trainer.config import ConfigError, load_config


def test_duplicate_yaml_keys_are_rejected(tmp_path):
    text = yaml.safe_dump(config_data(tmp_path / "run"), sort_keys=False)
    path = tmp_path / "cfg.yaml"
    path.write_text(text + "seed: 5\n")  # 'seed' a second time: YAML keeps the last silently
    with pytest.raises(ConfigError, match=r"key 'seed' appears twice in one mapping \(lines \d+"):
        load_config(path)
    path.write_text(text.replace("  lr: 0.02\n", "  lr: 0.02\n  lr: 0.5\n"))
    with pytest.raises(ConfigError, match="'lr' appears twice"):
        load_config(path)


def test_exponent_numbers_without_a_dot_are_numbers(tmp_path):
    data = config_data(tmp_path / "run")
    path = tmp_path / "cfg.yaml"
    text = yaml.safe_dump(data).replace("max_iters: 6", "max_iters: 1e3")
    text = text.replace("min_lr: 0.0001", "min_lr: 0")
    text = text.replace("lr: 0.02", "lr: 1e-45")
    text = text.replace("num_convs: 1", "num_convs: 1\n    eps: 1e-5")  # a free-form option
    path.write_text(text)
    cfg = load_config(path)
    assert cfg.train.max_iters == 1000 and isinstance(cfg.train.max_iters, int)
    assert cfg.optimizer.lr == 1e-45
    assert cfg.model.head_kwargs["eps"] == 1e-5  # a float, not the string "1e-5"
    cfg = load_config(path, ["optimizer.weight_decay=1e-4", "train.max_iters=2e1"])
    assert cfg.optimizer.weight_decay == 1e-4 and cfg.train.max_iters == 20
    with pytest.raises(ConfigError, match=r"'train.max_iters': expected int, got float 10.5"):
        load_config(path, ["train.max_iters=10.5"])


def test_empty_output_dir_is_refused(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config_data(tmp_path / "run")).replace(
        f"output_dir: {tmp_path / 'run'}", 'output_dir: ""'
    ))  # fmt: skip
    with pytest.raises(ConfigError, match="'output_dir': is empty"):  # not the current folder
        load_config(path)
    with pytest.raises(ConfigError, match="'output_dir': is empty"):
        load_config(write_config(tmp_path / "ok.yaml", tmp_path / "run"), ["output_dir=' '"])


def test_refused_checkpoint_never_advises_unsafe_loading(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"model": {}, "config": {}, "iteration": 0, "extra": np.zeros(3)}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "refused" in msg and "numpy" in msg and "seg-convert" in msg
    for advice in ("weights_only", "can still be loaded", "trust the source", "add_safe_globals"):
        assert advice not in msg, msg


def test_refused_checkpoint_is_one_line_in_seg_eval(tmp_path, capsys):
    from seg_trainer.evaluate import cli

    path = tmp_path / "pickled.pth"
    torch.save({"model": {}, "config": {}, "iteration": 0, "extra": np.zeros(3)}, path)
    with pytest.raises(SystemExit) as exc:
        cli(["--cpu", "--checkpoint", str(path)])
    assert exc.value.code == 3
    err = capsys.readouterr().err
    assert "checkpoint error" in err and "can still be loaded" not in err
    no_traceback(err)


def test_nan_logits_are_not_counted_as_class_zero():
    logits = torch.zeros(1, 3, 4, 4)
    logits[0, 1] = 5.0  # class 1 everywhere ...
    logits[0, :, 0, :2] = float("nan")  # ... but 2 pixels have no prediction
    target = torch.ones(1, 4, 4, dtype=torch.long)
    for checks in ("eager", "deferred"):
        cm = ConfusionMatrix(3, checks=checks)
        with pytest.raises(ValueError, match="NaN"):
            cm.update(logits, target)
            cm.compute()
        assert cm.matrix[1, 0] == 0  # never class 0


def test_nan_logits_stop_the_evaluation_naming_the_image():
    from accelerate import Accelerator

    from seg_trainer.evaluate import evaluate

    class NaNModel(torch.nn.Module):
        def forward(self, x):
            out = torch.zeros(x.shape[0], 3, *x.shape[-2:])
            out[:, :, :2] = float("nan")
            return {"out": out}

    data = [
        {"image": torch.zeros(3, 8, 8), "label": torch.ones(8, 8, dtype=torch.long),
         "meta": {"filename": f"img{i}.png"}}
        for i in range(2)
    ]  # fmt: skip
    from seg_data import collate

    loader = torch.utils.data.DataLoader(data, batch_size=2, collate_fn=collate)
    with pytest.raises(
        RuntimeError, match=r"NaN logits for 32 pixels \(first image: img0.png"
    ) as e:
        evaluate(NaNModel(), loader, Accelerator(cpu=True), num_classes=3, progress=False)
    assert type(e.value).__name__ == "EvaluationFailed"  # seg-eval / seg-train exit code 8


def test_int8_target_holding_minus_one_is_reported():
    pred = torch.zeros(1, 4, 4, dtype=torch.long)
    target = torch.full((1, 4, 4), -1, dtype=torch.int8)
    with pytest.raises(ValueError, match=r"target holds 16 pixels with values \[-1\]"):
        ConfusionMatrix(3).update(pred, target)
    target[0, 0, 0] = 2  # a mix of valid and invalid values
    with pytest.raises(ValueError, match=r"15 pixels with values \[-1\]"):
        ConfusionMatrix(3).update(pred, target)
