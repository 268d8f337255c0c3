"""The Pareto plot: every finished trial of a study, the front as a step line with each point labelled, pruned
trials along the bottom (matplotlib, imported when a plot is drawn)."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import moocore
import numpy as np
import pandas as pd
from optuna.trial import TrialState

from archsearch.report.frames import top_rung
from archsearch.spec import metrics


def non_dominated_2d(points: pd.DataFrame, directions: Mapping[str, str]) -> np.ndarray:
    """Mask of the rows of ``points`` that no other row dominates in the columns ``directions`` names (ties kept):
    the staircase of a 3+-objective front projected on the plot's two axes (moocore's ``is_nondominated``)."""
    values = points[list(directions)].to_numpy(dtype=float)
    maximise = [d == "maximize" for d in directions.values()]
    return np.asarray(moocore.is_nondominated(values, maximise=maximise, keep_weakly=True), dtype=bool)


def _plot_axes(directions: Mapping[str, str], frame: pd.DataFrame) -> tuple[str, str]:
    """(x, y) of the plot: latency and mIoU (the first two headline metrics) when both are objectives, else the
    first two objectives, else the one objective against latency (or the trial number)."""
    names = list(directions)
    y, x = metrics.HEADLINE[:2]
    if x in names and y in names:
        return x, y
    if len(names) >= 2:
        return names[0], names[1]
    return (x if x in frame.columns and names[0] != x else "number"), names[0]


def _axis(name: str) -> tuple[str, float]:
    """Axis label and scale of a column: the record's (``mIoU (%)``, × 100) for a metric, else the name."""
    try:
        m = metrics.metric(name)
    except KeyError:
        return name, 1.0
    return m.axis_label, m.scale


def plot_pareto(
    frame: pd.DataFrame,
    front: pd.DataFrame,
    directions: Mapping[str, str],
    path: Path,
    title: str,
    labels: Sequence[str] = (),
) -> None:
    """All COMPLETE trials, the front (each point labelled with ``labels``, in ``front``'s order) as a step line,
    pruned trials as x marks along the bottom; ``title`` may hold more lines (the protocol, the calibration)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x_name, y_name = _plot_axes(directions, frame)
    (x_label, x_scale), (y_label, y_scale) = _axis(x_name), _axis(y_name)

    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    done = frame[frame["state"] == TrialState.COMPLETE.name].dropna(subset=[x_name, y_name])
    low = done.drop(top_rung(done).index)  # multi-fidelity trials stopped at a lower rung
    if len(low):
        ax.scatter(
            low[x_name].astype(float) * x_scale,
            low[y_name].astype(float) * y_scale,
            s=14,
            color="lightgray",
            label=f"stopped at a lower rung ({len(low)})",
        )
    done = top_rung(done)
    ax.scatter(
        done[x_name].astype(float) * x_scale,
        done[y_name].astype(float) * y_scale,
        s=18,
        color="tab:blue",
        alpha=0.5,
        label=f"complete ({len(done)})",
    )
    fx = front[x_name].astype(float).to_numpy() * x_scale if x_name in front else np.array([])
    fy = front[y_name].astype(float).to_numpy() * y_scale if y_name in front else np.array([])
    if len(fx):
        ax.scatter(fx, fy, s=36, color="tab:red", zorder=3, label=f"Pareto front ({len(fx)})")
        if x_name in directions and y_name in directions:
            # the staircase of the front projected on these two axes (the whole front when there are two objectives)
            on_plane = non_dominated_2d(front, {n: directions[n] for n in (x_name, y_name)})
            order = np.argsort(fx[on_plane], kind="stable")
            where: Literal["pre", "post"] = "post" if directions[x_name] == "minimize" else "pre"
            ax.step(fx[on_plane][order], fy[on_plane][order], where=where, color="tab:red", lw=1.2)
    pruned = frame[frame["state"] == TrialState.PRUNED.name]
    if x_name in pruned and pruned[x_name].notna().any():
        px = pruned[x_name].dropna().astype(float) * x_scale
        # pruned trials have no y value: faint marks along the bottom edge, at their x (latency)
        ax.scatter(
            px,
            np.full(len(px), 0.03),
            transform=ax.get_xaxis_transform(),
            marker="x",
            color="gray",
            alpha=0.5,
            s=24,
            label=f"pruned ({len(px)})",
        )
        # autoscaling ignores artists in axes coordinates: widen the x range to show them
        lo, hi = ax.get_xlim()
        pad = 0.05 * (max(hi, px.max()) - min(lo, px.min()) or 1.0)
        ax.set_xlim(min(lo, px.min() - pad), max(hi, px.max() + pad))
    if len(fx) and len(labels):
        from adjustText import adjust_text

        texts = [
            ax.text(x, y, text, fontsize=6.5, color="darkred", zorder=4)
            for x, y, text in zip(fx, fy, labels, strict=False)
        ]
        # moves the labels apart and off the points, inside the axes, with a thin line to their point
        adjust_text(
            texts,
            x=fx,
            y=fy,
            ax=ax,
            ensure_inside_axes=True,
            arrowprops={"arrowstyle": "-", "color": "darkred", "lw": 0.4},
        )
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title("\n".join(textwrap.fill(line, 90) for line in title.splitlines()), fontsize="small")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.savefig(path, dpi=120)
