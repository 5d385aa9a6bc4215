"""Tests for seg_trainer.evaluate: exact metrics, sharding without duplicates, saved predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from seg_data import collate, create_dataset
from seg_metrics import ConfusionMatrix
from seg_trainer.evaluate import evaluate, make_shard_loader

K = 3


class TinyNet(nn.Module):
    """A small conv net with BatchNorm and dropout (eval mode matters)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout2d(0.5)
        )
        self.cls = nn.Conv2d(8, K, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.cls(self.body(x))}


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    # odd length and a batch size that leaves a partial last batch
    return create_dataset(
        "synthetic",
        split="val",
        num_samples=7,
        size=(24, 32),
        num_classes=K,
        transforms=[{"Normalize": {}}],
    )


@pytest.fixture(scope="module")
def accelerator() -> Accelerator:
    return Accelerator(cpu=True)


def _reference(model: nn.Module, dataset: Dataset) -> torch.Tensor:
    """Confusion matrix computed image by image, independently of evaluate()."""
    model.eval()
    mat = torch.zeros(K, K, dtype=torch.int64)
    with torch.no_grad():
        for i in range(len(dataset)):
            s = dataset[i]
            pred = model(s["image"][None])["out"].argmax(1)[0]
            valid = s["label"] != 255
            idx = s["label"][valid] * K + pred[valid]
            mat += torch.bincount(idx, minlength=K * K).view(K, K)
    return mat


def test_metrics_equal_image_by_image_reference(dataset, accelerator) -> None:
    model = TinyNet()
    model.train()
    loader = DataLoader(dataset, batch_size=3, collate_fn=collate)
    res = evaluate(model, loader, accelerator, num_classes=K, progress=False)
    assert model.training  # mode restored
    ref = _reference(TinyNet(), dataset)
    assert torch.equal(res.confusion.cpu(), ref)
    assert res.num_pixels == int(ref.sum())
    # a loader passed through accelerator.prepare gives the same counts
    prepared = accelerator.prepare(DataLoader(dataset, batch_size=2, collate_fn=collate))
    res2 = evaluate(model, prepared, accelerator, num_classes=K, progress=False)
    assert torch.equal(res2.confusion.cpu(), ref)


@pytest.mark.parametrize("n", [0, 1, 7, 10])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_partition_without_padding(n: int, world: int) -> None:
    data = [{"image": torch.zeros(3, 2, 2), "label": torch.zeros(2, 2, dtype=torch.long)}] * n
    loader = DataLoader(data, batch_size=2)
    shards = [make_shard_loader(loader, world, r)[1] for r in range(world)]
    flat = sorted(i for s in shards for i in s)
    assert flat == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_shard_loaders_cover_each_image_once(dataset) -> None:
    loader = DataLoader(dataset, batch_size=2, collate_fn=collate)
    seen = []
    total = ConfusionMatrix(K, device="cpu")
    model = TinyNet().eval()
    for rank in range(3):
        shard, indices = make_shard_loader(loader, 3, rank)
        got = [m["index"] for batch in shard for m in batch["meta"]]
        assert got == indices
        seen += got
        for batch in shard:
            with torch.no_grad():
                total.update(model(batch["image"])["out"], batch["label"])
    assert sorted(seen) == list(range(len(dataset)))
    assert torch.equal(total.compute().confusion, _reference(model, dataset))


class ResizedImages(Dataset):
    """Images at half the label resolution, labels at full resolution (like Resize(resize_label=False))."""

    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        label = torch.randint(0, K, (20, 30), generator=g)
        label[0] = 255
        return {"image": torch.randn(3, 10, 15, generator=g), "label": label,
                "meta": {"filename": f"/data/img_{i}.jpg", "index": i}}  # fmt: skip


def test_logits_resized_to_label_size_and_predictions_saved(tmp_path: Path, accelerator) -> None:
    ds = ResizedImages()
    model = TinyNet().eval()
    calls = []

    def to_label_ids(pred: np.ndarray) -> np.ndarray:
        calls.append(pred.shape)
        return pred + 10

    palette = np.array([[10, 20, 30], [40, 50, 60], [70, 80, 90]], dtype=np.uint8)
    res = evaluate(
        model,
        DataLoader(ds, batch_size=2, collate_fn=collate),
        accelerator,
        num_classes=K,
        save_dir=tmp_path,
        palette=palette,
        label_id_fn=to_label_ids,
        progress=False,
    )
    assert res.num_pixels == 3 * 19 * 30
    for i in range(3):
        s = ds[i]
        with torch.no_grad():
            logits = F.interpolate(model(s["image"][None])["out"], size=(20, 30), mode="bilinear")
        expected = logits.argmax(1)[0].numpy()
        saved = np.array(Image.open(tmp_path / "pred" / f"img_{i}.png"))
        assert np.array_equal(saved, expected)
        colour = np.array(Image.open(tmp_path / "color" / f"img_{i}.png").convert("RGB"))
        assert np.array_equal(colour, palette[expected])
        ids = np.array(Image.open(tmp_path / "label_ids" / f"img_{i}.png"))
        assert np.array_equal(ids, expected + 10)
    assert calls == [(20, 30)] * 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "slide", "crop_size": (16, 16), "stride": (10, 10)},
        {"mode": "multiscale", "scales": (0.75, 1.0), "flip": True},
    ],
)
def test_other_modes_run(dataset, accelerator, kwargs) -> None:
    loader = DataLoader(dataset, batch_size=2, collate_fn=collate)
    res = evaluate(TinyNet(), loader, accelerator, num_classes=K, progress=False, **kwargs)
    assert res.num_pixels == int(_reference(TinyNet(), dataset).sum())
    assert 0.0 <= res.aacc <= 1.0


