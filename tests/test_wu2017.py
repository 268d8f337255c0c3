"""Wu et al. (2017): unit removal, SharpMask-like FCN, fusions, spatial sparsity, ISCTF, fast inference, paper costs.

Paper costs are at 1024×2048. FCN costs scale exactly with pixel count, so they are counted at 128×256 (or 64×128)
with 32-pixel regions, which keeps the 4×8 region grid of 256-pixel regions at 1024×2048;
``test_madds_scale_with_pixels`` and ``test_scaled_count_equals_the_direct_count_at_1024x2048`` show the scaled
count equals the direct count.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import warnings
from pathlib import Path

import pytest
import torch

import archsearch
from archsearch.builders import get, variant
from archsearch.builders.layers import SegOutput
from archsearch.builders.resnet import ResNet50
from archsearch.builders.wu2017.sparsity import (
    SparsityPenalty,
    crop_regions,
    regions_to_keep,
    top_regions,
    uncrop_regions,
)
from archsearch.cost import count_madds
from archsearch.util.errors import KnobError

ROOT = Path(__file__).resolve().parents[1]
FULL = [3, 4, 6, 3]
SMALL = {"region_size": 32}  # at 128×256: the 4×8 grid of 256-pixel regions at 1024×2048
TINY = {"units_full": [1, 1, 1, 0], "units_half": [1, 1, 1, 1], "region_size": 32}

warnings.filterwarnings("ignore", message=".*Converting a tensor to a Python.*")


@functools.cache
def _madds(builder: str, size: tuple[int, int], knobs_json: str, convention: str) -> int:
    torch.manual_seed(0)
    model = archsearch.build(builder, **json.loads(knobs_json))
    pixels, scale = size[0] * size[1], 1024 * 2048 // (size[0] * size[1])
    assert scale * pixels == 1024 * 2048
    return count_madds(model, (1, 3, *size), convention=convention) * scale


def madds(builder: str, size: tuple[int, int] = (128, 256), convention: str = "wu2017", **knobs: object) -> int:
    """Multiply-adds at 1024×2048 as the paper counts them, counted at ``size`` and scaled by the pixel ratio."""
    return _madds(builder, size, json.dumps(knobs, sort_keys=True), convention)


def close(ours: float, paper: float, tol: float) -> bool:
    return abs(ours / paper - 1.0) <= tol


def paper_madds(qualname: str) -> float:
    """The multiply-adds the paper reports for the registered variant ``qualname`` (written once, in the builder)."""
    return variant(qualname).paper["madds"]


# -- knobs ----------------------------------------------------------------------------------------------------
def test_knobs_document_paper_names_and_defaults() -> None:
    entry = get("sparse_two_column")
    for f in entry.knob_fields():
        assert f.metadata["paper"] and f.metadata["doc"], f.name
    d = entry.defaults()
    assert (d["p"], d["lam"], d["region_size"], d["sparsity"]) == (0.25, 0.001, 256, "kl")  # Sec. 4.4
    assert (d["fusion"], d["inference"], d["optimized_head"]) == ("isctf", "fast", True)
    assert (d["units_full"], d["units_half"]) == ([1, 1, 2, 0], [1, 2, 4, 1])  # Model A
    fields = {f.name: f for f in entry.knob_fields()}
    assert fields["lam"].metadata["paper"] == "λ"
    assert fields["p"].metadata["paper"] == "p (target active probability)"
    assert get("sharpmask_fcn").defaults()["output_stride"] == 32


@pytest.mark.parametrize(
    "knobs",
    [
        {"units_full": [0, 1, 1, 1]},  # only stage 5 may go
        {"units_half": [1, 5, 1, 1]},  # stage 3 has 4 units
        {"fusion": "ctf", "columns": [1.0, 2.0], "inference": "classic"},
        {"fusion": "max", "columns": [0.5, 1.0]},  # fast inference needs a sparse fusion
        {"region_size": 48},
        {"columns": [1.0, 0.5], "fusion": "max", "inference": "classic"},
    ],
)
def test_invalid_knobs_are_rejected(knobs: dict) -> None:
    with pytest.raises(KnobError):
        get("sparse_two_column").resolve(knobs)


def test_regions_to_keep_matches_table3() -> None:
    # Table 3 "Computed": p = 0.5, 0.4, 0.25, 0.2, 0.13 → 16, 12, 8, 6, 4 of 32; p = 0.5 → 64 of 128.
    assert [regions_to_keep(p, 32) for p in (0.5, 0.4, 0.25, 0.2, 0.13)] == [16, 12, 8, 6, 4]
    assert regions_to_keep(0.5, 128) == 64 and regions_to_keep(0.25, 2) == 1


# -- item 1: unit removal and weights ---------------------------------------------------------------------------
@pytest.mark.slow
def test_unit_removal_structure() -> None:
    model = archsearch.build("sparse_two_column", units_full=[1, 1, 2, 0], units_half=[1, 2, 4, 1])
    half, full = model.columns
    assert [len(getattr(full.backbone, f"layer{i}")) for i in (1, 2, 3)] == [1, 1, 2]
    assert full.backbone.layer4 is None and full.top is None  # stage 5 and the 1×1 layer on it are gone
    assert [len(getattr(half.backbone, f"layer{i}")) for i in (1, 2, 3, 4)] == [1, 2, 4, 1]
    assert half.backbone.layer3[0].downsample is not None  # the kept unit is the non-identity one
    # He et al.'s ResNet-50: the stride sits on the first 1×1 of stages 3–5 (the paper's Table 1 costs).
    assert half.backbone.layer2[0].conv1.stride == (2, 2) and half.backbone.layer2[0].conv2.stride == (1, 1)
    tv = archsearch.build("sharpmask_fcn", stride_in_1x1=False).column.backbone.layer2[0]
    assert tv.conv1.stride == (1, 1) and tv.conv2.stride == (2, 2)


@pytest.fixture(scope="module")
def torchvision_state(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A random state dict in torchvision's ResNet-50 key layout (conv1, bn1, layer1.0.conv1, …, fc)."""
    g = torch.Generator().manual_seed(1)
    layout = ResNet50().state_dict()
    state = {k: torch.rand(v.shape, generator=g) if v.is_floating_point() else v for k, v in layout.items()}
    state["fc.weight"] = torch.rand(1000, 2048, generator=g)
    state["fc.bias"] = torch.rand(1000, generator=g)
    path = tmp_path_factory.mktemp("weights") / "resnet50.pth"
    torch.save(state, path)
    return path, state


