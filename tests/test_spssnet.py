"""Fast-SCNN / SPSSN builder (Mamoon et al. 2020): Table 6 parameter counts, stage- vs stream-pooling wiring,
output contract, knob validation, and every knob combination of ``spaces/stage_pooling.yaml``."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn

from archsearch.builders import build, get, variant, variants
from archsearch.builders.spssnet import CRPLW, StagePooling, StreamPooling
from archsearch.cost import count_params
from archsearch.spec import load as load_spec
from archsearch.util.errors import KnobError

ROOT = Path(__file__).resolve().parents[1]

# Table 6 (Cityscapes, 19 classes): the builder's named variants, keyed by their pooling knob.
TABLE6 = {v.knobs["pooling"]: v for v in variants("fast_scnn")}
TABLE6_PARAMS = {pooling: v.paper["params"] for pooling, v in TABLE6.items()}


def test_table6_variants() -> None:
    assert {p: v.qualname for p, v in TABLE6.items()} == {
        "none": "fast_scnn.base",
        "stream": "fast_scnn.stream",
        "stage": "fast_scnn.spssn",
    }
    assert all("Table 6" in v.source for v in TABLE6.values())
    assert "latency_ms" not in TABLE6["stream"].paper  # the paper gives no time for stream-pooling
    assert "TITAN Xp" in variant("fast_scnn.spssn").source


@pytest.mark.parametrize("name", ["fast_scnn.base", "fast_scnn.stream", "fast_scnn.spssn"])
def test_parameter_counts_within_5pct_of_table6(name: str) -> None:
    params = count_params(build(name, num_classes=19))
    assert abs(params / variant(name).paper["params"] - 1) < 0.05, (name, params)


def test_pooling_adds_what_table6_adds() -> None:
    """Stage-pooling adds ≈0.31M to Fast-SCNN (spssn − base) and stream-pooling 0.05M more (stream − spssn): the
    two counts that settle CRP depth 4 and stream's three 1×1 adapt convolutions (module docstring)."""
    none, stage, stream = (count_params(build("fast_scnn", pooling=p)) for p in ("none", "stage", "stream"))
    assert abs((stage - none) - (TABLE6_PARAMS["stage"] - TABLE6_PARAMS["none"])) < 0.01e6
    assert stream - stage == 3 * 128 * 128
    assert abs((stream - stage) - (TABLE6_PARAMS["stream"] - TABLE6_PARAMS["stage"])) < 0.01e6
    # two pool–conv pairs, as Fig. 2b draws them, would miss Table 6 by more than 5%
    two = count_params(build("fast_scnn", pooling="stage", crp_depth=2))
    assert two / TABLE6_PARAMS["stage"] < 0.95


def test_study_rows_carry_table6() -> None:
    study = load_spec(ROOT / "studies" / "spssnet_table6.yaml")  # validates keys and knobs against the builder
    rows = study.rows
    assert study.builder == "fast_scnn" and len(rows) == 3
    for row in rows:
        v = TABLE6[row["knobs"]["pooling"]]
        assert row["variant"] == v.qualname and row["label"] == v.label and row["paper"] == dict(v.paper)
        params = count_params(build("fast_scnn", **{**study.fixed, **row["knobs"]}))
        assert abs(params / row["paper"]["params"] - 1) < 0.05


def test_defaults_are_spssn_and_documented() -> None:
    entry = get("fast_scnn")
    assert entry.defaults() == {
        "pooling": "stage",
        "modules": [1, 2, 3, 4],
        "crp_depth": 4,
        "width": 128,
        "expansion": 6,
        "shallow_width": 128,
        "strides": [2, 2, 1],
    }
    for f in entry.knob_fields():
        assert f.metadata["paper"] and f.metadata["doc"], f.name


def test_stage_modules_read_table1_stages() -> None:
    model = build("fast_scnn", pooling="stage")
    pools = [m for m in model.modules() if isinstance(m, StagePooling)]
    assert [p.project[0].in_channels for p in pools] == [64, 64, 96, 128]
    assert all(p.project[0].out_channels == 128 and len(p.crp.convs) == 4 for p in pools)
    assert not any(isinstance(m, CRPLW) for m in build("fast_scnn", pooling="none").modules())
    subset = build("fast_scnn", pooling="stage", modules=[2, 4], crp_depth=1)
    assert [len(p.crp.convs) for p in subset.modules() if isinstance(p, StagePooling)] == [1, 1]


def _pool_resolutions(model: nn.Module, x: torch.Tensor) -> list[tuple[int, int]]:
    seen: list[tuple[int, int]] = []
    crps = [m for m in model.modules() if isinstance(m, CRPLW)]
    hooks = [m.register_forward_hook(lambda _m, inp, _o: seen.append(tuple(inp[0].shape[-2:]))) for m in crps]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.slow
def test_stage_pools_before_upsampling_stream_after() -> None:
    """Sec. 6: stage-pooling pools at each stage's resolution (1/8, 1/16, 1/32, 1/32), stream-pooling at 1/8."""
    x = torch.randn(1, 3, 128, 256)
    assert _pool_resolutions(build("fast_scnn", pooling="stage"), x) == [(16, 32), (8, 16), (4, 8), (4, 8)]
    assert _pool_resolutions(build("fast_scnn", pooling="stream"), x) == [(16, 32)] * 4
    camvid = build("fast_scnn", pooling="stage", strides=[1, 2, 1])  # Sec. 5.2: no down-sampling in unit 1
    assert _pool_resolutions(camvid, x) == [(16, 32), (16, 32), (8, 16), (8, 16)]


