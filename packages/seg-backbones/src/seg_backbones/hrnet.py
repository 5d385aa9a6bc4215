"""HRNetV2: parallel multi-resolution branches with repeated fusion.

Wang et al., "Deep High-Resolution Representation Learning for Visual Recognition"
(TPAMI 2020). Layer for layer as mmsegmentation 1.2.2 ``mmseg/models/backbones/hrnet.py``
with the ``extra`` dict of ``configs/_base_/models/ocrnet_hr18.py`` (W18) and
``configs/ocrnet/ocrnet_hr48_*.py`` (W48):

* stem: two 3x3 stride-2 convs of 64 channels, each with BN + ReLU (``conv1``/``bn1``,
  ``conv2``/``bn2``), stride 4;
* ``layer1``: 4 Bottlenecks of width 64 (256 channels out);
* ``transition1..3``: a 3x3 conv + BN + ReLU where a branch changes width, a 3x3
  stride-2 conv + BN + ReLU opening each new, half-resolution branch;
* ``stage2..4``: 1, 4 and 3 ``HRModule`` blocks with 2, 3 and 4 branches; each branch is 4
  BasicBlocks, then every output branch ``i`` sums all branches ``j``: itself, a 1x1
  conv + BN then bilinear upsampling (``align_corners=False``, mmseg's ``Upsample`` by
  ``2**(j-i)``, then resized to branch ``i``'s size) from lower resolutions, and a chain
  of ``i-j`` 3x3 stride-2 convs + BN (+ ReLU except the last) from higher ones; ReLU.

The four branches are the outputs: widths ``(W, 2W, 4W, 8W)`` at strides 4/8/16/32
(W18: 18/36/72/144, W48: 48/96/192/384). HRNet keeps its stride-4 branch throughout, so
there is no dilated variant: ``output_stride`` must be 32.

Module names are mmseg's, which are also those of the official HRNet code and of timm's
``hrnet_w*`` (the ImageNet classification checkpoints), so all three layouts load by name;
:meth:`HRNet.load_pretrained_state_dict` drops the classification head
(``incre_modules``, ``downsamp_modules``, ``final_layer``, ``classifier``).
The BasicBlock/Bottleneck are seg_backbones' ResNet blocks (mmseg's have the same names
and, at stride 1 without dilation, the same layers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ._features import FeatureInfo
from ._registry import build_checked, register_backbone
from .norm import NormLayer, get_norm_layer, is_batch_norm
from .pretrained import backbone_part, check_state_dict, reconcile_buffers
from .resnet import BasicBlock, Bottleneck

__all__ = ["HRModule", "HRNet", "convert_hrnet_state_dict"]

# modules of the ImageNet classification head (official HRNet / timm), not in the backbone
_CLASSIFIER_PREFIXES = ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier.")
SOURCES: tuple[str, ...] = ("auto", "mmseg", "official", "timm")


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class _Upsample(nn.Module):
    """mmseg's ``Upsample(scale_factor=s, mode='bilinear', align_corners=False)``.

    Interpolated by scale factor (output ``floor(size * s)``), so that the output size is
    never a Python int baked into an exported graph; the fusion resizes to the target
    branch's size afterwards, as mmseg's ``HRModule`` does.
    """

    def __init__(self, scale_factor: int) -> None:
        super().__init__()
        self.scale_factor = float(scale_factor)

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(
            x, scale_factor=self.scale_factor, mode="bilinear", align_corners=False
        )

    def extra_repr(self) -> str:
        return f"scale_factor={self.scale_factor}, mode='bilinear', align_corners=False"


class HRModule(nn.Module):
    """Parallel branches of BasicBlocks, then the multi-resolution fusion (mmseg ``HRModule``).

    ``fuse_layers[i][j]`` maps branch ``j`` to branch ``i``'s width and resolution
    (``nn.Identity`` for ``i == j``).
    """

    def __init__(self, channels: Sequence[int], num_blocks: int, norm: NormLayer) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(*[BasicBlock(c, c, norm_layer=norm) for _ in range(num_blocks)])
            for c in channels
        )
        self.fuse_layers = nn.ModuleList(
            nn.ModuleList(self._fuse(channels, j, i, norm) for j in range(len(channels)))
            for i in range(len(channels))
        )
        self.relu = nn.ReLU(inplace=False)

    @staticmethod
    def _fuse(channels: Sequence[int], j: int, i: int, norm: NormLayer) -> nn.Module:
        """The path from branch ``j`` to branch ``i``."""
        if j == i:
            return nn.Identity()
        if j > i:  # lower resolution: 1x1 conv + BN, bilinear upsampling
            return nn.Sequential(
                nn.Conv2d(channels[j], channels[i], 1, bias=False),
                norm(channels[i]),
                _Upsample(2 ** (j - i)),
            )
        steps: list[nn.Module] = []
        for k in range(i - j):  # higher resolution: i - j stride-2 convs
            last = k == i - j - 1
            cout = channels[i] if last else channels[j]
            step = [_conv3x3(channels[j], cout, stride=2), norm(cout)]
            steps.append(nn.Sequential(*step) if last else nn.Sequential(*step, nn.ReLU()))
        return nn.Sequential(*steps)

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs, strict=True)]
        out = []
        for i, fuse in enumerate(self.fuse_layers):
            y: Tensor | None = None
            for j, x in enumerate(xs):
                z = fuse[j](x)
                if j > i:  # always, as mmseg's resize (identity when the sizes agree; no
                    # size comparison for an exporter to bake in)
                    z = F.interpolate(
                        z, size=xs[i].shape[-2:], mode="bilinear", align_corners=False
                    )
                y = z if y is None else y + z
            out.append(self.relu(y))
        return out


def _transition(prev: Sequence[int], cur: Sequence[int], norm: NormLayer) -> nn.ModuleList:
    """mmseg's ``_make_transition_layer``: keep or re-width old branches, open new ones."""
    layers: list[nn.Module] = []
    for i, c in enumerate(cur):
        if i < len(prev):
            same = c == prev[i]
            layers.append(
                nn.Identity()
                if same
                else nn.Sequential(_conv3x3(prev[i], c), norm(c), nn.ReLU(inplace=True))
            )
            continue
        steps = []
        for k in range(i + 1 - len(prev)):  # from the lowest-resolution branch
            cout = c if k == i - len(prev) else prev[-1]
            steps.append(
                nn.Sequential(_conv3x3(prev[-1], cout, stride=2), norm(cout), nn.ReLU(inplace=True))
            )
        layers.append(nn.Sequential(*steps))
    return nn.ModuleList(layers)


