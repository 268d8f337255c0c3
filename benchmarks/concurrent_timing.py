"""One model timed alone and while another process trains (issue 8, item 5): the device lock keeps them apart.

The timed model is NDNet45 (``ndnet`` paper defaults, 19 classes) at ``--input`` (default 1×3×512×1024) with
``--threads`` (default 1) torch threads, timed by ``archsearch.cost.latency`` (exclusive device turn,
``--warmup`` untimed + ``--repeats`` timed passes). A trainer PROCESS trains NDNet45 with ``train.fit`` in a loop
on CamVid (the budget of ``spaces/ndnet.yaml``; synthetic scenes when CamVid is absent) with
``--trainer-threads`` threads. Three conditions, interleaved over ``--rounds`` rounds (their order rotates
each round) so that all see the same machine load:

- ``alone``: the trainer is paused (idle between fits);
- ``training, locked``: the trainer trains, each iteration holding the device's shared turn (the default);
- ``training, NO lock``: the trainer trains with ``ARCHSEARCH_NO_TRAIN_LOCK=1`` (contrast only).

Each condition's latency is the median of the rounds' medians; the spread is the range of the round medians
and the median of the rounds' p90. The target: locked within 5% of alone. Locks live in a private temporary
folder, so other archsearch workers on the machine neither wait for nor disturb this run (their CPU load
does, which the load average column shows). Writes benchmarks/results/concurrent_timing.{md,json}.

    python benchmarks/concurrent_timing.py [--rounds 7] [--repeats 10] [--threads 1] [--trainer-threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, SHARED_DATA, markdown_table, write_results
from archsearch import build
from archsearch.cost import interleaved, latency

CONDITIONS = ("alone", "locked", "unlocked")
LABELS = {"alone": "alone (trainer paused)", "locked": "training, locked", "unlocked": "training, NO lock"}
TRAINER_STATE = {"alone": "pause", "locked": "locked", "unlocked": "unlocked"}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


# ------------------------------------------------------------------------------------------------ the trainer


def trainer(args: argparse.Namespace) -> None:
    """Train in chunks of ``--chunk`` iterations while ``control`` says locked/unlocked; idle on pause."""
    from archsearch import data
    from archsearch import spec as spec_mod
    from archsearch.training import train

    torch.set_num_threads(args.trainer_threads)
    control, status = Path(args.trainer) / "control", Path(args.trainer) / "status"
    cache = Path(args.trainer) / "cache"
    if Path(args.camvid).is_dir():
        overrides = [
            "data.name=camvid",
            f"data.root={args.camvid}",
            "data.train_images=null",
            f"proxy.scale={args.scale}",
        ]
    else:
        overrides = []
    s = spec_mod.load(ROOT / "spaces" / "ndnet.yaml", [*overrides, f"data.cache_dir={cache}"])
    train_set = data.load(s.data, "train", s.proxy.scale)
    num_classes = data.info(s.data.name).num_classes
    model = build("ndnet", num_classes=num_classes)
    proxy = dataclasses.replace(s.proxy, iterations=args.chunk)
    done, seconds, fits = 0, 0.0, 0
    h, w = train_set.images.shape[1:3]
    info = f"{s.data.name} {len(train_set)} images {h}×{w}, batch {proxy.batch}"
    while True:
        state = control.read_text().strip() if control.exists() else "pause"
        if state == "stop":
            return
        _write_atomic(status, json.dumps({"state": state, "iterations": done, "seconds": seconds, "data": info}))
        if state == "pause":
            time.sleep(0.02)
            continue
        if state == "unlocked":
            os.environ["ARCHSEARCH_NO_TRAIN_LOCK"] = "1"
        else:
            os.environ.pop("ARCHSEARCH_NO_TRAIN_LOCK", None)
        try:
            result = train.fit(model, train_set, proxy, "cpu", seed=fits, progress=False)
        except train.TrainingDiverged:
            model = build("ndnet", num_classes=num_classes)
            continue
        fits += 1
        done += result.iterations
        seconds += result.seconds


# -------------------------------------------------------------------------------------------------- the timer


class Trainer:
    """The trainer process, steered through a control file; its status file reports its state and progress."""

    def __init__(self, args: argparse.Namespace, folder: Path) -> None:
        self.control, self.status = folder / "control", folder / "status"
        _write_atomic(self.control, "pause")
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--trainer",
            str(folder),
            "--chunk",
            str(args.chunk),
            "--trainer-threads",
            str(args.trainer_threads),
            "--camvid",
            args.camvid,
            "--scale",
            str(args.scale),
        ]
        self.proc = subprocess.Popen(cmd, env=os.environ.copy())

    def read(self) -> dict[str, Any]:
        if self.proc.poll() is not None:
            raise SystemExit(f"the trainer process exited with status {self.proc.returncode}")
        try:
            return json.loads(self.status.read_text())
        except (OSError, ValueError):
            return {"state": None, "iterations": 0, "seconds": 0.0}

    def set(self, state: str, *, busy_iterations: int = 0, timeout: float = 600.0) -> dict[str, Any]:
        """Ask for ``state``; return once the trainer is in it (and, training, has run ``busy_iterations``)."""
        _write_atomic(self.control, state)
        end = time.monotonic() + timeout
        start: int | None = None
        while time.monotonic() < end:
            st = self.read()
            if st["state"] == state:
                start = st["iterations"] if start is None else start
                if st["iterations"] - start >= busy_iterations:
                    return st
            time.sleep(0.02)
        raise SystemExit(f"the trainer did not reach state {state!r} in {timeout:.0f} s")

    def stop(self) -> None:
        _write_atomic(self.control, "stop")
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait()


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    size = tuple(args.input)
    model = build("ndnet", num_classes=19)
    cpu = torch.device("cpu")
    folder = Path(tempfile.mkdtemp(prefix="archsearch-concurrent-timing-"))
    os.environ["ARCHSEARCH_LOCK_DIR"] = str(folder)  # private locks: only this timer and its trainer take them
    os.environ.pop("ARCHSEARCH_NO_TRAIN_LOCK", None)
    latency(model, size, cpu, warmup=args.warmup, repeats=1, threads=args.threads)  # warm the timer
    tr = Trainer(args, folder)
    rounds: list[dict[str, Any]] = []
    try:
        warm = tr.set("locked", busy_iterations=2)  # loads its data, warms up
        alone_training = tr.set("locked", busy_iterations=4)  # nothing times meanwhile: its own iteration time
        iteration_s = (alone_training["seconds"] - warm["seconds"]) / (
            alone_training["iterations"] - warm["iterations"]
        )

        def condition(cond: str) -> None:
            r = sum(x["condition"] == cond for x in rounds)
            before = tr.set(TRAINER_STATE[cond], busy_iterations=0 if cond == "alone" else args.busy)
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            lat = latency(model, size, cpu, warmup=args.warmup, repeats=args.repeats, threads=args.threads)
            wall = time.perf_counter() - t0
            after = tr.read()
            rounds.append(
                {
                    "round": r,
                    "condition": cond,
                    "median_ms": lat.median_ms,
                    "p90_ms": lat.p90_ms,
                    "wall_s": wall,
                    "load_1min": load,
                    "trainer_iterations_during": after["iterations"] - before["iterations"],
                }
            )
            print(
                f"round {r + 1}/{args.rounds} {LABELS[cond]:<24} median {lat.median_ms:8.2f} ms  "
                f"p90 {lat.p90_ms:8.2f} ms  load {load:.2f}  trainer iterations meanwhile "
                f"{rounds[-1]['trainer_iterations_during']}",
                flush=True,
            )

        # interleaved rotates the conditions' order every round (its own call times, which include
        # switching the trainer, are not used: each condition records its latency)
        interleaved({c: functools.partial(condition, c) for c in CONDITIONS}, args.rounds, warmup=0)
        final = tr.set("pause")
    finally:
        tr.stop()
    summary: dict[str, dict[str, float]] = {}
    for cond in CONDITIONS:
        rs = [x for x in rounds if x["condition"] == cond]
        meds = [x["median_ms"] for x in rs]
        summary[cond] = {
            "median_ms": statistics.median(meds),
            "min_round_median_ms": min(meds),
            "max_round_median_ms": max(meds),
            "median_p90_ms": statistics.median(x["p90_ms"] for x in rs),
            "load_1min_mean": statistics.fmean(x["load_1min"] for x in rs),
            "trainer_iterations_during_mean": statistics.fmean(x["trainer_iterations_during"] for x in rs),
            "wall_s_median": statistics.median(x["wall_s"] for x in rs),
        }
    alone = summary["alone"]["median_ms"]
    for cond in CONDITIONS:
        summary[cond]["ratio_to_alone"] = summary[cond]["median_ms"] / alone
    return {
        "input_size": list(size),
        "timer_threads": args.threads,
        "trainer_threads": args.trainer_threads,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "trainer_data": final.get("data"),
        "trainer_iteration_s": iteration_s,
        "cpu_count": os.cpu_count(),
        "target": "locked median within 5% of alone",
        "met": abs(summary["locked"]["ratio_to_alone"] - 1) <= 0.05,
        "command": " ".join(["python", "benchmarks/concurrent_timing.py", *sys.argv[1:]]),
        "summary": summary,
        "per_round": rounds,
    }


def markdown(result: dict[str, Any]) -> str:
    rows = []
    for cond in CONDITIONS:
        s = result["summary"][cond]
        rows.append(
            (
                LABELS[cond],
                f"{s['median_ms']:.1f}",
                f"{s['min_round_median_ms']:.1f}–{s['max_round_median_ms']:.1f}",
                f"{s['median_p90_ms']:.1f}",
                f"{s['ratio_to_alone']:.3f}",
                f"{s['load_1min_mean']:.2f}",
                f"{s['trainer_iterations_during_mean']:.1f}",
                f"{s['wall_s_median']:.2f}",
            )
        )
    table = markdown_table(
        [
            "condition",
            "median ms",
            "round medians ms",
            "p90 ms",
            "× alone",
            "load (1 min)",
            "trainer iterations during a timing",
            "latency() call, s (incl. lock wait)",
        ],
        rows,
    )
    ratio = result["summary"]["locked"]["ratio_to_alone"]
    it_s = result["trainer_iteration_s"]
    return (
        f"`{result['command']}` — NDNet45 (19 classes) at {result['input_size']}, {result['timer_threads']} timing "
        f"thread(s), {result['warmup']} warm-up + {result['repeats']} timed passes per timing, {result['rounds']} "
        f"interleaved rounds; the trainer process trains NDNet45 with `train.fit` on {result['trainer_data']} with "
        f"{result['trainer_threads']} thread(s)"
        + (f" ({it_s * 1000:.0f} ms per iteration)" if it_s else "")
        + f" on a {result['cpu_count']}-core machine.\n\n{table}\n\n"
        f"Locked/alone = {ratio:.3f}: the target (within 5%) is {'met' if result['met'] else 'NOT met'}."
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (each times every condition once)")
    ap.add_argument("--repeats", type=int, default=10, help="timed passes per timing")
    ap.add_argument("--warmup", type=int, default=2, help="untimed passes per timing")
    ap.add_argument("--input", type=int, nargs=4, default=[1, 3, 512, 1024], metavar=("N", "C", "H", "W"))
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the timing")
    ap.add_argument(
        "--trainer-threads",
        type=int,
        default=torch.get_num_threads(),
        help="torch threads of the trainer (default: torch's default here, %(default)s)",
    )
    ap.add_argument("--busy", type=int, default=2, help="trainer iterations to wait for before a concurrent timing")
    ap.add_argument(
        "--chunk", type=int, default=1, help="trainer iterations per fit (it checks its control file between fits)"
    )
    ap.add_argument("--camvid", default=str(SHARED_DATA / "camvid"))
    ap.add_argument("--scale", type=float, default=0.5, help="trainer's CamVid proxy scale (0.5: 180×240)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for concurrent_timing.{md,json}")
    ap.add_argument("--trainer", help=argparse.SUPPRESS)  # internal: run as the trainer process in this folder
    args = ap.parse_args(argv)
    if args.trainer:
        trainer(args)
        return
    result = run(args)
    body = markdown(result)
    print(body)
    print(
        write_results(
            "concurrent_timing", "Timing alone vs beside a training process (issue 8)", body, result, out=args.out
        )
    )


if __name__ == "__main__":
    main()
