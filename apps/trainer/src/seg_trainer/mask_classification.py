"""Mask-classification training loss: the Mask2Former criterion (issue 17), registered as
``create_loss("mask2former")``.

Semantics of the official implementation (facebookresearch/Mask2Former,
``mask2former/modeling/criterion.py`` ``SetCriterion``, ``modeling/matcher.py``
``HungarianMatcher``, ``data/dataset_mappers/mask_former_semantic_dataset_mapper.py``; config
``configs/ade20k/semantic-segmentation/maskformer2_R50_bs16_160k.yaml`` via its base
``Base-ADE20K-SemanticSegmentation.yaml``/``MaskFormer`` defaults), which transformers'
``Mask2FormerLoss``/``Mask2FormerHungarianMatcher`` reproduce; ``tests/test_mask2former_loss.py``
compares with transformers' loss itself (same matched indices, same values).

1. **Semantic targets** from the N x H x W label map, per image: one binary mask per class
   id present (sorted), ``ignore_index`` excluded, as the official semantic dataset mapper.
   The ignore region is 0 in *every* mask, so it acts as a negative (background) pixel for
   the matched masks' BCE and Dice losses and for the matching cost: this is what the
   official code does (its ``loss_masks`` carries "TODO use valid to mask invalid areas due
   to padding in loss"; the crop/size-divisibility padding is labelled ignore too) and what
   transformers' image processor + loss do. Ignore pixels never create a target, never
   count in the number of masks and never receive a class label. We follow the official
   code (not "ignore counts nowhere", as our per-pixel losses do) because the published
   numbers were trained this way.
2. **Hungarian matching** per image and per prediction layer (``scipy.optimize.
   linear_sum_assignment``) on the cost ``class_weight * (-softmax(class_logits)[target
   class]) + mask_weight * BCE + dice_weight * Dice``, the mask costs computed on
   ``num_points`` points drawn uniformly in [0, 1]^2, the same points for every prediction
   and target mask of the image, read with ``grid_sample(align_corners=False)`` (predictions
   at 1/4 and targets at full resolution share normalised coordinates; nothing is resized).
   Non-finite costs (a diverged model) are replaced by the largest float, as transformers
   does, so the step finishes and the trainer's non-finite loss check reports it (the
   official code raises inside scipy instead).
3. **Losses** of every prediction (the last layer, then each ``deep_supervision`` entry,
   each matched on its own): ``loss_ce`` cross-entropy over all N x Q queries, unmatched
   queries labelled no-object (the last class), class weights 1 and ``no_object_weight``
   (0.1) for no-object, weighted mean as ``F.cross_entropy``; ``loss_mask`` sigmoid BCE
   (mean over points, summed over the matched masks) and ``loss_dice`` (``1 - (2 p.t + 1) /
   (sum p + sum t + 1)``, summed) on ``num_points`` points per matched mask: of
   ``oversample_ratio * num_points`` uniform candidates the ``importance_sample_ratio``
   fraction with the highest uncertainty ``-|logit|`` plus fresh uniform points (PointRend's
   ``get_uncertain_point_coords_with_randomness``); both divided by the number of target
   masks averaged over processes (summed with ``torch.distributed.all_reduce`` when a
   process group is initialised, divided by the world size, clamped to >= 1), computed once
   per call from the targets and shared by all layers.

The returned dict holds every part **already multiplied by its weight** (``class_weight``
2.0, ``mask_weight`` 5.0, ``dice_weight`` 5.0 on every layer, as the official
``weight_dict``): ``loss_ce``, ``loss_mask``, ``loss_dice`` for the last layer and
``loss_ce_0``, ``loss_mask_0``, ... for ``deep_supervision[0]``, ...; the caller's total loss
is the plain sum of the dict's values. Parts keep their graph (detach them to log).

Randomness: every point is drawn with ``torch.rand`` from torch's global RNG (on the
logits' device), in the official order (per layer: one draw of matching points per image,
then the candidate and the random points for the matched masks), so a seeded run, and the
trainer's bit-exact resume that restores the RNG state, reproduce the same points.

Differences from the official code: computation in float32 for half/bfloat16 inputs (the
official runs the matcher in float32 and the loss in the AMP dtype) and in float64 for
float64 inputs; the number of masks stays a tensor instead of ``.item()``; labels outside
``[0, K)`` that are not ``ignore_index`` are an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .losses import register_loss

__all__ = ["Mask2FormerLoss", "semantic_targets"]

Target = tuple[Tensor, Tensor]  # (class ids M, binary masks M x H x W) of one image
Match = tuple[Tensor, Tensor]  # (query indices, target indices) of one image, int64 on CPU


def semantic_targets(
    target: Tensor, *, num_classes: int, ignore_index: int = 255, dtype: torch.dtype
) -> list[Target]:
    """Per image, the sorted class ids present (``ignore_index`` excluded) and their
    binary masks (``dtype``; the ignore region is 0 in every mask)."""
    targets = []
    for labels in target:
        classes = torch.unique(labels)
        classes = classes[classes != ignore_index]
        bad = classes[(classes < 0) | (classes >= num_classes)]
        if bad.numel():
            raise ValueError(
                f"mask2former loss: target contains label(s) {bad.tolist()} outside "
                f"[0, {num_classes}) that are not ignore_index={ignore_index}; fix the "
                "dataset's label mapping or set the loss's ignore_index"
            )
        masks = (labels[None] == classes[:, None, None]).to(dtype)
        targets.append((classes.long(), masks))
    return targets


def _point_sample(maps: Tensor, points: Tensor) -> Tensor:
    """Bilinear values of ``maps`` (B x C x H x W) at ``points`` (B x P x 2, (x, y) in
    [0, 1]^2, pixel-area convention: ``align_corners=False``, zero outside) -> B x C x P."""
    grid = (2.0 * points - 1.0).unsqueeze(2)
    return F.grid_sample(maps, grid, mode="bilinear", align_corners=False).squeeze(3)


def _pairwise_bce(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean sigmoid BCE over the points of every (prediction, target) pair: Q x P, M x P -> Q x M."""
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (pos @ targets.T + neg @ (1.0 - targets).T) / logits.shape[1]


