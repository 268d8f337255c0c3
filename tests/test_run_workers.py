"""`archsearch run --workers N [--devices …]`: the plan (devices, cores, environment), the launcher (pinning,
prefixed output, signals passed on) and two CPU workers on one SQLite study (exact totals, distinct
configurations, one report; SIGTERM stops both with their trials queued, exit 143)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from archsearch import cli
from archsearch.cli import launch
from archsearch.util.errors import ArchsearchError

ROOT = Path(__file__).resolve().parents[1]
CORES = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)

# ndnet on tiny synthetic scenes, latency bounded to a second: a trial takes seconds on a loaded machine
SPEC = """\
name: wtiny
builder: ndnet
knobs:
  widths: {each: [{int: [4, 32]}, {int: [4, 32]}, {int: [4, 32]}]}
  depths: {each: [{int: [1, 3]}, {int: [1, 3]}, {int: [1, 3]}]}
  expansion: {int: [1, 4]}
objectives:
  - {name: miou, direction: maximize}
  - {name: latency_ms, direction: minimize}
data: {name: synthetic, size: [64, 128], train_images: 4, val_images: 2}
proxy: {iterations: 2, batch: 2, scale: 1.0, eval_batch: 2}
target: {input: [1, 3, 64, 128], repeats: 2, warmup: 0, device: cpu, max_seconds: 1, rel_ci: 0.5}
search: {sampler: tpe, trials: 2, seed: 0}
"""


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ARCHSEARCH_LOCK_DIR", str(tmp_path))  # device turns among this test's workers only
    (tmp_path / "spec.yaml").write_text(SPEC)
    return tmp_path


# ------------------------------------------------------------------------------------------------ the plan


def test_core_shares_are_equal_and_disjoint() -> None:
    assert launch.core_shares(range(16), 4) == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11), (12, 13, 14, 15)]
    assert launch.core_shares([0, 2, 4, 6, 8], 2) == [(0, 2), (4, 6)]  # the remainder stays idle: equal shares
    assert launch.core_shares([3, 5], 3) == [(3,), (5,), (3,)]  # fewer cores than workers: one each, in turn
    assert launch.core_shares([], 2) == [(), ()]


def test_plan_cpu_workers_pin_cores_and_hide_gpus() -> None:
    workers = launch.plan(2, None, target_device="auto", threads=2, gpu_count=0, cores=range(8), environ={})
    assert [(w.label, w.device, w.cpus) for w in workers] == [("w0", "cpu", (0, 1, 2, 3)), ("w1", "cpu", (4, 5, 6, 7))]
    assert workers[1].env == {
        "CUDA_VISIBLE_DEVICES": "",  # `auto` resolves to the CPU in the worker even on a GPU machine
        "OMP_NUM_THREADS": "4",
        "MKL_NUM_THREADS": "4",
        "OPENBLAS_NUM_THREADS": "4",
    }
    assert workers[1].describe() == "w1 on cpu (cores 4-7)"
    # a thread cap the user set stays
    (w,) = launch.plan(
        1, ["cpu"], target_device="cpu", threads=1, gpu_count=0, cores=[0], environ={"OMP_NUM_THREADS": "1"}
    )
    assert "OMP_NUM_THREADS" not in w.env and w.describe() == "w0 on cpu (core 0)"
    # latency is measured with target.threads threads: a share smaller than that is refused
    with pytest.raises(ArchsearchError, match=r"--workers 4: 8 cores give each CPU worker 2, and target.threads is 4"):
        launch.plan(4, None, target_device="cpu", threads=4, gpu_count=0, cores=range(8), environ={})


def test_plan_gpu_workers_go_round_the_devices_by_physical_id() -> None:
    environ = {"CUDA_VISIBLE_DEVICES": "2,3"}  # this process sees physical GPUs 2 and 3 as cuda:0 and cuda:1
    workers = launch.plan(3, None, target_device="auto", threads=1, gpu_count=2, cores=range(6), environ=environ)
    assert [(w.device, w.env["CUDA_VISIBLE_DEVICES"], w.cpus) for w in workers] == [
        ("cuda:0", "2", (0, 1)),
        ("cuda:1", "3", (2, 3)),
        ("cuda:0", "2", (4, 5)),
    ]
    # without --workers: one per device listed
    workers = launch.plan(
        None, ["cuda:1", "cuda:1"], target_device="cuda", threads=1, gpu_count=2, cores=[0, 1], environ={}
    )
    assert [(w.device, w.env["CUDA_VISIBLE_DEVICES"]) for w in workers] == [("cuda:1", "1"), ("cuda:1", "1")]


@pytest.mark.parametrize(
    "devices,target,gpus,message",
    [
        (["cuda:2"], "auto", 2, r"--devices cuda:2: this machine has 2 visible GPUs; allowed: cuda:0 to cuda:1"),
        (["cuda:0"], "auto", 0, r"--devices cuda:0: this machine has 0 visible GPUs"),
        (["cuda:0"], "cpu", 1, r"--devices cuda:0: the spec's target.device is cpu; allowed: cpu"),
        (["cpu"], "cuda", 1, r"--devices cpu: the spec's target.device is cuda"),
        (None, "cuda", 0, r"target.device: 'cuda' was asked for but no CUDA device is available"),
    ],
)
def test_plan_refuses_devices_the_spec_or_machine_cannot_have(devices, target, gpus, message) -> None:
    with pytest.raises(ArchsearchError, match=message):
        launch.plan(2, devices, target_device=target, threads=1, gpu_count=gpus, cores=[0, 1], environ={})


@pytest.mark.parametrize(
    "text,message",
    [
        ("gpu0", r"--devices gpu0: gpu0 is not a device; allowed: cpu, or GPUs such as cuda:0,cuda:1"),
        (",", r"--devices ,: empty is not a device"),
        ("cpu,cuda:0", r"CPU and GPU workers would measure latency on different devices"),
    ],
)
def test_parse_devices(text: str, message: str) -> None:
    assert launch.parse_devices("cuda:0, cuda:1,cuda:0") == ["cuda:0", "cuda:1", "cuda:0"]
    assert launch.parse_devices("cpu") == ["cpu"]
    with pytest.raises(ArchsearchError, match=message):
        launch.parse_devices(text)


# ------------------------------------------------------------------------------------------- the launcher

CHILD = """
import os, pathlib, signal, sys, time
def stop(signum, frame):
    print("stopped by", signal.Signals(signum).name, flush=True)
    sys.exit(128 + signum)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
