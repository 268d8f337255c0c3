"""Several workers of one study from one command: ``archsearch run SPEC --workers N [--devices …]``.

Each worker is an ``archsearch run`` process on the same storage, so the study's guarantees hold exactly as for
workers started by hand: exact totals and distinct configurations (the study lock of the run loop), and no
timing overlapping other work on the same device (the device's readers–writer lock, named after the physical
device). Each worker is pinned to its device — a GPU through ``CUDA_VISIBLE_DEVICES``, the CPU through
``CUDA_VISIBLE_DEVICES=""`` — and to its own equal share of the cores (``sched_setaffinity`` where the system
has it, and the OpenMP/MKL/OpenBLAS thread caps). Their output is merged line by line, each line prefixed with
its worker (``[w0] …``). SIGINT and SIGTERM are passed on to every worker, which fails its running trial and
queues it again before it exits (the signal is repeated until it does: Python may drop one); a second signal
kills the workers (their trials are then found dead and queued again by the next run on this machine).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import archsearch
from archsearch.util import interrupts
from archsearch.util.errors import ArchsearchError

#: Thread caps set for each worker to the size of its share of the cores (unless already set by the user).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
DEVICES_HELP = "cpu, or GPUs such as cuda:0,cuda:1"
#: Seconds after which a signal passed on to the workers is sent again to those still running.
RESEND_S = 5.0
#: Seconds to wait for a worker's remaining output after it ended.
PUMP_JOIN_S = 10.0
#: How the command's last line starts (``archsearch: error|stopped|interrupted: …``): a worker that printed it
#: is ending and gets no repeated signal.
LAST_LINE = "archsearch: "


@dataclass(frozen=True)
class Worker:
    """One worker process: its label, device, cores and the environment variables it gets."""

    label: str
    device: str  # "cpu" or "cuda:N" (N as this process numbers the GPUs)
    cpus: tuple[int, ...]  # the cores it may run on; empty: not pinned
    env: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        cores = f"core{'s' if len(self.cpus) != 1 else ''} {_ranges(self.cpus)}" if self.cpus else "all cores"
        return f"{self.label} on {self.device} ({cores})"


def _ranges(cpus: Sequence[int]) -> str:
    """``0-3,8`` for cores 0, 1, 2, 3 and 8."""
    runs: list[list[int]] = []
    for c in sorted(cpus):
        if runs and runs[-1][-1] == c - 1:
            runs[-1].append(c)
        else:
            runs.append([c])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def parse_devices(text: str) -> list[str]:
    """``--devices``: ``cpu``, or a comma-separated list of ``cuda:N`` (a device may repeat: two workers on it)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t != "cpu" and not (t.startswith("cuda:") and t[5:].isdigit())]
    if not items or bad:
        raise ArchsearchError(f"--devices {text}: {', '.join(bad) or 'empty'} is not a device; allowed: {DEVICES_HELP}")
    if "cpu" in items and len(set(items)) > 1:
        raise ArchsearchError(
            f"--devices {text}: CPU and GPU workers would measure latency on different devices in one study; "
            f"allowed: {DEVICES_HELP}"
        )
    return items


def core_shares(cores: Sequence[int], n: int) -> list[tuple[int, ...]]:
    """``n`` equal, disjoint shares of ``cores`` (a remainder stays idle, so that every worker trains and measures
    alike); with fewer cores than workers, one core each, taken in turn."""
    cores = sorted(cores)
    if not cores:
        return [()] * n
    if n > len(cores):
        return [(cores[i % len(cores)],) for i in range(n)]
    k = len(cores) // n
    return [tuple(cores[i * k : (i + 1) * k]) for i in range(n)]


def _visible_gpus(environ: Mapping[str, str], count: int) -> list[str]:
    """The physical names of the GPUs this process sees as cuda:0 … (``CUDA_VISIBLE_DEVICES`` when set)."""
    if "CUDA_VISIBLE_DEVICES" in environ:
        return [v.strip() for v in environ["CUDA_VISIBLE_DEVICES"].split(",") if v.strip()][:count]
    return [str(i) for i in range(count)]


def plan(
    n: int | None,
    devices: Sequence[str] | None,
    *,
    target_device: str,
    threads: int,
    gpu_count: int,
    cores: Sequence[int],
    environ: Mapping[str, str] | None = None,
) -> list[Worker]:
    """The workers of ``--workers n --devices …`` for a spec whose ``target.device`` is ``target_device`` and
    ``target.threads`` is ``threads``, on a machine with ``gpu_count`` visible GPUs and ``cores`` usable cores.

    Without ``--devices`` the workers go round the spec's device: every visible GPU for ``cuda`` (and for
    ``auto`` when there is one), else the CPU. Without ``n``, one worker per device listed. Workers on the CPU
    need ``threads`` cores each (latency is measured with that many threads, and the study records it)."""
    environ = os.environ if environ is None else environ
    if devices is None:
        if target_device == "cpu" or (target_device == "auto" and gpu_count == 0):
            devices = ["cpu"]
        elif gpu_count == 0:
            raise ArchsearchError("target.device: 'cuda' was asked for but no CUDA device is available")
        else:
            devices = [f"cuda:{i}" for i in range(gpu_count)]
    n = len(devices) if n is None else n
    if devices[0] == "cpu" and target_device == "cuda":
        raise ArchsearchError("--devices cpu: the spec's target.device is cuda; allowed: cuda:N,…")
    if devices[0] != "cpu":
        if target_device == "cpu":
            raise ArchsearchError(f"--devices {','.join(devices)}: the spec's target.device is cpu; allowed: cpu")
        missing = sorted({d for d in devices if int(d[5:]) >= gpu_count})
        if missing:
            raise ArchsearchError(
                f"--devices {','.join(missing)}: this machine has {gpu_count} visible GPU"
                f"{'' if gpu_count == 1 else 's'}" + (f"; allowed: cuda:0 to cuda:{gpu_count - 1}" if gpu_count else "")
            )
    shares = core_shares(cores, n)
    if devices[0] == "cpu" and shares[0] and len(shares[0]) < threads:
        raise ArchsearchError(
            f"--workers {n}: {len(cores)} cores give each CPU worker {len(shares[0])}, and target.threads is "
            f"{threads}; allowed: at most {max(1, len(cores) // threads)} workers, or lower target.threads"
        )
    physical = _visible_gpus(environ, gpu_count)
    workers = []
    for i in range(n):
        device = devices[i % len(devices)]
        env = {"CUDA_VISIBLE_DEVICES": "" if device == "cpu" else physical[int(device[5:])]}
        if shares[i]:
            env.update({v: str(len(shares[i])) for v in THREAD_VARIABLES if v not in environ})
        workers.append(Worker(f"w{i}", device, shares[i], env))
    return workers


