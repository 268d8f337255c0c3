"""Every builder's paper default on eager PyTorch, torch.compile, ONNX Runtime and OpenVINO on this CPU (issue 11,
item 4), and the NDNet Table II rows' latency ratios beside the paper's FPS ratios.

Protocol (archsearch.cost / archsearch.runtimes): batch 1, float32, a fixed thread count (``--threads``,
default 1) set for every runtime, batch norm folded into the convolutions, the logits up-sampled to the input
in the timed forward, the model exported to ONNX once and shared by ONNX Runtime and OpenVINO, every runtime's
output checked against eager PyTorch's on one input before timing. The runtimes of one model are timed in
interleaved rounds (``archsearch.cost.interleaved``: the order rotates every round), each until its median's 95%
confidence half-width is within ``--rel-ci`` or its timed calls add up to ``--max-seconds``. The NDNet rows
are timed together, all rows × runtimes interleaved, so their ratios share one machine load.

``sparse_two_column``'s paper default is fast inference, which is data-dependent and cannot be exported; it is
timed with ``inference: classic`` on every runtime here (eager fast inference: benchmarks/fast_inference.py).

    python benchmarks/runtimes.py                                    # the record run (1024×2048)
    python benchmarks/runtimes.py --input 1,3,128,256 --max-seconds 3 --out /tmp/smoke   # a smoke run
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, markdown_table, write_results
from archsearch import builders
from archsearch.cost import (
    TimedForward,
    device_turn,
    fold_bn,
    half_width,
    interleaved,
    p90,
    probe_size,
    runtimes,
)

RUNTIMES = ("eager", "compile", "onnxruntime", "openvino")
#: knobs other than the paper default, and why
OVERRIDES = {"sparse_two_column": {"inference": "classic"}}
NDNET_REFERENCE = "NDNet45"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default="1,3,1024,2048", help="N,3,H,W (default: 1,3,1024,2048)")
    ap.add_argument(
        "--input-for",
        action="append",
        default=[],
        metavar="BUILDER=N,3,H,W",
        help="a smaller input for one builder (e.g. pspnet50=1,3,512,1024); its row says so",
    )
    ap.add_argument("--threads", type=int, default=1, help="threads of every runtime (default: 1)")
    ap.add_argument("--runtimes", default=",".join(RUNTIMES), help=f"comma list (default: {','.join(RUNTIMES)})")
    ap.add_argument("--builders", default="", help="comma list (default: every builder)")
    ap.add_argument("--rel-ci", type=float, default=0.02, help="target 95%% half-width of the median (default: 0.02)")
    ap.add_argument(
        "--max-seconds", type=float, default=20.0, help="timed seconds per (model, runtime) at most (default: 20)"
    )
    ap.add_argument("--min-rounds", type=int, default=10, help="fewest timed calls per (model, runtime) (default: 10)")
    ap.add_argument("--max-rounds", type=int, default=400, help="most interleaved rounds (default: 400)")
    ap.add_argument("--no-ndnet", action="store_true", help="skip the NDNet Table II rows")
    ap.add_argument("--no-builders", action="store_true", help="only the NDNet Table II rows")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for runtimes.md/.json (default: results/)")
    return ap.parse_args(argv)


def _size(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.replace("x", ",").split(","))


def _runners(
    name: str, model: torch.nn.Module, size: tuple[int, ...], chosen: list[str], threads: int, tmp: Path
) -> tuple[dict[str, runtimes.Runner], dict[str, Any]]:
    """Prepared runners of one model (exported once), each checked against eager; and what preparing cost."""
    timed = TimedForward(fold_bn(model, probe_size(size))).eval()
    x = torch.randn(*size, generator=torch.Generator().manual_seed(0))
    notes: dict[str, Any] = {}
    onnx = tmp / f"{name}.onnx"
    if any(r in runtimes.EXPORTED for r in chosen):
        t0 = time.perf_counter()
        runtimes.export_onnx(timed, size, onnx)
        notes["export_s"] = round(time.perf_counter() - t0, 1)
    with torch.inference_mode():
        reference = timed(x)
    out: dict[str, runtimes.Runner] = {}
    for r in chosen:
        t0 = time.perf_counter()
        runner = runtimes.prepare(r, timed, x, threads, onnx)
        try:
            with torch.inference_mode():
                notes[f"{r}_max_abs_diff"] = runtimes.check(runner, reference)  # compiles torch.compile's model
        except runtimes.RuntimeMismatch as exc:  # recorded, and that runtime is not timed for this model
            notes[f"{r}_refused"] = str(exc)
            print(f"  {exc}", flush=True)
            continue
        finally:
            notes[f"{r}_prepare_s"] = round(time.perf_counter() - t0, 1)
        out[r] = runner
    return out, notes


def _time(variants: dict[str, runtimes.Runner], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    calls = {k: v.run for k, v in variants.items()}
    with torch.inference_mode(), device_turn(torch.device("cpu")):
        times = interleaved(
            calls,
            args.max_rounds,
            warmup=1,
            rel_ci=args.rel_ci,
            max_seconds=args.max_seconds,
            min_rounds=args.min_rounds,
        )
    return {
        k: {
            "median_ms": statistics.median(v),
            "half_width_ms": half_width(v),
            "p90_ms": p90(v),
            "repeats": len(v),
        }
        for k, v in times.items()
    }


def _flips(order: dict[str, list[str]]) -> list[str]:
    """Pairs of builders whose order differs between eager and another runtime."""
    lines: list[str] = []
    base = order.get("eager")
    if base is None:
        return lines
    for r, o in order.items():
        if r == "eager":
            continue
        for i, a in enumerate(base):
            for b in base[i + 1 :]:
                if a in o and b in o and o.index(a) > o.index(b):
                    lines.append(f"{r}: {b} is faster than {a} (eager: {a} faster)")
    return lines


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    size = _size(args.input)
    per_builder = dict(item.split("=", 1) for item in args.input_for)
    chosen = [r for r in args.runtimes.split(",") if r]
    for r in chosen:
        runtimes.require(r)
    names = [] if args.no_builders else [n for n in args.builders.split(",") if n] or builders.names()
    load = [tuple(round(v, 2) for v in os.getloadavg())]
    result: dict[str, Any] = {
        "input": list(size),
        "threads": args.threads,
        "rel_ci": args.rel_ci,
        "max_seconds": args.max_seconds,
        "min_rounds": args.min_rounds,
        "versions": {r: runtimes.version(r) for r in chosen},
        "builders": {},
        "ndnet": {},
    }
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-runtimes-") as tmp_dir:
        tmp = Path(tmp_dir)
        for name in names:
            knobs = OVERRIDES.get(name, {})
            bsize = _size(per_builder[name]) if name in per_builder else size
            model = builders.build(name, 19, **knobs).eval()
            print(f"{name} at {list(bsize)} ...", flush=True)
            runners, notes = _runners(name, model, bsize, chosen, args.threads, tmp)
            stats = _time(runners, args)
            result["builders"][name] = {"knobs": knobs, "input": list(bsize), "stats": stats, "notes": notes}
            print(
                "  "
                + ", ".join(
                    f"{r} {s['median_ms']:.1f}±{s['half_width_ms']:.1f} ms ({s['repeats']})" for r, s in stats.items()
                ),
                flush=True,
            )
            del runners, model
            gc.collect()
        if not args.no_ndnet:
            variants: dict[str, runtimes.Runner] = {}
            for v in builders.variants("ndnet"):  # Table II rows, with the paper's numbers, from the registry
                row_knobs = {k: list(x) if isinstance(x, tuple) else x for k, x in v.knobs.items()}
                model = builders.build(f"ndnet.{v.name}", 19).eval()
                print(f"ndnet {v.label} ...", flush=True)
                runners, notes = _runners(v.name, model, size, chosen, args.threads, tmp)
                result["ndnet"][v.label] = {"knobs": row_knobs, "paper_fps": v.paper.get("fps"), "notes": notes}
                variants.update({f"{v.label}|{r}": x for r, x in runners.items()})
            stats = _time(variants, args)
            for label in result["ndnet"]:
                result["ndnet"][label]["stats"] = {}
            for key, s in stats.items():
                label, r = key.split("|")
                result["ndnet"][label]["stats"][r] = s
    load.append(tuple(round(v, 2) for v in os.getloadavg()))
    result["load_average"] = [list(v) for v in load]
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def report(result: dict[str, Any]) -> str:
    chosen = list(result["versions"])

    def fmt(s: dict[str, float] | None) -> str:
        return (
            "not timed (output differs)"
            if s is None
            else f"{s['median_ms']:.4g} ± {s['half_width_ms']:.2g} ({s['repeats']})"
        )

    def speed(b: dict[str, Any], r: str) -> str:
        st = b["stats"]
        return f"{st['eager']['median_ms'] / st[r]['median_ms']:.2f}×" if "eager" in st and r in st else "—"

    rows = []
    for name, b in result["builders"].items():
        note = f" ({', '.join(f'{k}: {v}' for k, v in b['knobs'].items())})" if b["knobs"] else ""
        inp = "" if b["input"] == result["input"] else f" at {b['input'][2]}×{b['input'][3]}"
        rows.append(
            [name + note + inp]
            + [fmt(b["stats"].get(r)) for r in chosen]
            + [speed(b, r) for r in chosen if r != "eager" and "eager" in chosen]
        )
    speed_head = [f"eager/{r}" for r in chosen if r != "eager" and "eager" in chosen]
    body = [
        f"Input {result['input'][2]}×{result['input'][3]}, batch 1, float32, {result['threads']} thread(s) set for "
        "every "
        f"runtime, batch norm folded, logits up-sampled to the input, freed memory kept for reuse "
        f"(keep_freed_memory); runtimes of one model interleaved (rotating "
        f"order), each until the median's 95% half-width ≤ {100 * result['rel_ci']:g}% or {result['max_seconds']:g} s "
        f"of timed calls (≥ {result['min_rounds']} calls). Versions: "
        + "; ".join(f"{r}: {v}" for r, v in result["versions"].items())
        + ".",
        f"Load average (1, 5, 15 min) at the start {result['load_average'][0]}, at the end "
        f"{result['load_average'][1]}; {result['seconds']:.0f} s in all.",
        "",
        "Median ms ± 95% half-width (timed calls):",
        "",
        markdown_table(["builder", *chosen, *speed_head], rows),
    ]
    comparable = [n for n, b in result["builders"].items() if b["input"] == result["input"]]
    order = {
        r: sorted(
            (n for n in comparable if r in result["builders"][n]["stats"]),
            key=lambda n: result["builders"][n]["stats"][r]["median_ms"],
        )
        for r in chosen
    }
    body += ["", "Ranking, fastest first (builders at the common input): "]
    body += [f"- {r}: {' < '.join(o)}" for r, o in order.items()]
    flips = _flips(order)
    body += ["", "Ranking flips against eager: " + ("none" if not flips else "")]
    body += [f"- {line}" for line in flips]
    refused = [
        f"- {name}: {v}"
        for name, b in result["builders"].items()
        for k, v in b["notes"].items()
        if k.endswith("_refused")
    ]
    if refused:
        body += ["", "Not timed — the runtime's output differs from eager PyTorch's on the check input:", *refused]
    if result["ndnet"]:
        ref = result["ndnet"].get(NDNET_REFERENCE)
        rows = []
        for label, row in result["ndnet"].items():
            paper = f"{ref['paper_fps'] / row['paper_fps']:.3f}" if ref and row.get("paper_fps") else "—"
            cells = [label, f"{row['paper_fps']}" if row.get("paper_fps") else "—", paper]
            for r in chosen:
                s, base = row["stats"].get(r), ref["stats"].get(r) if ref else None
                if s is None:
                    cells.append("not timed (output differs)")
                    continue
                ratio = f"{s['median_ms'] / base['median_ms']:.3f}" if base else "—"
                cells.append(f"{s['median_ms']:.4g} ± {s['half_width_ms']:.2g} → {ratio}")
            rows.append(cells)
        body += [
            "",
            f"NDNet Table II rows (all rows × runtimes interleaved): median ms ± half-width → latency ratio to "
            f"{NDNET_REFERENCE}, beside the paper's FPS ratio {NDNET_REFERENCE} FPS / row FPS (Titan X, "
            "1024×2048):",
            "",
            markdown_table(["row", "paper FPS", "paper ratio", *chosen], rows),
        ]
    return "\n".join(body)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    body = report(result)
    cmd = "python benchmarks/runtimes.py " + " ".join(sys.argv[1:] if argv is None else argv)
    path = write_results(
        "runtimes",
        "Deployment runtimes: eager, compile, ONNX Runtime, OpenVINO (issue 11)",
        body + f"\n\nReproduce: `{cmd.strip()}`",
        result,
        out=args.out,
    )
    print(body)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
