"""MiT (SegFormer's Mix Transformer): feature contract, options, fp64 attention, weight import.

The layouts of the other sources are written here from their documented key names
(NVlabs ``mix_transformer.py``, mmseg's ``tools/model_converters/mit2mmseg.py`` and
``backbones/mit.py``, transformers' Hub files), independently of ``seg_backbones.mit``'s
mapping, so that a round trip through them tests the mapping. Logit parity with
transformers and mmsegmentation themselves lives in seg-heads' tests.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seg_backbones import IncompatibleWeightsError, create_backbone, load_pretrained
from seg_backbones.mit import EfficientSelfAttention, convert_mit_state_dict, detect_mit_source

torch.set_num_threads(1)

H, W = 97, 129  # odd: every patch embedding must round up (conv padding k // 2)
NAMES = [f"mit_b{i}" for i in range(6)]
TINY = {"depths": (1, 2, 1, 1)}  # mit_b0 widths, fewer blocks: keeps CPU tests fast

# The paper's Table 1 encoder sizes: 3.4, 13.1, 24.2, 44.0, 60.8, 81.4 M (rounded); these
# exact counts equal transformers' SegformerModel of the same size (checked in seg-heads).
PARAMS = {
    "mit_b0": 3_319_392,
    "mit_b1": 13_151_424,
    "mit_b2": 24_196_288,
    "mit_b3": 44_072_128,
    "mit_b4": 60_842_688,
    "mit_b5": 81_443_008,
}


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial LayerNorm affines and biases, so that no key can be mixed up unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or p.ndim == 1:
                p.copy_(
                    torch.randn(p.shape, generator=g) * 0.2
                    + (1.0 if "norm" in name and name.endswith("weight") else 0.0)
                )
    return model


@pytest.mark.parametrize("name", NAMES)
def test_feature_info_and_parameter_counts(name: str) -> None:
    with torch.device("meta"):
        bb = create_backbone(name)
        feats = bb(torch.empty(1, 3, H, W))
    dims = (32, 64, 160, 256) if name == "mit_b0" else (64, 128, 320, 512)
    assert bb.feature_info == [(c, r) for c, r in zip(dims, (4, 8, 16, 32), strict=True)]
    assert [tuple(f.shape) for f in feats] == [
        (1, c, math.ceil(H / r), math.ceil(W / r)) for c, r in bb.feature_info
    ]
    assert sum(p.numel() for p in bb.parameters()) == PARAMS[name]


def test_cpu_outputs_match_feature_info_and_are_fp64_in_fp64() -> None:
    torch.manual_seed(0)
    bb = create_backbone("mit_b0", **TINY).eval().double()
    with torch.no_grad():
        feats = bb(torch.randn(2, 3, H, W, dtype=torch.float64))
    for f, (c, r) in zip(feats, bb.feature_info, strict=True):
        assert f.shape == (2, c, math.ceil(H / r), math.ceil(W / r))
        assert f.dtype == torch.float64 and torch.isfinite(f).all()


def test_structure_matches_the_references() -> None:
    with torch.device("meta"):
        bb = create_backbone("mit_b2")
    stages = bb.stages
    assert [len(s.blocks) for s in stages] == [3, 4, 6, 3]
    assert [s.patch_embed.proj.kernel_size[0] for s in stages] == [7, 3, 3, 3]
    assert [s.patch_embed.proj.stride[0] for s in stages] == [4, 2, 2, 2]
    assert [s.patch_embed.proj.padding[0] for s in stages] == [3, 1, 1, 1]
    attn = [s.blocks[0].attn for s in stages]
    assert [a.num_heads for a in attn] == [1, 2, 5, 8]
    assert [a.sr.kernel_size[0] for a in attn[:3]] == [8, 4, 2] and not hasattr(attn[3], "sr")
    assert attn[0].sr.stride == (8, 8) and attn[0].q.bias is not None  # qkv_bias=True
    mlp = stages[0].blocks[0].mlp
    assert mlp.fc1.out_features == 4 * 64 and mlp.dwconv.groups == 4 * 64
    assert mlp.dwconv.kernel_size == (3, 3) and isinstance(mlp.act, nn.GELU)
    assert mlp.act.approximate == "none"  # exact GELU, as mmseg/NVlabs/HF
    norms = [m.eps for m in bb.modules() if isinstance(m, nn.LayerNorm)]
    assert set(norms) == {1e-6}  # mmseg's eps everywhere by default


def test_layer_norm_eps_options() -> None:
    with torch.device("meta"):
        hf = create_backbone("mit_b0", layer_norm_eps=1e-5)
        official = create_backbone("mit_b0", patch_norm_eps=1e-5)
    assert {m.eps for m in hf.modules() if isinstance(m, nn.LayerNorm)} == {1e-5}
    eps = {n: m.eps for n, m in official.named_modules() if isinstance(m, nn.LayerNorm)}
    for n, e in eps.items():
        patch_or_sr = n.endswith("patch_embed.norm") or n.endswith("attn.norm")
        assert e == (1e-5 if patch_or_sr else 1e-6), n


@pytest.mark.parametrize("os_", [8, 16])
def test_output_stride_other_than_32_is_refused(os_: int) -> None:
    with pytest.raises(ValueError, match=r"mit_b1 supports only output_stride=32"):
        create_backbone("mit_b1", output_stride=os_)


def test_unknown_option_and_bad_sizes_fail_naming_them() -> None:
    with pytest.raises(TypeError, match=r"mit_b0: unknown option\(s\) \['norm_layer'\]"):
        create_backbone("mit_b0", norm_layer="bn")
    with pytest.raises(ValueError, match="depths"):
        create_backbone("mit_b0", depths=(2, 2, 2))


def test_drop_path_schedule_and_train_vs_eval() -> None:
    with torch.device("meta"):
        bb = create_backbone("mit_b2", drop_path_rate=0.3)
    rates = [getattr(b.drop_path, "p", 0.0) for s in bb.stages for b in s.blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.3, 16).tolist(), abs=1e-7)
    assert isinstance(bb.stages[0].blocks[0].drop_path, nn.Identity)  # rate 0

    torch.manual_seed(0)
    bb = create_backbone("mit_b0", depths=(1, 1, 1, 1), drop_path_rate=0.5)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        a, b = bb.train()(x)[-1], bb(x)[-1]
        assert not torch.equal(a, b)  # sample-wise random branches
        e1, e2 = bb.eval()(x)[-1], bb(x)[-1]
        assert torch.equal(e1, e2)
        bb.stages.apply(lambda m: setattr(m, "p", 0.0) if hasattr(m, "p") else None)
        assert torch.equal(bb.train()(x)[-1], e1)  # no other randomness (dropouts are 0)


def test_attention_is_softmax_qk_v_in_float64() -> None:
    torch.manual_seed(0)
    attn = EfficientSelfAttention(
        16, 2, sr_ratio=2, qkv_bias=True, attn_drop=0.0, proj_drop=0.0, eps=1e-6
    )
    attn = _randomize(attn).double().eval()
    x = torch.randn(2, 6 * 10, 16, dtype=torch.float64)
    with torch.no_grad():
        got = attn(x, (6, 10))
        # by hand: official Attention.forward with plain matmul/softmax
        q = attn.q(x).reshape(2, 60, 2, 8).permute(0, 2, 1, 3)
        m = x.transpose(1, 2).reshape(2, 16, 6, 10)
        r = attn.norm(attn.sr(m).reshape(2, 16, -1).transpose(1, 2))
        k, v = attn.kv(r).reshape(2, -1, 2, 2, 8).permute(2, 0, 3, 1, 4)
        w = (q @ k.transpose(-2, -1) * 8**-0.5).softmax(-1)
        want = attn.proj((w @ v).transpose(1, 2).reshape(2, 60, 16))
    assert got.dtype == torch.float64
    assert (got - want).abs().max().item() < 1e-13


def test_gradient_checkpointing_gives_the_same_outputs_and_gradients() -> None:
    torch.manual_seed(0)
    plain = create_backbone("mit_b0", depths=(1, 1, 1, 1), drop_path_rate=0.0)
    ckpt = create_backbone(
        "mit_b0", depths=(1, 1, 1, 1), drop_path_rate=0.0, grad_checkpointing=True
    )
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 64, 64)
    for m in (plain, ckpt):
        sum(f.square().mean() for f in m(x)).backward()
    for (n, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), n


# ------------------------------------------------------------------ other layouts, by hand


def _to_official(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Ours -> NVlabs: patch_embed{i+1}, block{i+1}.j, norm{i+1}, mlp.dwconv.dwconv; + head."""
    out = {}
    for k, v in sd.items():
        i, rest = re.match(r"stages\.(\d)\.(.+)", k).groups()
        n = int(i) + 1
        rest = rest.replace("mlp.dwconv.", "mlp.dwconv.dwconv.")
        rest = re.sub(r"^patch_embed\.", f"patch_embed{n}.", rest)
        rest = re.sub(r"^blocks\.", f"block{n}.", rest)
        rest = re.sub(r"^norm\.", f"norm{n}.", rest)
        out[rest] = v
    out["head.weight"], out["head.bias"] = torch.zeros(1000, 256), torch.zeros(1000)  # ImageNet
    return out


