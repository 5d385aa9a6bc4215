"""SegFormer converters against the references themselves.

* ``from_hf``: transformers' ``SegformerForSemanticSegmentation`` built from a small random
  ``SegformerConfig``, saved with ``save_pretrained`` (the Hub's file layout), converted, and
  compared in float64 with transformers' logits resized to the input.
* NVlabs' release (mmseg 0.x files, read by ``from_mmseg``): the HF model's weights written in
  NVlabs' key layout (the inverse of transformers' ``convert_segformer_original_to_pytorch``)
  with transformers' block LayerNorms set to NVlabs' eps 1e-6, so HF computes NVlabs' model.
* ``from_mmseg`` against mmseg itself runs in the parity session (tests/parity, built from
  ``MMSEG_ARCHS``); here, a round trip through mmseg's layout written by hand.

``transformers`` is in seg-heads' ``test`` extra; ``importorskip`` is only a guard.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seg_backbones import IncompatibleWeightsError
from seg_heads import create_model
from seg_heads.convert import MMSEG_ARCHS, from_hf, from_mmseg
from seg_heads.convert._segformer import from_hf_segformer

transformers = pytest.importorskip("transformers")

H, W = 83, 115  # odd, non-square: catches H/W mix-ups and rounding in every stride


def _randomize(model: nn.Module, seed: int = 1) -> None:
    """Non-trivial LayerNorm/BatchNorm affines and BN statistics; classifier scaled to O(1) logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm | nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.05)
        for name, p in model.named_parameters():
            if name.endswith("bias") and bool((p == 0).all()):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            if re.search(r"(classifier|conv_seg|linear_pred)\.weight$", name):
                p.copy_(torch.randn(p.shape, generator=g) * 20.0 / p[0].numel() ** 0.5)


def _hf_model(**overrides) -> nn.Module:
    labels = overrides.pop("labels", ["wall", "sky", "road", "tree", "person"])
    kw = {
        "depths": [1, 1, 1, 1],
        "hidden_sizes": [16, 32, 48, 64],
        "num_attention_heads": [1, 2, 3, 4],
        "decoder_hidden_size": 32,
        "id2label": dict(enumerate(labels)),
        "label2id": {n: i for i, n in enumerate(labels)},
    }
    kw.update(overrides)
    config = transformers.SegformerConfig(**kw)
    config._attn_implementation = "sdpa"  # eager softmaxes in fp32 even in an fp64 model
    torch.manual_seed(0)
    model = transformers.SegformerForSemanticSegmentation(config)
    _randomize(model)
    return model.eval()


def _hf_logits(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        logits = model(pixel_values=x).logits  # 1/4 resolution
    return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _compare(ours: nn.Module, ref: nn.Module, x: Tensor) -> tuple[float, float]:
    """(fp64 max abs difference, fp32 argmax agreement)."""
    with torch.no_grad():
        got64 = ours.double()(x.double())["out"]
        diff = (got64 - _hf_logits(ref.double(), x.double())).abs().max().item()
        got32 = ours.float()(x)["out"]
        agree = (got32.argmax(1) == _hf_logits(ref.float(), x).argmax(1)).float().mean().item()
    return diff, agree


def test_from_hf_matches_transformers(tmp_path) -> None:
    ref = _hf_model()
    ref.save_pretrained(tmp_path)
    ours = from_hf(tmp_path).eval()
    x = torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(2))
    diff, agree = _compare(ours, ref, x)
    assert diff <= 1e-6, diff
    assert agree >= 0.999, agree
    assert ours.class_names == ["wall", "sky", "road", "tree", "person"]
    cfg = ours.build_config
    assert cfg["backbone"] == "mit_b0" and cfg["head_kwargs"] == {"variant": "hf", "channels": 32}
    assert cfg["backbone_kwargs"]["layer_norm_eps"] == 1e-5  # what transformers computes with
    assert cfg["backbone_kwargs"]["depths"] == (1, 1, 1, 1)
    create_model(**cfg).load_state_dict(ours.state_dict())  # strict: build_config rebuilds it


def test_from_hf_reads_sizes_and_dropouts_from_config_json(tmp_path) -> None:
    ref = _hf_model(
        sr_ratios=[4, 2, 2, 1],
        mlp_ratios=[2, 2, 4, 4],
        drop_path_rate=0.2,
        classifier_dropout_prob=0.3,
        labels=["a", "b", "c"],
    )
    ref.save_pretrained(tmp_path)
    ours = from_hf(tmp_path).eval()
    kw = ours.build_config["backbone_kwargs"]
    assert kw["sr_ratios"] == (4, 2, 2, 1) and kw["mlp_ratios"] == (2, 2, 4, 4)
    assert kw["drop_path_rate"] == 0.2 and ours.decode_head.dropout.p == 0.3
    diff, _ = _compare(ours, ref, torch.randn(1, 3, 64, 96))
    assert diff <= 1e-6, diff


