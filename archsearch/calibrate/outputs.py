"""The calibration's outputs: the printed table's rows, the Markdown report, the rank-against-rank PNG, the CSV of
every run and the machine-readable result (``calibration.json``, :class:`archsearch.report.trust.Calibration`) that
a spec's ``calibration:`` names."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from archsearch.calibrate.ladder import Arch, Fidelity, Rung
from archsearch.calibrate.stats import RESAMPLES, recommend, recommendation_line
from archsearch.report import trust
from archsearch.util import files
from archsearch.util.formatting import fmt_duration, markdown_table

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


def _pts(v: float, trained: bool = True) -> str:
    """mIoU points of a trained fidelity; a zero-cost score's own units (3 significant digits)."""
    if math.isnan(v):
        return "—"
    return f"{100 * v:.2f}" if trained else f"{v:.3g}"


def table_rows(table: pd.DataFrame, k: int) -> list[list[str]]:
    rows = []
    for _, r in table.iterrows():
        trained = bool(r.get("trained", True))
        topk = "—" if math.isnan(r["topk"]) else f"{round(r['topk'] * min(k, r['archs']))}/{min(k, r['archs'])}"
        rows.append(
            [
                r["fidelity"] + (" (top)" if r["top"] else ""),
                f"{r['cost']:.3g}",
                str(r["runs"]),
                str(r["archs"]),
                _ci(r["tau"], r["tau_lo"], r["tau_hi"]),
                _ci(r["rho"], r["rho_lo"], r["rho_hi"]),
                _pts(r["seed_noise"], trained),
                _pts(r["spread"], trained),
                _pts(r["median_gap"], trained),
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
    ladder: Sequence[Rung],
    top: Fidelity,
    *,
    k: int,
    threshold: float,
    data: str,
) -> str:
    stats = markdown_table(pd.DataFrame(table_rows(table, k), columns=list(HEADERS)))
    means = runs.groupby(["arch", "fidelity"])["value"].mean()
    per_arch = pd.DataFrame(
        [
            [f"A{i}", a.label]
            + [
                (f"{100 * means[(a.key, f.label)]:.2f}" if f.trained else f"{means[(a.key, f.label)]:.4g}")
                if (a.key, f.label) in means.index
                else "—"
                for f in ladder
            ]
            for i, a in enumerate(archs, 1)
        ],
        columns=["#", "architecture", *(f.label for f in ladder)],
    )
    arch_lines = markdown_table(per_arch)
    return (
        f"# Proxy calibration of {name} against {top.label}\n\n{data}\n\n"
        "τ, ρ: rank correlation between one run per architecture at the fidelity (what a search with proxy.seeds "
        "1 ranks on; expected over its seeds) and the mean mIoU of the top fidelity's runs; bootstrap 95% interval "
        f"({RESAMPLES} resamples of architectures; per resample a seed of each at the fidelity, and its top seeds "
        "resampled with replacement and averaged). Seed noise: pooled "
        "within-architecture standard deviation; spread: standard deviation of the architecture means; median "
        "gap: between neighbouring architecture means (all in mIoU points). Top-k: shared members of the best "
        f"{k}. Time: training only (wall and process CPU seconds). A zero-cost fidelity (zc:NAME) trains nothing: "
        "its runs are the architecture's score at initialisation, one per seed (params and madds do not depend on "
        "it: seed noise 0); its noise, spread and gap are in the score's own units, its time is the scoring's."
        f"\n\n{stats}\n"
        f"{recommendation_line(table, threshold, top)}\n\n## Mean mIoU (%) per architecture (zero-cost: the mean "
        f"score)\n\n{arch_lines}"
    )


def plot(
    path: Path,
    table: pd.DataFrame,
    runs: pd.DataFrame,
    archs: Sequence[Arch],
    ladder: Sequence[Rung],
    top: Fidelity,
) -> None:
    """Rank at each cheap fidelity against rank at the top fidelity (1 = best), one panel per cheap fidelity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cheap = [f for f in ladder if f != top]
    means = runs.groupby(["fidelity", "arch"])["value"].mean()
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


def result(
    spec: Any,
    table: pd.DataFrame,
    archs: Sequence[Arch],
    top: Fidelity,
    *,
    seeds: int,
    top_seeds: int,
    threshold: float,
    images: Mapping[str, int],
) -> trust.Calibration:
    """The calibration as data: the spec's name, builders, data set (``images``: split → images used) and
    training recipe, the architectures and seeds, each fidelity's row of ``table`` and the recommendation."""
    rows = []
    for _, r in table.iterrows():
        rows.append(
            trust.FidelityResult(
                label=str(r["fidelity"]),
                iterations=int(r["iterations"]),
                scale=None if r["scale"] is None else trust.finite(r["scale"]),
                trained=bool(r["trained"]),
                top=bool(r["top"]),
                cost=float(r["cost"]),
                runs=int(r["runs"]),
                archs=int(r["archs"]),
                **{
                    k: trust.finite(r[k])
                    for k in (
                        "tau",
                        "tau_lo",
                        "tau_hi",
                        "rho",
                        "rho_lo",
                        "rho_hi",
                        "seed_noise",
                        "spread",
                        "median_gap",
                        "topk",
                        "wall_s",
                        "cpu_s",
                    )
                },
            )
        )
    return trust.Calibration(
        spec=spec.name,
        builders=tuple(sorted({a.builder or spec.builder for a in archs})),
        data=trust.data_of(spec, images),
        proxy=trust.recipe_of(spec),
        top=top.label,
        architectures=len(archs),
        seeds=seeds,
        top_seeds=top_seeds,
        threshold=threshold,
        recommended=recommend(table, threshold),
        recommendation=recommendation_line(table, threshold, top),
        fidelities=tuple(rows),
    )


def write_outputs(
    out: Path,
    name: str,
    table: pd.DataFrame,
    runs: pd.DataFrame,
    archs: Sequence[Arch],
    ladder: Sequence[Rung],
    top: Fidelity,
    *,
    k: int,
    threshold: float,
    data: str,
    calibration: trust.Calibration | None = None,
) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "calibration.csv", "md": out / "calibration.md", "png": out / "calibration.png"}
    if calibration is not None:
        paths["json"] = out / "calibration.json"
        files.write_text(paths["json"], calibration.to_json())
    numbers = {a.key: f"A{i}" for i, a in enumerate(archs, 1)}
    csv = runs.assign(miou_pct=100 * runs["miou"], arch_no=runs["arch"].map(numbers))
    files.write_text(paths["csv"], csv.to_csv(index=False))
    files.write_text(paths["md"], markdown(name, table, runs, archs, ladder, top, k=k, threshold=threshold, data=data))
    plot(paths["png"], table, runs, archs, ladder, top)
    return paths