print("cores", sorted(os.sched_getaffinity(0)), "gpus", repr(os.environ["CUDA_VISIBLE_DEVICES"]), flush=True)
print("threads", os.environ["OMP_NUM_THREADS"], file=sys.stderr, flush=True)
pathlib.Path(sys.argv[1], str(os.getpid())).touch()
time.sleep(float(sys.argv[2]))
print("slept", end="", flush=True)  # a last line without a newline still comes out whole
"""


def _two_workers() -> list[launch.Worker]:
    if len(CORES) < 2:
        pytest.skip("needs 2 cores")
    return launch.plan(2, ["cpu"], target_device="auto", threads=1, gpu_count=0, cores=CORES[:2], environ={})


def test_launcher_pins_each_worker_and_prefixes_its_lines(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    before = os.sched_getaffinity(0)
    outcome = launch.start([sys.executable, "-c", CHILD, str(tmp_path), "0"], _two_workers())
    assert outcome.returncodes == {"w0": 0, "w1": 0} and outcome.signal is None
    assert os.sched_getaffinity(0) == before  # the launcher's own cores are restored
    out, err = capfd.readouterr()
    assert sorted(out.splitlines()) == [
        f"[w0] cores [{CORES[0]}] gpus ''",
        "[w0] slept",
        f"[w1] cores [{CORES[1]}] gpus ''",
        "[w1] slept",
    ]
    assert sorted(err.splitlines()) == ["[w0] threads 1", "[w1] threads 1"]


def test_launcher_passes_sigterm_on_to_every_worker(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    workers = _two_workers()

    def terminate_when_both_run() -> None:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)  # to the launcher only, as `kill PID` would

    killer = threading.Thread(target=terminate_when_both_run)
    killer.start()
    started = time.monotonic()
    outcome = launch.start([sys.executable, "-c", CHILD, str(tmp_path), "60"], workers)
    killer.join()
    assert time.monotonic() - started < 50  # they did not sleep their 60 s
    assert outcome.signal == signal.SIGTERM and outcome.returncodes == {"w0": 143, "w1": 143}
    out = capfd.readouterr().out.splitlines()
    assert "[w0] stopped by SIGTERM" in out and "[w1] stopped by SIGTERM" in out
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the launcher's handler is gone again


DEAF_ONCE = """
import os, pathlib, signal, sys, time
heard = []
def stop(signum, frame):
    heard.append(signum)
    if len(heard) == 2:  # the first one is lost, as Python loses one raised inside a finaliser
        print("archsearch: stopped at the second", signal.Signals(signum).name, file=sys.stderr, flush=True)
        time.sleep(1)  # ending slowly: no signal comes again (after exit, Python would die of it)
        sys.exit(128 + signum)
