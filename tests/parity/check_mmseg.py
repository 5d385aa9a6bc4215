"""``from_mmseg`` against mmsegmentation 1.2.2's own logits, for every arch in MMSEG_ARCHS.

Run by ``nox -s parity`` (not collected by a plain ``pytest tests``: the references come
from the mmseg virtualenv, which that session builds). The session dumps MMSEG_ARCHS,
has ``make_mmseg_refs.py`` build or reuse a reference per arch, and points
``PKUSEG_PARITY_MMSEG_MANIFEST`` at the manifest listing them. Every arch registered in
seg_heads is a test case here: one without a reference fails, it is never skipped.

``full`` references: fp64 logits of the converted model within 1e-6 of mmseg's (and the
auxiliary logits where mmseg gives them), fp32 argmax agreement >= 99.9%, parameter
counts equal. ``structure`` references (the larger members of a family whose smallest
member is checked in full): the converted state dict loads strictly and the parameter
count equals mmseg's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from seg_heads.convert import MMSEG_ARCHS, from_mmseg

MANIFEST_ENV = "PKUSEG_PARITY_MMSEG_MANIFEST"
ATOL_FP64 = 1e-6
MIN_ARGMAX_AGREEMENT_FP32 = 0.999


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    path = os.environ.get(MANIFEST_ENV)
    if not path or not Path(path).is_file():
        pytest.fail(
            f"{MANIFEST_ENV}={path!r} is not a manifest file; run `nox -s parity`, which builds "
            "the mmseg references and sets it"
        )
    return json.loads(Path(path).read_text())


def _reference(name: str, manifest: dict[str, Any]) -> dict[str, Any]:
    spec = MMSEG_ARCHS[name]
    entry = manifest.get(name)
    if entry is None:
        pytest.fail(
            f"{name}: registered in MMSEG_ARCHS (config {spec.config!r}) but the manifest has "
            f"no mmseg reference for it; the manifest has {sorted(manifest)}"
        )
    if "error" in entry:
        pytest.fail(
            f"{name}: mmseg could not build a reference from {spec.config!r}: {entry['error']}"
        )
    record = torch.load(entry["path"], weights_only=True)
    got = (record["config"], list(record["input_size"]), record["align_corners"])
    want = (spec.config, [int(s) for s in spec.input_size], spec.align_corners)
    assert got == want, f"{name}: stale reference {entry['path']}: {got} != MMSEG_ARCHS {want}"
    assert record["mmseg_align_corners"] == spec.align_corners, (
        f"{name}: MMSegArch.align_corners={spec.align_corners} but the decode head of "
        f"{spec.config!r} has align_corners={record['mmseg_align_corners']}"
    )
    return record


def _num_params(model: torch.nn.Module) -> int:
    """Trainable parameters (mmseg keeps fixed kernels, e.g. STDCHead's Laplacian and
    fusion weights, as ``requires_grad=False`` parameters; PKUSeg keeps them as constants)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", sorted(MMSEG_ARCHS))
def test_from_mmseg_matches_mmseg(name: str, manifest: dict[str, Any]) -> None:
    record = _reference(name, manifest)
    if record["mode"] == "structure":
        sd = {
            k: torch.zeros(shape, dtype=getattr(torch, dtype.removeprefix("torch.")))
            for k, (shape, dtype) in record["shapes"].items()
        }
        model = from_mmseg(sd, arch=name)  # loads strictly
        n = _num_params(model)
        assert n == record["num_params"], (
            f"{name}: {n} parameters, mmseg has {record['num_params']}"
        )
        print(f"\n[parity] {name}: structure only, {n} parameters == mmseg's, strict load ok")
        return

    model = from_mmseg(record["state_dict"], arch=name).eval()
    n = _num_params(model)
    assert n == record["num_params"], f"{name}: {n} parameters, mmseg has {record['num_params']}"
    x, ref = record["input"], record["logits"]
    with torch.no_grad():
        out32 = model(x.float())
        out64 = model.double()(x.double())
    assert out64["out"].shape == ref.shape, (
        f"{name}: logits {tuple(out64['out'].shape)} != {tuple(ref.shape)}"
    )
    diff = float((out64["out"] - ref).abs().max())
    agree = float((out32["out"].argmax(1) == ref.argmax(1)).double().mean())
    line = f"{name}: fp64 max|diff| {diff:.3g} (logits std {record['logits_std']:.2f}), fp32 argmax {agree:.5f}"
    aux = record.get("aux")
    if aux is not None and (record["aux_source"] == "auxiliary_head" or "aux" in out64):
        assert "aux" in out64, f"{name}: mmseg's model has an auxiliary head, ours gives no 'aux'"
        aux_diff = float((out64["aux"] - aux).abs().max())
        line += f", aux ({record['aux_source']}) fp64 max|diff| {aux_diff:.3g}"
    else:
        aux_diff = 0.0
    print(f"\n[parity] {line}")
    assert diff <= ATOL_FP64, f"{line}: fp64 logits differ from mmseg's by more than {ATOL_FP64}"
    assert agree >= MIN_ARGMAX_AGREEMENT_FP32, (
        f"{line}: fp32 argmax agreement below {MIN_ARGMAX_AGREEMENT_FP32}"
    )
    assert aux_diff <= ATOL_FP64, (
        f"{line}: fp64 aux logits differ from mmseg's by more than {ATOL_FP64}"
    )
