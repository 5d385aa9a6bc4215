"""The segmentation model: a backbone, a decode head, an optional auxiliary head.

:class:`SegmentationModel` composes any backbone that follows the seg_backbones
feature contract (``forward`` -> list of feature maps, ``.feature_info`` ->
list of ``(channels, reduction)``). :func:`create_model` builds one by name.

Every model built by :func:`create_model` (or :mod:`seg_heads.convert`) carries

- ``model.build_config: dict`` -- exactly the keyword arguments of
  ``create_model(**model.build_config)`` (``name`` included) that rebuild the
  architecture (weights not included), and
- ``model.input_norm: dict | None`` -- the input normalisation its weights
  expect, ``{"mean": [r, g, b], "std": [r, g, b], "color_order": "RGB" | "BGR"}``
  in the 0-255 pixel scale, listed in the order of ``color_order``; ``None``
  when unknown (randomly initialised or a backbone file of unknown origin:
  the trainer records its own ``Normalize`` there).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from seg_backbones import create_backbone, load_pretrained

from ._layers import check_in_index
from ._registry import default_output_stride, get_head_builder
from .fcn import FCNHead

__all__ = ["CAFFE_BGR", "IMAGENET_RGB", "SegmentationModel", "create_model"]

IMAGENET_RGB: dict[str, Any] = {
    "mean": [123.675, 116.28, 103.53],
    "std": [58.395, 57.12, 57.375],
    "color_order": "RGB",
}
"""ImageNet normalisation in the 0-255 scale (torchvision, timm, mmseg, CSAIL weights)."""

CAFFE_BGR: dict[str, Any] = {
    "mean": [104.008, 116.669, 122.675],
    "std": [1.0, 1.0, 1.0],
    "color_order": "BGR",
}
"""Caffe-style BGR mean, std 1, in the 0-255 scale (PKUSeg / torchcv weights)."""


class SegmentationModel(nn.Module):
    """``backbone -> decode_head (-> aux_head)``, logits resized to the input size.

    Args:
        backbone: returns a list of feature maps and publishes ``.feature_info``.
        decode_head: takes the backbone's whole feature list and reads the levels it
            declares (its ``in_index``); returns logits, or a dict with ``"out"`` and
            extra outputs (see below).
        aux_head: optional, takes the same feature list (an :class:`FCNHead` reads its
            ``in_index``, 2 by default: ResNet layer3) and returns logits.
        align_corners: ``align_corners`` of the final bilinear resize to the input size.

    ``forward(x)`` returns ``{"out": N x K x H x W}`` plus ``"aux"`` (same size) when
    there is an auxiliary head, in training and in eval mode alike. A decode head that
    returns a dict adds its own outputs: keys starting with ``"aux"`` (e.g. OCRNet's
    soft-region logits) are resized to the input like ``"out"``, any other key (e.g.
    Mask2Former's ``class_logits``) is passed through as the head returned it. A head
    with ``wants_input_size = True`` is called as ``decode_head(feats, input_size=(H, W))``
    (Mask2Former resizes its mask logits to the input before the class-mask product).
    """

    build_config: dict[str, Any] | None
    input_norm: dict[str, Any] | None

    def __init__(
        self,
        backbone: nn.Module,
        decode_head: nn.Module,
        aux_head: nn.Module | None = None,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.aux_head = aux_head
        self.align_corners = align_corners
        self.build_config = None
        self.input_norm = None

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        size = x.shape[-2:]
        feats = self.backbone(x)
        if getattr(self.decode_head, "wants_input_size", False):
            head_out = self.decode_head(feats, input_size=size)
        else:
            head_out = self.decode_head(feats)
        outputs = {"out": head_out} if isinstance(head_out, Tensor) else dict(head_out)
        if self.aux_head is not None:
            if "aux" in outputs:
                raise RuntimeError("the decode head returned 'aux' and the model has an aux_head")
            outputs["aux"] = self.aux_head(feats)
        return {
            k: self._resize(v, size) if k == "out" or k.startswith("aux") else v
            for k, v in outputs.items()
        }

    def _resize(self, logits: Tensor, size: Any) -> Tensor:
        if logits.shape[-2:] == size:
            return logits
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=self.align_corners)


def create_model(
    name: str,
    *,
    backbone: str,
    num_classes: int,
    output_stride: int | None = None,
    aux: bool = False,
    align_corners: bool = False,
    pretrained_backbone: str | None = None,
    backbone_kwargs: Mapping[str, Any] | None = None,
    head_kwargs: Mapping[str, Any] | None = None,
    aux_kwargs: Mapping[str, Any] | None = None,
) -> SegmentationModel:
    """Build a registered segmentation model (see :func:`seg_heads.list_models`).

    Args:
        name: a :func:`seg_heads.list_models` name (unknown names list the valid ones).
        backbone: any :func:`seg_backbones.create_backbone` name, e.g. ``"resnet101_deep"``.
        num_classes: logits per pixel.
        output_stride: 8 | 16 | 32, passed to the backbone (and to the ASPP rates); ``None``
            is the model's default (8 for PSPNet, DeepLabV3, DeepLabV3+, DenseASPP and FCN,
            32 for the multi-level decoders), recorded in ``build_config``.
        aux: add an :class:`FCNHead` auxiliary head (on backbone output
            ``aux_kwargs["in_index"]``, default 2: ResNet layer3); output ``"aux"``.
        align_corners: of every bilinear resize in the heads and to the input size.
        pretrained_backbone: local path of backbone weights, loaded with
            ``seg_backbones.load_pretrained(..., source="auto")`` (strict).
        backbone_kwargs: other :func:`seg_backbones.create_backbone` options, e.g.
            ``{"contract_dilation": False, "multi_grid": (1, 2, 4)}``.
        head_kwargs: options of the decode head class, e.g. ``{"variant": "torchvision"}``
            for DeepLabV3, and ``in_index`` (the backbone level(s) the head reads; each
            head has its paper's default, -1 for single-level heads); the ASPP ``rates`` default to 12/24/36 at output stride 8 and
            6/12/18 at 16. A backbone's ``head_defaults[name]`` (e.g. PIDNet-L's head width)
            fills what ``head_kwargs`` leaves out.
        aux_kwargs: :class:`FCNHead` options of the auxiliary head. ``variant`` defaults
            to the decode head's (``"mmseg"`` unless ``head_kwargs["variant"]`` says
            otherwise); with ``"mmseg"`` the defaults are mmseg's auxiliary head
            (``channels=256, num_convs=1, concat_input=False``), with ``"torchvision"``
            torchvision's (``in_channels // 4``, element-wise dropout).
            PKUSeg/CSAIL/torchcv use ``{"channels": 512}``.

    Returns:
        a :class:`SegmentationModel` with ``build_config`` (these arguments, ``name``
        included) and ``input_norm`` (``None``: set by whoever knows the weights' origin).
    """
    head_builder = get_head_builder(name)
    if output_stride is None:
        output_stride = default_output_stride(name)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    build_config: dict[str, Any] = {
        "name": name,
        "backbone": backbone,
        "num_classes": num_classes,
        "output_stride": output_stride,
        "aux": aux,
        "align_corners": align_corners,
        "pretrained_backbone": pretrained_backbone,
        "backbone_kwargs": copy.deepcopy(dict(backbone_kwargs or {})),
        "head_kwargs": copy.deepcopy(dict(head_kwargs or {})),
        "aux_kwargs": copy.deepcopy(dict(aux_kwargs or {})),
    }
    if "output_stride" in build_config["backbone_kwargs"]:
        raise TypeError(
            "pass output_stride to create_model, not in backbone_kwargs "
            f"(got backbone_kwargs={build_config['backbone_kwargs']})"
        )
    where = f"create_model({name!r}, backbone={backbone!r})"
    try:
        bb = create_backbone(backbone, output_stride=output_stride, **dict(backbone_kwargs or {}))
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e
    if pretrained_backbone is not None:
        load_pretrained(bb, pretrained_backbone, source="auto")
    info = list(bb.feature_info)
    head_options = {**getattr(bb, "head_defaults", {}).get(name, {}), **dict(head_kwargs or {})}
    try:
        decode_head = head_builder(
            info,
            num_classes,
            output_stride=output_stride,
            align_corners=align_corners,
            **head_options,
        )
        aux_head = None
        if aux and getattr(decode_head, "returns_aux", False):
            raise ValueError(
                f"the {name} head already returns its own auxiliary logits ('aux'); use aux=False"
            )
        if aux:
            opts = _aux_options(head_kwargs, aux_kwargs)
            in_index = check_in_index(info, opts.pop("in_index", 2), head="aux head")
            aux_head = FCNHead(info[in_index][0], num_classes, in_index=in_index, **opts)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e

    model = SegmentationModel(bb, decode_head, aux_head, align_corners=align_corners)
    model.build_config = build_config
    model.input_norm = None
    return model


def _aux_options(
    head_kwargs: Mapping[str, Any] | None, aux_kwargs: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Auxiliary FCNHead options: the user's, over the defaults of the decode head's variant."""
    opts = dict(aux_kwargs or {})
    opts.setdefault("variant", (head_kwargs or {}).get("variant", "mmseg"))
    if opts["variant"] == "mmseg":  # mmseg's auxiliary head: 1 conv of 256, no concat
        opts.setdefault("channels", 256)
        opts.setdefault("num_convs", 1)
        opts.setdefault("concat_input", False)
    return opts
