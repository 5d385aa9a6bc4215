"""Normalisation layer factory: ``"bn" | "syncbn" | "gn" | "frozen_bn"`` or a callable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["FrozenBatchNorm2d", "NormLayer", "get_norm_layer", "is_batch_norm"]

NormLayer = Callable[[int], nn.Module]

GN_GROUPS = 32  # group count for "gn" (Wu & He, 2018; detectron2 and mmseg configs)


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed affine parameters and statistics (all buffers).

    Holds ``weight``, ``bias``, ``running_mean`` and ``running_var`` under the same
    names as :class:`torch.nn.BatchNorm2d` so BN state dicts load 1:1; a
    ``num_batches_tracked`` entry in the loaded dict is dropped (as torchvision's
    ``FrozenBatchNorm2d`` does).
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def _group_norm(num_features: int) -> nn.GroupNorm:
    if num_features % GN_GROUPS:
        raise ValueError(
            f"norm_layer='gn' uses {GN_GROUPS} groups but got {num_features} channels, "
            f"which {GN_GROUPS} does not divide; pass norm_layer=lambda c: nn.GroupNorm(g, c)"
        )
    return nn.GroupNorm(GN_GROUPS, num_features)


_NORMS: dict[str, NormLayer] = {
    "bn": nn.BatchNorm2d,
    "syncbn": nn.SyncBatchNorm,
    "gn": _group_norm,
    "frozen_bn": FrozenBatchNorm2d,
}


def get_norm_layer(norm_layer: str | NormLayer) -> NormLayer:
    """Resolve ``norm_layer`` to a callable ``num_features -> nn.Module``.

    Strings: ``"bn"`` (BatchNorm2d), ``"syncbn"`` (SyncBatchNorm), ``"gn"``
    (GroupNorm with 32 groups), ``"frozen_bn"`` (:class:`FrozenBatchNorm2d`).
    """
    if isinstance(norm_layer, str):
        try:
            return _NORMS[norm_layer]
        except KeyError:
            raise ValueError(
                f"unknown norm_layer {norm_layer!r}; valid names are {sorted(_NORMS)} "
                "or a callable num_features -> nn.Module"
            ) from None
    if callable(norm_layer):
        return norm_layer
    raise TypeError(
        f"norm_layer must be one of {sorted(_NORMS)} or a callable, got {type(norm_layer).__name__}"
    )


def is_batch_norm(module: nn.Module) -> bool:
    """True for modules with running statistics that ``.eval()`` freezes (BN, SyncBN)."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm)
