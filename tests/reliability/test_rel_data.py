"""Data: the dataset doctor, binary masks, the one image reader, seg-infer and seg-eval inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from reliability_helpers import config_data, corrupt, folder_dataset, no_traceback

from seg_data import DatasetError, check_dataset, create_dataset, read_image
from seg_trainer.build import build_model
from seg_trainer.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from seg_trainer.config import config_from_dict


def _masks(root: Path, values: list[np.ndarray]) -> Path:
    """A folder dataset (split=None) of random images with the given masks."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, mask in enumerate(values):
        img = rng.integers(0, 256, (*mask.shape, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "images" / f"m{i}.png")
        Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"m{i}.png")
    return root


def _binary(h: int = 16, w: int = 16) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[4:12, 4:12] = 255
    return m


# ------------------------------------------------------------------------- the doctor


def test_doctor_warns_about_binary_masks_saved_as_0_255(tmp_path):
    root = _masks(tmp_path / "ds", [_binary(), _binary()])
    (root / "classes.txt").write_text("background\nforeground\n")
    report = check_dataset("folder", root, split=None)
    text = "\n".join(report.warnings)
    assert report.ok  # labels are valid, just wrong: a warning, not an error
    assert "only class 0 and ignore" in text and "binary_mask: true" in text
    assert "reduce_zero_label is NOT the fix" in text
    fixed = check_dataset("folder", root, split=None, binary_mask=True)
    assert not fixed.warnings and fixed.pixel_counts.tolist() == [2 * 192, 2 * 64]


def test_doctor_warns_about_empty_classes_and_a_mostly_ignore_split(tmp_path):
    mostly_void = np.full((16, 16), 255, np.uint8)
    mostly_void[:4] = 0
    mostly_void[4:6] = 1
    root = _masks(tmp_path / "ds", [mostly_void, mostly_void])
    (root / "classes.txt").write_text("road\ncar\nbike\n")
    text = "\n".join(check_dataset("folder", root, split=None).warnings)
    assert "1 class(es) have no pixel: 2 'bike'" in text
    assert "62% of the pixels are ignore" in text


def test_folder_dataset_reads_binary_masks_with_the_explicit_option(tmp_path):
    root = _masks(tmp_path / "ds", [_binary()])
    ds = create_dataset("folder", root=root, split=None, binary_mask=True)
    assert ds.classes == ("background", "foreground")
    label = ds[0]["label"]
    assert sorted(label.unique().tolist()) == [0, 1] and int((label == 1).sum()) == 64
    with pytest.raises(ValueError, match="binary_mask"):
        create_dataset("folder", root=root, split=None, binary_mask=True, classes=["a", "b", "c"])


# ------------------------------------------------------------------------- image reading


def _exif_rotated(path: Path, upright: np.ndarray) -> None:
    """Store ``upright`` rotated by 90 degrees with EXIF orientation 6 (as phones do)."""
    stored = np.rot90(upright, k=1)  # orientation 6: rotate 90 CW to display
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(stored)).save(path, exif=exif, quality=100)


def test_exif_orientation_is_applied_for_training_and_inference(tmp_path):
    upright = np.zeros((20, 30, 3), np.uint8)
    upright[:, :15] = 200  # left half bright
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    _exif_rotated(root / "images" / "photo.jpg", upright)
    mask = np.zeros((20, 30), np.uint8)
    mask[:, :15] = 1  # drawn on the upright photo, as annotation tools show it
    Image.fromarray(mask).save(root / "masks" / "photo.png")
    (root / "classes.txt").write_text("dark\nbright\n")
    img = read_image(root / "images" / "photo.jpg")
    assert img.shape == (20, 30, 3) and img[:, :15].mean() > 150 and img[:, 15:].mean() < 50
    sample = create_dataset("folder", root=root, split=None)[0]  # sizes agree: no LabelError
    assert tuple(sample["image"].shape[-2:]) == (20, 30)


def test_16_bit_images_are_scaled_and_float_images_refused_by_name(tmp_path):
    rgb8 = np.random.default_rng(0).integers(0, 256, (12, 10), dtype=np.uint8)
    Image.fromarray(rgb8.astype(np.uint16) * 257).save(tmp_path / "deep.png")  # I;16
    got = read_image(tmp_path / "deep.png")
    assert got.dtype == np.uint8 and np.array_equal(got[..., 0], rgb8)  # not clipped at 255
    Image.fromarray(np.random.rand(12, 10).astype(np.float32)).save(tmp_path / "depth.tif")
    with pytest.raises(DatasetError, match=r"depth.tif is a 32-bit float image"):
        read_image(tmp_path / "depth.tif")


