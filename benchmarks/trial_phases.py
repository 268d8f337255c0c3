"""Time one trial's phases on CamVid at the budget of spaces/ndnet.yaml.

The space's training budget (iterations, batch, learning rate) and target input, on the whole CamVid train
(367) and val (101) splits at ``--scale`` (default 0.5). Phases: data loading without the cache (decode PNGs,
resize), with the cache (memory-mapped .npy), profile
(parameters, fvcore multiply-adds, latency at the target input), proxy training (per iteration) and evaluation.
Prints a table and writes benchmarks/results/trial_phases.{md,json}.

    python benchmarks/trial_phases.py [--iterations 20] [--repeats 3] [--camvid ../shared/data/camvid]
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, SHARED_DATA, camvid_sets, markdown_table, median_time, write_results
from archsearch import build, data
from archsearch import spec as spec_mod
from archsearch.cost import count_madds, count_params, latency, resolve_device
from archsearch.training import scoring, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--camvid", default=str(SHARED_DATA / "camvid"))
    ap.add_argument("--iterations", type=int, default=None, help="training iterations (default: the space's)")
    ap.add_argument(
        "--scale",
        type=float,
        default=0.5,
        help="proxy scale on CamVid (default 0.5: 180×240, about the pixels of the space's 128×256 synthetic proxy)",
    )
    ap.add_argument("--repeats", type=int, default=3, help="repeats of the data and evaluation phases")
    ap.add_argument("--latency-repeats", type=int, default=None, help="default: the space's target.repeats")
    args = ap.parse_args()
    if not Path(args.camvid).is_dir():
        sys.exit(f"CamVid not found at {args.camvid}")

    # The space's budget (iterations, batch, lr, target) on the whole CamVid train and val splits.
    s = spec_mod.load(
        ROOT / "spaces" / "ndnet.yaml",
        [
            *camvid_sets(args.camvid),
            f"proxy.scale={args.scale}",
        ],
    )
    proxy = s.proxy if args.iterations is None else dataclasses.replace(s.proxy, iterations=args.iterations)
    device = resolve_device(s.target.device)
    model = build("ndnet", num_classes=data.info("camvid").num_classes)  # NDNet45, the paper's choice
    rows: list[tuple[str, str, str]] = []
    results: dict[str, Any] = {}

    cache_root = Path(tempfile.mkdtemp(prefix="archsearch-bench-cache-"))
    try:

        def cold() -> None:
            shutil.rmtree(cache_root, ignore_errors=True)
            data.load(dataclasses.replace(s.data, cache_dir=str(cache_root)), "train", proxy.scale)

        cold_s, _ = median_time(cold, args.repeats)
        warm_spec = dataclasses.replace(s.data, cache_dir=str(cache_root))
        train_set = data.load(warm_spec, "train", proxy.scale)
        warm_s, _ = median_time(lambda: data.load(warm_spec, "train", proxy.scale), args.repeats)
        n_train = len(train_set)
        h, w = train_set.images.shape[1:3]
        rows.append(
            ("data: load train split, no cache (decode PNGs)", f"{cold_s:.3f} s", f"{n_train} images → {h}×{w}")
        )
        rows.append(
            ("data: load train split, cached (mmap)", f"{warm_s * 1000:.1f} ms", f"{cold_s / warm_s:.0f}× faster")
        )
        results.update(load_no_cache_s=cold_s, load_cached_s=warm_s, train_images=n_train, resolution=[h, w])

        t0 = time.perf_counter()
        params = count_params(model)
        madds = count_madds(model, s.target.input, convention=s.target.madds_convention)
        madds_s = time.perf_counter() - t0
        lat = latency(
            model, s.target.input, device, warmup=s.target.warmup, repeats=args.latency_repeats or s.target.repeats
        )
        rows.append(
            (
                "profile: params + multiply-adds",
                f"{madds_s:.2f} s",
                f"{params / 1e3:.0f}K params, {madds / 1e9:.2f} GMAdds at {list(s.target.input)}",
            )
        )
        rows.append(
            (
                "profile: latency (median, one forward)",
                f"{lat.median_ms:.1f} ms",
                f"p90 {lat.p90_ms:.1f} ms, {lat.repeats} repeats + {s.target.warmup} warm-up on {lat.device}",
            )
        )
        results.update(
            count_s=madds_s, params=params, madds=madds, latency_median_ms=lat.median_ms, latency_p90_ms=lat.p90_ms
        )

        result = train.fit(model, train_set, proxy, device, seed=0, progress=False)
        per_it = result.seconds / result.iterations
        rows.append(
            (
                "train: per iteration",
                f"{per_it * 1000:.0f} ms",
                f"batch {proxy.batch}, {result.images_per_s:.1f} images/s, "
                f"{result.iterations} iterations = {result.seconds:.1f} s",
            )
        )
        results.update(train_iteration_s=per_it, images_per_s=result.images_per_s, iterations=result.iterations)

        val_set = data.load(warm_spec, "val", proxy.scale)
        eval_s, _ = median_time(
            lambda: scoring.evaluate(model, val_set, device, batch=proxy.eval_batch, progress=False), args.repeats
        )
        scores = scoring.evaluate(model, val_set, device, batch=proxy.eval_batch, progress=False)
        rows.append(("evaluate: val split", f"{eval_s:.2f} s", f"{len(val_set)} images, mIoU {100 * scores.miou:.1f}%"))
        results.update(eval_s=eval_s, val_images=len(val_set), miou=scores.miou)
    finally:
        shutil.rmtree(cache_root, ignore_errors=True)

    total_trial = (
        warm_s
        + madds_s
        + lat.median_ms / 1000 * (s.target.repeats + s.target.warmup)
        + per_it * s.proxy.iterations
        + eval_s
    )
    rows.append(
        (
            "one trial at the space's budget (cached data)",
            f"{total_trial:.1f} s",
            f"{s.proxy.iterations} iterations; the first trial adds the uncached load once",
        )
    )
    table = markdown_table(["phase", "median", "notes"], rows)
    print(table)
    body = (
        f"`python benchmarks/trial_phases.py` — NDNet45 (FCN32) on CamVid at the budget of `spaces/ndnet.yaml` "
        f"(proxy scale {proxy.scale}, batch {proxy.batch}); medians of {args.repeats} repeats where repeated."
        f"\n\n{table}"
    )
    print(write_results("trial_phases", "Trial phases (issue 2): NDNet45 on CamVid", body, results))


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
