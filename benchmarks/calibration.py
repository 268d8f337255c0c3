"""Proxy calibration of a shipped space on CamVid (train → val): `archsearch calibrate` with the CamVid settings.

    python benchmarks/calibration.py ndnet --fidelities 50x0.25,150x0.25,150x0.5,300x0.5,600x0.5
    python benchmarks/calibration.py stage_pooling --fidelities ...

Runs ``archsearch calibrate spaces/SPACE.yaml`` on ``../shared/data/camvid`` (all 367 training and 101
validation images) with storage ``runs/calibration_camvid/SPACE.db`` (resumable: a second call trains only what
is missing), then writes ``benchmarks/results/calibration_SPACE.{md,json}``: the calibration table, the command,
the machine and its load average before and after. ``python benchmarks/collect.py`` gathers it into RESULTS.md.
It also copies calibrate's own ``calibration.json`` to ``spaces/calibration/SPACE_camvid.json``, the file a
space's ``calibration:`` key can name (its fronts then say how far their mIoU on CamVid can be trusted).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, SHARED_DATA, camvid_sets, write_results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("space", help="a space under spaces/, e.g. ndnet or stage_pooling")
    p.add_argument("--fidelities", default="50x0.25,150x0.25,150x0.5,300x0.5,600x0.5")
    p.add_argument("--archs", default="6")
    p.add_argument("--seeds", default="2")
    p.add_argument("--top-seeds", default="1")
    p.add_argument("--set", action="append", default=[], help="extra spec overrides (KEY=VALUE)")
    p.add_argument("--note", default="", help="a sentence for the results (how the runs were made)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    from archsearch import cli

    camvid = SHARED_DATA / "camvid"
    if not camvid.is_dir():
        print(f"no CamVid at {camvid}", file=sys.stderr)
        return 2
    spec = f"spaces/{args.space}.yaml"
    out = ROOT / "runs" / "calibration_camvid" / args.space
    sets = [
        *camvid_sets(os.path.relpath(camvid, ROOT)),
        *args.set,
    ]
    command = [
        "calibrate",
        spec,
        "--storage",
        f"sqlite:///runs/calibration_camvid/{args.space}.db",
        "--out",
        str(out.relative_to(ROOT)),
        "--fidelities",
        args.fidelities,
        "--archs",
        args.archs,
        "--seeds",
        args.seeds,
        "--top-seeds",
        args.top_seeds,
        "-q",
        *(x for s in sets for x in ("--set", s)),
    ]
    os.chdir(ROOT)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    code = cli.main(command)
    took = time.perf_counter() - t0
    load_after = os.getloadavg()
    if code != 0:
        return code
    calibration = (out / "calibration.md").read_text().strip().splitlines()
    body = "\n".join("#" + line if line.startswith("## ") else line for line in calibration[1:]).strip()
    runs = pd.read_csv(out / "calibration.csv")
    shown = "archsearch " + " ".join(shlex.quote(c) for c in command)
    text = (
        f"`python benchmarks/calibration.py {args.space} --fidelities {args.fidelities} --archs {args.archs} "
        f"--seeds {args.seeds} --top-seeds {args.top_seeds}` runs\n`{shown}`.\n\n"
        f"Load average (1, 5, 15 min) at the start {[round(v, 2) for v in load_before]}, at the end "
        f"{[round(v, 2) for v in load_after]} on {os.cpu_count()} CPUs (the machine was shared with other work; "
        f"training used 1 thread, `target.threads`). This invocation took {took / 60:.1f} min "
        "(runs stored by an earlier invocation are reused, not re-timed; their training seconds are in the "
        "table).\n\n" + (f"{args.note}\n\n" if args.note else "") + body
    )
    path = write_results(
        f"calibration_{args.space}",
        f"Proxy calibration on CamVid: spaces/{args.space}.yaml",
        text,
        {
            "command": shown,
            "load_before": load_before,
            "load_after": load_after,
            "seconds": took,
            "runs": runs.to_dict(orient="records"),
        },
    )
    shipped = ROOT / "spaces" / "calibration" / f"{args.space}_camvid.json"
    shipped.parent.mkdir(exist_ok=True)
    shutil.copyfile(out / "calibration.json", shipped)
    print(f"wrote {path} and {shipped.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
