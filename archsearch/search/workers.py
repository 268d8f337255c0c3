"""Who runs a trial, whether that worker is still alive, and a study-wide lock between workers.

Each trial records its worker (``host``, ``boot_id``, ``pid``, process start time). A RUNNING trial whose worker
was on this machine and is gone (killed, crashed, machine rebooted) is dead at once; a worker elsewhere is dead
when its heartbeat is stale (Optuna's heartbeat, :data:`archsearch.study.GRACE_S`).

:func:`study_lock` serialises the short critical sections in which a worker counts the study's trials, fails
dead ones, queues retries and asks for a new trial, so that N workers end with exactly N trials and never pick
the same configuration: a PostgreSQL advisory lock, a MySQL named lock, or a file lock beside an SQLite file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, TypeGuard

from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url


@cache
def boot_id() -> str:
    """This machine's boot id (changes on reboot; differs between machines that share a host name)."""
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return ""


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def identity() -> dict[str, Any]:
    """This worker: host name, boot id, process id and start time (a reused pid is a different worker)."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "boot_id": boot_id(), "pid": pid, "start": _start_time(pid)}


def local_and_dead(worker: dict[str, Any] | None) -> TypeGuard[dict[str, Any]]:
    """True when ``worker`` ran on this machine (same boot) and its process is gone (so it is a worker record)."""
    if not worker or worker.get("host") != socket.gethostname():
        return False
    if worker.get("boot_id") != boot_id():
        return False  # this host name on another boot or machine: left to the heartbeat
    return _start_time(int(worker.get("pid", -1))) != worker.get("start")


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created) across processes of this machine."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"archsearch:{name}".encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def study_lock(engine: Engine, url: str, study_name: str) -> Iterator[None]:
    """Hold a lock private to ``study_name`` on this storage, across processes and machines."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database or ""
        if not database or database == ":memory:":
            yield
            return
        with file_lock(f"{database}.{hashlib.sha1(study_name.encode()).hexdigest()[:8]}.lock"):
            yield
        return
    if backend == "postgresql":
        key = _lock_key(study_name)
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
        return
    if backend in ("mysql", "mariadb"):
        name = f"archsearch:{hashlib.sha1(study_name.encode()).hexdigest()[:32]}"
        with engine.connect() as conn:
            conn.execute(text("SELECT GET_LOCK(:k, -1)"), {"k": name})
            try:
                yield
            finally:
                conn.execute(text("SELECT RELEASE_LOCK(:k)"), {"k": name})
        return
    yield  # another database: no lock; several workers may then overshoot the total by a trial each