@pytest.mark.slow
def test_weights_load_skipping_removed_units(torchvision_state: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, state = torchvision_state
    model = archsearch.build("sparse_two_column", units_full=[1, 1, 2, 0], units_half=[1, 2, 4, 1], weights=str(path))
    half, full = model.columns
    for col in (half, full):
        own = col.backbone.state_dict()
        for key, value in own.items():
            assert torch.equal(value, state[key]), key  # every kept tensor comes from the file
    assert "layer3.2.conv1.weight" not in full.backbone.state_dict()  # removed unit skipped
    assert "layer4.0.conv1.weight" not in full.backbone.state_dict()
    assert torch.equal(half.backbone.layer4[0].conv2.weight, state["layer4.0.conv2.weight"])
    single = archsearch.build("sharpmask_fcn", units=[2, 1, 1, 1], weights=str(path))
    assert torch.equal(single.column.backbone.layer1[1].bn2.running_var, state["layer1.1.bn2.running_var"])


# -- items 2–4: outputs in train and eval mode ------------------------------------------------------------------
SPACE_EXTREMES = [([1, 1, 1, 0], [1, 1, 1, 0]), ([3, 4, 6, 3], [3, 4, 6, 3])]  # spaces/unit_removal.yaml's bounds


@pytest.mark.slow
@pytest.mark.parametrize("units_full,units_half", [*SPACE_EXTREMES, ([1, 1, 2, 0], [1, 2, 4, 1])])
def test_unit_removal_space_patterns_build_and_train(units_full: list[int], units_half: list[int]) -> None:
    torch.manual_seed(0)
    model = archsearch.build("sparse_two_column", units_full=units_full, units_half=units_half, region_size=32)
    model.train()
    x = torch.randn(2, 3, 64, 48)
    out = model(x)
    assert isinstance(out, SegOutput)
    assert out.logits.shape == (2, 19, 16, 12)
    assert len(out.aux) == 2 and all(a.shape == out.logits.shape for _, a in out.aux)
    assert out.penalty is not None and out.penalty.ndim == 0
    loss = out.logits.mean() + sum(w * a.mean() for w, a in out.aux) + out.penalty
    loss.backward()
    assert model.sparse_weight.conv.weight.grad is not None
    model.eval()
    with torch.no_grad():
        y = model(x)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 19, 16, 12)


