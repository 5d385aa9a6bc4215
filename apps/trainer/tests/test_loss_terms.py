"""Loss terms per output (YAML loss lists), and the real-time models' boundary losses on
hand-made cases with known answers (mmseg parity was checked by hand: see the trainer README)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from seg_trainer import losses as losses_mod
from seg_trainer.boundary_losses import detail_target, edge_target
from seg_trainer.config import ConfigError, LossConfig, config_from_dict, load_config
from seg_trainer.losses import SegmentationLoss, build_loss, create_loss, cross_entropy

MINIMAL = {
    "output_dir": "runs/x",
    "model": {"name": "pspnet", "backbone": "resnet18_deep", "num_classes": 4},
    "data": {"dataset": "synthetic"},
    "train": {"max_iters": 10},
}


def cfg_with(loss):
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    data["loss"] = loss
    return config_from_dict(data, source="cfg.yaml")


def batch(n=2, k=4, h=6, w=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, h, w, generator=g, requires_grad=True)
    target = torch.randint(0, k, (n, h, w), generator=g)
    target[0, :2] = 255
    return logits, target


# ------------------------------------------------------------------ the YAML forms


def test_list_form_is_the_out_terms_and_aux_gets_them_times_0_4():
    cfg = cfg_with([{"name": "ce", "weight": 1.0}, {"name": "dice", "weight": 0.5, "smooth": 1.0}])
    assert cfg.loss.terms == {
        "out": [{"name": "ce", "weight": 1.0}, {"name": "dice", "weight": 0.5, "smooth": 1.0}]
    }
    assert cfg.loss.aux_weight == 0.4 and cfg.loss.ignore_index == 255
    crit = build_loss(cfg.loss)
    out, target = batch()
    aux = torch.randn_like(out)
    total, parts = crit({"out": out, "aux": aux}, target)
    dice = create_loss("dice", smooth=1.0)
    expected = (
        cross_entropy(out, target)
        + 0.5 * dice(out, target)
        + 0.4 * cross_entropy(aux, target)
        + 0.2 * dice(aux, target)
    )
    torch.testing.assert_close(total, expected)
    assert set(parts) == {"loss_out_ce", "loss_out_dice", "loss_aux_ce", "loss_aux_dice"}
    torch.testing.assert_close(parts["loss_aux_dice"], dice(aux, target).detach())  # unweighted


def test_mapping_form_aux_default_and_per_head_override():
    cfg = cfg_with(
        {
            "out": [{"name": "ohem", "thresh": 0.9, "min_kept": 10}],
            "aux": [{"name": "ce", "weight": 0.25}],
            "aux1": ["focal"],
        }
    )
    crit = build_loss(cfg.loss)
    out, target = batch()
    aux, aux1, aux2 = (torch.randn_like(out) for _ in range(3))
    outputs = {"out": out, "aux": aux, "aux1": aux1, "aux2": aux2, "boundary": out[:, :1]}
    total, parts = crit(outputs, target)
    ohem = create_loss("ohem", thresh=0.9, min_kept=10)
    expected = (
        ohem(out, target)
        + 0.25 * cross_entropy(aux, target)
        + create_loss("focal")(aux1, target)
        + 0.25 * cross_entropy(aux2, target)
    )
    torch.testing.assert_close(total, expected)
    # one term per key: logged as loss_<key>; "boundary" has no entry: left alone
    assert set(parts) == {"loss_out", "loss_aux", "loss_aux1", "loss_aux2"}


def test_default_and_single_loss_form_give_exactly_the_old_loss():
    """Bit for bit: CE(out) + 0.4 CE(aux), as the loss before the term lists."""
    out, target = batch()
    aux = torch.randn_like(out)
    for loss in (None, {"name": "ce", "aux_weight": 0.4, "ignore_index": 255}, [{"name": "ce"}]):
        total, parts = build_loss(cfg_with(loss).loss)({"out": out, "aux": aux}, target)
        old = cross_entropy(out, target) + 0.4 * cross_entropy(aux, target)
        assert torch.equal(total, old)
        assert set(parts) == {"loss_out", "loss_aux"}
    legacy = cfg_with({"name": "ohem", "ohem_thresh": 0.8, "ohem_min_kept": 7, "aux_weight": 0.0})
    assert legacy.loss.terms == {
        "out": [{"name": "ohem", "weight": 1.0, "thresh": 0.8, "min_kept": 7}]
    }
    total, parts = build_loss(legacy.loss)({"out": out, "aux": aux}, target)
    assert torch.equal(total, losses_mod.ohem_cross_entropy(out, target, thresh=0.8, min_kept=7))
    assert set(parts) == {"loss_out"}  # aux_weight 0: the aux output is not computed


@pytest.mark.parametrize(
    "loss",
    [
        [{"name": "ce"}, {"name": "lovasz", "per_image": True, "weight": 0.3}],
        {"out": ["ce"], "aux": [], "boundary": [{"name": "boundary_bce", "weight": 20.0}]},
        {"name": "ohem", "class_weights": [1.0, 2.0, 1.0, 1.0]},
    ],
)
def test_every_form_round_trips_through_to_dict(loss):
    cfg = cfg_with(loss)
    again = config_from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg
    assert again.to_dict()["loss"] == cfg.to_dict()["loss"]


@pytest.mark.parametrize(
    ("loss", "key", "words"),
    [
        ([{"name": "dcie"}], "loss.out.0.name", "did you mean 'dice'"),
        ([{"name": "dice", "smoth": 1.0}], "loss.out.0.smoth", "did you mean 'smooth'"),
        ([{"name": "ce", "weight": -1}], "loss.out.0.weight", "must be >= 0"),
        ([{"weight": 1.0}], "loss.out.0.name", "missing"),
        ({"out": {"name": "ce"}}, "loss.out", "expected a list of loss terms"),
        ({"aux": ["ce"]}, "loss.out", "missing"),
        ({"aux_wieght": 0.1, "out": ["ce"]}, "loss.aux_wieght", "did you mean 'aux_weight'"),
        ({"name": "ce", "out": ["ce"]}, "loss.out", "cannot be mixed"),
        ({"name": "dice"}, "loss.name", "term-list form"),
        ({"name": "ce", "ohem_tresh": 0.5}, "loss.ohem_tresh", "did you mean 'ohem_thresh'"),
        ({"name": "ohem", "ohem_thresh": 1.5}, "loss.out.0", "thresh must be in (0, 1]"),
        ({"class_weights": [1.0]}, "loss.class_weights", "model.num_classes is 4"),
        (
            [{"name": "ce", "class_weights": [1, 1, 1]}],
            "loss.out.0.class_weights",
            "model.num_classes is 4",
        ),
        ([{"name": "dice", "ignore_index": 0}], "loss.out.0.ignore_index", "dataset's"),
        ({"ignore_index": 0}, "loss.ignore_index", "marks void pixels as 255"),
        ([{"name": "ce", "average": "sum"}], "loss.out.0", "average must be one of"),
    ],
)
def test_bad_terms_name_the_key_and_the_valid_ones(loss, key, words):
    with pytest.raises(ConfigError) as info:
        cfg_with(loss)
    msg = str(info.value)
    assert f"'{key}'" in msg and words in msg and "cfg.yaml" in msg, msg


def test_unknown_name_lists_the_registered_losses(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, "loss": [{"name": "nope"}]}))
    with pytest.raises(ConfigError, match=r"valid: \[.*'boundary_bce'.*'detail'.*'ohem'"):
        load_config(path)


def test_ignore_index_comes_from_the_dataset_and_reaches_every_term():
    cfg = cfg_with({"out": [{"name": "dice"}, {"name": "ce"}]})
    crit = build_loss(cfg.loss)
    assert all(t.loss.ignore_index == 255 for t in crit.heads["out"])
    crit = build_loss(cfg.loss, ignore_index=7)
    assert all(t.loss.ignore_index == 7 for t in crit.heads["out"])


def test_logits_are_resized_to_the_label_before_map_terms():
    out = torch.randn(2, 4, 3, 4)
    target = torch.randint(0, 4, (2, 6, 8))
    for align in (False, True):
        crit = SegmentationLoss({"out": [{"name": "ce"}]}, align_corners=align)
        up = F.interpolate(out, size=(6, 8), mode="bilinear", align_corners=align)
        torch.testing.assert_close(crit({"out": out}, target)[0], cross_entropy(up, target))


def test_missing_output_is_a_config_error():
    crit = SegmentationLoss({"out": ["ce"], "boundary": ["boundary_bce"]})
    out, target = batch()
    with pytest.raises(ConfigError, match=r"'loss.boundary'.*no 'boundary' output"):
        crit({"out": out}, target)


class _WholeOutputs(torch.nn.Module):
    """A takes_outputs loss returning named parts: sum of the two maps' means."""

    takes_outputs = True

    def __init__(self, *, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, outputs, target):
        return {"loss_a": self.scale * outputs["out"].mean(), "b": outputs["extra"].mean()}


