"""Honest timing under concurrency: threads set for timing, training/evaluation wait for a timer (and the
timer for them), whole cost records, and a reuse key that names the machine's device model and threads."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
import torch
import torch.nn as nn

from archsearch.cost import device_model, device_turn, latency, work_turn
from archsearch.search import cost_record
from archsearch.search import trial as trial_mod
from archsearch.spec import ProxySpec, TargetSpec
from archsearch.training.scoring import evaluate
from archsearch.training.train import fit

PROXY = ProxySpec(iterations=2, batch=2, lr=0.01, crop=None, scale_range=(1.0, 1.0), flip=False)


@pytest.fixture(autouse=True)
def _lock_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHSEARCH_LOCK_DIR", str(tmp_path))
    monkeypatch.delenv("ARCHSEARCH_NO_TRAIN_LOCK", raising=False)


class Probe(nn.Module):
    """A 1×1 convolution to two classes that records, at each forward, the time and torch's thread count."""

    def __init__(self, sleep: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.sleep = sleep
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.threads: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.starts.append(time.perf_counter())
        self.threads.append(torch.get_num_threads())
        time.sleep(self.sleep)
        self.ends.append(time.perf_counter())
        return self.conv(x)


class Tiny:
    info = SimpleNamespace(num_classes=2, ignore_index=255)

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.full((3, 8, 8), float(i)), torch.full((8, 8), i % 2, dtype=torch.int64)


def test_latency_sets_the_thread_count_and_restores_the_callers():
    caller = torch.get_num_threads()
    probe = Probe()
    try:
        torch.set_num_threads(2)
        lat = latency(probe, (1, 3, 8, 8), "cpu", warmup=1, repeats=3, threads=1)
        assert probe.threads == [1, 1, 1, 1]  # set during the timing, not only recorded
        assert lat.threads == 1 and lat.device.endswith("(1 thread)")
        assert torch.get_num_threads() == 2
        probe.threads.clear()
        lat = latency(probe, (1, 3, 8, 8), "cpu", warmup=0, repeats=2)  # default: the caller's count
        assert probe.threads == [2, 2] and lat.threads == 2 and lat.as_dict()["threads"] == 2
        with pytest.raises(ValueError, match="threads"):
            latency(probe, (1, 3, 8, 8), "cpu", threads=0)
    finally:
        torch.set_num_threads(caller)


def _hold_exclusive(seconds: float, entered: threading.Event, released: list[float]) -> threading.Thread:
    def hold() -> None:
        with device_turn(torch.device("cpu")):
            entered.set()
            time.sleep(seconds)
            released.append(time.perf_counter())

    t = threading.Thread(target=hold)
    t.start()
    assert entered.wait(5)
    return t


@pytest.mark.parametrize("work", ["fit", "evaluate"])
def test_training_and_evaluation_wait_while_a_timer_measures(work):
    fit(Probe(), Tiny(), PROXY, "cpu", progress=False)  # warm: the first optimizer imports torch._dynamo (seconds)
    entered = threading.Event()
    released: list[float] = []
    holder = _hold_exclusive(0.3, entered, released)
    probe = Probe()
    if work == "fit":
        fit(probe, Tiny(), PROXY, "cpu", progress=False)
    else:
        evaluate(probe, Tiny(), "cpu", batch=2, progress=False)
    holder.join()
    assert len(probe.starts) == 2
    assert min(probe.starts) >= released[0]  # no forward pass ran during the timing


def test_a_timer_waits_for_the_training_iteration_in_progress():
    trainee = Probe(sleep=0.3)
    trainer = threading.Thread(target=fit, args=(trainee, Tiny(), PROXY, "cpu"), kwargs={"progress": False})
    trainer.start()
    while not trainee.starts:
        time.sleep(0.005)
    timed = Probe()
    latency(timed, (1, 3, 8, 8), "cpu", warmup=0, repeats=2)
    trainer.join()
    assert trainee.ends[0] <= min(timed.starts)  # the timer got in only after the first iteration
    assert len(trainee.starts) == 2


def test_no_train_lock_turns_the_shared_turn_off(monkeypatch):
    monkeypatch.setenv("ARCHSEARCH_NO_TRAIN_LOCK", "1")
    entered = threading.Event()
    released: list[float] = []
    holder = _hold_exclusive(0.5, entered, released)
    with work_turn("cpu"):
        inside = time.perf_counter()
    holder.join()
    assert inside < released[0]


# ------------------------------------------------------------------------------------------------- reuse key

TARGET = TargetSpec(input=(1, 3, 64, 128))


def _key(**kw: Any) -> str:
    args: dict[str, Any] = dict(
        builder="ndnet",
        knobs={"expansion": 4},
        num_classes=19,
        target=TARGET,
        device="cpu",
        threads=1,
        device_model="AMD EPYC 7763",
        runtime="torch 2.13.0+cpu",
    )
    args.update(kw)
    return trial_mod.arch_key(**args)


def test_the_reuse_key_names_threads_device_model_runtime_and_device_type():
    base = _key()
    assert _key() == base
    assert _key(threads=2) != base
    assert _key(device_model="Intel Xeon Gold 6248") != base
    assert _key(runtime="torch 2.5.0+cpu") != base
    assert _key(device="cuda:0") != base
    assert _key(target=TargetSpec(input=(1, 3, 64, 128), memory_format="channels_last")) != base
    assert _key(knobs={"expansion": 2}) != base
    # The default device model is this machine's CPU model.
    assert _key(device_model=None) == _key(device_model=device_model(torch.device("cpu")))


# --------------------------------------------------------------------------------------------- cost records


def _whole(key: str) -> dict:
    return {
        "params": 10,
        "madds": 20,
        "flops": 22,
        "latency_ms": 1.5,
        "latency_p90_ms": 1.7,
        "latency_half_width_ms": 0.02,
        "latency_repeats": 40,
        "device": "cpu (1 thread)",
        "input_size": [1, 3, 8, 8],
        "dtype": "float32",
        "memory_format": "nchw",
        "threads": 1,
        "fold_bn": True,
        "runtime": "eager",
        "runtime_version": f"torch {torch.__version__}",
        "torch": torch.__version__,
        "key": key,
    }


def test_only_whole_cost_records_are_reused():
    study = optuna.create_study()
    partial = {k: v for k, v in _whole("k1").items() if k != "latency_p90_ms"}
    flat_only = {"arch_key": "k1", **{k: v for k, v in _whole("k1").items() if k != "key"}}  # the old layout
    for attrs in ({"cost": partial}, flat_only, {"cost": _whole("k2")}):
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING, user_attrs=attrs))
    assert trial_mod.reuse_cost(study, "k1") is None
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING, user_attrs={"cost": _whole("k1")}))
    assert trial_mod.reuse_cost(study, "k1") == _whole("k1")