def _to_mmseg(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Ours -> mmseg (mit2mmseg.py): in_proj = cat(q, kv), 1x1-conv FFN, layers.i.{0,1,2}."""
    out = {}
    for k, v in sd.items():
        i, rest = re.match(r"stages\.(\d)\.(.+)", k).groups()
        if ".attn.kv." in rest:
            continue
        if ".attn.q." in rest:
            v = torch.cat([v, sd[k.replace(".q.", ".kv.")]], 0)
            rest = rest.replace("attn.q.", "attn.attn.in_proj_")
        rest = rest.replace("attn.proj.", "attn.attn.out_proj.")
        if re.search(r"mlp\.fc[12]\.weight", rest):
            v = v[:, :, None, None]
        rest = rest.replace("mlp.fc1.", "ffn.layers.0.").replace("mlp.dwconv.", "ffn.layers.1.")
        rest = rest.replace("mlp.fc2.", "ffn.layers.4.")
        rest = re.sub(r"^patch_embed\.proj\.", "0.projection.", rest)
        rest = re.sub(r"^patch_embed\.norm\.", "0.norm.", rest)
        rest = re.sub(r"^blocks\.", "1.", rest)
        rest = re.sub(r"^norm\.", "2.", rest)
        out[f"layers.{i}.{rest}"] = v
    return out


_HF_NAMES = [("norm1.", "layer_norm_1."), ("norm2.", "layer_norm_2."),
             ("attn.q.", "attention.self.query."), ("attn.sr.", "attention.self.sr."),
             ("attn.norm.", "attention.self.layer_norm."), ("attn.proj.", "attention.output.dense."),
             ("mlp.fc1.", "mlp.dense1."), ("mlp.dwconv.", "mlp.dwconv.dwconv."),
             ("mlp.fc2.", "mlp.dense2.")]  # fmt: skip


def _to_hf(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Ours -> the Hub's SegformerForImageClassification (segformer.encoder.*, classifier)."""
    out = {}
    for k, v in sd.items():
        i, rest = re.match(r"stages\.(\d)\.(.+)", k).groups()
        if rest.startswith("patch_embed."):
            key = f"patch_embeddings.{i}." + rest[len("patch_embed.") :].replace(
                "norm.", "layer_norm."
            )
        elif rest.startswith("norm."):
            key = f"layer_norm.{i}.{rest[len('norm.') :]}"
        else:
            j, r = re.match(r"blocks\.(\d+)\.(.+)", rest).groups()
            if r.startswith("attn.kv."):
                c = v.shape[0] // 2
                kind = r.rsplit(".", 1)[1]
                out[f"segformer.encoder.block.{i}.{j}.attention.self.key.{kind}"] = v[:c]
                out[f"segformer.encoder.block.{i}.{j}.attention.self.value.{kind}"] = v[c:]
                continue
            for a, b in _HF_NAMES:
                if r.startswith(a):
                    r = b + r[len(a) :]
                    break
            key = f"block.{i}.{j}.{r}"
        out[f"segformer.encoder.{key}"] = v
    out["classifier.weight"], out["classifier.bias"] = torch.zeros(1000, 256), torch.zeros(1000)
    return out


@pytest.mark.parametrize(
    ("source", "to_layout"),
    [("official", _to_official), ("mmseg", _to_mmseg), ("hf", _to_hf), ("pkuseg", dict)],
)
def test_weight_import_round_trips_every_layout(source: str, to_layout, tmp_path) -> None:
    torch.manual_seed(0)
    src = _randomize(create_backbone("mit_b0", **TINY)).eval()
    foreign = to_layout(src.state_dict())
    assert detect_mit_source(foreign) == source
    x = torch.randn(1, 3, 65, 81)
    with torch.no_grad():
        want = src(x)
    for how in ("auto", source):
        dst = create_backbone("mit_b0", **TINY).eval()
        load_pretrained(dst, foreign, source=how)
        for k, v in src.state_dict().items():
            assert torch.equal(dst.state_dict()[k], v), (how, k)
        with torch.no_grad():
            assert all(torch.equal(a, b) for a, b in zip(dst(x), want, strict=True))
    # from a file, with the wrappers training scripts add
    torch.save({"state_dict": {f"module.{k}": v for k, v in foreign.items()}}, tmp_path / "w.pth")
    dst = load_pretrained(create_backbone("mit_b0", **TINY), tmp_path / "w.pth")
    assert torch.equal(
        dst.state_dict()["stages.3.norm.bias"], src.state_dict()["stages.3.norm.bias"]
    )


def test_mmseg_backbone_prefix_is_stripped() -> None:
    src = create_backbone("mit_b0", **TINY)
    sd = {f"backbone.{k}": v for k, v in _to_mmseg(src.state_dict()).items()}
    dst = load_pretrained(create_backbone("mit_b0", **TINY), sd)
    assert torch.equal(
        dst.stages[0].blocks[0].attn.kv.weight, src.stages[0].blocks[0].attn.kv.weight
    )


def test_import_errors_name_the_keys_and_the_fix() -> None:
    src = create_backbone("mit_b0", **TINY)
    sd = _to_official(src.state_dict())
    del sd["block2.1.attn.kv.weight"]
    with pytest.raises(
        IncompatibleWeightsError,
        match=r"missing keys 1: \[stages\.1\.blocks\.1\.attn\.kv\.weight\]",
    ):
        load_pretrained(create_backbone("mit_b0", **TINY), sd)
    with pytest.raises(
        IncompatibleWeightsError, match=r"shape mismatches .*stages\.0\.patch_embed"
    ):
        load_pretrained(create_backbone("mit_b1", **TINY), _to_official(src.state_dict()))
    with pytest.raises(IncompatibleWeightsError, match=r"unexpected keys .*stages\.1\.blocks\.1\."):
        load_pretrained(create_backbone("mit_b0", depths=(1, 1, 1, 1)), _to_mmseg(src.state_dict()))
    full = {f"backbone.{k}": v for k, v in src.state_dict().items()}
    full["decode_head.conv_seg.weight"] = torch.zeros(3, 256, 1, 1)
    with pytest.raises(IncompatibleWeightsError, match="from_mmseg"):
        load_pretrained(create_backbone("mit_b0", **TINY), full)
    with pytest.raises(ValueError, match="cannot recognise"):
        convert_mit_state_dict({"conv1.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="valid"):
        load_pretrained(create_backbone("mit_b0", **TINY), src.state_dict(), source="timm")


def test_hf_attention_is_split_back_into_kv_in_order() -> None:
    """HF's key/value become ``kv`` = cat(key, value): keys first, as NVlabs' reshape(.., 2, ..)."""
    k, v = torch.randn(32, 32), torch.randn(32, 32)
    sd = convert_mit_state_dict(
        {
            "encoder.block.0.0.attention.self.key.weight": k,
            "encoder.block.0.0.attention.self.value.weight": v,
            "encoder.patch_embeddings.0.proj.weight": torch.zeros(1),
        },
        source="hf",
    )
    assert torch.equal(sd["stages.0.blocks.0.attn.kv.weight"], torch.cat([k, v]))
    x = torch.randn(1, 4, 32)
    kv = F.linear(x, sd["stages.0.blocks.0.attn.kv.weight"]).reshape(1, 4, 2, 32)
    assert torch.allclose(kv[:, :, 0], F.linear(x, k)) and torch.allclose(
        kv[:, :, 1], F.linear(x, v)
    )