def test_hub_sizes_map_to_the_registered_variant(tmp_path) -> None:
    """A b0-sized config (nvidia/segformer-b0-*) builds plain ``mit_b0``."""
    config = transformers.SegformerConfig(num_labels=150).to_dict()
    config["architectures"] = ["SegformerForSemanticSegmentation"]
    with torch.device("meta"):
        sd = transformers.SegformerForSemanticSegmentation(
            transformers.SegformerConfig(num_labels=150)
        ).state_dict()
    sd = {k: torch.zeros(v.shape) for k, v in sd.items()}
    model = from_hf_segformer(config, sd, "test")
    assert model.build_config["backbone"] == "mit_b0"
    assert model.build_config["backbone_kwargs"] == {"layer_norm_eps": 1e-5}


def test_in_memory_state_dict_converts_too() -> None:
    """``model.state_dict()`` in transformers 5 has other names than its files (stages.*, q_proj)."""
    ref = _hf_model()
    sd = ref.state_dict()  # transformers 5: stages.*.q_proj ...; 4.x: the Hub's names
    ours = from_hf_segformer(ref.config.to_dict(), dict(sd), "in-memory").eval()
    diff, _ = _compare(ours, ref, torch.randn(1, 3, 64, 64))
    assert diff <= 1e-6, diff


def test_hf_encoder_weights_load_into_the_backbone() -> None:
    """seg_backbones.load_pretrained takes an HF encoder (``SegformerModel.state_dict()``)."""
    from seg_backbones import create_backbone, load_pretrained

    ref = _hf_model()
    bb = create_backbone(
        "mit_b0",
        embed_dims=(16, 32, 48, 64),
        depths=(1, 1, 1, 1),
        num_heads=(1, 2, 3, 4),
        layer_norm_eps=1e-5,
    ).eval()
    load_pretrained(bb, ref.segformer.state_dict())
    x = torch.randn(1, 3, 64, 80, dtype=torch.float64)
    with torch.no_grad():
        want = ref.segformer.double()(x, output_hidden_states=True).hidden_states
        got = bb.double()(x)
    assert len(want) == 4
    assert max((a - b).abs().max().item() for a, b in zip(got, want, strict=True)) <= 1e-9


# ------------------------------------------------------------------------------ NVlabs files


def _to_nvlabs(hf_sd: dict[str, Tensor], num_classes: int) -> dict[str, Tensor]:
    """The Hub layout -> NVlabs' mmseg-0.x checkpoint (inverse of transformers' converter)."""
    out: dict[str, Tensor] = {}
    for k, v in hf_sd.items():
        if ".attention.self.value." in k:
            continue
        if ".attention.self.key." in k:
            v = torch.cat([v, hf_sd[k.replace(".key.", ".value.")]])
            k = k.replace(".key.", ".kv.")
        k = k.replace("segformer.encoder.", "backbone.")
        k = re.sub(r"patch_embeddings\.(\d)", lambda m: f"patch_embed{int(m[1]) + 1}", k)
        k = re.sub(r"^backbone\.block\.(\d)", lambda m: f"backbone.block{int(m[1]) + 1}", k)
        k = re.sub(r"^backbone\.layer_norm\.(\d)", lambda m: f"backbone.norm{int(m[1]) + 1}", k)
        k = k.replace("layer_norm_1", "norm1").replace("layer_norm_2", "norm2")
        k = k.replace("layer_norm", "norm").replace("attention.self.query", "attn.q")
        k = k.replace("attention.self.", "attn.").replace("attention.output.dense", "attn.proj")
        k = k.replace("mlp.dense1", "mlp.fc1").replace("mlp.dense2", "mlp.fc2")
        k = re.sub(r"linear_c\.(\d)", lambda m: f"linear_c{int(m[1]) + 1}", k)
        k = k.replace("decode_head.linear_fuse.", "decode_head.linear_fuse.conv.")
        k = k.replace("decode_head.batch_norm.", "decode_head.linear_fuse.bn.")
        k = k.replace("decode_head.classifier.", "decode_head.linear_pred.")
        out[k] = v
    # mmseg 0.x's BaseDecodeHead built a conv_seg that NVlabs' head never uses (128 channels)
    out["decode_head.conv_seg.weight"] = torch.zeros(num_classes, 128, 1, 1)
    out["decode_head.conv_seg.bias"] = torch.zeros(num_classes)
    return out


