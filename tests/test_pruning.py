"""Progressive L1 kernel pruning (Zhao et al. 2018, Sec. 3.2, 5.2; Li et al. [13]) on PSPNet50 and ICNet."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn as nn

from archsearch import build, config_of
from archsearch.builders import Knobs, get, knob, register, registry
from archsearch.builders.layers import SegOutput
from archsearch.cost import count_params
from archsearch.training.channel_pruning import (
    filter_l1,
    iteration_split,
    progressive,
    prune_to,
    schedule,
)

X = (1, 3, 64, 128)


def _trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random batch-norm statistics and affine parameters, so that copying them is observable."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _top(conv: nn.Conv2d, k: int) -> torch.Tensor:
    return torch.sort(torch.argsort(filter_l1(conv), descending=True, stable=True)[:k]).values


# --- schedule and iteration split -------------------------------------------------------------------------------


def test_schedule_default_is_the_papers_quarters() -> None:
    """Sec. 5.2: "compression rate 1/2 ... we first choose to keep 3/4 of the kernels"."""
    assert schedule(0.5) == [0.75, 0.5]
    assert schedule(0.25) == [0.75, 0.5, 0.25]
    assert schedule(0.75) == [0.75]
    assert schedule(0.6) == [0.75, 0.6]
    assert schedule(1.0) == []


def test_schedule_from_a_configured_ladder() -> None:
    assert schedule(0.5, [0.9, 0.7, 0.5]) == [0.9, 0.7, 0.5]
    assert schedule(0.5, [0.75, 0.5, 0.25]) == [0.75, 0.5]  # one ladder serves a search over keep rates
    assert schedule(0.4, [0.8]) == [0.8, 0.4]
    assert schedule(0.5, [1.0, 0.5]) == [0.5]  # the full-width phase always comes first
    for bad in ([0.5, 0.75], [0.75, 0.75], [1.2, 0.5], [0.5, 0.0]):
        with pytest.raises(ValueError):
            schedule(0.5, bad)
    for bad_rate in (0.0, 1.5):
        with pytest.raises(ValueError):
            schedule(bad_rate)


def test_iteration_split() -> None:
    assert iteration_split(100, 2) == [50, 25, 25]
    assert iteration_split(7, 2) == [4, 1, 2]
    assert iteration_split(9, 0) == [9]
    for n, k in ((0, 3), (1, 3), (301, 3)):
        assert sum(iteration_split(n, k)) == n and len(iteration_split(n, k)) == k + 1


# --- one structural step ----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name,knobs", [("pspnet50", {"output_stride": 32}), ("icnet", {"branches": "sub124"})])
def test_keep_rate_1_leaves_outputs_unchanged(name: str, knobs: dict) -> None:
    torch.manual_seed(0)
    model = _trained_like(build(name, **knobs, keep_rate=1.0))
    pruned = prune_to(model, 1.0)
    assert pruned is not model and _shapes(pruned) == _shapes(model)
    x = torch.randn(*X)
    with torch.no_grad():
        assert torch.allclose(pruned(x), model(x), atol=1e-6, rtol=0)


def test_kept_filters_are_the_highest_l1_ones() -> None:
    """The L1 rule of [13] per convolution; a residual stage's summed outputs share one selection ranked by the
    summed L1 of the stage's projection and last convolutions; batch norms and next inputs are sliced to match."""
    torch.manual_seed(0)
    model = _trained_like(build("icnet", branches="sub4", keep_rate=1.0, stem="resnet"))
    pruned = prune_to(model, 0.5)
    b, p = model.backbone, pruned.backbone

    stem = _top(b.conv1, 32)  # the stem convolution alone
    assert torch.equal(p.conv1.weight, b.conv1.weight[stem])
    assert torch.equal(p.bn1.running_mean, b.bn1.running_mean[stem])
    assert torch.equal(p.bn1.weight, b.bn1.weight[stem])
    kept_l1 = filter_l1(b.conv1)[stem]
    removed = torch.ones(64, dtype=torch.bool)
    removed[stem] = False
    assert kept_l1.min() >= filter_l1(b.conv1)[removed].max()

    unit = _top(b.layer1[0].conv1, 32)  # next layer: its own filters, the stem's kept input channels
    assert torch.equal(p.layer1[0].conv1.weight, b.layer1[0].conv1.weight[unit][:, stem])

    group = [b.layer1[0].downsample[0], b.layer1[0].conv3, b.layer1[1].conv3, b.layer1[2].conv3]
    summed = sum(filter_l1(c) for c in group)
    stage = torch.sort(torch.argsort(summed, descending=True, stable=True)[:128]).values
    assert not torch.equal(stage, _top(b.layer1[0].conv3, 128))  # the group ranking is not one layer's
    assert torch.equal(p.layer1[0].downsample[0].weight, b.layer1[0].downsample[0].weight[stage][:, stem])
    mid = _top(b.layer1[2].conv2, 32)
    assert torch.equal(p.layer1[2].conv3.weight, b.layer1[2].conv3.weight[stage][:, mid])
    assert torch.equal(p.layer1[2].bn3.running_var, b.layer1[2].bn3.running_var[stage])
    assert torch.equal(
        p.layer1[1].conv1.weight[:, :, 0, 0], b.layer1[1].conv1.weight[_top(b.layer1[1].conv1, 32)][:, stage, 0, 0]
    )