@pytest.mark.slow
@pytest.mark.parametrize(
    "knobs",
    [
        {"columns": [0.25, 0.5, 1.0], "fusion": "max", "inference": "classic"},
        {"columns": [1.0, 2.0], "fusion": "sum", "inference": "classic"},
        {"fusion": "attention", "inference": "classic"},
        {"fusion": "ctf", "inference": "classic"},
        {"fusion": "sctf", "sparsity": "wta"},
        {"fusion": "isctf", "optimized_head": False, "estimate": "location"},
        {"columns": [1.0], "fusion": "max", "inference": "classic"},
    ],
)
def test_fusions_train_and_eval(knobs: dict) -> None:
    torch.manual_seed(0)
    model = archsearch.build("sparse_two_column", **{**TINY, **knobs})
    x = torch.randn(2, 3, 70, 100)  # not a multiple of the region grid: padded and cropped back
    out = model.train()(x)
    assert isinstance(out, SegOutput) and out.logits.shape == (2, 19, 18, 25)
    columns = knobs.get("columns", [0.5, 1.0])
    assert len(out.aux) == (len(columns) if len(columns) > 1 else 0)  # one extra loss per column (Fig. 4)
    sparse_kl = knobs.get("fusion") in ("sctf", "isctf") and knobs.get("sparsity", "kl") == "kl"
    assert (out.penalty is not None) == sparse_kl
    with torch.no_grad():
        y = model.eval()(x)
    assert y.shape == (2, 19, 18, 25) and torch.isfinite(y).all()


@pytest.mark.slow
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_sharpmask_fcn_quarter_resolution(output_stride: int) -> None:
    model = archsearch.build("sharpmask_fcn", output_stride=output_stride, units=[1, 1, 1, 1]).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 3, 64, 96))
    assert y.shape == (1, 19, 16, 24)
    head = model.column
    dilations = [head.top[0].dilation[0]] + [m[0].dilation[0] for m in head.hidden.values()]
    assert dilations == {8: [12], 16: [6, 12], 32: [3, 6, 12]}[output_stride]  # 2·d·stride + 1 = 193 ≈ 200
    assert head.classifier.kernel_size == ((3, 3) if output_stride == 8 else (1, 1))


# -- item 4: sparsity ------------------------------------------------------------------------------------------
def test_sparsity_penalty_eq1_to_eq4() -> None:
    s = torch.tensor([[[0.0, 2.0], [-1.0, 1.0]], [[3.0, -2.0], [0.5, 0.0]]], requires_grad=True)
    pen = SparsityPenalty(p=0.25, lam=0.001, alpha=0.9, estimate="image")
    r = torch.sigmoid(s.detach()).mean(dim=(1, 2))  # Eq. 4
    q = 0.9 * 0.25 + 0.1 * r  # Eq. 2 with q_old = p
    expected = 0.001 * (-0.25 * q.log() - 0.75 * (1 - q).log()).mean()  # Eq. 1
    value = pen(s)
    assert torch.allclose(value, expected)
    assert torch.allclose(pen.q, q.mean().reshape(1))  # the moving average lives in a buffer
    assert "q" in pen.state_dict()
    value.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    loc = SparsityPenalty(p=0.25, lam=0.001, estimate="location")
    loc(s.detach())
    assert loc.q_location.shape == (2, 2)  # Eq. 3: one q per region location
    assert torch.allclose(loc.q_location, 0.9 * 0.25 + 0.1 * torch.sigmoid(s.detach()).mean(0))


def test_penalty_pulls_q_towards_p() -> None:
    pen = SparsityPenalty(p=0.25, lam=1.0)
    s = torch.zeros(4, 4, 8, requires_grad=True)  # sigmoid = 0.5 > p: the gradient lowers s
    pen(s).backward()
    assert (s.grad > 0).all()


@pytest.mark.slow
def test_wta_keeps_top_regions_without_penalty() -> None:
    s = torch.randn(3, 4, 8)
    mask = top_regions(s, 8)
    assert mask.sum(dim=(1, 2)).tolist() == [8, 8, 8]
    assert (s[mask].view(3, 8).min(1).values >= s.masked_fill(mask, -1e9).view(3, -1).max(1).values).all()
    model = archsearch.build("sparse_two_column", **TINY, sparsity="wta").train()
    assert model(torch.randn(1, 3, 128, 256)).penalty is None


def test_crop_uncrop_roundtrip() -> None:
    x = torch.randn(2, 3, 64, 128)
    crops = crop_regions(x, 32)
    assert crops.shape == (16, 3, 32, 32)
    assert torch.equal(crops[5], x[0, :, 32:64, 32:64])  # row-major: region (1, 1) of image 0
    assert torch.equal(uncrop_regions(crops, 2, (2, 4)), x)
    index = torch.tensor([1, 9])
    part = uncrop_regions(crops[index], 2, (2, 4), index)
    assert torch.equal(part[1, :, :32, 32:64], x[1, :, :32, 32:64]) and part[0, :, :32, :32].abs().sum() == 0


