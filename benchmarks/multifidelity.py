"""Multi-fidelity vs full-budget search on CamVid: hypervolume of (mIoU, latency) against training time.

The configurations of ``spaces/SPACE.yaml`` (``--space``, default ndnet: 24), CamVid train → val (every image)
at ``--scale``, one proxy budget (``--iterations``), the same sampler (TPE) and search seed for both searches:

- the full-budget search: every trial trains ``--iterations`` iterations (``--full-trials`` trials);
- the multi-fidelity search, up to ``--mf-trials`` trials: ``--variant rungs`` trains in ``search.fidelity: {eta,
  rungs}`` (rungs of iterations / eta^(rungs−1−k)); ``--variant zc`` first screens ``--screen`` configurations at a
  time by a zero-cost score at initialisation (``search.fidelity.zero_cost``: ``--zero-cost``, no training) and
  trains the best 1/eta of those scored, in ``--rungs`` trained rungs (1: the full budget).

Every trial of both searches records its zero-cost scores (seconds each; ``zc_cpu_seconds``): the tables give
training CPU seconds (the target's measure) and training + zero-cost + evaluation CPU seconds.

Latency is an objective, so it is timed once per configuration before either search (target.input ``--input``,
one thread, ``target.max_seconds`` ``--max-seconds``) and both searches read those measured costs (the cost
reuse of archsearch.trial, keyed by the same arch_key): the two searches see identical latencies, and a
configuration that reaches the top rung has, on the CPU, exactly the weights and mIoU of its full-budget trial.

Hypervolume: of the top-rung (full-budget) COMPLETE trials only, objectives (mIoU ↑, latency ↓), at the FIXED
reference point (mIoU 0, latency 1.1 × the slowest of the 24 measured configurations), in units of
mIoU-fraction × ms (Optuna's exact hypervolume). Time: cumulative over trials in the order they ran, training
wall and process CPU seconds (the machine is shared: judge on CPU time), and training + evaluation (the
multi-fidelity search evaluates after every rung). Target: the multi-fidelity search reaches at least the
full-budget search's hypervolume using at most 1/3 of its training time.

    python benchmarks/multifidelity.py [--camvid ../shared/data/camvid] [--scale 0.25] [--iterations 270]
        [--eta 3] [--rungs 3] [--full-trials 24] [--mf-trials 24] [--space ndnet] [--variant rungs|zc]
        [--zero-cost naswot] [--screen 12] [--batch B]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import moocore
import numpy as np
import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, SHARED_DATA, camvid_sets, markdown_table, write_results
from archsearch import builders, search
from archsearch import spec as spec_mod
from archsearch.search import space
from archsearch.search import trial as trial_mod
from archsearch.spec import fidelity


def load_spec(args: argparse.Namespace, name: str, fidelity: bool, trials: int, storage: str) -> spec_mod.Spec:
    h, w = args.input
    sets = [
        f"name={name}",
        *camvid_sets(args.camvid),
        f"proxy.scale={args.scale}",
        f"proxy.iterations={args.iterations}",
        f"target.input=[1,3,{h},{w}]",
        "target.device=cpu",
        "target.threads=1",
        f"target.max_seconds={args.max_seconds}",
        "target.warmup=2",
        "target.repeats=5",
        "search.sampler=tpe",
        f"search.seed={args.seed}",
        f"search.trials={trials}",
        f"storage={storage}",
        f"data.cache_dir={ROOT / 'runs' / 'cache'}",
    ]
    if args.batch:
        sets.append(f"proxy.batch={args.batch}")
    if fidelity and args.variant == "zc":
        sets.append(
            f"search.fidelity={{eta: {args.eta}, rungs: {args.rungs}, zero_cost: {args.zero_cost}, "
            f"screen: {args.screen}}}"
        )
    elif fidelity:
        sets.append(f"search.fidelity={{eta: {args.eta}, rungs: {args.rungs}}}")
    return spec_mod.load(ROOT / "spaces" / f"{args.space}.yaml", sets)


def profile_all(spec: spec_mod.Spec) -> dict[str, dict[str, Any]]:
    """The cost record of every configuration of the space, keyed by arch_key (timed one at a time)."""
    ctx = trial_mod.Context(spec, Path(tempfile.gettempdir()), progress=False)
    threads = trial_mod.timing_threads(spec)
    costs: dict[str, dict[str, Any]] = {}
    configs = space.configurations(spec)
    assert configs is not None
    for params in configs:
        builder, knobs, _ = space.sample_config(optuna.trial.FixedTrial(params), spec)
        resolved = builders.get(builder).resolve(knobs).as_dict()
        key = trial_mod.arch_key(builder, resolved, ctx.num_classes, spec.target, ctx.device, threads)
        trial_mod.seed_everything(0)
        model = builders.build(builder, ctx.num_classes, **knobs)
        costs[key] = {**trial_mod.profile(model, spec, ctx.device, threads), "key": key}
        print(f"  {resolved}: {costs[key]['latency_ms']:.2f} ms", flush=True)
    return costs


def profile_keys(spec: spec_mod.Spec) -> list[str]:
    """The arch_key of every configuration of the space (what :func:`profile_all` measures)."""
    ctx = trial_mod.Context(spec, Path(tempfile.gettempdir()), progress=False)
    keys = []
    for params in space.configurations(spec) or []:
        builder, knobs, _ = space.sample_config(optuna.trial.FixedTrial(params), spec)
        resolved = builders.get(builder).resolve(knobs).as_dict()
        keys.append(
            trial_mod.arch_key(
                builder, resolved, ctx.num_classes, spec.target, ctx.device, trial_mod.timing_threads(spec)
            )
        )
    return keys


def hypervolume(points: list[tuple[float, float]], reference_ms: float) -> float:
    """Hypervolume of (mIoU ↑, latency ms ↓) points at the reference (mIoU 0, ``reference_ms``)."""
    if not points:
        return 0.0
    values = np.array(points, dtype=float)
    return float(moocore.hypervolume(values, ref=[0.0, reference_ms], maximise=[True, False]))


def curve(study: optuna.Study, reference_ms: float) -> list[dict[str, Any]]:
    """One row per finished trial in the order they ran: its record, the cumulative times and iterations, and
    the hypervolume of the top-rung trials so far."""
    rows: list[dict[str, Any]] = []
    top: list[tuple[float, float]] = []
    total = {"train_s": 0.0, "train_cpu_s": 0.0, "all_s": 0.0, "all_cpu_s": 0.0, "zc_cpu_s": 0.0, "iterations": 0}
    for t in sorted(
        study.get_trials(deepcopy=False), key=lambda t: t.datetime_complete or t.datetime_start or datetime.min
    ):
        a = t.user_attrs
        rungs = a.get("rungs") or []
        its = (
            rungs[-1]["iterations"]
            if rungs
            else (
                a.get("budget", {}).get("proxy", {}).get("iterations", 0)
                if t.state == optuna.trial.TrialState.COMPLETE
                else 0
            )
        )
        total["train_s"] += a.get("train_seconds", 0.0)
        total["train_cpu_s"] += a.get("train_cpu_seconds", 0.0)
        total["all_s"] += a.get("train_seconds", 0.0) + a.get("eval_seconds", 0.0) + a.get("zc_seconds", 0.0)
        total["all_cpu_s"] += (
            a.get("train_cpu_seconds", 0.0) + a.get("eval_cpu_seconds", 0.0) + a.get("zc_cpu_seconds", 0.0)
        )
        total["zc_cpu_s"] += a.get("zc_cpu_seconds", 0.0)
        total["iterations"] += its
        stopped = a.get("stopped_at_rung")
        if t.state == optuna.trial.TrialState.COMPLETE and stopped is None:  # a screened-out trial is PRUNED
            top.append((float(a["miou"]), float(a["latency_ms"])))
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "knobs": a.get("knobs"),
                "miou": a.get("miou"),
                "latency_ms": a.get("latency_ms"),
                "stopped_at_rung": stopped,
                "screen": a.get("screen"),
                "pruned_reason": a.get("pruned_reason"),
                "zc": {k: v for k, v in a.items() if k.startswith("zc_")},
                "iterations": its,
                "rung_mious": [r["miou"] for r in rungs],
                "train_seconds": a.get("train_seconds"),
                "train_cpu_seconds": a.get("train_cpu_seconds"),
                "eval_seconds": a.get("eval_seconds"),
                "eval_cpu_seconds": a.get("eval_cpu_seconds"),
                **{f"cum_{k}": v for k, v in total.items()},
                "hypervolume": hypervolume(top, reference_ms),
            }
        )
    return rows


def zc_ranking(study: optuna.Study) -> tuple[str, list[dict[str, Any]]]:
    """How each zero-cost score (and params, madds) ranks the study's full-budget trials against their mIoU:
    Kendall τ and Spearman ρ over the configurations (one seed each), as a Markdown table and rows."""
    from scipy.stats import kendalltau, spearmanr

    from archsearch.spec.metrics import ZERO_COST, zero_cost_attribute

    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.user_attrs.get("stopped_at_rung") is None
    ]
    rows = []
    for name in ZERO_COST:
        pairs = [
            (float(t.user_attrs[zero_cost_attribute(name)]), float(t.user_attrs["miou"]))
            for t in done
            if t.user_attrs.get(zero_cost_attribute(name)) is not None
        ]
        x, y = [p[0] for p in pairs], [p[1] for p in pairs]
        ok = len(pairs) >= 3
        rows.append(
            {
                "score": name,
                "n": len(pairs),
                "tau": float(kendalltau(x, y).statistic) if ok else None,
                "rho": float(spearmanr(x, y).statistic) if ok else None,
            }
        )
    table = markdown_table(
        ["score", "configurations", "Kendall τ with mIoU", "Spearman ρ with mIoU"],
        [
            [
                r["score"],
                r["n"],
                "—" if r["tau"] is None else f"{r['tau']:.2f}",
                "—" if r["rho"] is None else f"{r['rho']:.2f}",
            ]
            for r in rows
        ],
    )
    return table, rows


def run_search(spec: spec_mod.Spec, url: str, trials: int) -> tuple[optuna.Study, dict[str, Any]]:
    load0 = os.getloadavg()
    t0, c0 = time.perf_counter(), time.process_time()
    study = search.optimize(spec, url, trials, progress=False)
    info = {
        "wall_s": time.perf_counter() - t0,
        "process_cpu_s": time.process_time() - c0,
        "loadavg_start": load0,
        "loadavg_end": os.getloadavg(),
    }
    return study, info


def reach(rows: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The first row at which the hypervolume reaches ``target`` (exactly the same trained models reach exactly
    the same hypervolume, so no tolerance beyond rounding)."""
    for row in rows:
        if row["hypervolume"] >= target * (1 - 1e-12):
            return row
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--camvid", default=str(SHARED_DATA / "camvid"))
    ap.add_argument("--scale", type=float, default=0.25)
    ap.add_argument("--iterations", type=int, default=270)
    ap.add_argument("--eta", type=int, default=3)
    ap.add_argument("--rungs", type=int, default=3)
    ap.add_argument("--full-trials", type=int, default=24)
    ap.add_argument("--mf-trials", type=int, default=24)
    ap.add_argument(
        "--targets",
        type=int,
        nargs="*",
        default=[8, 12],
        help="also compare with the full-budget search stopped after this many trials",
    )
    ap.add_argument("--input", type=int, nargs=2, default=[360, 480], metavar=("H", "W"))
    ap.add_argument("--max-seconds", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--space", default="ndnet", help="spaces/SPACE.yaml (a finite space)")
    ap.add_argument("--variant", choices=["rungs", "zc"], default="rungs", help="trained rungs, or a zero-cost screen")
    ap.add_argument("--zero-cost", default="naswot", help="the screen's score (--variant zc)")
    ap.add_argument("--screen", type=int, default=12, help="configurations scored per round (--variant zc)")
    ap.add_argument("--batch", type=int, default=None, help="proxy.batch (default: the space's)")
    ap.add_argument("--name", default="multifidelity", help="results/<name>.{md,json}")
    ap.add_argument(
        "--costs",
        default=None,
        help="reuse the cost records (costs.json) that an earlier run at the same target measured",
    )
    ap.add_argument(
        "--work",
        default=str(ROOT / "benchmarks" / "out" / "multifidelity"),
        help="folder of the two studies' storage and checkpoints (emptied first)",
    )
    args = ap.parse_args()
    if not Path(args.camvid).is_dir():
        sys.exit(f"CamVid not found at {args.camvid}")
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    work = Path(args.work)  # the studies stay there (a fresh folder each run) for a look afterwards
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    url = f"sqlite:///{work / 'mf.db'}"
    full_spec = load_spec(args, "camvid_full", False, args.full_trials, url)
    mf_spec = load_spec(args, "camvid_mf", True, args.mf_trials, url)
    print(f"timing the {len(space.configurations(full_spec) or [])} configurations once ...", flush=True)
    t0 = time.perf_counter()
    if args.costs:  # the costs of an earlier run at the same target (input, threads, device, runtime)
        costs = json.loads(Path(args.costs).read_text())["costs"]
        if {c for c in costs} != {c for c in profile_keys(full_spec)}:
            sys.exit(f"{args.costs}: its cost records are not those of this space and target")
    else:
        costs = profile_all(full_spec)
    profile_s = time.perf_counter() - t0
    reference_ms = 1.1 * max(c["latency_ms"] for c in costs.values())
    (work / "costs.json").write_text(json.dumps({"reference_ms": reference_ms, "costs": costs}, indent=1))
    original = trial_mod.reuse_cost

    # both searches read the costs measured above (the reuse of archsearch.trial, same arch_key)
    def reuse(s: optuna.Study, key: str) -> dict[str, Any] | None:
        return dict(costs[key]) if key in costs else original(s, key)

    setattr(trial_mod, "reuse_cost", reuse)  # noqa: B010 — replaced for this benchmark only

    print("full-budget search ...", flush=True)
    full_study, full_info = run_search(full_spec, url, args.full_trials)
    print("multi-fidelity search ...", flush=True)
    mf_study, mf_info = run_search(mf_spec, url, args.mf_trials)
    full_rows, mf_rows = curve(full_study, reference_ms), curve(mf_study, reference_ms)

    n_configs = len(space.configurations(full_spec) or [])
    budgets = fidelity.rung_budgets(mf_spec) or []
    per_rung = [
        sum(1 for r in mf_rows if r["state"] == "COMPLETE" and len(r["rung_mious"]) > k) for k in range(len(budgets))
    ]
    comparisons = []
    for n in sorted({*(t for t in args.targets if t < len(full_rows)), len(full_rows)}):
        target = full_rows[n - 1]
        hit = reach(mf_rows, target["hypervolume"])
        comp = {
            "full_trials": n,
            "full_hv": target["hypervolume"],
            "full_train_s": target["cum_train_s"],
            "full_train_cpu_s": target["cum_train_cpu_s"],
            "full_all_cpu_s": target["cum_all_cpu_s"],
            "full_iterations": target["cum_iterations"],
            "mf_trials": None,
            "pass": False,
        }
        if hit is not None:
            comp.update(
                mf_trials=mf_rows.index(hit) + 1,
                mf_hv=hit["hypervolume"],
                mf_train_s=hit["cum_train_s"],
                mf_train_cpu_s=hit["cum_train_cpu_s"],
                mf_all_cpu_s=hit["cum_all_cpu_s"],
                mf_iterations=hit["cum_iterations"],
                ratio_cpu=hit["cum_train_cpu_s"] / target["cum_train_cpu_s"],
                ratio_wall=hit["cum_train_s"] / target["cum_train_s"],
                ratio_all_cpu=hit["cum_all_cpu_s"] / target["cum_all_cpu_s"],
                ratio_iterations=hit["cum_iterations"] / target["cum_iterations"],
            )
            comp["pass"] = comp["ratio_cpu"] <= 1 / 3
        comparisons.append(comp)

    def fin(rows: list[dict[str, Any]]) -> dict[str, Any]:
        last = rows[-1]
        top = sum(1 for r in rows if r["state"] == "COMPLETE" and r["stopped_at_rung"] is None)
        return {
            "trials": len(rows),
            "top_rung": top,
            "hv": last["hypervolume"],
            "train_s": last["cum_train_s"],
            "train_cpu_s": last["cum_train_cpu_s"],
            "all_cpu_s": last["cum_all_cpu_s"],
            "iterations": last["cum_iterations"],
        }

    f, m = fin(full_rows), fin(mf_rows)
    mf_label = (
        f"zero-cost screen ({args.zero_cost}, {args.screen} per round, best 1/{args.eta}) then "
        + ("the full budget" if args.rungs == 1 else f"{args.rungs} trained rungs")
        if args.variant == "zc"
        else f"multi-fidelity (η {args.eta}, {args.rungs} rungs)"
    )
    totals = markdown_table(
        [
            "search",
            "trials",
            "top-rung trials",
            "hypervolume",
            "training wall s",
            "training CPU s",
            "training + zero-cost + eval CPU s",
            "iterations",
            "loadavg (1 min) start → end",
        ],
        [
            [
                name,
                x["trials"],
                x["top_rung"],
                f"{x['hv']:.4f}",
                f"{x['train_s']:.0f}",
                f"{x['train_cpu_s']:.0f}",
                f"{x['all_cpu_s']:.0f}",
                x["iterations"],
                f"{info['loadavg_start'][0]:.1f} → {info['loadavg_end'][0]:.1f}",
            ]
            for name, x, info in (
                ("full budget", f, full_info),
                (mf_label, m, mf_info),
            )
        ],
    )
    reach_rows = []
    for c in comparisons:
        if c["mf_trials"] is None:
            reach_rows.append(
                [
                    f"first {c['full_trials']} trials",
                    f"{c['full_hv']:.4f}",
                    f"{c['full_train_cpu_s']:.0f}",
                    "not reached",
                    "—",
                    "—",
                    "—",
                    "—",
                    "no",
                ]
            )
            continue
        reach_rows.append(
            [
                f"first {c['full_trials']} trials",
                f"{c['full_hv']:.4f}",
                f"{c['full_train_cpu_s']:.0f}",
                f"{c['mf_train_cpu_s']:.0f} (after {c['mf_trials']} trials)",
                f"{c['ratio_cpu']:.3f}",
                f"{c['ratio_wall']:.3f}",
                f"{c['ratio_all_cpu']:.3f}",
                f"{c['ratio_iterations']:.3f}",
                "yes" if c["pass"] else "no",
            ]
        )
    reach_md = markdown_table(
        [
            "full-budget search",
            "its hypervolume",
            "its training CPU s",
            "multi-fidelity training CPU s to reach it",
            "ratio CPU",
            "ratio wall",
            "ratio CPU incl. zero-cost + eval",
            "ratio iterations",
            "≤ 1/3 (CPU)",
        ],
        reach_rows,
    )
    rungs_md = ", ".join(f"rung {k} ({b} it): {n}" for k, (b, n) in enumerate(zip(budgets, per_rung, strict=False)))
    if args.variant == "zc":
        screened = sum(1 for r in mf_rows if r["screen"] and r["screen"].get("promoted") is False)
        scored = sum(1 for r in mf_rows if r["screen"])
        rungs_md = f"zero-cost screen: {scored} scored, {screened} screened out (PRUNED); trained rungs: " + (
            rungs_md if len(budgets) > 1 else f"the full budget ({args.iterations} it): {scored - screened}"
        )
    zc_md, zc_rows = zc_ranking(full_study)
    table = f"{totals}\n\n{reach_md}"
    print(table)
    print(rungs_md)
    body = (
        f"`python benchmarks/multifidelity.py {shlex.join(sys.argv[1:])}` — the {n_configs} configurations of "
        f"`spaces/{args.space}.yaml` on CamVid (train "
        f"367 → val 101 images, scored at the labels' 360×480) at proxy scale {args.scale}, {args.iterations} "
        f"iterations of batch {full_spec.proxy.batch}; TPE, search seed {args.seed}, one worker, one thread. "
        "Latency timed once per "
        f"configuration at 1×3×{args.input[0]}×{args.input[1]} (one thread, ≤ {args.max_seconds:g} s each; "
        + (f"{profile_s:.0f} s for all" if not args.costs else "by an earlier run of this script, `--costs`")
        + f") and shared by both searches. Hypervolume of the top-rung trials in mIoU × ms "
        f"at the fixed reference point (mIoU 0, latency {reference_ms:.2f} ms = 1.1 × the slowest configuration). "
        f"Times are cumulative over the trials in the order they ran; the ratio is judged on training CPU "
        f"seconds (the machine was shared).\n\n{table}\n\nMulti-fidelity trials that reached each rung: "
        f"{rungs_md}.\n\nHow each zero-cost score ranked the full-budget search's trained configurations (one seed "
        f"each, their mIoU at {args.iterations}x{args.scale:g}):\n\n{zc_md}"
    )
    data = {
        "args": vars(args),
        "reference": {"miou": 0.0, "latency_ms": reference_ms},
        "profile_s": profile_s,
        "rung_budgets": budgets,
        "trials_per_rung": per_rung,
        "full": {**f, **full_info},
        "multifidelity": {**m, **mf_info},
        "comparisons": comparisons,
        "zero_cost_ranking": zc_rows,
        "full_trials": full_rows,
        "mf_trials": mf_rows,
    }
    print(
        write_results(
            args.name,
            (
                f"Multi-fidelity search with a zero-cost first rung (issue 18), spaces/{args.space}.yaml: "
                f"hypervolume against training time on CamVid, {args.iterations}x{args.scale:g}, "
                f"{args.zero_cost} screen of {args.screen}, η {args.eta}, {args.rungs} trained rung(s)"
                if args.variant == "zc"
                else "Multi-fidelity search (issue 10): hypervolume against training time on CamVid, "
                f"{args.iterations}x{args.scale:g}, η {args.eta}, {args.rungs} rungs"
            ),
            body,
            data,
        )
    )


if __name__ == "__main__":
    main()