def test_takes_outputs_terms_get_the_whole_dict_and_parts_are_logged(monkeypatch):
    monkeypatch.setitem(losses_mod.LOSSES._items, "whole_test", _WholeOutputs)
    out, _ = batch(h=3, w=3)
    extra = torch.randn(2, 7)
    crit = SegmentationLoss(
        {"out": [{"name": "ce"}, {"name": "whole_test", "weight": 2.0, "scale": 3.0}]}
    )
    total, parts = crit({"out": out, "extra": extra, "aux": out * 2}, torch.zeros(2, 6, 6).long())
    up = F.interpolate(out, size=(6, 6), mode="bilinear", align_corners=False)
    ce = cross_entropy(up, torch.zeros(2, 6, 6).long())
    aux_ce = cross_entropy(up * 2, torch.zeros(2, 6, 6).long())
    # the whole-outputs term sees the unresized "out"; aux gets only the map terms x 0.4
    expected = ce + 2.0 * (3.0 * out.mean() + extra.mean()) + 0.4 * aux_ce
    torch.testing.assert_close(total, expected)
    assert set(parts) == {"loss_out_ce", "loss_out_a", "loss_out_b", "loss_aux"}


# ------------------------------------------------------------------ boundary targets


def test_edge_target_of_a_vertical_and_a_horizontal_boundary():
    # GenerateEdge marks both sides (right-neighbour and diagonal pairs), then a 4x4 dilation
    # with OpenCV's anchor (2, 2) spreads it 2 pixels left/up and 1 right/down: columns 4..8
    lab = torch.zeros(1, 6, 12, dtype=torch.long)
    lab[:, :, 6:] = 1
    edge = edge_target(lab, edge_width=4)
    expect = torch.zeros(1, 6, 12)
    expect[:, :, 4:9] = 1
    assert torch.equal(edge, expect)
    raw = edge_target(lab, edge_width=1)  # no dilation: column 5, and column 6 but its last row
    expect = torch.zeros(1, 6, 12)
    expect[:, :, 5] = 1
    expect[:, :-1, 6] = 1
    assert torch.equal(raw, expect)
    assert torch.equal(edge_target(lab.transpose(1, 2), edge_width=4), edge.transpose(1, 2))


