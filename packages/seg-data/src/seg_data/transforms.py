"""Joint image + label transforms, seeded per sample.

Every transform is a small class whose ``__call__(sample, rng)`` takes and returns a sample
dict of numpy arrays:

- ``sample["image"]``: ``H x W x 3`` RGB, ``uint8`` (0..255) or ``float32`` (after ``Normalize``);
- ``sample["label"]``: ``H x W`` integer class indices, 255 = ignore.

``rng`` is a :class:`numpy.random.Generator`; datasets pass
``np.random.default_rng([seed, epoch, index])`` so a sample depends only on
``(seed, epoch, index)``, never on the worker that loads it. Labels are always resized with
nearest-neighbour sampling and never change dtype, so no new label value can appear.

Sizes: ``size`` arguments are ``[height, width]`` (an int means a square). ``scale``
arguments follow mmsegmentation's keep-ratio rule: the image is scaled by the largest factor
such that its long side is <= ``max(scale)`` and its short side is <= ``min(scale)``
(``scale=[2048, 1024]`` keeps a 2048x1024 Cityscapes frame as is; ``[2048, 512]`` brings an
ADE20K image to short side 512).

Configs describe a pipeline as a list of one-key dicts, built with :func:`build_transforms`::

    build_transforms([
        {"RandomResize": {"scale": [2048, 1024], "ratio_range": [0.5, 2.0]}},
        {"RandomCrop": {"size": [769, 769], "cat_max_ratio": 0.75}},
        {"RandomFlip": {"prob": 0.5}},
        {"PhotoMetricDistortion": {}},
        {"Normalize": {}},
        {"Pad": {"size": [769, 769]}},
    ])
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from .registry import Registry

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Compose",
    "Normalize",
    "Pad",
    "PhotoMetricDistortion",
    "RandomCrop",
    "RandomFlip",
    "RandomResize",
    "Resize",
    "ResizeShortSide",
    "Transform",
    "build_transforms",
    "list_transforms",
    "register_transform",
]

Sample = dict[str, Any]

#: ImageNet RGB mean / std on the 0..255 scale (torchvision, mmsegmentation).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

_INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


class Transform(Protocol):
    """What every transform is: ``sample, rng -> sample``."""

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample: ...


TRANSFORMS: Registry[type] = Registry("transform")


def register_transform(name: str) -> Callable[[type], type]:
    """Class decorator adding a transform under ``name`` (by convention its class name):
    ``@register_transform("RandomFlip")``; a duplicate name is an error."""
    return TRANSFORMS.register(name)


def list_transforms() -> list[str]:
    """Names accepted by :func:`build_transforms`, sorted."""
    return TRANSFORMS.names()


# --------------------------------------------------------------------------- helpers


def _hw(value: Any, what: str) -> tuple[int, int]:
    """``int | [h, w]`` -> ``(h, w)`` of positive ints."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value, value)
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != 2
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
        or min(value) <= 0
    ):
        raise ValueError(f"{what} must be a positive int or [height, width] ints, got {value!r}")
    return int(value[0]), int(value[1])


def _range(value: Any, what: str, *, positive: bool = True) -> tuple[float, float]:
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        or value[0] > value[1]
        or (positive and value[0] <= 0)
    ):
        kind = "positive " if positive else ""
        raise ValueError(
            f"{what} must be [low, high] {kind}numbers with low <= high, got {value!r}"
        )
    return float(value[0]), float(value[1])


def _check_interp(interpolation: str) -> str:
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}")
    return interpolation


def _check_sample(sample: Sample, who: str) -> None:
    if not isinstance(sample, Mapping) or "image" not in sample or "label" not in sample:
        raise TypeError(f"{who} expects a sample dict with 'image' and 'label' numpy arrays")


