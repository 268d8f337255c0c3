"""PostgreSQL storage for real: driver errors, workers started together on a fresh database, several workers on
one study (no duplicate configuration, exact totals), and a worker killed mid-trial whose trial is retried.

The multi-worker tests start a private server (``postgres`` fixture, tests/pg.py) and run the command line as
real processes; without the server binaries they skip, except in CI where they fail.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

import pg
from archsearch import cli, search

ROOT = Path(__file__).resolve().parents[1]
STUDY = "pgtiny"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
WAIT_S = 420  # a whole multi-worker run on a loaded 2-core machine stays far below this

# ndnet on tiny synthetic scenes; the knob space has about 2.5 million configurations, so two workers that sample
# independently of each other collide with a chance below 1e-5 in these tests: a repeated configuration means that
# the workers share a sampler stream, or that a trial was retried.
SPEC = f"""\
name: {STUDY}
builder: ndnet
knobs:
  widths: {{each: [{{int: [4, 32]}}, {{int: [4, 32]}}, {{int: [4, 32]}}]}}
  depths: {{each: [{{int: [1, 3]}}, {{int: [1, 3]}}, {{int: [1, 3]}}]}}
  expansion: {{int: [1, 4]}}
objectives:
  - {{name: miou, direction: maximize}}
  - {{name: latency_ms, direction: minimize}}
data: {{name: synthetic, size: [64, 128], train_images: 4, val_images: 2}}
proxy: {{iterations: 2, batch: 2, scale: 1.0, eval_batch: 2}}
target: {{input: [1, 3, 64, 128], repeats: 2, warmup: 0, device: cpu}}
search: {{sampler: tpe, trials: 6, seed: 0}}
"""


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    return path


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["ARCHSEARCH_LOCK_DIR"] = str(tmp_path)  # latency turns among these workers only
    env["OMP_NUM_THREADS"] = "1"
    env["TQDM_DISABLE"] = "1"
    env.pop("CI", None)  # nothing in the workers depends on it
    return env


def _workers(n: int, spec: Path, url: str, trials: int, tmp_path: Path, *extra: str) -> list[subprocess.Popen[str]]:
    """``n`` `archsearch run` processes started back to back, each logging to ``tmp_path/worker<i>.log``."""
    cmd = [
        sys.executable,
        "-m",
        "archsearch.cli",
        "run",
        str(spec),
        "--storage",
        url,
        "--trials",
        str(trials),
        "-q",
        *extra,
    ]
    procs = []
    for i in range(n):
        with open(tmp_path / f"worker{i}.log", "w") as log:  # the child holds its own descriptor
            procs.append(
                subprocess.Popen(cmd, cwd=tmp_path, env=_env(tmp_path), stdout=log, stderr=subprocess.STDOUT, text=True)
            )
    return procs


def _wait(procs: list[subprocess.Popen[str]], tmp_path: Path, timeout: float = WAIT_S) -> list[int]:
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    except subprocess.TimeoutExpired:
        pytest.fail(f"workers still running after {timeout:.0f}s:\n{_logs(tmp_path)}")


def _logs(tmp_path: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(tmp_path.glob("worker*.log")))


@pytest.fixture
def reap() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test started; any still alive at the end are killed (a failed test leaves no workers)."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def _trials(url: str) -> list[FrozenTrial]:
    return optuna.load_study(study_name=STUDY, storage=url).get_trials(deepcopy=False)


def _config(t: FrozenTrial) -> str:
    return json.dumps(t.params, sort_keys=True)


# ---------------------------------------------------------------- driver and connection errors (no server needed)


@pytest.mark.parametrize(
    "url,module,command",
    [
        ("postgresql://u:secret@127.0.0.1/db", "psycopg", "pip install 'archsearch[postgres]'"),
        ("postgresql+psycopg://u@127.0.0.1/db", "psycopg", "pip install 'archsearch[postgres]'"),
        ("postgresql+psycopg2://u@127.0.0.1/db", "psycopg2", "pip install psycopg2-binary"),
    ],
)
def test_missing_driver_names_the_install_command(spec_file, monkeypatch, capsys, url, module, command):
    monkeypatch.setitem(sys.modules, module, None)  # as if the package were not installed
    assert cli.main(["pareto", str(spec_file), "--storage", url]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"driver '{module}'" in err and err.endswith(command)
    assert "secret" not in err


def test_plain_postgresql_url_uses_the_driver_of_the_extra():
    """The `postgres` extra installs psycopg 3: the driver SQLAlchemy picks for a plain postgresql:// URL."""
    import tomllib

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["postgres"]
    assert sqlalchemy.engine.make_url("postgresql://u@h/db").get_dialect().driver == "psycopg"
    assert any(re.match(r"psycopg\[binary\]>=3", req) for req in extra)


