"""The latency protocol: batch norm folded (every builder, outputs equal), adaptive repeats to a 95% median
interval bounded by max_seconds, one up-sampling rule, interleaved comparison, threads set for training."""

from __future__ import annotations

import functools
import itertools
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

import archsearch
from archsearch import builders
from archsearch.cost import (
    MAX_REPEATS,
    TimedForward,
    fold_bn,
    half_width,
    interleaved,
    latency,
    median_ci,
    probe_size,
    time_calls,
)
from archsearch.spec import ProxySpec
from archsearch.training.scoring import evaluate
from archsearch.training.train import fit
from batchnorm import randomise_batch_norm


@pytest.fixture(autouse=True)
def _lock_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHSEARCH_LOCK_DIR", str(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("name", builders.names())
def test_fold_bn_keeps_every_builders_output_and_removes_its_batch_norms(name):
    model = archsearch.build(name).eval()
    randomise_batch_norm(model)
    before = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    folded = fold_bn(model)
    left = sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert before > 40 and left <= 1  # PSPNet keeps one batch norm that follows no convolution directly
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == before  # the original is untouched
    x = torch.randn(1, 3, 64, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, out = TimedForward(model)(x), TimedForward(folded)(x)
    assert ref.shape == (1, 19, 64, 128)
    assert float((ref - out).abs().max()) <= 1e-4 * max(1.0, float(ref.abs().max()))


class _Shared(nn.Module):
    """A convolution whose output feeds a batch norm AND a residual sum: folding it would change the sum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 3, 1)
        self.bn2 = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        z = self.bn(y) + y
        return self.bn2(self.conv2(z))


def test_fold_bn_leaves_a_convolution_whose_output_has_another_use():
    model = _Shared().eval()
    randomise_batch_norm(model)
    folded = fold_bn(model, (1, 3, 8, 8))
    assert isinstance(folded.bn, nn.BatchNorm2d) and isinstance(folded.bn2, nn.Identity)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model(x), folded(x), atol=1e-5)


def test_median_interval_uses_the_binomial_order_statistics():
    # n = 10: x(2)..x(9) (coverage 97.9%; x(3)..x(8) covers only 89%); n = 100: x(40)..x(61)
    assert median_ci(list(range(1, 11))) == (2.0, 9.0)
    assert median_ci(list(range(100, 0, -1))) == (40.0, 61.0)
    assert half_width(list(range(1, 101))) == 10.5
    assert median_ci([3.0, 1.0, 2.0]) == (1.0, 3.0)  # too few for 95%: the whole range ...
    assert half_width([3.0, 1.0, 2.0, 2.0, 2.0]) == float("inf")  # ... and no half-width to quote
    assert half_width([2.0] * 6) == 0.0


class _FakeClock:
    """A clock that advances only when the timed function runs, by the next of ``durations`` (seconds)."""

    def __init__(self, durations):
        self.now = 0.0
        self.durations = itertools.cycle(durations)
        self.calls = 0

    def __call__(self) -> float:
        return self.now

    def run(self) -> None:
        self.calls += 1
        self.now += next(self.durations)


def test_adaptive_repeats_stop_at_the_minimum_when_the_interval_is_small():
    clock = _FakeClock([0.010, 0.0101, 0.0099])  # ±1%: the 2% target is met at once
    times = time_calls(clock.run, warmup=2, repeats=10, rel_ci=0.02, max_seconds=60, clock=clock)
    assert len(times) == 10 and clock.calls == 12
    assert half_width(times) <= 0.02 * sorted(times)[5]


def test_adaptive_repeats_go_on_until_the_interval_is_within_rel_ci():
    # every 4th call is twice as slow: the interval narrows only with more samples
    clock = _FakeClock([0.010, 0.010, 0.010, 0.020, 0.0105, 0.0098])
    times = time_calls(clock.run, warmup=0, repeats=10, rel_ci=0.02, max_seconds=600, clock=clock)
    assert len(times) > 10
    med = sorted(times)[len(times) // 2]
    assert half_width(times) <= 0.02 * med
    assert half_width(times[:-1]) > 0.02 * sorted(times[:-1])[len(times) // 2 - 1] * 0.999


def test_adaptive_repeats_respect_max_seconds():
    clock = _FakeClock([0.010, 0.030])  # a 3× spread that never narrows to 2%
    times = time_calls(clock.run, warmup=3, repeats=10, rel_ci=0.02, max_seconds=1.0, clock=clock)
    assert clock.now == pytest.approx(1.0, abs=0.031)  # stopped at the first call ending after 1 s
    assert len(times) == clock.calls - 3 < MAX_REPEATS
    slow = _FakeClock([2.0])
    assert len(time_calls(slow.run, warmup=1, repeats=10, rel_ci=0.02, max_seconds=1.0, clock=slow)) == 1


def test_fixed_repeats_without_rel_ci():
    clock = _FakeClock([0.010, 0.030])
    assert len(time_calls(clock.run, warmup=0, repeats=7, clock=clock)) == 7


class _Stride4(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, stride=4, padding=1)
        self.bn = nn.BatchNorm2d(5)
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        self.shapes.append(tuple(y.shape))
        return y


def test_the_timed_forward_upsamples_the_logits_to_the_input():
    model = _Stride4().eval()
    x = torch.randn(1, 3, 32, 64)
    with torch.no_grad():
        out = TimedForward(model)(x)
        same = TimedForward(nn.Conv2d(3, 5, 1))(x)
    assert out.shape == (1, 5, 32, 64) and same.shape == (1, 5, 32, 64)
    ref = nn.functional.interpolate(model(x), size=(32, 64), mode="bilinear", align_corners=False)
    assert torch.equal(out, ref)


def test_latency_records_the_protocol():
    lat = latency(
        _Stride4(), (1, 3, 32, 64), "cpu", warmup=1, repeats=12, threads=1, fold=True, rel_ci=0.5, max_seconds=5
    )
    assert lat.repeats >= 12 and lat.fold_bn and lat.runtime == "eager" and lat.runtime_version.startswith("torch ")
    assert 0 <= lat.half_width_ms <= 0.5 * lat.median_ms and lat.p90_ms >= lat.median_ms > 0
    d = lat.as_dict()
    assert d["half_width_ms"] == lat.half_width_ms and d["fold_bn"] is True and d["input_size"] == [1, 3, 32, 64]


def test_interleaved_rotates_the_order_every_round():
    order: list[str] = []
    variants = {k: functools.partial(order.append, k) for k in "abc"}
    times = interleaved(variants, rounds=3, warmup=1)
    assert order == list("abc") + list("abc") + list("bca") + list("cab")
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(t >= 0 for v in times.values() for t in v)


def test_interleaved_drops_a_variant_once_its_interval_is_small_or_its_time_is_spent():
    clock = _FakeClock([0.0])
    calls = {"steady": 0, "noisy": 0, "slow": 0}
    noise = itertools.cycle([0.001, 0.004])

    def call(name: str, seconds: float) -> None:
        calls[name] += 1
        clock.now += seconds

    variants = {
        "steady": lambda: call("steady", 0.001),
        "noisy": lambda: call("noisy", next(noise)),
        "slow": lambda: call("slow", 0.02),
    }
    times = interleaved(variants, rounds=60, warmup=0, rel_ci=0.02, max_seconds=0.1, min_rounds=10, clock=clock)
    assert len(times["steady"]) == 10  # constant: within 2% as soon as it has min_rounds samples
    assert len(times["slow"]) == 5  # 5 × 20 ms reach max_seconds
    assert len(times["noisy"]) == 40  # 20 × (1 + 4) ms reach max_seconds; its interval never narrows to 2%
    assert calls == {k: len(v) for k, v in times.items()}


class _ThreadProbe(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.threads: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.threads.append(torch.get_num_threads())
        return self.conv(x)


class _Data:
    info = SimpleNamespace(num_classes=2, ignore_index=255)

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.full((3, 8, 8), float(i)), torch.full((8, 8), i % 2, dtype=torch.int64)


def test_training_and_evaluation_set_the_thread_count_and_restore_it():
    proxy = ProxySpec(iterations=2, batch=2, lr=0.01, crop=None, scale_range=(1.0, 1.0), flip=False)
    caller = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        probe = _ThreadProbe()
        fit(probe, _Data(), proxy, "cpu", progress=False, threads=2)
        assert probe.threads == [2, 2] and torch.get_num_threads() == 1
        probe.threads.clear()
        evaluate(probe, _Data(), "cpu", batch=2, progress=False, threads=2)
        assert probe.threads == [2, 2] and torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="threads"):
            fit(probe, _Data(), proxy, "cpu", progress=False, threads=0)
    finally:
        torch.set_num_threads(caller)


def test_the_reuse_key_names_the_runtime_and_fold_bn():
    import dataclasses

    from archsearch.search import trial as trial_mod
    from archsearch.spec import TargetSpec

    target = TargetSpec(input=(1, 3, 64, 128))
    assert (target.threads, target.fold_bn, target.rel_ci, target.max_seconds, target.runtime) == (
        1,
        True,
        0.02,
        60.0,
        "eager",
    )

    def key(t: TargetSpec) -> str:
        return trial_mod.arch_key(
            "ndnet", {"expansion": 4}, 19, t, "cpu", 1, device_model="AMD EPYC", runtime="torch 2.13.0+cpu"
        )

    base = key(target)
    assert key(dataclasses.replace(target)) == base
    assert key(dataclasses.replace(target, fold_bn=False)) != base
    assert key(dataclasses.replace(target, runtime="onnxruntime")) != base
    assert key(dataclasses.replace(target, rel_ci=0.05, max_seconds=10)) == base  # precision, not the quantity


def test_fold_bn_probes_at_a_small_input_of_the_same_aspect():
    assert probe_size((1, 3, 1024, 2048)) == (1, 3, 128, 256)
    assert probe_size((2, 3, 64, 128)) == (1, 3, 64, 128)
    assert probe_size((1, 3, 720, 960)) == (1, 3, 64, 96)
