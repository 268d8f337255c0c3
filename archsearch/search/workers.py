"""Who runs a trial, and whether that worker is still alive.

Each trial records its worker (``host``, ``boot_id``, ``pid``, process start time). A RUNNING trial whose worker
was on this machine and is gone (killed, crashed, machine rebooted) is dead at once; a worker elsewhere is dead
when its heartbeat is stale (Optuna's heartbeat, :data:`archsearch.search.storage.GRACE_S`).
"""

from __future__ import annotations

import contextlib
import os
import socket
from functools import cache
from pathlib import Path
from typing import Any, TypeGuard


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
