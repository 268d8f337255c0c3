"""Fast-SCNN vs stream-pooling vs stage-pooling (Mamoon et al. 2020, Table 6 and Table 3), side by side.

For the three ``fast_scnn`` variants (paper defaults otherwise): parameters (19 classes) against Table 6,
multiply-adds (convolutions, ``cost.count_madds``) and latency (eval, no autograd, batch 1) at the target input,
timed in interleaved rounds so that every variant sees the same machine load; medians, p90 and ratios to
Fast-SCNN come from the same run. Writes ``benchmarks/results/stage_pooling.md`` and ``.json``.

    python benchmarks/stage_pooling.py                 # 1024×2048, CPU, 10 rounds
    python benchmarks/stage_pooling.py --repeats 3     # shorter
    python benchmarks/stage_pooling.py --device cuda   # on a GPU (the paper's Table 3 is a TITAN Xp)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from archsearch.builders import build, variant
from archsearch.cost import (
    count_madds,
    count_params,
    device_name,
    p90,
    resolve_device,
    to_memory_format,
)
from archsearch.util.formatting import Align

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, time_interleaved

# label, pooling, Table 6 parameters, Table 6 class mIoU (%), Table 3 TITAN Xp latency (ms): the registry's
# named variants (archsearch/builders/spssnet.py)
VARIANTS = tuple(
    (v.label, v.knobs["pooling"], v.paper["params"], v.paper["miou_pct"], v.paper.get("latency_ms"))
    for v in map(variant, ("fast_scnn.base", "fast_scnn.stream", "fast_scnn.spssn"))
)
BASE, SPSSN = variant("fast_scnn.base"), variant("fast_scnn.spssn")
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--height", type=int, default=1024)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--repeats", type=int, default=10, help="timed rounds; each round times every variant once")
    ap.add_argument("--warmup", type=int, default=2, help="untimed passes per variant before the rounds")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument(
        "--memory-format",
        choices=("nchw", "channels_last", "both"),
        default="both",
        help="weights' memory format for timing (channels_last propagates from the first convolution)",
    )
    ap.add_argument("--no-madds", action="store_true", help="skip the multiply-add count (it runs one forward pass)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for stage_pooling.md/.json")
    return ap.parse_args(argv)


def measure(args: argparse.Namespace) -> dict[str, object]:
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    size = (1, 3, args.height, args.width)
    load_start = os.getloadavg()
    models = {pooling: build("fast_scnn", num_classes=19, pooling=pooling).eval() for _, pooling, *_ in VARIANTS}
    rows: list[dict[str, Any]] = []
    for label, pooling, paper_params, paper_miou, paper_ms in VARIANTS:
        model = models[pooling]
        params = count_params(model)
        madds = None if args.no_madds else count_madds(model, size)
        rows.append(
            {
                "label": label,
                "pooling": pooling,
                "params": params,
                "paper_params": paper_params,
                "params_delta_pct": 100.0 * (params / paper_params - 1),
                "madds": madds,
                "paper_miou_pct": paper_miou,
                "paper_latency_ms_titan_xp": paper_ms,
            }
        )
    formats = ("nchw", "channels_last") if args.memory_format == "both" else (args.memory_format,)
    timed: dict[tuple[str, str], torch.nn.Module] = {}
    for fmt in formats:
        for pooling, model in models.items():
            m = copy.deepcopy(model).to(dev)
            timed[(pooling, fmt)] = to_memory_format(m, fmt)
    # interleaved rounds (_common.time_interleaved on interleaved, rotating order): the same load for every
    # variant and format; the timed forward is TimedForward's (logits up-sampled to the input)
    times = time_interleaved(timed, size, args.repeats, warmup=args.warmup, device=dev)
    for row in rows:
        row["latency"] = {}
        for fmt in formats:
            ts = sorted(times[(str(row["pooling"]), fmt)])
            base = statistics.median(times[("none", fmt)])
            row["latency"][fmt] = {
                "median_ms": statistics.median(ts),
                "p90_ms": p90(ts),
                "ratio_to_fast_scnn": statistics.median(ts) / base,
                "ratio_paired_median": statistics.median(
                    t / b for t, b in zip(times[(str(row["pooling"]), fmt)], times[("none", fmt)], strict=False)
                ),
                "all_ms": times[(str(row["pooling"]), fmt)],
            }
    load = os.getloadavg()
    return {
        "benchmark": "stage_pooling",
        "paper": "mamoon2020_spssnet_stage_pooling (Table 6, Table 3)",
        "input_size": list(size),
        "device": device_name(dev),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "repeats": args.repeats,
        "memory_formats": list(formats),
        "warmup": args.warmup,
        "load_average_1_5_15_start": [round(v, 2) for v in load_start],
        "load_average_1_5_15": [round(v, 2) for v in load],
        "cpu_count": os.cpu_count(),
        "note": (
            "Latencies are medians of interleaved rounds in one run; absolute times depend on the machine's load "
            "(load average above) while ratios measured side by side are comparable. "
            "The paper's latencies are on a TITAN Xp GPU (Table 3)."
        ),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(["python", "benchmarks/stage_pooling.py", *sys.argv[1:]]),
        "rows": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    assert isinstance(rows, list)
    paper_ratio = SPSSN.paper["latency_ms"] / BASE.paper["latency_ms"]
    lines = [
        "# Stage-pooling vs stream-pooling (Mamoon et al. 2020, Table 6)",
        "",
        f"Input {'×'.join(map(str, result['input_size']))}, device {result['device']}, torch {result['torch']}, "
        f"{result['repeats']} interleaved rounds (median, p90), warm-up {result['warmup']}; "
        f"`{result['command']}` at {result['when']}.",
        f"Load average (1, 5, 15 min) at the start {result['load_average_1_5_15_start']}, at the end "
        f"{result['load_average_1_5_15']} on {result['cpu_count']} CPUs; absolute times depend on that load, "
        "ratios were measured side by side.",
        "",
    ]
    numbers: list[Align] = ["right"] * 6
    params = [
        [
            r["label"],
            f"{r['params'] / 1e6:.3f}M",
            f"{r['paper_params'] / 1e6:.2f}M",
            f"{r['params_delta_pct']:+.1f}%",
            f"{r['madds'] / 1e9:.2f}" if r["madds"] is not None else "–",
            f"{r['paper_latency_ms_titan_xp']:.1f}" if r["paper_latency_ms_titan_xp"] is not None else "–",
            f"{r['paper_miou_pct']:.2f}",
        ]
        for r in rows
    ]
    header = ["variant", "params", "Table 6", "Δ", "GMAdds", "paper ms (TITAN Xp)", "paper mIoU %"]
    lines += [markdown_table(header, params, ["left", *numbers]), ""]
    timings = [
        [
            r["label"],
            fmt,
            f"{r['latency'][fmt]['median_ms']:.1f}",
            f"{r['latency'][fmt]['p90_ms']:.1f}",
            f"{r['latency'][fmt]['ratio_to_fast_scnn']:.2f}",
            f"{r['latency'][fmt]['ratio_paired_median']:.2f}",
        ]
        for fmt in result["memory_formats"]
        for r in rows
    ]
    header = [
        "variant",
        "memory format",
        "latency ms (median)",
        "p90",
        "× Fast-SCNN (medians)",
        "× Fast-SCNN (paired rounds)",
    ]
    lines.append(markdown_table(header, timings, ["left", "left", *numbers[:4]]))
    lines += [
        "",
        f"Paper (Table 3, TITAN Xp): SPSSN {SPSSN.paper['latency_ms']:g} ms vs Fast-SCNN "
        f"{BASE.paper['latency_ms']:g} ms, ratio {paper_ratio:.2f}; "
        "no time is given for stream-pooling.",
        "Multiply-adds: convolutions and linear layers of one eval forward at the input above (count_madds).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = measure(args)
    text = markdown(result)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stage_pooling.md").write_text(text)
    (args.out / "stage_pooling.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out / 'stage_pooling.md'} and .json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
