"""Calibrate the proxy: does a cheap training rank architectures the way a longer one does?

``archsearch calibrate SPEC`` trains the same architectures (the spec's rows, or K distinct configurations
sampled from its space with ``search.seed``) at a ladder of fidelities — a fidelity is (iterations, proxy scale),
written ``ITERxSCALE`` such as ``150x0.5`` — with several seeds at each cheap fidelity, and compares each cheap
fidelity's ranking of the architectures with the top (most expensive) fidelity's: Kendall τ and Spearman ρ
between one cheap run per architecture — what a search with ``proxy.seeds`` 1 ranks on — and the mean of the
top fidelity's runs — the best estimate of real training's ranking —, expected over the cheap seeds, with
bootstrap 95% confidence intervals (architectures resampled; a cheap seed drawn and the top seeds resampled
within each); the seed noise beside the spread between architectures, top-k overlap and the training time. It
recommends the cheapest fidelity whose τ lower bound clears a threshold.

Every (architecture, fidelity, seed) training is one trial of the Optuna study ``<spec name>.calibrate`` in the
spec's storage, trained by the trial pipeline's own pieces (:mod:`archsearch.trial`: seeds, data context,
``_train``; :func:`archsearch.metrics.evaluate` at label resolution). A run is found again by what makes it
comparable — architecture, fidelity, seed index and the rest of the training recipe — so a second invocation
trains only what is missing, also after the ladder or the architectures changed. Nothing is timed for latency.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from archsearch.training import seeds
from archsearch.util.errors import ArchsearchError
from archsearch.util.formatting import fmt_duration

#: Bootstrap resamples of the confidence intervals, and their level.
RESAMPLES = 2000
LEVEL = 0.95
THRESHOLD = 0.6
STUDY_SUFFIX = ".calibrate"


class CalibrationError(ArchsearchError):
    """A bad ``calibrate`` option (one line, exit 2)."""


# ---------------------------------------------------------------------------------------------------------
# Fidelities
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fidelity:
    """A proxy budget: ``iterations`` of training at ``scale`` × the data's native resolution."""

    iterations: int
    scale: float

    @property
    def cost(self) -> float:
        """Relative training cost: iterations × pixels per image (∝ scale²)."""
        return self.iterations * self.scale**2

    @property
    def label(self) -> str:
        return f"{self.iterations}x{self.scale:g}"


def parse_fidelity(text: str, *, option: str = "--fidelities") -> Fidelity:
    """``ITERxSCALE`` (``150x0.5``): a positive integer of iterations and a scale in (0, 1]."""
    parts = text.strip().lower().split("x")
    try:
        if len(parts) != 2:
            raise ValueError
        iterations, scale = int(parts[0]), float(parts[1])
    except ValueError:
        raise CalibrationError(
            f"{option}: {text!r} is not a fidelity; expected ITERxSCALE such as 150x0.5 (iterations x proxy scale)"
        ) from None
    if iterations < 1 or not 0 < scale <= 1:
        raise CalibrationError(f"{option}: {text!r}: allowed: iterations ≥ 1 and a scale in (0, 1]")
    return Fidelity(iterations, scale)


def parse_ladder(text: str) -> list[Fidelity]:
    """A comma-separated list of fidelities, each listed once."""
    ladder = [parse_fidelity(t) for t in text.split(",") if t.strip()]
    labels = [f.label for f in ladder]
    for label in labels:
        if labels.count(label) > 1:
            raise CalibrationError(f"--fidelities: {label} is listed twice")
    return ladder


