"""Kernel keep rates, measured: parameters, multiply-adds and latency of PSPNet50 and ICNet (sub124) at keep
rates 1, 0.75, 0.5, 0.25, side by side in one run (Zhao et al. 2018, Sec. 3.2, Table 2).

Each keep rate is the physically narrower network that progressive L1 pruning produces (``build(keep_rate=r)``
has exactly the pruned shapes, ``tests/test_pruning.py``). Latency: eval mode, no autograd, batch 1 at the
target input, one warm-up pass per model, then ``--repeats`` interleaved rounds (``_common.time_interleaved`` on
``cost.interleaved``: every model once per round, the order rotating, so machine load drifts affect all models
alike; a fast model is timed several times per round, about ``--round-budget-ms`` worth, at most 10); median and
p90 per model over all its passes. Multiply-adds of the convolutions (``archsearch.cost.count_madds``; results written
before its change to convolutions only were fvcore's), counted at the input divided by ``--count-scale`` per side
and multiplied by its square (``_common.scaled_madds``; exact for these fully convolutional networks:
``tests/test_icnet.py::test_madds_scale_exactly_with_pixels``; the run also checks it once directly on ICNet at
the full input).

The paper's claim checked here: at keep rate 0.5 the multiply-adds are at most 0.35× and the measured latency at
most 0.5× of keep rate 1 (the paper, variants ``pspnet50.os8`` → ``pspnet50.os8_keep050`` on a Titan X: 0.38×).

    python benchmarks/keep_rates.py                  # 1024×2048, 3 repeats (about 15 min on 2 busy cores)
    python benchmarks/keep_rates.py --repeats 1 --input 1 3 512 1024   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from archsearch import build
from archsearch.builders import variant
from archsearch.cost import count_madds, count_params, device_name, p90

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, scaled_madds, time_interleaved

RESULTS = Path(__file__).resolve().parent / "results"
MODELS: dict[str, dict[str, Any]] = {"pspnet50": {"output_stride": 8}, "icnet": {"branches": "sub124"}}
RATES = (1.0, 0.75, 0.5, 0.25)
# Table 2 (PSPNet50, dilation 8) and Tables 3/4 (ICNet sub124 on PSPNet50 compressed by half), Titan X, 1024×2048:
# the registry's named variants, by builder and keep rate
PAPER_VARIANTS = ("pspnet50.os8", "pspnet50.os8_keep050", "pspnet50.os8_keep025", "icnet.sub124_keep050")
PAPER: dict[str, dict[float, dict[str, float]]] = {}
for _v in map(variant, PAPER_VARIANTS):
    PAPER.setdefault(_v.builder, {})[_v.knobs["keep_rate"]] = dict(_v.paper)
MAX_MADDS_RATIO, MAX_LATENCY_RATIO = 0.35, 0.5
MAX_PASSES_PER_ROUND = 10


def measure_all(
    input_size: tuple[int, ...],
    rates: tuple[float, ...],
    repeats: int,
    count_scale: int,
    builders: list[str],
    round_budget_ms: float,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    models: dict[tuple[str, float], torch.nn.Module] = {}
    rows: list[dict[str, Any]] = []
    for name in builders:
        for rate in rates:
            model = build(name, **MODELS[name], keep_rate=rate).eval()
            models[(name, rate)] = model
            madds = scaled_madds(model, input_size, count_scale)
            rows.append(
                {
                    "builder": name,
                    "knobs": {**MODELS[name], "keep_rate": rate},
                    "keep_rate": rate,
                    "params": count_params(model),
                    "madds": madds,
                    "times_ms": [],
                }
            )
            print(f"counted {name} keep {rate}: {madds / 1e9:.1f} G multiply-adds", file=sys.stderr)
    check: dict[str, Any] = {}
    if count_scale != 1 and "icnet" in builders:
        direct = count_madds(models[("icnet", rates[0])], input_size)
        scaled = next(r["madds"] for r in rows if r["builder"] == "icnet" and r["keep_rate"] == rates[0])
        check = {"model": f"icnet keep {rates[0]}", "direct": direct, "scaled": scaled, "equal": direct == scaled}
    # warm-up: one pass each (also its time, which sets how many passes a round takes of a fast model), then
    # interleaved rounds timing every model once per round
    inner: dict[tuple[str, float], int] = {}
    for key, model in models.items():
        warm = time_interleaved({key: model}, input_size, 1, warmup=0)[key][0]
        inner[key] = min(MAX_PASSES_PER_ROUND, max(1, int(round_budget_ms // max(warm, 1e-3))))
        print(f"warmed {key[0]} keep {key[1]}: {warm:.0f} ms, {inner[key]} pass(es) per round", file=sys.stderr)
    times = time_interleaved(models, input_size, repeats, warmup=0, passes=inner)
    for row in rows:
        row["times_ms"] = times[(row["builder"], row["keep_rate"])]
    for row in rows:
        row["latency_ms"] = statistics.median(row["times_ms"])
        row["latency_p90_ms"] = p90(row["times_ms"])
        base = next((r for r in rows if r["builder"] == row["builder"] and r["keep_rate"] == 1.0), None)
        row["madds_ratio"] = row["madds"] / base["madds"] if base else None
        row["latency_ratio"] = row["latency_ms"] / base["latency_ms"] if base else None
        row["params_ratio"] = row["params"] / base["params"] if base else None
        row["paper"] = PAPER.get(row["builder"], {}).get(row["keep_rate"], {})
    return rows, check


def verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's bar at keep rate 0.5: multiply-adds ≤ 0.35×, latency ≤ 0.5× of keep rate 1."""
    out = []
    for row in rows:
        if row["keep_rate"] == 0.5 and row["madds_ratio"] is not None:
            out.append(
                {
                    "builder": row["builder"],
                    "madds_ratio": row["madds_ratio"],
                    "madds_ok": row["madds_ratio"] <= MAX_MADDS_RATIO,
                    "latency_ratio": row["latency_ratio"],
                    "latency_ok": row["latency_ratio"] <= MAX_LATENCY_RATIO,
                }
            )
    return out


