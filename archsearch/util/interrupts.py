"""SIGINT and SIGTERM, handled one way: a handler installed for both while a block runs and restored after it.

:func:`raising` makes them raise :class:`Signal` and also remembers them, because Python drops an exception that a
signal handler raises while a finaliser or a weak-reference callback runs (garbage collection can run one at any
allocation): :func:`check`, called between training iterations and evaluation batches, raises a remembered
signal again, so a Ctrl-C that landed in a finaliser still stops the work within one iteration.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)

#: Signals received under :func:`raising` and not yet taken by whoever stops the work (:func:`take`).
_pending: list[int] = []

Handler = Callable[[int, FrameType | None], Any] | int


class Signal(BaseException):
    """SIGINT or SIGTERM arrived under :func:`raising`; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def handling(handler: Handler) -> Iterator[None]:
    """``handler`` (a function of ``(signum, frame)``, or ``signal.SIG_IGN``) for SIGINT and SIGTERM while the
    block runs, the previous handlers after it. Only the main thread can set handlers: elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _raise(signum: int, _frame: FrameType | None) -> None:
    _pending.append(signum)
    raise Signal(signum)


@contextlib.contextmanager
def raising() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Signal` while the block runs (and are remembered for :func:`check`)."""
    _pending.clear()
    with handling(_raise):
        try:
            yield
        finally:
            _pending.clear()


def ignored() -> contextlib.AbstractContextManager[None]:
    """SIGINT and SIGTERM ignored while the block runs (what must not be left half-done: recording a stop)."""
    return handling(signal.SIG_IGN)


def check() -> None:
    """Raise :class:`Signal` for a signal received under :func:`raising` and not yet taken — one whose exception
    Python dropped inside a finaliser; nothing otherwise. Cheap: call it once per iteration."""
    if _pending:
        raise Signal(_pending[-1])


def take() -> None:
    """The signals received so far are handled (the caller caught :class:`Signal` and is stopping)."""
    _pending.clear()