@contextlib.contextmanager
def _pinned(cpus: Sequence[int]) -> Iterator[None]:
    """This thread on ``cpus`` inside the block (a process started in it inherits them), restored after."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _send(procs: Sequence[subprocess.Popen[str]], signum: int) -> None:
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signum)


@contextlib.contextmanager
def _forwarding(procs: list[subprocess.Popen[str]], received: list[int]) -> Iterator[None]:
    """SIGINT/SIGTERM, while the block runs, are passed on to ``procs`` (a second one kills them) and appended
    to ``received``; nothing is raised here."""

    def handler(signum: int, frame: Any) -> None:
        received.append(signum)
        _send(procs, signal.SIGKILL if len(received) > 1 else signum)

    with interrupts.handling(handler):
        yield


def _pump(stream: IO[str], prefix: str, sink: str, lock: threading.Lock, ending: threading.Event | None) -> None:
    """Copy ``stream`` line by line to ``sys.<sink>`` (looked up per line), each line after ``prefix``; set
    ``ending`` on the command's last line (``archsearch: error|stopped|interrupted: …``)."""
    for line in stream:
        with lock, contextlib.suppress(OSError, ValueError):  # a closed output: drain on, or the worker would block
            out = getattr(sys, sink)
            out.write(prefix + line if line.endswith("\n") else prefix + line + "\n")
            out.flush()
        if ending is not None and line.startswith(LAST_LINE):
            ending.set()
    stream.close()


def _wait(procs: Sequence[subprocess.Popen[str]], ending: Sequence[threading.Event], received: list[int]) -> None:
    """Until every process has ended. After a signal was passed on, it is sent again every :data:`RESEND_S`
    seconds to each process still running that has not printed its last line: Python drops an exception that a
    signal handler raises while a finaliser or weak-reference callback runs, so a worker can miss one signal."""
    resent_at = 0.0
    count = 0
    while True:
        alive = [p for p in procs if p.poll() is None]
        if not alive:
            return
        if len(received) != count:  # a new signal: it was passed on just now
            count, resent_at = len(received), time.monotonic()
        if count == 1 and time.monotonic() - resent_at >= RESEND_S:
            _send([p for p, e in zip(procs, ending, strict=True) if not e.is_set()], received[0])
            resent_at = time.monotonic()
        with contextlib.suppress(subprocess.TimeoutExpired):
            alive[0].wait(timeout=0.2)


@dataclass
class Outcome:
    """How the workers ended: each one's exit status, and the first signal that stopped them (None: none)."""

    returncodes: dict[str, int]
    signal: int | None


def package_root() -> Path:
    """The folder that holds the ``archsearch`` package this process runs (put first on the workers' path, so
    that they run the same code as the command that started them)."""

    return Path(archsearch.__file__).resolve().parent.parent


def start(argv: Sequence[str], workers: Sequence[Worker]) -> Outcome:
    """Run ``argv`` once per worker, each with its environment and cores, until all have ended; their stdout and
    stderr go to this process's, line by line, prefixed ``[label] ``."""
    path = os.pathsep.join(p for p in (str(package_root()), os.environ.get("PYTHONPATH", "")) if p)
    base = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    procs: list[subprocess.Popen[str]] = []
    pumps: list[threading.Thread] = []
    ending: list[threading.Event] = []
    received: list[int] = []
    lock = threading.Lock()
    with _forwarding(procs, received):
        for w in workers:
            if received:
                break  # stopped while starting: start no more
            with _pinned(w.cpus):
                p = subprocess.Popen(
                    list(argv),
                    env={**base, **w.env},
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    errors="replace",
                    process_group=0,  # a terminal's Ctrl-C reaches this process only; it passes it on once
                )
            procs.append(p)
            ending.append(threading.Event())
            for stream, sink, last in ((p.stdout, "stdout", None), (p.stderr, "stderr", ending[-1])):
                assert stream is not None
                t = threading.Thread(target=_pump, args=(stream, f"[{w.label}] ", sink, lock, last), daemon=True)
                t.start()
                pumps.append(t)
        _wait(procs, ending, received)
        codes = {w.label: p.wait() for w, p in zip(workers, procs, strict=False)}
        for t in pumps:
            t.join(timeout=PUMP_JOIN_S)  # a process the worker left behind may hold its pipe open
    return Outcome(codes, received[0] if received else None)
