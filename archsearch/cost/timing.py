"""The latency protocol (README, "Latency protocol"): how a forward pass is timed and summarised.

- :func:`latency` — eval mode, no autograd, batch norm folded into the convolutions before it
  (:func:`archsearch.cost.folding.fold_bn`), the logits up-sampled to the input size in the timed forward of every
  builder (:class:`~archsearch.cost.forward.TimedForward`), warm-up, synchronised timing (the GPU synchronised
  after each pass, cuDNN's auto-tuner on) at a set thread count, repeats until the 95% confidence interval of the
  median is within ``rel_ci`` of it (bounded by ``max_seconds``); median, p90, repeats and the interval's
  half-width recorded with the device's name.
- :func:`time_calls` — that repeat loop for any callable (the deployment runtimes of
  :mod:`archsearch.cost.runtimes` use it); :func:`interleaved` — round-robin comparison of several callables,
  which every benchmark uses.
- :func:`p90`, :func:`median_ci`, :func:`half_width` — the statistics: NumPy's quantile and SciPy's
  distribution-free (binomial order-statistic) interval of the median (``scipy.stats.quantile_test``).

Timing never overlaps other work on the same device of the same machine: :func:`latency` takes the device's
exclusive turn (:func:`archsearch.cost.devices.device_turn`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import statistics
import sys
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TypeVar, cast

import numpy as np
import torch
import torch.nn as nn

from archsearch.cost.devices import device_name, device_turn, num_threads, resolve_device, thread_count, tuned
from archsearch.cost.folding import fold_bn, probe_size
from archsearch.cost.forward import TimedForward, eval_mode


@dataclass(frozen=True)
class Latency:
    """Result of :func:`latency`: milliseconds per forward pass.

    ``half_width_ms`` is half the width of the 95% confidence interval of the median (:func:`median_ci`);
    ``runtime`` the software that ran the forward (``eager``, ``compile``, ``onnxruntime``, ``openvino``,
    ``tensorrt``) and ``runtime_version`` its version; ``fold_bn`` whether batch norm was folded first."""

    median_ms: float
    p90_ms: float
    repeats: int
    device: str
    threads: int
    input_size: tuple[int, ...]
    dtype: str
    memory_format: str = "nchw"
    half_width_ms: float = math.nan
    runtime: str = "eager"
    runtime_version: str = ""
    fold_bn: bool = False

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d


def p90(times: Sequence[float]) -> float:
    """The 90th percentile of timings: the sample at rank round(0.9·(n − 1)) of the sorted list (NumPy's
    ``nearest`` quantile)."""
    return float(np.quantile(np.asarray(times, dtype=float), 0.9, method="nearest"))


def _median_interval(times: Sequence[float], confidence: float) -> tuple[float, float] | None:
    # SciPy on first use, as before the split: imported with this module, it changed the heap's layout enough that
    # a forward pass right after keep_freed_memory() page-faulted again now and then (tests/test_timing.py)
    from scipy.stats import quantile_test

    if len(times) == 0:
        raise ValueError("median_ci of no samples")
    # a ConfidenceInterval (low, high); scipy-stubs 1.17 types QuantileTestResult.confidence_interval as a float
    ci = quantile_test(np.asarray(times, dtype=float), p=0.5).confidence_interval(confidence)
    low, high = cast("tuple[float, float]", ci)
    if math.isnan(low) or math.isnan(high):
        return None
    return float(low), float(high)


def median_ci(times: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of the median of ``times``: the order statistics ``x(l)`` and
    ``x(n+1−l)`` with ``l`` the largest rank such that a Binomial(n, ½) count lies in ``[l, n−l]`` with
    probability ≥ ``confidence`` (``scipy.stats.quantile_test``'s interval). With fewer than 6 samples no such
    interval exists at 95%; the whole range is returned (its coverage is below 95%)."""
    interval = _median_interval(times, confidence)
    return interval if interval is not None else (float(min(times)), float(max(times)))


def half_width(times: Sequence[float], confidence: float = 0.95) -> float:
    """Half the width of :func:`median_ci`; infinite when the samples are too few for an interval at
    ``confidence`` (fewer than 6 at 95%), so that a single slow pass never reads as a precise one."""
    interval = _median_interval(times, confidence)
    return math.inf if interval is None else (interval[1] - interval[0]) / 2


#: Fewest timed passes of the adaptive protocol; ``max_seconds`` can stop it earlier.
MIN_REPEATS = 10
#: Most timed passes of the adaptive protocol (a guard against a timer that never converges on a fast model).
MAX_REPEATS = 10_000


#: glibc ``mallopt`` parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