def test_unreachable_server_is_one_line(spec_file, capsys):
    pytest.importorskip("psycopg", reason="the `postgres` extra is not installed")
    url = f"postgresql://u@127.0.0.1:{pg.free_port()}/db"  # nothing listens there
    assert cli.main(["pareto", str(spec_file), "--storage", url]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot open the storage (OperationalError" in err


# ---------------------------------------------------------------- a real server


def test_reports_on_a_database_without_any_study_say_no_study(postgres, spec_file, capsys):
    """A fresh database (no Optuna tables): the line SQLite gives, not "relation version_info does not exist";
    and the report creates nothing there."""
    url = postgres.create_database()
    rows_spec = str(ROOT / "studies" / "ndnet_table2.yaml")
    for argv, name, spec in (
        (["pareto", str(spec_file)], STUDY, str(spec_file)),
        (["table", rows_spec], "ndnet_table2", rows_spec),
    ):
        assert cli.main([*argv, "--storage", url, "--out", str(spec_file.parent / "out")]) == 2
        err = capsys.readouterr().err.strip()
        first = f"run `archsearch run {spec}` first"
        assert err == f"archsearch: error: {url}: no study named {name!r} (studies there: none); {first}"
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        assert sqlalchemy.inspect(engine).get_table_names() == []
    finally:
        engine.dispose()


# `archsearch run` as `python -m archsearch.cli` runs it, but only once told to: the slow imports come first, so
# that the workers reach the fresh database at the same moment.
RUN_WHEN_TOLD = textwrap.dedent(
    """
    import runpy, sys, time
    from pathlib import Path
    import archsearch.cli, archsearch.search
    ready, go = Path(sys.argv[1]), Path(sys.argv[2])
    ready.touch()
    while not go.exists():
        time.sleep(0.001)
    sys.argv = ["archsearch", *sys.argv[3:]]
    runpy.run_module("archsearch.cli", run_name="__main__", alter_sys=True)
    """
)


@pytest.mark.slow
def test_eight_workers_started_together_on_a_fresh_database_all_run(postgres, spec_file, tmp_path, reap):
    """8 `archsearch run` processes, imports done, released at once on an empty database: all exit 0 (they used to
    race to create Optuna's tables: IntegrityError on pg_type_typname_nsp_index, exit 2)."""
    url = postgres.create_database()
    go = tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(8)]
    args = ["run", str(spec_file), "--storage", url, "--trials", "8", "-q"]
    for i, r in enumerate(ready):
        with open(tmp_path / f"worker{i}.log", "w") as log:  # the child holds its own descriptor
            reap.append(
                subprocess.Popen(
                    [sys.executable, "-c", RUN_WHEN_TOLD, str(r), str(go), *args],
                    cwd=tmp_path,
                    env=_env(tmp_path),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
    deadline = time.monotonic() + WAIT_S
    while not all(r.exists() for r in ready):
        assert all(p.poll() is None for p in reap), _logs(tmp_path)
        assert time.monotonic() < deadline, f"the workers did not get ready:\n{_logs(tmp_path)}"
        time.sleep(0.05)
    go.touch()
    assert _wait(reap, tmp_path) == [0] * 8, _logs(tmp_path)
    (summary,) = optuna.get_all_study_summaries(url)
    assert summary.study_name == STUDY
    trials = _trials(url)
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    assert sum(t.state in FINISHED for t in trials) >= 8


@pytest.mark.slow
def test_three_workers_share_one_study_without_duplicates(postgres, spec_file, tmp_path, reap):
    url = postgres.create_database()
    reap += _workers(3, spec_file, url, 6, tmp_path)
    assert _wait(reap, tmp_path) == [0] * 3, _logs(tmp_path)
    trials = _trials(url)
    states = [(t.number, t.state.name) for t in trials]
    complete = [_config(t) for t in trials if t.state == TrialState.COMPLETE]
    repeated = sorted({c for c in complete if complete.count(c) > 1})
    finished = sum(t.state in FINISHED for t in trials)
    assert (finished, repeated) == (6, []), f"{finished} finished (6 asked), repeated {repeated}: {states}"
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)], states


OWNER_KEY = re.compile(r"worker|pid|host|process|owner", re.IGNORECASE)


def _owner(t: FrozenTrial, pids: list[int]) -> int | None:
    """The worker (one of ``pids``) that a trial's attributes about its worker name, if they name one."""
    for key, value in {**t.system_attrs, **t.user_attrs}.items():
        if OWNER_KEY.search(key):
            text = json.dumps(value)
            for pid in pids:
                if re.search(rf"(?<!\d){pid}(?!\d)", text):
                    return pid
    return None


def _wait_for_study(url: str, procs: list[subprocess.Popen[str]], tmp_path: Path) -> None:
    """Until a worker has created the study (plain SQL: the test creates no tables of its own)."""
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    deadline = time.monotonic() + WAIT_S
    try:
        while True:
            try:
                with engine.connect() as conn:
                    query = sqlalchemy.text("SELECT count(*) FROM studies WHERE study_name = :n")
                    if conn.execute(query, {"n": STUDY}).scalar():
                        return
            except sqlalchemy.exc.ProgrammingError:
                pass  # no tables yet
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                pytest.fail(f"no study appeared:\n{_logs(tmp_path)}")
            time.sleep(0.1)
    finally:
        engine.dispose()


@pytest.mark.slow
def test_a_killed_worker_trial_fails_and_is_retried(postgres, spec_file, tmp_path, reap):
    """SIGKILL one of three workers while its trial runs: the others finish the study, the killed trial ends FAIL
    (not RUNNING), its configuration runs again in a later trial, and the study holds exactly N finished trials."""
    n = 5
    url = postgres.create_database()
    reap += _workers(3, spec_file, url, n, tmp_path)
    victim, *others = reap
    pids = [p.pid for p in reap]
    _wait_for_study(url, reap, tmp_path)
    storage = optuna.storages.RDBStorage(url)
    study_id = storage.get_study_id_from_name(STUDY)
    deadline = time.monotonic() + WAIT_S
    while True:
        running = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        owners = [_owner(t, pids) for t in running]
        if victim.pid in owners:
            break  # the trials say which worker runs them: the victim runs one
        if len(running) == len(reap) and owners == [None] * len(reap):
            break  # trials without worker attributes: all three workers are inside a trial, the victim too
        assert all(p.poll() is None for p in reap), f"a worker ended early:\n{_logs(tmp_path)}"
        assert time.monotonic() < deadline, f"never saw the victim's trial running:\n{_logs(tmp_path)}"
        time.sleep(0.02)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    running_at_kill = {t.number: owner for t, owner in zip(running, owners, strict=True)}

    assert _wait(others, tmp_path) == [0, 0], _logs(tmp_path)
    trials = {t.number: t for t in storage.get_all_trials(study_id, deepcopy=False)}
    states = {k: t.state.name for k, t in trials.items()}
    assert not [k for k, t in trials.items() if t.state == TrialState.RUNNING], f"left RUNNING: {states}"
    # the killed trial is FAIL and retried: it does not count, its retry does (archsearch.search.counts)
    assert search.finished(optuna.load_study(study_name=STUDY, storage=url)) == n, states
    assert sum(t.state in FINISHED for t in trials.values()) == n + 1, states
    killed = [k for k, owner in running_at_kill.items() if owner == victim.pid] or [
        k for k in running_at_kill if trials[k].state == TrialState.FAIL
    ]
    assert len(killed) == 1, f"running at the kill: {running_at_kill}; states now: {states}"
    dead = trials[killed[0]]
    assert dead.state == TrialState.FAIL, states
    retries = [t for t in trials.values() if t.number > dead.number and _config(t) == _config(dead)]
    assert [t.state for t in retries] == [TrialState.COMPLETE], f"{_config(dead)} was not run again: {states}"


# ---------------------------------------------------------------- the database goes away (issue 21)


def _states(url: str) -> dict[str, int]:
    """Trials by state, read with plain SQL on a connection of its own (none is kept across a restart)."""
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sqlalchemy.text("SELECT state, count(*) FROM trials GROUP BY state")).all()
    finally:
        engine.dispose()
    return {str(state): int(n) for state, n in rows}


