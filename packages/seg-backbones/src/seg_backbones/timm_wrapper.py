"""``timm:<model>``: a timm model's features in our contract (NCHW maps, true strides).

timm is an optional extra (``pip install "seg-backbones[timm]"``); it is imported only
when a ``timm:`` name is built. :func:`create_timm_backbone` wraps
``timm.create_model(name, features_only=True)`` and returns a list of NCHW maps whose
``.feature_info`` (:class:`~seg_backbones.FeatureInfo`) records their channels and strides:

- **levels**: the last four timm feature levels (ResNet layer1..4, ConvNeXt/Swin stages
  1..4), or exactly timm's ``out_indices`` when given. ViT-style models (timm's feature
  *getter*: ViT, DeiT, DINOv2, EVA) return the blocks in ``out_indices``, by default four
  evenly spaced ones (``(2, 5, 8, 11)`` for depth 12), all at the patch stride.
- **NHWC**: models whose timm features are channels-last (Swin, SwinV2, ...) are permuted
  to NCHW.
- **input sizes**: models are built with ``dynamic_img_size=True, dynamic_img_pad=True``
  where their constructor takes them (ViT, DeiT, DINOv2, EVA: position embeddings
  resampled, input padded to the patch size; Swin: no fixed input size). Swin (timm's ``swin_transformer``) runs as HuggingFace's ``SwinBackbone`` and mmseg's
  Swin do at any input size: the image is zero-padded (bottom/right) to the patch size,
  every block zero-pads its normalised input to window multiples *before* the cyclic
  shift, windows keep their size and shifted blocks always shift (HF's
  ``always_partition=True``; timm alone shifts before padding and drops the shift when a
  map is no larger than a window). ``always_partition=False`` restores timm's window
  clamping, computed for ``img_size``.
- **output_stride**: 8 | 16 passed to timm; a family that cannot dilate (Swin, ViT) raises
  a ``ValueError`` naming the model and the strides it supports.
- **out_norm**: a LayerNorm over channels on every output level, as HF's
  ``ConvNextBackbone``/``SwinBackbone`` (``hidden_states_norms``) and mmseg's Swin /
  mmpretrain's ConvNeXt (``norm{i}``); eps 1e-6 for ConvNeXt, else 1e-5 (theirs).

Weights (:meth:`TimmBackbone.load_pretrained_state_dict`, the hook of
:func:`seg_backbones.load_pretrained`): timm's own layout for any model; for ConvNeXt and
Swin also HuggingFace's (``ConvNextModel``/``ConvNextBackbone``, ``SwinModel``/
``SwinBackbone``, with or without ``backbone.``/``convnext.``/``swin.`` prefixes; separate
q/k/v merged into ``qkv``; patch merging moved from the end of stage i to the start of
stage i+1) and mmseg's Swin / mmpretrain's ConvNeXt (mmseg's ``nn.Unfold`` patch-merging
order converted). Loading is strict: missing, unknown or mis-shaped keys raise
:class:`~seg_backbones.IncompatibleWeightsError` listing them; known unused weights
(classifier, final norm) are ignored with a warning.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._features import FeatureInfo
from .pretrained import IncompatibleWeightsError, listing

__all__ = ["SOURCES", "TimmBackbone", "create_timm_backbone"]

NUM_OUTPUTS = 4
SOURCES: tuple[str, ...] = ("auto", "timm", "hf", "mmseg")
# defaults tried on every model, dropped when its constructor does not take them
_INPUT_SIZE_DEFAULTS: dict[str, Any] = {"dynamic_img_size": True, "dynamic_img_pad": True}
_SWIN_DEFAULTS: dict[str, Any] = {"always_partition": True}
_SWIN_MODULE = "timm.models.swin_transformer"


def _import_timm() -> Any:
    try:
        import timm
    except ImportError as e:
        raise ImportError(
            "'timm:<model>' backbones need timm, which is not installed; "
            'install the extra: pip install "seg-backbones[timm]"'
        ) from e
    return timm


def _family(model: nn.Module) -> str:
    """``"swin"`` (timm swin_transformer v1), ``"convnext"``, ``"vit"`` (feature getter) or ``"other"``."""
    from timm.models.convnext import ConvNeXtStage
    from timm.models.swin_transformer import SwinTransformerStage

    for m in model.modules():
        if isinstance(m, SwinTransformerStage):  # our forward runs timm's FeatureListNet
            return "swin" if hasattr(model, "return_layers") else "other"
        if isinstance(m, ConvNeXtStage):
            return "convnext"
    return "vit" if type(model).__name__ == "FeatureGetterNet" else "other"


class TimmBackbone(nn.Module):
    """A timm features model as a list of NCHW maps (see the module docstring).

    Args:
        model: ``timm.create_model(..., features_only=True)``.
        name: the timm model name (for messages).
        num_outputs: return the last ``num_outputs`` timm levels; ``None``: all of them.
        out_norm: add a LayerNorm over channels on every output (``out_norms.<i>``).
        out_norm_eps: its eps; ``None``: 1e-6 for ConvNeXt, 1e-5 otherwise.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str,
        num_outputs: int | None = NUM_OUTPUTS,
        out_norm: bool = False,
        out_norm_eps: float | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.family = _family(model)
        info = model.feature_info  # timm FeatureInfo
        channels, reductions = info.channels(), info.reduction()
        stages = [i % len(info.info) for i in info.out_indices]
        if num_outputs is not None:
            if len(channels) < num_outputs:
                raise ValueError(
                    f"timm model {name!r} has {len(channels)} feature levels "
                    f"{list(zip(channels, reductions, strict=True))}, the contract needs "
                    f"{num_outputs}; pass out_indices=... to choose the levels"
                )
            channels, reductions = channels[-num_outputs:], reductions[-num_outputs:]
            stages = stages[-num_outputs:]
        self.num_outputs = len(channels)
        self.stage_indices: tuple[int, ...] = tuple(stages)
        """timm's index of each output (``out_indices``): which checkpoint norm is whose."""
        fmt = getattr(model, "output_fmt", "NCHW")  # timm's Format (a str Enum) or absent
        self.nhwc = str(getattr(fmt, "value", fmt)) == "NHWC"
        self.feature_info: list[FeatureInfo] = [
            FeatureInfo(int(c), int(r)) for c, r in zip(channels, reductions, strict=True)
        ]
        self.out_norms: nn.ModuleList | None = None
        if out_norm:
            eps = 1e-6 if self.family == "convnext" else 1e-5
            eps = eps if out_norm_eps is None else out_norm_eps
            self.out_norms = nn.ModuleList(nn.LayerNorm(c, eps=eps) for c, _ in self.feature_info)

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = self._swin_features(x) if self.family == "swin" else list(self.model(x))
        feats = feats[-self.num_outputs :]
        out = []
        for i, f in enumerate(feats):
            if self.out_norms is not None:  # LayerNorm over channels, as HF/mmseg
                f = self.out_norms[i](f if self.nhwc else f.permute(0, 2, 3, 1))
                f = f.permute(0, 3, 1, 2).contiguous()
            elif self.nhwc:
                f = f.permute(0, 3, 1, 2).contiguous()
            out.append(f)
        return out

    # ------------------------------------------------------------------------------------
    # Swin at any input size, as HF's SwinBackbone / mmseg's Swin

    def _swin_features(self, x: Tensor) -> list[Tensor]:
        from timm.models.swin_transformer import SwinTransformerStage

        ph, pw = self.model.patch_embed.patch_size
        x = F.pad(x, (0, -x.shape[-1] % pw, 0, -x.shape[-2] % ph))
        outs = []
        for name, module in self.model.items():
            if isinstance(module, SwinTransformerStage):
                x = module.downsample(x)
                for block in module.blocks:
                    x = _swin_block(block, x)
            else:
                x = module(x)
            if name in self.model.return_layers:
                outs.append(x)
        return outs

    # ------------------------------------------------------------------------------------
    # weights

    def load_pretrained_state_dict(
        self, state_dict: Mapping[str, Tensor], *, source: str = "auto"
    ) -> None:
        """:func:`seg_backbones.load_pretrained`'s hook: timm, HF or mmseg layouts (strict).

        ``source``: ``"auto"`` (recognised from the keys), ``"timm"`` (any timm model, full
        or ``features_only``, or this wrapper's own state dict), ``"hf"`` (transformers'
        ConvNeXt/Swin), ``"mmseg"`` (mmseg Swin, mmpretrain ConvNeXt). Output norms
        (``out_norm=True``) load from the checkpoint's per-stage norms (HF
        ``hidden_states_norms.stageK``, mmseg ``normK``) when it has one for every output;
        otherwise (ImageNet checkpoints) they keep their initialisation, with a warning.
        """
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}; valid sources are {list(SOURCES)}")
        sd, ignored = _backbone_part(dict(state_dict), self.name)
        if source == "auto":
            source = _detect_source(sd)
        if source == "timm":
            self.load_timm_state_dict(sd, _ignored=ignored)
            return
        convert = _CONVERTERS.get((source, self.family))
        if convert is None:
            raise IncompatibleWeightsError(
                f"timm:{self.name}: source={source!r} weights are converted for ConvNeXt and "
                f"Swin backbones only; this is a {self.family!r} model. Load timm-layout "
                "weights (source='timm')."
            )
        timm_sd, more_ignored = convert(sd, f"timm:{self.name} (source={source!r})")
        self._load_timm_layout(timm_sd, ignored + more_ignored, source=source)

    def load_timm_state_dict(
        self, state_dict: Mapping[str, Tensor], *, _ignored: Sequence[str] = ()
    ) -> None:
        """Load a state dict of the timm model (``timm.create_model(name)``'s, full or features).

        timm's feature wrapper renames nested modules (``stages.0`` -> ``stages_0``); keys
        are matched modulo that renaming. Every feature-model key must be present (else
        an error lists the missing ones); checkpoint keys the feature model does not use
        (classifier, final norm) are ignored with a warning. ``out_norms.<i>.*`` keys (this
        wrapper's own state dict, whose other keys start with ``model.``) load the output
        norms.
        """
        sd = dict(state_dict)
        if self.family == "swin" and "layers.0.downsample.reduction.weight" in sd:
            # Microsoft's original layout (timm's filter does the same): merging at stage ends
            sd = {re.sub(r"^layers\.(\d+)\.downsample\.(.+)", _next_stage_m, k): v
                  for k, v in sd.items()}  # fmt: skip
        norms = {k: v for k, v in sd.items() if k.startswith("out_norms.")}
        rest = {k: v for k, v in sd.items() if k not in norms}
        if rest and all(k.startswith("model.") for k in rest):
            rest = {k[len("model.") :]: v for k, v in rest.items()}
        for k, v in norms.items():  # our indices -> timm stage indices
            i, param = k[len("out_norms.") :].split(".", 1)
            if not i.isdigit() or int(i) >= self.num_outputs:
                rest[k] = v  # reported as unused
            else:
                rest[f"@norm.{self.stage_indices[int(i)]}.{param}"] = v
        self._load_timm_layout(rest, list(_ignored), source="timm")

    def _load_timm_layout(
        self, state_dict: Mapping[str, Tensor], ignored: list[str], *, source: str
    ) -> None:
        """Strictly load timm-named keys (``@norm.<stage>.<param>``: output norms)."""
        own = self.model.state_dict()
        by_norm = {k.replace("_", "."): k for k in own}
        sd: dict[str, Tensor] = {}
        norms: dict[str, Tensor] = {}
        unused: list[str] = []
        for k, v in state_dict.items():
            if k.startswith("@norm."):
                norms[k[len("@norm.") :]] = v
                continue
            target = k if k in own else by_norm.get(k.replace("_", "."))
            if target is None:
                target = by_norm.get(f"model.{k}".replace("_", "."))  # feature getter (ViT)
            if target is not None:
                sd[target] = v
            elif not k.endswith(_RECOMPUTED):  # buffers the model derives itself: silent
                unused.append(k)
        missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
        mismatched = [
            f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
            for k, v in sd.items()
            if v.shape != own[k].shape
        ]
        norm_sd, norm_unused, norm_problems = self._match_out_norms(norms)
        mismatched += norm_problems
        if missing or mismatched:
            raise IncompatibleWeightsError(
                f"weights (source={source!r}) do not fit timm:{self.name}:"
                + (f"\nmissing keys {listing(missing)}" if missing else "")
                + (f"\nshape mismatches {listing(mismatched)}" if mismatched else "")
            )
        for k in own:
            if k.endswith("num_batches_tracked") and k not in sd:
                sd[k] = own[k]
        unused = [*ignored, *unused, *norm_unused]
        if unused:
            warnings.warn(
                f"timm:{self.name}: ignored checkpoint keys unused by features_only "
                f"{listing(unused)}",
                stacklevel=4,
            )
        self.model.load_state_dict(sd, strict=True)
        if norm_sd and self.out_norms is not None:
            self.out_norms.load_state_dict(norm_sd, strict=True)

    def _match_out_norms(
        self, norms: Mapping[str, Tensor]
    ) -> tuple[dict[str, Tensor], list[str], list[str]]:
        """``(out_norms state dict or {}, unused checkpoint norm keys, shape problems)``."""
        names = {f"{stage}.{p}" for stage in self.stage_indices for p in ("weight", "bias")}
        if self.out_norms is None or not names <= set(norms):
            unused = [f"norm of stage {k}" for k in sorted(norms)]
            if self.out_norms is not None:
                warnings.warn(
                    f"timm:{self.name}: the checkpoint has no norm for every output "
                    f"(stages {list(self.stage_indices)}); out_norms keep their initialisation",
                    stacklevel=5,
                )
            return {}, unused, []
        sd = {}
        problems = []
        for i, stage in enumerate(self.stage_indices):
            for p in ("weight", "bias"):
                v, ref = norms[f"{stage}.{p}"], getattr(self.out_norms[i], p)
                if v.shape != ref.shape:
                    problems.append(
                        f"out_norms.{i}.{p}: checkpoint {tuple(v.shape)} vs model {tuple(ref.shape)}"
                    )
                sd[f"{i}.{p}"] = v
        unused = [f"norm of stage {k}" for k in sorted(set(norms) - names)]
        return sd, unused, problems