def keep_ratio_size(h: int, w: int, scale: Sequence[float]) -> tuple[int, int]:
    """Output ``(h, w)`` of mmcv's keep-ratio rescale of an ``h x w`` image to ``scale``."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))


def resize_image(
    image: np.ndarray,
    size: tuple[int, int],
    interpolation: str = "bilinear",
    antialias: bool = False,
) -> np.ndarray:
    """Resize an ``H x W x C`` image to ``size = (h, w)``; dtype is kept (uint8 rounded).

    Uses ``torch.nn.functional.interpolate`` with ``align_corners=False`` and, by default, no
    antialiasing: the same sampling as OpenCV's ``INTER_LINEAR`` used by mmsegmentation.
    """
    if image.shape[:2] == tuple(size):
        return image
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    uint8_fast = image.dtype == np.uint8 and interpolation == "bilinear"
    if not uint8_fast:
        x = x.float()
    kwargs: dict[str, Any] = {}
    if interpolation != "nearest":
        kwargs = {"align_corners": False, "antialias": antialias}
    y = F.interpolate(x, size=size, mode=interpolation, **kwargs)
    if image.dtype == np.uint8 and not uint8_fast:
        y = y.round_().clamp_(0, 255).to(torch.uint8)
    return y[0].permute(1, 2, 0).numpy()


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an ``H x W`` label (OpenCV ``INTER_NEAREST`` sampling).

    Output pixel ``(i, j)`` copies input ``(floor(i * H / h), floor(j * W / w))``, so every
    output value is an input value.
    """
    in_h, in_w = label.shape
    h, w = size
    if (in_h, in_w) == (h, w):
        return label
    rows = np.minimum((np.arange(h) * (in_h / h)).astype(np.int64), in_h - 1)
    cols = np.minimum((np.arange(w) * (in_w / w)).astype(np.int64), in_w - 1)
    return label[rows][:, cols]


def _resize_sample(
    sample: Sample, size: tuple[int, int], interpolation: str, antialias: bool, with_label: bool
) -> Sample:
    out = dict(sample)
    out["image"] = resize_image(sample["image"], size, interpolation, antialias)
    if with_label:
        out["label"] = resize_label(sample["label"], size)
    return out


# --------------------------------------------------------------------------- geometry


@register_transform("RandomResize")
class RandomResize:
    """Resize by a random ratio, keeping the aspect ratio (mmseg ``RandomResize``).

    A ratio ``r ~ U(ratio_range)`` is drawn; with ``scale`` the target is the keep-ratio fit of
    the image into ``scale * r`` (mmseg: ``scale=[2048, 1024], ratio_range=[0.5, 2.0]``); with
    ``scale=None`` the image itself is scaled by ``r`` (hszhao/semseg's ``RandScale``).

    Args:
        scale: base ``[long, short]`` bound (order does not matter), or None.
        ratio_range: ``[low, high]`` of the random ratio.
        interpolation: image interpolation, ``bilinear`` | ``bicubic`` | ``nearest``.
        antialias: antialias when shrinking (off in mmseg / OpenCV).
    """

    def __init__(
        self,
        scale: Sequence[int] | None = None,
        ratio_range: Sequence[float] = (0.5, 2.0),
        interpolation: str = "bilinear",
        antialias: bool = False,
    ) -> None:
        self.scale = None if scale is None else _hw(scale, "scale")
        self.ratio_range = _range(ratio_range, "ratio_range")
        self.interpolation = _check_interp(interpolation)
        self.antialias = bool(antialias)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        _check_sample(sample, "RandomResize")
        ratio = rng.uniform(*self.ratio_range)
        h, w = sample["image"].shape[:2]
        if self.scale is None:
            size = (max(1, int(h * ratio + 0.5)), max(1, int(w * ratio + 0.5)))
        else:
            size = keep_ratio_size(h, w, (int(self.scale[0] * ratio), int(self.scale[1] * ratio)))
        return _resize_sample(sample, size, self.interpolation, self.antialias, True)

    def __repr__(self) -> str:
        return f"RandomResize(scale={self.scale}, ratio_range={self.ratio_range})"


