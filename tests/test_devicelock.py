"""devicelock: the per-device readers–writer lock across processes (timing exclusive, work shared).

The helper processes load archsearch/util/devicelock.py and the locks it is built on (standard library only) without
running the package's __init__, so they start in tens of milliseconds instead of importing torch.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from archsearch.util.devicelock import DeviceLock

MODULE = Path(__file__).resolve().parents[1] / "archsearch" / "util" / "devicelock.py"

# argv: lock dir, mode (shared|exclusive), hold seconds, pause seconds, log file, stop file, max seconds.
# Each hold is logged as "enter exit" (time.monotonic(), system-wide), entered after acquiring, left before
# releasing; the loop ends when the stop file appears or after max seconds.
WORKER = """
import os, sys, time, types
util = os.path.dirname(sys.argv[1])
for name, path in (("archsearch", os.path.dirname(util)), ("archsearch.util", util)):  # bare: no __init__ run
    sys.modules[name] = types.ModuleType(name); sys.modules[name].__path__ = [path]
from archsearch.util import devicelock
lock_dir, mode, hold, pause, log, stop, most = sys.argv[2:]
lock = devicelock.DeviceLock("cpu", __import__("pathlib").Path(lock_dir))
turn = lock.shared if mode == "shared" else lock.exclusive
end = time.monotonic() + float(most)
with open(log, "w", buffering=1) as out:
    while time.monotonic() < end and not os.path.exists(stop):
        with turn():
            t0 = time.monotonic()
            time.sleep(float(hold))
            out.write(f"{t0} {time.monotonic()}\\n")
        time.sleep(float(pause))
"""


def _start(tmp: Path, name: str, mode: str, hold: float, pause: float, most: float) -> tuple[subprocess.Popen, Path]:
    log = tmp / f"{name}.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            WORKER,
            str(MODULE),
            str(tmp),
            mode,
            str(hold),
            str(pause),
            str(log),
            str(tmp / "stop"),
            str(most),
        ]
    )
    return proc, log


def _holds(log: Path) -> list[tuple[float, float]]:
    if not log.exists():
        return []
    pairs = (line.split() for line in log.read_text().splitlines() if line.count(" ") == 1)
    return [(float(start), float(end)) for start, end in pairs]


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def _wait_for(pred, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "helper processes did not start"
        time.sleep(0.01)


def test_an_exclusive_hold_never_overlaps_a_shared_one(tmp_path):
    readers = [_start(tmp_path, f"r{i}", "shared", 0.01, 0.0, 0.8) for i in range(2)]
    writer = _start(tmp_path, "w", "exclusive", 0.01, 0.005, 0.8)
    for proc, _ in [*readers, writer]:
        assert proc.wait(timeout=20) == 0
    shared = [h for _, log in readers for h in _holds(log)]
    exclusive = _holds(writer[1])
    # Both kinds ran many times, concurrently (the writer was not starved, the readers not shut out) ...
    assert len(exclusive) >= 5 and len(shared) >= 10
    assert min(h[0] for h in shared) < max(h[1] for h in exclusive)
    assert min(h[0] for h in exclusive) < max(h[1] for h in shared)
    # ... the two readers' holds did overlap (shared, not a mutex) ...
    r0, r1 = (_holds(log) for _, log in readers)
    assert any(_overlap(a, b) for a in r0 for b in r1)
    # ... and no exclusive hold overlaps any shared hold.
    clashes = [(x, s) for x in exclusive for s in shared if _overlap(x, s)]
    assert not clashes, clashes[:3]


def test_a_waiting_timer_is_not_starved_by_cycling_shared_holders(tmp_path):
    """Two workers hold the lock shared 50 ms at a time, back to back and overlapping each other, so the main
    lock alone is never free; the gate lets a timer in after about one hold."""
    readers = [_start(tmp_path, f"r{i}", "shared", 0.05, 0.0, 10.0) for i in range(2)]
    try:
        _wait_for(lambda: all(len(_holds(log)) >= 2 for _, log in readers))
        t0 = time.monotonic()
        with DeviceLock("cpu", tmp_path).exclusive():
            waited = time.monotonic() - t0
            inside = time.monotonic()
            time.sleep(0.05)
        (tmp_path / "stop").touch()
    finally:
        (tmp_path / "stop").touch()
        for proc, _ in readers:
            proc.wait(timeout=20)
    assert waited < 0.5, f"the exclusive request waited {waited:.3f} s"
    # The readers were still cycling: each took the lock again after the timer's turn.
    for _, log in readers:
        assert any(h[0] > inside for h in _holds(log))


def test_reentrancy_within_a_thread(tmp_path):
    lock = DeviceLock("cuda:1", tmp_path)
    assert lock.path.name.endswith("-cuda:1.lock") and "cuda:1" in lock.gate.name
    with lock.exclusive(), lock.shared(), lock.exclusive():  # already sole user: granted at once
        pass
    with lock.shared():
        with lock.shared():
            pass
        with pytest.raises(RuntimeError, match="inside a shared"), lock.exclusive():
            pass
    with lock.exclusive():  # everything was released
        pass


def test_lock_dir_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHSEARCH_LOCK_DIR", str(tmp_path / "locks"))
    lock = DeviceLock("cpu")
    assert lock.path.parent == tmp_path / "locks" and lock.path.parent.is_dir()