def _swin_block(block: nn.Module, x: Tensor) -> Tensor:
    """One timm ``SwinTransformerBlock`` on NHWC ``x``: pad to windows, then shift (HF/mmseg)."""
    from timm.models.swin_transformer import window_partition, window_reverse

    _, h, w, c = x.shape
    wh, ww = block.window_size
    sh, sw = block.shift_size
    y = F.pad(block.norm1(x), (0, 0, 0, -w % ww, 0, -h % wh))
    hp, wp = y.shape[1], y.shape[2]
    shifted = bool(sh or sw)
    if shifted:
        y = torch.roll(y, shifts=(-sh, -sw), dims=(1, 2))
    mask = block.get_attn_mask(y) if shifted else None
    windows = window_partition(y, (wh, ww)).view(-1, wh * ww, c)
    windows = block.attn(windows, mask=mask).view(-1, wh, ww, c)
    y = window_reverse(windows, (wh, ww), hp, wp)
    if shifted:
        y = torch.roll(y, shifts=(sh, sw), dims=(1, 2))
    x = x + block.drop_path1(y[:, :h, :w, :])
    return x + block.drop_path2(block.mlp(block.norm2(x)))


# ----------------------------------------------------------------------------------------
# foreign layouts -> timm's

_Rule = tuple[str, str | Callable[[re.Match[str]], str]]
# buffers some checkpoints carry that the model derives itself: skipped silently
_RECOMPUTED = ("num_batches_tracked", "relative_position_index", "attn_mask")
_W = r"(weight|bias)"