# ------------------------------------------------------------------------- seg-infer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    cfg = config_from_dict(config_data(Path("unused")))
    torch.manual_seed(0)
    model = build_model(cfg)
    path = tmp_path_factory.mktemp("ckpt") / "model.pth"
    state = {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "config": cfg.to_dict(),
             "iteration": 0}  # fmt: skip
    return save_checkpoint(state, path)


def _infer(checkpoint: Path, inputs: Path, out: Path, *extra: str) -> int:
    from seg_trainer.infer import cli

    with pytest.raises(SystemExit) as exc:
        cli(["--checkpoint", str(checkpoint), "--input", str(inputs), "--output", str(out),
             "--cpu", *extra])  # fmt: skip
    return exc.value.code


def test_seg_infer_outputs_never_collide_and_odd_images_are_handled(tmp_path, checkpoint, capsys):
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(photo).save(src / "a.png")
    Image.fromarray(photo).save(src / "a.jpg", quality=95)
    Image.fromarray(photo).save(src / "a_1.png")  # the name a numbered rename would take
    Image.fromarray(photo[..., 0].astype(np.uint16) * 257).save(src / "deep.png")
    Image.fromarray(photo[..., 0]).convert("RGB").save(src / "grey8.png")
    _exif_rotated(src / "rot.jpg", photo)
    Image.fromarray(np.random.rand(8, 8).astype(np.float32)).save(src / "depth.tif")
    out = tmp_path / "out"
    assert _infer(checkpoint, src, out) == 5  # depth.tif failed: the data-error code
    captured = capsys.readouterr()
    assert "wrote 6 predictions" in captured.out  # the count is the files written
    assert "depth.tif is a 32-bit float image" in captured.err
    no_traceback(captured.err)
    masks = sorted(p.name for p in (out / "masks").iterdir())
    assert masks == ["a_1.png", "a_jpg.png", "a_png.png", "deep.png", "grey8.png", "rot.png"]
    assert "a.jpg -> a_jpg.png" in captured.out
    for sub in ("color", "overlay"):
        assert len(list((out / sub).iterdir())) == 6
    deep = np.array(Image.open(out / "masks" / "deep.png"))
    assert np.array_equal(deep, np.array(Image.open(out / "masks" / "grey8.png")))
    assert np.array(Image.open(out / "masks" / "rot.png")).shape == (24, 20)  # upright


def test_slide_mode_in_bands_equals_the_full_slide(tmp_path, checkpoint, capsys):
    from seg_trainer.inference import predict_logits, slide_labels

    model = build_model(config_from_dict(config_data(Path("unused")))).eval()
    x = torch.randn(1, 3, 70, 90)
    full = predict_logits(model, x, mode="slide", crop_size=[32, 32], stride=[20, 24],
                          num_classes=3).argmax(1)  # fmt: skip
    banded = slide_labels(model, x, crop_size=[32, 32], stride=[20, 24], num_classes=3)
    assert torch.equal(full.to(banded.dtype), banded)


# ------------------------------------------------------------------------- seg-eval


def _eval(args: list[str]) -> int:
    from seg_trainer.evaluate import cli

    with pytest.raises(SystemExit) as exc:
        cli(["--cpu", "--no-progress", *args])
    return exc.value.code


def test_seg_eval_state_dict_shape_mismatch_is_one_line(tmp_path, checkpoint, capsys):
    overrides = ["model.num_classes=4", "data.dataset_options.num_classes=4",
                 f"output_dir={tmp_path}"]  # fmt: skip
    assert _eval(["--checkpoint", str(checkpoint), "--set", *overrides]) == 3
    err = capsys.readouterr().err
    assert "shape mismatches" in err and "conv_seg" in err
    no_traceback(err)


def test_seg_eval_data_errors_are_one_line(tmp_path, checkpoint, capsys):
    root = folder_dataset(tmp_path / "data", train=1, val=2)
    bad = corrupt(root / "images" / "val" / "img01.png")
    overrides = ["data.dataset=folder", f"data.root={root}", "data.dataset_options={}",
                 f"output_dir={tmp_path / 'eval'}"]  # fmt: skip
    assert _eval(["--checkpoint", str(checkpoint), "--set", *overrides]) == 5
    err = capsys.readouterr().err
    assert "data error" in err and str(bad) in err
    no_traceback(err)
    # a dataset whose class count differs from the model's: named before evaluating
    (root / "classes.txt").write_text("a\nb\nc\nd\n")
    assert _eval(["--checkpoint", str(checkpoint), "--set", *overrides]) == 2
    err = capsys.readouterr().err
    assert "'model.num_classes': 3, but dataset 'folder' (val split) has 4 classes" in err
