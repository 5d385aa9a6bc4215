"""The dataset doctor: every problem reported at once, table printed, exit status."""

from __future__ import annotations

import numpy as np

from seg_data import check_dataset
from seg_data.__main__ import main


def _broken_folder(tmp_path, layouts):
    root = layouts.folder(tmp_path, n=6)
    (root / "masks" / "img0.png").unlink()  # missing partner
    img1 = root / "images" / "img1.jpg"
    img1.write_bytes(img1.read_bytes()[:100])  # truncated
    layouts.save_image(root / "images" / "img2.jpg", 2, size=(30, 30))  # size mismatch
    layouts.save_label(root / "masks" / "img3.png", layouts.label_from([0, 9, 17], 3))  # values
    layouts.save_label(root / "masks" / "img4.png", np.full((24, 32), 255))  # all ignore
    layouts.save_label(root / "masks" / "orphan.png", np.zeros((24, 32)))  # label without image
    return root


def test_doctor_reports_every_problem(tmp_path, layouts):
    root = _broken_folder(tmp_path, layouts)
    report = check_dataset("folder", root, split=None)
    assert not report.ok
    text = "\n".join(report.errors)
    assert "img0.jpg has no label" in text
    assert "cannot decode image" in text and "img1.jpg" in text
    assert "size mismatch" in text and "img2.jpg" in text
    assert "img3.png holds values [9, 17]" in text
    assert len(report.errors) == 4
    assert len(report.warnings) == 3
    assert "orphan.png has no image" in report.warnings[0]
    assert "all pixels are ignore" in report.warnings[1]
    assert "of the pixels are ignore" in report.warnings[2]  # one of the two checked labels
    assert report.num_pairs == 5 and report.num_checked == 2
    assert report.pixel_counts.tolist()[0] > 0 and len(report.pixel_counts) == 3


def test_doctor_cli_exit_codes_and_table(tmp_path, layouts, capsys):
    code = main(
        [
            "check",
            "--dataset",
            "camvid",
            "--root",
            str(layouts.camvid(tmp_path / "cv")),
            "--split",
            "train",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "pavement" in out and "ignore (255)" in out and "OK: 0 error(s)" in out
    bad = _broken_folder(tmp_path / "bad", layouts)
    code = main(["check", "--dataset", "folder", "--root", str(bad), "--split", "all"])
    out = capsys.readouterr().out
    assert code == 1 and "FAILED: 4 error(s), 3 warning(s)" in out and "ERROR: " in out


def test_doctor_reports_layout_errors_without_raising(tmp_path):
    report = check_dataset("cityscapes", tmp_path / "missing", split="val")
    assert not report.ok and "root does not exist" in report.errors[0]
    assert "FAILED" in report.summary()


def test_doctor_on_synthetic(tmp_path):
    report = check_dataset("synthetic", split="val", num_samples=5, size=32)
    assert report.ok and report.num_checked == 5 and (report.pixel_counts > 0).sum() >= 3


def test_doctor_cityscapes_missing_partners_both_ways(tmp_path, layouts):
    root = layouts.cityscapes(tmp_path)
    next((root / "leftImg8bit").rglob("aachen*.png")).unlink()  # label left without image
    next((root / "gtFine").rglob("bochum*_labelIds.png")).unlink()  # image left without label
    report = check_dataset("cityscapes", root, split="val")
    assert report.num_pairs == 0 and not report.ok
    assert any("bochum_000000_000001_leftImg8bit.png has no label" in e for e in report.errors)
    assert any(
        "aachen_000000_000000_gtFine_labelIds.png has no image" in w for w in report.warnings
    )
