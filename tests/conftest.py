"""Fixtures shared by the cross-package tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CAMVID = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "camvid"


@pytest.fixture(scope="session")
def camvid_root(tmp_path_factory) -> Path:
    """CamVid's folders linked into a temporary root with a 2-image ``smoke`` split."""
    if not (CAMVID / "train.txt").is_file():
        pytest.skip(f"CamVid not found at {CAMVID} (see ../shared/data/README.md)")
    root = tmp_path_factory.mktemp("camvid")
    for entry in CAMVID.iterdir():
        if entry.is_dir():
            os.symlink(entry, root / entry.name)
    pairs = (CAMVID / "test.txt").read_text().splitlines()[:2]
    (root / "smoke.txt").write_text("\n".join(pairs) + "\n")
    return root