class HRNet(nn.Module):
    """HRNetV2 backbone returning its four branches (strides 4, 8, 16, 32) as a list.

    Use :func:`seg_backbones.create_backbone` (``"hrnet_w18"``, ``"hrnet_w48"``) rather
    than this class; the module docstring describes the layers.

    Args:
        widths: the four branch widths ``(W, 2W, 4W, 8W)``.
        stage_modules: HRModules in stages 2, 3, 4 (``(1, 4, 3)``).
        num_blocks: BasicBlocks per branch in every HRModule, and Bottlenecks in
            ``layer1`` (4).
        norm_layer: ``"bn" | "syncbn" | "gn" | "frozen_bn"`` or a callable.
        norm_eval: keep every BatchNorm in eval mode during training.
        frozen_stages: -1 none; 0 the stem; k >= 1 also ``layer1``/``transition1`` (k=1),
            ``stage2``/``transition2`` (k=2), ``stage3``/``transition3`` (k=3),
            ``stage4`` (k=4): no gradients, eval mode (as mmseg).
        in_chans: input channels.
    """

    def __init__(
        self,
        *,
        widths: Sequence[int],
        stage_modules: Sequence[int] = (1, 4, 3),
        num_blocks: int = 4,
        norm_layer: str | NormLayer = "bn",
        norm_eval: bool = False,
        frozen_stages: int = -1,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 4 or len(stage_modules) != 3:
            raise ValueError(
                f"HRNet needs 4 branch widths and 3 stage module counts, got widths={widths} "
                f"and stage_modules={tuple(stage_modules)}"
            )
        if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= 4:
            raise ValueError(
                "frozen_stages must be an int in [-1, 4] (-1: none, 0: stem, k: stem and "
                f"stages 1..k with their transitions), got {frozen_stages!r}"
            )
        norm = get_norm_layer(norm_layer)
        self.widths = widths
        self.norm_eval = norm_eval
        self.frozen_stages = frozen_stages
        self.conv1 = _conv3x3(in_chans, 64, stride=2)
        self.bn1 = norm(64)
        self.conv2 = _conv3x3(64, 64, stride=2)
        self.bn2 = norm(64)
        self.relu = nn.ReLU(inplace=True)
        down = nn.Sequential(nn.Conv2d(64, 256, 1, bias=False), norm(256))
        self.layer1 = nn.Sequential(
            Bottleneck(64, 64, downsample=down, norm_layer=norm),
            *[Bottleneck(256, 64, norm_layer=norm) for _ in range(num_blocks - 1)],
        )
        prev: tuple[int, ...] = (256,)
        for s, n_modules in enumerate(stage_modules, start=2):
            cur = widths[:s]
            self.add_module(f"transition{s - 1}", _transition(prev, cur, norm))
            stage = nn.Sequential(*[HRModule(cur, num_blocks, norm) for _ in range(n_modules)])
            self.add_module(f"stage{s}", stage)
            prev = cur
        self.feature_info = [FeatureInfo(w, 4 * 2**i) for i, w in enumerate(widths)]
        self._init_weights()
        self._freeze_stages()

    def _init_weights(self) -> None:
        # mmseg's init_cfg: Kaiming (normal, fan_out, ReLU) convs, norms 1/0
        if self.conv1.weight.is_meta:  # shapes only (nn.init on meta imports torch._dynamo)
            return
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.modules.batchnorm._NormBase | nn.GroupNorm) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        mods: list[nn.Module] = [self.conv1, self.bn1, self.conv2, self.bn2]
        for k in range(1, self.frozen_stages + 1):
            mods.append(self.layer1 if k == 1 else getattr(self, f"stage{k}"))
            if k < 4:
                mods.append(getattr(self, f"transition{k}"))
        return mods

    def _freeze_stages(self) -> None:
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> HRNet:
        """Set train mode, keeping frozen stages (and all BN layers if ``norm_eval``) in eval."""
        super().train(mode)
        if mode:
            self._freeze_stages()
            if self.norm_eval:
                for m in self.modules():
                    if is_batch_norm(m):
                        m.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        xs = [self.layer1(x)]
        for s in (2, 3, 4):
            transition = getattr(self, f"transition{s - 1}")
            # new branches start from the lowest-resolution one (mmseg: y_list[-1])
            xs = [t(xs[i] if i < len(xs) else xs[-1]) for i, t in enumerate(transition)]
            xs = getattr(self, f"stage{s}")(xs)
        return xs

    def load_pretrained_state_dict(
        self, state_dict: Mapping[str, Tensor], *, source: str = "auto"
    ) -> None:
        """:func:`seg_backbones.load_pretrained`'s hook: mmseg, official HRNet or timm weights.

        All three share the key layout (see the module docstring); see
        :func:`convert_hrnet_state_dict`.
        """
        sd = convert_hrnet_state_dict(state_dict, source=source, model=self)
        self.load_state_dict(sd, strict=True)