def test_edge_target_ignores_pairs_with_void():
    lab = torch.zeros(1, 5, 8, dtype=torch.long)
    lab[:, :, 4:] = 255  # class 0 | void: no edge at all
    assert edge_target(lab).sum() == 0
    lab[:, :, 6:] = 1  # 0 | void | 1: still none (every differing pair has a void pixel)
    assert edge_target(lab).sum() == 0


def test_boundary_bce_is_class_balanced():
    lab = torch.zeros(1, 6, 12, dtype=torch.long)
    lab[:, :, 6:] = 1  # 30 edge pixels (columns 4..8), 42 others
    z = torch.full((1, 1, 6, 12), 0.7)
    value = create_loss("boundary_bce")(z, lab)
    n, pos, neg = 72, 30, 42
    sp = math.log1p(math.exp(-0.7))  # -log sigmoid(z): BCE of a positive
    sn = math.log1p(math.exp(0.7))  # -log (1 - sigmoid(z)): of a negative
    expected = (pos * (neg / n) * sp + neg * (pos / n) * sn) / n
    assert value.item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="one boundary channel"):
        create_loss("boundary_bce")(torch.zeros(1, 2, 6, 12), lab)


def test_pidnet_ohem_keeps_strictly_below_the_threshold():
    # two classes, logits (0, x): p(class 1) = sigmoid(x); every label is 1
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0, 3.0])
    logits = torch.stack([torch.zeros(6), x]).reshape(1, 2, 1, 6)
    target = torch.ones(1, 1, 6, dtype=torch.long)
    nll = F.softplus(-x)  # -log sigmoid(x)
    p = torch.sigmoid(x)
    # thresh 0.7 (between p[3]=0.731 and p[2]=0.5), min_kept 1: the 2nd smallest p (0.269) is
    # below 0.7, so the threshold stays 0.7: pixels 0..2 kept
    loss = create_loss("ohem_pidnet", thresh=0.7, min_kept=1)
    assert loss(logits, target).item() == pytest.approx(nll[:3].mean().item())
    # min_kept 4: threshold = the 5th smallest p (0.881), strictly below: pixels 0..3
    loss = create_loss("ohem_pidnet", thresh=0.7, min_kept=4)
    assert loss(logits, target).item() == pytest.approx(nll[:4].mean().item())
    assert p[4] > 0.7
    # class weights scale each pixel's loss; the mean divides by the pixel count
    loss = create_loss("ohem_pidnet", thresh=0.7, min_kept=1, class_weights=[1.0, 3.0])
    assert loss(logits, target).item() == pytest.approx(3 * nll[:3].mean().item())


