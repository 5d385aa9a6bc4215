"""Shared fixtures: a tiny stand-in backbone that follows the seg_backbones contract."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from seg_backbones import FeatureInfo

# One intra-op thread: on small, shared CI machines (2 cores) OpenMP threads spinning
# against other processes make these tiny forwards up to 10x slower.
torch.set_num_threads(1)


class TinyBackbone(nn.Module):
    """Four strided convs with odd channel counts, publishing ``feature_info``.

    Odd widths catch heads that hard-code 2048/1024 instead of reading ``feature_info``.
    """

    def __init__(self, channels: tuple[int, ...] = (24, 40, 56, 72)) -> None:
        super().__init__()
        strides = (4, 2, 1, 1)
        layers, cin, red = [], 3, 1
        self.feature_info = []
        for c, s in zip(channels, strides, strict=True):
            layers.append(nn.Sequential(nn.Conv2d(cin, c, 3, stride=s, padding=1), nn.ReLU()))
            cin, red = c, red * s
            self.feature_info.append(FeatureInfo(c, red))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return feats


@pytest.fixture
def tiny_backbone() -> TinyBackbone:
    torch.manual_seed(0)
    return TinyBackbone()
