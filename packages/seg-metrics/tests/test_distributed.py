"""all_reduce across two real processes (gloo, CPU) equals one process over all the data."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from seg_metrics import ConfusionMatrix

K = 7
WORLD = 2


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, K, (6, 17, 19), generator=g)
    target[:, :, :2] = 255
    pred = torch.randint(0, K, (6, 17, 19), generator=g)
    target[target == 5] = 6  # class 5: in no target and no prediction -> NaN, out of the means
    pred[pred == 5] = 6
    target[target == 3] = 255  # class 3: predicted once on rank 0's share only -> IoU 0
    pred[pred == 3] = 4
    pred[1, 1, 5] = 3
    return pred, target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        pred, target = data()
        mine = slice(0, 2) if rank == 0 else slice(2, 6)  # unequal halves
        for per_image in (False, True):
            cm = ConfusionMatrix(K, per_image=per_image)
            for i in range(mine.start, mine.stop):
                cm.update(pred[i], target[i])
            cm.all_reduce()
            torch.save(cm.state_dict(), Path(out_dir) / f"rank{rank}_{per_image}.pt")
        # deferred invalid-pixel counts are reduced too: every rank raises alike
        bad = ConfusionMatrix(K, checks="deferred")
        t = target[mine].clone()
        if rank == 1:
            t[0, 0, 5] = 42
        bad.update(pred[mine], t)
        try:
            bad.all_reduce()
            raised = ""
        except ValueError as err:
            raised = str(err)
        torch.save({"raised": raised}, Path(out_dir) / f"rank{rank}_bad.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_process_all_reduce_equals_single_process(tmp_path: Path) -> None:
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    pred, target = data()
    for per_image in (False, True):
        single = ConfusionMatrix(K, per_image=per_image)
        single.update(pred, target)
        ref = single.compute()
        for rank in range(WORLD):
            sd = torch.load(tmp_path / f"rank{rank}_{per_image}.pt", weights_only=True)
            assert sd["reduced"]
            assert torch.equal(sd["confusion"], single.matrix)
            restored = ConfusionMatrix(K, per_image=per_image)
            restored.load_state_dict(sd)
            res = restored.compute()
            assert torch.isnan(res.iou[5]) and res.iou[3] == 0
            assert res.miou == ref.miou and res.aacc == ref.aacc
            if per_image:  # images gathered in rank order = the single-process order
                assert torch.equal(sd["image_stats"], single.state_dict()["image_stats"])
                assert res.image_miou == ref.image_miou
    for rank in range(WORLD):
        raised = torch.load(tmp_path / f"rank{rank}_bad.pt", weights_only=True)["raised"]
        assert "target held 1 pixels" in raised and "smallest 42" in raised, (rank, raised)
