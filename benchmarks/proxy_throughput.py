"""Proxy training throughput per builder: the default memory layout (``proxy.memory_format: auto``, channels-last
on the CPU) against NCHW, and the share of a training step spent loading and augmenting data (issue 18, item 1).

    python benchmarks/proxy_throughput.py                       # every builder below, 1 thread, batch 8, CamVid 0.5
    python benchmarks/proxy_throughput.py --builders ndnet29 --rounds 2 --steps 1

Each builder trains on CamVid train at scale 0.5 (180×240), batch 8, one thread, with the proxy's SGD, poly
learning rate and augmentation (:class:`archsearch.training.train.Trainer`). The two layouts are timed in
interleaved rounds (the order alternates every round, so a drift of the machine's load lands on both alike):
each round runs ``--steps`` training steps of each after ``--warmup`` untimed ones. Reported: the median images/s
of each layout over the rounds, their spread (min–max), the ratio of the medians and the median of the per-round
ratios, and the median time of fetching and augmenting one batch (data loader + ``transforms.augment``) as a share
of the default layout's step. Results: ``benchmarks/results/proxy_throughput.{md,json}``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, SHARED_DATA, markdown_table, write_results
from archsearch import build
from archsearch import data as data_mod
from archsearch.data.transforms import augment
from archsearch.spec import load
from archsearch.training import train

#: name → (builder, knobs): the builders' real-time configurations (ResNet-50 ones narrowed to train in seconds)
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "ndnet29": ("ndnet", {"widths": [16, 32, 64], "depths": [3, 8, 3], "expansion": 4}),
    "fast_scnn": ("fast_scnn", {"pooling": "none"}),
    "spssn": ("fast_scnn", {"pooling": "stage"}),
    "icnet_sub124_k0.5": ("icnet", {"branches": "sub124", "keep_rate": 0.5}),
    "pspnet50_k0.25": ("pspnet50", {"keep_rate": 0.25}),
    "sparse_two_column": ("sparse_two_column", {}),
}


def data_seconds(dataset: Any, proxy: Any, batches: int) -> float:
    """Median CPU seconds to fetch one batch from the proxy's loader and augment it (one thread)."""
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=proxy.batch,
        sampler=torch.utils.data.RandomSampler(
            dataset, replacement=True, num_samples=batches * proxy.batch, generator=torch.Generator().manual_seed(0)
        ),
    )
    gen = torch.Generator().manual_seed(1)
    it = iter(loader)
    samples = []
    for _ in range(batches):
        t0 = time.process_time()
        images, labels = next(it)
        augment(images, labels, crop=proxy.crop, scale_range=proxy.scale_range, flip=proxy.flip, generator=gen)
        samples.append(time.process_time() - t0)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--builders", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="timed steps per layout per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    os.chdir(ROOT)
    spec = load(
        "spaces/ndnet.yaml",
        ["data.name=camvid", f"data.root={SHARED_DATA / 'camvid'}", "data.train_images=null", "proxy.scale=0.5"],
    )
    dataset = data_mod.load(spec.data, spec.data.train_split, spec.proxy.scale)
    num_classes = int(dataset.info.num_classes)
    load_before = os.getloadavg()
    layouts = {"default": replace(spec.proxy, memory_format="auto"), "nchw": replace(spec.proxy, memory_format="nchw")}
    total = args.warmup + args.rounds * args.steps
    rows, out = [], {}
    for name in args.builders.split(","):
        builder, knobs = MODELS[name]
        trainers = {}
        for layout, proxy in layouts.items():
            torch.manual_seed(0)
            model = build(builder, num_classes, **knobs)
            trainers[layout] = train.Trainer(model, dataset, proxy, "cpu", seed=0, iterations=total)
            trainers[layout].advance(args.warmup)
        rates: dict[str, list[float]] = {k: [] for k in layouts}  # images per wall second
        cpu_rates: dict[str, list[float]] = {k: [] for k in layouts}  # images per CPU second of this process
        for r in range(args.rounds):
            for layout in list(layouts)[:: 1 if r % 2 == 0 else -1]:
                cpu0 = time.process_time()
                fit = trainers[layout].advance(args.steps)
                rates[layout].append(fit.images_per_s)
                cpu_rates[layout].append(args.steps * spec.proxy.batch / (time.process_time() - cpu0))
        per_round = [a / b for a, b in zip(rates["default"], rates["nchw"], strict=True)]
        med = {k: statistics.median(v) for k, v in rates.items()}
        cpu_med = {k: statistics.median(v) for k, v in cpu_rates.items()}
        step = spec.proxy.batch / cpu_med["default"]
        data_s = data_seconds(dataset, spec.proxy, 10)
        out[name] = {
            "builder": builder,
            "knobs": knobs,
            "images_per_s": rates,
            "images_per_cpu_s": cpu_rates,
            "median": med,
            "cpu_median": cpu_med,
            "speedup": med["default"] / med["nchw"],
            "cpu_speedup": cpu_med["default"] / cpu_med["nchw"],
            "speedup_per_round_median": statistics.median(per_round),
            "data_seconds": data_s,
            "data_share": data_s / step,
        }
        rows.append(
            [
                name,
                f"{med['default']:.2f} ({min(rates['default']):.2f}–{max(rates['default']):.2f})",
                f"{med['nchw']:.2f} ({min(rates['nchw']):.2f}–{max(rates['nchw']):.2f})",
                f"{out[name]['speedup']:.2f}×",
                f"{out[name]['speedup_per_round_median']:.2f}× ({min(per_round):.2f}–{max(per_round):.2f})",
                f"{cpu_med['default']:.2f} / {cpu_med['nchw']:.2f} = {out[name]['cpu_speedup']:.2f}×",
                f"{1000 * data_s:.0f} ms ({100 * data_s / step:.1f}%)",
            ]
        )
        print(" | ".join(rows[-1]), flush=True)
    load_after = os.getloadavg()
    command = "python benchmarks/proxy_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:])
    body = (
        f"`{command}`: CamVid train at scale 0.5 (180×240), batch {spec.proxy.batch}, 1 thread, the proxy's SGD "
        f"and augmentation; {args.rounds} interleaved rounds of {args.steps} steps per layout after {args.warmup} "
        f"warm-up steps. Load average (1, 5, 15 min) at the start {[round(x, 2) for x in load_before]}, at the end "
        f"{[round(x, 2) for x in load_after]} on {os.cpu_count()} CPUs (shared machine). images/s: median of the "
        "rounds (min–max); img per CPU-s: images per CPU second of the benchmark's process (medians; less disturbed "
        "by other processes on a loaded machine); data: median time to fetch and augment one batch, as a share of "
        "the default step (its CPU time).\n\n"
        + markdown_table(
            [
                "model",
                "default (channels_last) img/s",
                "NCHW img/s",
                "speed-up (medians)",
                "speed-up per round: median (min–max)",
                "img per CPU-s: default / NCHW",
                "data per batch (share of step)",
            ],
            rows,
        )
    )
    print(body)
    if not args.no_write:
        write_results(
            "proxy_throughput",
            "Proxy training throughput: channels_last (default) vs NCHW",
            body,
            {"command": command, "load_before": load_before, "load_after": load_after, "models": out},
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
