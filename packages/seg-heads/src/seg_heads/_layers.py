"""Small blocks shared by the heads: a conv-norm-ReLU unit and the norm-layer option.

``ConvBNReLU`` names its children ``conv`` and ``bn`` like mmcv's ``ConvModule``
with a BatchNorm ``norm_cfg``, so mmsegmentation head weights load by name.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

__all__ = ["ConvBNReLU", "NormLayer", "resolve_norm"]

NormLayer = Callable[[int], nn.Module]

_GN_GROUPS = 32


def _group_norm(num_features: int) -> nn.Module:
    if num_features % _GN_GROUPS:
        raise ValueError(
            f"norm_layer='gn' uses {_GN_GROUPS} groups but a head layer has {num_features} "
            f"channels; pass norm_layer=lambda c: nn.GroupNorm(g, c) with g dividing {num_features}"
        )
    return nn.GroupNorm(_GN_GROUPS, num_features)


_NORMS: dict[str, NormLayer] = {
    "bn": nn.BatchNorm2d,
    "syncbn": nn.SyncBatchNorm,
    "gn": _group_norm,
}


def resolve_norm(norm_layer: str | NormLayer) -> NormLayer:
    """Turn ``"bn" | "syncbn" | "gn"`` or a callable ``num_features -> nn.Module`` into a callable."""
    if isinstance(norm_layer, str):
        try:
            return _NORMS[norm_layer]
        except KeyError:
            raise ValueError(
                f"unknown head norm_layer {norm_layer!r}; valid names are {sorted(_NORMS)} "
                "or a callable num_features -> nn.Module"
            ) from None
    if callable(norm_layer):
        return norm_layer
    raise TypeError(
        f"norm_layer must be one of {sorted(_NORMS)} or a callable, got {type(norm_layer).__name__}"
    )


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