@register_transform("Resize")
class Resize:
    """Deterministic resize, to an exact ``size`` or keep-ratio into ``scale`` (evaluation).

    Args:
        size: exact output ``[height, width]``; or
        scale: keep-ratio bound ``[long, short]`` (mmseg ``Resize(scale, keep_ratio=True)``).
        resize_label: False leaves the label at its original resolution, for evaluation at the
            original label size (the model output is then resized to the label).
        interpolation, antialias: as in :class:`RandomResize`.
    """

    def __init__(
        self,
        size: int | Sequence[int] | None = None,
        scale: Sequence[int] | None = None,
        resize_label: bool = True,
        interpolation: str = "bilinear",
        antialias: bool = False,
    ) -> None:
        if (size is None) == (scale is None):
            raise ValueError("give exactly one of size=[height, width] or scale=[long, short]")
        self.size = None if size is None else _hw(size, "size")
        self.scale = None if scale is None else _hw(scale, "scale")
        self.resize_label = bool(resize_label)
        self.interpolation = _check_interp(interpolation)
        self.antialias = bool(antialias)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        _check_sample(sample, "Resize")
        h, w = sample["image"].shape[:2]
        size = self.size if self.size is not None else keep_ratio_size(h, w, self.scale)  # type: ignore[arg-type]
        return _resize_sample(sample, size, self.interpolation, self.antialias, self.resize_label)

    def __repr__(self) -> str:
        what = f"size={self.size}" if self.size else f"scale={self.scale}"
        return f"Resize({what}, resize_label={self.resize_label})"


@register_transform("ResizeShortSide")
class ResizeShortSide:
    """Resize so the short side is ``size`` (keeping the ratio), long side capped at ``max_size``.

    Args:
        size: target short side.
        max_size: optional bound on the long side (the short side then ends up smaller).
        resize_label: False leaves the label at its original resolution (evaluation).
        interpolation, antialias: as in :class:`RandomResize`.
    """

    def __init__(
        self,
        size: int,
        max_size: int | None = None,
        resize_label: bool = True,
        interpolation: str = "bilinear",
        antialias: bool = False,
    ) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise ValueError(f"size must be a positive int (the short side), got {size!r}")
        if max_size is not None and (not isinstance(max_size, int) or max_size < size):
            raise ValueError(f"max_size must be an int >= size ({size}), got {max_size!r}")
        self.size, self.max_size = size, max_size
        self.resize_label = bool(resize_label)
        self.interpolation = _check_interp(interpolation)
        self.antialias = bool(antialias)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        _check_sample(sample, "ResizeShortSide")
        h, w = sample["image"].shape[:2]
        factor = self.size / min(h, w)
        if self.max_size is not None:
            factor = min(factor, self.max_size / max(h, w))
        size = (max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5)))
        return _resize_sample(sample, size, self.interpolation, self.antialias, self.resize_label)

    def __repr__(self) -> str:
        return f"ResizeShortSide(size={self.size}, max_size={self.max_size})"