def _next_stage(m: re.Match[str]) -> str:  # patch merging: end of stage i -> start of i+1
    return f"layers.{int(m[1]) + 1}.downsample.{m[2]}.{m[3]}"


def _next_stage_m(m: re.Match[str]) -> str:  # the same, for "layers.<i>.downsample.<rest>"
    return f"layers.{int(m[1]) + 1}.downsample.{m[2]}"


def _hf_norm(m: re.Match[str]) -> str:  # hidden_states_norms.stageK (K = 1..4)
    return f"@norm.{int(m[1]) - 1}.{m[2]}"


_HF_BLOCK = r"encoder\.layers\.(\d+)\.blocks\.(\d+)\."
_HF_SWIN: list[_Rule] = [
    (rf"embeddings\.patch_embeddings\.projection\.{_W}", r"patch_embed.proj.\1"),
    (rf"embeddings\.norm\.{_W}", r"patch_embed.norm.\1"),
    (rf"{_HF_BLOCK}layernorm_before\.{_W}", r"layers.\1.blocks.\2.norm1.\3"),
    (rf"{_HF_BLOCK}layernorm_after\.{_W}", r"layers.\1.blocks.\2.norm2.\3"),
    # hub layout (attention.self.query) and transformers 5's in-memory one (attention.q_proj)
    (rf"{_HF_BLOCK}attention\.(?:self\.)?(query|key|value|q_proj|k_proj|v_proj)\.{_W}",
     r"layers.\1.blocks.\2.attn.@\3.\4"),
    (rf"{_HF_BLOCK}attention\.(?:self|relative_position_bias)\.relative_position_bias_table",
     r"layers.\1.blocks.\2.attn.relative_position_bias_table"),
    (rf"{_HF_BLOCK}attention\.(?:output\.dense|o_proj)\.{_W}", r"layers.\1.blocks.\2.attn.proj.\3"),
    (rf"{_HF_BLOCK}(?:intermediate\.dense|mlp\.fc1)\.{_W}", r"layers.\1.blocks.\2.mlp.fc1.\3"),
    (rf"{_HF_BLOCK}(?:output\.dense|mlp\.fc2)\.{_W}", r"layers.\1.blocks.\2.mlp.fc2.\3"),
    (rf"encoder\.layers\.(\d+)\.downsample\.(norm|reduction)\.{_W}", _next_stage),
    (rf"hidden_states_norms\.stage(\d+)\.{_W}", _hf_norm),
]  # fmt: skip
_HF_SWIN_IGNORED = [r"embeddings\.mask_token", rf"layernorm\.{_W}"]

