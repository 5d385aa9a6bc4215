"""Small blocks shared by the heads: a conv-norm-ReLU unit and the norm-layer option.

``ConvBNReLU`` names its children ``conv`` and ``bn`` like mmcv's ``ConvModule``
with a BatchNorm ``norm_cfg``, so mmsegmentation head weights load by name.
"""

from __future__ import annotations

from torch import Tensor, nn

from seg_backbones.norm import NormLayer, get_norm_layer

__all__ = ["ConvBNReLU", "NormLayer", "resolve_norm"]

# The norm-layer option means the same for heads as for backbones ("bn" | "syncbn" | "gn" |
# "frozen_bn" | callable): one resolver, seg_backbones'.
resolve_norm = get_norm_layer


class ConvBNReLU(nn.Module):
    """``conv`` (no bias) -> ``bn`` -> ReLU, as mmcv's ``ConvModule`` with a norm layer.

    Padding keeps the spatial size: ``dilation * (kernel_size // 2)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        dilation: int = 1,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            padding=dilation * (kernel_size // 2),
            dilation=dilation,
            bias=False,
        )
        self.bn = norm_layer(out_channels)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.activate(self.bn(self.conv(x)))


def init_mmseg_(head: nn.Module, classifier: nn.Conv2d) -> None:
    """mmseg's initialisation: Kaiming-normal (fan_out, ReLU) convs, norms 1/0, classifier N(0, 0.01).

    mmcv's ``ConvModule.init_weights`` and ``BaseDecodeHead``'s
    ``init_cfg=dict(type='Normal', std=0.01, override=dict(name='conv_seg'))``.
    """
    for m in head.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm | nn.GroupNorm) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    nn.init.normal_(classifier.weight, std=0.01)
    if classifier.bias is not None:
        nn.init.zeros_(classifier.bias)