def default_ladder(iterations: int, scale: float) -> list[Fidelity]:
    """The spec's proxy as top, with iterations/4 and /2 at its scale and iterations/2 at half its scale."""
    candidates = [
        Fidelity(iterations // 4, scale),
        Fidelity(iterations // 2, scale / 2),
        Fidelity(iterations // 2, scale),
        Fidelity(iterations, scale),
    ]
    out: list[Fidelity] = []
    for f in candidates:
        if f.iterations >= 1 and f not in out:
            out.append(f)
    return out


def resolve_ladder(ladder: Sequence[Fidelity], top: Fidelity | None) -> tuple[list[Fidelity], Fidelity]:
    """The ladder sorted by cost (``top`` added when missing) and its top: the single most expensive fidelity."""
    rungs = list(ladder)
    if top is not None and top not in rungs:
        rungs.append(top)
    if len(rungs) < 2:
        raise CalibrationError("--fidelities: give at least two fidelities (cheap ones and the top one)")
    rungs.sort(key=lambda f: (f.cost, f.iterations))
    if top is None:
        top = rungs[-1]
        ties = [f.label for f in rungs[:-1] if math.isclose(f.cost, top.cost)]
        if ties:
            raise CalibrationError(
                f"--fidelities: {', '.join(ties)} and {top.label} cost the same (iterations × "
                "scale²); say which is the top with --top"
            )
    else:
        dearer = [f.label for f in rungs if f != top and f.cost >= top.cost]
        if dearer:
            raise CalibrationError(
                f"--top {top.label} is not the most expensive fidelity: {', '.join(dearer)} "
                f"cost as much or more (iterations × scale²); allowed: the fidelity with the "
                "largest cost"
            )
    return rungs, top


# ---------------------------------------------------------------------------------------------------------
# Architectures
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arch:
    """One architecture of the calibration: its Optuna parameters, build knobs, resolved knobs and label."""

    key: str
    label: str
    params: dict[str, Any]
    knobs: dict[str, Any]
    resolved: dict[str, Any]
    builder: str = ""  # its builder (a space or rows may range over several)


def _arch_key(builder: str, resolved: dict[str, Any]) -> str:
    blob = json.dumps({"b": builder, "k": resolved}, sort_keys=True, default=list)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _label(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={str(v).replace(' ', '')}" for k, v in params.items())


def _arch(spec: Any, params: dict[str, Any]) -> Arch:
    from archsearch import builders
    from archsearch.search import space

    builder, knobs, row = space.sample_config(optuna.trial.FixedTrial(params), spec)
    resolved = builders.get(builder).resolve(knobs).as_dict()
    label = spec.rows[row]["label"] if row is not None else _label(params)
    return Arch(_arch_key(builder, resolved), label, dict(params), knobs, resolved, builder)


def architectures(spec: Any, count: int) -> list[Arch]:
    """The spec's rows, else ``count`` distinct configurations of its space drawn with ``search.seed`` (all of
    a finite space that has fewer)."""
    from archsearch.search import space
    from archsearch.training.seeds import trial_seed

    if spec.rows:
        archs = [_arch(spec, {space.ROW_PARAM: i}) for i in range(len(spec.rows))]
    else:
        seed = trial_seed(spec.search.seed, "calibrate")
        configs = space.configurations(spec)
        if configs is not None:
            picked = random.Random(seed).sample(configs, min(count, len(configs)))
        else:  # a continuous space: Optuna's random sampler over the declared distributions, until distinct
            study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
            dists = space.distributions(spec)
            picked, keys = [], set()
            for _ in range(100 * count):
                params = study.ask(dists).params
                if space.config_key(params) not in keys:
                    keys.add(space.config_key(params))
                    picked.append(params)
                if len(picked) == count:
                    break
        archs = []
        for params in picked:  # two parameter sets may resolve to one architecture: keep it once
            arch = _arch(spec, params)
            if arch.key not in {a.key for a in archs}:
                archs.append(arch)
    if len(archs) < 2:
        raise CalibrationError(
            f"{spec.path}: {len(archs)} architecture; a ranking needs at least 2 (rows, or a "
            "space with 2 or more configurations)"
        )
    return archs


# ---------------------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One planned training: an architecture at a fidelity with its seed index."""

    arch: Arch
    fidelity: Fidelity
    seed_index: int

    def match(self, recipe: str) -> str:
        return f"{self.arch.key}|{self.fidelity.label}|{self.seed_index}|{recipe}"


def recipe(spec: Any) -> str:
    """What else makes two trainings comparable: the builder and the budget without iterations, scale, seeds."""
    from archsearch.search.trial import budget

    b = budget(spec)
    proxy = {k: v for k, v in b["proxy"].items() if k not in ("iterations", "scale", "seeds")}
    what = {"builder": spec.builder, "classes": spec.num_classes, "proxy": proxy, "data": b["data"]}
    if spec.multi:  # a space over several builders: each one's fixed knobs (absent for one builder, as before)
        what["builders"] = {name: space.fixed for name, space in spec.spaces().items()}
    blob = json.dumps(what, sort_keys=True, default=list)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def plan(archs: Sequence[Arch], ladder: Sequence[Fidelity], top: Fidelity, seeds: int, top_seeds: int) -> list[Run]:
    """Every training: the top fidelity first (every comparison needs it), then the others from the cheapest."""
    runs = []
    for f in [top, *(f for f in ladder if f != top)]:
        for i in range(top_seeds if f == top else seeds):
            runs += [Run(a, f, i) for a in archs]
    return runs


def study_name(spec: Any) -> str:
    return f"{spec.name}{STUDY_SUFFIX}"


def open_study(spec: Any, url: str) -> tuple[optuna.Study, RDBStorage]:
    """The calibration study beside ``spec``'s run, and its storage (the run's: its creation lock and errors)."""
    from archsearch import search

    storage = search.open_storage(url)
    study = optuna.create_study(
        study_name=study_name(spec),
        storage=storage,
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),
        load_if_exists=True,
    )
    return study, storage


def train_run(trial: optuna.Trial, ctx: Any, run: Run, recipe_key: str) -> float:
    """Train and score one run on ``ctx`` (its spec at the run's fidelity); records it on ``trial``."""
    from archsearch import builders
    from archsearch.search import trial as trial_mod
    from archsearch.training import scoring

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
    seeds.seed_everything(seed)
    model = builders.build(builder, ctx.num_classes, **run.arch.knobs)
    seeds.seed_everything(seed)
    cpu0 = time.process_time()
    trained, wall = trial_mod._train(model, run.arch.resolved, ctx, trial, seed, builder)  # noqa: SLF001 — the trial's training
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
    }.items():
        trial.set_user_attr(k, v)
    return float(scores.miou)


def time_left(done: Sequence[tuple[float, Fidelity]], left: Sequence[Run]) -> float:
    """Seconds the runs ``left`` will take: the mean of the runs done at the same fidelity, else the seconds per
    unit of cost of all runs done (which underestimates cheap runs: evaluation does not shrink with them)."""
    per_cost = sum(s for s, _ in done) / max(sum(f.cost for _, f in done), 1e-12)
    seconds: dict[Fidelity, list[float]] = {}
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
    ladder: Sequence[Fidelity],
    top: Fidelity,
    *,
    seeds: int,
    top_seeds: int,
    progress: bool = True,
    echo: Callable[[str], Any] = print,
) -> pd.DataFrame:
    """Train every planned run the study does not hold yet; returns the frame of the plan's complete runs."""
    from archsearch import search
    from archsearch import spec as spec_mod
    from archsearch.search import trial as trial_mod
    from archsearch.search import workers

    specs = {
        f: spec_mod.load(spec_path, [*overrides, f"proxy.iterations={f.iterations}", f"proxy.scale={f.scale!r}"])
        for f in ladder
    }  # each fidelity's spec, validated like `run` would (data, scale)
    base = specs[top]
    recipe_key = recipe(base)
    runs = plan(archs, ladder, top, seeds, top_seeds)
    artifacts = search.artifacts_dir(base, url)
    contexts: dict[float, Any] = {}  # one context per scale: its data sets are loaded once, here (a bad data
    for f in ladder:  # path is one clear line before anything is stored), and not inside the timed training
        if f.scale not in contexts:
            ctx = contexts[f.scale] = trial_mod.Context(specs[f], artifacts, progress=progress, echo=echo)
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
    rate: list[tuple[float, Fidelity]] = []  # (seconds, fidelity) of the runs trained here, for the time left
    for n, run in enumerate(todo, 1):
        ctx = contexts[run.fidelity.scale]
        ctx.spec = specs[run.fidelity]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with optimize"
            trial = study.ask()
        trial.set_user_attr("worker", workers.identity())
        t0 = time.perf_counter()
        try:
            miou = train_run(trial, ctx, run, recipe_key)
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
        echo(
            f"[{n}/{len(todo)}] {run.arch.label} @ {run.fidelity.label} seed {run.seed_index}: mIoU "
            f"{100 * miou:.2f}% in {fmt_duration(took)}{eta}"
        )
    return frame(study, runs, recipe_key)


def frame(study: optuna.Study, runs: Sequence[Run], recipe_key: str) -> pd.DataFrame:
    """One row per complete run of the plan: arch, label, fidelity, iterations, scale, seed_index, seed, miou
    (fraction), train/CPU/eval seconds, trial number."""
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
                "miou": float(a["miou"]),
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
            "miou",
            "train_seconds",
            "train_cpu_seconds",
            "eval_seconds",
            "trial",
        ],
    )


