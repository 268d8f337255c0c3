"""Storage, sampler, directions, constraints and workers of an Optuna study.

Storage is an SQLAlchemy URL: an SQLite file under ``runs/`` by default (embedded, zero set-up), PostgreSQL
(or any RDB) for several workers and machines sharing one study — run the same ``archsearch run`` on each with
the same ``--storage``. Every finished trial is committed when it finishes, so nothing finished is lost.

The run loop (:func:`optimize`) is Optuna's ask-and-tell, so that the study means one thing under any number of
workers and any fault:

- **exact totals** — under a study-wide lock (:func:`archsearch.workers.study_lock`) a worker counts the
  study's trials and asks for a new one only while finished + running < the requested total;
- **distinct configurations** — every parameter is chosen at ask time by :class:`~archsearch.sampler.DistinctSampler`
  under the same lock, so no two trials hold one configuration;
- **dead workers** — a RUNNING trial whose worker died on this machine, or whose heartbeat is stale, is failed
  and its configuration queued again (at most :data:`MAX_RETRIES` times); so is a trial stopped by SIGINT,
  SIGTERM or an I/O error. A failed trial that was retried does not count towards the total;
- **one meaning** — the study stores a fingerprint of what makes trials comparable; a run whose spec differs
  is refused (:class:`SpecChanged`) unless asked to continue anyway.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import signal
import statistics
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import optuna
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from archsearch.cost import release_memory
from archsearch.search import cuda_faults, screening, space, workers
from archsearch.search.sampler import SAMPLERS, DistinctSampler, taken_keys
from archsearch.spec import Spec, metrics, to_dict, validate_storage_url
from archsearch.spec.fingerprint import differences, fingerprint
from archsearch.util import files
from archsearch.util.errors import ArchsearchError
from archsearch.util.formatting import fmt_duration, fmt_ms

log = logging.getLogger(__name__)

RUNS_DIR = Path("runs")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
#: Heartbeat interval and grace (seconds): a worker elsewhere that has not beaten for the grace is dead. The
#: environment variables ARCHSEARCH_HEARTBEAT_S and ARCHSEARCH_GRACE_S override them (tests, fast networks).
HEARTBEAT_S = 60
GRACE_S = 180


def _heartbeat() -> tuple[int, int]:
    import os

    return int(os.environ.get("ARCHSEARCH_HEARTBEAT_S", HEARTBEAT_S)), int(
        os.environ.get("ARCHSEARCH_GRACE_S", GRACE_S)
    )


#: How often one configuration is queued again after its worker died or was stopped.
MAX_RETRIES = 2
#: Consecutive duplicate proposals (an infinite space whose sampler keeps colliding) before a run stops.
MAX_DUPLICATES = 10


def storage_url(spec: Spec, override: str | None = None) -> str:
    """``--storage`` beats the spec's ``storage``, which beats ``sqlite:///runs/<name>.db``."""
    url = override or spec.storage or f"sqlite:///{RUNS_DIR / spec.name}.db"
    if override:
        validate_storage_url(url)
    return url