# -- items 5 and 6: ISCTF classic == fast; fast skips work ----------------------------------------------------------
def _backbone_batches(model: torch.nn.Module) -> list[int]:
    seen: list[int] = []
    model.columns[1].backbone.conv1.register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("optimized_head", [True, False])
def test_isctf_classic_and_fast_inference_agree(optimized_head: bool) -> None:
    torch.manual_seed(0)
    model = archsearch.build("sparse_two_column", **TINY, optimized_head=optimized_head, p=0.25).eval()
    seen = _backbone_batches(model)
    x = torch.randn(2, 3, 120, 250)  # padded to 128×256: a 4×8 grid of 32-pixel regions, as 256 at 1024×2048
    with torch.no_grad():
        model.inference = "classic"
        classic = model(x)
        model.inference = "fast"
        fast = model(x)
        mask = torch.zeros(2, 4, 8, dtype=torch.bool)
        mask[0, 0, :3] = True
        mask[1, 2:, 5:] = True  # a different number of regions per image
        fast_mask = model(x, mask)
        model.inference = "classic"
        classic_mask = model(x, mask)
    assert torch.allclose(classic, fast, atol=1e-5, rtol=0)
    assert torch.allclose(classic_mask, fast_mask, atol=1e-5, rtol=0)
    assert not torch.allclose(classic, classic_mask, atol=1e-3)
    # classic runs the full-resolution backbone on every region, fast on the top 8 of 32 per image (batched)
    assert seen == [2 * 32, 2 * 8, 3 + 6, 2 * 32]


@pytest.mark.slow
def test_sctf_fast_inference_has_the_boundary_problem() -> None:
    torch.manual_seed(0)
    model = archsearch.build("sparse_two_column", **TINY, fusion="sctf", inference="classic").eval()
    x = torch.randn(1, 3, 128, 256)
    with torch.no_grad():
        classic = model(x)
        model.inference = "fast"
        fast = model(x)
    assert (
        classic - fast
    ).abs().max() > 1e-3  # Table 3: SCTF loses mIoU with fast inference (variants sctf, sctf_fast_p050)


def test_skipped_regions_take_the_half_resolution_prediction() -> None:
    torch.manual_seed(0)
    model = archsearch.build("sparse_two_column", **TINY).eval()
    x = torch.randn(1, 3, 128, 256)
    mask = torch.zeros(1, 4, 8, dtype=torch.bool)
    mask[0, 1, 2] = True
    with torch.no_grad():
        before = model(x, mask)
        model.columns[1].classifier.bias.add_(5.0)  # change only the full-resolution column's scores
        after = model(x, mask)
    changed = (before - after).abs().amax(dim=1)[0] > 1e-6  # (32, 64) at 1/4 resolution
    expected = torch.zeros(32, 64, dtype=torch.bool)
    expected[8:16, 16:24] = True  # region (1, 2): 32 pixels → 8 at quarter resolution
    assert torch.equal(changed, expected)


# -- item 7: paper multiply-add checks ----------------------------------------------------------------------------
# The paper's "multiplication-adds" (Sec. 4) are reproduced by convolutions only, without the four projection-shortcut
# 1×1 convolutions of each ResNet-50 (convention "wu2017"), with the 1×1 jump layers of the full column run on the
# uncropped map and 3×3 cross-column connections (``archsearch.builders.wu2017``). Every row below is within 0.6% of
# the paper. The paper's numbers are read from the registered variants (``paper_madds``), where each is written once.
TOL = 0.01
PLAIN = {"units_full": FULL, "units_half": FULL, "optimized_head": False}


@pytest.mark.slow
def test_madds_scale_with_pixels() -> None:
    """The reduced-input count times the pixel ratio equals the direct count (here 128×256 vs 256×512)."""
    small = madds("sparse_two_column", (128, 256), **TINY)
    direct = madds("sparse_two_column", (256, 512), units_full=[1, 1, 1, 0], units_half=[1, 1, 1, 1], region_size=64)
    assert small == pytest.approx(direct, rel=1e-9)
    assert madds("sharpmask_fcn", (64, 128), units=[1, 1, 1, 1]) == pytest.approx(
        madds("sharpmask_fcn", (128, 256), units=[1, 1, 1, 1]), rel=1e-9
    )