# ---------------------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------------------


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's τ-b of each row pair of ``x`` and ``y`` (shape (B, n)); NaN where a row is constant."""
    sx = np.sign(x[:, :, None] - x[:, None, :])
    sy = np.sign(y[:, :, None] - y[:, None, :])
    num = (sx * sy).sum(axis=(1, 2))
    den = np.sqrt((sx * sx).sum(axis=(1, 2)) * (sy * sy).sum(axis=(1, 2)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def spearman_rho(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's ρ (Pearson's r of the average ranks) of each row pair; NaN where a row is constant."""
    from scipy.stats import rankdata

    rx = rankdata(x, axis=1)
    ry = rankdata(y, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    den = np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
    num = (rx * ry).sum(axis=1)
    return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _padded(values: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Architecture i's seeds as row i of a NaN-padded table, and the number of seeds per row."""
    width = max(len(v) for v in values)
    table = np.array([list(v) + [np.nan] * (width - len(v)) for v in values], dtype=float)
    return table, np.array([len(v) for v in values])


def one_seed_each(values: Sequence[Sequence[float]], draws: int, rng: np.random.Generator) -> np.ndarray:
    """``draws`` rows of one seed's mIoU per architecture, each seed drawn at random: what a search that trains
    one run per architecture (``proxy.seeds`` 1) sees."""
    table, counts = _padded(values)
    which = (rng.random(size=(draws, len(values))) * counts).astype(int)
    return table[np.arange(len(values)), which]


def resampled_means(values: Sequence[Sequence[float]], draws: int, rng: np.random.Generator) -> np.ndarray:
    """``draws`` rows of the per-architecture mean of its k seeds drawn k times with replacement (the
    uncertainty of a mean of few runs)."""
    table, counts = _padded(values)
    width = table.shape[1]
    which = (rng.random(size=(draws, len(values), width)) * counts[None, :, None]).astype(int)
    picked = table[np.arange(len(values))[None, :, None], which]
    used = np.arange(width)[None, None, :] < counts[None, :, None]  # k draws for an architecture of k seeds
    return np.where(used, picked, 0.0).sum(axis=2) / counts[None, :]


def agreement(
    cheap: Sequence[Sequence[float]], top: Sequence[Sequence[float]], draws: int, seed: int
) -> tuple[float, float]:
    """The expected τ and ρ between one cheap run per architecture (a seed of each: every combination when
    there are at most ``draws`` of them, else ``draws`` random ones) and the top fidelity's per-architecture
    means. ``cheap[i]`` and ``top[i]`` are architecture i's mIoUs, one per seed."""
    y = np.array([float(np.mean(v)) for v in top])
    combos = math.prod(len(v) for v in cheap)
    if combos <= draws:
        x = np.array(
            [
                [c[i] for c, i in zip(cheap, pick, strict=True)]
                for pick in itertools.product(*(range(len(v)) for v in cheap))
            ]
        )
    else:
        x = one_seed_each(cheap, draws, np.random.default_rng(seed))
    ys = np.broadcast_to(y, x.shape)
    return float(np.nanmean(kendall_tau_b(x, ys))), float(np.nanmean(spearman_rho(x, ys)))


def bootstrap(
    cheap: Sequence[Sequence[float]], top: Sequence[Sequence[float]], resamples: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """τ and ρ of ``resamples`` bootstrap samples of :func:`agreement`: architectures drawn with replacement (an
    architecture drawn twice is the same point twice, tied in both rankings); at the cheap fidelity one seed of
    each, at the top the mean of its seeds drawn with replacement. ``cheap[i]`` and ``top[i]`` are
    architecture i's mIoUs, one per seed."""
    rng = np.random.default_rng(seed)
    n = len(cheap)
    idx = rng.integers(0, n, size=(resamples, n))
    x = np.take_along_axis(one_seed_each(cheap, resamples, rng), idx, axis=1)
    y = np.take_along_axis(resampled_means(top, resamples, rng), idx, axis=1)
    return kendall_tau_b(x, y), spearman_rho(x, y)


def interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The percentile interval of the finite samples (NaN, NaN when none)."""
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(finite, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def pooled_std(groups: Sequence[Sequence[float]]) -> float:
    """Pooled within-group sample standard deviation over the groups with 2 or more values (NaN: none)."""
    dof = sum(len(g) - 1 for g in groups if len(g) > 1)
    if dof == 0:
        return math.nan
    ss = sum(float(np.sum((np.asarray(g) - np.mean(g)) ** 2)) for g in groups if len(g) > 1)
    return math.sqrt(ss / dof)


def top_k(means: pd.Series, k: int) -> set[str]:
    """The ``k`` best architectures by mean (ties broken by name, so the set is stable)."""
    order = sorted(means.items(), key=lambda kv: (-kv[1], kv[0]))
    return {str(a) for a, _ in order[:k]}


def statistics_table(
    runs: pd.DataFrame,
    ladder: Sequence[Fidelity],
    top: Fidelity,
    *,
    k: int = 3,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> pd.DataFrame:
    """Per fidelity (columns of the calibration table): runs, architectures compared, ``tau``/``rho`` of one
    run per architecture against the top fidelity's means (:func:`agreement`) with ``*_lo``/``*_hi`` bootstrap
    intervals (:func:`bootstrap`), ``seed_noise``
    (pooled within-architecture std of mIoU), ``spread`` (std of the architecture means), ``median_gap``
    (between neighbouring means), ``topk`` overlap (fraction of k), ``wall_s``/``cpu_s`` training seconds in
    total and ``per_run_s``. The top fidelity's own row has τ = ρ = 1 and no interval."""
    from archsearch.training.seeds import trial_seed

    by = {f: runs[runs["fidelity"] == f.label] for f in ladder}
    top_runs = by[top]
    top_values = top_runs.groupby("arch")["miou"].apply(list)
    rows = []
    for f in ladder:
        sub = by[f]
        values = sub.groupby("arch")["miou"].apply(list)
        common = sorted(set(values.index) & set(top_values.index))
        means = values.map(np.mean)
        sorted_means = np.sort(means.to_numpy())
        row: dict[str, Any] = {
            "fidelity": f.label,
            "iterations": f.iterations,
            "scale": f.scale,
            "cost": f.cost / top.cost,
            "top": f == top,
            "runs": len(sub),
            "archs": len(common),
            "seed_noise": pooled_std(list(values)),
            "spread": float(np.std(means, ddof=1)) if len(means) > 1 else math.nan,
            "median_gap": float(np.median(np.diff(sorted_means))) if len(means) > 1 else math.nan,
            "wall_s": float(sub["train_seconds"].sum()),
            "cpu_s": float(sub["train_cpu_seconds"].sum()),
            "per_run_s": float(sub["train_seconds"].mean()) if len(sub) else math.nan,
        }
        if f == top:
            row.update(tau=1.0, rho=1.0, tau_lo=math.nan, tau_hi=math.nan, rho_lo=math.nan, rho_hi=math.nan, topk=1.0)
        elif len(common) >= 2:
            cheap = [values[a] for a in common]
            reference = [top_values[a] for a in common]
            tau, rho = agreement(cheap, reference, resamples, trial_seed(seed, "calibrate agreement", f.label))
            taus, rhos = bootstrap(cheap, reference, resamples, trial_seed(seed, "calibrate bootstrap", f.label))
            kk = min(k, len(common))
            row.update(
                tau=tau,
                rho=rho,
                tau_lo=interval(taus)[0],
                tau_hi=interval(taus)[1],
                rho_lo=interval(rhos)[0],
                rho_hi=interval(rhos)[1],
                topk=len(top_k(means[common], kk) & top_k(top_values[common].map(np.mean), kk)) / kk,
            )
        else:
            row.update(
                tau=math.nan,
                rho=math.nan,
                tau_lo=math.nan,
                tau_hi=math.nan,
                rho_lo=math.nan,
                rho_hi=math.nan,
                topk=math.nan,
            )
        rows.append(row)
    return pd.DataFrame(rows)


def recommend(table: pd.DataFrame, threshold: float = THRESHOLD) -> str | None:
    """The cheapest cheap fidelity whose τ lower bound is at least ``threshold`` (None: none clears it)."""
    ok = table[(~table["top"]) & (table["tau_lo"] >= threshold)]
    if ok.empty:
        return None
    return str(ok.sort_values(["cost", "wall_s"]).iloc[0]["fidelity"])


def recommendation_line(table: pd.DataFrame, threshold: float, top: Fidelity) -> str:
    best = recommend(table, threshold)
    if best is None:
        return (
            f"No cheap fidelity clears τ lower bound ≥ {threshold:g} against {top.label}: use {top.label} "
            "(or more seeds per trial, proxy.seeds) — a cheaper proxy would rank architectures by noise."
        )
    r = table[table["fidelity"] == best].iloc[0]
    it, scale = best.split("x")
    return (
        f"Recommended proxy: {best} (proxy.iterations={it}, proxy.scale={scale}): the cheapest fidelity whose "
        f"τ 95% lower bound ({r['tau_lo']:.2f}) clears {threshold:g}; {r['cost']:.3g}× the cost of {top.label}."
    )


# ---------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------

HEADERS = (
    "fidelity",
    "cost×top",
    "runs",
    "archs",
    "Kendall τ [95% CI]",
    "Spearman ρ [95% CI]",
    "seed noise",
    "spread",
    "median gap",
    "top-k",
    "train wall",
    "train CPU",
    "wall/run",
)


def _ci(v: float, lo: float, hi: float) -> str:
    if math.isnan(v):
        return "—"
    return f"{v:.2f}" if math.isnan(lo) else f"{v:.2f} [{lo:.2f}, {hi:.2f}]"


def _pts(v: float) -> str:
    return "—" if math.isnan(v) else f"{100 * v:.2f}"


def table_rows(table: pd.DataFrame, k: int) -> list[list[str]]:
    rows = []
    for _, r in table.iterrows():
        topk = "—" if math.isnan(r["topk"]) else f"{round(r['topk'] * min(k, r['archs']))}/{min(k, r['archs'])}"
        rows.append(
            [
                r["fidelity"] + (" (top)" if r["top"] else ""),
                f"{r['cost']:.3g}",
                str(r["runs"]),
                str(r["archs"]),
                _ci(r["tau"], r["tau_lo"], r["tau_hi"]),
                _ci(r["rho"], r["rho_lo"], r["rho_hi"]),
                _pts(r["seed_noise"]),
                _pts(r["spread"]),
                _pts(r["median_gap"]),
                topk,
                fmt_duration(r["wall_s"]),
                fmt_duration(r["cpu_s"]),
                "—" if math.isnan(r["per_run_s"]) else f"{r['per_run_s']:.1f} s",
            ]
        )
    return rows


def markdown(
    name: str,
    table: pd.DataFrame,
    runs: pd.DataFrame,
    archs: Sequence[Arch],
    ladder: Sequence[Fidelity],
    top: Fidelity,
    *,
    k: int,
    threshold: float,
    data: str,
) -> str:
    head = "| " + " | ".join(HEADERS) + " |\n|" + "---|" * len(HEADERS) + "\n"
    body = "".join("| " + " | ".join(r) + " |\n" for r in table_rows(table, k))
    means = runs.groupby(["arch", "fidelity"])["miou"].mean()
    arch_lines = (
        "| # | architecture | " + " | ".join(f.label for f in ladder) + " |\n|" + "---|" * (len(ladder) + 2) + "\n"
    )
    for i, a in enumerate(archs, 1):
        cells = [f"{100 * means[(a.key, f.label)]:.2f}" if (a.key, f.label) in means.index else "—" for f in ladder]
        arch_lines += f"| A{i} | {a.label} | " + " | ".join(cells) + " |\n"
    return (
        f"# Proxy calibration of {name} against {top.label}\n\n{data}\n\n"
        "τ, ρ: rank correlation between one run per architecture at the fidelity (what a search with proxy.seeds "
        "1 ranks on; expected over its seeds) and the mean mIoU of the top fidelity's runs; bootstrap 95% interval "
        f"({RESAMPLES} resamples of architectures; per resample a seed of each at the fidelity, and its top seeds "
        "resampled with replacement and averaged). Seed noise: pooled "
        "within-architecture standard deviation; spread: standard deviation of the architecture means; median "
        "gap: between neighbouring architecture means (all in mIoU points). Top-k: shared members of the best "
        f"{k}. Time: training only (wall and process CPU seconds).\n\n{head}{body}\n"
        f"{recommendation_line(table, threshold, top)}\n\n## Mean mIoU (%) per architecture\n\n{arch_lines}"
    )


def plot(
    path: Path,
    table: pd.DataFrame,
    runs: pd.DataFrame,
    archs: Sequence[Arch],
    ladder: Sequence[Fidelity],
    top: Fidelity,
) -> None:
    """Rank at each cheap fidelity against rank at the top fidelity (1 = best), one panel per cheap fidelity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from archsearch.util import files

    cheap = [f for f in ladder if f != top]
    means = runs.groupby(["fidelity", "arch"])["miou"].mean()
    number = {a.key: i for i, a in enumerate(archs, 1)}
    fig, axes = plt.subplots(1, len(cheap), figsize=(3.2 * len(cheap), 3.4), squeeze=False)
    top_rank = (
        means[top.label].rank(ascending=False)
        if top.label in means.index.get_level_values(0)
        else pd.Series(dtype=float)
    )
    for ax, f in zip(axes[0], cheap, strict=False):
        rank = (
            means[f.label].rank(ascending=False)
            if f.label in means.index.get_level_values(0)
            else pd.Series(dtype=float)
        )
        common = sorted(set(rank.index) & set(top_rank.index), key=lambda a: number.get(a, 0))
        xs, ys = [top_rank[a] for a in common], [rank[a] for a in common]
        n = max(len(archs), 2)
        ax.plot([1, n], [1, n], color="0.8", lw=1, zorder=0)
        ax.scatter(xs, ys, s=28)
        for a, x, y in zip(common, xs, ys, strict=False):
            ax.annotate(f"A{number.get(a, '?')}", (x, y), xytext=(3, 3), textcoords="offset points", fontsize=8)
        r = table[table["fidelity"] == f.label].iloc[0]
        ax.set_title(f"{f.label}: τ {r['tau']:.2f}" if not math.isnan(r["tau"]) else f.label, fontsize=9)
        ax.set_xlabel(f"rank at {top.label}")
        ax.set_ylabel(f"rank at {f.label}")
        ax.set_xlim(0.5, n + 0.5)
        ax.set_ylim(n + 0.5, 0.5)
    fig.tight_layout()
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_outputs(
    out: Path,
    name: str,
    table: pd.DataFrame,
    runs: pd.DataFrame,
    archs: Sequence[Arch],
    ladder: Sequence[Fidelity],
    top: Fidelity,
    *,
    k: int,
    threshold: float,
    data: str,
) -> dict[str, Path]:
    from archsearch.util import files

    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "calibration.csv", "md": out / "calibration.md", "png": out / "calibration.png"}
    numbers = {a.key: f"A{i}" for i, a in enumerate(archs, 1)}
    csv = runs.assign(miou_pct=100 * runs["miou"], arch_no=runs["arch"].map(numbers))
    files.write_text(paths["csv"], csv.to_csv(index=False))
    files.write_text(paths["md"], markdown(name, table, runs, archs, ladder, top, k=k, threshold=threshold, data=data))
    plot(paths["png"], table, runs, archs, ladder, top)
    return paths


# ---------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------


def command(
    spec_path: str,
    overrides: Sequence[str],
    *,
    storage: str | None = None,
    out: str | None = None,
    fidelities: str | None = None,
    top: str | None = None,
    archs: int = 6,
    seeds: int = 2,
    top_seeds: int = 1,
    k: int = 3,
    threshold: float = THRESHOLD,
    progress: bool = True,
    echo: Callable[[str], Any] = print,
) -> dict[str, Path]:
    """``archsearch calibrate``: check the options, train what is missing, print and write the calibration."""
    from archsearch import search
    from archsearch import spec as spec_mod
    from archsearch.report import report

    if seeds < 2:
        raise CalibrationError(f"--seeds {seeds}; allowed: ≥ 2 (seed noise needs two seeds per cheap fidelity)")
    if top_seeds < 1 or archs < 2 or k < 1:
        raise CalibrationError("allowed: --top-seeds ≥ 1, --archs ≥ 2, --top-k ≥ 1")
    if not -1 < threshold <= 1:
        raise CalibrationError(f"--threshold {threshold:g}; allowed: a Kendall τ in (-1, 1]")
    spec = spec_mod.load(spec_path, overrides)
    top_f = parse_fidelity(top, option="--top") if top else None
    ladder = parse_ladder(fidelities) if fidelities else default_ladder(spec.proxy.iterations, spec.proxy.scale)
    ladder, top_f = resolve_ladder(ladder, top_f)
    chosen = architectures(spec, archs)
    if k > len(chosen):
        raise CalibrationError(f"--top-k {k}; allowed: at most the {len(chosen)} architectures")
    url = search.storage_url(spec, storage)
    out_dir = Path(out) if out else search.artifacts_dir(spec, url) / "calibration"
    from archsearch.util.files import check_writable_dir

    check_writable_dir(out_dir, f"--out {out_dir}" if out else f"output folder {out_dir}")
    runs = execute(
        spec_path, overrides, url, chosen, ladder, top_f, seeds=seeds, top_seeds=top_seeds, progress=progress, echo=echo
    )
    table = statistics_table(runs, ladder, top_f, k=k, seed=spec.search.seed)
    d = spec.data
    data = (
        f"Data: {d.name} ({d.train_split} → {d.val_split}{', root ' + str(d.root) if d.root else ''}); builder "
        f"{spec.builder or ', '.join(sorted({a.builder for a in chosen}))}, batch {spec.proxy.batch}, "
        f"lr {spec.proxy.lr:g}; {len(chosen)} architectures; {seeds} seeds at each cheap fidelity, {top_seeds} at "
        f"the top; study {study_name(spec)} in {url}."
    )
    echo(
        report.text_table(
            pd.DataFrame(table_rows(table, k), columns=HEADERS),
            [False, True, True, True, False, False, True, True, True, False, True, True, True],
        )
    )
    echo("seed noise, spread, median gap: mIoU points; train wall/CPU: training only")
    echo(recommendation_line(table, threshold, top_f))
    paths = write_outputs(out_dir, spec.name, table, runs, chosen, ladder, top_f, k=k, threshold=threshold, data=data)
    echo("wrote " + ", ".join(str(p) for p in paths.values()))
    return paths