_HF_CNX_BLOCK = r"encoder\.stages\.(\d+)\.layers\.(\d+)\."
_HF_CONVNEXT: list[_Rule] = [
    (rf"embeddings\.patch_embeddings\.{_W}", r"stem.0.\1"),
    (rf"embeddings\.layernorm\.{_W}", r"stem.1.\1"),
    (rf"encoder\.stages\.(\d+)\.downsampling_layer\.([01])\.{_W}", r"stages.\1.downsample.\2.\3"),
    (rf"{_HF_CNX_BLOCK}dwconv\.{_W}", r"stages.\1.blocks.\2.conv_dw.\3"),
    (rf"{_HF_CNX_BLOCK}layernorm\.{_W}", r"stages.\1.blocks.\2.norm.\3"),
    (rf"{_HF_CNX_BLOCK}pwconv1\.{_W}", r"stages.\1.blocks.\2.mlp.fc1.\3"),
    (rf"{_HF_CNX_BLOCK}pwconv2\.{_W}", r"stages.\1.blocks.\2.mlp.fc2.\3"),
    (rf"{_HF_CNX_BLOCK}layer_scale_parameter", r"stages.\1.blocks.\2.gamma"),
    (rf"hidden_states_norms\.stage(\d+)\.{_W}", _hf_norm),
]
_HF_CONVNEXT_IGNORED = [rf"layernorm\.{_W}"]