def test_boundary_aware_ce_restricts_to_confident_boundary_pixels():
    out, target = batch(h=4, w=4)
    target[target == 255] = 0
    boundary = torch.full((2, 1, 4, 4), -5.0)
    boundary[0, 0, 1:3, :] = 5.0  # sigmoid 0.993 > 0.8: these 8 pixels only
    sb = create_loss("boundary_aware_ce", ohem=False)
    assert sb.takes_outputs
    value = sb({"out": out, "boundary": boundary}, target)
    masked = torch.full_like(target, 255)
    masked[0, 1:3] = target[0, 1:3]
    torch.testing.assert_close(value, cross_entropy(out, masked))
    none = sb({"out": out, "boundary": boundary - 100}, target)
    assert none.item() == 0.0
    # at lower resolution both maps are resized to the label first
    small = {"out": out[:, :, ::2, ::2], "boundary": boundary[:, :, ::2, ::2]}
    up = {
        k: F.interpolate(v, size=(4, 4), mode="bilinear", align_corners=False)
        for k, v in small.items()
    }
    torch.testing.assert_close(sb(small, target), sb(up, target))


def test_detail_target_of_a_vertical_boundary():
    lab = torch.zeros(1, 16, 16, dtype=torch.long)
    lab[:, :, 8:] = 1
    # stride 1: the Laplacian is > 0 on the 1-region's border ring (column 8, and the image
    # border, zero-padded); stride 2 (upsampled nearest) adds columns 8-9 and rows 0-1 of the
    # region; stride 4 alone (weight 0.1) never passes the 0.1 threshold
    expect = torch.zeros(1, 16, 16)
    expect[:, :, [8, 9, 15]] = 1
    expect[:, [0, 1, 15], 8:] = 1
    assert torch.equal(detail_target(lab), expect)
    assert detail_target(torch.zeros(1, 8, 8, dtype=torch.long)).sum() == 0