def test_crp_lw_chains_pool_conv_pairs_with_residual_sums() -> None:
    """Fig. 2b: out = x + c1(p(x)) + c2(p(c1(p(x))))."""
    torch.manual_seed(0)
    crp = CRPLW(8, 2)
    x = torch.randn(1, 8, 10, 12)
    pool = nn.MaxPool2d(5, 1, 2)
    t1 = crp.convs[0](pool(x))
    t2 = crp.convs[1](pool(t1))
    torch.testing.assert_close(crp(x), x + t1 + t2)


def _zero_pooling(model: nn.Module, which: str = "all") -> None:
    """Zero the inputs of pooling modules (projection, adapt) so they output zeros."""
    pools = list(model.pools.values())
    targets = pools if which == "all" else pools[-1:] if which == "last" else pools[:1]
    with torch.no_grad():
        for p in targets:
            p.project[0].weight.zero_()
            if isinstance(p, StreamPooling) and p.adapt is not None:
                p.adapt.weight.zero_()


def _same_as_fast_scnn(model: nn.Module, x: torch.Tensor) -> bool:
    base = build("fast_scnn", pooling="none")
    missing, unexpected = base.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(k.startswith("pools.") for k in unexpected)
    with torch.no_grad():
        return torch.allclose(model.eval()(x), base.eval()(x), atol=1e-5)


@pytest.mark.slow
def test_fusion_wiring_into_shallow_branch() -> None:
    """Pooling outputs are added into the shallow branch; stage fuses every module, stream only the last."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 128)
    for pooling in ("stage", "stream"):
        model = build("fast_scnn", pooling=pooling)
        assert not _same_as_fast_scnn(model, x)
        _zero_pooling(model, "all")
        assert _same_as_fast_scnn(model, x)
    stream = build("fast_scnn", pooling="stream")
    _zero_pooling(stream, "last")  # the chain reaches the output only through the last module
    assert _same_as_fast_scnn(stream, x)
    stage = build("fast_scnn", pooling="stage")
    _zero_pooling(stage, "last")  # modules 1–3 are fused directly
    assert not _same_as_fast_scnn(stage, x)


@pytest.mark.parametrize("pooling", ["none", "stage", "stream"])
def test_output_contract(pooling: str) -> None:
    model = build("fast_scnn", num_classes=11, pooling=pooling)
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 72, 100))  # not a multiple of 32
    assert isinstance(out, torch.Tensor) and out.shape == (1, 11, 9, 13)
    model.train()
    out = model(torch.randn(2, 3, 64, 128))
    assert out.shape == (2, 11, 8, 16)
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    "knobs",
    [
        {"pooling": "both"},
        {"modules": [2, 1]},
        {"modules": [1, 1]},
        {"modules": [0]},
        {"modules": []},
        {"crp_depth": 0},
        {"strides": [2, 2]},
        {"nonsense": 1},
    ],
)
def test_bad_knobs_are_rejected(knobs: dict[str, Any]) -> None:
    with pytest.raises(KnobError):
        build("fast_scnn", **knobs)


def _space_values(decl: dict[str, Any]) -> list[Any]:
    if "choices" in decl:
        return list(decl["choices"])
    if "int" in decl:
        low, high = decl["int"]
        return list(range(low, high + 1, decl.get("step", 1)))
    raise AssertionError(f"unexpected declaration {decl}")


@pytest.mark.slow
def test_every_space_combination_builds_and_runs() -> None:
    """Every knob combination ``spaces/stage_pooling.yaml`` can sample builds and runs at 64×128."""
    space = load_spec(ROOT / "spaces" / "stage_pooling.yaml")  # validates keys and knobs against the builder
    assert space.builder == "fast_scnn"
    names = list(space.knobs)
    assert {"pooling", "modules", "crp_depth", "width"} <= set(names)
    assert {o.name: o.direction for o in space.objectives} == {"miou": "maximize", "latency_ms": "minimize"}
    x = torch.randn(1, 3, 64, 128)
    ran_fast_scnn = False
    for values in itertools.product(*(_space_values(space.knobs[n]) for n in names)):
        knobs = {**space.fixed, **dict(zip(names, values, strict=False))}
        if knobs["pooling"] == "none":
            if ran_fast_scnn:  # the pooling knobs leave Fast-SCNN unchanged: validate them, one forward covers all
                get("fast_scnn").resolve(knobs)
                continue
            ran_fast_scnn = True
        model = build("fast_scnn", **knobs)
        with torch.no_grad():
            assert model.eval()(x).shape == (1, 19, 8, 16), knobs


@pytest.mark.slow
@pytest.mark.parametrize("pooling", ["none", "stage", "stream"])
def test_full_resolution(pooling: str) -> None:
    """1024×2048 (Cityscapes, Table 1): logits at 1/8, 128×256."""
    model = build("fast_scnn", pooling=pooling).eval().to(memory_format=torch.channels_last)  # faster CPU max-pool
    with torch.inference_mode():
        out = model(torch.randn(1, 3, 1024, 2048))
    assert out.shape == (1, 19, 128, 256)
