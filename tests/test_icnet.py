"""PSPNet50 (the compressed baseline) and ICNet builders against Zhao et al. 2018 (Sec. 4–6, Fig. 4, Fig. 6,
Tables 1, 2, 4)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn

from archsearch import build
from archsearch.builders import config_of, get, names, variant, variants
from archsearch.builders.icnet import CascadeFeatureFusion
from archsearch.builders.layers import SegOutput
from archsearch.builders.pspnet import PyramidPoolingSum
from archsearch.builders.resnet import scaled
from archsearch.cost import count_madds
from archsearch.util.errors import KnobError

H, W = 64, 128  # small input, 1/32-aligned
CLASSIFIERS = {"pspnet50": {"classifier", "aux.2"}, "icnet": {"cls_sub4", "cls_sub24", "cls_sub124"}}


def _convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def test_registered_prunable_with_paper_defaults() -> None:
    assert {"pspnet50", "icnet"} <= set(names())
    for name in ("pspnet50", "icnet"):
        entry = get(name)
        assert entry.prunable
        for f in entry.knob_fields():
            assert f.metadata["paper"] and f.metadata["doc"], f"{name}.{f.name} lacks its paper name"
    assert get("pspnet50").defaults() == {
        "output_stride": 8,
        "keep_rate": 1.0,
        "aux_weight": 0.4,
        "stem": "deep",
        "weights": None,
    }
    icnet = get("icnet").defaults()
    assert icnet["branches"] == "sub124" and icnet["keep_rate"] == 0.5 and icnet["loss_weights"] == [0.4, 0.4, 1.0]
    assert icnet["stem"] == "deep" and icnet["weights"] is None


def test_bad_knobs_are_rejected() -> None:
    with pytest.raises(KnobError):
        build("pspnet50", output_stride=4)
    with pytest.raises(KnobError):
        build("icnet", branches="sub12")
    with pytest.raises(KnobError):
        build("icnet", keep_rate=0.0)
    with pytest.raises(KnobError):
        build("icnet", loss_weights=[0.4, 0.4])


@pytest.mark.parametrize("stride", [8, 16, 32])
def test_pspnet_output_stride(stride: int) -> None:
    """Table 1: the feature map is at 1/8, 1/16 or 1/32; eval logits are up-sampled to the input."""
    model = build("pspnet50", num_classes=5, output_stride=stride, keep_rate=0.25)
    x = torch.randn(2, 3, H, W)
    out = model.train()(x)
    assert isinstance(out, SegOutput)
    assert out.logits.shape == (2, 5, H // stride, W // stride)
    assert [w for w, _ in out.aux] == [0.4]  # PSPNet's stage-4 auxiliary loss
    assert out.aux[0][1].shape[-2:] == (H // min(stride, 16), W // min(stride, 16))
    with torch.no_grad():
        assert model.eval()(x[:1]).shape == (1, 5, H, W)


def test_pspnet_madds_fall_with_output_stride() -> None:
    """Table 1 (variants pspnet50.os8, os16, os32): time falls from stride 8 to 32; so do the multiply-adds."""
    table1 = [variant(f"pspnet50.os{s}") for s in (8, 16, 32)]
    assert [v.knobs["output_stride"] for v in table1] == [8, 16, 32]
    assert table1[0].paper["latency_ms"] > table1[1].paper["latency_ms"] > table1[2].paper["latency_ms"]
    madds = [count_madds(build("pspnet50", output_stride=s, keep_rate=0.25), (1, 3, H, W)) for s in (8, 16, 32)]
    assert madds[0] > madds[1] > madds[2]


def test_pyramid_pooling_sums_and_uses_1x1_conv() -> None:
    """Sec. 6: summation instead of concatenation (2048 channels, not 4096), then a 1×1 (not 3×3) convolution."""
    ppm = PyramidPoolingSum()
    x = torch.full((1, 7, 12, 12), 2.0)
    assert torch.allclose(ppm(x), torch.full_like(x, 2.0 * 5))  # x plus four pooled copies of a constant map
    x = torch.randn(1, 7, 12, 12)
    expected = x + sum(
        nn.functional.interpolate(
            nn.functional.adaptive_avg_pool2d(x, b), size=(12, 12), mode="bilinear", align_corners=False
        )
        for b in (1, 2, 3, 6)
    )
    assert torch.allclose(ppm(x), expected, atol=1e-6)
    head_conv = build("pspnet50").head.conv[0]
    assert head_conv.kernel_size == (1, 1) and head_conv.in_channels == 2048 and head_conv.out_channels == 512


@pytest.mark.parametrize("name,knobs", [("pspnet50", {}), ("icnet", {"branches": "sub124"})])
@pytest.mark.parametrize("rate", [0.75, 0.5, 0.25])
def test_keep_rate_narrows_every_prunable_conv(name: str, knobs: dict, rate: float) -> None:
    """Sec. 3.2: each prunable convolution keeps round(r·C) filters; classifiers and the RGB input stay."""
    full = _convs(build(name, **knobs, keep_rate=1.0))
    narrow = _convs(build(name, **knobs, keep_rate=rate))
    assert full.keys() == narrow.keys()
    for n, conv in full.items():
        if n in CLASSIFIERS[name]:
            assert narrow[n].out_channels == conv.out_channels == 19
        else:
            assert narrow[n].out_channels == scaled(conv.out_channels, rate), n
        if conv.in_channels == 3:
            assert narrow[n].in_channels == 3


def test_icnet_default_widths_are_the_half_compressed_release() -> None:
    """Sec. 6.1 / Table 3: ICNet is built on PSPNet50 compressed by half (1024-channel stage 5, 256 after the
    pyramid pooling, 128-channel CFF outputs, a 32-32-64 high-resolution branch)."""
    model = build("icnet")
    assert model.backbone.out_channels == [128, 256, 512, 1024]
    assert model.head.out_channels == 256
    assert model.cff_sub24.conv_low.out_channels == model.cff_sub124.conv_low.out_channels == 128
    assert [m[0].out_channels for m in model.sub1] == [32, 32, 64]


@pytest.mark.parametrize(
    "branches,final_stride,aux_strides",
    [("sub4", 16, []), ("sub24", 8, [16]), ("sub124", 4, [16, 8])],
)
def test_icnet_branches_and_cascade_label_guidance(branches: str, final_stride: int, aux_strides: list[int]) -> None:
    """Table 4 settings; Sec. 4.1: guidance at 1/16, 1/8, 1/4; the final ×4 up-sampling only at test time."""
    model = build("icnet", num_classes=7, branches=branches, keep_rate=0.25)
    x = torch.randn(2, 3, H, W)
    out = model.train()(x)
    assert out.logits.shape == (2, 7, H // final_stride, W // final_stride)
    assert [w for w, _ in out.aux] == [0.4, 0.4][: len(aux_strides)]
    assert [a.shape[-1] for _, a in out.aux] == [W // s for s in aux_strides]
    with torch.no_grad():
        assert model.eval()(x[:1]).shape == (1, 7, H, W)
    has = {n for n in ("cff_sub24", "cls_sub24", "sub1", "cff_sub124", "cls_sub124") if hasattr(model, n)}
    expected = {"sub4": set(), "sub24": {"cff_sub24", "cls_sub24"}}.get(
        branches, {"cff_sub24", "cls_sub24", "sub1", "cff_sub124", "cls_sub124"}
    )
    assert has == expected


def test_icnet_branch_settings_share_module_names() -> None:
    """The same modules carry the same names in every setting, so weights move between settings."""
    keys = [set(build("icnet", branches=b, keep_rate=0.25).state_dict()) for b in ("sub4", "sub24", "sub124")]
    assert keys[0] < keys[1] < keys[2]


def _input_sizes(model: nn.Module, x: torch.Tensor, modules: dict[str, nn.Module]) -> dict[str, list[tuple]]:
    seen: dict[str, list[tuple]] = {n: [] for n in modules}
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, n=n: seen[n].append(tuple(inp[0].shape[-2:])))
        for n, m in modules.items()
    ]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return seen


def test_icnet_resolutions_and_shared_computation() -> None:
    """Fig. 4: 1/4 input through the top branch to 1/32; the 1/2 input through the shared first layers to 1/16
    (computed once: SWC); three stride-2 convolutions on the full input to 1/8."""
    x = torch.randn(1, 3, 128, 256)
    sub124 = build("icnet", keep_rate=0.25)
    b = sub124.backbone
    seen = _input_sizes(
        sub124,
        x,
        {
            "stem": b.conv1,
            "unit3_1": b.layer2[0],
            "unit3_2": b.layer2[1],
            "stage4": b.layer3,
            "sub1": sub124.sub1,
            "cff24": sub124.cff_sub24.proj_high,
            "cff124": sub124.cff_sub124.proj_high,
        },
    )
    assert seen["stem"] == [(64, 128)]  # the 1/2 input, once
    assert seen["unit3_1"] == [(16, 32)]  # 1/8 of the full input in, 1/16 out
    assert seen["unit3_2"] == [(4, 8)]  # the top branch goes on from the 1/16 map down-sampled to 1/32
    assert seen["stage4"] == [(4, 8)]  # dilated: stays at 1/32
    assert seen["sub1"] == [(128, 256)]
    assert seen["cff24"] == [(8, 16)] and seen["cff124"] == [(16, 32)]  # F2 at 1/16 and 1/8
    sub4 = build("icnet", branches="sub4", keep_rate=0.25)
    seen = _input_sizes(sub4, x, {"stem": sub4.backbone.conv1, "stage4": sub4.backbone.layer3})
    assert seen == {"stem": [(32, 64)], "stage4": [(4, 8)]}  # the 1/4 input straight through


def test_cascade_feature_fusion_unit() -> None:
    """Fig. 6: up-sample F1 ×2, 3×3 dilated conv + BN, 1×1 projection of F2 + BN, sum, ReLU."""
    torch.manual_seed(0)
    cff = CascadeFeatureFusion(6, 4, 5, dilation=2).eval()
    assert cff.conv_low.dilation == (2, 2) and cff.conv_low.kernel_size == (3, 3)
    assert cff.proj_high.kernel_size == (1, 1)
    f1, f2 = torch.randn(1, 6, 4, 8), torch.randn(1, 4, 8, 16)
    fused, up = cff(f1, f2)
    ref_up = nn.functional.interpolate(f1, size=(8, 16), mode="bilinear", align_corners=False)
    ref = torch.relu(cff.bn_low(cff.conv_low(ref_up)) + cff.bn_high(cff.proj_high(f2)))
    assert up.shape == (1, 6, 8, 16) and torch.allclose(up, ref_up)
    assert fused.shape == (1, 5, 8, 16) and torch.allclose(fused, ref)


def test_loss_weights_give_eq1() -> None:
    """Eq. 1: L = λ1 L1 + λ2 L2 + λ3 L3 with the training loop's main-weight-1 convention."""
    from archsearch.training.train import segmentation_loss

    torch.manual_seed(0)
    x = torch.randn(2, 3, H, W)
    labels = torch.randint(0, 19, (2, H, W))
    weights = (0.3, 0.6, 1.5)
    model = build("icnet", keep_rate=0.25, loss_weights=list(weights)).train()
    torch.manual_seed(1)
    out = model(x)
    # issue 10: each term against the ground truth at its own resolution (1/16, 1/8, 1/4; nearest), as Sec. 4.1
    # says, no longer full-resolution labels under up-sampled logits
    ce = [
        nn.functional.cross_entropy(
            t, nn.functional.interpolate(labels[:, None].float(), size=t.shape[-2:], mode="nearest")[:, 0].long()
        )
        for t in (out.aux[0][1], out.aux[1][1], out.logits)
    ]
    expected = sum(w * c for w, c in zip(weights, ce, strict=False))
    assert torch.allclose(segmentation_loss(out, labels, 255), expected, rtol=1e-5)