def _pairwise_dice(logits: Tensor, targets: Tensor) -> Tensor:
    """Dice loss ``1 - (2 p.t + 1) / (sum p + sum t + 1)`` of every pair: Q x M."""
    probs = logits.sigmoid()
    numerator = 2.0 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1.0 - (numerator + 1.0) / (denominator + 1.0)


def _working(x: Tensor) -> Tensor:
    """float32 for half/bfloat16 (and integer) inputs; float32/float64 unchanged."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


@register_loss("mask2former")
class Mask2FormerLoss(nn.Module):
    """The Mask2Former criterion: Hungarian matching, class CE and point-sampled mask BCE +
    Dice on every decoder prediction (see the module docstring for the exact semantics).

    Called as ``loss(outputs, target)`` (``takes_outputs = True``) with the model's output
    dict: ``"class_logits"`` N x Q x (K+1) (last = no-object), ``"mask_logits"``
    N x Q x h x w, optional ``"deep_supervision"``: list of dicts with both keys for the
    earlier decoder predictions; ``target`` N x H x W integer labels at input resolution.
    Returns ``{name: weighted scalar}`` whose sum is the total loss. ``K`` is taken from the
    logits.

    Options (keyword-only, the official config's names and ADE20K values):
        no_object_weight: CE weight of the no-object class (``eos_coef``, 0.1).
        class_weight, mask_weight, dice_weight: weights of the CE, BCE and Dice terms in
            the loss and in the matching cost (2.0, 5.0, 5.0).
        num_points: points per mask for the matching cost and the mask losses (12544 =
            112 x 112).
        oversample_ratio: candidates per point for importance sampling (3.0, >= 1).
        importance_sample_ratio: fraction of points taken by uncertainty (0.75, in [0, 1]).
        ignore_index: label excluded from the targets (255).
    """

    takes_outputs = True

    def __init__(
        self,
        *,
        no_object_weight: float = 0.1,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        for name, value in (
            ("no_object_weight", no_object_weight),
            ("class_weight", class_weight),
            ("mask_weight", mask_weight),
            ("dice_weight", dice_weight),
        ):
            if not value >= 0:
                raise ValueError(f"mask2former loss: {name}={value!r} must be >= 0")
        if class_weight == mask_weight == dice_weight == 0:
            raise ValueError(
                "mask2former loss: class_weight, mask_weight and dice_weight are all 0; "
                "the matching cost needs at least one"
            )
        if not (isinstance(num_points, int) and num_points >= 1):
            raise ValueError(f"mask2former loss: num_points={num_points!r} must be an int >= 1")
        if not oversample_ratio >= 1:
            raise ValueError(
                f"mask2former loss: oversample_ratio={oversample_ratio!r} must be >= 1"
            )
        if not 0 <= importance_sample_ratio <= 1:
            raise ValueError(
                f"mask2former loss: importance_sample_ratio={importance_sample_ratio!r} "
                "must be in [0, 1]"
            )
        self.no_object_weight = float(no_object_weight)
        self.class_weight = float(class_weight)
        self.mask_weight = float(mask_weight)
        self.dice_weight = float(dice_weight)
        self.num_points = num_points
        self.oversample_ratio = float(oversample_ratio)
        self.importance_sample_ratio = float(importance_sample_ratio)
        self.ignore_index = ignore_index

    # ------------------------------------------------------------------ points

    def _uniform_points(self, num: int, num_points: int, like: Tensor) -> Tensor:
        """``num`` x ``num_points`` x 2 uniform points from torch's global RNG."""
        return torch.rand(num, num_points, 2, device=like.device, dtype=like.dtype)

    @torch.no_grad()
    def _importance_points(self, logits: Tensor) -> Tensor:
        """M x num_points x 2 points for the M x 1 x h x w mask logits: the most uncertain
        (``-|logit|``) of ``oversample_ratio * num_points`` uniform candidates, then uniform."""
        num = logits.shape[0]
        num_candidates = int(self.num_points * self.oversample_ratio)
        num_uncertain = int(self.importance_sample_ratio * self.num_points)
        candidates = self._uniform_points(num, num_candidates, logits)
        uncertainty = -_point_sample(logits, candidates)[:, 0].abs()
        top = uncertainty.topk(num_uncertain, dim=1).indices
        points = candidates.gather(1, top[..., None].expand(-1, -1, 2))
        if num_uncertain < self.num_points:
            extra = self._uniform_points(num, self.num_points - num_uncertain, logits)
            points = torch.cat([points, extra], dim=1)
        return points

    # ------------------------------------------------------------------ matching

    @torch.no_grad()
    def match(
        self, class_logits: Tensor, mask_logits: Tensor, targets: Sequence[Target]
    ) -> list[Match]:
        """Per image, the (query, target) pairs of the minimum-cost assignment, queries
        ascending (``min(Q, M)`` pairs)."""
        from scipy.optimize import linear_sum_assignment  # seg-trainer dependency

        class_logits, mask_logits = _working(class_logits), _working(mask_logits)
        matches = []
        for logits, masks, (classes, gt) in zip(class_logits, mask_logits, targets, strict=True):
            points = self._uniform_points(1, self.num_points, masks)
            pred = _point_sample(masks[:, None], points.expand(masks.shape[0], -1, -1))[:, 0]
            gt = gt.to(masks.dtype)[:, None]
            gt = _point_sample(gt, points.expand(gt.shape[0], -1, -1))[:, 0]
            cost = (
                self.class_weight * -logits.softmax(-1)[:, classes.to(logits.device)]
                + self.mask_weight * _pairwise_bce(pred, gt)
                + self.dice_weight * _pairwise_dice(pred, gt)
            )
            big = torch.finfo(cost.dtype).max
            cost = torch.nan_to_num(cost, nan=big, posinf=big, neginf=big)
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            matches.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return matches

    # ------------------------------------------------------------------ losses

    def _num_masks(self, targets: Sequence[Target], device: torch.device) -> Tensor:
        """Target masks per process: summed over processes / world size, at least 1."""
        num = torch.tensor(float(sum(len(c) for c, _ in targets)), device=device)
        world = 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(num)
            world = torch.distributed.get_world_size()
        return (num / world).clamp(min=1.0)

    def _layer(
        self,
        class_logits: Tensor,
        mask_logits: Tensor,
        targets: Sequence[Target],
        num_masks: Tensor,
    ) -> dict[str, Tensor]:
        """The three weighted losses of one prediction (matched on its own)."""
        matches = self.match(class_logits, mask_logits, targets)
        class_logits, mask_logits = _working(class_logits), _working(mask_logits)
        device = class_logits.device
        batch = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(matches)]).to(device)
        query = torch.cat([q for q, _ in matches]).to(device)

        no_object = class_logits.shape[-1] - 1
        labels = torch.full(class_logits.shape[:2], no_object, dtype=torch.int64, device=device)
        labels[batch, query] = torch.cat(
            [
                classes[t.to(classes.device)].to(device)
                for (classes, _), (_, t) in zip(targets, matches, strict=True)
            ]
        )
        weight = torch.ones(no_object + 1, dtype=class_logits.dtype, device=device)
        weight[-1] = self.no_object_weight
        loss_ce = F.cross_entropy(class_logits.transpose(1, 2), labels, weight=weight)

        if query.numel() == 0:  # no target mask in the batch (all ignored)
            zero = mask_logits.sum() * 0.0
            loss_mask, loss_dice = zero, zero
        else:
            pred = mask_logits[batch, query][:, None]
            gt = torch.cat(
                [m[t.to(m.device)] for (_, m), (_, t) in zip(targets, matches, strict=True)]
            ).to(device=device, dtype=pred.dtype)[:, None]
            points = self._importance_points(pred)
            with torch.no_grad():
                gt_points = _point_sample(gt, points)[:, 0]
            pred_points = _point_sample(pred, points)[:, 0]
            bce = F.binary_cross_entropy_with_logits(pred_points, gt_points, reduction="none")
            loss_mask = bce.mean(1).sum() / num_masks
            probs = pred_points.sigmoid()
            dice = 1.0 - (2.0 * (probs * gt_points).sum(-1) + 1.0) / (
                probs.sum(-1) + gt_points.sum(-1) + 1.0
            )
            loss_dice = dice.sum() / num_masks
        return {
            "loss_ce": self.class_weight * loss_ce,
            "loss_mask": self.mask_weight * loss_mask,
            "loss_dice": self.dice_weight * loss_dice,
        }

    def forward(self, outputs: Mapping[str, Any], target: Tensor) -> dict[str, Tensor]:
        """``{"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", ...}``, each weighted; the
        total loss is ``sum(parts.values())``."""
        if not isinstance(outputs, Mapping):
            raise TypeError(
                f"mask2former loss: outputs is a {type(outputs).__name__}; this loss "
                "(takes_outputs = True) is called as loss(outputs, target) with the model's "
                "whole output dict ('class_logits', 'mask_logits', 'deep_supervision')"
            )
        predictions = [outputs]
        for i, extra in enumerate(outputs.get("deep_supervision") or ()):
            if not isinstance(extra, Mapping):
                raise TypeError(
                    f"mask2former loss: outputs['deep_supervision'][{i}] is a "
                    f"{type(extra).__name__}; expected a dict with 'class_logits' and 'mask_logits'"
                )
            predictions.append(extra)
        for i, pred in enumerate(predictions):
            where = "outputs" if i == 0 else f"outputs['deep_supervision'][{i - 1}]"
            missing = [k for k in ("class_logits", "mask_logits") if k not in pred]
            if missing:
                raise KeyError(
                    f"mask2former loss: {where} has no {missing} (keys: {sorted(pred)}); the "
                    "loss needs a mask-classification model's outputs (e.g. create_model('mask2former'))"
                )
            cls, masks = pred["class_logits"], pred["mask_logits"]
            if cls.ndim != 3 or masks.ndim != 4 or cls.shape[:2] != masks.shape[:2]:
                raise ValueError(
                    f"mask2former loss: {where} has class_logits {tuple(cls.shape)} and "
                    f"mask_logits {tuple(masks.shape)}; expected N x Q x (K+1) and N x Q x h x w"
                )
        class_logits = outputs["class_logits"]
        if target.ndim != 3 or target.shape[0] != class_logits.shape[0]:
            raise ValueError(
                f"mask2former loss: target has shape {tuple(target.shape)}; expected "
                f"N x H x W labels with N = {class_logits.shape[0]}"
            )
        if target.is_floating_point():
            raise TypeError(f"mask2former loss: target must be integer labels, got {target.dtype}")

        targets = semantic_targets(
            target,
            num_classes=class_logits.shape[-1] - 1,
            ignore_index=self.ignore_index,
            dtype=_working(outputs["mask_logits"]).dtype,
        )
        num_masks = self._num_masks(targets, class_logits.device)
        losses = self._layer(class_logits, outputs["mask_logits"], targets, num_masks)
        for i, pred in enumerate(predictions[1:]):
            layer = self._layer(pred["class_logits"], pred["mask_logits"], targets, num_masks)
            losses.update({f"{name}_{i}": value for name, value in layer.items()})
        return losses