def artifacts_dir(spec: Spec, url: str) -> Path:
    """Where checkpoints, the resolved spec and exports go: beside an SQLite file, else ``runs/<name>/``."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        db = Path(parsed.database)
        return db.parent / db.stem
    return RUNS_DIR / spec.name


# The pip command that installs each SQLAlchemy driver (DBAPI module) a storage URL may name.
DRIVER_INSTALL = {
    "psycopg": "pip install 'archsearch[postgres]'",  # postgresql:// and postgresql+psycopg://
    "psycopg2": "pip install psycopg2-binary",  # postgresql+psycopg2://
    "pg8000": "pip install pg8000",
    "mysqldb": "pip install mysqlclient",  # mysql://
    "pymysql": "pip install pymysql",
}
# Key of the PostgreSQL advisory lock that serialises creating Optuna's tables and the study (any fixed number;
# advisory locks are per database).
CREATE_LOCK_KEY = 0x61726368  # "arch"

P = ParamSpec("P")
R = TypeVar("R")


def _shown(parsed: URL) -> str:
    return parsed.render_as_string(hide_password=True)


def _check_driver(parsed: URL) -> None:
    """One clear line naming the install command when the URL's database driver cannot be imported."""
    try:
        dialect = parsed.get_dialect()
        dialect.import_dbapi()
    except ImportError as exc:
        driver = parsed.get_dialect().driver
        hint = DRIVER_INSTALL.get(driver, f"install the Python package that provides {exc.name or driver!r}")
        raise ArchsearchError(
            f"--storage {_shown(parsed)}: the {parsed.get_backend_name()} driver {driver!r} that this URL uses is "
            f"not installed ({exc}); {hint}"
        ) from None
    except sqlalchemy.exc.NoSuchModuleError:
        raise ArchsearchError(
            f"--storage {_shown(parsed)}: SQLAlchemy has no database back-end or driver {parsed.drivername!r}; "
            "e.g. sqlite:///runs/study.db or postgresql://user:pw@host/db"
        ) from None


def _cannot_open(parsed: URL, exc: BaseException) -> ArchsearchError:
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, optuna.exceptions.StorageInternalError) and isinstance(cause, SQLAlchemyError):
        exc = cause  # Optuna wraps the database's error: name the database's
    first = str(exc).splitlines()[0][:200] if str(exc) else ""
    return ArchsearchError(f"--storage {_shown(parsed)}: cannot open the storage ({exc.__class__.__name__}: {first})")


