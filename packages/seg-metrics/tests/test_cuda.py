"""CUDA: same counts as on CPU, no host synchronisation per update, NCCL all_reduce.

Skipped without a GPU (CI has none); run on a GPU machine with
``pytest packages/seg-metrics/tests/test_cuda.py``.
"""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist

from seg_metrics import ConfusionMatrix

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
IGNORE = 255


def batch(k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, k, (3, 37, 53), generator=g)
    target[torch.rand(3, 37, 53, generator=g) < 0.1] = IGNORE
    pred = torch.randint(0, k, (3, 37, 53), generator=g)
    logits = torch.randn(3, k, 37, 53, generator=g)
    return pred, target, logits


@pytest.mark.parametrize("k", [19, 150])
@pytest.mark.parametrize("checks", ["auto", "eager", "deferred"])
def test_cuda_counts_equal_cpu(k: int, checks: str) -> None:
    pred, target, logits = batch(k, k)
    cpu = ConfusionMatrix(k, per_image=True)
    cpu.update(pred, target)
    cpu.update(logits, target)
    gpu = ConfusionMatrix(k, per_image=True, checks=checks)
    gpu.update(pred.cuda(), target.cuda())
    gpu.update(logits.cuda(), target.to(torch.uint8).cuda())
    assert gpu.matrix.device.type == "cuda"
    a, b = cpu.compute(), gpu.compute()
    assert torch.equal(a.confusion, b.confusion)
    assert a.miou == b.miou and a.image_miou == b.image_miou


@pytest.mark.parametrize("per_image", [False, True])
def test_cuda_update_never_synchronises(per_image: bool) -> None:
    k = 19
    pred, target, logits = batch(k, 0)
    pred, target, logits = pred.cuda(), target.cuda(), logits.cuda()
    bad = target.clone()
    bad[0, 0, 0] = 40  # invalid value: counted on the device, reported later
    cm = ConfusionMatrix(k, per_image=per_image)  # auto -> deferred checks on CUDA
    cm.update(pred[:1], target[:1])  # first update adopts the device
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            cm.update(pred, target)
            cm.update(logits, target)
            cm.update(pred[0], target[0])
            cm.update(pred, bad)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    with pytest.raises(ValueError, match=r"target held 3 pixels .* \(smallest 40, largest 40\)"):
        cm.compute()


def test_nccl_all_reduce_single_rank() -> None:
    if not dist.is_nccl_available():
        pytest.skip("NCCL not available")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        pred, target, _ = batch(19, 1)
        ref = ConfusionMatrix(19, per_image=True)
        ref.update(pred, target)
        for device in ("cuda", "cpu"):  # CPU counts travel through CUDA for NCCL
            cm = ConfusionMatrix(19, per_image=True, device=device)
            cm.update(pred.to(device), target.to(device))
            cm.all_reduce()
            assert cm.matrix.device.type == device
            assert torch.equal(cm.matrix.cpu(), ref.matrix)
            assert cm.compute().image_miou == ref.compute().image_miou
    finally:
        dist.destroy_process_group()
