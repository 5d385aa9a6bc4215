"""ConfusionMatrix API: validation errors, merge/reset/state_dict, all_reduce without a group."""

from __future__ import annotations

import io

import pytest
import torch

from seg_metrics import ConfusionMatrix


def labels(
    k: int, seed: int = 0, shape: tuple[int, ...] = (2, 9, 11)
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, k, shape, generator=g)
    target[..., 0] = 255
    return torch.randint(0, k, shape, generator=g), target


def test_counts_rows_are_target_columns_are_pred() -> None:
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([[2, 2, 0]]), torch.tensor([[1, 255, 0]]))
    expected = torch.zeros(3, 3, dtype=torch.int64)
    expected[1, 2] = 1
    expected[0, 0] = 1
    assert torch.equal(cm.matrix, expected)
    assert cm.matrix.dtype == torch.int64


@pytest.mark.parametrize("bad", [19, 254, 256, -1, 10**12])
def test_bad_target_values_are_named_eager(bad: int) -> None:
    pred, target = labels(19)
    target[0, 3, 4] = bad
    cm = ConfusionMatrix(19)
    with pytest.raises(
        ValueError, match=rf"target holds 1 pixels with values \[{bad}\] outside \[0, 19\)"
    ):
        cm.update(pred, target)
    assert int(cm.matrix.sum()) == 0  # nothing was counted


def test_bad_target_values_deferred_raise_at_compute_and_are_excluded() -> None:
    pred, target = labels(5)
    target[0, 1, 1] = 7
    target[1, 2, 2] = 9
    pred[1, 3, 3] = -2
    cm = ConfusionMatrix(5, checks="deferred")
    cm.update(pred, target)  # no error, no host read
    with pytest.raises(
        ValueError, match=r"target held 2 pixels .* \(smallest 7, largest 9\)"
    ) as err:
        cm.compute()
    assert "pred held 1 pixels" in str(err.value) and "smallest -2" in str(err.value)
    with pytest.raises(ValueError, match="deferred check"):
        cm.all_reduce()
    good = (target >= 0) & (target < 5) & (pred >= 0) & (pred < 5)
    assert int(cm.matrix.sum()) == int(good.sum())
    with pytest.raises(ValueError, match="deferred check"):
        cm.state_dict()


def test_bad_pred_values_are_named() -> None:
    pred, target = labels(4)
    pred[0, 0, 5] = 4
    pred[1, 0, 5] = 200
    with pytest.raises(
        ValueError, match=r"pred holds 2 pixels with values \[4, 200\] outside \[0, 4\)"
    ):
        ConfusionMatrix(4).update(pred, target)


def test_many_bad_values_are_truncated() -> None:
    pred, target = labels(3, shape=(1, 4, 30))
    target[0, 1] = torch.arange(30, 60)
    with pytest.raises(ValueError, match=r"\[30, 31, 32, 33, 34, 35, 36, 37, 38, 39, \.\.\.\]"):
        ConfusionMatrix(3).update(pred, target)


def test_shape_and_type_errors_name_the_shapes() -> None:
    cm = ConfusionMatrix(5)
    with pytest.raises(ValueError, match=r"pred \(2, 9, 11\) vs target \(2, 9, 12\)"):
        cm.update(torch.zeros(2, 9, 11, dtype=torch.long), torch.zeros(2, 9, 12, dtype=torch.long))
    with pytest.raises(ValueError, match=r"logits \(2, 5, 9, 11\) vs target \(2, 18, 22\)"):
        cm.update(torch.zeros(2, 5, 9, 11), torch.zeros(2, 18, 22, dtype=torch.long))
    with pytest.raises(ValueError, match="logits have 4 channels"):
        cm.update(torch.zeros(2, 4, 9, 11), torch.zeros(2, 9, 11, dtype=torch.long))
    with pytest.raises(TypeError, match="target must hold integer class ids"):
        cm.update(torch.zeros(2, 9, 11, dtype=torch.long), torch.zeros(2, 9, 11))
    with pytest.raises(TypeError, match="pass integer labels"):
        cm.update(torch.zeros(2, 9, 11), torch.zeros(2, 9, 11, dtype=torch.long))
    with pytest.raises(ValueError, match=r"H x W or N x H x W, got shape \(9,\)"):
        cm.update(torch.zeros(9, dtype=torch.long), torch.zeros(9, dtype=torch.long))
    assert int(cm.matrix.sum()) == 0


def test_constructor_errors() -> None:
    with pytest.raises(ValueError, match="ignore_index=0 is a valid class id"):
        ConfusionMatrix(19, ignore_index=0)
    with pytest.raises(ValueError, match="checks must be one of"):
        ConfusionMatrix(19, checks="off")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive int"):
        ConfusionMatrix(0)


def test_merge_reset_and_state_dict_roundtrip() -> None:
    pred, target = labels(6, shape=(4, 7, 8))
    whole = ConfusionMatrix(6, per_image=True)
    whole.update(pred, target)
    a = ConfusionMatrix(6, per_image=True)
    b = ConfusionMatrix(6, per_image=True)
    a.update(pred[:3], target[:3])
    b.update(pred[3:], target[3:])
    assert a.merge(b) is a
    assert torch.equal(a.matrix, whole.matrix)
    ra, rw = a.compute(), whole.compute()
    assert ra.image_miou == rw.image_miou

    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    c = ConfusionMatrix(6, per_image=True)
    c.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(c.matrix, whole.matrix)
    assert c.compute().image_miou == rw.image_miou

    with pytest.raises(ValueError, match=r"saved with \(num_classes, ignore_index, per_image\)"):
        ConfusionMatrix(7).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="cannot merge"):
        a.merge(ConfusionMatrix(6))

    a.reset()
    assert int(a.matrix.sum()) == 0 and a.compute().num_images == 0


def test_all_reduce_without_process_group_is_a_noop_that_freezes_counts() -> None:
    pred, target = labels(3)
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    before = cm.matrix.clone()
    assert cm.all_reduce() is cm
    assert torch.equal(cm.matrix, before)
    with pytest.raises(RuntimeError, match="update\\(\\) after all_reduce"):
        cm.update(pred, target)
    with pytest.raises(RuntimeError, match="already called"):
        cm.all_reduce()
    cm.reset()
    cm.update(pred, target)
    assert torch.equal(cm.matrix, before)


def test_device_follows_data_and_explicit_device() -> None:
    cm = ConfusionMatrix(3)
    assert cm.device == torch.device("cpu")
    cm = ConfusionMatrix(3, device="cpu")
    pred, target = labels(3)
    cm.update(pred, target)
    assert cm.matrix.device.type == "cpu"
    assert "ConfusionMatrix(num_classes=3" in repr(cm)