@pytest.mark.slow
def test_scaled_count_equals_the_direct_count_at_1024x2048() -> None:
    """Model A with fast inference, as the Table 4/5 tests count it (128×256, 32-pixel regions) and as the paper
    does (1024×2048, 256-pixel regions): the same multiply-adds."""
    direct = count_madds(archsearch.build("sparse_two_column"), (1, 3, 1024, 2048), convention="wu2017")
    assert madds("sparse_two_column", **SMALL) == direct
    assert close(direct, paper_madds("sparse_two_column.model_a"), TOL)


@pytest.mark.slow
def test_wu2017_convention_leaves_out_the_projection_shortcuts_only() -> None:
    ours = madds("sharpmask_fcn", (64, 128))
    plain = madds("sharpmask_fcn", (64, 128), convention="conv_linear")
    table1 = paper_madds("sharpmask_fcn.os32")
    assert close(ours, table1, TOL) and not close(plain, table1, 0.05)  # with the shortcuts: 179.9g, +9%
    # the four 1×1 shortcuts of ResNet-50 (stride on the 1×1) at 1024×2048: 256·64 at 1/4, 512·256, 1024·512,
    # 2048·1024 at 1/8, 1/16, 1/32
    pixels = 1024 * 2048
    shortcuts = pixels * (256 * 64 / 16 + 512 * 256 / 64 + 1024 * 512 / 256 + 2048 * 1024 / 1024)
    assert plain - ours == pytest.approx(shortcuts, rel=1e-9)


TABLE1 = [(8, "sharpmask_fcn.os8"), (16, "sharpmask_fcn.os16"), (32, "sharpmask_fcn.os32")]


@pytest.mark.parametrize("output_stride,paper", TABLE1)
def test_table1_madds(output_stride: int, paper: str) -> None:
    assert close(madds("sharpmask_fcn", (64, 128), output_stride=output_stride), paper_madds(paper), TOL)


# (columns, fusion, the paper's row). Classic inference, every unit, the plain head; SCTF/ISCTF at p = 0.5.
TABLE2 = [
    ((0.5, 1.0), "max", "max"),
    ((0.25, 0.5, 1.0), "max", "max_quarter"),
    ((1.0, 2.0), "max", "max_double"),
    ((0.5, 1.0, 2.0), "max", "max_half_double"),
    ((0.5, 1.0), "sum", "sum"),
    ((0.5, 1.0), "attention", "attention"),
    ((0.5, 1.0), "ctf", "ctf"),
    ((0.5, 1.0), "sctf", "sctf"),
    ((0.5, 1.0), "isctf", "isctf"),  # +6g: the 3×3 cross-column connections
]


@pytest.mark.slow
@pytest.mark.parametrize("columns,fusion,paper", TABLE2)
def test_table2_madds(columns: tuple[float, ...], fusion: str, paper: str) -> None:
    size = (128, 256) if 0.25 in columns or fusion in ("sctf", "isctf") else (64, 128)  # 1/4× column; 4×8 grid
    ours = madds(
        "sparse_two_column", size, **PLAIN, columns=list(columns), fusion=fusion, inference="classic", p=0.5, **SMALL
    )
    assert close(ours, paper_madds(f"sparse_two_column.{paper}"), TOL), (columns, fusion, ours / 1e9)


# (fusion, sparsity, p, region size at 1024×2048, the paper's row). Fast inference, every unit, the plain head.
TABLE3 = [
    ("sctf", "kl", 0.5, 256, "sctf_fast_p050"),
    ("isctf", "wta", 0.25, 256, "isctf_wta_p025"),
    ("isctf", "wta", 0.4, 256, "isctf_wta_p040"),
    ("isctf", "wta", 0.5, 256, "isctf_wta_p050"),
    ("isctf", "kl", 0.13, 256, "isctf_fast_p013"),
    ("isctf", "kl", 0.2, 256, "isctf_fast_p020"),
    ("isctf", "kl", 0.25, 256, "isctf_fast_p025"),
    ("isctf", "kl", 0.4, 256, "isctf_fast_p040"),
    ("isctf", "kl", 0.5, 256, "isctf_fast_p050"),  # λ = 0.0001, 0.001, 0.01: the same network
    ("isctf", "kl", 0.5, 128, "isctf_fast_p050_region128"),  # 64/128 regions
]


