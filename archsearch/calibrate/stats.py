"""The calibration's statistics: how well each fidelity ranks the architectures against the top fidelity's mean
(Kendall τ-b and Spearman ρ from SciPy, vectorised over bootstrap draws), with bootstrap intervals, the seed noise
beside the spread between architectures, top-k overlap, and the recommendation."""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import kendalltau, pearsonr, rankdata

from archsearch.calibrate.ladder import Fidelity, Rung
from archsearch.training.seeds import trial_seed

#: Bootstrap resamples of the confidence intervals, and their level.
RESAMPLES = 2000
LEVEL = 0.95
THRESHOLD = 0.6


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's τ-b of each row pair of ``x`` and ``y`` (shape (B, n)); NaN where a row is constant."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a constant row: NaN, said once in the docstring
        return np.asarray(kendalltau(x, y, axis=1).statistic, dtype=float).reshape(len(x))


def spearman_rho(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's ρ (Pearson's r of the average ranks) of each row pair; NaN where a row is constant. (SciPy's
    ``spearmanr`` reads a 2-D input as variables, not as pairs of rows: its definition, row by row, here.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rx, ry = rankdata(x, axis=1), rankdata(y, axis=1)
        return np.asarray(pearsonr(rx, ry, axis=1).statistic, dtype=float).reshape(len(x))


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
    """(Hand-written: ``scipy.stats.bootstrap`` resamples one level; this one resamples architectures and, within
    each, its seeds.) τ and ρ of ``resamples`` bootstrap samples of :func:`agreement`: architectures drawn with
    replacement (an architecture drawn twice is the same point twice, tied in both rankings); at the cheap
    fidelity one seed of each, at the top the mean of its seeds drawn with replacement. ``cheap[i]`` and
    ``top[i]`` are architecture i's mIoUs, one per seed."""
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
    lo, hi = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
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
    ladder: Sequence[Rung],
    top: Fidelity,
    *,
    k: int = 3,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> pd.DataFrame:
    """Per fidelity (columns of the calibration table): runs, architectures compared, ``tau``/``rho`` of one
    run per architecture against the top fidelity's means (:func:`agreement`) with ``*_lo``/``*_hi`` bootstrap
    intervals (:func:`bootstrap`), ``seed_noise``
    (pooled within-architecture std of the ranked value: mIoU, or a zero-cost score in its own units),
    ``spread`` (std of the architecture means), ``median_gap``
    (between neighbouring means), ``topk`` overlap (fraction of k), ``wall_s``/``cpu_s`` training (or scoring)
    seconds in total and ``per_run_s``; ``trained`` False for a zero-cost fidelity. The top fidelity's own row has
    τ = ρ = 1 and no interval. ``runs`` holds one row per run: arch, fidelity (label), value, train_seconds,
    train_cpu_seconds."""
    by = {f: runs[runs["fidelity"] == f.label] for f in ladder}
    top_runs = by[top]
    top_values = top_runs.groupby("arch")["value"].apply(list)
    rows = []
    for f in ladder:
        sub = by[f]
        values = sub.groupby("arch")["value"].apply(list)
        common = sorted(set(values.index) & set(top_values.index))
        means = values.map(np.mean)
        sorted_means = np.sort(means.to_numpy())
        row: dict[str, Any] = {
            "fidelity": f.label,
            "iterations": f.iterations,
            "scale": f.scale,
            "cost": f.cost / top.cost,
            "top": f == top,
            "trained": f.trained,
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
    """The cheapest cheap trained fidelity whose τ lower bound is at least ``threshold`` (None: none clears it)."""
    ok = table[(~table["top"]) & table["trained"] & (table["tau_lo"] >= threshold)]
    if ok.empty:
        return None
    return str(ok.sort_values(["cost", "wall_s"]).iloc[0]["fidelity"])


def recommendation_line(table: pd.DataFrame, threshold: float, top: Fidelity) -> str:
    """The recommended proxy (or that none clears), and the zero-cost scores that clear the threshold too."""
    return _proxy_line(table, threshold, top) + _zero_cost_line(table, threshold)


def _zero_cost_line(table: pd.DataFrame, threshold: float) -> str:
    if "trained" not in table or table["trained"].all():
        return ""
    zc = table[~table["trained"]]
    ok = zc[zc["tau_lo"] >= threshold]
    if ok.empty:
        return f" No zero-cost score clears it either ({', '.join(zc['fidelity'])})."
    names = ", ".join(f"{r['fidelity']} (τ lower bound {r['tau_lo']:.2f})" for _, r in ok.iterrows())
    return (
        f" Zero-cost scores that clear it without training: {names} — a screen for search.fidelity.zero_cost; "
        "a trained proxy that does not beat them adds cost, not information."
    )


def _proxy_line(table: pd.DataFrame, threshold: float, top: Fidelity) -> str:
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
