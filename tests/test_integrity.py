"""Search integrity (SQLite): distinct streams per worker and resume, pure trials, exact totals, dead workers,
one meaning per study, faults that end cleanly. The PostgreSQL versions are in test_postgres.py."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from archsearch import cli, search, spec
from archsearch.search import space
from archsearch.util import files

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "name": "tiny",
    "builder": "ndnet",
    "knobs": {
        "widths": {"choices": [[8, 16, 32], [12, 24, 48], [16, 32, 64]]},
        "expansion": {"choices": [1, 2, 4]},
    },
    "data": {"name": "synthetic", "train_images": 4, "val_images": 2, "size": [64, 128]},
    "proxy": {"iterations": 2, "batch": 2, "scale": 1.0, "eval_batch": 2},
    "target": {"input": [1, 3, 64, 128], "repeats": 2, "warmup": 0, "device": "cpu"},
    "search": {"sampler": "tpe", "seed": 0},
}


def write_spec(folder: Path, **changes: object) -> Path:
    raw = json.loads(json.dumps(TINY))
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path = folder / "tiny.yaml"
    path.write_text(json.dumps(raw))
    return path


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ARCHSEARCH_LOCK_DIR", str(tmp_path))
    return tmp_path


def _env(tmp: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ARCHSEARCH_LOCK_DIR": str(tmp),
        "OMP_NUM_THREADS": "1",
        "TQDM_DISABLE": "1",
    }


def _worker(tmp: Path, spec_file: Path, url: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "archsearch.cli", "run", str(spec_file), "--storage", url, "-q", *args],
        cwd=tmp,
        env=_env(tmp),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _trials(url: str, name: str = "tiny") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials()


def _keys(trials: list[optuna.trial.FrozenTrial], states=(TrialState.COMPLETE,)) -> list[str]:
    return [space.config_key(t.params) for t in trials if t.state in states]


# -- 1. distinct, continuing streams --------------------------------------------------------------------


def _ask_all(s: optuna.Study, dists: dict, n: int) -> list[str]:
    out = []
    for _ in range(n):
        out.append(space.config_key(s.ask(dists).params))
    return out


@pytest.mark.slow
def test_workers_with_one_seed_sample_distinct_configurations(in_tmp):
    sp = spec.load(write_spec(in_tmp))
    dists = space.distributions(sp)
    url = f"sqlite:///{in_tmp / 's.db'}"
    # two workers = two processes with their own sampler objects seeded alike, sharing one storage
    a = optuna.create_study(study_name="s", storage=url, sampler=search.sampler(sp), directions=["maximize"])
    b = optuna.load_study(study_name="s", storage=url, sampler=search.sampler(sp))
    keys = []
    for _ in range(4):
        keys += _ask_all(a, dists, 1) + _ask_all(b, dists, 1)
    assert len(set(keys)) == 8, "workers in lockstep"
    # a resumed run (a new sampler object, same seed) continues instead of replaying
    c = optuna.load_study(study_name="s", storage=url, sampler=search.sampler(sp))
    assert _ask_all(c, dists, 1)[0] not in keys
    # and Optuna's plain seeded sampler would have replayed: the property the wrapper adds
    plain = [optuna.samplers.TPESampler(seed=0) for _ in range(2)]
    x = optuna.create_study(sampler=plain[0]).ask(dists).params
    y = optuna.create_study(sampler=plain[1]).ask(dists).params
    assert x == y


@pytest.mark.slow
def test_finite_space_exhausted_ends_with_a_line(in_tmp, capsys):
    spec_file = write_spec(in_tmp, knobs={"expansion": {"choices": [1, 2]}})
    url = f"sqlite:///{in_tmp / 'x.db'}"
    assert cli.main(["run", str(spec_file), "--storage", url, "--trials", "3", "-q"]) == 0
    out = capsys.readouterr().out
    assert "exhausted: all 2 configurations have a trial" in out
    trials = _trials(url)
    assert len(trials) == 2 and len(set(_keys(trials))) == 2


@pytest.mark.slow
def test_resume_continues_the_search(in_tmp):
    spec_file = write_spec(in_tmp)
    url = f"sqlite:///{in_tmp / 'x.db'}"
    assert cli.main(["run", str(spec_file), "--storage", url, "--trials", "2", "-q"]) == 0
    first = _keys(_trials(url))
    assert cli.main(["run", str(spec_file), "--storage", url, "--trials", "4", "-q"]) == 0
    keys = _keys(_trials(url))
    assert len(keys) == 4 and len(set(keys)) == 4 and keys[:2] == first


@pytest.mark.slow
def test_a_colliding_proposal_is_not_trained_again(in_tmp):
    """When the sampler cannot avoid a configuration (here forced), the trial is recorded as a duplicate that
    does not count, and the run still ends with the requested number of distinct trials."""
    sp = spec.load(write_spec(in_tmp))
    url = f"sqlite:///{in_tmp / 'x.db'}"
    assert cli.main(["run", str(sp.path), "--storage", url, "--trials", "1", "-q"]) == 0
    s = optuna.load_study(study_name="tiny", storage=url)
    s.enqueue_trial(s.trials[0].params)  # a queued copy of a finished configuration
    assert cli.main(["run", str(sp.path), "--storage", url, "--trials", "2", "-q"]) == 0
    trials = _trials(url)
    dup = [t for t in trials if "duplicate_of" in t.user_attrs]
    assert len(dup) == 1 and dup[0].state == TrialState.FAIL and dup[0].user_attrs["duplicate_of"] == 0
    assert search.finished(optuna.load_study(study_name="tiny", storage=url)) == 2
    assert len(set(_keys(trials))) == 2


# -- 2. pure trials -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_same_knobs_in_two_fresh_processes_give_the_same_miou(tmp_path):
    spec_file = write_spec(tmp_path, knobs={"expansion": {"choices": [2]}}, proxy__iterations=3)
    mious = []
    for i in range(2):
        url = f"sqlite:///{tmp_path / f'p{i}.db'}"
        w = _worker(tmp_path, spec_file, url, "--trials", "1")
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
        (t,) = _trials(url)
        mious.append((t.user_attrs["miou"], t.user_attrs["seed"], t.user_attrs["final_loss"]))
    assert mious[0] == mious[1]


# -- 3. exact totals, dead workers --------------------------------------------------------------------


@pytest.mark.slow
def test_three_workers_make_exactly_n_distinct_trials(tmp_path):
    spec_file = write_spec(tmp_path)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    procs = [_worker(tmp_path, spec_file, url, "--trials", "5") for _ in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    trials = _trials(url)
    assert len(trials) == 5
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len(set(_keys(trials))) == 5


def _wait_for_running(url: str, timeout: float = 240, attr: str = "worker") -> optuna.trial.FrozenTrial:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            running = [t for t in _trials(url) if t.state == TrialState.RUNNING and attr in t.user_attrs]
        except Exception:  # noqa: BLE001 — the study or its tables may not exist yet
            running = []
        if running:
            return running[0]
        time.sleep(0.2)
    raise AssertionError("no RUNNING trial appeared")


@pytest.mark.slow
def test_a_killed_worker_is_failed_and_its_configuration_retried(tmp_path):
    spec_file = write_spec(tmp_path, proxy__iterations=400)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    w = _worker(tmp_path, spec_file, url, "--trials", "2")
    victim = _wait_for_running(url, attr="seed")
    w.send_signal(signal.SIGKILL)
    w.wait(timeout=30)
    # re-run at once (well within the heartbeat grace): the dead worker's trial must not block the study
    short = write_spec(tmp_path, proxy__iterations=2)
    assert cli.main(["run", str(short), "--storage", url, "--trials", "2", "-q", "--allow-changed-spec"]) == 0
    trials = _trials(url)
    dead = trials[victim.number]
    assert dead.state == TrialState.FAIL and dead.user_attrs["fail_reason"].startswith("worker died")
    retry = [t for t in trials if t.user_attrs.get("retry_of") == victim.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == victim.params
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert search.finished(optuna.load_study(study_name="tiny", storage=url)) == 2


# -- 4. one study, one meaning ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_changed_spec_is_refused_naming_the_keys(in_tmp, capsys):
    spec_file = write_spec(in_tmp)
    url = f"sqlite:///{in_tmp / 'x.db'}"
    assert cli.main(["run", str(spec_file), "--storage", url, "--trials", "1", "-q"]) == 0
    capsys.readouterr()
    rc = cli.main(
        [
            "run",
            str(spec_file),
            "--storage",
            url,
            "--trials",
            "2",
            "-q",
            "--set",
            "proxy.iterations=3",
            "--set",
            "target.input=[1,3,32,64]",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "proxy.iterations 2 → 3" in err[0] and "target.input" in err[0] and "--allow-changed-spec" in err[0]
    assert len(_trials(url)) == 1  # nothing was added
    rc = cli.main(
        [
            "run",
            str(spec_file),
            "--storage",
            url,
            "--trials",
            "2",
            "-q",
            "--set",
            "objectives=[{name: params, direction: minimize}]",
        ]
    )
    assert rc == 2 and "direction" in capsys.readouterr().err
    rc = cli.main(
        [
            "run",
            str(spec_file),
            "--storage",
            url,
            "--trials",
            "2",
            "-q",
            "--allow-changed-spec",
            "--set",
            "proxy.iterations=3",
        ]
    )
    assert rc == 0
    trials = _trials(url)
    assert [t.user_attrs["budget"]["proxy"]["iterations"] for t in trials] == [2, 3]
    assert trials[0].user_attrs["fingerprint"] != trials[1].user_attrs["fingerprint"]


@pytest.mark.slow
def test_objectives_cannot_be_relabelled(in_tmp, capsys):
    spec_file = write_spec(in_tmp)
    url = f"sqlite:///{in_tmp / 'x.db'}"
    assert cli.main(["run", str(spec_file), "--storage", url, "--trials", "1", "-q"]) == 0
    capsys.readouterr()
    rc = cli.main(
        [
            "run",
            str(spec_file),
            "--storage",
            url,
            "-q",
            "--allow-changed-spec",
            "--set",
            "objectives=[{name: miou, direction: maximize}, {name: params, direction: minimize}]",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "objectives cannot change" in err


# -- 6. faults end cleanly ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signals_fail_the_trial_once_and_it_is_retried(tmp_path, sig, code):
    spec_file = write_spec(tmp_path, proxy__iterations=400)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    w = _worker(tmp_path, spec_file, url, "--trials", "1")
    victim = _wait_for_running(url, attr="seed")
    time.sleep(0.5)
    w.send_signal(sig)
    _, err = w.communicate(timeout=60)
    assert w.returncode == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and "will be retried" in lines[0], err
    t = _trials(url)[victim.number]
    assert t.state == TrialState.FAIL and t.user_attrs["fail_reason"] == "interrupted"
    short = write_spec(tmp_path, proxy__iterations=2)
    assert cli.main(["run", str(short), "--storage", url, "-q", "--trials", "1", "--allow-changed-spec"]) == 0
    trials = _trials(url)
    assert [t.user_attrs.get("retry_of") for t in trials] == [None, victim.number]
    assert trials[1].state == TrialState.COMPLETE and trials[1].params == victim.params


@pytest.mark.slow
def test_a_failed_trial_is_one_line_and_the_study_goes_on(in_tmp, capsys):
    spec_file = write_spec(in_tmp)
    url = f"sqlite:///{in_tmp / 'x.db'}"
    # 1e30 is a YAML 1.2 number (accepted by --set); this learning rate diverges at once
    rc = cli.main(
        [
            "run",
            str(spec_file),
            "--storage",
            url,
            "--trials",
            "2",
            "-q",
            "--set",
            "proxy.lr=1e30",
            "--set",
            "proxy.iterations=3",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 1  # no trial completed
    assert "Traceback" not in out + err
    failed = [line for line in out.splitlines() if " FAIL " in line and "failed: " in line]
    assert len(failed) == 2 and all("failed: TrainingDiverged" in line for line in failed)
    assert [t.state for t in _trials(url)] == [TrialState.FAIL, TrialState.FAIL]


@pytest.mark.slow
def test_full_disk_stops_the_run_with_one_line_and_no_partial_file(in_tmp, capsys, monkeypatch):
    spec_file = write_spec(in_tmp)
    url = f"sqlite:///{in_tmp / 'x.db'}"
    from archsearch.training import checkpoint

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(in_tmp / "x" / "checkpoints"))

    monkeypatch.setattr(checkpoint, "upload", full)
    rc = cli.main(["run", str(spec_file), "--storage", url, "--trials", "3", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1
    assert err[0].startswith("archsearch: stopped: no space left on device: ") and "checkpoints" in err[0]
    t, queued = _trials(url)
    assert t.state == TrialState.FAIL and t.user_attrs["retry"] is True
    assert queued.state == TrialState.WAITING and queued.user_attrs["retry_of"] == 0
    assert not list(in_tmp.rglob("*.tmp")) and not list(in_tmp.rglob(".ckpt-*"))
    monkeypatch.undo()
    monkeypatch.chdir(in_tmp)
    assert cli.main(["run", str(spec_file), "--storage", url, "--trials", "1", "-q"]) == 0
    trials = _trials(url)
    assert trials[-1].user_attrs["retry_of"] == 0 and trials[-1].state == TrialState.COMPLETE


def test_atomic_writes_leave_the_old_file_on_failure(tmp_path):
    target = tmp_path / "front.csv"
    files.write_text(target, "old")
    with pytest.raises(OSError), files.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device", str(target))
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["front.csv"]


def test_set_accepts_yaml_number_forms(tmp_path):
    sp = spec.load(write_spec(tmp_path), ["proxy.lr=1e6", "proxy.weight_decay=5e-4", "proxy.momentum=1E-1"])
    assert (sp.proxy.lr, sp.proxy.weight_decay, sp.proxy.momentum) == (1e6, 5e-4, 0.1)


# -- 8. checkpoints in the artifact store ---------------------------------------------------------------


@pytest.mark.slow
def test_checkpoints_go_through_the_artifact_store(in_tmp):
    spec_file = write_spec(in_tmp)
    url = f"sqlite:///{in_tmp / 'x.db'}"
    store = in_tmp / "shared-store"
    assert cli.main(["run", str(spec_file), "--storage", url, "--trials", "1", "-q", "--artifacts", str(store)]) == 0
    (t,) = _trials(url)
    assert t.user_attrs["checkpoint_store"] == str(store)
    assert Path(t.user_attrs["checkpoint"]) == store / t.user_attrs["checkpoint_artifact"]
    assert Path(t.user_attrs["checkpoint"]).is_file()


@pytest.mark.slow
def test_a_worker_elsewhere_with_a_stale_heartbeat_is_failed_and_retried(in_tmp, monkeypatch):
    monkeypatch.setenv("ARCHSEARCH_HEARTBEAT_S", "1")
    monkeypatch.setenv("ARCHSEARCH_GRACE_S", "2")
    spec_file = write_spec(in_tmp)
    url = f"sqlite:///{in_tmp / 'x.db'}"
    sp = spec.load(spec_file)
    session = search.open_session(sp, url)
    t = session.study.ask(space.distributions(sp))
    t.set_user_attr("worker", {"host": "another-machine", "boot_id": "b", "pid": 1, "start": "1"})
    session.storage.record_heartbeat(t._trial_id)
    time.sleep(3)
    assert cli.main(["run", str(spec_file), "--storage", url, "--trials", "1", "-q"]) == 0
    trials = _trials(url)
    assert trials[0].state == TrialState.FAIL
    assert trials[1].user_attrs["retry_of"] == 0 and trials[1].params == trials[0].params
    assert trials[1].state == TrialState.COMPLETE


@pytest.mark.slow
def test_eval_reads_a_trial_from_the_storage_and_its_store(in_tmp, capsys, monkeypatch):
    spec_file = write_spec(in_tmp)
    url = f"sqlite:///{in_tmp / 'x.db'}"
    store = in_tmp / "shared-store"
    assert cli.main(["run", str(spec_file), "--storage", url, "--trials", "1", "-q", "--artifacts", str(store)]) == 0
    (t,) = _trials(url)
    elsewhere = in_tmp / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # another working folder: nothing beside it but the storage URL and the store
    capsys.readouterr()
    assert cli.main(["eval", str(spec_file), "--trial", "0", "--storage", url, "-q", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"mIoU {100 * t.user_attrs['miou']:.2f}%" in out
    rc = cli.main(["eval", str(spec_file), "--trial", "7", "--storage", url, "-q"])
    assert rc == 2 and "no checkpoint" in capsys.readouterr().err