@register_transform("RandomCrop")
class RandomCrop:
    """Random crop of at most ``size`` (mmseg ``RandomCrop``), with ``cat_max_ratio``.

    The crop is ``min(size, image size)``; follow with :class:`Pad` to reach a fixed size. With
    ``cat_max_ratio < 1`` a crop is redrawn (up to ``max_tries`` times, 10 as in mmseg) while a
    single class covers ``>= cat_max_ratio`` of its non-ignored pixels or fewer than two classes
    are present; after the last try the last drawn crop is used.

    Args:
        size: ``[height, width]`` of the crop.
        cat_max_ratio: largest share one class may cover (1.0 = no check; configs use 0.75).
        ignore_index: label value left out of the class shares.
        max_tries: redraws before giving up.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        cat_max_ratio: float = 1.0,
        ignore_index: int = 255,
        max_tries: int = 10,
    ) -> None:
        self.size = _hw(size, "size")
        if not 0 < cat_max_ratio <= 1:
            raise ValueError(f"cat_max_ratio must be in (0, 1], got {cat_max_ratio!r}")
        if not isinstance(max_tries, int) or max_tries < 0:
            raise ValueError(f"max_tries must be an int >= 0, got {max_tries!r}")
        self.cat_max_ratio = float(cat_max_ratio)
        self.ignore_index = int(ignore_index)
        self.max_tries = max_tries

    def _box(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        top = int(rng.integers(0, max(h - self.size[0], 0) + 1))
        left = int(rng.integers(0, max(w - self.size[1], 0) + 1))
        return top, min(top + self.size[0], h), left, min(left + self.size[1], w)

    def _ok(self, label: np.ndarray) -> bool:
        counts = np.bincount(label.ravel().astype(np.int64))
        if self.ignore_index < len(counts):
            counts[self.ignore_index] = 0
        counts = counts[counts > 0]
        return len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        _check_sample(sample, "RandomCrop")
        label = sample["label"]
        h, w = sample["image"].shape[:2]
        if label.shape != (h, w):
            raise ValueError(
                f"RandomCrop needs image and label of the same size, got {(h, w)} and "
                f"{label.shape}; crop before any resize with resize_label=False"
            )
        t, b, lft, r = self._box(h, w, rng)
        if self.cat_max_ratio < 1.0:
            for _ in range(self.max_tries):
                if self._ok(label[t:b, lft:r]):
                    break
                t, b, lft, r = self._box(h, w, rng)
        out = dict(sample)
        out["image"] = sample["image"][t:b, lft:r]
        out["label"] = label[t:b, lft:r]
        return out

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, cat_max_ratio={self.cat_max_ratio})"


@register_transform("RandomFlip")
class RandomFlip:
    """Flip image and label together with probability ``prob``.

    Args:
        prob: flip probability.
        direction: ``horizontal`` (left-right) or ``vertical``.
    """

    def __init__(self, prob: float = 0.5, direction: str = "horizontal") -> None:
        if not 0 <= prob <= 1:
            raise ValueError(f"prob must be in [0, 1], got {prob!r}")
        if direction not in ("horizontal", "vertical"):
            raise ValueError(f"direction must be 'horizontal' or 'vertical', got {direction!r}")
        self.prob, self.direction = float(prob), direction

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        _check_sample(sample, "RandomFlip")
        if rng.random() >= self.prob:
            return sample
        out = dict(sample)
        if self.direction == "horizontal":
            out["image"], out["label"] = sample["image"][:, ::-1], sample["label"][:, ::-1]
        else:
            out["image"], out["label"] = sample["image"][::-1], sample["label"][::-1]
        return out

    def __repr__(self) -> str:
        return f"RandomFlip(prob={self.prob}, direction={self.direction!r})"


@register_transform("Pad")
class Pad:
    """Pad bottom and right to at least ``size`` and/or to a multiple of ``size_divisor``.

    Args:
        size: minimum ``[height, width]`` (the crop size in training pipelines).
        size_divisor: pad each side up to a multiple of this.
        image_fill: image pad value (0, applied after ``Normalize`` as in mmseg).
        label_fill: label pad value (255 = ignore).
    """

    def __init__(
        self,
        size: int | Sequence[int] | None = None,
        size_divisor: int | None = None,
        image_fill: float = 0.0,
        label_fill: int = 255,
    ) -> None:
        if size is None and size_divisor is None:
            raise ValueError("give size=[height, width] and/or size_divisor")
        if size_divisor is not None and (not isinstance(size_divisor, int) or size_divisor <= 0):
            raise ValueError(f"size_divisor must be a positive int, got {size_divisor!r}")
        self.size = None if size is None else _hw(size, "size")
        self.size_divisor = size_divisor
        self.image_fill, self.label_fill = image_fill, int(label_fill)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        _check_sample(sample, "Pad")
        image, label = sample["image"], sample["label"]
        h, w = image.shape[:2]
        th, tw = (h, w) if self.size is None else (max(h, self.size[0]), max(w, self.size[1]))
        if self.size_divisor:
            d = self.size_divisor
            th, tw = math.ceil(th / d) * d, math.ceil(tw / d) * d
        out = dict(sample)
        if (th, tw) != (h, w):
            out["image"] = np.pad(
                image, ((0, th - h), (0, tw - w), (0, 0)), constant_values=self.image_fill
            )
        lh, lw = label.shape
        lth, ltw = lh + th - h, lw + tw - w  # a label kept at original size is left unpadded
        if (lh, lw) == (h, w) and (lth, ltw) != (lh, lw):
            out["label"] = np.pad(
                label, ((0, lth - lh), (0, ltw - lw)), constant_values=self.label_fill
            )
        return out

    def __repr__(self) -> str:
        return f"Pad(size={self.size}, size_divisor={self.size_divisor})"


# --------------------------------------------------------------------------- photometric


def rgb_to_hsv(image: np.ndarray) -> np.ndarray:
    """``uint8`` RGB -> ``uint8`` HSV in OpenCV's 8-bit convention (H in 0..179, S, V 0..255).

    Branch-free arithmetic on channel planes (about 10x faster than masked numpy code).
    """
    shape = image.shape
    r, g, b = np.ascontiguousarray(image.reshape(-1, 3).T, dtype=np.float32)
    v = np.maximum(np.maximum(r, g), b)
    diff = v - np.minimum(np.minimum(r, g), b)
    s = diff * 255.0 / np.maximum(v, 1.0)
    is_r = v == r
    is_g = (v == g) & ~is_r
    is_b = ~(is_r | is_g)
    h = is_r * (g - b) + is_g * (b - r + 2.0 * diff) + is_b * (r - g + 4.0 * diff)
    h *= 30.0 / np.maximum(diff, 1.0)  # degrees / 2; 0 for grey pixels (diff 0)
    h += 180.0 * (h < 0)
    h = np.rint(h)
    h -= 180.0 * (h >= 180.0)
    out = np.empty((3, r.size), dtype=np.uint8)
    out[0], out[1], out[2] = h, np.rint(s), v
    return out.T.reshape(shape)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_hsv` (OpenCV 8-bit convention), rounded to ``uint8``."""
    shape = hsv.shape
    h, s, v = np.ascontiguousarray(hsv.reshape(-1, 3).T, dtype=np.float32)
    h *= 2.0 / 60.0  # sector units 0..6
    vs = v * s * (1.0 / 255.0)
    out = np.empty((3, h.size), dtype=np.uint8)
    for c, n in enumerate((5.0, 3.0, 1.0)):  # R, G, B
        k = h + n
        k -= 6.0 * (k >= 6.0)
        out[c] = np.clip(np.rint(v - vs * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)), 0, 255)
    return out.T.reshape(shape)