_MM_BLOCK = r"stages\.(\d+)\.blocks\.(\d+)\."
_MMSEG_SWIN: list[_Rule] = [
    (rf"patch_embed\.projection\.{_W}", r"patch_embed.proj.\1"),
    (rf"patch_embed\.norm\.{_W}", r"patch_embed.norm.\1"),
    (rf"{_MM_BLOCK}(norm1|norm2)\.{_W}", r"layers.\1.blocks.\2.\3.\4"),
    (rf"{_MM_BLOCK}attn\.w_msa\.(qkv|proj)\.{_W}", r"layers.\1.blocks.\2.attn.\3.\4"),
    (rf"{_MM_BLOCK}attn\.w_msa\.relative_position_bias_table",
     r"layers.\1.blocks.\2.attn.relative_position_bias_table"),
    (rf"{_MM_BLOCK}ffn\.layers\.0\.0\.{_W}", r"layers.\1.blocks.\2.mlp.fc1.\3"),
    (rf"{_MM_BLOCK}ffn\.layers\.1\.{_W}", r"layers.\1.blocks.\2.mlp.fc2.\3"),
    (rf"stages\.(\d+)\.downsample\.(norm|reduction)\.{_W}", _next_stage),
    (rf"norm(\d+)\.{_W}", r"@norm.\1.\2"),
]  # fmt: skip
_MMSEG_SWIN_IGNORED = [rf"norm\.{_W}"]