signal.signal(signal.SIGTERM, stop)
pathlib.Path(sys.argv[1], str(os.getpid())).touch()
time.sleep(60)
"""


def test_launcher_repeats_a_signal_a_worker_missed(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(launch, "RESEND_S", 0.3)
    (worker,) = launch.plan(1, ["cpu"], target_device="auto", threads=1, gpu_count=0, cores=CORES[:1], environ={})

    def terminate_when_running() -> None:
        deadline = time.monotonic() + 60
        while not list(tmp_path.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=terminate_when_running)
    killer.start()
    outcome = launch.start([sys.executable, "-c", DEAF_ONCE, str(tmp_path)], [worker])
    killer.join()
    assert outcome.signal == signal.SIGTERM and outcome.returncodes == {"w0": 143}
    assert capfd.readouterr().err == "[w0] archsearch: stopped at the second SIGTERM\n"


# ------------------------------------------------------------------------------- two CPU workers for real


def _trials(url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="wtiny", storage=url).get_trials(deepcopy=False)


@pytest.mark.slow
def test_two_cpu_workers_share_one_study(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if len(CORES) < 2:
        pytest.skip("needs 2 cores")
    url = f"sqlite:///{in_tmp / 'w.db'}"
    assert cli.main(["run", "spec.yaml", "--storage", url, "--trials", "3", "--workers", "2", "-q"]) == 0
    out = capsys.readouterr().out.splitlines()
    trials = _trials(url)
    states = [(t.number, t.state.name) for t in trials]
    assert sum(t.state in FINISHED for t in trials) == 3, states  # exact total, whichever worker ran them
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3, states
    configs = [json.dumps(t.params, sort_keys=True) for t in trials]
    assert len(set(configs)) == 3, configs  # distinct configurations
    pids = {t.user_attrs["worker"]["pid"] for t in trials}
    assert len(pids) == 2 and os.getpid() not in pids, pids  # both workers ran trials; the command none
    assert out[0] == f"wtiny: 2 workers: w0 on cpu (core {CORES[0]}); w1 on cpu (core {CORES[1]}) (storage {url})"
    trial_lines = [line for line in out if " trial " in line and "COMPLETE" in line]
    assert len(trial_lines) == 3 and all(line[:5] in ("[w0] ", "[w1] ") for line in trial_lines), out
    # one report, by the command, after both workers ended
    assert sum(line.startswith("Pareto front (miou ↑, latency_ms ↓)") for line in out) == 1
    assert out[-1].startswith("wrote ") and (in_tmp / "w" / "wtiny_pareto.csv").is_file()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


@pytest.fixture
def launcher() -> Iterator[list[subprocess.Popen[str]]]:
    """The launcher a test starts; at the end it and any workers still alive are killed."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        for child in _children(p.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.slow
def test_sigterm_stops_both_workers_with_their_trials_queued(
    in_tmp: Path, launcher: list[subprocess.Popen[str]]
) -> None:
    if len(CORES) < 2:
        pytest.skip("needs 2 cores")
    url = f"sqlite:///{in_tmp / 'w.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "archsearch.cli", "run", "spec.yaml", "--storage", url, "--trials", "6"]
    cmd += ["--workers", "2", "-q", "--set", "proxy.iterations=5000"]  # trials that run until stopped
    launcher.append(
        subprocess.Popen(cmd, cwd=in_tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    )
    proc = launcher[0]
    deadline = time.monotonic() + 300
    while True:  # until each worker is inside a trial
        running = []
        if (in_tmp / "w.db").exists():
            try:
                running = [t for t in _trials(url) if t.state == TrialState.RUNNING and "worker" in t.user_attrs]
            except Exception:  # noqa: BLE001 — the workers are still creating the study
                running = []
        if len({t.user_attrs["worker"]["pid"] for t in running}) == 2:
            break
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the workers never both ran a trial"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, (out, err)
    lines = err.strip().splitlines()
    for label in ("w0", "w1"):
        assert any(
            line.startswith(f"[{label}] archsearch: stopped: SIGTERM: stopped; trial ") and "will be retried" in line
            for line in lines
        ), lines
    assert lines[-1].startswith("archsearch: stopped: SIGTERM: stopped 2 workers"), lines
    trials = _trials(url)
    states = {t.number: t.state.name for t in trials}
    assert TrialState.RUNNING not in {t.state for t in trials}, states
    stopped = [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("retry")]
    assert len(stopped) == 2 and {t.user_attrs["fail_reason"] for t in stopped} == {"interrupted"}, states
    queued = [t for t in trials if t.state == TrialState.WAITING]
    assert sorted(t.user_attrs["retry_of"] for t in queued) == sorted(t.number for t in stopped), states
    pids = {t.user_attrs["worker"]["pid"] for t in stopped}
    assert len(pids) == 2 and not [pid for pid in pids if Path(f"/proc/{pid}").exists()]  # no worker left behind
