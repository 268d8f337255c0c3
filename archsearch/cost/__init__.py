"""What a network costs: parameters, multiply-adds, FLOPs and latency under one protocol, on each runtime.

``counts`` (parameters, multiply-adds, FLOPs) → ``devices`` (device names, locks, threads, CUDA settings) →
``forward`` (the timed forward) → ``folding`` (batch norm folded) → ``timing`` (the latency protocol) →
``runtimes`` (deployment runtimes) → ``profile`` (one network's cost record). The public names of the first five
are re-exported here: ``from archsearch.cost import count_madds, latency``.
"""

from archsearch.cost.counts import (
    CONVENTIONS,
    COST_ROLE,
    Convention,
    count_flops,
    count_madds,
    count_params,
    resolve_convention,
)
from archsearch.cost.devices import (
    CUDNN_BENCHMARK,
    DEVICE_PATTERN,
    DEVICES,
    device_id,
    device_model,
    device_name,
    device_turn,
    num_threads,
    release_memory,
    resolve_device,
    thread_count,
    tuned,
    work_turn,
)
from archsearch.cost.folding import FoldingError, fold_bn, probe_size
from archsearch.cost.forward import TimedForward, eval_mode
from archsearch.cost.timing import (
    MAX_REPEATS,
    MEMORY_FORMATS,
    MIN_REPEATS,
    Latency,
    half_width,
    interleaved,
    keep_freed_memory,
    latency,
    median_ci,
    p90,
    resolve_memory_format,
    summarise,
    time_calls,
    to_memory_format,
)

__all__ = [
    "CONVENTIONS",
    "COST_ROLE",
    "CUDNN_BENCHMARK",
    "DEVICES",
    "DEVICE_PATTERN",
    "MAX_REPEATS",
    "MEMORY_FORMATS",
    "MIN_REPEATS",
    "Convention",
    "FoldingError",
    "Latency",
    "TimedForward",
    "count_flops",
    "count_madds",
    "count_params",
    "device_id",
    "device_model",
    "device_name",
    "device_turn",
    "eval_mode",
    "fold_bn",
    "half_width",
    "interleaved",
    "keep_freed_memory",
    "latency",
    "median_ci",
    "num_threads",
    "p90",
    "probe_size",
    "release_memory",
    "resolve_convention",
    "resolve_device",
    "resolve_memory_format",
    "summarise",
    "thread_count",
    "time_calls",
    "to_memory_format",
    "tuned",
    "work_turn",
]
