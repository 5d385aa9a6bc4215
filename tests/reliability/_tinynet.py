"""A tiny backbone for the reliability suite: four conv stages, a few thousand parameters.

The suite tests the trainer's machinery (signals, locks, checkpoints, errors), not a model:
with this backbone a run starts in seconds and a checkpoint is a few kB. Importing the
module registers ``reliability_tiny`` with seg_backbones (once per process).
"""

from __future__ import annotations

from torch import Tensor, nn

from seg_backbones import FeatureInfo, list_backbones, register_backbone


def _stage(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinyBackbone(nn.Module):
    """Outputs at strides 2, 4, 8, 8 with 8, 8, 16, 16 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            [_stage(3, 8, 2), _stage(8, 8, 2), _stage(8, 16, 2), _stage(16, 16, 1)]
        )
        self.feature_info = [
            FeatureInfo(8, 2),
            FeatureInfo(8, 4),
            FeatureInfo(16, 8),
            FeatureInfo(16, 8),
        ]

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


if "reliability_tiny" not in list_backbones():

    @register_backbone("reliability_tiny")
    def reliability_tiny(*, output_stride: int = 8) -> TinyBackbone:
        """The reliability suite's backbone (output stride 8 only)."""
        if output_stride != 8:
            raise ValueError(f"reliability_tiny has output stride 8, got {output_stride}")
        return TinyBackbone()