@functools.cache
def keep_freed_memory() -> bool:
    """Make this process's allocator keep freed memory for reuse, as a caching allocator does (jemalloc or
    tcmalloc, which PyTorch's CPU performance guides recommend; ONNX Runtime's and OpenVINO's memory arenas).

    glibc's malloc maps every large block (a feature map at 1024×2048) fresh from the kernel and unmaps it when
    freed, so each forward pass of eager PyTorch page-faults its activations in again: measured on NDNet45 at
    1024×2048 on one thread, 4.4 million page faults and 40% of the latency in the kernel, and a spread between
    calls that no number of repeats averages away. With ``M_MMAP_MAX`` 0 and the largest ``M_TRIM_THRESHOLD``,
    large blocks come from the heap and stay there: the process keeps its peak memory instead. Applied once, by
    every timing (:func:`time_calls`, :func:`interleaved`); True where it took effect (Linux with glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # another C library (musl): no mallopt to call
        return False
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def time_calls(
    fn: Callable[[], object],
    *,
    warmup: int = 3,
    repeats: int = MIN_REPEATS,
    rel_ci: float | None = None,
    max_seconds: float | None = None,
    sync: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> list[float]:
    """Milliseconds of timed calls of ``fn`` after ``warmup`` untimed ones.

    With ``rel_ci`` None: exactly ``repeats`` timed calls. With ``rel_ci`` (e.g. 0.02): at least ``repeats``
    calls, then more until the 95% confidence half-width of the median is at most ``rel_ci`` × the median.
    ``max_seconds`` bounds the whole loop (warm-up included): once spent, no further call starts (at least one
    timed call runs). ``sync`` is called after each call inside the timed span (e.g. ``torch.cuda.synchronize``).
    Freed memory is kept for reuse (:func:`keep_freed_memory`).
    """
    keep_freed_memory()
    start = clock()

    def spent() -> bool:
        return max_seconds is not None and clock() - start >= max_seconds

    for _ in range(warmup):
        if spent():
            break
        fn()
        if sync is not None:
            sync()
    times: list[float] = []
    while True:
        t0 = clock()
        fn()
        if sync is not None:
            sync()
        times.append((clock() - t0) * 1000.0)
        n = len(times)
        if n >= MAX_REPEATS or spent():
            break
        if n < repeats:
            continue
        if rel_ci is None or half_width(times) <= rel_ci * statistics.median(times):
            break
    return times


_K = TypeVar("_K", bound=Hashable)


def interleaved(
    variants: Mapping[_K, Callable[[], object]],
    rounds: int,
    *,
    warmup: int = 1,
    rel_ci: float | None = None,
    max_seconds: float | None = None,
    min_rounds: int = MIN_REPEATS,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[_K, list[float]]:
    """Milliseconds of calls of each variant (by its key: a name, or any hashable such as a tuple), interleaved:
    round r calls every variant once, in an order rotated by r, so that a drift of the machine's load spreads over
    all variants alike instead of landing on whichever ran last. ``warmup`` untimed calls of each variant come
    first.

    ``rounds`` rounds; with ``rel_ci`` at most ``rounds``: a variant leaves the rotation once it has
    ``min_rounds`` samples and its median's 95% confidence half-width is within ``rel_ci`` of the median, or
    once its timed calls add up to ``max_seconds``; the rest go on. Freed memory is kept for reuse
    (:func:`keep_freed_memory`)."""
    keep_freed_memory()
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    times: dict[_K, list[float]] = {name: [] for name in names}
    active = list(names)
    for r in range(rounds):
        if not active:
            break
        k = r % len(active)
        for name in active[k:] + active[:k]:
            t0 = clock()
            variants[name]()
            times[name].append((clock() - t0) * 1000.0)
        if rel_ci is not None or max_seconds is not None:
            done = {
                name
                for name in active
                if (max_seconds is not None and sum(times[name]) >= 1000.0 * max_seconds)
                or (
                    rel_ci is not None
                    and len(times[name]) >= min_rounds
                    and half_width(times[name]) <= rel_ci * statistics.median(times[name])
                )
            }
            active = [name for name in active if name not in done]
    return times


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: ``memory_format`` name → torch memory format (``auto``: :func:`resolve_memory_format`).
MEMORY_FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}

_M = TypeVar("_M", bound=nn.Module)


def resolve_memory_format(memory_format: str, device: torch.device, runtime: str = "eager") -> str:
    """``auto`` → ``channels_last`` for PyTorch (eager or compiled) on CUDA, where cuDNN's NHWC kernels are the
    fast path of tensor-core convolutions, else ``nchw`` (an exported runtime chooses its own layout); any other
    name is returned as it is."""
    if memory_format != "auto":
        return memory_format
    return "channels_last" if device.type == "cuda" and runtime in ("eager", "compile") else "nchw"


def to_memory_format(module: _M, memory_format: str) -> _M:
    """``module`` with its parameters and buffers in ``memory_format`` (a :data:`MEMORY_FORMATS` name)."""
    # nn.Module.to takes memory_format (documented, and parsed as Tensor.to's); its typed overloads omit it
    return module.to(memory_format=MEMORY_FORMATS[memory_format])  # type: ignore[call-overload]


def latency(
    model: nn.Module,
    input_size: Sequence[int] = (1, 3, 1024, 2048),
    device: str | torch.device = "cpu",
    *,
    warmup: int = 3,
    repeats: int = 10,
    dtype: str = "float32",
    memory_format: str = "nchw",
    threads: int | None = None,
    lock: bool = True,
    fold: bool = False,
    rel_ci: float | None = None,
    max_seconds: float | None = None,
) -> Latency:
    """Time ``model`` on ``device``: eval mode, no autograd, ``warmup`` untimed passes, then synchronised timed
    passes of its :class:`TimedForward` (logits up-sampled to the input size); median, 90th percentile and the
    95% half-width of the median in milliseconds.

    ``repeats`` timed passes, or with ``rel_ci`` at least ``repeats`` and then more until the median's 95%
    confidence half-width is within ``rel_ci`` of it, the whole bounded by ``max_seconds``
    (:func:`time_calls`). ``fold`` times :func:`fold_bn`'s copy (batch norm folded into the convolutions).

    ``dtype`` float16/bfloat16 runs under autocast (CUDA). ``memory_format`` ``channels_last`` converts the
    model and input to NHWC (often faster on CPUs for depth-wise convolutions and pooling, and the fast path of
    cuDNN); ``auto`` is ``channels_last`` on CUDA, ``nchw`` elsewhere (:func:`resolve_memory_format`). On CUDA
    cuDNN's auto-tuner is on (:func:`archsearch.cost.devices.tuned`; the warm-up passes tune). ``threads`` (default:
    torch's current count) is set with ``torch.set_num_threads`` for the timing and restored afterwards.
    ``lock`` takes the device's exclusive turn (:func:`device_turn`), so that no other worker trains, evaluates
    or times on the device meanwhile.
    """
    dev = resolve_device(device) if isinstance(device, str) else device
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r}; allowed: {', '.join(_DTYPES)}")
    memory_format = resolve_memory_format(memory_format, dev)
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory_format {memory_format!r}; allowed: auto, {', '.join(MEMORY_FORMATS)}")
    threads = thread_count(torch.get_num_threads() if threads is None else threads)
    if rel_ci is not None and not 0 < rel_ci < 1:
        raise ValueError(f"rel_ci {rel_ci}; allowed: a number in (0, 1)")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds {max_seconds}; allowed: a number > 0")
    model = model.to(dev)
    timed: nn.Module = TimedForward(fold_bn(model, probe_size(input_size)) if fold else model)
    timed = to_memory_format(timed.to(dev), memory_format)
    x = torch.randn(*input_size, device=dev).to(memory_format=MEMORY_FORMATS[memory_format])
    autocast = torch.autocast(dev.type, dtype=_DTYPES[dtype]) if dtype != "float32" else contextlib.nullcontext()
    turn = device_turn(dev) if lock else contextlib.nullcontext()
    with eval_mode(timed), torch.inference_mode(), autocast, turn, num_threads(threads), tuned(dev):
        if dev.type == "cuda":
            # CUDA events around each pass would need their own loop; a host clock after a synchronisation
            # measures the same span
            times = time_calls(
                lambda: timed(x),
                warmup=warmup,
                repeats=repeats,
                rel_ci=rel_ci,
                max_seconds=max_seconds,
                sync=lambda: torch.cuda.synchronize(dev),
            )
        else:
            times = time_calls(lambda: timed(x), warmup=warmup, repeats=repeats, rel_ci=rel_ci, max_seconds=max_seconds)
    if memory_format != "nchw":
        to_memory_format(model, "nchw")
    return summarise(
        times,
        device=device_name(dev, threads),
        threads=threads,
        input_size=input_size,
        dtype=dtype,
        memory_format=memory_format,
        runtime="eager",
        runtime_version=f"torch {torch.__version__}",
        fold_bn=fold,
    )


def summarise(
    times: Sequence[float],
    *,
    device: str,
    threads: int,
    input_size: Sequence[int],
    dtype: str,
    memory_format: str = "nchw",
    runtime: str = "eager",
    runtime_version: str = "",
    fold_bn: bool = False,
) -> Latency:
    """A :class:`Latency` from timed passes (milliseconds) and the protocol's other fields."""
    return Latency(
        median_ms=float(statistics.median(times)),
        p90_ms=p90(times),
        repeats=len(times),
        device=device,
        threads=threads,
        input_size=tuple(int(v) for v in input_size),
        dtype=dtype,
        memory_format=memory_format,
        half_width_ms=half_width(times),
        runtime=runtime,
        runtime_version=runtime_version,
        fold_bn=fold_bn,
    )