def _fmt(v: float | None, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def markdown(
    rows: list[dict[str, Any]], checks: list[dict[str, Any]], meta: dict[str, Any], scale_check: dict[str, Any]
) -> str:
    lines = [
        "# Kernel keep rates: PSPNet50 and ICNet (sub124), measured",
        "",
        f"Input {'×'.join(map(str, meta['input_size']))}, device {meta['device']}, {meta['repeats']} interleaved "
        f"rounds after one warm-up pass each (a round times a fast model several times, up to about "
        f"{meta['round_budget_ms'] / 1000:g} s); {meta['date']}. Load average before/after: {meta['load_before']} / "
        f"{meta['load_after']} on {os.cpu_count()} CPUs; absolute times depend on that load, ratios within this one "
        "run are the comparable numbers. Paper: Titan X GPU (Tables 2–4).",
        "",
    ]
    table = []
    for r in rows:
        paper_ms = r["paper"].get("latency_ms")
        base_paper = PAPER.get(r["builder"], {}).get(1.0, {}).get("latency_ms")
        paper_ratio = paper_ms / base_paper if paper_ms and base_paper else None
        table.append(
            [
                r["builder"],
                f"{r['keep_rate']:g}",
                f"{r['params'] / 1e6:.2f} M",
                _fmt(r["params_ratio"], ".3f"),
                f"{r['madds'] / 1e9:.1f}",
                _fmt(r["madds_ratio"], ".3f"),
                f"{r['latency_ms']:.0f}",
                f"{r['latency_p90_ms']:.0f}",
                _fmt(r["latency_ratio"], ".3f"),
                len(r["times_ms"]),
                _fmt(paper_ms, ".0f"),
                _fmt(paper_ratio, ".3f"),
                _fmt(r["paper"].get("miou_pct"), ".1f"),
            ]
        )
    header = [
        "builder",
        "keep rate",
        "params",
        "×keep 1",
        "multiply-adds (G)",
        "×keep 1",
        "latency median (ms)",
        "p90 (ms)",
        "×keep 1",
        "samples",
        "paper latency (ms)",
        "paper ×keep 1",
        "paper mIoU (%)",
    ]
    lines.append(markdown_table(header, table))
    paper_half, paper_full = PAPER["pspnet50"][0.5]["latency_ms"], PAPER["pspnet50"][1.0]["latency_ms"]
    lines += [
        "",
        f"Keep rate 0.5 against keep rate 1 (bar: multiply-adds ≤ {MAX_MADDS_RATIO}×, latency ≤ "
        f"{MAX_LATENCY_RATIO}×; paper {paper_half:g}/{paper_full:g} = {paper_half / paper_full:.2f}×):",
        "",
    ]
    for c in checks:
        lines.append(
            f"- {c['builder']}: multiply-adds {c['madds_ratio']:.3f}× ({'pass' if c['madds_ok'] else 'FAIL'}), "
            f"latency {c['latency_ratio']:.3f}× ({'pass' if c['latency_ok'] else 'FAIL'})"
        )
    if scale_check:
        lines += [
            "",
            f"Multiply-adds counted at 1/{meta['count_scale']} per side and scaled; direct count of "
            f"{scale_check['model']} at the full input: {scale_check['direct']:,} vs scaled "
            f"{scale_check['scaled']:,} ({'equal' if scale_check['equal'] else 'DIFFERENT'}).",
        ]
    lines += [
        "",
        "Reproduce: `python benchmarks/keep_rates.py` (flags: `--repeats`, `--input`, `--rates`, "
        "`--count-scale`, `--round-budget-ms`, `--threads`).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed interleaved rounds (default 3)")
    parser.add_argument("--input", type=int, nargs=4, default=[1, 3, 1024, 2048], metavar=("N", "C", "H", "W"))
    parser.add_argument("--rates", type=float, nargs="+", default=list(RATES))
    parser.add_argument("--builders", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument(
        "--count-scale",
        type=int,
        default=4,
        help="count multiply-adds at the input / this per side, times its square (1: direct)",
    )
    parser.add_argument(
        "--round-budget-ms",
        type=float,
        default=10000.0,
        help="a round times a model about this long (at least once, at most 10 passes; default 10 s)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    start = time.perf_counter()
    rows, scale_check = measure_all(
        tuple(args.input), tuple(args.rates), args.repeats, args.count_scale, args.builders, args.round_budget_ms
    )
    checks = verdicts(rows)
    meta = {
        "input_size": args.input,
        "device": device_name(torch.device("cpu")),
        "repeats": args.repeats,
        "count_scale": args.count_scale,
        "round_budget_ms": args.round_budget_ms,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_before": " ".join(f"{v:.1f}" for v in load_before),
        "load_after": " ".join(f"{v:.1f}" for v in os.getloadavg()),
        "seconds": round(time.perf_counter() - start, 1),
        "note": "absolute times depend on the load average recorded here; compare ratios within the run",
    }
    text = markdown(rows, checks, meta, scale_check)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "keep_rates.md").write_text(text)
    (args.out / "keep_rates.json").write_text(
        json.dumps({"meta": meta, "rows": rows, "checks": checks, "madds_scale_check": scale_check}, indent=2)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