def convert_hrnet_state_dict(
    state_dict: Mapping[str, Tensor], *, source: str = "auto", model: nn.Module
) -> dict[str, Tensor]:
    """An HRNet state dict in mmseg, official or timm layout -> ``model``'s keys, checked strictly.

    ``source``: one of :data:`SOURCES` (``"auto"``, ``"mmseg"``, ``"official"`` (HRNet's
    ImageNet classification checkpoints), ``"timm"``): one layout, so the value only
    documents the origin. A common ``module.`` or ``backbone.`` prefix is stripped, the
    classification head dropped; anything else that does not fit raises
    :class:`~seg_backbones.IncompatibleWeightsError` listing the keys.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown HRNet weights source {source!r}; valid sources are {SOURCES}")
    sd = dict(state_dict)
    sd = backbone_part(
        sd, use="seg_heads.convert.from_mmseg(path, arch='ocrnet_hr18' / 'ocrnet_hr48')"
    )
    sd = {k: v for k, v in sd.items() if not k.startswith(_CLASSIFIER_PREFIXES)}
    sd = reconcile_buffers(sd, model.state_dict())
    check_state_dict(model, sd, source=source)
    return sd


# ----------------------------------------------------------------------------------------
# variants: plain data merged with the user's keyword-only options

_WIDTHS: dict[str, tuple[int, int, int, int]] = {
    "hrnet_w18": (18, 36, 72, 144),
    "hrnet_w48": (48, 96, 192, 384),
}


def _create_hrnet(
    name: str,
    *,
    output_stride: int = 32,
    norm_layer: str | NormLayer = "bn",
    norm_eval: bool = False,
    frozen_stages: int = -1,
    in_chans: int = 3,
) -> HRNet:
    if output_stride != 32 or isinstance(output_stride, bool):
        raise ValueError(
            f"{name}: output_stride must be 32, got {output_stride!r}; valid choices: [32]. "
            "HRNet keeps a stride-4 branch throughout and outputs strides 4/8/16/32, so it has "
            "no dilated variant (use create_model(..., output_stride=32) or its default)"
        )
    return HRNet(
        widths=_WIDTHS[name],
        norm_layer=norm_layer,
        norm_eval=norm_eval,
        frozen_stages=frozen_stages,
        in_chans=in_chans,
    )


@register_backbone("hrnet_w18")
def hrnet_w18(**kwargs: Any) -> HRNet:
    """HRNetV2-W18 (mmseg ``ocrnet_hr18``): branches 18/36/72/144 at strides 4/8/16/32."""
    return build_checked("hrnet_w18", _create_hrnet, kwargs)  # type: ignore[return-value]


@register_backbone("hrnet_w48")
def hrnet_w48(**kwargs: Any) -> HRNet:
    """HRNetV2-W48 (mmseg ``ocrnet_hr48``): branches 48/96/192/384 at strides 4/8/16/32."""
    return build_checked("hrnet_w48", _create_hrnet, kwargs)  # type: ignore[return-value]