def _convert(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """mmseg's ``convert``: ``x * alpha + beta``, clipped to 0..255 and truncated to uint8."""
    return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


@register_transform("PhotoMetricDistortion")
class PhotoMetricDistortion:
    """mmsegmentation's ``PhotoMetricDistortion`` on a ``uint8`` RGB image.

    In order, each step applied with probability 1/2: brightness (add ``U(-delta, delta)``),
    contrast (multiply by ``U(contrast_range)``) either here or last (a coin decides), saturation
    (scale HSV S by ``U(saturation_range)``), hue (add ``randint(-hue_delta, hue_delta)`` to
    OpenCV H in 0..179, mod 180). Each step clips to 0..255 and truncates to ``uint8`` as mmseg
    does. HSV is computed from RGB, which equals mmseg's ``bgr2hsv`` on its BGR image. Place it
    before ``Normalize``. The label is untouched.
    """

    def __init__(
        self,
        brightness_delta: int = 32,
        contrast_range: Sequence[float] = (0.5, 1.5),
        saturation_range: Sequence[float] = (0.5, 1.5),
        hue_delta: int = 18,
    ) -> None:
        if not isinstance(brightness_delta, (int, float)) or brightness_delta < 0:
            raise ValueError(f"brightness_delta must be >= 0, got {brightness_delta!r}")
        if not isinstance(hue_delta, int) or not 0 <= hue_delta <= 180:
            raise ValueError(f"hue_delta must be an int in 0..180, got {hue_delta!r}")
        self.brightness_delta = brightness_delta
        self.contrast_range = _range(contrast_range, "contrast_range", positive=False)
        self.saturation_range = _range(saturation_range, "saturation_range", positive=False)
        self.hue_delta = hue_delta

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        _check_sample(sample, "PhotoMetricDistortion")
        img = sample["image"]
        if img.dtype != np.uint8:
            raise TypeError(
                f"PhotoMetricDistortion expects a uint8 0..255 image, got {img.dtype}; "
                "place it before Normalize in the pipeline"
            )
        if rng.integers(2):
            img = _convert(img, beta=rng.uniform(-self.brightness_delta, self.brightness_delta))
        contrast_first = rng.integers(2) == 1
        if contrast_first and rng.integers(2):
            img = _convert(img, alpha=rng.uniform(*self.contrast_range))
        if rng.integers(2):
            hsv = rgb_to_hsv(img)
            hsv[..., 1] = _convert(hsv[..., 1], alpha=rng.uniform(*self.saturation_range))
            img = hsv_to_rgb(hsv)
        if rng.integers(2):
            hsv = rgb_to_hsv(img)
            shift = int(rng.integers(-self.hue_delta, self.hue_delta)) if self.hue_delta else 0
            hsv[..., 0] = (hsv[..., 0].astype(np.int64) + shift) % 180
            img = hsv_to_rgb(hsv)
        if not contrast_first and rng.integers(2):
            img = _convert(img, alpha=rng.uniform(*self.contrast_range))
        out = dict(sample)
        out["image"] = img
        return out

    def __repr__(self) -> str:
        return (
            f"PhotoMetricDistortion(brightness_delta={self.brightness_delta}, "
            f"contrast_range={self.contrast_range}, saturation_range={self.saturation_range}, "
            f"hue_delta={self.hue_delta})"
        )


@register_transform("Normalize")
class Normalize:
    """``(image - mean) / std`` to ``float32``, optionally reordering RGB to BGR first.

    Args:
        mean, std: per channel, 0..255 scale, in the OUTPUT channel order. Default: ImageNet
            RGB (torchvision / mmseg). For caffe-style weights (PKUSeg, torchcv) use
            ``to_bgr=True, mean=[104.008, 116.669, 122.675], std=[1, 1, 1]``.
        to_bgr: reverse the channel order before normalising.
    """

    def __init__(
        self,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        to_bgr: bool = False,
    ) -> None:
        for what, v in (("mean", mean), ("std", std)):
            if not isinstance(v, Sequence) or isinstance(v, str) or len(v) != 3:
                raise ValueError(f"{what} must be 3 numbers (one per channel), got {v!r}")
        if min(std) <= 0:
            raise ValueError(f"std must be positive, got {std!r}")
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self._inv_std = 1.0 / self.std
        self.to_bgr = bool(to_bgr)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        _check_sample(sample, "Normalize")
        img = sample["image"]
        if self.to_bgr:
            img = img[..., ::-1]
        out = dict(sample)
        x = img.astype(np.float32)  # a copy; then in place: one float image, not three
        x -= self.mean
        x *= self._inv_std
        out["image"] = x
        return out

    def __repr__(self) -> str:
        return (
            f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()}, to_bgr={self.to_bgr})"
        )


