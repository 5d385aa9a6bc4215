"""``timm:<model>``: any timm model's ``features_only`` output in our feature contract.

timm is an optional extra (``pip install "seg-backbones[timm]"``); it is imported only
when a ``timm:`` name is built. The wrapper returns the last four feature levels
(for ResNets: layer1..layer4) as a list, and ``.feature_info`` as
:class:`~seg_backbones.FeatureInfo` entries.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ._features import FeatureInfo

__all__ = ["TimmBackbone", "create_timm_backbone"]

NUM_OUTPUTS = 4


def _import_timm() -> Any:
    try:
        import timm
    except ImportError as e:
        raise ImportError(
            "'timm:<model>' backbones need timm, which is not installed; "
            'install the extra: pip install "seg-backbones[timm]"'
        ) from e
    return timm


class TimmBackbone(nn.Module):
    """Wraps ``timm.create_model(name, features_only=True)``; returns its last 4 levels."""

    def __init__(self, model: nn.Module, *, name: str) -> None:
        super().__init__()
        self.model = model
        self.name = name
        info = model.feature_info  # timm FeatureInfo
        channels, reductions = info.channels(), info.reduction()
        if len(channels) < NUM_OUTPUTS:
            raise ValueError(
                f"timm model {name!r} has {len(channels)} feature levels, the contract needs "
                f"{NUM_OUTPUTS}"
            )
        self.feature_info: list[FeatureInfo] = [
            FeatureInfo(int(c), int(r))
            for c, r in zip(channels[-NUM_OUTPUTS:], reductions[-NUM_OUTPUTS:], strict=True)
        ]

    def forward(self, x: Tensor) -> list[Tensor]:
        return list(self.model(x))[-NUM_OUTPUTS:]

    def load_pretrained_state_dict(
        self, state_dict: Mapping[str, Tensor], *, source: str = "auto"
    ) -> None:
        """:func:`seg_backbones.load_pretrained`'s hook: timm-layout weights only."""
        if source not in ("auto", "timm"):
            raise ValueError(f"a timm backbone loads timm weights; got source={source!r}")
        self.load_timm_state_dict(state_dict)

    def load_timm_state_dict(self, state_dict: Mapping[str, Tensor]) -> None:
        """Load a state dict of the full timm model (as ``timm.create_model(name)`` saves it).

        timm's feature wrapper renames nested modules (``stages.0`` -> ``stages_0``); keys
        are matched modulo that renaming. Every feature-model key must be present (else
        an error lists the missing ones); checkpoint keys the feature model does not use
        (classifier, final norm) are ignored with a warning.
        """
        from .pretrained import IncompatibleWeightsError, _listing

        own = self.model.state_dict()
        by_norm = {k.replace("_", "."): k for k in own}
        sd: dict[str, Tensor] = {}
        unused: list[str] = []
        for k, v in state_dict.items():
            target = k if k in own else by_norm.get(k.replace("_", "."))
            if target is None:
                unused.append(k)
            else:
                sd[target] = v
        missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
        mismatched = [
            f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
            for k, v in sd.items()
            if v.shape != own[k].shape
        ]
        if missing or mismatched:
            raise IncompatibleWeightsError(
                f"weights do not fit timm:{self.name}:"
                + (f"\nmissing keys {_listing(missing)}" if missing else "")
                + (f"\nshape mismatches {_listing(mismatched)}" if mismatched else "")
            )
        for k in own:
            if k.endswith("num_batches_tracked") and k not in sd:
                sd[k] = own[k]
        if unused:
            warnings.warn(
                f"timm:{self.name}: ignored checkpoint keys unused by features_only "
                f"{_listing(unused)}",
                stacklevel=3,
            )
        self.model.load_state_dict(sd, strict=True)


def create_timm_backbone(
    name: str,
    *,
    output_stride: int = 32,
    in_chans: int = 3,
    **timm_kwargs: Any,
) -> TimmBackbone:
    """Build ``timm.create_model(name, features_only=True, ...)`` wrapped in our contract.

    ``output_stride`` (8 | 16 | 32) is passed to timm when not 32 (not every timm model
    supports dilation); other keyword arguments go to ``timm.create_model`` unchanged
    (weights are never downloaded unless you pass ``pretrained=True`` yourself).
    """
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be one of [8, 16, 32], got {output_stride!r}")
    timm = _import_timm()
    if not timm.is_model(name.split(".")[0]):
        raise KeyError(
            f"unknown timm model {name!r}; see timm.list_models() (e.g. 'timm:resnet50')"
        )
    kwargs: dict[str, Any] = {"features_only": True, "in_chans": in_chans, **timm_kwargs}
    if output_stride != 32:
        kwargs["output_stride"] = output_stride
    return TimmBackbone(timm.create_model(name, **kwargs), name=name)
