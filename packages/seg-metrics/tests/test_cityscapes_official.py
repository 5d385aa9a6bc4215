"""Equality with the official Cityscapes pixel-level evaluation (cityscapesscripts).

Ground truth and prediction PNGs are written in labelIds, in the layout the
official script expects (``gtFine/val/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png``
and a results folder searched for ``<city>_<seq>_<frame>*.png``). The script's
own functions (``getPrediction``, ``evaluateImgLists``) evaluate them; our metric
sees the same files after the official labelId -> trainId table
(``cityscapesscripts.helpers.labels``), applied here in the test because
seg_metrics must not depend on seg_data.

Predictions only use the 19 evaluated classes, as a model trained on trainIds
does (the official script would count a prediction of an ignored id as a miss
for every class; seg_metrics rejects labels outside [0, 19) instead).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from seg_metrics import ConfusionMatrix

Image = pytest.importorskip("PIL.Image")
labels_mod = pytest.importorskip("cityscapesscripts.helpers.labels")
# evalPixelLevelSemanticLabeling calls np.in1d (removed in numpy 2.4) only for the
# instance-level nIoU (evalInstLevelScore) and evalPixelAccuracy; both are switched
# off below because they do not enter the IoU, so no numpy shim is needed.
ev = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")

REPO = Path(__file__).resolve().parents[3]
FIXTURE = REPO.parent / "shared" / "data" / "fixtures" / "cityscapes"
REAL_GT = FIXTURE / "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png"

# The official tables: labelId -> trainId (255 for ignoreInEval) and back.
ID_TO_TRAIN = np.full(256, 255, dtype=np.uint8)
TRAIN_TO_ID = np.zeros(19, dtype=np.uint8)
for _label in labels_mod.labels:
    if _label.id >= 0 and not _label.ignoreInEval:
        ID_TO_TRAIN[_label.id] = _label.trainId
        TRAIN_TO_ID[_label.trainId] = _label.id
TRAIN_NAMES = [labels_mod.trainId2label[i].name for i in range(19)]
ALL_IDS = np.array([lab.id for lab in labels_mod.labels if lab.id >= 0], dtype=np.uint8)


def perturb(gt_ids: np.ndarray, rng: np.random.Generator, drop: tuple[int, ...] = ()) -> np.ndarray:
    """A plausible prediction (labelIds of evaluated classes) from a labelIds ground truth."""
    train = ID_TO_TRAIN[gt_ids].astype(np.int64)
    void = train == 255
    train[void] = rng.integers(0, 19, int(void.sum()))  # a model predicts something there too
    train = np.roll(train, shift=(2, -3), axis=(0, 1))  # boundary errors
    noise = rng.random(train.shape) < 0.08
    train[noise] = rng.integers(0, 19, int(noise.sum()))
    h, w = train.shape
    train[h // 4 : h // 3, w // 5 : w // 2] = rng.integers(0, 19)  # a wrong blob
    for c in drop:  # a class never predicted
        train[train == c] = (c + 1) % 19
    return TRAIN_TO_ID[train]


def write_pair(root: Path, frame: int, gt_ids: np.ndarray, pred_ids: np.ndarray) -> Path:
    city = "frankfurt" if frame == 294 else "testcity"
    stem = f"{city}_000000_{frame:06d}"
    gt_dir = root / "gtFine" / "val" / city
    gt_dir.mkdir(parents=True, exist_ok=True)
    gt_path = gt_dir / f"{stem}_gtFine_labelIds.png"
    Image.fromarray(gt_ids.astype(np.uint8), mode="L").save(gt_path)
    (root / "results").mkdir(exist_ok=True)
    Image.fromarray(pred_ids.astype(np.uint8), mode="L").save(root / "results" / f"{stem}_pred.png")
    return gt_path


def official(root: Path, gt_paths: list[Path]) -> dict:
    args = copy.copy(ev.args)
    args.predictionPath = str(root / "results")
    args.predictionWalk = None
    args.evalInstLevelScore = False
    args.evalPixelAccuracy = False
    args.JSONOutput = False
    args.quiet = True
    args.colorized = False
    args.bold = args.nocol = ""
    gts = [str(p) for p in gt_paths]
    preds = [ev.getPrediction(args, gt) for gt in gts]
    return ev.evaluateImgLists(preds, gts, args)


def ours(gt_paths: list[Path], root: Path) -> tuple[ConfusionMatrix, list[np.ndarray]]:
    cm = ConfusionMatrix(19, ignore_index=255)
    for gt_path in gt_paths:
        pred_path = next((root / "results").glob(gt_path.name.split("_gtFine")[0] + "*.png"))
        gt = np.asarray(Image.open(gt_path))
        pred = np.asarray(Image.open(pred_path))
        target = torch.from_numpy(ID_TO_TRAIN[gt])
        pred_train = torch.from_numpy(ID_TO_TRAIN[pred])
        assert int((pred_train == 255).sum()) == 0
        cm.update(pred_train, target)  # H x W uint8 labels, as read from the files
    return cm


def assert_same(official_result: dict, cm: ConfusionMatrix) -> None:
    res = cm.compute()
    scores = official_result["classScores"]
    n_nan = 0
    for train_id, name in enumerate(TRAIN_NAMES):
        theirs, mine = scores[name], float(res.iou[train_id])
        if math.isnan(theirs):
            n_nan += 1
            assert math.isnan(mine), name
        else:
            assert mine == pytest.approx(theirs, rel=1e-12, abs=0), name
    assert res.miou == pytest.approx(official_result["averageScoreClasses"], rel=1e-12, abs=0)
    # their confusion matrix over labelIds, restricted to evaluated rows, equals ours
    conf = np.asarray(official_result["confMatrix"], dtype=np.int64)
    evaluated = TRAIN_TO_ID.astype(np.int64)
    np.testing.assert_array_equal(conf[np.ix_(evaluated, evaluated)], res.confusion.numpy())
    assert conf[evaluated].sum() == res.num_pixels
    return n_nan


def synthetic_gt(rng: np.random.Generator, h: int, w: int, absent: tuple[int, ...]) -> np.ndarray:
    """Blocky labelIds maps over all ids (ignored ones too), some train classes absent."""
    blocks = rng.choice(ALL_IDS, size=(h // 8 + 1, w // 8 + 1))
    gt = np.kron(blocks, np.ones((8, 8), dtype=np.uint8))[:h, :w]
    gt[rng.random((h, w)) < 0.05] = 0  # unlabeled specks
    for c in absent:
        gt[gt == TRAIN_TO_ID[c]] = 0
    return gt


def test_synthetic_files_match_official_evaluation(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    absent = (16, 12)  # train, rider: in no ground truth and never predicted -> NaN
    gt_paths = []
    for frame in range(1, 4):
        gt = synthetic_gt(rng, 64, 96, absent)
        gt_paths.append(write_pair(tmp_path, frame, gt, perturb(gt, rng, drop=absent)))
    n_nan = assert_same(official(tmp_path, gt_paths), ours(gt_paths, tmp_path))
    assert n_nan == len(absent)


def test_real_label_matches_official_evaluation(tmp_path: Path) -> None:
    if not REAL_GT.is_file():
        pytest.skip(f"real Cityscapes fixture not found at {REAL_GT} (needs ../shared/data)")
    real = np.asarray(Image.open(REAL_GT))
    rng = np.random.default_rng(1)
    gt_paths = [write_pair(tmp_path, 294, real, perturb(real, rng))]
    # plus a synthetic frame so that the set spans several images and classes
    gt = synthetic_gt(rng, *real.shape, absent=())
    gt_paths.append(write_pair(tmp_path, 7, gt, perturb(gt, rng)))
    assert_same(official(tmp_path, gt_paths), ours(gt_paths, tmp_path))


def test_real_label_exact_prediction_scores_one(tmp_path: Path) -> None:
    """A perfect prediction: IoU 1 for the classes in the frame, NaN for the others."""
    if not REAL_GT.is_file():
        pytest.skip(f"real Cityscapes fixture not found at {REAL_GT} (needs ../shared/data)")
    real = np.asarray(Image.open(REAL_GT))
    train = ID_TO_TRAIN[real].astype(np.int64)
    pred = train.copy()
    pred[pred == 255] = 0  # road predicted on void pixels: not counted anywhere
    gt_path = write_pair(tmp_path, 294, real, TRAIN_TO_ID[pred])
    theirs = official(tmp_path, [gt_path])
    cm = ours([gt_path], tmp_path)
    n_nan = assert_same(theirs, cm)
    present = np.unique(train[train != 255])
    assert n_nan == 19 - len(present)
    assert cm.compute().miou == 1.0