# --------------------------------------------------------------------------- composition


class Compose:
    """Apply transforms in order, all drawing from the same per-sample ``rng``."""

    def __init__(self, transforms: Iterable[Transform]) -> None:
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise TypeError(f"Compose got a non-callable transform {t!r}")

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for t in self.transforms:
            sample = t(sample, rng)
        return sample

    def __len__(self) -> int:
        return len(self.transforms)

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])"


def _build_one(i: int, item: Any) -> Transform:
    if callable(item) and not isinstance(item, Mapping):
        return item
    if not isinstance(item, Mapping) or len(item) != 1:
        raise ValueError(
            f"transform #{i} must be a one-key mapping like {{'RandomFlip': {{'prob': 0.5}}}}, "
            f"got {item!r}"
        )
    ((name, params),) = item.items()
    if name not in TRANSFORMS:
        raise KeyError(f"unknown transform {name!r} (#{i}); valid names are {list_transforms()}")
    cls = TRANSFORMS.get(name)
    params = {} if params is None else params
    if not isinstance(params, Mapping):
        raise ValueError(f"transform #{i} {name}: parameters must be a mapping, got {params!r}")
    valid = [p for p in inspect.signature(cls).parameters if p != "self"]
    for key in params:
        if key not in valid:
            raise ValueError(
                f"transform #{i} {name}: unknown parameter {key!r}; valid parameters: {', '.join(valid)}"
            )
    try:
        return cls(**params)
    except (TypeError, ValueError) as e:
        raise ValueError(f"transform #{i} {name}: {e}") from e


def build_transforms(spec: Sequence[Mapping[str, Any] | Transform] | None) -> Compose:
    """Build a :class:`Compose` from a config list of one-key dicts (or transform objects).

    ``None`` or ``[]`` gives an empty pipeline. Unknown names raise ``KeyError`` listing the
    valid ones; bad parameters raise ``ValueError`` naming the transform and the parameter.
    """
    if spec is None:
        return Compose([])
    if isinstance(spec, (str, Mapping)) or not isinstance(spec, Sequence):
        raise TypeError(
            f"build_transforms expects a list of one-key dicts, got {type(spec).__name__}: {spec!r}"
        )
    return Compose(_build_one(i, item) for i, item in enumerate(spec))


TransformLike = (
    Compose | Sequence[Mapping[str, Any]] | Callable[[Sample, np.random.Generator], Sample]
)