def test_from_mmseg_reads_the_nvlabs_release(tmp_path) -> None:
    ref = _hf_model(  # MiT-B0's sizes, as from_mmseg's arch says
        depths=[2, 2, 2, 2], hidden_sizes=[32, 64, 160, 256], num_attention_heads=[1, 2, 5, 8]
    )
    ref.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    sd = _to_nvlabs(load_file(str(tmp_path / "model.safetensors")), num_classes=5)
    assert "backbone.block1.0.attn.kv.weight" in sd and "decode_head.linear_c4.proj.weight" in sd
    # NVlabs: eps 1e-6 in the blocks and stage norms, PyTorch's 1e-5 in patch embed / sr norms
    for name, m in ref.named_modules():
        if isinstance(m, nn.LayerNorm) and not re.search(
            r"patch_embeddings|sequence_reduction", name
        ):
            m.eps = 1e-6
    torch.save({"meta": {}, "state_dict": sd}, tmp_path / "segformer.b0.ade.pth")
    ours = from_mmseg(tmp_path / "segformer.b0.ade.pth", arch="segformer_mit-b0_512x512_ade_160k")
    ours = ours.eval()
    assert ours.build_config["head_kwargs"] == {"variant": "hf", "channels": 32}
    assert ours.build_config["backbone_kwargs"] == {"patch_norm_eps": 1e-5}
    diff, agree = _compare(ours, ref, torch.randn(1, 3, H, W))
    assert diff <= 1e-6 and agree >= 0.999, (diff, agree)


# ------------------------------------------------------------------------------ mmseg layout


def _to_mmseg(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our model (mmseg variant) -> mmseg 1.2.2 keys (backbones/mit.py, segformer_head.py)."""
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        m = re.match(r"backbone\.stages\.(\d)\.(.+)", k)
        if not m:
            out[k] = v  # decode_head.convs.i.conv/bn, fusion_conv.conv/bn, conv_seg: same names
            continue
        i, rest = m.groups()
        if ".attn.kv." in rest:
            continue
        if ".attn.q." in rest:
            v = torch.cat([v, sd[k.replace(".q.", ".kv.")]])
            rest = rest.replace("attn.q.", "attn.attn.in_proj_")
        rest = rest.replace("attn.proj.", "attn.attn.out_proj.")
        if re.search(r"mlp\.fc[12]\.weight", rest):
            v = v[:, :, None, None]
        for a, b in (("mlp.fc1.", "ffn.layers.0."), ("mlp.dwconv.", "ffn.layers.1."),
                     ("mlp.fc2.", "ffn.layers.4."), ("patch_embed.proj.", "0.projection."),
                     ("patch_embed.norm.", "0.norm.")):  # fmt: skip
            rest = rest.replace(a, b)
        rest = re.sub(r"^blocks\.", "1.", re.sub(r"^norm\.", "2.", rest))
        out[f"backbone.layers.{i}.{rest}"] = v
    return out


def test_from_mmseg_round_trip_and_errors() -> None:
    torch.manual_seed(0)
    src = create_model("segformer", backbone="mit_b0", num_classes=7, head_kwargs={"channels": 64})
    _randomize(src)
    src.eval()
    sd = _to_mmseg(src.state_dict())
    assert "backbone.layers.0.1.0.attn.attn.in_proj_weight" in sd
    assert sd["backbone.layers.2.1.1.ffn.layers.4.weight"].ndim == 4
    ours = from_mmseg({"state_dict": sd}, arch="segformer_mit-b0").eval()
    assert ours.build_config["head_kwargs"] == {"variant": "mmseg", "channels": 64}
    x = torch.randn(1, 3, H, W)
    with torch.no_grad():
        assert torch.equal(ours(x)["out"], src(x)["out"])
    with pytest.raises(IncompatibleWeightsError, match=r"(?s)do not fit .*shape mismatches"):
        from_mmseg(sd, arch="segformer_mit-b1")
    bad = dict(sd, **{"auxiliary_head.conv_seg.weight": torch.zeros(7, 64, 1, 1)})
    with pytest.raises(KeyError, match="auxiliary_head"):
        from_mmseg(bad, arch="segformer_mit-b0")


def test_mmseg_arch_table_names_the_mmseg_configs() -> None:
    for b in range(6):
        spec = MMSEG_ARCHS[f"segformer_mit-b{b}"]
        assert spec.config == f"segformer/segformer_mit-b{b}_8xb2-160k_ade20k-512x512.py"
        assert spec.align_corners is False
