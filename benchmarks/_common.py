"""Shared helpers of the benchmark scripts: repo paths, machine description, result files."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED_DATA = ROOT.parent / "shared" / "data"


def machine() -> str:
    from archsearch.measure import device_name

    return f"{device_name(torch.device('cpu'))}, torch {torch.__version__}, Python {platform.python_version()}"


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float]]:
    """Median wall seconds of ``repeats`` calls of ``fn`` (and all the samples)."""
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples), samples


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, title: str, body_md: str, data: dict[str, Any], out: Path = RESULTS) -> Path:
    """Write ``<out>/<name>.md`` (title, machine, body) and ``<out>/<name>.json`` (``out`` default: results/);
    returns the .md path."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    md = f"## {title}\n\nMeasured {stamp} on {machine()}.\n\n{body_md}\n"
    path = out / f"{name}.md"
    path.write_text(md)
    (out / f"{name}.json").write_text(json.dumps({"title": title, "when": stamp, "machine": machine(), **data}, indent=2))
    return path
