"""A storage that goes away (issue 21): which errors mean it is away, the bounded waits with backoff and the stop
line, a database lock lost with its connection, and the run loop recording a trial whose write hit an outage.

The whole-process experiments (a PostgreSQL restart under two workers, a server stopped past the bound) are in
test_postgres.py.
"""

from __future__ import annotations

import logging
import sqlite3

import optuna
import pytest
import sqlalchemy
from optuna.exceptions import StorageInternalError
from optuna.trial import TrialState

from archsearch import search, spec
from archsearch.search import faults
from archsearch.search.faults import Outage, StorageLost, lost_storage
from archsearch.util import locks

URL = "postgresql://u:secret@db.example/study"


def _wrapped(orig: Exception, kind: type[sqlalchemy.exc.DBAPIError]) -> StorageInternalError:
    """As Optuna raises it: its StorageInternalError from SQLAlchemy's error around the driver's."""
    try:
        try:
            raise kind("UPDATE trials ...", {}, orig)
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise StorageInternalError("An exception is raised during the commit.") from exc
    except StorageInternalError as exc:
        return exc


class _ReadOnly(Exception):
    sqlstate = "25006"  # PostgreSQL's read_only_sql_transaction, as psycopg carries it


@pytest.mark.parametrize(
    "exc",
    [
        _wrapped(Exception("server closed the connection unexpectedly"), sqlalchemy.exc.OperationalError),
        _wrapped(Exception("connection already closed"), sqlalchemy.exc.InterfaceError),
        _wrapped(sqlite3.OperationalError("database is locked"), sqlalchemy.exc.OperationalError),
        _wrapped(sqlite3.OperationalError("attempt to write a readonly database"), sqlalchemy.exc.OperationalError),
        _wrapped(_ReadOnly("cannot execute UPDATE in a read-only transaction"), sqlalchemy.exc.InternalError),
        locks.LockLost("the connection holding lock 's' was lost (OperationalError)"),
    ],
    ids=["lost", "closed", "sqlite-locked", "sqlite-read-only", "pg-read-only", "lock-lost"],
)
def test_errors_that_mean_the_storage_is_away(exc):
    assert lost_storage(exc)


@pytest.mark.parametrize(
    "exc",
    [
        _wrapped(sqlite3.OperationalError("database or disk is full"), sqlalchemy.exc.OperationalError),  # stops
        _wrapped(sqlite3.OperationalError("no such table: trials"), sqlalchemy.exc.OperationalError),
        _wrapped(Exception("duplicate key value"), sqlalchemy.exc.IntegrityError),
        ValueError("nan loss"),
        StorageLost(URL, 300),
    ],
    ids=["disk-full", "no-table", "integrity", "other", "already-given-up"],
)
def test_errors_that_do_not(exc):
    assert lost_storage(exc) is None


