"""Config parsing: typed sections, errors that name the key, --set overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from seg_trainer.config import Config, ConfigError, apply_overrides, config_from_dict, load_config

MINIMAL = {
    "output_dir": "runs/x",
    "model": {"name": "pspnet", "backbone": "resnet18_deep", "num_classes": 3},
    "data": {"dataset": "synthetic"},
    "train": {"max_iters": 10},
}


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def with_(section: str, **values) -> dict:
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    data.setdefault(section, {}).update(values)
    return data


def test_minimal_config_fills_defaults(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    assert isinstance(cfg, Config)
    assert cfg.model.num_classes == 3
    assert cfg.optimizer.name == "sgd" and cfg.schedule.power == 0.9
    assert cfg.loss.aux_weight == 0.4 and cfg.loss.terms == {"out": [{"name": "ce", "weight": 1.0}]}
    assert cfg.loss.ignore_index == 255  # the dataset's, never restated in the config


def test_to_dict_round_trips(tmp_path):
    cfg = load_config(write(tmp_path, with_("optimizer", lr=0.02)))
    again = config_from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg
    assert again.to_dict()["optimizer"]["lr"] == 0.02


@pytest.mark.parametrize(
    ("data", "key", "suggestion"),
    [
        ({**MINIMAL, "optimzer": {"lr": 0.1}}, "'optimzer'", "'optimizer'"),
        (with_("optimizer", weight_decy=0.1), "'optimizer.weight_decy'", "'weight_decay'"),
        (with_("train", max_iter=5), "'train.max_iter'", "'max_iters'"),
    ],
)
def test_unknown_key_names_it_and_suggests(tmp_path, data, key, suggestion):
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert key in msg and f"did you mean {suggestion}" in msg and str(path) in msg


@pytest.mark.parametrize(
    ("data", "key", "words"),
    [
        (with_("optimizer", lr="fast"), "optimizer.lr", "expected float"),
        (with_("train", max_iters=1.5), "train.max_iters", "expected int"),
        (with_("model", aux="yes"), "model.aux", "true or false"),
        (with_("evaluation", crop_size=[1, "a"]), "evaluation.crop_size.1", "expected int"),
        (
            with_("data", train_transforms={"RandomFlip": {}}),
            "data.train_transforms",
            "expected list",
        ),
    ],
)
def test_wrong_type_names_the_key(tmp_path, data, key, words):
    with pytest.raises(ConfigError, match=words) as info:
        load_config(write(tmp_path, data))
    assert f"'{key}'" in str(info.value)


def test_missing_required_value(tmp_path):
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    del data["model"]["num_classes"]
    with pytest.raises(ConfigError, match=r"'model.num_classes': missing required"):
        load_config(write(tmp_path, data))
    del data["output_dir"]
    with pytest.raises(ConfigError, match=r"'output_dir': missing required"):
        load_config(write(tmp_path, data))


@pytest.mark.parametrize(
    ("data", "key", "words"),
    [
        (with_("evaluation", mode="slid"), "evaluation.mode", "did you mean 'slide'"),
        (with_("evaluation", mode="slide"), "evaluation.mode", "needs evaluation.crop_size"),
        (with_("train", mixed_precision="fp8"), "train.mixed_precision", "not one of"),
        (with_("optimizer", lr=-1.0), "optimizer.lr", "must be > 0"),
        (with_("loss", class_weights=[1.0, 2.0]), "loss.class_weights", "model.num_classes is 3"),
        (with_("schedule", min_lr=1.0), "schedule.min_lr", "above optimizer.lr"),
        (with_("model", output_stride=4), "model.output_stride", "not one of"),
        (with_("schedule", name="cosin"), "schedule.name", "did you mean 'cosine'"),
        (with_("schedule", name="step"), "schedule.milestones", "'step' needs a list"),
        (
            with_("schedule", name="step", milestones=[50, 20]),
            "schedule.milestones",
            "increasing",
        ),
        (with_("schedule", milestones=[5]), "schedule.milestones", "'step' only"),
        (
            with_("schedule", name="step", milestones=[5], gamma=2.0),
            "schedule.gamma",
            "must be in",
        ),
        (with_("optimizer", layer_decay=1.5), "optimizer.layer_decay", "must be in"),
        (with_("optimizer", layer_decay_type="block"), "optimizer.layer_decay_type", "not one of"),
    ],
)
def test_invalid_values_name_the_key(tmp_path, data, key, words):
    with pytest.raises(ConfigError, match=words) as info:
        load_config(write(tmp_path, data))
    assert f"'{key}'" in str(info.value)


def test_yaml_scientific_notation_without_dot_is_a_float(tmp_path):
    # YAML 1.1 (PyYAML) reads "1e-4" as a string; a float field accepts it.
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(MINIMAL) + "schedule:\n  min_lr: 1e-4\n")
    assert load_config(path).schedule.min_lr == pytest.approx(1e-4)


def test_overrides_set_nested_values_parsed_as_yaml(tmp_path):
    data = with_(
        "data", train_transforms=[{"RandomFlip": {"prob": 0.5}}, {"RandomCrop": {"size": [8, 8]}}]
    )
    cfg = load_config(
        write(tmp_path, data),
        [
            "optimizer.lr=0.02",
            "data.root=/data/cityscapes",
            "model.backbone_kwargs.contract_dilation=false",
            "data.train_transforms.1.RandomCrop.size=[16, 24]",
            "evaluation.scales=[0.5, 1.0]",
            "loss.class_weights=null",
        ],
    )
    assert cfg.optimizer.lr == 0.02
    assert cfg.data.root == "/data/cityscapes"
    assert cfg.model.backbone_kwargs == {"contract_dilation": False}
    assert cfg.data.train_transforms[1] == {"RandomCrop": {"size": [16, 24]}}
    assert cfg.evaluation.scales == [0.5, 1.0]


def test_override_of_unknown_key_is_reported_like_the_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, MINIMAL), ["optimizer.lrr=0.1"])
    msg = str(info.value)
    assert "'optimizer.lrr'" in msg and "did you mean 'lr'" in msg and "--set" in msg


@pytest.mark.parametrize(
    ("item", "words"),
    [
        ("optimizer.lr", "KEY=VALUE"),
        ("optimizer..lr=1", "KEY=VALUE"),
        ("optimizer.lr=[1,", "not valid YAML"),
        ("optimizer.lr.x=1", "not a mapping"),
        ("data.train_transforms.5.Pad=1", "indexes a list"),
    ],
)
def test_bad_overrides_explain(item, words):
    data = {"optimizer": {"lr": 0.1}, "data": {"train_transforms": [{"RandomFlip": {}}]}}
    with pytest.raises(ConfigError, match=words):
        apply_overrides(data, [item])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(top)


def test_schedule_and_layer_decay_keys(tmp_path):
    data = with_("schedule", name="step", milestones=[4, 8], gamma=0.5)
    data["optimizer"] = {"layer_decay": 0.9, "layer_decay_type": "stage_wise"}
    cfg = load_config(write(tmp_path, data))
    assert cfg.schedule.milestones == [4, 8] and cfg.schedule.gamma == 0.5
    assert cfg.optimizer.layer_decay == 0.9 and cfg.optimizer.layer_decay_num_layers is None
    assert config_from_dict(yaml.safe_load(cfg.to_yaml())) == cfg