def test_detail_loss_is_bce_plus_dice_on_the_target():
    lab = torch.zeros(1, 16, 16, dtype=torch.long)
    lab[:, :, 8:] = 1
    t = detail_target(lab)  # 86 of 256 pixels
    z = torch.randn(1, 2, 16, 16)
    parts = create_loss("detail")(z, lab)
    onehot = torch.stack([1 - t, t], dim=1)
    bce = F.binary_cross_entropy_with_logits(z, onehot)
    p = z.sigmoid()
    dice = 1 - 2 * (p * onehot).sum() / ((p * p).sum() + 1e-3 + (onehot**2).sum() + 1e-3)
    torch.testing.assert_close(parts["bce"], bce)
    torch.testing.assert_close(parts["dice"], dice)
    crit = SegmentationLoss({"out": ["ce"], "detail": [{"name": "detail", "weight": 2.0}]})
    total, logged = crit({"out": torch.zeros(1, 2, 16, 16), "detail": z}, lab)
    assert set(logged) == {"loss_out", "loss_detail_bce", "loss_detail_dice"}
    torch.testing.assert_close(total, math.log(2) + 2 * (bce + dice))


def test_pidnet_recipe_terms_build_from_yaml():
    weights = [1.0, 0.9, 1.1, 1.0]
    cfg = cfg_with(
        {
            "out": [
                {
                    "name": "ohem_pidnet",
                    "thresh": 0.9,
                    "min_kept": 131072,
                    "class_weights": weights,
                },
                {
                    "name": "boundary_aware_ce",
                    "thresh": 0.9,
                    "min_kept": 131072,
                    "class_weights": weights,
                },
            ],
            "aux": [{"name": "ce", "weight": 0.4, "class_weights": weights}],
            "boundary": [{"name": "boundary_bce", "weight": 20.0}],
        }
    )
    crit = build_loss(cfg.loss, align_corners=False)
    out, target = batch(h=8, w=8)
    outputs = {
        "out": out[:, :, ::2, ::2],
        "aux": out[:, :, ::2, ::2] * 0.5,
        "boundary": torch.randn(2, 1, 4, 4, requires_grad=True),
    }
    total, parts = crit(outputs, target)
    assert set(parts) == {
        "loss_out_ohem_pidnet",
        "loss_out_boundary_aware_ce",
        "loss_aux",
        "loss_boundary",
    }
    total.backward()
    assert out.grad.abs().sum() > 0 and outputs["boundary"].grad.abs().sum() > 0


def test_config_loss_section_default_builds_with_dataclass_default():
    assert LossConfig().terms == {"out": [{"name": "ce", "weight": 1.0}]}


# ------------------------------------------------------ sigmoid BCE and OHEM averaged over all


def test_sigmoid_ce_is_one_hot_bce_over_the_valid_pixels():
    # 3 classes, 4 pixels; labels 0, 2, ignored, 1
    logits = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.0, 1.5, -1.0, -0.5], [2.0, 0.3, 0.0, -3.0]])
    logits = logits.reshape(1, 3, 1, 4).requires_grad_()
    target = torch.tensor([[[0, 2, 255, 1]]])
    onehot = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]])
    x = logits.detach().reshape(3, 4)
    pos, neg = F.softplus(-x), F.softplus(x)  # -log sigmoid(x), -log(1 - sigmoid(x))
    valid = torch.tensor([1.0, 1.0, 0.0, 1.0])
    summed = ((onehot * pos + (1 - onehot) * neg) * valid).sum().item()
    got_all = create_loss("sigmoid_ce", average="all")(logits, target)
    assert got_all.item() == pytest.approx(summed / 12, rel=1e-6)  # N x K x H x W
    got_valid = create_loss("sigmoid_ce")(logits, target)
    assert got_valid.item() == pytest.approx(summed / 9, rel=1e-6)  # K x valid pixels
    got_valid.backward()
    assert torch.all(logits.grad[..., 2] == 0) and torch.all(logits.grad[..., 0] != 0)
    # class weights are BCE's pos_weight: they scale the positive terms only
    w = torch.tensor([2.0, 0.5, 3.0]).reshape(3, 1)
    weighted = ((onehot * w * pos + (1 - onehot) * neg) * valid).sum().item()
    got = create_loss("sigmoid_ce", class_weights=[2.0, 0.5, 3.0], average="all")
    assert got(logits, target).item() == pytest.approx(weighted / 12, rel=1e-6)


