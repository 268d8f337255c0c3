"""Files written whole or not at all: a temporary file beside the target, renamed over it when complete.

A reader (another worker, a report) never sees a half-written export, checkpoint or spec; a full disk leaves the
old file (or none) and no temporary file behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from archsearch.util.errors import ArchsearchError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path in ``path``'s folder to write to; renamed to ``path`` when the block ends normally,
    removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def ensure_space(folder: str | Path, needed: int) -> None:
    """Raise ``OSError(ENOSPC)`` naming ``folder`` when it has less than ``needed`` bytes free (checked before
    hours of training are spent on a result that could not be saved)."""

    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise OSError(errno.ENOSPC, f"{free} bytes free, {needed} needed", str(folder))


def check_writable_dir(path: Path, what: str) -> None:
    """``path`` is a folder that exists or can be created, and can be written — checked before anything runs,
    leaving nothing behind: a folder is made in the nearest existing one and removed again (permission bits
    alone do not tell: root may write anywhere, yet not make a folder in ``/proc``). ``what`` starts the error,
    e.g. ``"--out runs/x"``."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ArchsearchError(f"{what}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ArchsearchError(f"{what}: {probe} is not writable")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".archsearch-probe-", dir=probe))
    except OSError as exc:
        raise ArchsearchError(f"{what}: cannot make a folder in {probe} ({exc.strerror})") from None