def _training(url: str) -> int:
    """Running trials past their worker's turn (they name their worker: the trial itself runs)."""
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    query = (
        "SELECT count(*) FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
        "WHERE t.state = 'RUNNING' AND a.key = 'worker'"
    )
    try:
        with engine.connect() as conn:
            return int(conn.execute(sqlalchemy.text(query)).scalar() or 0)
    finally:
        engine.dispose()


def _mid_run(url: str, procs: list[subprocess.Popen[str]], tmp_path: Path, *, in_trial: bool = False) -> dict[str, int]:
    """Wait until a trial finished and another runs (``in_trial``: past its worker's turn)."""
    _wait_for_study(url, procs, tmp_path)
    deadline = time.monotonic() + WAIT_S
    while True:
        states = _states(url)
        finished = sum(states.get(s, 0) for s in ("COMPLETE", "PRUNED", "FAIL"))
        if states.get("RUNNING", 0) and finished and (not in_trial or _training(url)):
            return states
        assert all(p.poll() is None for p in procs), f"a worker ended early:\n{_logs(tmp_path)}"
        assert time.monotonic() < deadline, f"never mid-run: {states}\n{_logs(tmp_path)}"
        time.sleep(0.05)


@pytest.mark.slow
def test_two_workers_ride_out_a_server_restart(postgres, spec_file, tmp_path, reap):
    """`pg_ctl restart -m fast` under two workers mid-run: both end with exit 0, the study with exactly N counted
    trials of distinct configurations, none left RUNNING, and no traceback."""
    n = 6
    url = postgres.create_database()
    started = time.monotonic()
    reap += _workers(2, spec_file, url, n, tmp_path)
    at_restart = _mid_run(url, reap, tmp_path)
    t0 = time.monotonic()
    postgres.restart()
    restart_s = time.monotonic() - t0
    assert _wait(reap, tmp_path) == [0, 0], _logs(tmp_path)
    wall = time.monotonic() - started
    logs = _logs(tmp_path)
    assert "Traceback" not in logs, logs
    study = optuna.load_study(study_name=STUDY, storage=url)
    trials = study.get_trials(deepcopy=False)
    states = [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in trials]
    complete = [_config(t) for t in trials if t.state == TrialState.COMPLETE]
    assert search.finished(study) == n, states
    assert len(set(complete)) == len(complete), states
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)], states
    lost = sum(t.duration.total_seconds() for t in trials if t.state == TrialState.FAIL and t.duration)
    print(  # the experiment's numbers (run with -s to see them)
        f"\nrestart experiment: restart took {restart_s:.1f} s at {at_restart}; exits 0, 0; {search.finished(study)} "
        f"counted of {len(trials)} trials, {len(complete)} complete, {len(complete) - len(set(complete))} duplicates; "
        f"{logs.count('is away')} waits logged; training lost in failed trials {lost:.1f} s; wall {wall:.0f} s; "
        f"states {states}"
    )


