"""Tests for seg_trainer.inference: whole, sliding-window and multi-scale + flip."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seg_trainer.inference import predict_logits, slide_windows

K = 4


class PixelModel(nn.Module):
    """Per-pixel stand-in: a 1x1 conv, so any window sees the same per-pixel logits."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, K, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.conv(x)}


class ContextModel(nn.Module):
    """Spatial context (3x3 convs + global pooling), output at input size like our models."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, K, 3, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = torch.relu(self.conv1(x))
        f = f + f.mean(dim=(2, 3), keepdim=True)
        out = self.conv2(f)
        return {"out": F.interpolate(out, size=x.shape[-2:], mode="bilinear")}


class CountingModel(nn.Module):
    """Returns ones and records the input shapes it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.shapes.append(tuple(x.shape))
        return {"out": x.new_ones(x.shape[0], K, *x.shape[-2:])}


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 37, 53, generator=torch.Generator().manual_seed(0))


def test_whole_shape_and_out_size(images: torch.Tensor) -> None:
    model = ContextModel().eval()
    out = predict_logits(model, images, num_classes=K)
    assert out.shape == (2, K, 37, 53)
    torch.testing.assert_close(out, model(images)["out"])
    resized = predict_logits(model, images, num_classes=K, out_size=(74, 106))
    assert resized.shape == (2, K, 74, 106)
    torch.testing.assert_close(
        resized, F.interpolate(model(images)["out"], size=(74, 106), mode="bilinear")
    )


@pytest.mark.parametrize("crop", [(37, 53), (40, 60)])
def test_slide_with_crop_covering_image_equals_whole(images: torch.Tensor, crop) -> None:
    # crop == image: one window, the exact same input as whole -> identical, any model.
    model = ContextModel().eval() if crop == (37, 53) else PixelModel().eval()
    whole = predict_logits(model, images, num_classes=K)
    for pad in (True, False):
        slide = predict_logits(
            model,
            images,
            mode="slide",
            crop_size=crop,
            stride=(20, 20),
            num_classes=K,
            slide_pad=pad,
        )
        torch.testing.assert_close(slide, whole)


def test_slide_overlapping_windows_average_back_to_whole(images: torch.Tensor) -> None:
    # With a per-pixel model every window gives the same logits for a pixel, so the
    # sum / count of a correct grid reproduces whole-image inference exactly.
    model = PixelModel().eval()
    whole = predict_logits(model, images, num_classes=K)
    slide = predict_logits(model, images, mode="slide", crop_size=16, stride=11, num_classes=K)
    torch.testing.assert_close(slide, whole)


def test_slide_windows_grid_matches_mmseg() -> None:
    # h: grids = max(37 - 16 + 10, 0) // 11 + 1 = 3 -> starts 0, 11, 21 (last pulled back to 37-16)
    wins = slide_windows(37, 20, (16, 16), (11, 11))
    assert sorted({(y1, y2) for y1, y2, _, _ in wins}) == [(0, 16), (11, 27), (21, 37)]
    assert sorted({(x1, x2) for _, _, x1, x2 in wins}) == [(0, 16), (4, 20)]
    # crop larger than the image: one window of the image's size
    assert slide_windows(10, 12, (16, 16), (8, 8)) == [(0, 10, 0, 12)]


def test_slide_pads_small_images_and_averages_counts() -> None:
    model = CountingModel()
    x = torch.zeros(1, 3, 10, 30)
    out = predict_logits(model, x, mode="slide", crop_size=(16, 16), stride=(8, 8), num_classes=K)
    torch.testing.assert_close(out, torch.ones(1, K, 10, 30))  # overlaps divided by counts
    assert all(s[-2:] == (16, 16) for s in model.shapes)  # padded to the crop
    model.shapes.clear()
    predict_logits(
        model, x, mode="slide", crop_size=(16, 16), stride=(8, 8), num_classes=K, slide_pad=False
    )
    assert all(s[-2:] == (10, 16) for s in model.shapes)  # mmseg: no padding


def test_flip_of_flip_equivariant_model(images: torch.Tensor) -> None:
    # A per-pixel model is flip-equivariant: the flipped view un-flipped is the same map,
    # so the flip average has the same probabilities as whole inference.
    model = PixelModel().eval()
    whole = predict_logits(model, images, num_classes=K)
    flipped = predict_logits(model, images, mode="multiscale", flip=True, num_classes=K)
    torch.testing.assert_close(flipped.softmax(1), whole.softmax(1))
    # A model that is not flip-equivariant gives a different (averaged) answer.
    ctx = ContextModel().eval()
    a = predict_logits(ctx, images, num_classes=K).softmax(1)
    b = predict_logits(ctx, images, flip=True, num_classes=K).softmax(1)
    manual = (ctx(images)["out"].softmax(1) + ctx(images.flip(-1))["out"].flip(-1).softmax(1)) / 2
    torch.testing.assert_close(b, manual)
    assert not torch.allclose(a, b)


def test_multiscale_single_scale_equals_whole(images: torch.Tensor) -> None:
    model = ContextModel().eval()
    whole = predict_logits(model, images, num_classes=K)
    # scales (and crop_size/stride) of other modes are ignored by "whole"
    same = predict_logits(model, images, scales=(0.5, 2.0), crop_size=8, stride=4, num_classes=K)
    torch.testing.assert_close(same, whole)
    ms = predict_logits(model, images, mode="multiscale", scales=(1.0,), num_classes=K)
    torch.testing.assert_close(ms, whole)


def test_multiscale_averages_resized_probabilities(images: torch.Tensor) -> None:
    model = ContextModel().eval()
    out = predict_logits(
        model, images, mode="multiscale", scales=(0.5, 1.5), num_classes=K, out_size=(30, 40)
    )
    assert out.shape == (2, K, 30, 40)
    expected = 0
    for s in (0.5, 1.5):
        size = (int(37 * s + 0.5), int(53 * s + 0.5))
        x = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        logits = F.interpolate(model(x)["out"], size=(30, 40), mode="bilinear")
        expected = expected + logits.softmax(1) / 2
    torch.testing.assert_close(out.softmax(1), expected)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(2, 30, 40))


def test_multiscale_with_slide_views(images: torch.Tensor) -> None:
    model = PixelModel().eval()
    whole = predict_logits(model, images, num_classes=K)
    out = predict_logits(
        model,
        images,
        mode="multiscale",
        scales=(1.0,),
        flip=True,
        crop_size=16,
        stride=10,
        num_classes=K,
    )
    torch.testing.assert_close(out.softmax(1), whole.softmax(1))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "tiles"}, "mode must be one of"),
        ({"mode": "slide"}, "needs crop_size and stride"),
        ({"mode": "slide", "crop_size": (0, 4), "stride": 2}, "crop_size must be positive"),
        ({"mode": "multiscale", "crop_size": 8}, "give both"),
    ],
)
def test_bad_arguments_are_explained(images: torch.Tensor, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        predict_logits(PixelModel(), images, num_classes=K, **kwargs)


def test_wrong_num_classes_is_explained(images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="num_classes=5"):
        predict_logits(PixelModel(), images, num_classes=5)