class _Clock:
    """time.monotonic and time.sleep of faults, in a test: sleeping advances the clock, nothing waits."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now, self.slept = 1000.0, []
        monkeypatch.setattr(faults.time, "monotonic", lambda: self.now)
        monkeypatch.setattr(faults.time, "sleep", self.sleep)

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def _flaky(failures: int):
    calls = []

    def call() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise _wrapped(Exception("server closed the connection unexpectedly"), sqlalchemy.exc.OperationalError)
        return "stored"

    return call, calls


def test_a_call_is_tried_again_with_backoff_one_line_a_wait(monkeypatch, caplog):
    clock = _Clock(monkeypatch)
    call, calls = _flaky(5)
    caplog.set_level(logging.WARNING, logger="archsearch.search.faults")
    outage = Outage(URL, bound=300)
    assert outage.call(call) == "stored"
    assert len(calls) == 6 and clock.slept == [1, 2, 4, 8, 15]
    waits = [r.getMessage() for r in caplog.records if "is away" in r.getMessage()]
    assert len(waits) == 5
    assert waits[0].startswith("storage postgresql://u:***@db.example/study is away (OperationalError: ")
    assert waits[0].endswith("trying again in 1 s (away 0 s of at most 300 s)")
    assert caplog.records[-1].getMessage() == "storage postgresql://u:***@db.example/study is back after 30 s"
    assert "secret" not in caplog.text
    assert outage.since is None and outage.recent(60) and not outage.recent(0)


def test_past_the_bound_one_line_and_no_more_waiting(monkeypatch):
    clock = _Clock(monkeypatch)
    call, calls = _flaky(10**6)
    outage = Outage(URL, bound=20)
    with pytest.raises(StorageLost) as info:
        outage.call(call)
    assert clock.slept == [1, 2, 4, 8, 5]  # the last wait ends at the bound
    assert (
        str(info.value) == "lost the storage postgresql://u:***@db.example/study for 20 s; finished trials are stored"
    )
    assert info.value.exit_code == 1
    assert str(info.value.during(7)).endswith("for 20 s; trial 7 will be retried by the next run")
    before = len(calls)
    with pytest.raises(StorageLost):  # given up: later calls stop at once
        outage.call(call)
    assert len(calls) == before + 1 and len(clock.slept) == 5


def test_the_bound_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("ARCHSEARCH_STORAGE_RETRY_S", "5")
    assert Outage(URL).bound == 5
    monkeypatch.delenv("ARCHSEARCH_STORAGE_RETRY_S")
    assert Outage(URL).bound == faults.STORAGE_RETRY_S == 300


def test_other_errors_are_not_retried(monkeypatch):
    clock = _Clock(monkeypatch)

    def boom() -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        Outage(URL).call(boom)
    assert clock.slept == []


def test_a_patient_trial_makes_a_broken_off_write_again(monkeypatch):
    """The trial the per-trial pipeline gets: a write that the storage broke off is made again, its study's calls
    too, and Optuna's own isinstance checks still see a Trial."""
    clock = _Clock(monkeypatch)
    study = optuna.create_study()
    trial = study.ask()
    shutdown = Exception("terminating connection due to administrator command")
    broken = [_wrapped(shutdown, sqlalchemy.exc.OperationalError)]
    write = trial.set_user_attr

    def set_user_attr(key: str, value: object) -> None:
        if broken:
            raise broken.pop()
        write(key, value)

    monkeypatch.setattr(trial, "set_user_attr", set_user_attr)
    patient = faults.Patient(trial, Outage(URL, bound=60))
    assert isinstance(patient, optuna.Trial) and patient.number == 0
    patient.set_user_attr("miou", 0.5)
    assert trial.user_attrs == {"miou": 0.5} and clock.slept == [1]
    assert [t.user_attrs for t in patient.study.get_trials(deepcopy=False)] == [{"miou": 0.5}]


@pytest.mark.slow
def test_a_database_lock_lost_with_its_connection_is_reported(postgres):
    """The server ends the session holding an advisory lock (as a restart does): the lock is gone, and leaving the
    block says so instead of pretending it was held throughout."""
    url = postgres.create_database()
    engine = sqlalchemy.create_engine(url)
    admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    try:
        with locks.database_lock(engine, "s"):  # held and released normally
            pass
        with pytest.raises(locks.LockLost), locks.database_lock(engine, "s"), admin.connect() as conn:
            ends = (
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND pid <> pg_backend_pid()"
            )
            assert conn.execute(sqlalchemy.text(ends)).scalar()
        with locks.database_lock(engine, "s"):  # free again: a new session takes it
            pass
    finally:
        engine.dispose()
        admin.dispose()


TINY = """\
name: tiny
builder: ndnet
knobs: {expansion: {choices: [1, 2, 4]}}
data: {name: synthetic, train_images: 4, val_images: 2, size: [64, 128]}
proxy: {iterations: 2, batch: 2, scale: 1.0, eval_batch: 2}
target: {input: [1, 3, 64, 128], repeats: 2, warmup: 0, device: cpu}
search: {sampler: tpe, seed: 0}
"""


@pytest.mark.slow
def test_a_trial_whose_last_write_hit_an_outage_is_recorded_when_it_is_back(tmp_path, monkeypatch, caplog):
    """SQLite locked beyond its timeout while a trained trial is told: the loop waits and records it (COMPLETE,
    counted), instead of failing it or stopping."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ARCHSEARCH_LOCK_DIR", str(tmp_path))
    (tmp_path / "tiny.yaml").write_text(TINY)
    locked = [_wrapped(sqlite3.OperationalError("database is locked"), sqlalchemy.exc.OperationalError)]
    tell = optuna.Study.tell

    def tell_once_locked(self, *args, **kwargs):
        if locked:
            raise locked.pop()
        return tell(self, *args, **kwargs)

    monkeypatch.setattr(optuna.Study, "tell", tell_once_locked)
    caplog.set_level(logging.WARNING, logger="archsearch.search.faults")
    url = f"sqlite:///{tmp_path / 'x.db'}"
    study = search.optimize(spec.load(tmp_path / "tiny.yaml"), url, 1, progress=False, echo=lambda line: None)
    (t,) = study.get_trials()
    assert t.state == TrialState.COMPLETE and search.finished(study) == 1
    waits = [r.getMessage() for r in caplog.records if "is away" in r.getMessage()]
    assert len(waits) == 1 and "database is locked" in waits[0]
