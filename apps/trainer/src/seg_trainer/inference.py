"""Test-time inference: whole image, sliding window, multi-scale and flip.

One entry point, :func:`predict_logits`, maps a batch of normalised images to
class logits at a requested output size. The three modes follow
mmsegmentation's ``EncoderDecoder`` (``whole_inference``, ``slide_inference``
and ``aug_test``/``SegTTAModel``):

* ``"whole"``: one forward pass over the whole image, logits bilinearly
  resized to ``out_size``.
* ``"slide"``: a grid of ``crop_size`` windows placed every ``stride`` pixels;
  the last window of each row/column is shifted back so that it ends at the
  image border, hence windows overlap and every pixel is covered. The logits
  of all windows are summed and divided by the per-pixel window count. An
  image side shorter than the crop gives a window of the image's length along
  that side; with ``slide_pad=True`` (default) that window is zero-padded
  (zero = the mean colour after normalisation) at the bottom/right to the full
  crop so that the network always sees ``crop_size`` inputs, and the padded
  part of the logits is discarded. ``slide_pad=False`` feeds the smaller
  window unpadded, exactly as mmseg does.
* ``"multiscale"``: the image is resized by each factor in ``scales``
  (relative to the input size, ``int(side * scale + 0.5)`` pixels), optionally
  also flipped horizontally; each view is inferred whole (or by sliding
  window when ``crop_size`` and ``stride`` are given, like mmseg's ``aug_test``
  with ``mode='slide'``), its logits are resized back to ``out_size`` (and
  un-flipped), turned into probabilities with softmax, and the probabilities
  are averaged, as mmseg does. The result is returned as the log of the mean
  probability, which is a valid logit tensor (its softmax is the mean
  probability, its argmax the averaged prediction).

``flip=True`` is also accepted by ``"whole"`` and ``"slide"``: the original
and the flipped view are then averaged the same way.

When only one view is computed (no flip, one scale) the raw logits are
returned unchanged, so ``mode="multiscale", scales=(1.0,)`` equals ``"whole"``.

Large images (``seg-infer``) need class ids, not logits, and must not hold K
full-size float maps: :func:`slide_labels` runs the sliding window in horizontal
bands (memory: K x crop height x width, whatever the image height) and gives the
same labels as ``predict_logits(mode="slide").argmax(1)``; :func:`resize_labels`
resizes logits to a large output size and takes the argmax a band of rows at a time.

The model is anything that maps a normalised ``N x 3 x H x W`` float batch to logits: a
PyTorch model, or an exported ONNX file run by onnxruntime / OpenVINO
(:mod:`seg_trainer.backends`, dynamic batch, height and width), so every mode runs the
same code through every backend. What the command-line tools share around it lives here
too: :func:`prepare_image` (a picture through ``data.val_transforms``; seg-infer, and
seg-export's int8 calibration) and :func:`palette_and_classes` (the colours of the masks).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seg_data import voc_colormap

__all__ = [
    "MODES",
    "inference_spec",
    "palette_and_classes",
    "predict_logits",
    "prepare_image",
    "resize_labels",
    "slide_labels",
    "slide_windows",
]

MODES = ("whole", "slide", "multiscale")


def _pair(value: int | Sequence[int] | None, name: str) -> tuple[int, int] | None:
    """Normalise an int or a 2-sequence ``(h, w)`` to a tuple of positive ints."""
    if value is None:
        return None
    if isinstance(value, int):
        pair = (value, value)
    else:
        pair = tuple(int(v) for v in value)
        if len(pair) != 2:
            raise ValueError(f"{name} must be an int or [height, width]; got {value!r}")
    if min(pair) <= 0:
        raise ValueError(f"{name} must be positive; got {value!r}")
    return pair  # type: ignore[return-value]


def _forward(model: nn.Module, images: Tensor) -> Tensor:
    """Run ``model`` and return the main logits (``out["out"]`` for dict outputs)."""
    out = model(images)
    if isinstance(out, dict):
        out = out["out"]
    if not isinstance(out, Tensor) or out.dim() != 4:
        raise TypeError(
            "the model must return an N x K x H x W tensor or a dict with key 'out' holding "
            f"one; got {type(out).__name__}"
        )
    return out.float()


def _resize(logits: Tensor, size: tuple[int, int], align_corners: bool) -> Tensor:
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)


def slide_windows(
    height: int, width: int, crop_size: tuple[int, int], stride: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """Windows ``(y1, y2, x1, x2)`` of mmseg's sliding-window grid over an image.

    ``grids = max(side - crop + stride - 1, 0) // stride + 1`` per axis; a
    window starts at ``idx * stride``, ends at ``min(start + crop, side)`` and
    is then shifted back to ``max(end - crop, 0)`` so the last one touches the
    border.
    """
    h_crop, w_crop = crop_size
    h_stride, w_stride = stride
    h_grids = max(height - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(width - w_crop + w_stride - 1, 0) // w_stride + 1
    windows = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2 = min(h_idx * h_stride + h_crop, height)
            x2 = min(w_idx * w_stride + w_crop, width)
            windows.append((max(y2 - h_crop, 0), y2, max(x2 - w_crop, 0), x2))
    return windows


def _slide(
    model: nn.Module,
    images: Tensor,
    crop_size: tuple[int, int],
    stride: tuple[int, int],
    num_classes: int,
    pad: bool,
) -> Tensor:
    """Sliding-window logits at the input resolution (see the module docstring)."""
    n, _, height, width = images.shape
    logits = images.new_zeros((n, num_classes, height, width), dtype=torch.float32)
    count = images.new_zeros((1, 1, height, width), dtype=torch.float32)
    for y1, y2, x1, x2 in slide_windows(height, width, crop_size, stride):
        crop = images[:, :, y1:y2, x1:x2]
        h, w = y2 - y1, x2 - x1
        if pad and (h < crop_size[0] or w < crop_size[1]):
            crop = F.pad(crop, (0, crop_size[1] - w, 0, crop_size[0] - h))
        crop_logits = _forward(model, crop)[:, :, :h, :w]
        if crop_logits.shape[1] != num_classes:
            raise ValueError(
                f"the model returned {crop_logits.shape[1]} channels but num_classes={num_classes}"
            )
        logits[:, :, y1:y2, x1:x2] += crop_logits
        count[:, :, y1:y2, x1:x2] += 1
    if (count == 0).any():  # cannot happen with the grid above; guards future edits
        raise RuntimeError("sliding-window inference left pixels uncovered")
    return logits / count


def _label_dtype(num_classes: int) -> torch.dtype:
    return torch.uint8 if num_classes <= 256 else torch.int32


def _argmax(logits: Tensor) -> Tensor:
    """``logits.argmax(1)`` (same result, first index on ties); ``max(1).indices`` is several
    times faster on CPU for N x K x H x W."""
    return logits.max(1).indices


@torch.no_grad()
def slide_labels(
    model: nn.Module,
    images: Tensor,
    *,
    crop_size: int | Sequence[int],
    stride: int | Sequence[int],
    num_classes: int,
    slide_pad: bool = True,
) -> Tensor:
    """``predict_logits(mode="slide").argmax(1)`` with memory bounded by the crop height.

    Windows are visited row by row (the order of :func:`slide_windows`); image rows that no
    later window covers are final, so they are averaged and turned into class ids at once
    and the band moves down. Returns ``N x H x W`` labels (uint8 for up to 256 classes).
    """
    crop, step = _pair(crop_size, "crop_size"), _pair(stride, "stride")
    assert crop is not None and step is not None
    n, _, height, width = images.shape
    band = min(crop[0], height)
    acc = images.new_zeros((n, num_classes, band, width), dtype=torch.float32)
    cnt = images.new_zeros((1, 1, band, width), dtype=torch.float32)
    out = torch.empty((n, height, width), dtype=_label_dtype(num_classes), device=images.device)
    top = 0

    def emit(upto: int) -> None:  # rows [top, upto) are complete: labels, then shift the band
        nonlocal top
        d = upto - top
        if d <= 0:
            return
        out[:, top:upto] = _argmax(acc[:, :, :d] / cnt[:, :, :d]).to(out.dtype)
        acc[:, :, : band - d] = acc[:, :, d:].clone()
        acc[:, :, band - d :] = 0
        cnt[:, :, : band - d] = cnt[:, :, d:].clone()
        cnt[:, :, band - d :] = 0
        top = upto

    for y1, y2, x1, x2 in slide_windows(height, width, crop, step):
        emit(y1)  # windows come row by row with non-decreasing y1
        c = images[:, :, y1:y2, x1:x2].contiguous()  # also for a channels-last view
        h, w = y2 - y1, x2 - x1
        if slide_pad and (h < crop[0] or w < crop[1]):
            c = F.pad(c, (0, crop[1] - w, 0, crop[0] - h))
        logits = _forward(model, c)[:, :, :h, :w]
        if logits.shape[1] != num_classes:
            raise ValueError(
                f"the model returned {logits.shape[1]} channels but num_classes={num_classes}"
            )
        acc[:, :, y1 - top : y2 - top, x1:x2] += logits
        cnt[:, :, y1 - top : y2 - top, x1:x2] += 1
    emit(height)
    return out


#: logits larger than this (bytes) are resized to the output size a band of rows at a time
RESIZE_CHUNK_BYTES = 256 * 2**20


def resize_labels(
    logits: Tensor,
    size: Sequence[int],
    *,
    align_corners: bool = False,
    chunk_bytes: int = RESIZE_CHUNK_BYTES,
) -> Tensor:
    """``F.interpolate(logits, size, mode="bilinear").argmax(1)`` with bounded memory.

    When the full-size logits would exceed ``chunk_bytes`` they are computed a band of
    output rows at a time (bilinear is separable: the width is interpolated by
    ``F.interpolate`` on the source rows the band needs, the height by the same weights
    PyTorch uses), so memory stays at ``chunk_bytes`` whatever the output size.
    """
    n, k, h, w = logits.shape
    height, width = int(size[0]), int(size[1])
    dtype = _label_dtype(k)
    if (h, w) == (height, width):
        return _argmax(logits).to(dtype)
    rows = max(1, chunk_bytes // max(1, n * k * width * 4))
    if rows >= height:
        full = F.interpolate(
            logits, size=(height, width), mode="bilinear", align_corners=align_corners
        )
        return _argmax(full).to(dtype)
    # source row coordinate of each output row, as aten's area_pixel_compute_source_index
    y = torch.arange(height, dtype=torch.float32, device=logits.device)
    if align_corners:
        scale = (h - 1) / (height - 1) if height > 1 else 0.0
        src = y * torch.tensor(scale, dtype=torch.float32)
    else:
        scale = torch.tensor(h / height, dtype=torch.float32)
        src = ((y + 0.5) * scale - 0.5).clamp_min(0)
    y0 = src.floor().long().clamp_max(h - 1)
    y1 = (y0 + 1).clamp_max(h - 1)
    l1 = (src - y0.float()).clamp(0, 1)
    l0 = 1 - l1
    out = torch.empty((n, height, width), dtype=dtype, device=logits.device)
    for a in range(0, height, rows):
        b = min(a + rows, height)
        s0, s1 = int(y0[a]), int(y1[b - 1]) + 1
        slab = F.interpolate(
            logits[:, :, s0:s1], size=(s1 - s0, width), mode="bilinear", align_corners=align_corners
        )
        top = slab[:, :, y0[a:b] - s0]
        bottom = slab[:, :, y1[a:b] - s0]
        band = top * l0[a:b, None] + bottom * l1[a:b, None]
        out[:, a:b] = _argmax(band).to(dtype)
    return out


@torch.no_grad()
def inference_spec(cfg: Any) -> dict[str, Any]:
    """The keyword arguments of :func:`predict_logits` that a config's ``evaluation`` and
    ``model`` sections define: the one place every caller (training's val passes and
    pictures, ``seg-eval``, ``seg-infer``, the runtimes) reads them from.

    ``scales`` is ``(1.0,)`` unless ``mode`` is ``"multiscale"`` (the other modes ignore it).
    """
    ev = cfg.evaluation
    return {
        "mode": ev.mode,
        "crop_size": ev.crop_size,
        "stride": ev.stride,
        "scales": tuple(ev.scales) if ev.mode == "multiscale" else (1.0,),
        "flip": ev.flip,
        "num_classes": cfg.model.num_classes,
        "align_corners": cfg.model.align_corners,
    }


def predict_logits(
    model: nn.Module,
    images: Tensor,
    *,
    mode: str = "whole",
    crop_size: int | Sequence[int] | None = None,
    stride: int | Sequence[int] | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    num_classes: int,
    align_corners: bool = False,
    out_size: Sequence[int] | None = None,
    slide_pad: bool = True,
) -> Tensor:
    """Class logits ``N x num_classes x H_out x W_out`` for a batch of normalised images.

    Args:
        model: segmentation model in eval mode returning ``{"out": logits}`` (or a tensor)
            at its input resolution; also a :mod:`seg_trainer.backends` runtime module (an
            exported ONNX file, any batch and size).
        images: ``N x C x H x W`` float batch, already normalised.
        mode: ``"whole"``, ``"slide"`` or ``"multiscale"`` (see the module docstring).
        crop_size: ``[h, w]`` (or an int) window size; required for ``"slide"``.
        stride: ``[h, w]`` (or an int) window step; required for ``"slide"``.
        scales: resize factors relative to the input size; used by ``"multiscale"`` only
            (ignored by the other modes, as ``crop_size``/``stride`` are by ``"whole"``).
        flip: also infer the horizontally flipped image and average.
        num_classes: number of classes ``K`` the model predicts.
        align_corners: ``align_corners`` used to resize logits (match the model's).
        out_size: ``(H_out, W_out)`` of the result; defaults to the input size.
        slide_pad: pad windows of images smaller than the crop to the crop size.

    Returns:
        float32 logits on the images' device. With several views (flip or
        several scales) these are log mean probabilities.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    if images.dim() != 4:
        raise ValueError(f"images must be N x C x H x W; got shape {tuple(images.shape)}")
    crop = _pair(crop_size, "crop_size")
    step = _pair(stride, "stride")
    scales = tuple(float(s) for s in scales)
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be a non-empty list of positive floats; got {scales!r}")
    if mode == "slide" and (crop is None or step is None):
        raise ValueError(
            "mode='slide' needs crop_size and stride (evaluation.crop_size / evaluation.stride "
            "in the config), e.g. crop_size=[769, 769], stride=[513, 513]"
        )
    if mode != "multiscale":
        scales = (1.0,)  # like crop_size/stride for "whole": config values of other modes
    if mode == "multiscale" and (crop is None) != (step is None):
        raise ValueError(
            "mode='multiscale' slides over each view when both crop_size and stride are given; "
            "give both, or neither for whole-image views"
        )
    use_slide = mode == "slide" or (mode == "multiscale" and crop is not None)

    height, width = images.shape[-2:]
    size = (height, width) if out_size is None else tuple(int(s) for s in out_size)
    if len(size) != 2:
        raise ValueError(f"out_size must be (height, width); got {out_size!r}")

    def one_view(x: Tensor) -> Tensor:
        if use_slide:
            assert crop is not None and step is not None
            logits = _slide(model, x, crop, step, num_classes, slide_pad)
        else:
            logits = _forward(model, x)
            if logits.shape[1] != num_classes:
                raise ValueError(
                    f"the model returned {logits.shape[1]} channels but num_classes={num_classes}"
                )
        return _resize(logits, size, align_corners)  # type: ignore[arg-type]

    views: list[tuple[float, bool]] = [
        (s, f) for s in scales for f in ((False, True) if flip else (False,))
    ]
    if len(views) == 1 and views[0] == (1.0, False):
        return one_view(images)

    probs: Tensor | None = None
    for scale, flipped in views:
        x = images
        if scale != 1.0:
            scaled = (int(height * scale + 0.5), int(width * scale + 0.5))
            x = F.interpolate(x, size=scaled, mode="bilinear", align_corners=False)
        if flipped:
            x = x.flip(-1)
        logits = one_view(x)
        if flipped:
            logits = logits.flip(-1)
        p = logits.softmax(dim=1)
        probs = p if probs is None else probs + p
    assert probs is not None
    return (probs / len(views)).clamp_min_(torch.finfo(torch.float32).tiny).log_()