_MM_CONVNEXT: list[_Rule] = [
    (rf"downsample_layers\.0\.0\.{_W}", r"stem.0.\1"),
    (rf"downsample_layers\.0\.1\.{_W}", r"stem.1.\1"),
    (rf"downsample_layers\.(\d+)\.([01])\.{_W}", r"stages.\1.downsample.\2.\3"),
    (rf"stages\.(\d+)\.(\d+)\.depthwise_conv\.{_W}", r"stages.\1.blocks.\2.conv_dw.\3"),
    (rf"stages\.(\d+)\.(\d+)\.norm\.{_W}", r"stages.\1.blocks.\2.norm.\3"),
    (rf"stages\.(\d+)\.(\d+)\.pointwise_conv1\.{_W}", r"stages.\1.blocks.\2.mlp.fc1.\3"),
    (rf"stages\.(\d+)\.(\d+)\.pointwise_conv2\.{_W}", r"stages.\1.blocks.\2.mlp.fc2.\3"),
    (r"stages\.(\d+)\.(\d+)\.gamma", r"stages.\1.blocks.\2.gamma"),
    (rf"norm(\d+)\.{_W}", r"@norm.\1.\2"),
]


def _rename(
    sd: Mapping[str, Tensor], rules: list[_Rule], ignore: list[str], where: str
) -> tuple[dict[str, Tensor], list[str]]:
    """Rename every key by the first matching rule; known unused keys are returned apart."""
    out: dict[str, Tensor] = {}
    ignored: list[str] = []
    unknown: list[str] = []
    for k, v in sd.items():
        for pattern, repl in rules:
            m = re.fullmatch(pattern, k)
            if m:
                out[m.expand(repl) if isinstance(repl, str) else repl(m)] = v
                break
        else:
            if k.endswith(_RECOMPUTED):
                continue
            (ignored if any(re.fullmatch(p, k) for p in ignore) else unknown).append(k)
    if unknown:
        raise IncompatibleWeightsError(
            f"{where}: keys of no known layout {listing(unknown)}; is `source` right?"
        )
    return out, ignored


