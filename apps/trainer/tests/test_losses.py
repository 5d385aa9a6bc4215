"""Losses: CE with ignore and class weights, OHEM, aux weighting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seg_trainer.config import LossConfig
from seg_trainer.losses import SegmentationLoss, build_loss, cross_entropy, ohem_cross_entropy


def make(n=2, k=4, h=6, w=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, h, w, generator=g, requires_grad=True)
    target = torch.randint(0, k, (n, h, w), generator=g)
    return logits, target


def manual_ce(logits, target, keep, weight=None):
    """Weighted mean of -log p(true) over the pixels in ``keep``."""
    logp = logits.log_softmax(1)
    nll = -logp.gather(1, target.clamp(max=logits.shape[1] - 1).unsqueeze(1)).squeeze(1)
    w = torch.ones_like(nll) if weight is None else weight[target.clamp(max=logits.shape[1] - 1)]
    w = w * keep
    return (nll * w).sum() / w.sum()


def test_ce_ignores_ignore_index():
    logits, target = make()
    target[0, :3] = 255
    loss = cross_entropy(logits, target, ignore_index=255)
    torch.testing.assert_close(loss, manual_ce(logits, target, (target != 255).float()))
    # ignored pixels get no gradient
    loss.backward()
    assert torch.all(logits.grad[0, :, :3] == 0)
    assert logits.grad[1].abs().sum() > 0


def test_ce_class_weights():
    logits, target = make()
    weight = torch.tensor([1.0, 2.0, 0.5, 3.0])
    loss = cross_entropy(logits, target, weight=weight)
    torch.testing.assert_close(
        loss, manual_ce(logits, target, torch.ones_like(target).float(), weight)
    )
    assert not torch.allclose(loss, cross_entropy(logits, target))


def test_all_ignored_gives_zero_not_nan():
    logits, target = make()
    target[:] = 255
    for loss in (cross_entropy(logits, target), ohem_cross_entropy(logits, target, min_kept=10)):
        assert loss.item() == 0.0
        loss.backward()  # keeps the graph


def true_prob(logits, target):
    return (
        logits.softmax(1).gather(1, target.clamp(max=logits.shape[1] - 1).unsqueeze(1)).squeeze(1)
    )


def test_ohem_keeps_pixels_below_threshold():
    logits, target = make(seed=1)
    p = true_prob(logits.detach(), target)
    keep = (p <= 0.7).float()
    assert 0 < keep.sum() < keep.numel()  # the test data has both easy and hard pixels
    loss = ohem_cross_entropy(logits, target, thresh=0.7, min_kept=0)
    torch.testing.assert_close(loss, manual_ce(logits, target, keep))


@pytest.mark.parametrize("min_kept", [1, 7, 40, 10_000])
def test_ohem_keeps_at_least_min_kept(min_kept):
    logits, target = make(seed=2)
    logits = (logits * 6).detach().requires_grad_()  # many confident pixels above 0.7
    target[1, 0] = 255
    valid = target != 255
    p = true_prob(logits.detach(), target)
    thresh = 0.05
    loss = ohem_cross_entropy(logits, target, thresh=thresh, min_kept=min_kept)
    k = min(min_kept, int(valid.sum()))
    kth = p[valid].kthvalue(k).values
    keep = valid & (p <= max(thresh, kth.item()))
    assert int(keep.sum()) >= k
    torch.testing.assert_close(loss, manual_ce(logits, target, keep.float()))
    loss.backward()
    kept_grad = logits.grad.abs().sum(1) > 0
    assert int(kept_grad.sum()) == int(keep.sum())  # gradient exactly on the kept pixels


def test_ohem_with_class_weights_and_ignore():
    logits, target = make(seed=3)
    target[0, 0] = 255
    weight = torch.tensor([0.5, 1.0, 2.0, 4.0])
    valid = target != 255
    p = true_prob(logits.detach(), target)
    keep = valid & (p <= 0.7)
    loss = ohem_cross_entropy(logits, target, thresh=0.7, min_kept=0, weight=weight)
    torch.testing.assert_close(loss, manual_ce(logits, target, keep.float(), weight))


def test_segmentation_loss_adds_weighted_aux():
    logits, target = make()
    aux = torch.randn_like(logits)
    crit = SegmentationLoss(aux_weight=0.4)
    total, parts = crit({"out": logits, "aux": aux}, target)
    expected = F.cross_entropy(logits, target) + 0.4 * F.cross_entropy(aux, target)
    torch.testing.assert_close(total, expected)
    assert set(parts) == {"loss_out", "loss_aux"}
    total0, parts0 = SegmentationLoss(aux_weight=0.0)({"out": logits, "aux": aux}, target)
    torch.testing.assert_close(total0, F.cross_entropy(logits, target))
    assert "loss_aux" not in parts0


def test_logits_are_resized_to_the_label():
    logits, _ = make(h=4, w=4)
    target = torch.randint(0, 4, (2, 8, 8))
    crit = SegmentationLoss(aux_weight=0.0)
    total, _ = crit({"out": logits}, target)
    up = F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(total, F.cross_entropy(up, target))


def test_build_loss_from_config():
    crit = build_loss(
        LossConfig(
            terms={"out": [{"name": "ohem", "min_kept": 5, "class_weights": [1.0, 2.0, 3.0, 4.0]}]}
        ),
        num_classes=4,
    )
    (term,) = crit.heads["out"]
    assert term.name == "ohem" and term.loss.min_kept == 5
    assert term.loss.class_weights.tolist() == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match="unknown loss 'dic'; did you mean 'dice'"):
        SegmentationLoss({"out": [{"name": "dic"}]})
