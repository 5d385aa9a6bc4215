"""Equality with a numpy transcription of mmseg's formulas and with torchmetrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from seg_metrics import ConfusionMatrix, SegmentationResult

IGNORE = 255


def mmseg_reference(preds, labels, num_classes: int, ignore_index: int) -> dict[str, np.ndarray]:
    """mmseg's ``intersect_and_union`` summed over images + ``total_area_to_metrics``.

    A straightforward numpy transcription (histograms of the intersection, the
    prediction and the label over the non-ignored pixels), independent of the
    confusion-matrix code under test.
    """
    bins = np.arange(num_classes + 1) - 0.5
    a_int = np.zeros(num_classes)
    a_pred = np.zeros(num_classes)
    a_label = np.zeros(num_classes)
    for pred, label in zip(preds, labels):
        mask = label != ignore_index
        pred, label = pred[mask], label[mask]
        a_int += np.histogram(pred[pred == label], bins=bins)[0]
        a_pred += np.histogram(pred, bins=bins)[0]
        a_label += np.histogram(label, bins=bins)[0]
    a_union = a_pred + a_label - a_int
    with np.errstate(divide="ignore", invalid="ignore"):
        out = {
            "iou": a_int / a_union,
            "acc": a_int / a_label,
            "precision": a_int / a_pred,
            "dice": 2 * a_int / (a_pred + a_label),
        }
    out["aacc"] = np.array(a_int.sum() / a_label.sum())
    freq = a_label / a_label.sum()
    seen = a_label > 0
    out["fwiou"] = np.array((freq[seen] * out["iou"][seen]).sum())
    return out


def random_case(k: int, n: int, h: int, w: int, seed: int, absent: tuple[int, ...] = ()):
    """Random labels with ignore pixels, correlated predictions and some absent classes."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, k, (n, h, w), generator=g)
    pred = torch.where(
        torch.rand(n, h, w, generator=g) < 0.6, target, torch.randint(0, k, (n, h, w), generator=g)
    )
    for c in absent:  # absent from both target and prediction: IoU NaN
        target[target == c] = (c + 1) % k
        pred[pred == c] = (c + 2) % k
    target[torch.rand(n, h, w, generator=g) < 0.1] = IGNORE
    return pred, target


@pytest.mark.parametrize("checks", ["eager", "deferred"])
@pytest.mark.parametrize(("k", "absent"), [(19, (3, 11, 18)), (150, (0, 7)), (2, ())])
def test_matches_mmseg_formula(k: int, absent: tuple[int, ...], checks: str) -> None:
    pred, target = random_case(k, 3, 41, 67, seed=k, absent=absent)
    if k == 150:  # many classes in tiny images: some are also predicted-only or target-only
        pred[pred == 5] = 6
    cm = ConfusionMatrix(k, ignore_index=IGNORE, checks=checks)
    for i in range(3):  # several updates, mixed H x W and N x H x W calls
        cm.update(pred[i], target[i]) if i == 0 else cm.update(pred[i : i + 1], target[i : i + 1])
    res = cm.compute()
    ref = mmseg_reference(pred.numpy(), target.numpy(), k, IGNORE)
    for key in ("iou", "acc", "precision", "dice"):
        ours = getattr(res, key).numpy()
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref[key]), err_msg=key)
        np.testing.assert_allclose(ours, ref[key], rtol=1e-12, equal_nan=True, err_msg=key)
    for c in absent:
        assert math.isnan(res.iou[c])
    assert res.miou == pytest.approx(np.nanmean(ref["iou"]), rel=1e-12)
    assert res.macc == pytest.approx(np.nanmean(ref["acc"]), rel=1e-12)
    assert res.mdice == pytest.approx(np.nanmean(ref["dice"]), rel=1e-12)
    assert res.mprecision == pytest.approx(np.nanmean(ref["precision"]), rel=1e-12)
    assert res.aacc == pytest.approx(float(ref["aacc"]), rel=1e-12)
    assert res.fwiou == pytest.approx(float(ref["fwiou"]), rel=1e-12)
    assert res.num_pixels == int((target != IGNORE).sum())


def test_logits_uint8_and_label_paths_agree() -> None:
    k = 7
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, k, 13, 17, generator=g)
    target = torch.randint(0, k, (2, 13, 17), generator=g)
    target[:, :2] = IGNORE
    a = ConfusionMatrix(k)
    a.update(logits, target)
    b = ConfusionMatrix(k)
    b.update(logits.argmax(1).to(torch.uint8), target.to(torch.uint8))
    c = ConfusionMatrix(k, checks="deferred")
    c.update(logits[0], target[0])  # C x H x W logits with an H x W target
    c.update(logits[1], target[1])
    assert torch.equal(a.matrix, b.matrix)
    assert torch.equal(a.matrix, c.matrix)
    assert int(a.matrix.sum()) == int((target != IGNORE).sum())


@pytest.mark.parametrize("ignore_index", [None, -1, 1000])
def test_other_ignore_conventions_match_reference(ignore_index: int | None) -> None:
    k = 6
    pred, target = random_case(k, 2, 23, 29, seed=3)
    target[target == IGNORE] = -1 if ignore_index is None else ignore_index
    if ignore_index is None:
        target[target == -1] = 2
    ref = ConfusionMatrix(k, ignore_index=IGNORE)
    ref.update(
        pred,
        torch.where(target == (ignore_index if ignore_index is not None else -7), IGNORE, target),
    )
    for checks in ("eager", "deferred"):
        cm = ConfusionMatrix(k, ignore_index=ignore_index, checks=checks)
        cm.update(pred, target)
        assert torch.equal(cm.matrix, ref.matrix), checks