@pytest.mark.slow
def test_deep_stem_is_pruned_filter_by_filter() -> None:
    """PSPNet's deep stem (the default): each of its three 3×3 convolutions keeps its own highest-L1 filters, the
    next one's input channels follow, and stage 2 reads the third one's kept filters."""
    torch.manual_seed(0)
    model = _trained_like(build("icnet", branches="sub4", keep_rate=1.0))
    pruned = prune_to(model, 0.5)
    b, p = model.backbone, pruned.backbone
    c1, c2, c3 = _top(b.conv1, 32), _top(b.conv2, 32), _top(b.conv3, 64)
    assert torch.equal(p.conv1.weight, b.conv1.weight[c1])
    assert torch.equal(p.conv2.weight, b.conv2.weight[c2][:, c1])
    assert torch.equal(p.conv3.weight, b.conv3.weight[c3][:, c2])
    assert torch.equal(p.bn3.running_mean, b.bn3.running_mean[c3])
    unit = _top(b.layer1[0].conv1, 32)
    assert torch.equal(p.layer1[0].conv1.weight, b.layer1[0].conv1.weight[unit][:, c3])


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,knobs",
    [
        ("pspnet50", {"output_stride": 32}),
        ("icnet", {"branches": "sub4"}),
        ("icnet", {"branches": "sub24"}),
        ("icnet", {"branches": "sub124"}),
    ],
)
def test_pruned_shapes_equal_build_and_run(name: str, knobs: dict) -> None:
    """A pruned model has exactly the shapes of build(keep_rate=r), at every branch setting, and runs in eval
    and train mode; progressive steps 1 → 3/4 → 1/2 → 1/4 land on the same shapes."""
    torch.manual_seed(0)
    model = _trained_like(build(name, num_classes=11, **knobs, keep_rate=1.0))
    for rate in (0.75, 0.5, 0.25):
        model = prune_to(model, rate)
        assert _shapes(model) == _shapes(build(name, num_classes=11, **knobs, keep_rate=rate)), rate
        assert config_of(model).knobs.as_dict()["keep_rate"] == rate and config_of(model).num_classes == 11
    x = torch.randn(*X)
    with torch.no_grad():
        assert model.eval()(x).shape == (1, 11, 64, 128)
    out = model.train()(torch.randn(2, 3, 64, 128))
    assert isinstance(out, SegOutput) and torch.isfinite(out.logits).all()


@pytest.mark.slow
def test_prune_to_keeps_mode_and_leaves_source_and_random_stream_untouched() -> None:
    model = build("icnet", branches="sub24", keep_rate=1.0).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(3)
    pruned = prune_to(model, 0.5)
    after_pruning = torch.rand(4)
    torch.manual_seed(3)
    assert torch.equal(after_pruning, torch.rand(4))  # training after a step stays a function of its seed
    assert pruned.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_not_prunable_builder_is_refused() -> None:
    model = build("ndnet")
    with pytest.raises((ValueError, KeyError)):
        prune_to(model, 0.5)


# --- progressive compression -----------------------------------------------------------------------------------