@pytest.mark.slow
@pytest.mark.parametrize("fusion,sparsity,p,region,paper", TABLE3)
def test_table3_madds(fusion: str, sparsity: str, p: float, region: int, paper: str) -> None:
    size = (128, 256) if region == 256 else (256, 512)  # 32-pixel regions keep the 4×8 (8×16) grid
    ours = madds("sparse_two_column", size, **PLAIN, fusion=fusion, sparsity=sparsity, p=p, region_size=32)
    assert close(ours, paper_madds(f"sparse_two_column.{paper}"), TOL), (fusion, p, region, ours / 1e9)


@pytest.mark.slow
def test_table3_fast_inference_skips_exactly_the_backbone_of_skipped_regions() -> None:
    """Fast inference counts what runs: classic minus fast is (32 − k)/32 of the full column's backbone."""
    isctf = {**PLAIN, "fusion": "isctf", **SMALL}
    classic = madds("sparse_two_column", inference="classic", **isctf)
    backbone = (
        count_madds(
            archsearch.build("sparse_two_column", **isctf).columns[1].backbone, (1, 3, 128, 256), convention="wu2017"
        )
        * 64
    )
    for p, k in ((0.13, 4), (0.25, 8), (0.5, 16)):
        fast = madds("sparse_two_column", inference="fast", p=p, **isctf)
        assert classic - fast == pytest.approx((32 - k) / 32 * backbone, rel=1e-9), k
    # the paper: 4.54g per region (from 4/32 to 16/32 regions computed); 146g for the backbone at 1024×2048
    fast_16, fast_4 = paper_madds("sparse_two_column.isctf_fast_p050"), paper_madds("sparse_two_column.isctf_fast_p013")
    per_region = (fast_16 - fast_4) / 12
    assert close(backbone / 32, per_region, TOL)


# (units_full, units_half, paper row). ISCTF, p = 0.25, λ = 0.001, 256-pixel regions, optimized head, fast inference.
TABLE4 = [
    (FULL, FULL, "none_removed"),
    ([1, 1, 1, 0], [2, 3, 4, 1], "units_1110_2341"),
    ([1, 1, 1, 0], [1, 2, 5, 2], "units_1110_1252"),
    ([1, 1, 2, 0], [1, 2, 4, 1], "model_a"),
    ([1, 1, 1, 1], [1, 2, 4, 1], "units_1111_1241"),
    ([1, 1, 1, 0], [1, 2, 4, 1], "units_1110_1241"),
    ([1, 1, 1, 0], [1, 1, 3, 1], "units_1110_1131"),  # also the model trained from scratch
]


@pytest.mark.slow
@pytest.mark.parametrize("units_full,units_half,paper", TABLE4)
def test_table4_unit_removal_madds(units_full: list[int], units_half: list[int], paper: str) -> None:
    ours = madds("sparse_two_column", units_full=units_full, units_half=units_half, **SMALL)
    assert close(ours, paper_madds(f"sparse_two_column.{paper}"), TOL), (units_full, units_half, ours / 1e9)


@pytest.mark.slow
def test_table4_order_of_model_a_and_1_1_1_1() -> None:
    """The paper lists 1-1-1-1 (Table 4 row 5) below Model A 1-1-2-0 (row 4): a stage-5 unit without its shortcut costs
    less than a stage-4 unit. Counting the shortcut (conv_linear) reverses the order."""
    a = {"units_full": [1, 1, 2, 0], "units_half": [1, 2, 4, 1], **SMALL}
    b = {"units_full": [1, 1, 1, 1], "units_half": [1, 2, 4, 1], **SMALL}
    assert madds("sparse_two_column", **b) < madds("sparse_two_column", **a)
    assert madds("sparse_two_column", **b, convention="conv_linear") > madds(
        "sparse_two_column", **a, convention="conv_linear"
    )


@pytest.mark.slow
def test_table5_ablation_costs_and_deltas() -> None:
    """Table 5: single column → max → SCTF → ISCTF → fast inference → optimized head → Model A,
    with the paper's step Δ and overall Δ (from SCTF) within half a percentage point."""
    steps = [
        madds("sharpmask_fcn", (64, 128), output_stride=8),
        madds("sparse_two_column", (64, 128), **PLAIN, fusion="max", inference="classic"),
        madds("sparse_two_column", **PLAIN, fusion="sctf", p=0.5, inference="classic", **SMALL),
        madds("sparse_two_column", **PLAIN, fusion="isctf", inference="classic", **SMALL),
        madds("sparse_two_column", **PLAIN, **SMALL),
        madds("sparse_two_column", units_full=FULL, units_half=FULL, **SMALL),
        madds("sparse_two_column", **SMALL),
    ]
    rows = (
        "sharpmask_fcn.os8",
        "sparse_two_column.max",
        "sparse_two_column.sctf",
        "sparse_two_column.isctf",
        "sparse_two_column.isctf_fast_p025",
        "sparse_two_column.none_removed",
        "sparse_two_column.model_a",
    )
    for ours, row in zip(steps, rows, strict=True):
        assert close(ours, paper_madds(row), TOL), (ours / 1e9, row)
    sctf = steps[2]
    # Model A's Δ is against the optimized model (the bootstrapping and coarse-set rows change no cost)
    for i, (step, overall) in zip(
        range(3, 7), ((2.9, 2.9), (-51.4, -50.0), (-25.2, -62.6), (-59.0, -84.7)), strict=False
    ):
        assert 100 * (steps[i] / steps[i - 1] - 1) == pytest.approx(step, abs=0.5), i
        assert 100 * (steps[i] / sctf - 1) == pytest.approx(overall, abs=0.5), i
    # "approximately 25 times less"
    assert steps[0] / steps[6] == pytest.approx(paper_madds(rows[0]) / paper_madds(rows[6]), rel=TOL)


