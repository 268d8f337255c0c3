"""Classic vs fast inference of the same ISCTF model (Wu et al. 2017, Sec. 3.4, Table 3), timed side by side.

For each model, one set of weights is timed with ``inference = classic`` (every region of the full-resolution
column computed, the unselected ones masked) and ``fast`` (only the top-k region crops computed, batched, and
pasted back), alternating classic/fast on every repeat so that both see the same machine load; medians are
reported. Multiply-adds are counted as the paper counts them (``archsearch.cost.count_madds`` with
``convention="wu2017"``: convolutions only, no projection shortcuts) at 1/4 of the input side with the region size
scaled alike (the region grid is unchanged), times 16 (``_common.scaled_madds``) — FCN costs scale exactly with
pixel count (``tests/test_wu2017.py::test_madds_scale_with_pixels``).

    python benchmarks/fast_inference.py                 # 1024×2048, 5 repeats, both models
    python benchmarks/fast_inference.py --repeats 2 --models table3

Writes ``benchmarks/results/fast_inference.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import warnings
from pathlib import Path

import torch

import archsearch
from archsearch.builders import variant
from archsearch.builders.wu2017.sparsity import regions_to_keep
from archsearch.cost import device_name, interleaved

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, scaled_madds

MODELS = {
    # Table 3 model: ISCTF, p = 0.25, λ = 0.001, 256-pixel regions, unremoved units, plain head (variants
    # sparse_two_column.isctf_p025 classic → isctf_fast_p025 fast).
    "table3": {"units_full": [3, 4, 6, 3], "units_half": [3, 4, 6, 3], "optimized_head": False},
    # The paper's final Model A (Table 4/5; variant sparse_two_column.model_a): optimized head, 1-1-2-0 / 1-2-4-1.
    "model_a": {"units_full": [1, 1, 2, 0], "units_half": [1, 2, 4, 1], "optimized_head": True},
}
# the paper's multiply-adds, from the registry's named variants (Model A has no classic-inference count)
PAPER: dict[str, dict[str, float | None]] = {
    "table3": {
        "classic": variant("sparse_two_column.isctf_p025").paper["madds"],
        "fast": variant("sparse_two_column.isctf_fast_p025").paper["madds"],
    },
    "model_a": {"classic": None, "fast": variant("sparse_two_column.model_a").paper["madds"]},
}
RESULTS = Path(__file__).resolve().parent / "results"


def _ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when the paper gives one of them not."""
    return a / b if a is not None and b else None


def madds(knobs: dict, size: tuple[int, int], region: int, inference: str) -> int:
    """Multiply-adds at ``size`` counted at a quarter of the side (region size / 4), times 16."""
    model = archsearch.build("sparse_two_column", **knobs, region_size=region // 4, inference=inference)
    return scaled_madds(model, (1, 3, *size), 4, convention="wu2017")


def time_pair(model: torch.nn.Module, x: torch.Tensor, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Alternate classic and fast passes of one model; milliseconds per pass."""
    model.eval()

    def run(mode: str) -> None:
        setattr(model, "inference", mode)  # noqa: B010 — a knob the model reads at each call
        model(x)

    with torch.inference_mode():  # interleaved: the order alternates every round
        return interleaved({"classic": lambda: run("classic"), "fast": lambda: run("fast")}, repeats, warmup=warmup)


def _load(avg: tuple[float, float, float]) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in avg) + "]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--height", type=int, default=1024)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--region", type=int, default=256)
    ap.add_argument("--p", type=float, default=0.25, help="target active probability (8/32 regions at 0.25)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    load_start = os.getloadavg()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = (args.height, args.width)
    dev = device_name(torch.device("cpu"))
    x = torch.randn(1, 3, *size)
    rows = []
    for name in args.models:
        knobs = dict(MODELS[name], fusion="isctf", p=args.p, lam=0.001)
        model = archsearch.build("sparse_two_column", **knobs, region_size=args.region)
        grid = (size[0] // args.region) * (size[1] // args.region)
        k = regions_to_keep(args.p, grid)
        t = time_pair(model, x, args.repeats, args.warmup)
        m = {mode: madds(knobs, size, args.region, mode) for mode in ("classic", "fast")}
        med = {mode: statistics.median(v) for mode, v in t.items()}
        rows.append(
            {
                "model": name,
                "knobs": knobs,
                "regions": f"{k}/{grid}",
                "classic_ms": med["classic"],
                "fast_ms": med["fast"],
                "latency_ratio": med["fast"] / med["classic"],
                "classic_madds": m["classic"],
                "fast_madds": m["fast"],
                "madds_ratio": m["fast"] / m["classic"],
                "paper_classic_madds": PAPER[name]["classic"],
                "paper_fast_madds": PAPER[name]["fast"],
                "paper_madds_ratio": _ratio(PAPER[name]["fast"], PAPER[name]["classic"]),
                "classic_times_ms": t["classic"],
                "fast_times_ms": t["fast"],
            }
        )
        r = rows[-1]
        print(
            f"{name:8s} {r['regions']:>6s}  classic {r['classic_ms']:9.1f} ms  fast {r['fast_ms']:9.1f} ms  "
            f"latency ratio {r['latency_ratio']:.3f}  madds {r['classic_madds'] / 1e9:6.1f}g → "
            f"{r['fast_madds'] / 1e9:6.1f}g  ratio {r['madds_ratio']:.3f}",
            flush=True,
        )
    note = (
        f"CPU ({dev}), input {size[0]}×{size[1]}, batch 1, float32, eval, no autograd; classic and fast "
        f"alternate on every repeat ({args.repeats} repeats after {args.warmup} warm-up), medians. Load average "
        f"(1, 5, 15 min) at the start {_load(load_start)}, at the end {_load(os.getloadavg())} on {os.cpu_count()} "
        "CPUs; absolute times depend on that load, the ratios are measured side by side."
    )
    lines = [
        "# Fast vs classic inference (Wu et al. 2017, ISCTF)",
        "",
        note,
        "",
    ]
    table = []
    for r in rows:
        paper = r["paper_fast_madds"] / 1e9
        paper_s = (
            f"{r['paper_classic_madds'] / 1e9:.0f}g → {paper:.1f}g ({r['paper_madds_ratio']:.3f})"
            if r["paper_classic_madds"]
            else f"fast {paper:.1f}g"
        )
        table.append(
            [
                r["model"],
                r["regions"],
                f"{r['classic_ms']:.1f}",
                f"{r['fast_ms']:.1f}",
                f"{r['latency_ratio']:.3f}",
                f"{r['classic_madds'] / 1e9:.1f}g",
                f"{r['fast_madds'] / 1e9:.1f}g",
                f"{r['madds_ratio']:.3f}",
                paper_s,
            ]
        )
    header = [
        "model",
        "regions",
        "classic ms",
        "fast ms",
        "latency fast/classic",
        "madds classic",
        "madds fast",
        "madds fast/classic",
        "paper madds",
    ]
    lines.append(markdown_table(header, table))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fast_inference.md").write_text("\n".join(lines) + "\n")
    payload = {"device": dev, "input": [1, 3, *size], "repeats": args.repeats, "note": note, "rows": rows}
    (RESULTS / "fast_inference.json").write_text(json.dumps(payload, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
