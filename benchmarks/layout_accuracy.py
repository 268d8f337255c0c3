"""Does the default training layout (channels_last on the CPU) change a proxy's mIoU? (issue 18, item 1)

    python benchmarks/layout_accuracy.py                          # ndnet29, fast_scnn, spssn; 100x0.5; 3 seeds
    python benchmarks/layout_accuracy.py --builders ndnet29 --iterations 4 --seeds 2 --val-images 4 --no-write

Each builder of ``proxy_throughput.MODELS`` is trained on CamVid train at scale 0.5 with the proxy recipe of
``spaces/ndnet.yaml`` (batch 8, SGD, poly schedule, augmentation) for ``--iterations`` iterations, once per seed in
each layout — the same seed gives both layouts the same initial weights, batches and augmentations, so the two
runs differ only by the order in which the kernels sum — and scored on CamVid val at the labels' resolution.
Reported per builder: the mean mIoU in each layout, the mean and largest paired difference (channels_last − NCHW,
same seed), and the seed noise (pooled standard deviation over seeds within a layout), which the paired
differences are to be compared with. Results: ``benchmarks/results/layout_accuracy.{md,json}``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Literal

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, SHARED_DATA, camvid_sets, markdown_table, write_results
from archsearch import build
from archsearch import data as data_mod
from archsearch.spec import load
from archsearch.training import scoring, train
from archsearch.training.seeds import seed_everything
from proxy_throughput import MODELS

LAYOUTS: dict[str, Literal["auto", "nchw"]] = {"channels_last": "auto", "nchw": "nchw"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--builders", default="ndnet29,fast_scnn,spssn", help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--val-images", type=int, default=None, help="the first N validation images (default all)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    os.chdir(ROOT)
    sets = [
        *camvid_sets(SHARED_DATA / "camvid", val_images=args.val_images),
        "proxy.scale=0.5",
        f"proxy.iterations={args.iterations}",
    ]
    spec = load("spaces/ndnet.yaml", sets)
    train_set = data_mod.load(spec.data, spec.data.train_split, spec.proxy.scale)
    val_set = data_mod.load_scoring(spec.data, spec.data.val_split, spec.proxy.scale)
    num_classes = int(val_set.info.num_classes)
    load_before, t0 = os.getloadavg(), time.perf_counter()
    rows, out = [], {}
    for name in args.builders.split(","):
        builder, knobs = MODELS[name]
        miou: dict[str, list[float]] = {k: [] for k in LAYOUTS}
        for seed in range(args.seeds):
            for layout in list(LAYOUTS)[:: 1 if seed % 2 == 0 else -1]:  # alternate which layout goes first
                proxy = replace(spec.proxy, memory_format=LAYOUTS[layout])
                seed_everything(seed)
                model = build(builder, num_classes, **knobs)
                train.fit(model, train_set, proxy, "cpu", seed=seed, progress=False)
                scores = scoring.evaluate(model, val_set, "cpu", batch=proxy.eval_batch, progress=False)
                miou[layout].append(100 * float(scores.miou))
            print(f"{name} seed {seed}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in miou.items()), flush=True)
        diffs = [a - b for a, b in zip(miou["channels_last"], miou["nchw"], strict=True)]
        noise = statistics.mean(statistics.variance(v) for v in miou.values()) ** 0.5
        out[name] = {"builder": builder, "knobs": knobs, "miou": miou, "paired_diff": diffs, "seed_noise": noise}
        rows.append(
            [
                name,
                f"{statistics.mean(miou['channels_last']):.2f}",
                f"{statistics.mean(miou['nchw']):.2f}",
                f"{statistics.mean(diffs):+.2f}",
                f"{max(diffs, key=abs):+.2f}",
                f"{noise:.2f}",
            ]
        )
    table = markdown_table(
        [
            "model",
            "mIoU % channels_last",
            "mIoU % NCHW",
            "paired difference, mean",
            "largest",
            "seed noise (SD)",
        ],
        rows,
    )
    text = (
        f"`python benchmarks/layout_accuracy.py --builders {args.builders} --iterations {args.iterations} --seeds "
        f"{args.seeds}`: CamVid train → val (scale 0.5, 180×240; scored at the labels' resolution), the proxy recipe "
        f"of spaces/ndnet.yaml (batch 8), {args.iterations} iterations, {args.seeds} seeds per layout, one thread. "
        f"The same seed gives both layouts the same initial weights, batches and augmentations. Load average at the "
        f"start {[round(x, 2) for x in load_before]}, at the end {[round(x, 2) for x in os.getloadavg()]} on "
        f"{os.cpu_count()} CPUs; {(time.perf_counter() - t0) / 60:.1f} min.\n\n" + table
    )
    print(text)
    if not args.no_write:
        print(f"wrote {write_results('layout_accuracy', 'Proxy mIoU in either training layout', text, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
