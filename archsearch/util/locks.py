"""Locks across processes: a file lock (``flock(2)``) for this machine, and a named lock in a database for
processes on many machines that share it.

:func:`file_lock` is the one ``flock`` helper (the device lock builds its readers–writer lock from two of them).
:func:`database_lock` is a lock named by a string in the database an SQLAlchemy engine reaches: a session-level
advisory lock on PostgreSQL, a named lock on MySQL, a file lock beside an SQLite file. A database lock lives as
long as the connection that took it: if the server drops that connection while the lock is held (a restart, a
failover), the lock is gone and :class:`LockLost` is raised when the block ends, so that the caller can undo what
it did under a lock that no longer excluded anyone.

The module needs only the standard library at import (the device lock's helper processes start in milliseconds):
the database statements are plain SQL whose only arguments are numbers and hex digits computed here.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine


class LockLost(RuntimeError):
    """The connection that held a database lock was lost while the lock was held."""


@contextlib.contextmanager
def file_lock(path: str | Path, *, shared: bool = False) -> Iterator[None]:
    """An exclusive (or ``shared``) ``flock`` on ``path`` (created, with its folder) across processes of this
    machine. Every call opens the file afresh, so threads of one process exclude each other as processes do; the
    kernel drops the lock of a process that dies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)  # explicit: a forked child holding a copy of fd must not keep it
    finally:
        os.close(fd)


def advisory_key(name: str) -> int:
    """The signed 64-bit PostgreSQL advisory-lock key of ``name``."""
    return int.from_bytes(hashlib.sha256(f"archsearch:{name}".encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def database_lock(engine: Engine, name: str) -> Iterator[None]:
    """Hold the lock ``name`` in ``engine``'s database, across processes and machines (see the module's text).

    Another database than PostgreSQL, MySQL/MariaDB or an SQLite file gets no lock (an in-memory SQLite database
    is private to its process anyway)."""
    url = engine.url
    backend = url.get_backend_name()
    if backend == "sqlite":
        database = url.database or ""
        if not database or database == ":memory:":
            yield
            return
        with file_lock(f"{database}.{hashlib.sha1(name.encode()).hexdigest()[:8]}.lock"):
            yield
        return
    if backend == "postgresql":
        key = advisory_key(name)
        take, give = f"SELECT pg_advisory_lock({key})", f"SELECT pg_advisory_unlock({key})"
    elif backend in ("mysql", "mariadb"):
        key_name = f"'archsearch:{hashlib.sha1(name.encode()).hexdigest()[:32]}'"
        take, give = f"SELECT GET_LOCK({key_name}, -1)", f"SELECT RELEASE_LOCK({key_name})"
    else:
        yield
        return
    with engine.connect() as conn:
        conn.exec_driver_sql(take)
        conn.commit()  # a session lock outlives the transaction; no transaction stays open meanwhile
        body_raised = True
        try:
            yield
            body_raised = False
        finally:
            try:
                released = conn.exec_driver_sql(give).scalar()
                conn.commit()
            except Exception as exc:  # the connection's errors come as many types (SQLAlchemy's, the driver's)
                if not body_raised:  # the block's own error wins; else say what happened to the lock
                    raise LockLost(f"the connection holding lock {name!r} was lost ({exc.__class__.__name__})") from exc
            else:
                if not released and not body_raised:
                    raise LockLost(f"lock {name!r} was no longer held when released")
