"""What stops or pauses a run, rather than failing one trial: a signal, an I/O error of the disk or of the
storage, a storage that goes away.

A failed trial is recorded and the study goes on; these end the run with one line and leave the running trial to
be retried by the next run. A storage that goes away (a database restart or failover, SQLite locked beyond its
timeout, a storage turned read-only) pauses the run: the worker waits for it with backoff, one log line a wait,
up to a bound (:class:`Outage`), and stops with one line (:class:`StorageLost`) if it does not come back.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import optuna
import sqlalchemy
from sqlalchemy.engine import Engine

from archsearch.search.storage import shown
from archsearch.util import locks
from archsearch.util.errors import ArchsearchError

log = logging.getLogger(__name__)
R = TypeVar("R")


class Interrupted(ArchsearchError):
    """SIGINT or SIGTERM stopped the run; the running trial was failed and queued again."""

    exit_code = 130


class RunStopped(ArchsearchError):
    """An I/O error (full disk, read-only file system) stopped the run; the running trial is retryable."""

    exit_code = 1


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


# ---------------------------------------------------------------------------------------------------------
# A storage that goes away: a database restart or failover, SQLite locked beyond its timeout, a read-only storage
# ---------------------------------------------------------------------------------------------------------

#: How long (seconds) a worker waits for a storage that went away before it stops; ARCHSEARCH_STORAGE_RETRY_S.
STORAGE_RETRY_S = 300.0
#: The longest single wait between two tries (the waits double from 1 s up to this).
MAX_WAIT_S = 15.0
_LOST_TYPES = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, sqlalchemy.exc.DisconnectionError)
_READ_ONLY = ("read-only transaction", "readonly database", "read only transaction")
_NOT_TRANSIENT = ("no such table", "no such column", "syntax error")
_waiting = threading.local()  # .off: this thread does not wait for the storage (the heartbeat, a stopping run)


def storage_retry_s() -> float:
    """The bound of :class:`Outage`'s waits: ``ARCHSEARCH_STORAGE_RETRY_S`` or :data:`STORAGE_RETRY_S`."""
    return float(os.environ.get("ARCHSEARCH_STORAGE_RETRY_S", STORAGE_RETRY_S))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [x for x in (e.__cause__, e.__context__, getattr(e, "orig", None)) if isinstance(x, BaseException)]


def lost_storage(exc: BaseException) -> str | None:
    """One line when ``exc`` means that the storage is away for now — a lost or refused connection (SQLAlchemy's
    ``OperationalError``, ``InterfaceError``, also wrapped in Optuna's ``StorageInternalError``), SQLite locked
    beyond its timeout, a storage that turned read-only, a database lock whose connection was lost — else None.
    A full disk or a failing one is not a passing outage (:func:`io_failure`)."""
    chain = list(_chain(exc))
    if isinstance(exc, StorageLost) or any(io_failure(e) is not None for e in chain):
        return None
    for e in chain:
        text = str(e).lower()
        if isinstance(e, locks.LockLost) or (isinstance(e, _LOST_TYPES) and not any(s in text for s in _NOT_TRANSIENT)):
            return _first_line(e)
        if isinstance(e, sqlalchemy.exc.DBAPIError) and (
            getattr(getattr(e, "orig", None), "sqlstate", None) == "25006" or any(s in text for s in _READ_ONLY)
        ):
            return _first_line(e)
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
    return f"{e.__class__.__name__}: {text}" if text else e.__class__.__name__


class StorageLost(ArchsearchError):
    """The storage stayed away past the bound; the run stops (exit 1) and the next run continues as after a kill."""

    exit_code = 1

    def __init__(self, url: str, seconds: float, running: int | None = None) -> None:
        self.url, self.seconds, self.running = url, seconds, running
        then = (
            f"trial {running} will be retried by the next run" if running is not None else "finished trials are stored"
        )
        super().__init__(f"lost the storage {shown(url)} for {seconds:.0f} s; {then}")

    def during(self, running: int | None) -> StorageLost:
        """The same, naming the trial that was running."""
        return StorageLost(self.url, self.seconds, running if running is not None else self.running)


@contextlib.contextmanager
def not_waiting() -> Iterator[None]:
    """In this block this thread tries the storage once and does not wait for it (see :func:`ride_out`)."""
    before = getattr(_waiting, "off", False)
    _waiting.off = True
    try:
        yield
    finally:
        _waiting.off = before