def test_madds_scale_exactly_with_pixels() -> None:
    """Counting at a reduced, 1/32-aligned input and scaling by the pixel ratio equals the direct count."""
    for name in ("pspnet50", "icnet"):
        model = build(name, keep_rate=0.25)
        assert count_madds(model, (1, 3, 2 * H, 2 * W)) == 4 * count_madds(model, (1, 3, H, W))


def test_table4_variants() -> None:
    """Table 4's settings are icnet's named variants, on PSPNet50 compressed by half (pspnet50.os8_keep050)."""
    table4 = variants("icnet")
    assert [v.qualname for v in table4] == ["icnet.sub4_keep050", "icnet.sub24_keep050", "icnet.sub124_keep050"]
    assert [(v.knobs["branches"], v.knobs["keep_rate"]) for v in table4] == [
        (b, 0.5) for b in ("sub4", "sub24", "sub124")
    ]
    base = variant("pspnet50.os8_keep050")
    assert dict(base.knobs) == {"output_stride": 8, "keep_rate": 0.5}
    for v in table4:  # the paper's speed-ups are its times' ratios to the baseline's (rounded to 0.1)
        assert v.paper["speedup_x"] == pytest.approx(base.paper["latency_ms"] / v.paper["latency_ms"], abs=0.05)
        assert v.paper["fps"] == pytest.approx(1000 / v.paper["latency_ms"], rel=0.01)
    model = build("icnet.sub124_keep050")
    assert config_of(model).variant == "icnet.sub124_keep050" and config_of(model).knobs == get("icnet").resolve({})


def test_icnet_cheaper_than_compressed_pspnet_by_at_least_table4_speedups() -> None:
    """Table 4: sub4, sub24, sub124 run ``speedup_x`` times faster than PSPNet50 compressed by half; their
    multiply-adds are at least that much lower (time on a GPU falls less than the operations)."""
    base = count_madds(build("pspnet50.os8_keep050"), (1, 3, H, W))
    madds = {v.qualname: count_madds(build(v.qualname), (1, 3, H, W)) for v in variants("icnet")}
    for v in variants("icnet"):
        assert base / madds[v.qualname] >= v.paper["speedup_x"], v.qualname
    assert madds["icnet.sub4_keep050"] < madds["icnet.sub24_keep050"] < madds["icnet.sub124_keep050"]


def test_knob_dataclasses_are_frozen() -> None:
    k = get("icnet").resolve({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        k.branches = "sub4"  # type: ignore[misc]