@pytest.mark.parametrize("k", [19, 150])
def test_matches_torchmetrics(k: int) -> None:
    tm = pytest.importorskip("torchmetrics.classification")
    pred, target = random_case(k, 2, 37, 53, seed=k + 1, absent=(1, 4))
    ours = ConfusionMatrix(k, ignore_index=IGNORE)
    jac = tm.MulticlassJaccardIndex(k, average=None, ignore_index=IGNORE)
    conf = tm.MulticlassConfusionMatrix(k, ignore_index=IGNORE)
    for i in range(2):
        ours.update(pred[i : i + 1], target[i : i + 1])
        jac.update(pred[i : i + 1], target[i : i + 1])
        conf.update(pred[i : i + 1], target[i : i + 1])
    res = ours.compute()
    assert torch.equal(res.confusion, conf.compute())
    tm_iou = jac.compute().double()
    present = res.present
    # torchmetrics reports 0 (zero_division) where the union is empty; we report NaN
    assert torch.allclose(res.iou[present], tm_iou[present], rtol=1e-6, atol=0)
    assert torch.all(tm_iou[~present] == 0)
    assert torch.isnan(res.iou[1]) and torch.isnan(res.iou[4])


def test_nan_classes_are_reported_and_serialisable() -> None:
    k = 4
    target = torch.tensor([[0, 0, 1, 255], [1, 0, 255, 255]])
    pred = torch.tensor([[0, 2, 1, 3], [1, 0, 0, 3]])
    cm = ConfusionMatrix(k)
    cm.update(pred, target)
    res = cm.compute()
    # class 3: no pixel in target nor (non-ignored) prediction -> NaN, out of the mean
    assert math.isnan(res.iou[3]) and math.isnan(res.dice[3])
    # class 2: predicted once, never in target -> IoU 0 (counts), Acc NaN
    assert res.iou[2] == 0 and math.isnan(res.acc[2])
    # valid pixels (target, pred): (0,0) (0,2) (1,1) (1,1) (0,0)
    assert res.miou == pytest.approx((2 / 3 + 2 / 2 + 0) / 3)
    assert res.macc == pytest.approx((2 / 3 + 2 / 2) / 2)
    table = res.table(["zero", "one", "two", "three"])
    notes = {line.split(":")[0]: line for line in table.splitlines() if ":" in line}
    assert "mean (3/4)" in table
    assert notes["nan"].endswith("left out of the means: three")
    assert notes["predicted but absent from the target (IoU 0 counts in mIoU, Acc nan)"].endswith(
        ": two"
    )
    assert "never predicted" not in table
    d = res.to_dict(["zero", "one", "two", "three"], confusion=True)
    assert d["per_class"]["iou"][3] is None and d["per_class"]["acc"][2] is None
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert d["confusion"] == res.confusion.tolist()
    with pytest.raises(ValueError, match="class_names has 2 entries"):
        res.table(["a", "b"])


def test_empty_matrix_gives_nan_not_errors() -> None:
    res = ConfusionMatrix(3).compute()
    assert math.isnan(res.miou) and math.isnan(res.aacc) and math.isnan(res.fwiou)
    assert res.num_pixels == 0
    json.dumps(res.to_dict(), allow_nan=False)
    assert "nan" in res.table()


def test_per_image_mode() -> None:
    k = 5
    pred, target = random_case(k, 4, 19, 23, seed=9)
    target[2] = IGNORE  # an image with no evaluated pixel: left out of image-wise means
    pred[3][pred[3] == 1] = 0
    target[3][target[3] == 1] = 0  # class 1 absent in image 3 only
    cm = ConfusionMatrix(k, per_image=True)
    cm.update(pred[:3], target[:3])
    cm.update(pred[3], target[3])
    res = cm.compute()
    plain = ConfusionMatrix(k)
    plain.update(pred, target)
    assert torch.equal(res.confusion, plain.compute().confusion)
    per_image = []
    for i in range(4):
        r = ConfusionMatrix(k)
        r.update(pred[i], target[i])
        one = r.compute()
        per_image.append(one)
        np.testing.assert_allclose(res.image_iou[i].numpy(), one.iou.numpy(), equal_nan=True)
    assert res.num_images == 4 and math.isnan(res.image_iou[3, 1])
    mious = [o.miou for o in per_image if not math.isnan(o.miou)]
    assert len(mious) == 3
    assert res.image_miou == pytest.approx(sum(mious) / 3)
    assert res.image_aacc == pytest.approx(sum(o.aacc for o in per_image if o.num_pixels) / 3)
    assert res.to_dict()["per_image"]["num_images"] == 4
    assert "per image (4 images)" in res.table()


def test_from_confusion_matches_compute() -> None:
    pred, target = random_case(6, 2, 11, 13, seed=5)
    cm = ConfusionMatrix(6)
    cm.update(pred, target)
    a, b = cm.compute(), SegmentationResult.from_confusion(cm.matrix)
    assert a.miou == b.miou and torch.equal(a.iou.nan_to_num(-1), b.iou.nan_to_num(-1))