def sqlite_path(url: str) -> Path | None:
    """The database file of an SQLite URL (None for other databases and in-memory SQLite)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return Path(parsed.database)
    return None


def _storage(url: str, *, create: bool = True) -> RDBStorage:
    """The RDB storage at ``url``; an SQLite file's folder is created when ``create`` (reading creates nothing).
    Several workers started together on a new SQLite file do not create its tables at once (a file lock)."""
    parsed = make_url(url)
    db = sqlite_path(url)
    if db is not None and create:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a parent is a file, or not writable
            raise ArchsearchError(f"storage {url}: cannot create the folder {db.parent} ({exc.strerror})") from None
    if db is not None and db.exists() and not db.is_file():
        raise ArchsearchError(f"storage {url}: {db} is not a file")
    _check_driver(parsed)
    creating = workers.file_lock(f"{db}.lock") if db is not None and create else contextlib.nullcontext()
    try:
        with creating:
            return RDBStorage(
                url,
                heartbeat_interval=_heartbeat()[0],
                grace_period=_heartbeat()[1],
                heartbeat_stale_trial_callback=_retry_stale,
                engine_kwargs={"pool_pre_ping": True} if parsed.get_backend_name() != "sqlite" else {},
                skip_table_creation=not create,  # reading never creates tables
            )
    except Exception as exc:  # noqa: BLE001 — connection errors come as many SQLAlchemy types
        raise _cannot_open(parsed, exc) from None


@contextlib.contextmanager
def creation_lock(url: str) -> Iterator[None]:
    """Hold, across processes, the right to create Optuna's tables and the study in the database at ``url``.

    Workers started together on a fresh PostgreSQL database otherwise race to create the same tables (an
    IntegrityError on ``pg_type_typname_nsp_index``) and the same study attributes. On PostgreSQL this is a
    session advisory lock taken on its own connection, released when that connection closes; other back-ends
    need none here (SQLite serialises writers itself).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        yield
        return
    _check_driver(parsed)
    engine = sqlalchemy.create_engine(parsed, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with contextlib.ExitStack() as stack:  # closing the connection (the session) releases the lock
        stack.callback(engine.dispose)
        try:
            conn = stack.enter_context(engine.connect())
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": CREATE_LOCK_KEY})
        except Exception as exc:  # noqa: BLE001 — connection errors come as many SQLAlchemy types
            raise _cannot_open(parsed, exc) from None
        yield


def _one_creator_at_a_time(fn: Callable[Concatenate[Spec, str, P], R]) -> Callable[Concatenate[Spec, str, P], R]:
    """Run ``fn(spec, url, ...)`` inside :func:`creation_lock` of ``url``."""

    @functools.wraps(fn)
    def wrapper(spec: Spec, url: str, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with creation_lock(url):
            return fn(spec, url, *args, **kwargs)

    return wrapper


# ---------------------------------------------------------------------------------------------------------
# Sampler and comparability
# ---------------------------------------------------------------------------------------------------------


def sampler(spec: Spec) -> DistinctSampler:
    """The sampler the spec asks for, wrapped so that every trial gets its own stream and a new configuration.

    Row studies take their rows in order, ``grid`` takes unvisited grid points at random; TPE (multivariate,
    with the constant liar for concurrent workers), NSGA-II and random are re-seeded per trial from
    (``search.seed``, trial number).
    """
    seed = spec.search.seed
    dists = space.distributions(spec)
    configs = space.configurations(spec)

    def project(params: dict[str, Any]) -> dict[str, Any]:
        return space.project(spec, params)

    if spec.rows or spec.search.sampler == "grid":
        return DistinctSampler(None, seed, dists, configs, ordered=bool(spec.rows), project=project)
    return DistinctSampler(SAMPLERS.get(spec.search.sampler), seed, dists, configs, project=project)


class SpecChanged(ArchsearchError):
    """The stored study was run with a spec whose trials would not be comparable with this one's."""


def _check_fingerprint(study: optuna.Study, spec: Spec, url: str, allow_changed: bool) -> None:
    stored = study.user_attrs.get("fingerprint")
    current = fingerprint(spec)
    if stored is None or stored == current:
        return
    diff = differences(stored, current)
    if any(d.startswith("objectives") for d in diff):
        raise SpecChanged(
            f"{spec.path}: study {spec.name!r} in {url} has objectives "
            f"{[o['name'] for o in stored['objectives']]}, the spec asks for {[o.name for o in spec.objectives]}; "
            "objectives cannot change within a study: use another name (--set name=NEW) or storage"
        )
    if not allow_changed:
        shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
        raise SpecChanged(
            f"{spec.path}: study {spec.name!r} in {url} was run with another spec ({shown}); its trials would not "
            "be comparable: use another name (--set name=NEW) or storage, or pass --allow-changed-spec to add "
            "these trials anyway (each trial records its budget)"
        )
    log.warning("study %s: continuing with a changed spec (%s)", spec.name, "; ".join(diff))


# ---------------------------------------------------------------------------------------------------------
# Opening a study
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Session:
    """An open study with what the run loop needs beside it: the storage, its URL and the spec."""

    study: optuna.Study
    storage: RDBStorage
    url: str
    spec: Spec

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        with workers.study_lock(self.storage.engine, self.url, self.spec.name):
            yield


@_one_creator_at_a_time
def open_session(spec: Spec, url: str, *, allow_changed: bool = False) -> Session:
    """Create or resume the study named ``spec.name`` (for a run): directions from the spec's objectives, the
    spec and its fingerprint stored when the study is created, a changed spec refused."""
    storage = _storage(url)
    directions = [o.direction for o in spec.objectives]
    with workers.study_lock(storage.engine, url, spec.name):
        try:
            study = optuna.create_study(
                study_name=spec.name,
                storage=storage,
                directions=directions,
                sampler=sampler(spec),
                load_if_exists=True,
            )
        except ValueError as exc:
            raise ArchsearchError(f"{url}: study {spec.name!r}: {exc}") from None
        stored_directions = [d.name.lower() for d in study.directions]
        if stored_directions != directions:
            raise SpecChanged(
                f"{url}: study {spec.name!r} exists with directions {stored_directions}, the spec asks for "
                f"{directions}; use another name or storage"
            )
        if "fingerprint" not in study.user_attrs:
            study.set_user_attr("spec", to_dict(spec))
            study.set_user_attr("fingerprint", fingerprint(spec))
            study.set_metric_names([o.name for o in spec.objectives])
        else:
            _check_fingerprint(study, spec, url, allow_changed)
    return Session(study, storage, url, spec)


def open_study(spec: Spec, url: str, *, create: bool = True, allow_changed: bool = False) -> optuna.Study:
    """The study named ``spec.name``. ``create=False`` (reports) opens an existing study for reading: it writes
    nothing — no database file, no study, no user attributes — and a missing study is an error."""
    if create:
        return open_session(spec, url, allow_changed=allow_changed).study
    db = sqlite_path(url)
    if db is not None and not db.is_file():  # connecting would create an empty database
        raise ArchsearchError(
            f"{url}: no study named {spec.name!r} (no such file {db}); run `archsearch run {spec.path}` first"
        )
    storage = _storage(url, create=False)
    try:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    except SQLAlchemyError as exc:
        raise ArchsearchError(f"{url}: not an archsearch (Optuna) storage ({exc.__class__.__name__})") from None
    if spec.name not in names:
        raise ArchsearchError(
            f"{url}: no study named {spec.name!r} (studies there: {', '.join(names) or 'none'}); "
            f"run `archsearch run {spec.path}` first"
        )
    return optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler(spec))


# ---------------------------------------------------------------------------------------------------------
# Counting, dead workers, retries
# ---------------------------------------------------------------------------------------------------------


def retried(study: optuna.Study) -> set[int]:
    """Numbers of failed trials that another trial retries (user attribute ``retry_of``)."""
    return {int(t.user_attrs["retry_of"]) for t in study.get_trials(deepcopy=False) if "retry_of" in t.user_attrs}


def counts(t: FrozenTrial, retried_numbers: set[int]) -> bool:
    """Whether a trial counts towards the requested total: COMPLETE and PRUNED do; FAIL does unless it was
    retried or was a duplicate that never ran."""
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    if t.state == TrialState.FAIL:
        return t.number not in retried_numbers and "duplicate_of" not in t.user_attrs and not t.user_attrs.get("retry")
    return False


def finished(study: optuna.Study) -> int:
    """Trials that count towards the requested total (see :func:`counts`)."""
    again = retried(study)
    return sum(counts(t, again) for t in study.get_trials(deepcopy=False, states=FINISHED))


def _retry_count(t: FrozenTrial) -> int:
    return int(t.user_attrs.get("retry_count", 0))


def queue_retry(study: optuna.Study, t: FrozenTrial) -> bool:
    """Queue ``t``'s configuration again (at most :data:`MAX_RETRIES` times in a chain); True if queued."""
    if _retry_count(t) >= MAX_RETRIES or not t.params or t.number in retried(study):
        return False
    attrs = {"retry_of": t.number, "retry_count": _retry_count(t) + 1}
    for k in ("row", "row_label"):
        if k in t.user_attrs:
            attrs[k] = t.user_attrs[k]
    study.enqueue_trial(t.params, user_attrs=attrs)
    return True


def fail_trial(study: optuna.Study, number: int, reason: str, *, retry: bool) -> bool:
    """Mark a RUNNING trial FAIL with ``reason`` (race-safe: False when another worker finished it first);
    ``retry`` marks it as not counting and queues its configuration again."""
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)  # noqa: SLF001
    try:
        study._storage.set_trial_user_attr(trial_id, "fail_reason", reason)  # noqa: SLF001
        if retry:
            study._storage.set_trial_user_attr(trial_id, "retry", True)  # noqa: SLF001
        if not study._storage.set_trial_state_values(trial_id, state=TrialState.FAIL):  # noqa: SLF001
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    if retry:
        queue_retry(study, study._storage.get_trial(trial_id))  # noqa: SLF001
    return True