def test_sigmoid_ce_single_channel_uses_the_label_as_target():
    x = torch.tensor([0.5, -1.0, 2.0, 0.0]).reshape(1, 1, 1, 4)
    target = torch.tensor([[[1, 0, 255, 1]]])
    expected = F.softplus(-x[0, 0, 0, 0]) + F.softplus(x[0, 0, 0, 1]) + F.softplus(-x[0, 0, 0, 3])
    assert create_loss("sigmoid_ce")(x, target).item() == pytest.approx(expected.item() / 3)
    assert create_loss("sigmoid_ce", average="all")(x, target).item() == pytest.approx(
        expected.item() / 4
    )


def test_sigmoid_ce_all_ignored_is_zero_and_bad_options_are_errors():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    target = torch.full((1, 2, 2), 255)
    for average in ("valid", "all"):
        value = create_loss("sigmoid_ce", average=average)(logits, target)
        assert value.item() == 0.0 and value.requires_grad
    with pytest.raises(ValueError, match="average must be one of"):
        create_loss("sigmoid_ce", average="weighted")
    with pytest.raises(ValueError, match="class_weights has 2 values"):
        create_loss("sigmoid_ce", class_weights=[1.0, 2.0])(logits, target.clamp(max=0))


def _two_class_ramp():
    # logits (0, x): p(class 1) = sigmoid(x); labels 1, the last pixel ignored
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 0.0])
    logits = torch.stack([torch.zeros(7), x]).reshape(1, 2, 1, 7)
    target = torch.ones(1, 1, 7, dtype=torch.long)
    target[..., 6] = 255
    return logits, target, F.softplus(-x[:6])  # the valid pixels' CE


def test_ohem_average_all_divides_the_kept_loss_by_every_pixel():
    logits, target, nll = _two_class_ramp()
    # thresh 0.7: pixels 0..2 (p <= 0.5) kept; divided by all 7 pixels, the ignored one too
    loss = create_loss("ohem", thresh=0.7, min_kept=0, average="all")
    assert loss(logits, target).item() == pytest.approx(nll[:3].sum().item() / 7)
    # min_kept 4 raises the threshold to the 4th smallest p: pixels 0..3
    loss = create_loss("ohem", thresh=0.7, min_kept=4, average="all")
    assert loss(logits, target).item() == pytest.approx(nll[:4].sum().item() / 7)
    # the default (and "weighted") is the mean over the kept pixels, unchanged
    for options in ({}, {"average": "weighted"}):
        loss = create_loss("ohem", thresh=0.7, min_kept=4, **options)
        assert loss(logits, target).item() == pytest.approx(nll[:4].mean().item())
    # class weights scale each kept pixel; "all" still divides by the pixel count
    loss = create_loss("ohem", thresh=0.7, min_kept=0, average="all", class_weights=[1.0, 3.0])
    assert loss(logits, target).item() == pytest.approx(3 * nll[:3].sum().item() / 7)
    with pytest.raises(ValueError, match="average must be one of"):
        create_loss("ohem", average="valid")


def test_ohem_min_kept_per_image_scales_with_the_batch():
    logits, target, nll = _two_class_ramp()
    logits, target = logits.repeat(2, 1, 1, 1), target.repeat(2, 1, 1)  # two equal images
    # thresh 0.1 is below every p: only min_kept decides
    per_batch = create_loss("ohem", thresh=0.1, min_kept=2, average="all")
    assert per_batch(logits, target).item() == pytest.approx(2 * nll[0].item() / 14)
    per_image = create_loss("ohem", thresh=0.1, min_kept=2, average="all", min_kept_per_image=True)
    assert per_image(logits, target).item() == pytest.approx(2 * nll[:2].sum().item() / 14)