# -- item 9: spaces and studies -------------------------------------------------------------------------------------
def test_spaces_and_studies_load() -> None:
    from archsearch.spec import load

    space = load(ROOT / "spaces" / "unit_removal.yaml")
    assert space.builder == "sparse_two_column" and set(space.knobs) == {"units_full", "units_half"}
    assert {k: space.fixed[k] for k in ("fusion", "p", "lam", "region_size", "optimized_head", "inference")} == {
        "fusion": "isctf",
        "p": 0.25,
        "lam": 0.001,
        "region_size": 256,
        "optimized_head": True,
        "inference": "fast",
    }
    lows = [d["int"][0] for d in space.knobs["units_full"]["each"]]
    assert lows[3] == 0  # stage 5 may be removed
    assert [o.name for o in space.objectives] == ["miou", "latency_ms"]
    assert set(load(ROOT / "spaces" / "spatial_sparsity.yaml").knobs) == {"p", "lam", "region_size", "sparsity"}
    for i in range(1, 5):
        study = load(ROOT / "studies" / f"wu2017_table{i}.yaml")
        assert study.rows and all("madds" in r["paper"] and "miou_pct" in r["paper"] for r in study.rows)
        assert all(r["paper"] == dict(variant(r["variant"]).paper) for r in study.rows)  # numbers from the registry
    assert dataclasses.is_dataclass(space) and math.isclose(space.fixed["lam"], 0.001)
    wu_specs = [
        *(ROOT / "studies").glob("wu2017_table*.yaml"),
        ROOT / "spaces" / "unit_removal.yaml",
        ROOT / "spaces" / "spatial_sparsity.yaml",
    ]
    assert len(wu_specs) == 6 and all(load(p).target.madds_convention == "wu2017" for p in wu_specs)


@pytest.mark.slow
def test_trial_profile_counts_in_the_specs_convention() -> None:
    from archsearch.search import trial
    from archsearch.spec import load

    spec = load(
        ROOT / "studies" / "wu2017_table1.yaml",
        ["target.input=[1,3,64,128]", "target.warmup=0", "target.repeats=1", "target.device=cpu"],
    )
    model = archsearch.build("sharpmask_fcn", units=[1, 1, 1, 1])
    cost = trial.profile(model, spec, torch.device("cpu"))
    assert cost["madds"] == count_madds(model, (1, 3, 64, 128), convention="wu2017")
    assert cost["madds"] < count_madds(model, (1, 3, 64, 128))  # the shortcuts are left out


def test_penalty_gradient_is_q_minus_p_per_region() -> None:
    """Reference [12]: d(penalty)/ds = λ·(q − p) per region logit (1/N of the batch mean), not Eq. 2's
    (1 − α)·…/(H·W)."""
    s = torch.randn(3, 4, 8, requires_grad=True)
    pen = SparsityPenalty(p=0.25, lam=0.01, alpha=0.9, estimate="image")
    q = 0.9 * 0.25 + 0.1 * torch.sigmoid(s.detach()).mean(dim=(1, 2))
    pen(s).backward()
    assert torch.allclose(s.grad, (0.01 * (q - 0.25) / 3)[:, None, None].expand(3, 4, 8))
    loc = SparsityPenalty(p=0.25, lam=0.01, estimate="location")
    s.grad = None
    loc(s).backward()
    q_loc = 0.9 * 0.25 + 0.1 * torch.sigmoid(s.detach()).mean(0)
    assert torch.allclose(s.grad, (0.01 * (q_loc - 0.25) / 3)[None].expand(3, 4, 8))


