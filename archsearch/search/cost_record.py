"""A trial's cost record: what the architecture costs on the target (parameters, multiply-adds, latency), measured
once per (architecture, input, device model, threads, runtime) key and reused from any earlier trial of the study
with that key, and the latency gate that prunes a trial over its constraints before it trains.

A trial writes its cost as one whole record (user attribute ``cost``), and only whole records are reused: a
record another worker is still writing is never read in part.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import optuna
import torch
import torch.nn as nn

from archsearch.cost import (
    CUDNN_BENCHMARK,
    devices,
    resolve_memory_format,
    runtimes,
)
from archsearch.cost import profile as cost_profile
from archsearch.spec import Spec


def timing_threads(spec: Spec) -> int:
    """Threads for timing, training and evaluation: ``target.threads`` (default 1)."""
    return int(getattr(spec.target, "threads", None) or 1)


COST_ATTRS = (
    "params",
    "madds",
    "flops",
    "latency_ms",
    "latency_p90_ms",
    "latency_half_width_ms",
    "latency_repeats",
    "device",
    "input_size",
    "dtype",
    "threads",
    "fold_bn",
    "runtime",
    "runtime_version",
)


COST_FIELDS = (*COST_ATTRS, "memory_format", "torch", "key")


class GateRejected(optuna.TrialPruned):
    """The trial's measured cost violates a constraint; it is pruned before any training."""


def _runtime(device: torch.device) -> str:
    """The software that runs the timed model: torch's version, and CUDA's and cuDNN's on a GPU."""
    if device.type == "cuda":
        return f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
    return f"torch {torch.__version__}"


def arch_key(
    builder: str,
    knobs: dict[str, Any],
    num_classes: int,
    target: Any,
    device: torch.device | str,
    threads: int,
    *,
    device_model: str | None = None,
    runtime: str | None = None,
) -> str:
    """Identity of a cost measurement, for reusing it: the architecture (builder, resolved knobs, classes), the
    input, dtype and memory format, and everything of the machine that changes a latency: the device type, the
    device's model (CPU model or GPU name; default: this machine's), the thread count used for timing and the
    runtime (torch version, CUDA/cuDNN on a GPU; default: this process's), the deployment runtime that times
    the model with its version (``target.runtime``, :func:`archsearch.runtimes.version`), whether batch norm
    is folded (``target.fold_bn``) and, on CUDA, whether cuDNN's auto-tuner chose the kernels."""
    dev = torch.device(device)
    deploy = getattr(target, "runtime", "eager")
    blob = json.dumps(
        {
            "b": builder,
            "k": knobs,
            "c": num_classes,
            "i": list(target.input),
            "t": target.dtype,
            "m": resolve_memory_format(target.memory_format, dev, deploy),
            "mc": getattr(target, "madds_convention", "conv_linear"),
            "d": dev.type,
            "dm": devices.device_model(dev) if device_model is None else device_model,
            "th": int(threads),
            "rt": _runtime(dev) if runtime is None else runtime,
            "dr": deploy,
            "mem": "kept",  # timed with freed memory kept for reuse (cost.keep_freed_memory): not comparable before
            "dv": runtimes.version(deploy) if deploy in runtimes.RUNTIMES else deploy,
            "fb": bool(getattr(target, "fold_bn", False)),
            **({"cb": CUDNN_BENCHMARK} if dev.type == "cuda" else {}),  # cuDNN's auto-tuner (CPU keys as before)
        },
        sort_keys=True,
    )
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def reuse_cost(study: optuna.Study, key: str) -> dict[str, Any] | None:
    """The whole ``cost`` record of an earlier trial with this key; records missing a field are ignored."""
    for t in study.get_trials(deepcopy=False):
        cost = t.user_attrs.get("cost")
        if isinstance(cost, dict) and cost.get("key") == key and all(cost.get(f) is not None for f in COST_FIELDS):
            return dict(cost)
    return None


def profile(model: nn.Module, spec: Spec, device: torch.device, threads: int | None = None) -> dict[str, Any]:
    """Parameters, multiply-adds and FLOPs at the target input, latency on the target device and runtime at
    ``threads`` (default: :func:`timing_threads`) under the spec's latency protocol
    (:func:`archsearch.cost.profile.profile`)."""
    threads = timing_threads(spec) if threads is None else threads
    return cost_profile.profile(model, cost_profile.Settings.of(spec.target, threads), device)


def gate(spec: Spec, cost: dict[str, Any]) -> str | None:
    """The reason a trial violates ``constraints``, or None."""
    for metric, bound in spec.constraints.items():
        value = cost[metric]
        if "max" in bound and value > bound["max"]:
            return f"{metric} {value:.4g} > max {bound['max']:.4g}"
        if "min" in bound and value < bound["min"]:
            return f"{metric} {value:.4g} < min {bound['min']:.4g}"
    return None


def constraint_values(spec: Spec, cost: dict[str, Any]) -> dict[str, float]:
    """Optuna constraint values of a cost record, one per bound (``"latency_ms.max"``): the relative violation
    ``value / max − 1`` or ``1 − value / min`` (≤ 0: met). Relative, so bounds of different units add up into one
    violation the samplers can compare (TPE ranks infeasible trials by the sum of the positive values)."""
    out: dict[str, float] = {}
    for metric, bound in spec.constraints.items():
        value = float(cost[metric])
        if "max" in bound:
            limit = float(bound["max"])
            out[f"{metric}.max"] = (value - limit) / abs(limit) if limit else value
        if "min" in bound:
            limit = float(bound["min"])
            out[f"{metric}.min"] = (limit - value) / abs(limit) if limit else -value
    return out