# ------------------------------------------------------------ inputs and colours of the CLIs


def prepare_image(
    image: np.ndarray, transforms: Any, *, contiguous: bool = True
) -> tuple[Tensor, tuple[int, int, int, int]]:
    """Apply the val transforms; return the ``3 x H x W`` tensor and the box of real pixels.

    A dummy label travels with the image: transforms that pad fill it with 255, so its
    non-ignored area is where the image is. When the transforms leave the label at its
    size (``resize_label=False``) the whole transformed image counts. ``contiguous=False``
    returns a channels-last view of the transformed array (slide mode copies crops only).
    """
    h, w = image.shape[:2]
    sample = {"image": image, "label": np.zeros((h, w), dtype=np.uint8)}
    if transforms is not None:
        sample = transforms(sample, np.random.default_rng(0))
    img = np.ascontiguousarray(sample["image"], dtype=np.float32)
    th, tw = img.shape[:2]
    tensor = torch.from_numpy(img).permute(2, 0, 1)
    if contiguous:
        tensor = tensor.contiguous()
    del img, sample["image"]
    label = np.asarray(sample["label"])
    box = (0, th, 0, tw)
    if label.shape == (th, tw):
        valid = label != 255
        rows, cols = np.flatnonzero(valid.any(1)), np.flatnonzero(valid.any(0))
        if rows.size and cols.size:
            box = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
    return tensor, box


def palette_and_classes(
    cfg: Any, metadata: Mapping[str, Any] | None = None
) -> tuple[np.ndarray, list[str] | None]:
    """``(K x 3 uint8 palette, class names)`` of ``cfg``'s dataset.

    ``metadata`` (an exported model's, :func:`seg_heads.export.read_onnx_metadata`) is used
    first when it holds a palette of ``model.num_classes`` colours: the export stored the
    dataset's, and the dataset need not be present where the model is deployed. Else the
    dataset's (when it can be opened, always for ``synthetic``), else the VOC colour map
    without names.
    """
    from seg_trainer.build import build_dataset

    k = cfg.model.num_classes
    if metadata and metadata.get("palette") is not None:
        palette = np.asarray(metadata["palette"], dtype=np.uint8)
        names = metadata.get("class_names")
        if palette.shape == (k, 3):
            return palette, (list(names) if names and len(names) == k else None)
    try:
        ds = build_dataset(cfg, "val")
        palette, classes = np.asarray(ds.palette, dtype=np.uint8), list(ds.classes)
    except Exception:
        return voc_colormap(k), None
    if len(palette) != k:
        return voc_colormap(k), None
    return palette, classes
