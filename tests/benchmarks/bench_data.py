"""Data-pipeline throughput: seg_data vs an equivalent torchvision.transforms.v2 pipeline.

Images per second through the full training pipeline (decode, random resize 0.5-2.0,
random crop, flip, photometric distortion, normalise, pad, collate) with a ``DataLoader`` of
0 and 2 workers. Data: CamVid from ``<repo>/../shared/data/camvid`` when present (real JPEG
decoding, 480x360), else the synthetic dataset (no decoding).

The torchvision pipeline is the nearest equivalent, not an identical one: ``ScaleJitter``
for the keep-ratio random resize, ``RandomCrop(pad_if_needed)`` without ``cat_max_ratio``,
``RandomPhotometricDistort`` (its own probabilities) instead of mmseg's distortion.

Run: ``nox -s bench -- data`` or ``python tests/benchmarks/bench_data.py [--images N]``.
Never run by CI. Numbers depend on the machine: compare rows of one run only.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from seg_data import collate, create_dataset

REPO = Path(__file__).resolve().parents[2]
CAMVID = REPO.parent / "shared" / "data" / "camvid"
MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]


def seg_data_spec(scale: tuple[int, int], crop: int) -> list[dict]:
    return [
        {"RandomResize": {"scale": list(scale), "ratio_range": [0.5, 2.0]}},
        {"RandomCrop": {"size": [crop, crop], "cat_max_ratio": 0.75}},
        {"RandomFlip": {"prob": 0.5}},
        {"PhotoMetricDistortion": {}},
        {"Normalize": {"mean": MEAN, "std": STD}},
        {"Pad": {"size": [crop, crop]}},
    ]


class TorchvisionSegDataset(Dataset):
    """The same samples, decoded and transformed with torchvision.transforms.v2."""

    def __init__(self, source, scale: tuple[int, int], crop: int) -> None:
        from torchvision import tv_tensors
        from torchvision.transforms import v2

        self.source, self.tv_tensors = source, tv_tensors
        self.transform = v2.Compose(
            [
                v2.ScaleJitter(target_size=(scale[1], scale[0]), scale_range=(0.5, 2.0)),
                v2.RandomCrop(
                    crop, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: 255}
                ),
                v2.RandomHorizontalFlip(0.5),
                v2.RandomPhotometricDistort(p=0.5),
                v2.ToDtype(
                    {tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True
                ),
                v2.Normalize([m / 255 for m in MEAN], [s / 255 for s in STD]),
            ]
        )

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        from torchvision.io import ImageReadMode, decode_image

        files = getattr(self.source, "files", None)
        if files:  # decode from disk like seg_data does
            image = decode_image(str(files[i].image), mode=ImageReadMode.RGB)
            raw = decode_image(str(files[i].label))[0]
            label = torch.from_numpy(self.source.label_lut[raw.numpy()].astype(np.int64))
        else:  # synthetic: same generated arrays
            img, lab, _ = self.source.load(i)
            image = torch.from_numpy(img).permute(2, 0, 1).contiguous()
            label = torch.from_numpy(lab.astype(np.int64))
        image, mask = self.transform(self.tv_tensors.Image(image), self.tv_tensors.Mask(label))
        return {
            "image": image.as_subclass(torch.Tensor),
            "label": mask.as_subclass(torch.Tensor),
            "meta": {"index": i},
        }


def measure(ds: Dataset, workers: int, batch_size: int, epochs: int = 1) -> float:
    loader = DataLoader(
        ds, batch_size=batch_size, num_workers=workers, collate_fn=collate, shuffle=False
    )
    n = 0
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            n += batch["image"].shape[0]
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=96, help="images per measurement")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--data", choices=["auto", "camvid", "synthetic"], default="auto")
    args = parser.parse_args()

    use_camvid = args.data == "camvid" or (args.data == "auto" and CAMVID.is_dir())
    if use_camvid:
        scale, crop = (480, 360), 352
        ours = create_dataset(
            "camvid", root=CAMVID, split="train", transforms=seg_data_spec(scale, crop)
        )
        source_desc = f"CamVid train ({CAMVID}), 480x360 JPEG"
    else:
        scale, crop = (256, 256), 224
        ours = create_dataset(
            "synthetic", num_samples=args.images, size=256, transforms=seg_data_spec(scale, crop)
        )
        source_desc = "synthetic 256x256 (generated, no decoding)"
    n = min(args.images, len(ours))
    subset_ours = torch.utils.data.Subset(ours, range(n))
    tv = TorchvisionSegDataset(ours, scale, crop)
    subset_tv = torch.utils.data.Subset(tv, range(n))

    print(f"data: {source_desc}; {n} images per run, batch {args.batch_size}, crop {crop}")
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
        f"{platform.processor() or platform.machine()}"
    )
    rows = []
    for workers in args.workers:
        for name, ds in (("seg_data", subset_ours), ("torchvision.v2", subset_tv)):
            measure(
                torch.utils.data.Subset(ds, range(min(n, args.batch_size))), 0, args.batch_size
            )  # warm-up
            rows.append((name, workers, measure(ds, workers, args.batch_size)))
    print()
    print(f"{'pipeline':<16} {'workers':>7} {'images/s':>10}")
    for name, workers, ips in rows:
        print(f"{name:<16} {workers:>7} {ips:>10.1f}")


if __name__ == "__main__":
    main()
