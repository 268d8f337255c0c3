"""Storage, sampler, directions, constraints and workers of an Optuna study.

Storage is an SQLAlchemy URL: an SQLite file under ``runs/`` by default (embedded, zero set-up), PostgreSQL
(or any RDB) for several workers and machines sharing one study — run the same ``archsearch run`` on each with
the same ``--storage``. Heartbeats mark a dead worker's trial failed and it is retried; every finished trial
is committed when it finishes, so nothing finished is lost.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from archsearch import space
from archsearch.errors import ArchsearchError
from archsearch.spec import Spec, to_dict, validate_storage_url

log = logging.getLogger(__name__)

RUNS_DIR = Path("runs")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
HEARTBEAT_S = 60
GRACE_S = 180


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


def _cannot_open(parsed: URL, exc: Exception) -> ArchsearchError:
    first = str(exc).splitlines()[0][:200] if str(exc) else ""
    return ArchsearchError(f"--storage {_shown(parsed)}: cannot open the storage ({exc.__class__.__name__}: {first})")


def _storage(url: str) -> RDBStorage:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    _check_driver(parsed)
    try:
        return RDBStorage(
            url,
            heartbeat_interval=HEARTBEAT_S,
            grace_period=GRACE_S,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
            engine_kwargs={"pool_pre_ping": True} if parsed.get_backend_name() != "sqlite" else {},
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


def sampler(spec: Spec) -> optuna.samplers.BaseSampler:
    """The sampler the spec asks for, seeded. Row studies enumerate rows with a grid over ``row``."""
    seed = spec.search.seed
    if spec.rows or spec.search.sampler == "grid":
        return optuna.samplers.GridSampler(space.grid(spec), seed=seed)
    if spec.search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)


@_one_creator_at_a_time
def open_study(spec: Spec, url: str, *, create: bool = True) -> optuna.Study:
    """Create or resume the study named ``spec.name`` with the spec's objectives as directions."""
    storage = _storage(url)
    directions = [o.direction for o in spec.objectives]
    if not create:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        if spec.name not in names:
            raise ArchsearchError(
                f"{url}: no study named {spec.name!r} (studies there: {', '.join(names) or 'none'}); "
                f"run `archsearch run {spec.path}` first"
            )
    try:
        study = optuna.create_study(
            study_name=spec.name, storage=storage, directions=directions, sampler=sampler(spec), load_if_exists=True
        )
    except ValueError as exc:
        raise ArchsearchError(f"{url}: study {spec.name!r}: {exc}") from None
    if [d.name.lower() for d in study.directions] != directions:
        raise ArchsearchError(
            f"{url}: study {spec.name!r} exists with directions "
            f"{[d.name.lower() for d in study.directions]}, the spec asks for {directions}; use another name or storage"
        )
    study.set_user_attr("spec", to_dict(spec))
    study.set_user_attr("objectives", [o.name for o in spec.objectives])
    study.set_metric_names([o.name for o in spec.objectives])
    return study


def finished(study: optuna.Study) -> int:
    """Trials that count towards the requested total (COMPLETE, PRUNED, FAIL)."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def _describe(t: optuna.trial.FrozenTrial, spec: Spec) -> str:
    a = t.user_attrs
    knobs = a.get("knobs", {})

    def short(v: Any) -> Any:
        if isinstance(v, float):
            return float(f"{v:.3g}")
        return [short(x) for x in v] if isinstance(v, list) else v

    label = a.get("row_label") or ", ".join(f"{k}={short(knobs[k])}" for k in spec.knobs if k in knobs)
    parts = [f"trial {t.number:>3} {t.state.name:<8}"]
    if "params" in a:
        parts.append(f"params {a['params'] / 1e6:.3g}M madds {a['madds'] / 1e9:.4g}G latency {a['latency_ms']:.3g} ms")
    if t.state == TrialState.COMPLETE:
        parts.append(f"mIoU {100 * a['miou']:.2f}% ({a.get('train_seconds', 0):.0f}s train)")
    elif t.state == TrialState.PRUNED:
        parts.append(f"pruned: {a.get('pruned_reason', '?')}")
    elif t.state == TrialState.FAIL:
        parts.append(f"failed: {a.get('fail_reason', 'see log')}")
    return " | ".join(parts) + (f" | {label}" if label else "")


def optimize(spec: Spec, url: str, trials: int | None = None, *, progress: bool = True, echo: Any = print) -> optuna.Study:
    """Run trials until the study holds the requested total of finished trials (resuming a stored study).

    A trial that raises is recorded FAIL with its reason (``fail_reason``) and the study goes on; a trial the
    latency gate rejects is PRUNED with ``pruned_reason``. Several workers may run this on one storage.
    """
    import yaml

    from archsearch import trial as trial_mod
    from archsearch.spec import to_dict

    artifacts = artifacts_dir(spec, url)
    ctx = trial_mod.Context(spec, artifacts, progress=progress)
    for split in (spec.data.train_split, spec.data.val_split):
        ctx.dataset(split)  # a bad data path or split is one clear error now, not a failure in every trial
    study = open_study(spec, url)
    total = trials if trials is not None else (len(spec.rows) if spec.rows else spec.search.trials)
    done = finished(study)
    if done >= total:
        echo(f"{spec.name}: {done} finished trials already (requested {total}); nothing to run")
        return study
    artifacts.mkdir(parents=True, exist_ok=True)
    (artifacts / "spec.yaml").write_text(yaml.safe_dump(to_dict(spec), sort_keys=False))
    echo(f"{spec.name}: {done} finished, running {total - done} more on {ctx.device} "
         f"(storage {url}, artifacts {artifacts})")

    def objective(t: optuna.Trial) -> tuple[float, ...]:
        try:
            return trial_mod.run(t, ctx)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            reason = f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
            t.set_user_attr("fail_reason", reason)
            log.debug("trial %d failed", t.number, exc_info=True)
            raise

    def report(st: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        echo(_describe(t, spec))

    study.optimize(
        objective,
        n_trials=total - done,
        timeout=spec.search.timeout,
        catch=(Exception,),
        callbacks=[optuna.study.MaxTrialsCallback(total, states=FINISHED), report],
        gc_after_trial=True,
    )
    return study
