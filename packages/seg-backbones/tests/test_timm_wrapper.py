"""``timm:<model>`` backbones: NCHW maps matching feature_info, output-stride errors, ViT
levels, Swin at any size, and weight import (timm, HuggingFace, mmseg layouts).

HF parity is checked against transformers' own ``SwinBackbone``/``ConvNextBackbone``
(random weights, non-trivial norms, float64, SDPA attention: the eager path computes
softmax in float32). mmseg's layouts are written here by hand from timm's keys; the one
non-renaming step (mmseg's ``nn.Unfold`` patch-merging order) is checked against an
``nn.Unfold`` patch merging written as mmseg's. Tiny widths keep every test fast.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import Tensor, nn

from seg_backbones import IncompatibleWeightsError, create_backbone, load_pretrained

timm = pytest.importorskip("timm")

torch.set_num_threads(1)  # tiny forwards on shared 2-core machines

SWIN = "timm:swin_tiny_patch4_window7_224"
SWIN_KW = {"embed_dim": 8, "depths": (2, 2, 2, 2), "num_heads": (1, 1, 2, 2)}
CNX = "timm:convnext_tiny"
CNX_KW = {"dims": (8, 16, 24, 32), "depths": (1, 1, 2, 1)}
VIT = "timm:vit_small_patch16_224"
VIT_KW = {"depth": 12, "embed_dim": 16, "num_heads": 2}
STAGES = ["stage1", "stage2", "stage3", "stage4"]


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial norms, layer scales and relative position biases."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
        for name, p in model.named_parameters():
            if re.search(r"(relative_position_bias_table|layer_scale_parameter|gamma)$", name):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def _check_maps(bb: nn.Module, x: Tensor) -> list[Tensor]:
    with torch.no_grad():
        feats = bb(x)
    assert len(feats) == len(bb.feature_info)
    for f, (c, r) in zip(feats, bb.feature_info, strict=True):
        assert f.shape == (x.shape[0], c, math.ceil(x.shape[2] / r), math.ceil(x.shape[3] / r))
    return feats


# ----------------------------------------------------------------------------------------
# features


def test_swin_is_nchw_at_any_size() -> None:
    bb = create_backbone(SWIN, **SWIN_KW).eval()
    assert bb.nhwc and bb.feature_info == [(8, 4), (16, 8), (32, 16), (64, 32)]
    _check_maps(bb, torch.randn(1, 3, 96, 160))
    _check_maps(bb, torch.randn(1, 3, 37, 53))  # not a multiple of the patch nor the window


def test_convnext_dilates_and_records_strides() -> None:
    bb = create_backbone(CNX, output_stride=16, **CNX_KW).eval()
    assert bb.feature_info == [(8, 4), (16, 8), (24, 16), (32, 16)]
    _check_maps(bb, torch.randn(1, 3, 64, 96))


@pytest.mark.parametrize("name", [SWIN, VIT])
def test_output_stride_error_names_model_and_choices(name: str) -> None:
    short = name[len("timm:") :]
    with pytest.raises(ValueError, match=rf"timm:{short} supports output_stride 32 only"):
        create_backbone(name, output_stride=16, **(SWIN_KW if name == SWIN else VIT_KW))


def test_vit_multi_level() -> None:
    bb = create_backbone(VIT, out_indices=(2, 5, 8, 11), **VIT_KW).eval()
    assert bb.feature_info == [(16, 16)] * 4
    _check_maps(bb, torch.randn(1, 3, 64, 96))
    _check_maps(bb, torch.randn(1, 3, 50, 70))  # dynamic size, padded to the patch
    default = create_backbone(VIT, **VIT_KW)  # four evenly spaced blocks by default
    assert default.stage_indices == (2, 5, 8, 11) and default.feature_info == bb.feature_info
    # the full timm model's weights load, and the levels are its blocks' outputs
    ref = timm.create_model(VIT[5:], dynamic_img_size=True, **VIT_KW).eval()
    with pytest.warns(UserWarning, match=r"norm\.weight"):  # final norm, unused by the levels
        load_pretrained(bb, ref.state_dict(), source="timm")
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        want = ref.forward_intermediates(x, indices=[2, 5, 8, 11], intermediates_only=True)
        got = bb(x)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def test_out_norm_eps_follows_the_family() -> None:
    cnx = create_backbone(CNX, out_norm=True, **CNX_KW)
    swin = create_backbone(SWIN, out_norm=True, **SWIN_KW)
    assert [n.eps for n in cnx.out_norms] == [1e-6] * 4
    assert [n.eps for n in swin.out_norms] == [1e-5] * 4


# ----------------------------------------------------------------------------------------
# HuggingFace layouts, against transformers itself


def _max_diff(a: list[Tensor], b: list[Tensor]) -> float:
    assert [t.shape for t in a] == [t.shape for t in b]
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def test_swin_equals_hf_swin_backbone() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.SwinConfig(
        embed_dim=8, depths=[2, 2, 2, 2], num_heads=[1, 1, 2, 2], window_size=7,
        out_features=STAGES, attn_implementation="sdpa",
    )  # fmt: skip
    hf = _randomize(transformers.SwinBackbone(cfg)).eval().double()
    bb = create_backbone(SWIN, out_norm=True, **SWIN_KW).double().eval()
    with pytest.warns(UserWarning, match=r"layernorm\.weight"):  # SwinModel's final norm
        load_pretrained(bb, hf.state_dict())  # transformers 5 names (swin.*, q_proj)
    # 96x160: stage 3 (6x10) and 4 (3x5) are smaller than / not multiples of the window
    for size in [(96, 160), (37, 53)]:
        x = torch.randn(1, 3, *size, dtype=torch.float64)
        with torch.no_grad():
            assert _max_diff(bb(x), list(hf(x).feature_maps)) < 1e-10


def test_hf_hub_layout_and_strictness(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file

    cfg = transformers.SwinConfig(
        embed_dim=8, depths=[2, 2, 2, 2], num_heads=[1, 1, 2, 2], out_features=STAGES
    )
    hf = _randomize(transformers.SwinBackbone(cfg)).eval()
    hf.save_pretrained(tmp_path)
    hub = load_file(str(tmp_path / "model.safetensors"))  # attention.self.query, ...
    assert any("attention.self.query" in k for k in hub)
    bb = create_backbone(SWIN, out_norm=True, **SWIN_KW).eval()
    sd = {k: v for k, v in hub.items() if "layernorm." not in k}
    load_pretrained(bb, sd, source="hf")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert _max_diff(bb(x), list(hf(x).feature_maps)) < 1e-5
    broken = dict(sd)
    del broken["encoder.layers.1.blocks.0.attention.self.key.weight"]
    with pytest.raises(IncompatibleWeightsError, match=r"has \['q', 'v'\] of query/key/value"):
        load_pretrained(bb, broken, source="hf")
    broken = {**sd, "encoder.layers.0.blocks.0.extra.weight": torch.zeros(1)}
    with pytest.raises(IncompatibleWeightsError, match=r"extra\.weight"):
        load_pretrained(bb, broken, source="hf")
    with pytest.raises(IncompatibleWeightsError, match="ConvNeXt and Swin"):
        load_pretrained(create_backbone("timm:resnet18"), sd, source="hf")


def test_convnext_equals_hf_convnext_backbone() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ConvNextConfig(
        hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 2, 1], out_features=STAGES
    )
    hf = _randomize(transformers.ConvNextBackbone(cfg)).eval().double()
    bb = create_backbone(CNX, out_norm=True, **CNX_KW).double().eval()
    load_pretrained(bb, hf.state_dict())
    x = torch.randn(1, 3, 67, 93, dtype=torch.float64)
    with torch.no_grad():
        assert _max_diff(bb(x), list(hf(x).feature_maps)) < 1e-10
    # without out_norm the per-stage norms are reported, not silently dropped
    plain = create_backbone(CNX, **CNX_KW)
    with pytest.warns(UserWarning, match="norm of stage 0"):
        load_pretrained(plain, hf.state_dict())


# ----------------------------------------------------------------------------------------
# mmseg layouts (written by hand from timm's keys)


def _unfold_order(v: Tensor) -> Tensor:
    """timm/HF merging order (position-major) -> mmseg's nn.Unfold order (channel-major)."""
    lead = v.shape[:-1]
    return v.reshape(*lead, 4, -1)[..., [0, 2, 1, 3], :].transpose(-1, -2).reshape(*lead, -1)


