"""What a failed trial's CUDA fault means for the worker: an out-of-memory is retried once, a lost CUDA context
stops the worker.

On a GPU that several workers share, a trial that runs out of memory may have met another worker's peak, not
its own: it is failed without counting and its configuration queued again (once; :func:`triage`), after this
worker handed its cached memory back (:func:`archsearch.cost.release_memory`, also called after every trial
and after every profiling). A sticky CUDA error — an illegal memory access, a device-side assertion, a launch
failure — leaves the process's CUDA context unusable: every later trial of the process would fail, so the
worker stops with one line (:class:`DeviceLost`) and the trial is queued for the next run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from archsearch.cost import release_memory
from archsearch.util.errors import ArchsearchError


class DeviceLost(ArchsearchError):
    """The worker's CUDA context is lost; the worker stops (the failed trial is queued again)."""

    exit_code = 1


@dataclass(frozen=True)
class Verdict:
    """What to do with a failed trial: ``retry`` — fail it without counting and queue its configuration again;
    ``stop`` — one line: this worker cannot go on."""

    retry: bool = False
    stop: str | None = None


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` (or the error it was raised from) is torch's out-of-memory error."""
    seen: BaseException | None = exc
    for _ in range(4):  # the error, and what it was raised from or during
        if seen is None:
            return False
        if isinstance(seen, torch.OutOfMemoryError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def context_lost(device: torch.device) -> bool:
    """Whether ``device``'s CUDA context in this process can no longer run work: a synchronisation and one tiny
    kernel fail after a sticky error. False on other devices."""
    if device.type != "cuda":
        return False
    try:
        torch.cuda.synchronize(device)
        torch.ones(1, device=device).add_(1).cpu()
    except RuntimeError:  # torch.AcceleratorError (a RuntimeError) on a lost context
        return True
    return False


def triage(exc: BaseException, device: torch.device, retry_count: int = 0) -> Verdict:
    """The verdict on a trial that raised ``exc`` on ``device``, after handing this worker's cached CUDA memory
    back; ``retry_count``: how often the trial's configuration was queued again before (``retry_count``
    attribute). Nothing on the CPU: a failure is recorded as it is."""
    if device.type != "cuda":
        return Verdict()
    release_memory(device)
    if context_lost(device):
        first = (str(exc).splitlines() or [""])[0][:200]
        return Verdict(
            retry=True,
            stop=(
                f"CUDA error on {device} ({exc.__class__.__name__}: {first}); the CUDA context of this worker is "
                "lost, so every later trial would fail: the worker stops, the trial will be retried by the next run"
            ),
        )
    if out_of_memory(exc):
        return Verdict(retry=retry_count == 0)
    return Verdict()