SPEC = """
name: cost
builder: ndnet
knobs:
  expansion: {choices: [4]}
objectives: [{name: miou, direction: maximize}, {name: latency_ms, direction: minimize}]
data: {name: synthetic, train_images: 2, val_images: 2}
proxy: {iterations: 1, batch: 2, scale: 0.03125}
target: {input: [1, 3, 32, 64], device: cpu, warmup: 0, repeats: 2}
search: {sampler: random, trials: 2, seed: 0}
"""


class Recording(optuna.Trial):
    """An Optuna trial that logs the names of its user attributes in the order they are written."""

    def __init__(self, trial: optuna.Trial, log: list[str]) -> None:
        self._trial, self._log = trial, log

    def set_user_attr(self, key: str, value: object) -> None:
        self._log.append(key)
        self._trial.set_user_attr(key, value)

    def __getattr__(self, name: str) -> object:
        return getattr(self._trial, name)


@pytest.mark.slow
def test_a_trial_writes_its_cost_whole_then_the_flat_attributes_and_the_next_reuses_it(tmp_path, monkeypatch):
    from archsearch import spec as spec_mod

    monkeypatch.chdir(tmp_path)
    (tmp_path / "cost.yaml").write_text(SPEC)
    spec = spec_mod.load(tmp_path / "cost.yaml")
    ctx = trial_mod.Context(spec, tmp_path / "artifacts", progress=False)
    study = optuna.create_study(directions=["maximize", "minimize"])
    logs: list[list[str]] = []

    def objective(t: optuna.Trial) -> tuple[float, ...]:
        logs.append([])
        return trial_mod.run(Recording(t, logs[-1]), ctx)

    study.optimize(objective, n_trials=2)
    first, second = study.trials
    assert [s.name for s in (first.state, second.state)] == ["COMPLETE", "COMPLETE"]
    for log, t in zip(logs, (first, second), strict=True):
        assert log.count("cost") == 1
        assert all(log.index(k) > log.index("cost") for k in cost_record.COST_ATTRS)  # flat attributes after it
        cost = t.user_attrs["cost"]
        assert set(cost) == set(cost_record.COST_FIELDS)
        assert cost["key"] == t.user_attrs["arch_key"] and cost["threads"] == spec.target.threads == 1
        assert all(t.user_attrs[k] == cost[k] for k in cost_record.COST_ATTRS)
    assert first.user_attrs["cost_reused"] is False and second.user_attrs["cost_reused"] is True
    assert second.user_attrs["cost"] == first.user_attrs["cost"]


_FAULTS = """
import os, resource, sys, types, torch
import torch.nn as nn
root = sys.argv[2]  # the package's folder: loaded bare (no __init__), so only what the timing module needs runs
for name, path in (("archsearch", root), ("archsearch.cost", root + "/cost"), ("archsearch.util", root + "/util")):
    sys.modules[name] = types.ModuleType(name); sys.modules[name].__path__ = [path]
from archsearch.cost.timing import keep_freed_memory
torch.set_num_threads(1)
net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)).eval()
x = torch.randn(1, 3, 256, 1024)  # 16 MB feature maps: mapped fresh by glibc's malloc at each pass
with torch.inference_mode():
    net(x)
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    net(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        net(x)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_timing_keeps_freed_memory_for_reuse() -> None:
    """Repeated forward passes page-fault their feature maps in again unless freed memory is kept (as every
    timing does, keep_freed_memory)."""
    import subprocess

    def faults(mode: str) -> int:
        package = str(Path(__file__).resolve().parents[1] / "archsearch")
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode, package], capture_output=True, text=True, check=True)
        return int(out.stdout.strip())

    assert faults("plain") > 10_000  # 3 passes × 2 maps of 16 MB (4,096 pages each) at least
    assert faults("keep") < 100