class Outage:
    """How long the storage at ``url`` has been away, seen from this process's main work; waits with backoff.

    :meth:`wait` is called after a call failed because the storage is away (:func:`lost_storage`): it logs one
    line and sleeps 1, 2, 4, … up to :data:`MAX_WAIT_S` seconds, or raises :class:`StorageLost` once the storage
    has been away for ``bound`` seconds; after that every wait raises at once. :meth:`call` runs a call until it
    succeeds that way."""

    def __init__(self, url: str, bound: float | None = None) -> None:
        self.url = url
        self.bound = storage_retry_s() if bound is None else bound
        self.since: float | None = None  # time.monotonic() of the first failure of the present outage
        self.tries = 0
        self.given_up: float | None = None  # seconds away when the bound was passed
        self.back_at: float | None = None  # time.monotonic() when the last outage ended, or a heartbeat was missed
        self.total_s = 0.0  # seconds spent waiting, all outages together

    def wait(self, reason: str) -> None:
        if self.given_up is not None:
            raise StorageLost(self.url, self.given_up)
        now = time.monotonic()
        if self.since is None:
            self.since, self.tries = now, 0
        away = now - self.since
        if away >= self.bound:
            self.given_up = away
            raise StorageLost(self.url, away)
        delay = max(0.1, min(2.0**self.tries, MAX_WAIT_S, self.bound - away))
        log.warning(
            "storage %s is away (%s); trying again in %.0f s (away %.0f s of at most %.0f s)",
            shown(self.url),
            reason,
            delay,
            away,
            self.bound,
        )
        self.tries += 1
        time.sleep(delay)
        self.total_s += delay

    def ok(self) -> None:
        """A call succeeded: the outage, if there was one, is over."""
        if self.since is not None:
            away = time.monotonic() - self.since
            log.warning("storage %s is back after %.0f s", shown(self.url), away)
            self.since, self.back_at = None, time.monotonic()

    def missed(self) -> None:
        """A heartbeat could not be stored (the heartbeat thread does not wait; it only says so here)."""
        self.back_at = time.monotonic()

    def recent(self, seconds: float) -> bool:
        """Whether an outage ended, or a heartbeat was missed, less than ``seconds`` ago (or an outage goes on):
        other workers' heartbeats may then be stale for the same reason, and their trials are not failed as dead."""
        return self.since is not None or (self.back_at is not None and time.monotonic() - self.back_at < seconds)

    def call(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """``fn(*args, **kwargs)``, tried again while the storage is away (up to the bound)."""
        while True:
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                reason = lost_storage(exc)
                if reason is None:
                    raise
                self.wait(reason)
                continue
            self.ok()
            return result


class Patient:
    """``target`` (an Optuna trial or study) seen through ``outage``: every attribute read and method call is tried
    again while the storage is away (:meth:`Outage.call`), and its study is patient too. The per-trial pipeline
    gets the running trial this way, so that a write the storage broke off in flight is made again when it is back
    instead of failing a trained trial. It passes ``isinstance`` checks for its target's class (Optuna's
    ``upload_artifact`` makes one)."""

    def __init__(self, target: Any, outage: Outage) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_outage", outage)

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return type(self._target)

    def __getattr__(self, name: str) -> Any:
        value = self._outage.call(getattr, self._target, name)
        if isinstance(value, optuna.Study):
            return Patient(value, self._outage)
        if callable(value) and not isinstance(value, type):
            return functools.partial(self._outage.call, value)
        return value


def ride_out(engine: Engine, outage: Outage) -> None:
    """Make every new connection of ``engine`` (a stale one is replaced: ``pool_pre_ping``) wait while the database
    refuses connections, through ``outage`` — so a call that starts while the storage is away waits for it instead
    of failing, in Optuna's code and the trial's as in the run loop's. A thread in :func:`not_waiting` tries once."""

    def connect(dialect: Any, record: Any, cargs: Any, cparams: Any) -> Any:
        while True:
            try:
                connection = dialect.connect(*cargs, **cparams)
            except (dialect.loaded_dbapi.OperationalError, dialect.loaded_dbapi.InterfaceError) as exc:
                if getattr(_waiting, "off", False):
                    raise
                outage.wait(_first_line(exc))
                continue
            if not getattr(_waiting, "off", False):
                outage.ok()
            return connection

    sqlalchemy.event.listen(engine, "do_connect", connect)
