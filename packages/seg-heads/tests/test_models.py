"""Contract tests over the model registry, plus structure checks against the references."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from seg_heads import (
    ASPPHead,
    DenseASPPHead,
    FCNHead,
    PSPHead,
    SegmentationModel,
    create_model,
    list_models,
    tiny_config,
)
from seg_heads.aspp import default_aspp_rates

SMALL = "resnet18_deep"  # resnet18-sized backbone: feature_info (64, 128, 256, 512)


def test_registry_has_the_required_models() -> None:
    assert {"pspnet", "deeplabv3", "denseaspp", "fcn"} <= set(list_models())


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(KeyError, match=r"valid names are .*pspnet"):
        create_model("pspnett", backbone=SMALL, num_classes=3)


def test_unknown_backbone_lists_valid_names() -> None:
    with pytest.raises(KeyError, match="resnet18_deep"):
        create_model("pspnet", backbone="resnet18_deeep", num_classes=3)


# Each model's registered tiny config (``register_head(..., tiny=...)``) keeps the 2-core CI
# fast; the full widths are checked structurally below.
VARIANTS = [(name, tiny_config(name)) for name in list_models()] + [
    (
        "deeplabv3",
        dict(tiny_config("deeplabv3"), head_kwargs={"variant": "torchvision", "channels": 64}),
    ),
    ("fcn", dict(tiny_config("fcn"), head_kwargs={"variant": "torchvision"})),
]


@pytest.mark.parametrize(("name", "config"), VARIANTS, ids=lambda v: str(v))
def test_forward_backward_and_determinism(name: str, config: dict) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, **config)
    x = torch.randn(2, 3, 97, 129)
    out = model(x)
    assert out["out"].shape == (2, 5, 97, 129)
    aux_keys = sorted(k for k in out if k.startswith("aux"))
    assert bool(aux_keys) == bool(
        config.get("aux") or getattr(model.decode_head, "returns_aux", False)
    )
    for key in aux_keys:
        assert out[key].shape == (2, 5, 97, 129), key
    loss = out["out"].mean() + sum(0.4 * out[k].mean() for k in aux_keys)
    # other outputs (boundary maps, mask-classification logits) take part in training too
    for key, value in out.items():
        if key != "out" and not key.startswith("aux") and isinstance(value, torch.Tensor):
            loss = loss + 0.1 * value.float().mean()
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    model.eval()
    with torch.no_grad():
        a, b = model(x[:1]), model(x[:1])
    assert a["out"].shape == (1, 5, 97, 129)
    assert torch.equal(a["out"], b["out"])
    for key in (k for k in a if k.startswith("aux")):
        assert torch.equal(a[key], b[key]), key


def test_aux_on_a_head_with_its_own_aux_fails_at_build_time() -> None:
    with pytest.raises(ValueError, match=r"'ocrnet'.*already returns its own auxiliary"):
        create_model("ocrnet", backbone="hrnet_w18", num_classes=3, aux=True)


def test_no_aux_gives_only_out() -> None:
    model = create_model("pspnet", backbone=SMALL, num_classes=4).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 33, 47))
    assert list(out) == ["out"] and out["out"].shape == (1, 4, 33, 47)
    assert model.aux_head is None


@pytest.mark.parametrize("head_cls", [PSPHead, ASPPHead, DenseASPPHead, FCNHead])
def test_heads_read_in_channels_from_feature_info(head_cls: type, tiny_backbone) -> None:
    info = tiny_backbone.feature_info
    head = head_cls(info[-1].channels, 3)
    aux = FCNHead(info[2].channels, 3, in_index=2, channels=16, num_convs=1, concat_input=False)
    model = SegmentationModel(tiny_backbone, head, aux, align_corners=True).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 50, 61))
    assert out["out"].shape == (1, 3, 50, 61) and out["aux"].shape == (1, 3, 50, 61)


def test_build_config_rebuilds_the_same_architecture() -> None:
    model = create_model(
        "deeplabv3",
        backbone=SMALL,
        num_classes=7,
        output_stride=16,
        aux=True,
        align_corners=True,
        backbone_kwargs={"contract_dilation": False, "multi_grid": (1, 2)},
        head_kwargs={"variant": "torchvision"},
        aux_kwargs={"channels": 32},
    )
    cfg = model.build_config
    assert cfg["name"] == "deeplabv3" and cfg["output_stride"] == 16
    again = create_model(**cfg)
    assert again.build_config == cfg
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in again.state_dict().items()}
    assert model.input_norm is None
    # The options reached the modules.
    assert model.align_corners and model.decode_head.align_corners
    assert model.decode_head.rates == (6, 12, 18)
    assert model.aux_head.channels == 32
    assert model.aux_head.variant == "torchvision"


def test_aux_head_defaults_follow_mmseg() -> None:
    model = create_model("pspnet", backbone=SMALL, num_classes=3, aux=True)
    aux = model.aux_head
    assert aux.in_channels == model.backbone.feature_info[2].channels
    assert aux.channels == 256 and len(aux.convs) == 1 and aux.conv_cat is None
    assert isinstance(aux.dropout, nn.Dropout2d)


def test_aspp_rates_follow_output_stride() -> None:
    assert default_aspp_rates(8) == (12, 24, 36)
    assert default_aspp_rates(16) == (6, 12, 18)
    for os_, rates in ((8, (12, 24, 36)), (16, (6, 12, 18))):
        head = create_model(
            "deeplabv3", backbone=SMALL, num_classes=3, output_stride=os_
        ).decode_head
        dil = [m.conv.dilation[0] for m in head.aspp_modules]
        assert dil == [1, *rates]
    with pytest.raises(ValueError, match="head_kwargs"):
        create_model("deeplabv3", backbone=SMALL, num_classes=3, output_stride=32)
    head = create_model(
        "deeplabv3",
        backbone=SMALL,
        num_classes=3,
        output_stride=32,
        head_kwargs={"rates": (3, 6, 9)},
    ).decode_head
    assert [m.conv.dilation[0] for m in head.aspp_modules] == [1, 3, 6, 9]


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_psp_head_structure_matches_mmseg() -> None:
    head = PSPHead(2048, 19)
    assert [m[0].output_size for m in head.psp_modules] == [1, 2, 3, 6]
    assert all(m[1].conv.weight.shape == (512, 2048, 1, 1) for m in head.psp_modules)
    assert head.bottleneck.conv.weight.shape == (512, 2048 + 4 * 512, 3, 3)
    assert isinstance(head.dropout, nn.Dropout2d) and head.dropout.p == 0.1
    assert head.conv_seg.weight.shape == (19, 512, 1, 1) and head.conv_seg.bias is not None
    assert all(m.bias is None for n, m in head.named_modules() if n.endswith(".conv"))


def test_aspp_head_variants_match_references() -> None:
    mm = ASPPHead(2048, 19)
    assert mm.image_pool[1].conv.weight.shape == (512, 2048, 1, 1)
    assert mm.bottleneck.conv.weight.shape == (512, 5 * 512, 3, 3)
    assert isinstance(mm.dropout, nn.Dropout2d) and mm.project is None
    tv = ASPPHead(2048, 21, variant="torchvision")
    assert tv.project.conv.weight.shape == (256, 5 * 256, 1, 1)
    assert isinstance(tv.project_dropout, nn.Dropout) and tv.project_dropout.p == 0.5
    assert tv.bottleneck.conv.weight.shape == (256, 256, 3, 3)
    assert isinstance(tv.dropout, nn.Identity)
    with pytest.raises(ValueError, match="variant"):
        ASPPHead(2048, 19, variant="paper")


def test_denseaspp_head_structure_matches_official() -> None:
    c = 2048
    head = DenseASPPHead(c, 19)
    assert [b.conv2.dilation[0] for b in head.blocks] == [3, 6, 12, 18, 24]
    assert [b.conv1.in_channels for b in head.blocks] == [c + 128 * k for k in range(5)]
    assert head.blocks[0].norm1 is None and all(b.norm1 is not None for b in head.blocks[1:])
    assert all(b.conv1.out_channels == 512 and b.conv2.out_channels == 128 for b in head.blocks)
    assert all(b.conv1.bias is not None and b.conv2.bias is not None for b in head.blocks)
    assert all(b.norm2.momentum == 0.0003 for b in head.blocks)
    assert head.conv_seg.in_channels == c + 640
    assert isinstance(head.dropout, nn.Dropout2d) and head.dropout.p == 0.1


def test_denseaspp_concatenates_newest_first() -> None:
    """Block k sees cat([out_{k-1}, ..., out_0, input]) as the official torch.cat((aspp, feature))."""
    torch.manual_seed(0)
    head = DenseASPPHead(8, 2, rates=(1, 2), mid_channels=4, growth=3).eval()
    x = torch.rand(1, 8, 9, 9)
    with torch.no_grad():
        o0 = head.blocks[0](x)
        o1 = head.blocks[1](torch.cat([o0, x], 1))
        expected = head.conv_seg(torch.cat([o1, o0, x], 1))
        assert torch.allclose(head(x), expected)


def test_fcn_head_variants() -> None:
    mm = FCNHead(2048, 19)  # mmseg fcn_r50-d8: two 3x3 convs of 512, conv_cat
    assert len(mm.convs) == 2 and mm.conv_cat.conv.weight.shape == (512, 2048 + 512, 3, 3)
    tv = FCNHead(1024, 21, variant="torchvision")
    assert tv.channels == 256 and len(tv.convs) == 1 and tv.conv_cat is None
    assert type(tv.dropout) is nn.Dropout


@pytest.mark.parametrize(("arch", "expected_m"), [("resnet50", 42.0), ("resnet101", 61.0)])
def test_param_count_matches_torchvision_deeplabv3(arch: str, expected_m: float) -> None:
    tvseg = pytest.importorskip("torchvision.models.segmentation")
    ref = getattr(tvseg, f"deeplabv3_{arch}")(
        weights=None, weights_backbone=None, aux_loss=True, num_classes=21
    )
    ours = create_model(
        "deeplabv3",
        backbone=arch,
        num_classes=21,
        aux=True,
        head_kwargs={"variant": "torchvision"},
    )
    assert _n_params(ours) == _n_params(ref)
    assert round(_n_params(ours) / 1e6, 1) == expected_m  # the number torchvision documents


class _OfficialDenseAsppBlock(nn.Sequential):
    """Transcription of DeepMotionAIResearch/DenseASPP ``models/DenseASPP.py`` ``_DenseAsppBlock``
    (``norm.1`` etc. renamed ``norm_1``: PyTorch no longer allows dots in module names)."""

    def __init__(self, input_num, num1, num2, dilation_rate, drop_out, bn_start=True) -> None:
        super().__init__()
        if bn_start:
            self.add_module("norm_1", nn.BatchNorm2d(input_num, momentum=0.0003))
        self.add_module("relu_1", nn.ReLU(inplace=True))
        self.add_module("conv_1", nn.Conv2d(input_num, num1, kernel_size=1))
        self.add_module("norm_2", nn.BatchNorm2d(num1, momentum=0.0003))
        self.add_module("relu_2", nn.ReLU(inplace=True))
        self.add_module(
            "conv_2",
            nn.Conv2d(num1, num2, kernel_size=3, dilation=dilation_rate, padding=dilation_rate),
        )
        self.drop_rate = drop_out

    def forward(self, _input):
        feature = super().forward(_input)
        return torch.nn.functional.dropout2d(feature, p=self.drop_rate, training=self.training)


def test_denseaspp_matches_a_transcription_of_the_official_code() -> None:
    torch.manual_seed(0)
    c, rates, d0, d1 = 24, (3, 6, 12, 18, 24), 16, 8
    blocks = nn.ModuleList(
        _OfficialDenseAsppBlock(c + d1 * k, d0, d1, r, 0.1, bn_start=k > 0)
        for k, r in enumerate(rates)
    )
    classification = nn.Sequential(nn.Dropout2d(p=0.1), nn.Conv2d(c + 5 * d1, 4, kernel_size=1))
    for m in blocks.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    ours = DenseASPPHead(c, 4, rates=rates, mid_channels=d0, growth=d1).eval()
    sd = {}
    for k, blk in enumerate(blocks):
        for name, t in blk.state_dict().items():
            sd[f"blocks.{k}." + name.replace("norm_", "norm").replace("conv_", "conv")] = t
    sd.update({f"conv_seg.{n}": t for n, t in classification[1].state_dict().items()})
    ours.load_state_dict(sd)  # strict
    blocks.eval()
    classification.eval()
    x = torch.randn(1, c, 53, 53)  # signed, like DenseNet's norm5 output; larger than rate 24
    with torch.no_grad():
        feature = x.clone()
        for blk in blocks:  # the official forward: torch.cat((aspp, feature), dim=1)
            feature = torch.cat((blk(feature), feature), dim=1)
        want = classification(feature)
        got = ours(x)
    assert (got - want).abs().max().item() <= 1e-5


def test_pretrained_backbone_is_loaded_from_a_local_path(tmp_path) -> None:
    from seg_backbones import create_backbone

    torch.manual_seed(1)
    src = create_backbone("resnet18", output_stride=8)
    path = tmp_path / "resnet18_backbone.pth"
    torch.save(src.state_dict(), path)
    model = create_model("fcn", backbone="resnet18", num_classes=3, pretrained_backbone=str(path))
    assert model.build_config["pretrained_backbone"] == str(path)
    for k, v in src.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v), k