STOP_LINE = re.compile(
    r"archsearch: stopped: lost the storage (?P<url>\S+) for (?P<s>\d+) s; "
    r"(trial (?P<trial>\d+) will be retried by the next run|finished trials are stored)"
)


@pytest.mark.slow
def test_a_server_away_past_the_bound_stops_in_one_line_and_a_rerun_completes(
    postgres, spec_file, tmp_path, reap, monkeypatch
):
    """The server stops for longer than the bound (5 s here): the worker waits, one log line a wait, then stops
    with one line and exit 1, no traceback; once the server is back the next run completes the study, the trial
    that was running retried."""
    n = 3
    url = postgres.create_database()
    monkeypatch.setenv("ARCHSEARCH_STORAGE_RETRY_S", "5")  # the workers inherit it (_env copies os.environ)
    reap += _workers(1, spec_file, url, n, tmp_path)
    _mid_run(url, reap, tmp_path, in_trial=True)
    postgres.pause()
    try:
        assert _wait(reap, tmp_path, timeout=180) == [1], _logs(tmp_path)
    finally:
        postgres.resume()
    log = (tmp_path / "worker0.log").read_text()
    assert "Traceback" not in log, log
    lines = log.strip().splitlines()
    stop = STOP_LINE.fullmatch(lines[-1])
    assert stop and stop["url"] == url and int(stop["s"]) >= 5, log
    assert [line for line in lines[:-1] if "is away" in line], log  # it waited, and said so
    assert not [line for line in lines[:-1] if "archsearch: stopped" in line], log

    rerun = subprocess.run(
        [sys.executable, "-m", "archsearch.cli", "run", str(spec_file), "--storage", url, "--trials", str(n), "-q"],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    study = optuna.load_study(study_name=STUDY, storage=url)
    trials = study.get_trials(deepcopy=False)
    states = [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in trials]
    assert search.finished(study) == n, states
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)], states
    if stop["trial"] is not None:
        k = int(stop["trial"])
        assert trials[k].state == TrialState.FAIL and "worker died" in trials[k].user_attrs["fail_reason"], states
        assert [t.state for t in trials if t.user_attrs.get("retry_of") == k] == [TrialState.COMPLETE], states
