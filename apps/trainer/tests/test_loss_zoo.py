"""The loss zoo: registry contract, and Dice/Lovasz/Focal/Tversky equal to
segmentation_models_pytorch 0.6 (values and gradients) with the same options."""

from __future__ import annotations

import pytest
import segmentation_models_pytorch.losses as smp_losses  # in seg-trainer's test extra
import torch

from seg_trainer.losses import create_loss, list_losses, loss_class

K = 5


def _batch(dtype: torch.dtype, *, ignore: bool = True, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(2, K, 9, 11, generator=g)).to(dtype)
    target = torch.randint(0, K, (2, 9, 11), generator=g)
    target[0, :, :3] = 4  # class 4 only in image 0
    target[1][target[1] == 4] = 3
    target[:, 0, :] = 2
    if ignore:
        target[:, -2:, -3:] = 255
    target[target == 1] = 0  # class 1 absent from the labels
    return logits, target


@pytest.mark.parametrize("name", sorted(list_losses()))
def test_every_registered_loss_is_finite_differentiable_and_ignores(name: str) -> None:
    if getattr(loss_class(name), "takes_outputs", False):
        pytest.skip("takes the whole outputs dict (tested with its own cases: test_loss_terms)")
    loss = create_loss(name)
    channels = getattr(loss, "channels", None)
    logits, target = _batch(torch.float64)
    if channels is not None:  # a boundary/detail map, not K-class logits
        logits = logits[:, : channels[0]].contiguous()
    logits.requires_grad_(True)
    value = loss(logits, target)
    if isinstance(value, dict):
        value = sum(value.values())
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    if channels is not None:
        return  # boundary targets: void pixels are non-boundary pixels, not ignored
    # ignored pixels get no gradient and do not change the value
    ignored = target == 255
    assert logits.grad.permute(0, 2, 3, 1)[ignored].abs().max() == 0
    other = logits.detach().clone()
    other.permute(0, 2, 3, 1)[ignored] = 100.0
    assert torch.allclose(loss(other, target), value.detach(), rtol=0, atol=1e-12)


def test_unknown_names_and_options_fail_listing_valid_ones() -> None:
    with pytest.raises(KeyError, match=r"valid names are .*dice"):
        create_loss("dcie")
    with pytest.raises(TypeError, match=r"options are .*smooth"):
        create_loss("dice", smoth=1.0)


SMP_CASES = [
    ("dice", {}, "DiceLoss", {}),
    ("dice", {"smooth": 1.0, "log_loss": True}, "DiceLoss", {"smooth": 1.0, "log_loss": True}),
    ("dice", {"classes": [0, 2, 3]}, "DiceLoss", {"classes": [0, 2, 3]}),
    (
        "tversky",
        {"alpha": 0.3, "beta": 0.7, "gamma": 1.5},
        "TverskyLoss",
        {"alpha": 0.3, "beta": 0.7, "gamma": 1.5},
    ),
    ("focal", {}, "FocalLoss", {}),
    ("focal", {"alpha": 0.25, "gamma": 1.5}, "FocalLoss", {"alpha": 0.25, "gamma": 1.5}),
    ("focal", {"normalized": True}, "FocalLoss", {"normalized": True}),
    ("lovasz", {}, "LovaszLoss", {}),
    ("lovasz", {"per_image": True}, "LovaszLoss", {"per_image": True}),
]


@pytest.mark.parametrize("ignore", [True, False], ids=["ignore255", "no-ignore"])
@pytest.mark.parametrize(("ours", "opts", "theirs", "smp_opts"), SMP_CASES, ids=lambda v: str(v))
def test_equal_to_smp(ours: str, opts: dict, theirs: str, smp_opts: dict, ignore: bool) -> None:
    # smp's Lovasz fails on float64 inputs (dtype mismatch inside smp): compare it in float32
    dtype = torch.float32 if ours == "lovasz" else torch.float64
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    logits, target = _batch(dtype, ignore=ignore)
    ignore_index = 255 if ignore else None
    ref = getattr(smp_losses, theirs)(mode="multiclass", ignore_index=ignore_index, **smp_opts)
    mine = create_loss(ours, ignore_index=ignore_index, **opts)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    va, vb = mine(a, target), ref(b, target)
    va.backward()
    vb.backward()
    assert abs(va.item() - vb.item()) <= tol * max(1.0, abs(vb.item())), (va.item(), vb.item())
    assert (a.grad - b.grad).abs().max().item() <= tol, (a.grad - b.grad).abs().max().item()


def test_ce_label_smoothing_and_weights_match_torch() -> None:
    logits, target = _batch(torch.float64)
    w = [1.0, 2.0, 0.5, 1.0, 3.0]
    got = create_loss("ce", class_weights=w, label_smoothing=0.1)(logits, target)
    want = torch.nn.functional.cross_entropy(
        logits.float(),
        target,
        weight=torch.tensor(w),
        ignore_index=255,
        label_smoothing=0.1,
    )
    assert torch.allclose(got, want)