def _retry_stale(study: optuna.Study, t: FrozenTrial) -> None:
    """Optuna's heartbeat callback: a trial whose worker stopped beating is queued again."""
    queue_retry(study, t)


def fail_dead(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials whose worker died on this machine, and (Optuna's heartbeat) those whose worker
    elsewhere stopped beating; their configurations are queued again. Returns the numbers failed here."""
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        if workers.local_and_dead(worker):
            reason = f"worker died (pid {worker['pid']} on {worker['host']})"
            if fail_trial(study, t.number, reason, retry=True):
                failed.append(t.number)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return failed


# ---------------------------------------------------------------------------------------------------------
# Reporting one trial
# ---------------------------------------------------------------------------------------------------------


def _describe(t: FrozenTrial, spec: Spec) -> str:
    a = t.user_attrs
    knobs = a.get("knobs", {})

    def short(v: Any) -> Any:
        if isinstance(v, float):
            return float(f"{v:.3g}")
        return [short(x) for x in v] if isinstance(v, list) else v

    builder = a.get("builder") or spec.builder
    searched = spec.spaces().get(builder) if not spec.rows and builder else None
    label = a.get("row_label") or ", ".join(
        f"{k}={short(knobs[k])}" for k in (searched.knobs if searched else ()) if k in knobs
    )
    if spec.multi and not spec.rows and builder:
        label = f"{builder}: {label}" if label else str(builder)
    parts = [f"trial {t.number:>3} {t.state.name:<8}"]
    madds, miou = metrics.get("madds"), metrics.get("miou")
    if "params" in a and "latency_ms" in a:
        parts.append(
            f"params {a['params'] / 1e6:.3g}M madds {madds.shown(a['madds']):.4g}{madds.unit} "
            f"latency {fmt_ms(a['latency_ms'])}"
        )
    if t.state == TrialState.COMPLETE:
        spread = f" ± {miou.shown(a['miou_std']):.2f}" if a.get("miou_std") is not None else ""
        parts.append(
            f"{miou.label} {miou.shown(a['miou']):.2f}{spread}{miou.unit} ({a.get('train_seconds', 0):.0f}s train)"
        )
        if a.get("stopped_at_rung") is not None:  # multi-fidelity: it did not reach the top rung
            rungs = a.get("rungs") or []
            its = f", {rungs[-1]['iterations']} it" if rungs and isinstance(rungs[-1], dict) else ""
            parts.append(f"stopped at rung {a['stopped_at_rung']}{its}")
    elif t.state == TrialState.PRUNED:
        parts.append(f"pruned: {a.get('pruned_reason', '?')}")
    elif t.state == TrialState.FAIL:
        parts.append(f"failed: {a.get('fail_reason', 'see log')}")
    return " | ".join(parts) + (f" | {label}" if label else "")


# ---------------------------------------------------------------------------------------------------------
# The run loop
# ---------------------------------------------------------------------------------------------------------


class Interrupted(ArchsearchError):
    """SIGINT or SIGTERM stopped the run; the running trial was failed and queued again."""

    exit_code = 130


class RunStopped(ArchsearchError):
    """An I/O error (full disk, read-only file system) stopped the run; the running trial is retryable."""

    exit_code = 1


class _Signal(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class DuplicateConfiguration(Exception):
    """The sampled configuration is already held by another trial (it is not trained again)."""

    def __init__(self, number: int) -> None:
        super().__init__(f"duplicate of trial {number}")
        self.number = number


_IO_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EIO: "input/output error",
}


def io_failure(exc: BaseException) -> str | None:
    """One line for an error that stops the whole run (full disk, read-only or failing file system), else None."""
    for e in (exc, exc.__cause__, exc.__context__, getattr(exc, "orig", None)):
        if isinstance(e, OSError) and e.errno in _IO_ERRNOS:
            return f"{_IO_ERRNOS[e.errno]}: {e.filename or '?'}"
    text = str(exc).lower()
    if "database or disk is full" in text or "no space left on device" in text:
        return f"no space left on device: the storage ({str(exc).splitlines()[0][:160]})"
    if "disk i/o error" in text:
        return f"input/output error: the storage ({str(exc).splitlines()[0][:160]})"
    return None


class _Heartbeat:
    """Beat for one running trial in a background thread (Optuna's RDB heartbeat)."""

    def __init__(self, storage: RDBStorage, trial_id: int) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(storage, trial_id), daemon=True)
        self._thread.start()

    def _beat(self, storage: RDBStorage, trial_id: int) -> None:
        while True:
            with contextlib.suppress(Exception):
                storage.record_heartbeat(trial_id)
            if self._stop.wait(_heartbeat()[0]):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`_Signal` in the main thread (restored afterwards)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _Signal(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """While recording an interrupted trial, a second Ctrl-C must not leave it half-recorded."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _ask(study: optuna.Study, spec: Spec, dists: dict[str, Any]) -> optuna.Trial:
    """A new trial with its whole configuration chosen. In a space over several builders it suggests the builder
    and then only that builder's parameters (asking with the union would give it every builder's)."""
    if not spec.multi or spec.rows:
        return study.ask(dists)
    trial = study.ask()
    space.sample_config(trial, spec)
    return trial


def _holder(study: optuna.Study, trial: optuna.Trial) -> int | None:
    """A trial that already holds this trial's configuration (for the rare proposal the sampler could not
    steer away from), or None."""
    key = space.config_key(trial.params)
    again = retried(study)
    for t in study.get_trials(deepcopy=False):
        if t.number == trial.number or space.config_key(t.params) != key:
            continue
        if t.state in (TrialState.RUNNING, TrialState.WAITING) or counts(t, again):
            return t.number
    return None


def optimize(
    spec: Spec,
    url: str,
    trials: int | None = None,
    *,
    progress: bool = True,
    echo: Callable[[str], Any] = print,
    allow_changed: bool = False,
    user_attrs: Mapping[str, Any] | None = None,
) -> optuna.Study:
    """Run trials until the study holds the requested total of counted trials (resuming a stored study);
    ``user_attrs`` are set on the study when it is opened (metadata such as the calibration statement).

    A trial that raises is recorded FAIL with its reason (``fail_reason``, one line; the traceback with
    ``-v``) and the study goes on; a trial the latency gate rejects is PRUNED with ``pruned_reason``, its
    constraint values (set by the trial before it is told) telling the sampler how far over the bound it is. Several
    workers may run this on one storage, on one machine or many. SIGINT/SIGTERM raise :class:`Interrupted`
    and an I/O error :class:`RunStopped` after the running trial was failed and queued again.
    """
    import yaml

    from archsearch.search import trial as trial_mod

    artifacts = artifacts_dir(spec, url)
    ctx = trial_mod.Context(spec, artifacts, progress=progress, echo=echo)
    for split in (spec.data.train_split, spec.data.val_split):
        ctx.dataset(split)  # a bad data path or split is one clear error now, not a failure in every trial
    ctx.scoring_dataset(spec.data.val_split)
    session = open_session(spec, url, allow_changed=allow_changed)
    study = session.study
    for key, value in (user_attrs or {}).items():
        study.set_user_attr(key, value)
    total = trials if trials is not None else (len(spec.rows) if spec.rows else spec.search.trials)
    dists = space.distributions(spec)
    configs = space.configurations(spec)
    with session.lock():
        fail_dead(study)
        done = finished(study)
    if done >= total:
        echo(f"{spec.name}: {done} finished trials already (requested {total}); nothing to run")
        return study
    try:
        artifacts.mkdir(parents=True, exist_ok=True)
        files.write_text(artifacts / "spec.yaml", yaml.safe_dump(to_dict(spec), sort_keys=False))
    except OSError as exc:
        raise RunStopped(io_failure(exc) or f"{artifacts}: cannot write ({exc.strerror})") from None
    echo(
        f"{spec.name}: {done} of {total} finished, running up to {total - done} more on {ctx.device} "
        f"(storage {_shown(make_url(url))}, artifacts {artifacts})"
    )

    started = time.monotonic()
    durations: list[float] = []
    duplicates = 0
    screen = spec.search.fidelity.screen if spec.search.fidelity and spec.search.fidelity.zero_cost else None
    scored: list[tuple[optuna.Trial, Any, _Heartbeat]] = []  # prepared, awaiting the round's screening decision
    held: list[tuple[optuna.Trial, Any, _Heartbeat]] = []  # screened in, awaiting training
    asked_all = False  # nothing more to ask: decide the round as it is
    trial: optuna.Trial | None
    with _signals_raise():
        while True:
            if spec.search.timeout is not None and time.monotonic() - started >= spec.search.timeout:
                echo(f"{spec.name}: search.timeout of {spec.search.timeout:g} s reached")
                break
            trial = None
            prepared: Any = None
            try:
                if scored and (asked_all or len(scored) >= (screen or 0)):
                    held += _screen(study, spec, scored, total, echo)
                    scored = []
                    continue
                if held:
                    trial, prepared, beat = held.pop(0)
                    holder = None
                else:
                    if asked_all:
                        break
                    with session.lock():
                        fail_dead(study)
                        again = retried(study)
                        all_trials = study.get_trials(deepcopy=False)
                        done = sum(counts(t, again) for t in all_trials if t.state in FINISHED)
                        running = sum(t.state == TrialState.RUNNING for t in all_trials)
                        waiting = sum(t.state == TrialState.WAITING for t in all_trials)
                        if done + running >= total:
                            asked_all = True
                            continue
                        if configs is not None and not waiting and len(taken_keys(study)) >= len(configs):
                            echo(
                                f"{spec.name}: the search space is exhausted: all {len(configs)} configurations "
                                "have a trial"
                            )
                            asked_all = True
                            continue
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with optimize"
                            trial = _ask(study, spec, dists)
                        trial.set_user_attr("worker", workers.identity())
                        holder = _holder(study, trial)
                    position = done + running + 1
                    beat = _Heartbeat(session.storage, trial._trial_id)  # noqa: SLF001
                    ctx.position = f"[{position}/{total}]"
                assert trial is not None
                t0 = time.monotonic()
                try:
                    if holder is not None:
                        raise DuplicateConfiguration(holder)
                    if screen is not None and prepared is None:  # scored now, trained if the round keeps it
                        scored.append((trial, trial_mod.prepare(trial, ctx), beat))
                        ctx.say(f"{ctx.position} trial {trial.number}: scored, waiting for its screening round")
                        continue
                    values = trial_mod.run(trial, ctx, prepared)
                    study.tell(trial, values)
                    duplicates = 0
                except trial_mod.GateRejected:
                    study.tell(trial, state=TrialState.PRUNED)
                except DuplicateConfiguration as exc:
                    duplicates += 1
                    trial.set_user_attr("duplicate_of", exc.number)
                    trial.set_user_attr("fail_reason", str(exc))
                    study.tell(trial, state=TrialState.FAIL)
                    if duplicates >= MAX_DUPLICATES:
                        echo(
                            f"{spec.name}: the sampler proposed {duplicates} configurations in a row that already "
                            "ran; stopping (widen the space or lower --trials)"
                        )
                        break
                    continue
                except Exception as exc:  # a failed trial: recorded, the study goes on
                    stop = io_failure(exc)
                    if stop is not None:
                        raise
                    reason = f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
                    log.debug("trial %d failed", trial.number, exc_info=True)
                    trial.set_user_attr("fail_reason", reason)
                    fault = cuda_faults.triage(exc, ctx.device, int(trial.user_attrs.get("retry_count", 0)))
                    if fault.retry:  # an out-of-memory (once) or a lost CUDA context: queued, not counted
                        trial.set_user_attr("retry", True)
                    study.tell(trial, state=TrialState.FAIL)
                    if fault.retry:
                        queue_retry(study, study._storage.get_trial(trial._trial_id))  # noqa: SLF001
                    if fault.stop is not None:
                        raise cuda_faults.DeviceLost(fault.stop) from None
                finally:
                    if not scored or scored[-1][0] is not trial:  # a trial waiting for its round keeps beating
                        beat.stop()
                    release_memory(ctx.device)  # a worker sharing the GPU does not keep this trial's peak
                durations.append(time.monotonic() - t0)
                frozen = study._storage.get_trial(trial._trial_id)  # noqa: SLF001
                now = finished(study)
                echo(f"[{now}/{total}] " + _describe(frozen, spec) + _time_left(durations, study, total - now))
                trial = None
            except _Signal as sig:
                name = signal.Signals(sig.signum).name
                with _signals_ignored():
                    retry = _abandon(study, trial, "interrupted")
                    _abandon_all(study, scored + held, "interrupted")
                raise Interrupted(
                    f"{name}: stopped; "
                    + (
                        f"trial {trial.number} was failed and will be retried by the next run; "
                        if trial is not None and retry
                        else ""
                    )
                    + "finished trials are stored",
                    exit_code=130 if sig.signum == signal.SIGINT else 143,
                ) from None
            except Exception as exc:
                stop = io_failure(exc)
                if stop is None:
                    raise
                with _signals_ignored():
                    _abandon(study, trial, stop)
                    _abandon_all(study, scored + held, stop)
                raise RunStopped(stop + "; the running trial will be retried by the next run") from None
    _abandon_all(study, scored + held, "the run ended before training it")  # a timeout: scored, not trained
    return study


def _screen(
    study: optuna.Study,
    spec: Spec,
    scored: list[tuple[optuna.Trial, Any, _Heartbeat]],
    total: int,
    echo: Callable[[str], Any],
) -> list[tuple[optuna.Trial, Any, _Heartbeat]]:
    """Decide a screening round (:mod:`archsearch.search.screening`): the screened-out trials are told PRUNED;
    returns the others, to be trained."""
    decisions = screening.decide(study, [t.number for t, _, _ in scored], spec)
    kept = []
    for trial, prepared, beat in scored:
        if screening.record(trial, spec, decisions[trial.number]) is None:
            kept.append((trial, prepared, beat))
            continue
        study.tell(trial, state=TrialState.PRUNED)
        beat.stop()
        now = finished(study)
        echo(f"[{now}/{total}] " + _describe(study.get_trials(deepcopy=False)[trial.number], spec))
    return kept


def _abandon_all(study: optuna.Study, held: list[tuple[optuna.Trial, Any, _Heartbeat]], reason: str) -> None:
    """Fail and queue again the trials this worker scored but did not finish."""
    for trial, _, beat in held:
        beat.stop()
        _abandon(study, trial, reason)


def _abandon(study: optuna.Study, trial: optuna.Trial | None, reason: str) -> bool:
    """Fail a trial this worker cannot finish and queue it again; False when that could not be recorded (its
    worker is then found dead by the next run on this machine, or by the heartbeat)."""
    if trial is None:
        return False
    with contextlib.suppress(Exception):
        return fail_trial(study, trial.number, reason, retry=True)
    return False


def _time_left(durations: list[float], study: optuna.Study, left: int) -> str:
    """Median trial time × trials left, shared among this worker and the others running now."""
    if left <= 0 or not durations:
        return ""
    active = {
        json.dumps(t.user_attrs.get("worker"), sort_keys=True)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    }
    per = statistics.median(durations) * left / max(1, len(active) + 1)
    return f" | ~{fmt_duration(per)} left"
