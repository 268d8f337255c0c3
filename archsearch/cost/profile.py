"""Profiling one network: parameters, multiply-adds, FLOPs and latency under the latency protocol.

One measurement, made the same way by a trial (:func:`archsearch.trial.profile`, settings from the spec's
``target:``) and by ``archsearch profile`` (settings from its options): :func:`counts` counts on the target
device (a forward pass, in the device's shared work turn), :func:`timing` times one runtime
(:func:`archsearch.runtimes.latency`), :func:`profile` does both and returns the flat cost record a trial stores.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from archsearch.cost import runtimes
from archsearch.cost.counts import count_flops, count_madds, count_params
from archsearch.cost.devices import release_memory, work_turn
from archsearch.cost.timing import Latency


@dataclass(frozen=True)
class Settings:
    """How a network's cost is measured: the input, the multiply-add convention and the latency protocol."""

    input: tuple[int, ...] = (1, 3, 1024, 2048)
    madds_convention: str = "conv_linear"  # archsearch.cost.CONVENTIONS
    runtime: str = "eager"  # runtimes.RUNTIMES
    threads: int = 1
    fold_bn: bool = True
    warmup: int = 3
    repeats: int = 10
    rel_ci: float = 0.02
    max_seconds: float = 60.0
    dtype: str = "float32"
    memory_format: str = "nchw"

    @classmethod
    def of(cls, target: Any, threads: int) -> Settings:
        """The settings of a spec's ``target:`` section, timed at ``threads`` threads."""
        return cls(
            input=tuple(target.input),
            madds_convention=target.madds_convention,
            runtime=target.runtime,
            threads=threads,
            fold_bn=target.fold_bn,
            warmup=target.warmup,
            repeats=target.repeats,
            rel_ci=target.rel_ci,
            max_seconds=target.max_seconds,
            dtype=target.dtype,
            memory_format=target.memory_format,
        )


def counts(model: nn.Module, settings: Settings, device: torch.device | str = "cpu") -> dict[str, int]:
    """``params``, ``madds`` (in the settings' convention) and ``flops`` at the settings' input. Counting runs two
    forward passes at the target input on ``device`` (the model is moved there: on a GPU host the target device,
    not the host's cores), so it takes the device's shared turn: no other worker's timing overlaps it."""
    params = count_params(model)
    model.to(device)
    with work_turn(device):
        madds = count_madds(model, settings.input, convention=settings.madds_convention)
        flops = count_flops(model, settings.input)
    return {"params": params, "madds": madds, "flops": flops}


def timing(
    model: nn.Module,
    settings: Settings,
    device: torch.device,
    *,
    runtime: str | None = None,
    onnx_path: Path | None = None,
) -> Latency:
    """The latency of ``model`` on ``device`` under the settings' protocol, on ``runtime`` (default: the
    settings'); exported runtimes share ``onnx_path`` when given (:func:`archsearch.runtimes.latency`)."""
    s = settings
    return runtimes.latency(
        model,
        s.input,
        device,
        runtime=runtime or s.runtime,
        threads=s.threads,
        fold=s.fold_bn,
        warmup=s.warmup,
        repeats=s.repeats,
        rel_ci=s.rel_ci,
        max_seconds=s.max_seconds,
        dtype=s.dtype,
        memory_format=s.memory_format,
        onnx_path=onnx_path,
    )


def profile(model: nn.Module, settings: Settings, device: torch.device) -> dict[str, Any]:
    """:func:`counts` and :func:`timing` as one flat record (the names of the trial record,
    :mod:`archsearch.spec.metrics`, plus how it was measured), both on ``device``; the model is left on the CPU and
    the device's cached memory released (:func:`archsearch.cost.devices.release_memory`)."""
    counted = counts(model, settings, device)
    lat = timing(model, settings, device)
    model.to("cpu")
    release_memory(device)
    return {
        **counted,
        "latency_ms": lat.median_ms,
        "latency_p90_ms": lat.p90_ms,
        "latency_half_width_ms": lat.half_width_ms,
        "latency_repeats": lat.repeats,
        "device": lat.device,
        "input_size": list(lat.input_size),
        "dtype": lat.dtype,
        "threads": lat.threads,
        "fold_bn": lat.fold_bn,
        "runtime": lat.runtime,
        "runtime_version": lat.runtime_version,
        "memory_format": lat.memory_format,
        "torch": torch.__version__,
    }