def _to_mmseg_swin(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^layers_(\d+)", r"layers.\1", k)  # timm's features_only names
        k = k.replace("patch_embed.proj.", "patch_embed.projection.")
        m = re.fullmatch(r"layers\.(\d+)\.downsample\.(.+)", k)
        if m:  # start of stage i+1 -> end of stage i, in nn.Unfold order
            out[f"stages.{int(m[1]) - 1}.downsample.{m[2]}"] = _unfold_order(v)
            continue
        k = re.sub(r"^layers\.", "stages.", k)
        k = k.replace(".attn.", ".attn.w_msa.").replace(".mlp.fc1.", ".ffn.layers.0.0.")
        out[k.replace(".mlp.fc2.", ".ffn.layers.1.")] = v
    return out


def test_mmseg_patch_merging_order() -> None:
    """Converted weights make timm's PatchMerging equal mmseg's (nn.Unfold, LN, Linear)."""
    from timm.models.swin_transformer import PatchMerging

    from seg_backbones.timm_wrapper import _unfold_to_timm

    c = 3
    norm, red = nn.LayerNorm(4 * c), nn.Linear(4 * c, 2 * c, bias=False)
    _randomize(norm)
    x = torch.randn(2, 6, 10, c)  # NHWC
    with torch.no_grad():
        cols = nn.Unfold(2, stride=2)(x.permute(0, 3, 1, 2)).transpose(1, 2)  # mmseg
        want = red(norm(cols)).view(2, 3, 5, 2 * c)
        mm = {"layers.1.downsample.norm.weight": norm.weight, "layers.1.downsample.norm.bias":
              norm.bias, "layers.1.downsample.reduction.weight": red.weight}  # fmt: skip
        ours = PatchMerging(c)
        ours.load_state_dict({k.split("downsample.")[1]: v for k, v in _unfold_to_timm(mm).items()})
        torch.testing.assert_close(ours(x), want)


def test_mmseg_swin_round_trip() -> None:
    ref = _randomize(create_backbone(SWIN, out_norm=True, **SWIN_KW)).eval()
    sd = _to_mmseg_swin(dict(ref.model.state_dict()))
    sd.update({f"norm{i}.{p}": getattr(n, p) for i, n in enumerate(ref.out_norms)
               for p in ("weight", "bias")})  # fmt: skip
    sd["stages.0.blocks.0.attn.w_msa.relative_position_index"] = torch.zeros(49, 49)
    sd = {f"backbone.{k}": v for k, v in sd.items()} | {"head.fc.weight": torch.zeros(2, 2)}
    bb = create_backbone(SWIN, out_norm=True, **SWIN_KW).eval()
    with pytest.warns(UserWarning, match=r"head\.fc\.weight"):
        load_pretrained(bb, sd)  # auto-detected as mmseg
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert _max_diff(bb(x), ref(x)) == 0.0


def test_mmpretrain_convnext_round_trip_and_imagenet_norms() -> None:
    ref = _randomize(create_backbone(CNX, out_norm=True, **CNX_KW)).eval()
    sd = {}
    for k, v in ref.model.state_dict().items():
        k = re.sub(r"^stem_(\d)", r"downsample_layers.0.\1", k)
        k = re.sub(r"^stages_(\d+)\.downsample\.", r"downsample_layers.\1.", k)
        k = re.sub(r"^stages_(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", k)
        k = k.replace("conv_dw", "depthwise_conv").replace("mlp.fc", "pointwise_conv")
        sd[k] = v
    norms = {f"norm{i}.{p}": getattr(n, p) for i, n in enumerate(ref.out_norms)
             for p in ("weight", "bias")}  # fmt: skip
    bb = create_backbone(CNX, out_norm=True, **CNX_KW).eval()
    load_pretrained(bb, sd | norms, source="mmseg")
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert _max_diff(bb(x), ref(x)) == 0.0
    # ImageNet checkpoints carry only the final norm3: out_norms keep their init, loudly
    fresh = create_backbone(CNX, out_norm=True, **CNX_KW)
    with pytest.warns(UserWarning) as record:
        load_pretrained(fresh, sd | {"norm3.weight": norms["norm3.weight"],
                                     "norm3.bias": norms["norm3.bias"]})  # fmt: skip
    messages = " ".join(str(r.message) for r in record)
    assert "out_norms keep their initialisation" in messages
    assert "norm of stage 3.weight" in messages
    assert bool((fresh.out_norms[3].weight == 1).all())


def test_own_state_dict_round_trip() -> None:
    ref = _randomize(create_backbone(CNX, out_norm=True, **CNX_KW)).eval()
    bb = create_backbone(CNX, out_norm=True, **CNX_KW).eval()
    load_pretrained(bb, ref.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert _max_diff(bb(x), ref(x)) == 0.0


def test_microsoft_swin_layout() -> None:
    """The original release merges patches at the end of stage i (timm: start of i+1)."""
    # timm alone equals HF/mmseg where every map is a multiple of the window (224) and
    # shifted windows are kept on the 7x7 last stage (always_partition)
    ref = _randomize(timm.create_model(SWIN[5:], always_partition=True, **SWIN_KW)).eval()
    sd = {}
    for k, v in ref.state_dict().items():
        m = re.fullmatch(r"layers\.(\d+)\.downsample\.(.+)", k)
        sd[f"layers.{int(m[1]) - 1}.downsample.{m[2]}" if m else k] = v
    bb = create_backbone(SWIN, **SWIN_KW).eval()
    with pytest.warns(UserWarning, match=r"norm\.weight"):  # the classifier's final norm
        load_pretrained(bb, sd, source="timm")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        want = ref.forward_intermediates(x, intermediates_only=True)
        assert _max_diff(bb(x), want) < 1e-5
