"""devicelock: the per-device readers–writer lock across processes (timing exclusive, work shared).

The helper processes load archsearch/util/devicelock.py and the locks it is built on (standard library only) without
running the package's __init__, so they start in tens of milliseconds instead of importing torch.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from archsearch.util import devicelock
from archsearch.util.devicelock import DeviceLock

MODULE = Path(__file__).resolve().parents[1] / "archsearch" / "util" / "devicelock.py"

# argv: lock dir, mode (shared|exclusive), hold seconds, pause seconds, log file, stop file, go file, holds.
# The worker waits for the go file (so that all start together), then takes its turn ``holds`` times or until the
# stop file appears. Each turn is logged as "asked entered left" (time.monotonic(), one clock for every process
# of the machine): asked before requesting the lock, entered after acquiring it, left before releasing it.
WORKER = """
import os, sys, time, types
util = os.path.dirname(sys.argv[1])
for name, path in (("archsearch", os.path.dirname(util)), ("archsearch.util", util)):  # bare: no __init__ run
    sys.modules[name] = types.ModuleType(name); sys.modules[name].__path__ = [path]
from archsearch.util import devicelock
lock_dir, mode, hold, pause, log, stop, go, holds = sys.argv[2:]
lock = devicelock.DeviceLock("cpu", __import__("pathlib").Path(lock_dir))
turn = lock.shared if mode == "shared" else lock.exclusive
while not os.path.exists(go):
    time.sleep(0.001)
with open(log, "w", buffering=1) as out:
    for _ in range(int(holds)):
        if os.path.exists(stop):
            break
        asked = time.monotonic()
        with turn():
            entered = time.monotonic()
            time.sleep(float(hold))
            out.write(f"{asked} {entered} {time.monotonic()}\\n")
        time.sleep(float(pause))
"""

Hold = tuple[float, float, float]  # (asked, entered, left)


def _start(tmp: Path, name: str, mode: str, hold: float, pause: float, holds: int) -> tuple[subprocess.Popen, Path]:
    log = tmp / f"{name}.log"
    args = [str(MODULE), str(tmp), mode, str(hold), str(pause), str(log), str(tmp / "stop"), str(tmp / "go")]
    proc = subprocess.Popen([sys.executable, "-c", WORKER, *args, str(holds)])
    return proc, log


def _holds(log: Path) -> list[Hold]:
    if not log.exists():
        return []
    rows = (line.split() for line in log.read_text().splitlines() if line.count(" ") == 2)
    return [(float(a), float(e), float(x)) for a, e, x in rows]


def _overlap(a: Hold, b: Hold) -> bool:
    return a[1] < b[2] and b[1] < a[2]


def _wait_for(pred, what: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, what
        time.sleep(0.01)


@pytest.mark.slow
def test_an_exclusive_hold_never_overlaps_a_shared_one(tmp_path):
    readers = [_start(tmp_path, f"r{i}", "shared", 0.01, 0.0, 40) for i in range(2)]
    writer = _start(tmp_path, "w", "exclusive", 0.01, 0.005, 10)
    (tmp_path / "go").touch()
    for proc, _ in [*readers, writer]:
        assert proc.wait(timeout=60) == 0
    shared = [h for _, log in readers for h in _holds(log)]
    exclusive = _holds(writer[1])
    assert len(exclusive) == 10 and len(shared) == 80
    # The two kinds interleaved (the writer was not starved, the readers not shut out) ...
    assert min(h[1] for h in shared) < max(h[2] for h in exclusive)
    assert min(h[1] for h in exclusive) < max(h[2] for h in shared)
    # ... the two readers' holds did overlap (shared, not a mutex) ...
    r0, r1 = (_holds(log) for _, log in readers)
    assert any(_overlap(a, b) for a in r0 for b in r1)
    # ... and no exclusive hold overlaps any shared hold.
    clashes = [(x, s) for x in exclusive for s in shared if _overlap(x, s)]
    assert not clashes, clashes[:3]


def test_a_waiting_timer_is_not_starved_by_cycling_shared_holders(tmp_path, monkeypatch):
    """Two workers hold the lock shared 50 ms at a time, back to back and overlapping each other, so the main lock
    alone is never free. Once the timer holds the gate, a shared request waits for the timer's turn: each reader
    enters at most once (the request it made before) between the timer taking the gate and entering."""
    gate_taken: list[float] = []
    real_lock = devicelock.file_lock

    @contextlib.contextmanager
    def logged_lock(path: Path, *, shared: bool = False):
        with real_lock(path, shared=shared):
            if Path(path).suffix == ".gate" and not shared:
                gate_taken.append(time.monotonic())
            yield

    readers = [_start(tmp_path, f"r{i}", "shared", 0.05, 0.0, 100_000) for i in range(2)]
    (tmp_path / "go").touch()
    try:
        _wait_for(lambda: all(len(_holds(log)) >= 2 for _, log in readers), "helper processes did not start")
        monkeypatch.setattr(devicelock, "file_lock", logged_lock)
        asked = time.monotonic()
        with DeviceLock("cpu", tmp_path).exclusive():
            entered = time.monotonic()
            time.sleep(0.05)
            left = time.monotonic()
        monkeypatch.undo()
        # the readers go on after the timer's turn (not shut out by it)
        _wait_for(lambda: all(any(h[1] > left for h in _holds(log)) for _, log in readers), "readers stopped")
    finally:
        (tmp_path / "stop").touch()
        for proc, _ in readers:
            proc.wait(timeout=60)
    (gate,) = gate_taken
    assert asked <= gate <= entered
    timer = (asked, entered, left)
    for _, log in readers:
        holds = _holds(log)
        assert not [h for h in holds if _overlap(h, timer)]
        # a shared request made after the timer took the gate enters after the timer's turn
        assert all(h[1] > left for h in holds if h[0] > gate), [h for h in holds if h[0] > gate and h[1] < left]
        # so between taking the gate and entering, the timer let in at most one hold per reader
        assert len([h for h in holds if gate < h[1] < entered]) <= 1
        # and the readers were cycling when it asked: each held the lock shared before and after its turn
        assert any(h[2] < entered for h in holds) and any(h[1] > left for h in holds)


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
