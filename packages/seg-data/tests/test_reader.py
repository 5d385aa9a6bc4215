"""The one image reader (EXIF, 16-bit, float refused), binary masks and the doctor's warnings."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from seg_data import UnsupportedImageError, check_dataset, create_dataset, read_image


def test_exif_orientation_is_applied(tmp_path):
    upright = np.zeros((6, 10, 3), np.uint8)
    upright[:, :5] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated, displayed after a 90 degree turn
    Image.fromarray(np.ascontiguousarray(np.rot90(upright))).save(tmp_path / "a.png", exif=exif)
    assert read_image(tmp_path / "a.png").shape == (6, 10, 3)
    assert np.array_equal(read_image(tmp_path / "a.png"), upright)


def test_sixteen_bit_scaled_and_float_refused(tmp_path):
    grey = np.arange(0, 65536, 257, dtype=np.uint16).reshape(16, 16)
    Image.fromarray(grey).save(tmp_path / "g.png")
    assert np.array_equal(read_image(tmp_path / "g.png")[..., 1], (grey // 257).astype(np.uint8))
    Image.fromarray(np.ones((4, 4), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(UnsupportedImageError, match=r"f.tif is a 32-bit float image"):
        read_image(tmp_path / "f.tif")


def test_binary_masks_option_and_doctor_warning(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6] = 255
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(mask).save(tmp_path / "masks" / "a.png")
    ds = create_dataset("folder", root=tmp_path, split=None, binary_mask=True)
    assert ds.classes == ("background", "foreground") and int(ds[0]["label"].sum()) == 16
    (tmp_path / "classes.txt").write_text("background\nforeground\n")
    warnings = check_dataset("folder", tmp_path, split=None).warnings
    assert any("binary_mask: true" in w for w in warnings)
    assert not check_dataset("folder", tmp_path, split=None, binary_mask=True).warnings