class _RecordingFit:
    """Stands in for the proxy training: records phases and marks a stem filter during the full-width phase."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, model: nn.Module, iterations: int, phase: str, start: int = 0) -> None:
        keep_rate = config_of(model).knobs.as_dict()["keep_rate"]
        self.calls.append(
            {
                "phase": phase,
                "iterations": iterations,
                "keep_rate": keep_rate,
                "stem": model.backbone.conv1.out_channels,
                "start": start,
            }
        )
        if phase == "full":
            with torch.no_grad():
                model.backbone.conv1.weight[5].fill_(1.0)  # the largest-L1 stem filter after "training"


@pytest.mark.slow
def test_progressive_prunes_and_fine_tunes_in_steps() -> None:
    fit = _RecordingFit()
    model, history = progressive("icnet", {"branches": "sub4", "keep_rate": 0.5}, 19, fit, iterations=10)
    assert [c["keep_rate"] for c in fit.calls] == [1.0, 0.75, 0.5]
    assert [c["stem"] for c in fit.calls] == [64, 48, 32]
    assert [c["iterations"] for c in fit.calls] == [5, 2, 3]
    assert [h["keep_rate"] for h in history] == [1.0, 0.75, 0.5]
    assert [h["iterations"] for h in history] == [5, 2, 3]
    assert history[0]["params"] > history[1]["params"] > history[2]["params"] == count_params(model)
    assert _shapes(model) == _shapes(build("icnet", branches="sub4", keep_rate=0.5))
    assert config_of(model).knobs.as_dict()["keep_rate"] == 0.5
    # the trained full-width filter survived both steps (it has the largest L1 norm)
    assert (model.backbone.conv1.weight == 1.0).flatten(1).all(dim=1).sum() == 1


@pytest.mark.slow
def test_progressive_with_a_configured_schedule_and_without_pruning() -> None:
    fit = _RecordingFit()
    _, history = progressive(
        "pspnet50", {"output_stride": 32, "keep_rate": 0.25}, 19, fit, iterations=8, steps=[0.5, 0.25]
    )
    assert [h["keep_rate"] for h in history] == [1.0, 0.5, 0.25]
    assert [h["iterations"] for h in history] == [4, 2, 2]
    fit = _RecordingFit()
    model, history = progressive("icnet", {"branches": "sub4", "keep_rate": 1.0}, 19, fit, iterations=6)
    assert history == [{"keep_rate": 1.0, "params": count_params(model), "iterations": 6, "start": 0}]
    assert [c["phase"] for c in fit.calls] == ["full"]


@pytest.mark.slow
@pytest.mark.parametrize("keep_rate", [1.0, 0.75, 0.6, 0.5, 0.25])
def test_every_keep_rate_trains_the_same_total_on_one_schedule(keep_rate: float) -> None:
    """Pruning is not confounded with budget: every keep rate runs all iterations, its phases back to back on one
    poly schedule (each phase starts where the previous one stopped), the last phase ending at the budget."""
    fit = _RecordingFit()
    _, history = progressive("icnet", {"branches": "sub4", "keep_rate": keep_rate}, 19, fit, iterations=12)
    assert sum(h["iterations"] for h in history) == 12
    assert [c["start"] for c in fit.calls] == [sum(h["iterations"] for h in history[:i]) for i in range(len(history))]
    assert fit.calls[-1]["start"] + fit.calls[-1]["iterations"] == 12
    assert history[-1]["keep_rate"] == keep_rate


# --- the pruning knob is declared by the registration -----------------------------------------------------------


@dataclass(frozen=True)
class _WidthKnobs(Knobs):
    share: float = knob(1.0, paper="-", doc="fraction of the hidden filters kept", low=0.01, high=1.0)


def _width_net(k: _WidthKnobs, num_classes: int) -> nn.Module:
    hidden = round(8 * k.share)
    return nn.Sequential(
        nn.Conv2d(3, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(), nn.Conv2d(hidden, num_classes, 1)
    )


@pytest.fixture
def width_builder(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A builder registered with ``prune_knob="share"`` (no knob named keep_rate) in a throwaway copy of the
    registry, which the paper builders' registry replaces again afterwards."""
    monkeypatch.setattr(registry, "_BUILDERS", registry._BUILDERS.copy())
    register("test_width_net", knobs=_WidthKnobs, paper="-", summary="test", prune_knob="share")(_width_net)
    return "test_width_net"


def test_the_paper_builders_declare_their_pruning_knob() -> None:
    assert get("icnet").prune_knob == "keep_rate" and get("pspnet50").prune_knob == "keep_rate"
    assert get("ndnet").prune_knob is None and not get("ndnet").prunable
    with pytest.raises(RuntimeError, match="prune_knob 'keep' is not one of its knobs"):
        register("test_bad_prune_knob", knobs=_WidthKnobs, paper="-", summary="test", prune_knob="keep")(_width_net)
    assert "test_bad_prune_knob" not in registry.names()


def test_pruning_follows_the_declared_knob_not_its_name(width_builder: str) -> None:
    model = _trained_like(build(width_builder, num_classes=3))
    pruned = prune_to(model, 0.5)
    assert config_of(pruned).knobs.as_dict() == {"share": 0.5}
    assert pruned[0].out_channels == 4 and pruned[3].in_channels == 4 and pruned[3].out_channels == 3
    keep = _top(model[0], 4)
    assert torch.equal(pruned[0].weight, model[0].weight[keep])  # the highest-L1 filters, as for ICNet
    calls: list[tuple[int, str]] = []
    final, history = progressive(
        width_builder, {"share": 0.25}, 3, lambda m, n, phase, start=0: calls.append((n, phase)), 8
    )
    assert [h["keep_rate"] for h in history] == [1.0, 0.75, 0.5, 0.25]
    assert config_of(final).knobs.as_dict() == {"share": 0.25} and final[0].out_channels == 2
    assert [phase for _, phase in calls] == ["full", "keep 0.75", "keep 0.5", "keep 0.25"]
