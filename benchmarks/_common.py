"""Shared harness of the benchmark scripts: repo paths, machine description, result files, and the one way
they time models side by side (:func:`time_interleaved`, on :func:`archsearch.cost.interleaved`) and count
multiply-adds small and scale them up (:func:`scaled_madds`)."""

from __future__ import annotations

import functools
import json
import platform
import statistics
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import torch
import torch.nn as nn

from archsearch.cost import (
    TimedForward,
    count_madds,
    device_name,
    device_turn,
    interleaved,
)
from archsearch.util import formatting

K = TypeVar("K", bound=Hashable)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED_DATA = ROOT.parent / "shared" / "data"


def machine() -> str:
    return f"{device_name(torch.device('cpu'))}, torch {torch.__version__}, Python {platform.python_version()}"


def camvid_sets(root: str | Path, train_images: int | None = None, val_images: int | None = None) -> list[str]:
    """The ``--set`` overrides that point a space at CamVid under ``root`` (kept as given: it is part of the
    recipe a stored run is matched by, and of the printed command), every image of a split unless limited."""
    return [
        "data.name=camvid",
        f"data.root={root}",
        f"data.train_images={train_images or 'null'}",
        f"data.val_images={val_images or 'null'}",
    ]


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float]]:
    """Median wall seconds of ``repeats`` calls of ``fn`` (and all the samples)."""
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples), samples


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], align: Sequence[formatting.Align] | None = None
) -> str:
    """A Markdown table of ready-made cells, through :func:`archsearch.util.formatting.markdown_table` (``|``
    escaped, missing values "—"); ``align``: per column, default left."""
    frame = pd.DataFrame([list(row) for row in rows], columns=list(header), dtype=object)
    return formatting.markdown_table(frame, align or ["left"] * len(header)).rstrip("\n")


def write_results(name: str, title: str, body_md: str, data: dict[str, Any], out: Path = RESULTS) -> Path:
    """Write ``<out>/<name>.md`` (title, machine, body) and ``<out>/<name>.json`` (``out`` default: results/);
    returns the .md path."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    md = f"## {title}\n\nMeasured {stamp} on {machine()}.\n\n{body_md}\n"
    path = out / f"{name}.md"
    path.write_text(md)
    (out / f"{name}.json").write_text(
        json.dumps({"title": title, "when": stamp, "machine": machine(), **data}, indent=2)
    )
    return path


def scaled_madds(model: nn.Module, input_size: Sequence[int], scale: int, convention: str = "conv_linear") -> int:
    """Multiply-adds at ``input_size`` counted small and scaled up: counted at 1/``scale`` of each side and
    multiplied by ``scale²`` — exact for the fully convolutional builders when the reduced input keeps their
    1/32 alignment (``tests/test_wu2017.py::test_madds_scale_with_pixels``,
    ``tests/test_icnet.py::test_madds_scale_exactly_with_pixels``). A misaligned input exits with one line."""
    n, c, h, w = input_size
    if scale < 1 or h % (32 * scale) or w % (32 * scale):
        raise SystemExit(f"count scale {scale}: the input {h}×{w} / {scale} must stay 1/32-aligned")
    return count_madds(model, (n, c, h // scale, w // scale), convention=convention) * scale**2


def time_interleaved(
    models: Mapping[K, nn.Module],
    input_size: Sequence[int],
    rounds: int,
    *,
    warmup: int = 1,
    device: torch.device | None = None,
    passes: Mapping[K, int] | None = None,
) -> dict[K, list[float]]:
    """Milliseconds per forward pass of each model, timed side by side: every model's :class:`TimedForward`
    (eval, logits up-sampled to the input) under ``torch.inference_mode`` and the device's exclusive turn, in
    :func:`archsearch.cost.interleaved` rounds (the order rotates every round, so a drift of the machine's
    load lands on all models alike), after ``warmup`` untimed passes of each. ``passes[k]`` timed forward passes
    of model ``k`` per round (default 1; each its own sample), so that a fast model gets as much timed work per
    round as a slow one."""
    dev = device or torch.device("cpu")
    x = torch.randn(*input_size, device=dev)
    sync: Callable[[], None] = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    forwards = {k: TimedForward(m).to(dev).eval() for k, m in models.items()}
    samples: dict[K, list[float]] = {k: [] for k in models}

    def call(key: K, n: int) -> None:
        for _ in range(n):
            t0 = time.perf_counter()
            forwards[key](x)
            sync()
            samples[key].append((time.perf_counter() - t0) * 1000.0)

    calls: dict[Any, Callable[[], object]] = {k: functools.partial(call, k, (passes or {}).get(k, 1)) for k in models}
    with torch.inference_mode(), device_turn(dev):
        for _ in range(warmup):
            for forward in forwards.values():
                forward(x)
                sync()
        interleaved(calls, rounds, warmup=0)  # the rotation; the samples are the passes timed one by one
    return samples
