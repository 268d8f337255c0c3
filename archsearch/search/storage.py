"""Where a study lives: its storage URL, the database driver it needs, opening Optuna's RDB storage, and where its
artifacts go.

Storage is an SQLAlchemy URL: an SQLite file under ``runs/`` by default (embedded, zero set-up), PostgreSQL (or any
RDB) for several workers and machines sharing one study — run the same ``archsearch run`` on each with the same
``--storage``. Connections are checked before use (SQLAlchemy's ``pool_pre_ping``), so one that a database restart
left stale is replaced instead of failing a call.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from archsearch.spec import Spec, validate_storage_url
from archsearch.util import locks
from archsearch.util.errors import ArchsearchError

RUNS_DIR = Path("runs")
#: Heartbeat interval and grace (seconds): a worker elsewhere that has not beaten for the grace is dead. The
#: environment variables ARCHSEARCH_HEARTBEAT_S and ARCHSEARCH_GRACE_S override them (tests, fast networks).
HEARTBEAT_S = 60
GRACE_S = 180

# The pip command that installs each SQLAlchemy driver (DBAPI module) a storage URL may name.
DRIVER_INSTALL = {
    "psycopg": "pip install 'archsearch[postgres]'",  # postgresql:// and postgresql+psycopg://
    "psycopg2": "pip install psycopg2-binary",  # postgresql+psycopg2://
    "pg8000": "pip install pg8000",
    "mysqldb": "pip install mysqlclient",  # mysql://
    "pymysql": "pip install pymysql",
}
# The name of the database lock that serialises creating Optuna's tables and the study (advisory locks are per
# database; study names are other locks' names, and none is this sentence).
CREATE_LOCK = "creating Optuna's tables and studies"


def heartbeat() -> tuple[int, int]:
    """(interval, grace) of the heartbeat in seconds."""
    return int(os.environ.get("ARCHSEARCH_HEARTBEAT_S", HEARTBEAT_S)), int(
        os.environ.get("ARCHSEARCH_GRACE_S", GRACE_S)
    )


def storage_url(spec: Spec, override: str | None = None) -> str:
    """``--storage`` beats the spec's ``storage``, which beats ``sqlite:///runs/<name>.db``."""
    url = override or spec.storage or f"sqlite:///{RUNS_DIR / spec.name}.db"
    if override:
        validate_storage_url(url)
    return url


def sqlite_path(url: str) -> Path | None:
    """The database file of an SQLite URL (None for other databases and in-memory SQLite)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return Path(parsed.database)
    return None


def artifacts_dir(spec: Spec, url: str) -> Path:
    """Where checkpoints, the resolved spec and exports go: beside an SQLite file, else ``runs/<name>/``."""
    db = sqlite_path(url)
    return db.parent / db.stem if db is not None else RUNS_DIR / spec.name


def shown(url: str | URL) -> str:
    """``url`` as it may be printed: without its password."""
    return make_url(url).render_as_string(hide_password=True)


def check_driver(parsed: URL) -> None:
    """One clear line naming the install command when the URL's database driver cannot be imported."""
    try:
        dialect = parsed.get_dialect()
        dialect.import_dbapi()
    except ImportError as exc:
        driver = parsed.get_dialect().driver
        hint = DRIVER_INSTALL.get(driver, f"install the Python package that provides {exc.name or driver!r}")
        raise ArchsearchError(
            f"--storage {shown(parsed)}: the {parsed.get_backend_name()} driver {driver!r} that this URL uses is "
            f"not installed ({exc}); {hint}"
        ) from None
    except sqlalchemy.exc.NoSuchModuleError:
        raise ArchsearchError(
            f"--storage {shown(parsed)}: SQLAlchemy has no database back-end or driver {parsed.drivername!r}; "
            "e.g. sqlite:///runs/study.db or postgresql://user:pw@host/db"
        ) from None


def cannot_open(parsed: URL, exc: BaseException) -> ArchsearchError:
    """The one line for a storage that cannot be opened (the database's own error named, not Optuna's wrapper)."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, optuna.exceptions.StorageInternalError) and isinstance(cause, SQLAlchemyError):
        exc = cause
    first = str(exc).splitlines()[0][:200] if str(exc) else ""
    return ArchsearchError(f"--storage {shown(parsed)}: cannot open the storage ({exc.__class__.__name__}: {first})")


def open_storage(
    url: str,
    *,
    create: bool = True,
    on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None,
) -> RDBStorage:
    """The RDB storage at ``url``; an SQLite file's folder is created when ``create`` (reading creates nothing).
    Several workers started together on a new SQLite file do not create its tables at once (a file lock).
    ``on_stale`` is called by Optuna's heartbeat for a trial whose worker stopped beating."""
    parsed = make_url(url)
    db = sqlite_path(url)
    if db is not None and create:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a parent is a file, or not writable
            raise ArchsearchError(f"storage {url}: cannot create the folder {db.parent} ({exc.strerror})") from None
    if db is not None and db.exists() and not db.is_file():
        raise ArchsearchError(f"storage {url}: {db} is not a file")
    check_driver(parsed)
    creating = locks.file_lock(f"{db}.lock") if db is not None and create else contextlib.nullcontext()
    interval, grace = heartbeat()
    try:
        with creating:
            return RDBStorage(
                url,
                heartbeat_interval=interval,
                grace_period=grace,
                heartbeat_stale_trial_callback=on_stale,
                engine_kwargs={"pool_pre_ping": True} if parsed.get_backend_name() != "sqlite" else {},
                skip_table_creation=not create,  # reading never creates tables
            )
    except Exception as exc:  # noqa: BLE001 — connection errors come as many SQLAlchemy types
        raise cannot_open(parsed, exc) from None


@contextlib.contextmanager
def creation_lock(url: str) -> Iterator[None]:
    """Hold, across processes, the right to create Optuna's tables and the study in the database at ``url``.

    Workers started together on a fresh PostgreSQL database otherwise race to create the same tables (an
    IntegrityError on ``pg_type_typname_nsp_index``) and the same study attributes. On PostgreSQL this is an
    advisory lock taken on its own connection; other back-ends need none here (SQLite serialises writers itself).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        yield
        return
    check_driver(parsed)
    engine = sqlalchemy.create_engine(parsed, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with contextlib.ExitStack() as stack:
        stack.callback(engine.dispose)
        try:
            stack.enter_context(locks.database_lock(engine, CREATE_LOCK))
        except Exception as exc:  # noqa: BLE001 — connection errors come as many SQLAlchemy types
            raise cannot_open(parsed, exc) from None
        yield


def trial_row(storage: RDBStorage, study: optuna.Study, number: int) -> int:
    """The storage's key of trial ``number`` of ``study`` (what the storage's per-trial calls take)."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)
