"""Architectures trained from scratch on CamVid with `archsearch train`, beside published results and their proxies.

    python benchmarks/final_training.py --epochs 100 --scale 0.5 --eval-every 2

Each variant is trained with the recipe of ``spaces/cross_paper.yaml`` (SGD, poly schedule, the proxy's
augmentation) on all 367 CamVid training images, scored on the 101 validation images at the labels' resolution
every ``--eval-every`` epochs, in the storage ``runs/final_camvid/cross_paper.db`` (resumable: a second call
continues an interrupted training). The table shows val mIoU per evaluation, the best and the last, the training
time, and beside them the proxy mIoU of the same architecture from the CamVid calibration of the same space (the
mean of its runs at each trained fidelity, when ``--calibration`` names that storage and the architecture is among
its runs), Kendall τ between each proxy fidelity and the converged best over the variants, and two published
CamVid results from scratch for scale: ENet 51.3% (Paszke et al. 2016, "ENet: A Deep Neural Network Architecture
for Real-Time Semantic Segmentation", arXiv:1606.02147, Table 3, CamVid test, 11 classes) and 52.9% (a PyTorch
re-implementation of ENet after 300 epochs at 480×360, reported by its authors on CamVid test). The published
numbers are on the test split, which is not available here (train on train, select on val): they are a scale, not
a comparison. The default variants are NDNet45 and SPSSN (the papers' choices; SPSSN is also the best of the
calibration's 12 architectures at its top fidelity), Fast-SCNN and NDNet29.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, SHARED_DATA, camvid_sets, markdown_table, write_results

PUBLISHED = (("ENet (Paszke et al. 2016), CamVid test", 51.3), ("ENet PyTorch re-implementation, 300 epochs", 52.9))


def proxy_miou(calibration: Path, builder: str, resolved: dict[str, Any]) -> dict[str, float]:
    """Mean mIoU (%) of this architecture's runs per trained fidelity (``ITERxSCALE``) in a calibration storage,
    costliest first; empty when the storage or the architecture is not there. Zero-cost runs hold no mIoU."""
    if not calibration.is_file():
        return {}
    url = f"sqlite:///{calibration}"
    names = [s.study_name for s in optuna.get_all_study_summaries(url) if s.study_name.endswith(".calibrate")]
    values: dict[str, list[float]] = {}
    for name in names:
        study = optuna.load_study(study_name=name, storage=url)
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            if (
                t.user_attrs.get("builder") == builder
                and t.user_attrs.get("knobs") == resolved
                and "miou" in t.user_attrs
            ):
                values.setdefault(str(t.user_attrs["fidelity"]), []).append(100 * float(t.user_attrs["miou"]))
    cost = {f: int(f.split("x")[0]) * float(f.split("x")[1]) ** 2 for f in values}
    return {f: sum(values[f]) / len(values[f]) for f in sorted(values, key=cost.__getitem__, reverse=True)}


def rank_check(data: dict[str, Any]) -> str:
    """One line per proxy fidelity: Kendall τ between its mean mIoU and the converged best mIoU, over the variants
    that have both (scipy's τ-b; ties in the proxy count as ties)."""
    fidelities = sorted({f for d in data.values() for f in d["proxy_pct"]})
    lines = []
    for f in fidelities:
        have = [d for d in data.values() if f in d["proxy_pct"]]
        if len(have) < 2:
            continue
        tau = stats.kendalltau([d["proxy_pct"][f] for d in have], [d["best"] for d in have]).statistic
        proxy_order = " > ".join(
            n
            for n, _ in sorted(
                ((n, d["proxy_pct"][f]) for n, d in data.items() if f in d["proxy_pct"]), key=lambda x: -x[1]
            )
        )
        lines.append(
            f"- proxy {f} against the trained best over {len(have)} variants: Kendall τ {tau:.2f} "
            f"(proxy order: {proxy_order})"
        )
    if not lines:
        return ""
    trained = " > ".join(n for n, _ in sorted(((n, d["best"]) for n, d in data.items()), key=lambda x: -x[1]))
    return "Ranking, trained to convergence: " + trained + "\n\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", default="ndnet.ndnet45,fast_scnn.spssn,fast_scnn.base,ndnet.ndnet29")
    p.add_argument("--epochs", type=float, default=100.0)
    p.add_argument("--scale", type=float, default=0.5)
    p.add_argument("--eval-every", type=float, default=5.0, help="epochs between evaluations")
    p.add_argument("--calibration", default=str(ROOT / "runs" / "calibration_camvid" / "cross_paper.db"))
    p.add_argument("--set", action="append", default=[], help="extra spec overrides (KEY=VALUE)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    from archsearch import builders, cli
    from archsearch.search import final

    camvid = SHARED_DATA / "camvid"
    if not camvid.is_dir():
        print(f"no CamVid at {camvid}", file=sys.stderr)
        return 2
    os.chdir(ROOT)
    url = "sqlite:///runs/final_camvid/cross_paper.db"
    sets = [
        *camvid_sets(os.path.relpath(camvid, ROOT)),
        "target.device=cpu",
        *args.set,
    ]
    iterations_per_epoch = 367 / 4  # spaces/cross_paper.yaml: proxy.batch 4
    eval_every = max(1, round(args.eval_every * iterations_per_epoch))
    rows, data = [], {}
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    commands = []
    for name in args.variants.split(","):
        command = ["train", "spaces/cross_paper.yaml", "--variant", name, "--epochs", f"{args.epochs:g}"]
        command += ["--scale", f"{args.scale:g}", "--eval-every", str(eval_every), "--storage", url, "-q"]
        command += [x for s in sets for x in ("--set", s)]
        commands.append("archsearch " + " ".join(shlex.quote(c) for c in command))
        code = cli.main(command)
        if code != 0:
            return code
        v = builders.variant(name)
        resolved = builders.get(v.builder).resolve(dict(v.knobs)).as_dict()
        study = optuna.load_study(study_name="cross_paper" + final.STUDY_SUFFIX, storage=url)
        done = [
            t
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.user_attrs.get("source") == f"variant {v.qualname}"
        ][-1]
        history = done.user_attrs["history"]
        proxies = proxy_miou(Path(args.calibration), v.builder, resolved)
        best_epoch = done.user_attrs["best_iteration"] / iterations_per_epoch
        shown = [h for h in history if round(h["iteration"] / iterations_per_epoch) % 10 == 0] or history
        rows.append(
            [
                name,
                " · ".join(f"{h['iteration'] / iterations_per_epoch:.0f}: {100 * h['miou']:.1f}" for h in shown),
                f"{100 * done.user_attrs['best_miou']:.2f} (epoch {best_epoch:.0f})",
                f"{100 * done.user_attrs['final_miou']:.2f}",
                f"{done.user_attrs['train_seconds'] / 60:.0f} min",
                " · ".join(f"{f}: {m:.2f}" for f, m in proxies.items()) or "— (not among the calibration's runs)",
            ]
        )
        data[name] = {"history": history, "best": done.user_attrs["best_miou"], "proxy_pct": proxies}
    took = time.perf_counter() - t0
    table = markdown_table(
        [
            "variant",
            "val mIoU % by epoch (every 10th)",
            "best %",
            "last %",
            "training",
            "proxy mIoU % (calibration mean)",
        ],
        rows,
    )
    published = "\n".join(f"- {label}: {value}% mIoU" for label, value in PUBLISHED)
    ranking = rank_check(data)
    text = (
        f"`python benchmarks/final_training.py --variants {args.variants} --epochs {args.epochs:g} --scale "
        f"{args.scale:g} --eval-every {args.eval_every:g}` runs, for each variant,\n\n"
        + "\n".join(f"- `{c}`" for c in commands)
        + f"\n\n{args.epochs:g} epochs of the 367 CamVid training images at scale {args.scale:g} "
        f"({int(360 * args.scale)}×{int(480 * args.scale)}), batch 4, one thread; val mIoU at the labels' resolution. "
        f"Load average at the start {[round(x, 2) for x in load_before]}, at the end "
        f"{[round(x, 2) for x in os.getloadavg()]} on {os.cpu_count()} CPUs; this invocation took {took / 60:.1f} min "
        "(a resumed training counts only the part run now).\n\n"
        + table
        + (f"\n\n{ranking}" if ranking else "")
        + "\n\nPublished CamVid results from scratch, for scale (test split, not available here):\n\n"
        + published
    )
    path = write_results("final_training", "Final training on CamVid beside the proxies", text, data)
    print(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