@pytest.mark.parametrize("p", [0.15, 0.75])
def test_penalty_steers_the_active_probability_to_p(p: float) -> None:
    """On synthetic scenes, the sparse weight trained with the penalty alone reaches a mean active probability
    within 0.05 of p; the literal derivative of Eq. 1 through Eq. 2, at the same λ and step, does not get there."""
    from archsearch.builders.wu2017.sparsity import SparseWeight
    from archsearch.data import synthetic

    images = torch.stack([torch.from_numpy(synthetic.render("train", i, (32, 64))[0]) for i in range(4)])
    features = (images.permute(0, 3, 1, 2).float() - 128.0) / 64.0  # (4, 3, 32, 64): the paper's 4×8 grid

    def train(literal: bool) -> float:
        torch.manual_seed(0)
        weight = SparseWeight(3, 8)
        pen = SparsityPenalty(p=p, lam=0.1)
        opt = torch.optim.SGD(weight.parameters(), lr=0.05)
        q_old = torch.tensor(p)
        for _ in range(100):
            s = weight(features)
            if literal:  # Eq. 1 back-propagated through Eq. 2 and Eq. 4
                q = (0.9 * q_old + 0.1 * torch.sigmoid(s).mean(dim=(1, 2))).clamp(1e-6, 1 - 1e-6)
                loss = 0.1 * (-p * q.log() - (1 - p) * (1 - q).log()).mean()
                q_old = q.detach().mean()
            else:
                loss = pen(s)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return float(torch.sigmoid(weight(features)).mean())

    with torch.no_grad():
        start = float(torch.sigmoid(SparseWeight(3, 8)(features)).mean())
    assert abs(start - p) > 0.15
    assert abs(train(literal=False) - p) < 0.05
    assert abs(train(literal=True) - p) > 0.05


SHIPPED_SPARSE = ["spaces/spatial_sparsity.yaml", "spaces/unit_removal.yaml", "studies/wu2017_table3.yaml"]


@pytest.mark.parametrize("path", SHIPPED_SPARSE)
def test_shipped_spaces_keep_the_paper_grid_at_their_proxy_scale(path: str) -> None:
    """Issue 10: at the proxy scale of the shipped spaces (0.25: 256×512) the region grid is the paper's 4×8
    (8×16 for 128-pixel regions), not 1×2, so p decides how many regions are computed."""
    from pathlib import Path

    from archsearch import data
    from archsearch import spec as spec_mod
    from archsearch.builders.wu2017.sparsity import region_pixels

    s = spec_mod.load(Path(__file__).resolve().parents[1] / path)
    h, w = data.resolution(tuple(s.data.size), s.proxy.scale)
    for region, grid in ((256, (4, 8)), (128, (8, 16))):
        r = region_pixels(region, 1024, h)
        assert (math.ceil(h / r), math.ceil(w / r)) == grid
        assert len({regions_to_keep(p, grid[0] * grid[1]) for p in (0.125, 0.2, 0.25, 0.4, 0.5)}) == 5


@pytest.mark.slow
def test_different_p_compute_different_numbers_of_regions_at_proxy_scale() -> None:
    """The paper's 256-pixel regions on a 256×512 proxy input (scale 0.25): fast inference computes ⌊p·32⌋ crops
    in the full-resolution column (Table 3: 4, 8, 16 of 32), as at 1024×2048."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 256, 512)
    computed = []
    for p in (0.13, 0.25, 0.5):
        model = archsearch.build("sparse_two_column", units_full=[1, 1, 1, 0], units_half=[1, 1, 1, 1], p=p).eval()
        seen = _backbone_batches(model)
        with torch.no_grad():
            out = model(x)
        assert out.shape[-2:] == (64, 128)
        computed.append(seen[-1])
    assert computed == [4, 8, 16]


def test_resampled_sparse_weight_equals_the_kernel_on_upsampled_features() -> None:
    """At a proxy scale the τ×τ kernel meets regions of τ/k features: the same logit as the full kernel on the
    features up-sampled ×k (nearest) — what the region would hold at the reference resolution."""
    from archsearch.builders.wu2017.sparsity import SparseWeight

    torch.manual_seed(0)
    weight = SparseWeight(5, 8)
    small = torch.randn(2, 5, 8, 16)  # 4×8 regions of 2×2 features
    up = torch.nn.functional.interpolate(small, scale_factor=4, mode="nearest")  # 4×8 regions of 8×8
    assert torch.allclose(weight(small, 2), weight(up), atol=1e-5)
    assert weight(small, 2).shape == (2, 4, 8)