def test_bad_mode_is_explained(dataset, accelerator) -> None:
    loader = DataLoader(dataset, batch_size=2, collate_fn=collate)
    with pytest.raises(ValueError, match="mode must be one of"):
        evaluate(TinyNet(), loader, accelerator, num_classes=K, mode="tiled")


# ------------------------------------------------- seg-eval --backend onnxruntime | openvino

DEPLOY_CONFIG = {
    "output_dir": "unused",
    "model": {"name": "pspnet", "backbone": "resnet18", "num_classes": K, "output_stride": 16,
              "aux": False, "head_kwargs": {"channels": 8}},
    "data": {"dataset": "synthetic", "dataset_options": {"num_samples": 4, "size": [40, 52],
             "num_classes": K},
             "val_transforms": [{"Normalize": {"mean": [120.0, 110.0, 100.0],
                                               "std": [50.0, 60.0, 70.0]}}],
             "num_workers": 0},
    "evaluation": {"batch_size": 2, "crop_size": [32, 32], "stride": [21, 21]},
    "train": {"max_iters": 1},
}  # fmt: skip


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """A checkpoint of a model with trained-like BatchNorm statistics and O(10) logits that
    predict every class, and its seg-export ONNX file (PSPNet: adaptive pooling under
    dynamic shapes)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from seg_trainer.build import build_dataset, build_model
    from seg_trainer.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
    from seg_trainer.config import config_from_dict
    from seg_trainer.export import main as export_main

    cfg = config_from_dict(DEPLOY_CONFIG)
    torch.manual_seed(0)
    model = build_model(cfg)
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.momentum = None  # cumulative average of the two passes below
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64, generator=g))
        model.decode_head.conv_seg.weight.mul_(300.0)
        model.eval()
        images = torch.stack([s["image"] for s in build_dataset(cfg, "val")])
        logits = model(images)["out"]  # centre the classes: each one is predicted somewhere
        model.decode_head.conv_seg.bias.sub_(logits.mean((0, 2, 3)))
    root = tmp_path_factory.mktemp("deploy")
    ckpt, onnx_path = root / "model.pth", root / "model.onnx"
    save_checkpoint({"format": CHECKPOINT_FORMAT, "model": model.state_dict(),
                     "config": cfg.to_dict(), "iteration": 11}, ckpt)  # fmt: skip
    assert export_main(["--checkpoint", str(ckpt), "--format", "onnx", "--output",
                        str(onnx_path), "--size", "48", "64"]) == 0  # fmt: skip
    return {"torch": ckpt, "onnxruntime": onnx_path, "openvino": onnx_path}


def _seg_eval(model: Path, backend: str, out: Path, mode: str) -> dict:
    from seg_trainer.evaluate import main

    return main(["--checkpoint", str(model), "--backend", backend, "--mode", mode, "--cpu",
                 "--no-progress", "--threads", "1", "--save-predictions",
                 "--set", f"output_dir={out}"])  # fmt: skip


@pytest.mark.parametrize("mode", ["whole", "slide"])
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_seg_eval_through_a_runtime_gives_the_pytorch_metrics(
    exported: dict[str, Path], tmp_path: Path, backend: str, mode: str
) -> None:
    """CamVid's acceptance criterion (mIoU equal to 0.01) on the synthetic set, same code."""
    if backend == "openvino":
        pytest.importorskip("openvino")
    ref = _seg_eval(exported["torch"], "torch", tmp_path, mode)
    got = _seg_eval(exported[backend], backend, tmp_path, mode)
    assert got["backend"] == backend and ref["backend"] == "torch"
    assert got["iteration"] == ref["iteration"] == 11  # from the ONNX metadata
    assert got["evaluation"] == ref["evaluation"] and got["evaluation"]["mode"] == mode
    # the JSON and predictions of each backend are kept apart
    assert (tmp_path / f"eval_val_{mode}.json").is_file()
    assert (tmp_path / f"eval_val_{mode}_{backend}.json").is_file()
    m_ref, m_got = ref["metrics"], got["metrics"]
    cm_ref, cm_got = np.array(m_ref["confusion"]), np.array(m_got["confusion"])
    assert (cm_ref.sum(0) > 0.01 * cm_ref.sum()).all()  # every class is predicted
    assert cm_got.sum() == cm_ref.sum() == m_ref["num_pixels"]
    assert np.abs(cm_got - cm_ref).sum() <= 0.001 * cm_ref.sum()  # pixels whose class moved
    assert abs(m_got["miou"] - m_ref["miou"]) <= 1e-4  # the criterion is 0.01
    preds = sorted((tmp_path / f"predictions_val_{backend}" / "pred").glob("*.png"))
    assert len(preds) == 4
    for p in preds:
        a = np.asarray(Image.open(p))
        b = np.asarray(Image.open(tmp_path / "predictions_val" / "pred" / p.name))
        assert (a != b).mean() <= 0.001
