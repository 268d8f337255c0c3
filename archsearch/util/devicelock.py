"""A readers–writer lock per (machine, device) across processes, so that a timing never overlaps other work.

Timing takes the lock **exclusive**; training iterations and evaluation batches take it **shared**, one
iteration at a time, so a waiting timer gets in after at most one iteration of each worker. It is
writer-preferring: a timer first takes a *gate* file exclusively and then the main lock exclusively; a worker
takes the gate for an instant before it takes the main lock shared. While a timer waits (holding the gate) no
new shared hold starts, so workers whose shared holds overlap cannot starve it.

Both are ``flock(2)`` locks (:func:`archsearch.util.locks.file_lock`) on files in ``ARCHSEARCH_LOCK_DIR``
(default: the temp dir) named after the host and the device (``cpu``, ``cuda:0``, …). ``flock`` locks belong to
an open file description: every acquisition opens the file afresh, so threads of one process exclude each other as
processes do, and a forked child (a DataLoader worker) never shares a hold by inheriting it. The kernel drops the
locks of a process that dies.

Only the standard library and :mod:`archsearch.util.locks` are used here (no torch), so the module is cheap to
import in helper processes.
``filelock.ReadWriteLock`` was considered: it is backed by SQLite and waits by polling in SQLite's busy
handler, and its writer preference is an implicit property of SQLite's PENDING lock; two ``flock`` files
state the policy outright and wake waiters from the kernel.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from archsearch.util.locks import file_lock

_held = threading.local()  # per thread: {main lock path: (mode, depth)}


def lock_dir() -> Path:
    """``ARCHSEARCH_LOCK_DIR`` or the temp dir (created if missing)."""
    path = Path(os.environ.get("ARCHSEARCH_LOCK_DIR") or tempfile.gettempdir())
    path.mkdir(parents=True, exist_ok=True)
    return path


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.:" else "_" for c in text)


class DeviceLock:
    """The readers–writer lock of ``device`` (``"cpu"``, ``"cuda:0"``, …) on this machine.

    Re-entrant within a thread: a shared or exclusive request inside an exclusive hold, or a shared request
    inside a shared hold, is granted at once; an exclusive request inside a shared hold of the same thread
    would wait for itself and raises :class:`RuntimeError`.
    """

    def __init__(self, device: str, directory: Path | None = None) -> None:
        self.device = device
        base = directory if directory is not None else lock_dir()
        stem = f"archsearch-{_safe(socket.gethostname())}-{_safe(device)}"
        self.path = base / f"{stem}.lock"
        self.gate = base / f"{stem}.gate"

    def _state(self) -> dict[str, tuple[str, int]]:
        if not hasattr(_held, "locks"):
            _held.locks = {}
        return _held.locks

    @contextlib.contextmanager
    def _reenter(self) -> Iterator[None]:
        state = self._state()
        key = str(self.path)
        held_mode, depth = state[key]
        state[key] = (held_mode, depth + 1)
        try:
            yield
        finally:
            state[key] = (held_mode, depth)

    @contextlib.contextmanager
    def _hold(self, mode: str) -> Iterator[None]:
        state = self._state()
        key = str(self.path)
        state[key] = (mode, 1)
        try:
            yield
        finally:
            del state[key]

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Sole use of the device: waits for every shared hold to end, and keeps new ones out meanwhile."""
        held = self._state().get(str(self.path))
        if held is not None:
            if held[0] == "shared":
                raise RuntimeError(
                    f"{self.device}: an exclusive turn was asked for inside a shared one of the same thread"
                )
            with self._reenter():
                yield
            return
        with file_lock(self.gate), file_lock(self.path), self._hold("exclusive"):
            yield

    def timer_waiting(self) -> bool:
        """Whether a timer holds or waits for the exclusive turn now (it holds the gate). A worker that takes the
        gate for its instant reads as one too: the answer may be a false yes, never a false no."""
        fd = os.open(self.gate, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        """A turn beside other shared holders; waits while a timer holds or waits for the exclusive turn."""
        if str(self.path) in self._state():
            with self._reenter():
                yield
            return
        with contextlib.ExitStack() as held:
            with file_lock(self.gate):  # an instant: blocks while a timer holds or waits
                held.enter_context(file_lock(self.path, shared=True))
            with self._hold("shared"):
                yield
