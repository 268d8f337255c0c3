"""The calibration's runs: each one a trial of the study ``<name>.calibrate`` — trained and scored by the trial
pipeline's own pieces (:func:`archsearch.search.trial.train_proxy`, :func:`archsearch.training.scoring.evaluate`
at label resolution) or, at a zero-cost fidelity, scored at initialisation (:mod:`archsearch.training.zerocost`)
— and the frame of the plan's complete runs."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from archsearch import builders, cost, search
from archsearch import spec as spec_mod
from archsearch.calibrate.ladder import Arch, Fidelity, Run, Rung, ZeroCost, plan, recipe, study_name
from archsearch.search import trial as trial_mod
from archsearch.search import workers
from archsearch.training import scoring, seeds, zerocost
from archsearch.util.formatting import fmt_duration


def open_study(spec: Any, url: str) -> tuple[optuna.Study, RDBStorage]:
    """The calibration study beside ``spec``'s run, and its storage (the run's: its creation lock and errors)."""
    storage = search.open_storage(url)
    study = optuna.create_study(
        study_name=study_name(spec),
        storage=storage,
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),
        load_if_exists=True,
    )
    return study, storage


def _describe(trial: optuna.Trial, ctx: Any, run: Run, recipe_key: str) -> tuple[str, int]:
    """Record what the run is on ``trial``; its builder and seed (the trial pipeline's ``seed_index``-th)."""
    spec = ctx.spec
    builder = run.arch.builder or spec.builder
    seed = seeds.training_seeds(seeds.seed_of(spec, run.arch.resolved, builder), run.seed_index + 1)[-1]
    for k, v in {
        "fidelity": run.fidelity.label,
        "iterations": run.fidelity.iterations,
        "scale": run.fidelity.scale,
        "seed_index": run.seed_index,
        "seed": seed,
        "arch_key": run.arch.key,
        "arch_label": run.arch.label,
        "params_of_arch": run.arch.params,
        "knobs": run.arch.resolved,
        "builder": builder,
        "recipe": recipe_key,
        "match": run.match(recipe_key),
        "budget": trial_mod.budget(spec),
    }.items():
        trial.set_user_attr(k, v)
    return builder, seed


def train_run(trial: optuna.Trial, ctx: Any, run: Run, recipe_key: str) -> float:
    """Train and score one run on ``ctx`` (its spec at the run's fidelity); records it on ``trial``."""
    spec = ctx.spec
    builder, seed = _describe(trial, ctx, run, recipe_key)
    seeds.seed_everything(seed)
    model = builders.build(builder, ctx.num_classes, **run.arch.knobs)
    seeds.seed_everything(seed)
    cpu0 = time.process_time()
    data_seed = seeds.data_seeds(spec, run.seed_index + 1)[-1]  # common random numbers (None: from the seed)
    trained, wall = trial_mod.train_proxy(model, run.arch.resolved, ctx, trial, seed, builder, data_seed=data_seed)
    cpu = time.process_time() - cpu0
    t0 = time.perf_counter()
    scores = scoring.evaluate(
        trained,
        ctx.scoring_dataset(spec.data.val_split),
        ctx.device,
        batch=spec.proxy.eval_batch,
        progress=ctx.progress,
        threads=trial_mod.timing_threads(spec),
    )
    for k, v in {
        "train_seconds": wall,
        "train_cpu_seconds": cpu,
        "eval_seconds": time.perf_counter() - t0,
        "miou": float(scores.miou),
        "pixel_acc": float(scores.pixel_acc),
        "mean_acc": float(scores.mean_acc),
        "value": float(scores.miou),
    }.items():
        trial.set_user_attr(k, v)
    return float(scores.miou)


def score_run(trial: optuna.Trial, ctx: Any, run: Run, recipe_key: str) -> float:
    """A zero-cost run: the architecture's score at initialisation under the run's seed (parameters and
    multiply-adds at the spec's target input for ``params`` and ``madds``); records it on ``trial``. ValueError
    when the score cannot be computed for this architecture."""
    assert isinstance(run.fidelity, ZeroCost)
    spec, name = ctx.spec, run.fidelity.name
    builder, seed = _describe(trial, ctx, run, recipe_key)
    wall, cpu = time.perf_counter(), time.process_time()
    seeds.seed_everything(seed)
    model = builders.build(builder, ctx.num_classes, **run.arch.knobs)
    if name == "params":
        value: float | None = float(cost.count_params(model))
    elif name == "madds":
        value = float(cost.count_madds(model, tuple(spec.target.input), convention=spec.target.madds_convention))
    else:
        value = zerocost.on_dataset(
            model, ctx.dataset(spec.data.train_split), seed, names=[name], threads=trial_mod.timing_threads(spec)
        )[name]
    if value is None:
        raise ValueError(f"zero-cost score {name} could not be computed for this architecture (see the log)")
    trial.set_user_attr("train_seconds", time.perf_counter() - wall)  # the score's own cost; nothing is trained
    trial.set_user_attr("train_cpu_seconds", time.process_time() - cpu)
    trial.set_user_attr("value", value)
    return value


def time_left(done: Sequence[tuple[float, Rung]], left: Sequence[Run]) -> float:
    """Seconds the runs ``left`` will take: the mean of the runs done at the same fidelity, else the seconds per
    unit of cost of all runs done (which underestimates cheap runs: evaluation does not shrink with them; a
    zero-cost run not seen yet counts 0)."""
    per_cost = sum(s for s, _ in done) / max(sum(f.cost for _, f in done), 1e-12)
    seconds: dict[Rung, list[float]] = {}
    for s, f in done:
        seconds.setdefault(f, []).append(s)
    return sum(
        float(np.mean(seconds[r.fidelity])) if r.fidelity in seconds else per_cost * r.fidelity.cost for r in left
    )


def execute(
    spec_path: str,
    overrides: Sequence[str],
    url: str,
    archs: Sequence[Arch],
    ladder: Sequence[Rung],
    top: Fidelity,
    *,
    seeds: int,
    top_seeds: int,
    progress: bool = True,
    echo: Callable[[str], Any] = print,
) -> pd.DataFrame:
    """Train (or score) every planned run the study does not hold yet; returns the frame of the plan's complete
    runs."""
    specs: dict[Rung, Any] = {
        f: spec_mod.load(spec_path, [*overrides, f"proxy.iterations={f.iterations}", f"proxy.scale={f.scale!r}"])
        for f in ladder
        if isinstance(f, Fidelity)
    }  # each fidelity's spec, validated like `run` would (data, scale)
    specs.update({f: specs[top] for f in ladder if isinstance(f, ZeroCost)})  # scored at the top's scale
    base = specs[top]
    recipe_key = recipe(base)
    runs = plan(archs, ladder, top, seeds, top_seeds)
    artifacts = search.artifacts_dir(base, url)
    contexts: dict[float, Any] = {}  # one context per scale: its data sets are loaded once, here (a bad data
    for f in ladder:  # path is one clear line before anything is stored), and not inside the timed training
        scale = float(specs[f].proxy.scale)
        if scale not in contexts:
            ctx = contexts[scale] = trial_mod.Context(specs[f], artifacts, progress=progress, echo=echo)
            ctx.dataset(ctx.spec.data.train_split)
            ctx.scoring_dataset(ctx.spec.data.val_split)
    study, storage = open_study(base, url)
    search.fail_dead(study, storage, retry=False)  # a run left RUNNING by a dead worker: trained again below
    done = {t.user_attrs.get("match") for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    busy = {t.user_attrs.get("match") for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    todo = [r for r in runs if r.match(recipe_key) not in done | busy]
    skipped = [r for r in runs if r.match(recipe_key) in busy]
    echo(
        f"{study_name(base)}: {len(archs)} architectures × {len(ladder)} fidelities "
        f"({', '.join(f.label for f in ladder)}; top {top.label}) = {len(runs)} runs, "
        f"{len(runs) - len(todo) - len(skipped)} stored, {len(todo)} to train"
        + (f", {len(skipped)} running elsewhere" if skipped else "")
        + f" (storage {url})"
    )
    rate: list[tuple[float, Rung]] = []  # (seconds, fidelity) of the runs trained here, for the time left
    for n, run in enumerate(todo, 1):
        ctx = contexts[float(specs[run.fidelity].proxy.scale)]
        ctx.spec = specs[run.fidelity]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with optimize"
            trial = study.ask()
        trial.set_user_attr("worker", workers.identity())
        t0 = time.perf_counter()
        try:
            miou = (train_run if run.fidelity.trained else score_run)(trial, ctx, run, recipe_key)
        except Exception as exc:  # a failed run (NaN loss, bad knobs): recorded, the others go on
            if search.io_failure(exc) is not None:
                study.tell(trial, state=TrialState.FAIL)
                raise
            trial.set_user_attr(
                "fail_reason", f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
            )
            study.tell(trial, state=TrialState.FAIL)
            echo(f"[{n}/{len(todo)}] {run.arch.label} @ {run.fidelity.label} seed {run.seed_index}: FAILED ({exc})")
            continue
        except BaseException:  # Ctrl-C: this run is trained again next time
            study.tell(trial, state=TrialState.FAIL)
            raise
        study.tell(trial, miou)
        took = time.perf_counter() - t0
        rate.append((took, run.fidelity))
        eta = f" | ~{fmt_duration(time_left(rate, todo[n:]))} left" if n < len(todo) else ""
        shown = f"mIoU {100 * miou:.2f}%" if run.fidelity.trained else f"{run.fidelity.label} {miou:.4g}"
        echo(
            f"[{n}/{len(todo)}] {run.arch.label} @ {run.fidelity.label} seed {run.seed_index}: {shown} in "
            f"{fmt_duration(took)}{eta}"
        )
    return frame(study, runs, recipe_key)


def frame(study: optuna.Study, runs: Sequence[Run], recipe_key: str) -> pd.DataFrame:
    """One row per complete run of the plan: arch, label, fidelity, iterations, scale, seed_index, seed, value
    (what is ranked: mIoU as a fraction, or the zero-cost score), miou (NaN for a zero-cost run), train/CPU/eval
    seconds (a zero-cost run: the seconds of its score), trial number."""
    wanted = {r.match(recipe_key): r for r in runs}
    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        run = wanted.pop(str(t.user_attrs.get("match")), None)  # pop: a run stored twice counts once
        if run is None:
            continue
        a = t.user_attrs
        rows.append(
            {
                "arch": run.arch.key,
                "label": run.arch.label,
                "knobs": json.dumps(run.arch.resolved),
                "fidelity": run.fidelity.label,
                "iterations": run.fidelity.iterations,
                "scale": run.fidelity.scale,
                "seed_index": run.seed_index,
                "seed": a.get("seed"),
                "value": float(a["value"] if "value" in a else a["miou"]),  # runs stored before "value": mIoU
                "miou": float(a["miou"]) if "miou" in a else float("nan"),
                "train_seconds": float(a["train_seconds"]),
                "train_cpu_seconds": float(a["train_cpu_seconds"]),
                "eval_seconds": a.get("eval_seconds"),
                "trial": t.number,
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "arch",
            "label",
            "knobs",
            "fidelity",
            "iterations",
            "scale",
            "seed_index",
            "seed",
            "value",
            "miou",
            "train_seconds",
            "train_cpu_seconds",
            "eval_seconds",
            "trial",
        ],
    )
