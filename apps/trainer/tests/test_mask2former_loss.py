"""The Mask2Former criterion (``create_loss("mask2former")``): matching and losses on
hand-made cases with known answers, deep supervision, gradients, the registry contract, and
equality with transformers' ``Mask2FormerLoss`` / ``Mask2FormerHungarianMatcher`` itself."""

from __future__ import annotations

import math

import pytest
import torch

from seg_trainer.losses import create_loss
from seg_trainer.mask_classification import Mask2FormerLoss, semantic_targets

K = 4  # classes; index K is no-object
S = 4  # mask logits at 1/S of the label resolution, as the model's


def _upsample(low: torch.Tensor) -> torch.Tensor:
    """h x w -> (S h) x (S w) labels, constant on S x S blocks."""
    return low.repeat_interleave(S, 0).repeat_interleave(S, 1)


@pytest.fixture
def cell_center_points(monkeypatch):
    """Draw points only at the centres of the h x w mask-logit cells (from the global RNG).

    There, bilinear sampling of the mask logits returns a cell's value exactly, and so does
    sampling of the block-constant full-resolution target (the centre lies between two
    pixels of the same block): predictions equal to the target give an exactly known loss.
    """

    def install(h: int, w: int) -> None:
        def points(self, num, num_points, like):
            idx = torch.randint(0, h * w, (num, num_points))
            x = (idx % w + 0.5) / w
            y = (idx // w + 0.5) / h
            return torch.stack([x, y], dim=-1).to(like)

        monkeypatch.setattr(Mask2FormerLoss, "_uniform_points", points)

    return install


@pytest.fixture
def fixed_points(monkeypatch):
    """Every draw of a given shape returns the same uniform points (a private generator)."""

    def points(self, num, num_points, like):
        g = torch.Generator().manual_seed(num * 100003 + num_points)
        return torch.rand(num, num_points, 2, generator=g).to(like)

    monkeypatch.setattr(Mask2FormerLoss, "_uniform_points", points)


def _perfect_case(low_labels: torch.Tensor, query_of_class: dict[int, int], q: int):
    """Mask logits +-20 equal to each class's mask for its query, -20 for the other queries;
    class logit 4 on the query's class (3 on no-object for the unmatched ones), 0 elsewhere."""
    h, w = low_labels.shape
    class_logits = torch.zeros(1, q, K + 1)
    mask_logits = torch.full((1, q, h, w), -20.0)
    for c, query in query_of_class.items():
        class_logits[0, query, c] = 4.0
        mask_logits[0, query] = torch.where(low_labels == c, 20.0, -20.0)
    for query in set(range(q)) - set(query_of_class.values()):
        class_logits[0, query, K] = 3.0
    target = _upsample(low_labels)[None]
    return {"class_logits": class_logits, "mask_logits": mask_logits}, target


def _hand_ce(num_matched: int, num_unmatched: int) -> float:
    """Weighted-mean CE of ``_perfect_case`` by hand: matched queries have logit 4 on the
    target among K + 1 logits, unmatched ones logit 3 on no-object (CE weight 0.1)."""
    ce_matched = -math.log(math.exp(4.0) / (math.exp(4.0) + K))
    ce_unmatched = -math.log(math.exp(3.0) / (math.exp(3.0) + K))
    total = num_matched * ce_matched + 0.1 * num_unmatched * ce_unmatched
    return total / (num_matched + 0.1 * num_unmatched)


LOW = torch.tensor([[0, 0, 2, 2], [0, 0, 2, 2], [3, 3, 3, 3], [3, 3, 3, 3]])


def test_matcher_picks_the_obvious_permutation() -> None:
    q = 6
    for seed in range(3):
        torch.manual_seed(seed)
        queries = torch.randperm(q)[:3].tolist()  # queries of classes 0, 2, 3
        outputs, target = _perfect_case(LOW, dict(zip([0, 2, 3], queries, strict=True)), q)
        loss = create_loss("mask2former")
        targets = semantic_targets(target, num_classes=K, dtype=torch.float32)
        ((rows, cols),) = loss.match(outputs["class_logits"], outputs["mask_logits"], targets)
        expected = sorted(zip(queries, [0, 1, 2], strict=True))  # targets: sorted class ids
        assert list(zip(rows.tolist(), cols.tolist(), strict=True)) == expected


def test_perfect_predictions_give_zero_mask_losses_and_the_hand_ce(cell_center_points) -> None:
    cell_center_points(4, 4)
    q = 5
    outputs, target = _perfect_case(LOW, {0: 1, 2: 3, 3: 4}, q)
    parts = create_loss("mask2former", num_points=64)(outputs, target)
    assert set(parts) == {"loss_ce", "loss_mask", "loss_dice"}
    assert 0 <= parts["loss_mask"].item() < 1e-6
    assert 0 <= parts["loss_dice"].item() < 1e-6
    assert parts["loss_ce"].item() == pytest.approx(2.0 * _hand_ce(3, 2), rel=1e-6)
    # a wrong mask for one matched query raises the mask losses (the test can fail)
    outputs["mask_logits"][0, 3] *= -1
    worse = create_loss("mask2former", num_points=64)(outputs, target)
    assert worse["loss_mask"] > 1.0 and worse["loss_dice"] > 0.5


def test_ce_with_no_object_weight_by_hand(fixed_points) -> None:
    """Random class logits, masks that force the matching; the CE summed by hand."""
    torch.manual_seed(0)
    q, no_object_weight, class_weight = 6, 0.3, 1.5
    query_of_class = {0: 4, 2: 0, 3: 2}
    outputs, target = _perfect_case(LOW, query_of_class, q)
    outputs["class_logits"] = torch.randn(1, q, K + 1)
    loss = create_loss(
        "mask2former", no_object_weight=no_object_weight, class_weight=class_weight, num_points=500
    )
    targets = semantic_targets(target, num_classes=K, dtype=torch.float32)
    ((rows, cols),) = loss.match(outputs["class_logits"], outputs["mask_logits"], targets)
    assert rows.tolist() == [0, 2, 4] and cols.tolist() == [1, 2, 0]
    label_of_query = {query: c for c, query in query_of_class.items()}
    num = den = 0.0
    for query in range(q):
        logits = outputs["class_logits"][0, query].tolist()
        label = label_of_query.get(query, K)
        nll = -logits[label] + math.log(sum(math.exp(v) for v in logits))
        weight = no_object_weight if label == K else 1.0
        num, den = num + weight * nll, den + weight
    parts = loss(outputs, target)
    assert parts["loss_ce"].item() == pytest.approx(class_weight * num / den, rel=1e-6)


def test_ignore_creates_no_target_and_is_background_as_official(cell_center_points) -> None:
    """Ignore pixels give no class, no mask and no count; inside the matched masks they are
    negatives (0 in every mask), as the official semantic mapper + criterion and
    transformers: a prediction that is background there has zero mask loss, one that claims
    the ignore region is penalised."""
    low = LOW.clone()
    low[2, 2:] = 255
    target = _upsample(low)[None]
    ((classes, masks),) = semantic_targets(target, num_classes=K, dtype=torch.float32)
    assert classes.tolist() == [0, 2, 3]
    assert masks.shape == (3, 16, 16) and masks[:, target[0] == 255].abs().sum() == 0
    assert torch.equal(masks.sum(0), (target[0] != 255).float())

    cell_center_points(4, 4)
    outputs, _ = _perfect_case(low, {0: 1, 2: 3, 3: 4}, 5)
    parts = create_loss("mask2former", num_points=64)(outputs, target)
    assert parts["loss_mask"].item() < 1e-6 and parts["loss_dice"].item() < 1e-6
    assert parts["loss_ce"].item() == pytest.approx(2.0 * _hand_ce(3, 2), rel=1e-6)

    # the ignore label's value is arbitrary
    torch.manual_seed(5)
    ref = create_loss("mask2former", num_points=64)(outputs, target)
    torch.manual_seed(5)
    other = create_loss("mask2former", num_points=64, ignore_index=7)(
        outputs, target.masked_fill(target == 255, 7)
    )
    assert all(torch.equal(ref[k], other[k]) for k in ref)

    # claiming the ignore region for the class-3 mask costs mask loss (official behaviour)
    outputs["mask_logits"][0, 4, 2, 2:] = 20.0
    claimed = create_loss("mask2former", num_points=64)(outputs, target)
    assert claimed["loss_mask"] > 1.0


def test_all_ignored_batch_has_only_the_no_object_ce() -> None:
    torch.manual_seed(0)
    outputs = {"class_logits": torch.randn(2, 5, K + 1), "mask_logits": torch.randn(2, 5, 4, 4)}
    target = torch.full((2, 16, 16), 255)
    parts = create_loss("mask2former")(outputs, target)
    assert parts["loss_mask"].item() == 0 and parts["loss_dice"].item() == 0
    expected = -outputs["class_logits"].log_softmax(-1)[..., K].mean()
    assert parts["loss_ce"].item() == pytest.approx(2.0 * expected.item(), rel=1e-6)


def _random_outputs(n: int, q: int, h: int, w: int, *, layers: int, seed: int):
    g = torch.Generator().manual_seed(seed)

    def one():
        return {
            "class_logits": torch.randn(n, q, K + 1, generator=g),
            "mask_logits": 3 * torch.randn(n, q, h, w, generator=g),
        }

    outputs = one()
    if layers:
        outputs["deep_supervision"] = [one() for _ in range(layers)]
    return outputs


def _random_target(n: int, h: int, w: int, *, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, K, (n, h, w), generator=g)
    target[:, : h // 4, : w // 3] = 255
    target[-1][target[-1] == 2] = 1  # a class absent from the last image
    return target


def test_deep_supervision_adds_one_set_per_layer(fixed_points) -> None:
    outputs = _random_outputs(2, 6, 5, 6, layers=3, seed=0)
    target = _random_target(2, 20, 24, seed=1)
    loss = create_loss("mask2former", num_points=300)
    parts = loss(outputs, target)
    names = ["loss_ce", "loss_mask", "loss_dice"]
    assert sorted(parts) == sorted(names + [f"{n}_{i}" for i in range(3) for n in names])
    last = loss({k: v for k, v in outputs.items() if k != "deep_supervision"}, target)
    assert all(torch.equal(parts[n], last[n]) for n in names)
    for i, layer in enumerate(outputs["deep_supervision"]):
        alone = loss(layer, target)
        assert all(torch.equal(parts[f"{n}_{i}"], alone[n]) for n in names)
    assert len({round(parts[f"loss_mask_{i}"].item(), 6) for i in range(3)}) == 3


def test_gradients_reach_class_and_matched_mask_logits() -> None:
    torch.manual_seed(0)
    outputs = _random_outputs(2, 6, 5, 6, layers=2, seed=0)
    leaves = [outputs["class_logits"], outputs["mask_logits"]]
    for layer in outputs["deep_supervision"]:
        leaves += [layer["class_logits"], layer["mask_logits"]]
    for t in leaves:
        t.requires_grad_(True)
    target = _random_target(2, 20, 24, seed=1)
    loss = create_loss("mask2former", num_points=200)
    torch.manual_seed(3)
    total = sum(loss(outputs, target).values())
    total.backward()
    for t in leaves:
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    # only matched queries' masks are supervised; every query's class is
    targets = semantic_targets(target, num_classes=K, dtype=torch.float32)
    torch.manual_seed(3)
    matches = loss.match(outputs["class_logits"], outputs["mask_logits"], targets)
    for b, (rows, _) in enumerate(matches):
        per_query = outputs["mask_logits"].grad[b].abs().sum((1, 2))
        unmatched = sorted(set(range(6)) - set(rows.tolist()))
        assert (per_query[rows] > 0).all() and (per_query[unmatched] == 0).all()
        assert (outputs["class_logits"].grad[b].abs().sum(1) > 0).all()


def test_num_masks_is_averaged_over_processes(fixed_points, monkeypatch) -> None:
    """With a process group, the mask count is all-reduced (summed) and divided by the world
    size, as the official criterion; simulated: the other process has 6 masks."""
    outputs = _random_outputs(2, 6, 5, 6, layers=1, seed=0)
    target = _random_target(2, 20, 24, seed=1)
    local_masks = sum(
        len(c) for c, _ in semantic_targets(target, num_classes=K, dtype=torch.float32)
    )
    loss = create_loss("mask2former", num_points=300)
    local = loss(outputs, target)

    def all_reduce(tensor):
        tensor += 6.0

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    shared = loss(outputs, target)
    scale = local_masks / ((local_masks + 6) / 2)
    for name in ("loss_mask", "loss_dice", "loss_mask_0", "loss_dice_0"):
        assert shared[name].item() == pytest.approx(local[name].item() * scale, rel=1e-6)
    assert torch.equal(shared["loss_ce"], local["loss_ce"])


def test_registry_options_and_errors() -> None:
    loss = create_loss("mask2former")
    assert isinstance(loss, Mask2FormerLoss) and Mask2FormerLoss.takes_outputs is True
    assert (loss.no_object_weight, loss.class_weight, loss.mask_weight, loss.dice_weight) == (
        0.1,
        2.0,
        5.0,
        5.0,
    )
    assert (loss.num_points, loss.oversample_ratio, loss.importance_sample_ratio) == (
        12544,
        3.0,
        0.75,
    )
    assert loss.ignore_index == 255
    with pytest.raises(TypeError, match=r"options are .*num_points.*importance_sample_ratio"):
        create_loss("mask2former", num_point=100)
    with pytest.raises(ValueError, match="oversample_ratio"):
        create_loss("mask2former", oversample_ratio=0.5)
    with pytest.raises(ValueError, match="importance_sample_ratio"):
        create_loss("mask2former", importance_sample_ratio=1.5)
    outputs = _random_outputs(1, 3, 4, 4, layers=0, seed=0)
    with pytest.raises(KeyError, match="class_logits"):
        loss({"out": torch.zeros(1, K, 16, 16)}, torch.zeros(1, 16, 16, dtype=torch.long))
    with pytest.raises(ValueError, match=r"label\(s\) \[7\]"):
        loss(outputs, torch.full((1, 16, 16), 7))


@pytest.mark.parametrize(
    "options",
    [
        {},  # the official ADE20K values, 12544 points
        {
            "num_points": 101,
            "oversample_ratio": 2.0,
            "importance_sample_ratio": 0.5,
            "no_object_weight": 0.3,
            "class_weight": 1.0,
            "mask_weight": 2.0,
            "dice_weight": 3.0,
        },
    ],
    ids=["official", "other-options"],
)
def test_equals_transformers_mask2former_loss(options) -> None:
    """Same global-RNG seed -> the same points in both (the draws happen in the same order),
    so the matched indices and every loss value must agree."""
    pytest.importorskip("transformers")
    pytest.importorskip("scipy")
    from transformers import Mask2FormerConfig
    from transformers.models.mask2former import image_processing_mask2former as hf_proc
    from transformers.models.mask2former import modeling_mask2former as hf

    opts = {
        "no_object_weight": 0.1,
        "class_weight": 2.0,
        "mask_weight": 5.0,
        "dice_weight": 5.0,
        "num_points": 12544,
        "oversample_ratio": 3.0,
        "importance_sample_ratio": 0.75,
        **options,
    }
    config = Mask2FormerConfig(
        num_labels=K,
        no_object_weight=opts["no_object_weight"],
        class_weight=opts["class_weight"],
        mask_weight=opts["mask_weight"],
        dice_weight=opts["dice_weight"],
        train_num_points=opts["num_points"],
        oversample_ratio=opts["oversample_ratio"],
        importance_sample_ratio=opts["importance_sample_ratio"],
    )
    weights = {
        "loss_cross_entropy": opts["class_weight"],
        "loss_mask": opts["mask_weight"],
        "loss_dice": opts["dice_weight"],
    }
    reference = hf.Mask2FormerLoss(config, weights)
    ours = create_loss("mask2former", **options)

    outputs = _random_outputs(2, 7, 8, 10, layers=2, seed=0)
    target = _random_target(2, 32, 40, seed=1)
    converted = [
        hf_proc.convert_segmentation_map_to_binary_masks_fast(t, ignore_index=255) for t in target
    ]
    mask_labels = [m for m, _ in converted]
    class_labels = [c for _, c in converted]
    layers = [outputs, *outputs["deep_supervision"]]

    targets = semantic_targets(target, num_classes=K, dtype=torch.float32)
    for layer in layers:
        torch.manual_seed(7)
        expected = reference.matcher(
            layer["mask_logits"], layer["class_logits"], mask_labels, class_labels
        )
        torch.manual_seed(7)
        got = ours.match(layer["class_logits"], layer["mask_logits"], targets)
        for (er, ec), (gr, gc) in zip(expected, got, strict=True):
            assert torch.equal(er, gr) and torch.equal(ec, gc)

    aux = [
        {"masks_queries_logits": a["mask_logits"], "class_queries_logits": a["class_logits"]}
        for a in outputs["deep_supervision"]
    ]
    for layer in layers:
        for key in ("class_logits", "mask_logits"):
            layer[key].requires_grad_(True)
    torch.manual_seed(11)
    ref = reference(outputs["mask_logits"], outputs["class_logits"], mask_labels, class_labels, aux)
    torch.manual_seed(11)
    parts = ours(outputs, target)
    # transformers returns unweighted parts and weights them in get_loss_dict
    assert sorted(parts) == sorted(k.replace("cross_entropy", "ce") for k in ref)
    for key, value in ref.items():
        weight = next(w for name, w in weights.items() if key.startswith(name))
        got = parts[key.replace("cross_entropy", "ce")]
        assert abs(got.item() - weight * value.item()) <= 1e-6 * max(1.0, abs(got.item())), key

    # the same gradients (transformers' weighted total as its get_loss_dict + get_loss)
    grads = [layer[key] for layer in layers for key in ("class_logits", "mask_logits")]
    ref_total = sum(
        next(w for name, w in weights.items() if key.startswith(name)) * value
        for key, value in ref.items()
    )
    expected_grads = torch.autograd.grad(ref_total, grads)
    got_grads = torch.autograd.grad(sum(parts.values()), grads)
    for e, g in zip(expected_grads, got_grads, strict=True):
        assert torch.allclose(g, e, rtol=1e-5, atol=1e-8)
