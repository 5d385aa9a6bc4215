"""Batch-1 CPU images/s at 480x360 of one trained checkpoint through every deployment path.

PyTorch eager, PyTorch with folded BatchNorm + channels_last, onnxruntime and OpenVINO in
fp32 and int8 (the files ``camvid_deploy.sh`` exported into OUT_DIR), timed round by round
(median of 3 rounds of 10 forwards after 3 warm-ups); also prints each test-split mIoU that
``camvid_deploy.sh`` wrote and how many pixels differ from PyTorch's.

With ``--torchvision ARCH`` (a checkpoint of a torchvision twin, e.g. ``deeplabv3_resnet50``)
torchvision's own eager model of that architecture (random weights, the checkpoint's class
count: speed only) is timed in the same rounds and every path is also given as a ratio to it.

    python tests/benchmarks/camvid_deploy_speed.py CHECKPOINT OUT_DIR [--torchvision ARCH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from seg_heads.export import fold_bn
from seg_trainer.backends import runtime_model
from seg_trainer.checkpoint import load_checkpoint
from seg_trainer.config import config_from_dict
from seg_trainer.evaluate import load_model


def main(ck: Path, out: Path, torchvision_arch: str | None = None) -> None:
    c = load_checkpoint(ck)
    cfg = config_from_dict(c["config"])
    model = load_model(cfg, c, ck.parent.parent).eval()
    x = torch.randn(1, 3, 360, 480)
    folded = fold_bn(model).to(memory_format=torch.channels_last)
    xcl = x.contiguous(memory_format=torch.channels_last)
    paths = {}
    if torchvision_arch:
        import torchvision

        tv = torchvision.models.get_model(
            torchvision_arch, weights=None, weights_backbone=None, num_classes=cfg.model.num_classes
        ).eval()
        paths["torchvision eager"] = lambda: tv(x)
    paths["torch eager"] = lambda: model(x)
    paths["torch fold-BN + channels_last"] = lambda: folded(xcl)
    for name, file, backend in [
        ("onnxruntime fp32", "fp32.onnx", "onnxruntime"),
        ("OpenVINO fp32", "fp32.onnx", "openvino"),
        ("onnxruntime int8", "int8.onnx", "onnxruntime"),
        ("OpenVINO int8", "int8.onnx", "openvino"),
    ]:
        runtime = runtime_model(out / file, backend)
        paths[name] = lambda m=runtime: m(x)
    res: dict[str, list[float]] = {k: [] for k in paths}
    with torch.inference_mode():
        for f in paths.values():
            for _ in range(3):
                f()
        for _ in range(3):
            for k, f in paths.items():
                t = time.perf_counter()
                for _ in range(10):
                    f()
                res[k].append(10 / (time.perf_counter() - t))
    base = statistics.median(res["torch eager"])
    tvb = statistics.median(res["torchvision eager"]) if torchvision_arch else None
    print("| path | images/s | vs eager |" + (" vs torchvision eager |" if tvb else ""))
    print("|---|---|---|" + ("---|" if tvb else ""))
    for k, v in res.items():
        m = statistics.median(v)
        print(f"| {k} | {m:.2f} | {m / base:.2f} |" + (f" {m / tvb:.2f} |" if tvb else ""))
    (out / "speed.json").write_text(json.dumps({k: statistics.median(v) for k, v in res.items()}))

    ref = None
    for f in ["torch/eval_test_whole.json", *(f"{d}/eval_test_whole_{b}.json" for d, b in
              [("fp32", "onnxruntime"), ("fp32", "openvino"), ("int8", "onnxruntime"),
               ("int8", "openvino")])]:  # fmt: skip
        if not (out / f).exists():
            continue
        m = json.loads((out / f).read_text())["metrics"]
        cm = np.array(m["confusion"])
        ref = cm if ref is None else ref
        moved = int(np.abs(cm - ref).sum() // 2)
        print(f"{f}: mIoU {100 * m['miou']:.4f}, aAcc {100 * m['aacc']:.4f}, {moved} pixels differ")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--torchvision", metavar="ARCH", help="time torchvision's eager ARCH too")
    a = ap.parse_args()
    main(a.checkpoint, a.out_dir, a.torchvision)