def _merge_qkv(sd: dict[str, Tensor], where: str) -> dict[str, Tensor]:
    """HF's separate query/key/value -> timm's ``qkv`` (concatenated q, k, v)."""
    parts: dict[tuple[str, str], dict[str, Tensor]] = {}
    out = {}
    for k, v in sd.items():
        if ".attn.@" not in k:
            out[k] = v
            continue
        prefix, rest = k.split(".attn.@")
        which, param = rest.split(".")
        parts.setdefault((prefix, param), {})[which[0]] = v
    for (prefix, param), qkv in parts.items():
        if set(qkv) != {"q", "k", "v"}:
            raise IncompatibleWeightsError(
                f"{where}: {prefix}.attention {param}: has {sorted(qkv)} of query/key/value"
            )
        out[f"{prefix}.attn.qkv.{param}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]])
    return out


def _unfold_to_timm(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """mmseg's patch merging (``nn.Unfold``: channel-major, positions (0,0) (0,1) (1,0) (1,1))
    -> timm/HF/original (position-major, positions (0,0) (1,0) (0,1) (1,1))."""
    out = {}
    for k, v in sd.items():
        if re.fullmatch(r"layers\.\d+\.downsample\.(reduction\.weight|norm\.(weight|bias))", k):
            lead = v.shape[:-1]
            v = v.reshape(*lead, -1, 4)[..., [0, 2, 1, 3]].transpose(-1, -2).reshape(*lead, -1)
        out[k] = v
    return out


def _hf_swin(sd: Mapping[str, Tensor], where: str) -> tuple[dict[str, Tensor], list[str]]:
    if "embeddings.position_embeddings" in sd:
        raise IncompatibleWeightsError(
            f"{where}: HF Swin with use_absolute_embeddings=True has no timm equivalent"
        )
    out, ignored = _rename(sd, _HF_SWIN, _HF_SWIN_IGNORED, where)
    return _merge_qkv(out, where), ignored


def _hf_convnext(sd: Mapping[str, Tensor], where: str) -> tuple[dict[str, Tensor], list[str]]:
    return _rename(sd, _HF_CONVNEXT, _HF_CONVNEXT_IGNORED, where)


def _mmseg_swin(sd: Mapping[str, Tensor], where: str) -> tuple[dict[str, Tensor], list[str]]:
    if "absolute_pos_embed" in sd:
        raise IncompatibleWeightsError(
            f"{where}: mmseg Swin with use_abs_pos_embed=True has no timm equivalent"
        )
    out, ignored = _rename(sd, _MMSEG_SWIN, _MMSEG_SWIN_IGNORED, where)
    return _unfold_to_timm(out), ignored


def _mmseg_convnext(sd: Mapping[str, Tensor], where: str) -> tuple[dict[str, Tensor], list[str]]:
    out, ignored = _rename(sd, _MM_CONVNEXT, [], where)
    # linear_pw_conv=False checkpoints store the pointwise convs as 1x1 convolutions
    out = {k: v.flatten(1) if ".mlp.fc" in k and v.ndim == 4 else v for k, v in out.items()}
    return out, ignored


_CONVERTERS: dict[tuple[str, str], Callable[..., tuple[dict[str, Tensor], list[str]]]] = {
    ("hf", "swin"): _hf_swin,
    ("hf", "convnext"): _hf_convnext,
    ("mmseg", "swin"): _mmseg_swin,
    ("mmseg", "convnext"): _mmseg_convnext,
}

# wrapper prefixes: DDP, the backbone of a full model, HF classification models
_PREFIXES = ("module.", "backbone.", "convnext.", "swin.")
# next to ``backbone.*`` in classification checkpoints (mmpretrain, HF): ignored
_CLASSIFIER_PARTS = ("head", "neck", "classifier", "pooler", "data_preprocessor")


def _backbone_part(sd: dict[str, Tensor], name: str) -> tuple[dict[str, Tensor], list[str]]:
    """Strip wrapper prefixes; return the backbone keys and the classifier keys dropped."""
    ignored = [k for k in sd if k.split(".")[0] in _CLASSIFIER_PARTS]
    sd = {k: v for k, v in sd.items() if k not in ignored}
    for prefix in _PREFIXES:
        if any(k.startswith(prefix) for k in sd):
            others = sorted({k.split(".")[0] for k in sd if not k.startswith(prefix)})
            if prefix == "backbone." and others:
                raise IncompatibleWeightsError(
                    f"timm:{name}: this looks like a full segmentation checkpoint (keys "
                    f"'backbone.*' next to {others}); convert it with seg_heads.convert, or "
                    "keep its 'backbone.' part"
                )
            sd = {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in sd.items()}
    return sd, ignored


def _detect_source(sd: Mapping[str, Tensor]) -> str:
    keys = list(sd)
    if any(re.match(r"(embeddings\.patch_embeddings|encoder\.(layers|stages)\.)", k) for k in keys):
        return "hf"
    if any(
        k.startswith(("patch_embed.projection.", "downsample_layers."))
        or ".attn.w_msa." in k
        or ".ffn.layers." in k
        for k in keys
    ):
        return "mmseg"
    return "timm"


# ----------------------------------------------------------------------------------------
# building


def _create(timm: Any, name: str, kwargs: dict[str, Any], defaults: dict[str, Any]) -> nn.Module:
    """``timm.create_model`` with ``defaults`` added, each dropped if the model rejects it."""
    defaults = {k: v for k, v in defaults.items() if k not in kwargs}
    while True:
        try:
            return timm.create_model(name, **kwargs, **defaults)
        except TypeError as e:
            rejected = [k for k in defaults if f"'{k}'" in str(e)]
            if not rejected:
                raise
            for k in rejected:
                del defaults[k]


def _valid_output_strides(timm: Any, name: str, kwargs: dict[str, Any]) -> list[int]:
    valid = [32]
    for s in (16, 8):
        try:
            timm.create_model(name, **{**kwargs, "output_stride": s})
        except Exception:  # any failure means "not this stride"
            continue
        valid.insert(0, s)
    return sorted(valid)


def _build(timm: Any, name: str, kwargs: dict[str, Any], output_stride: int) -> nn.Module:
    """Build, turning timm's refusals of ``output_stride`` into an error with the valid ones."""
    entry = timm.models.model_entrypoint(name.split(".")[0])
    defaults = dict(_INPUT_SIZE_DEFAULTS)
    if entry.__module__ == _SWIN_MODULE:
        defaults.update(_SWIN_DEFAULTS)
    if output_stride == 32:
        return _create(timm, name, kwargs, defaults)
    try:
        model = _create(timm, name, {**kwargs, "output_stride": output_stride}, defaults)
    except TypeError as e:
        if "output_stride" not in str(e):
            raise
        cls = re.match(r"(\w+)\.__init__", str(e))
        raise ValueError(
            f"timm:{name} supports output_stride 32 only, got output_stride={output_stride} "
            f"(timm's {cls[1] if cls else 'model'} takes no output_stride: it cannot dilate)"
        ) from None
    except (AssertionError, ValueError, RuntimeError) as e:
        valid = _valid_output_strides(timm, name, kwargs)
        raise ValueError(
            f"timm:{name} does not build with output_stride={output_stride} ({e}); it "
            f"supports output_stride {valid}"
        ) from None
    got = max(model.feature_info.reduction())
    if got > output_stride:
        raise ValueError(
            f"timm:{name} ignored output_stride={output_stride} (its features reach stride "
            f"{got}); it supports output_stride 32 only"
        )
    return model


def _evenly_spaced(model: nn.Module) -> nn.Module:
    """A feature getter (ViT) on four evenly spaced blocks, e.g. (2, 5, 8, 11) of 12."""
    from timm.models._features import FeatureGetterNet

    depth = len(model.model.feature_info)
    if depth <= NUM_OUTPUTS:
        indices = tuple(range(depth))
    else:
        indices = tuple((i + 1) * depth // NUM_OUTPUTS - 1 for i in range(NUM_OUTPUTS))
    if tuple(model.feature_info.out_indices) == indices:
        return model
    return FeatureGetterNet(
        model.model, out_indices=indices, output_fmt=model.output_fmt, norm=model.norm
    )


def create_timm_backbone(
    name: str,
    *,
    output_stride: int = 32,
    in_chans: int = 3,
    out_indices: Sequence[int] | None = None,
    out_norm: bool = False,
    out_norm_eps: float | None = None,
    **timm_kwargs: Any,
) -> TimmBackbone:
    """Build ``timm.create_model(name, features_only=True, ...)`` wrapped in our contract.

    Args:
        name: a timm model name (``timm.list_models()``), e.g. ``"convnext_tiny"``,
            ``"swin_tiny_patch4_window7_224"``, ``"vit_small_patch14_dinov2"``.
        output_stride: 8 | 16 | 32; passed to timm when not 32. Families that cannot dilate
            (Swin, ViT) raise a ``ValueError`` naming the strides they support.
        in_chans: input channels.
        out_indices: timm's feature levels to return (all of them, in order); default the
            last four levels, or four evenly spaced blocks for ViT-style models.
        out_norm: a LayerNorm over channels on every output (HF/mmseg ConvNeXt and Swin).
        out_norm_eps: its eps (default 1e-6 for ConvNeXt, 1e-5 otherwise).
        **timm_kwargs: passed to ``timm.create_model`` unchanged (e.g. ``depths``, ``dims``,
            ``embed_dim``, ``num_heads``, ``window_size``, ``drop_path_rate``). Weights are
            never downloaded unless you pass ``pretrained=True`` yourself.
    """
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be one of [8, 16, 32], got {output_stride!r}")
    timm = _import_timm()
    if not timm.is_model(name.split(".")[0]):
        raise KeyError(
            f"unknown timm model {name!r}; see timm.list_models() (e.g. 'timm:resnet50')"
        )
    kwargs: dict[str, Any] = {"features_only": True, "in_chans": in_chans, **timm_kwargs}
    if out_indices is not None:
        kwargs["out_indices"] = tuple(out_indices)
    model = _build(timm, name, kwargs, output_stride)
    num_outputs: int | None = None if out_indices is not None else NUM_OUTPUTS
    if out_indices is None and type(model).__name__ == "FeatureGetterNet":
        model = _evenly_spaced(model)
        num_outputs = None
    return TimmBackbone(
        model, name=name, num_outputs=num_outputs, out_norm=out_norm, out_norm_eps=out_norm_eps
    )
