"""The device a cost is measured and a trial trained on: its name, its lock, its threads and its CUDA settings.

- :func:`resolve_device` — ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` to a ``torch.device`` (one line when the
  device is missing);
- :func:`device_model`, :func:`device_name` — what the device is (GPU name; CPU model and thread count);
- :func:`device_id` — the name of the device's lock: ``cpu``, or the GPU's UUID, so that one GPU is one lock
  whatever index ``CUDA_VISIBLE_DEVICES`` gives it in each process;
- :func:`device_turn` / :func:`work_turn` — timing never overlaps other work on the same device of the same
  machine: a timing takes the device's readers–writer lock (:mod:`archsearch.util.devicelock`) exclusive,
  training iterations and evaluation batches take it shared, one at a time;
- :func:`thread_count`, :func:`num_threads` — the thread count set for timing, training and evaluation;
- :func:`tuned` — cuDNN's auto-tuner on for a CUDA block (shapes are fixed within a trial);
- :func:`release_memory` — the CUDA caching allocator's free blocks handed back (several workers share a GPU).
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import re
from collections.abc import Iterator
from pathlib import Path

import torch

from archsearch.util.devicelock import DeviceLock
from archsearch.util.errors import ArchsearchError

#: The devices a spec's ``target.device`` and the CLI's ``--device`` accept.
DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]+)?)$"
#: What they accept, in words (for error lines).
DEVICES = "auto, cpu, cuda, cuda:N"
#: cuDNN's auto-tuner (``torch.backends.cudnn.benchmark``) during training and timing on CUDA; a cost measured
#: with it is not comparable to one measured without, so the cost key records it.
CUDNN_BENCHMARK = True


def resolve_device(device: str) -> torch.device:
    """``auto`` → cuda when available, else cpu; ``cuda`` or ``cuda:N`` without that GPU is an error (one line)."""
    if not re.match(DEVICE_PATTERN, device):
        raise ArchsearchError(f"target.device: {device!r}; allowed: {DEVICES}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ArchsearchError(
                f"target.device: {device!r} was asked for but no CUDA device is available; allowed: auto, cpu"
            )
        index = torch.device(device).index
        if index is not None and index >= torch.cuda.device_count():
            n = torch.cuda.device_count()
            raise ArchsearchError(
                f"target.device: {device!r} but this process sees {n} CUDA device{'' if n == 1 else 's'}; "
                f"allowed: auto, cpu, cuda, cuda:0 … cuda:{n - 1}"
            )
    return torch.device(device)


def cuda_index(device: torch.device) -> int:
    """The CUDA device's index (the current device when ``device`` names none)."""
    if device.index is not None:
        return int(device.index)
    return torch.cuda.current_device() if torch.cuda.is_available() else 0


def device_model(device: torch.device) -> str:
    """The device's model: the GPU's name, or the CPU's ``model name`` from /proc/cpuinfo."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return name


def device_name(device: torch.device, threads: int | None = None) -> str:
    """A human-readable name of the device: GPU model, or the CPU model and thread count (default: torch's)."""
    if device.type == "cuda":
        return device_model(device)
    n = torch.get_num_threads() if threads is None else threads
    return f"{device_model(device)} ({n} thread{'' if n == 1 else 's'})"


def device_id(device: torch.device) -> str:
    """The device's lock name: ``cpu``, or ``cuda-<UUID>`` of the GPU (its logical index ``cuda:N`` only where the
    driver reports no UUID). A logical index is not a GPU: under ``CUDA_VISIBLE_DEVICES`` every worker's GPU is
    ``cuda:0``, and one GPU may be seen under two indices by two processes."""
    if device.type != "cuda":
        return device.type
    index = cuda_index(device)
    uuid = ""
    if torch.cuda.is_available():
        uuid = str(getattr(torch.cuda.get_device_properties(index), "uuid", "") or "")
    return f"cuda-{uuid}" if uuid else f"cuda:{index}"


def device_turn(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """Exclusive turn on ``device`` for timing: no training, evaluation or other timing runs on it meanwhile."""
    return DeviceLock(device_id(device)).exclusive()


@contextlib.contextmanager
def work_turn(device: torch.device | str) -> Iterator[None]:
    """Shared turn on ``device`` for one training iteration or evaluation batch; waits while a timer measures.

    On CUDA the work of the turn is queued, not finished, when the block ends; the turn synchronises the device
    before it ends only while a timer waits for the device (:meth:`DeviceLock.timer_waiting`), so that no kernel
    of the iteration runs into its timing, and otherwise lets the host run ahead. (A timer that starts to wait
    just after that check finds at most one iteration's kernels still queued, which its warm-up passes absorb.)
    ``ARCHSEARCH_NO_TRAIN_LOCK=1`` turns the turn off (only for the contrast in benchmarks/concurrent_timing.py).
    """
    dev = torch.device(device)
    if os.environ.get("ARCHSEARCH_NO_TRAIN_LOCK") == "1":
        yield
        return
    lock = DeviceLock(device_id(dev))
    with lock.shared():
        yield
        if dev.type == "cuda" and lock.timer_waiting():
            torch.cuda.synchronize(dev)


def thread_count(threads: int) -> int:
    """``threads`` as an int; ValueError (one line, the allowed values) below 1."""
    if int(threads) < 1:
        raise ValueError(f"threads {threads}; allowed: an integer >= 1")
    return int(threads)


@contextlib.contextmanager
def num_threads(threads: int | None) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` inside the block, the caller's count restored after it; None leaves
    the count as it is. ValueError (:func:`thread_count`) before the block when ``threads`` is below 1."""
    if threads is None:
        yield
        return
    threads = thread_count(threads)
    caller = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(caller)


@contextlib.contextmanager
def tuned(device: torch.device) -> Iterator[None]:
    """On CUDA, cuDNN's auto-tuner (:data:`CUDNN_BENCHMARK`) inside the block, the caller's setting restored
    after it: the shapes of a trial's training, evaluation and timing are fixed, so each convolution's fastest
    algorithm is searched once. Nothing changes on other devices."""
    if device.type != "cuda":
        yield
        return
    caller = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = CUDNN_BENCHMARK
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = caller


def release_memory(device: torch.device) -> None:
    """On CUDA, collect unreachable objects and hand the caching allocator's free blocks back to the driver, so
    that a worker does not keep its peak while another worker on the same GPU needs the memory. A lost CUDA
    context (a sticky error) cannot free: nothing is done then, and the next real use reports the error."""
    if device.type != "cuda":
        return
    gc.collect()
    if torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):
            torch.cuda.empty_cache()
