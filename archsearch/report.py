"""Reports rebuilt from an Optuna study alone: trial table, Pareto front, ablation tables, plots.

- :func:`trials_frame` — one row per trial (objectives, scalar user attributes, ``knob.<name>`` columns, reason).
- :func:`pareto_front` — the non-dominated COMPLETE trials (vectorised dominance with numpy).
- :func:`export_pareto` — ``<name>_pareto.{csv,json,md,png}``.
- :func:`ablation_table` — one line per spec row beside the paper's numbers, relative-to-reference ratios and
  Kendall rank correlations; ``<name>_table.{csv,md}``.
- :func:`format_markdown`, :func:`summary` — small text helpers for the files and the command line.

Units: the trial records hold ``miou``, ``pixel_acc`` and ``mean_acc`` as fractions and ``madds`` as a count;
the tables show them in % and in G (1e9) multiply-adds.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState
from scipy.stats import kendalltau

from archsearch.spec import Objective

log = logging.getLogger(__name__)

#: user attributes that are fractions in the record and shown in % in tables and plots
FRACTION_ATTRS = ("miou", "pixel_acc", "mean_acc")
#: user attributes that never become plain columns (knobs are flattened; the rest are long lists)
_NON_COLUMN_ATTRS = ("knobs", "iou_per_class", "fail_reason", "pruned_reason")
#: measured columns of an ablation table: column → (user attribute, scale)
_MEASURED: dict[str, tuple[str, float]] = {
    "params": ("params", 1.0),
    "madds_G": ("madds", 1e-9),
    "latency_ms": ("latency_ms", 1.0),
    "miou_pct": ("miou", 100.0),
    "pixel_acc_pct": ("pixel_acc", 100.0),
    "mean_acc_pct": ("mean_acc", 100.0),
}
#: comparable ``paper:`` keys → (table column, scale applied to the paper value)
_PAPER_KEYS: dict[str, tuple[str, float]] = {
    "params": ("params", 1.0),
    "madds": ("madds_G", 1e-9),
    "latency_ms": ("latency_ms", 1.0),
    "fps": ("fps", 1.0),
    "miou_pct": ("miou_pct", 1.0),
    "pixel_acc_pct": ("pixel_acc_pct", 1.0),
    "mean_acc_pct": ("mean_acc_pct", 1.0),
}
_DASH = "—"
_AXIS_LABELS = {"latency_ms": "latency (ms)", "miou": "mIoU (%)", "pixel_acc": "pixel accuracy (%)",
                "mean_acc": "mean accuracy (%)", "params": "parameters", "madds": "multiply-adds"}


# --------------------------------------------------------------------------------------------- trial table


def _compact(value: Any) -> Any:
    """Scalars unchanged; lists/tuples/dicts as one short string such as ``"[1, 1, 2, 0]"``."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(_compact(v)) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_compact(v)}" for k, v in value.items()) + "}"
    return value


def _objective_names(study: optuna.Study, objectives: Sequence[Objective] | None) -> list[str]:
    if objectives is not None:
        names = [o.name for o in objectives]
        if len(names) != len(study.directions):
            raise ValueError(f"{len(names)} objectives given for a study with {len(study.directions)} directions")
        return names
    if study.metric_names is not None:
        return list(study.metric_names)
    stored = study.user_attrs.get("objectives")  # archsearch.study records the spec's objective names here
    if isinstance(stored, list) and len(stored) == len(study.directions) and all(isinstance(n, str) for n in stored):
        return stored
    return ["value"] if len(study.directions) == 1 else [f"values_{i}" for i in range(len(study.directions))]


def trials_frame(study: optuna.Study, objectives: Sequence[Objective] | None = None) -> pd.DataFrame:
    """One row per trial of ``study``.

    Columns: ``number``, ``state`` (the state's name), one column per objective named by the objective
    (``objectives`` if given, else ``study.metric_names``, else the study's ``objectives`` user attribute, else
    Optuna's ``value``/``values_<i>``) taken from
    ``trial.values`` for COMPLETE trials and from the user attribute of that name otherwise, every scalar user
    attribute (short lists such as ``input_size`` rendered compactly), the resolved knobs flattened as
    ``knob.<name>`` columns (lists rendered as ``"[1, 1, 2, 0]"``) and ``reason`` (fail or pruned reason).
    """
    names = _objective_names(study, objectives)
    records: list[dict[str, Any]] = []
    attr_cols: dict[str, None] = {}
    knob_cols: dict[str, None] = {}
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        rec: dict[str, Any] = {"number": trial.number, "state": trial.state.name}
        for i, name in enumerate(names):
            if trial.state == TrialState.COMPLETE and trial.values is not None:
                rec[name] = trial.values[i]
            else:
                rec[name] = attrs.get(name, math.nan)
        for key, value in attrs.items():
            if key in _NON_COLUMN_ATTRS or key in names:
                continue
            rec[key] = _compact(value)
            attr_cols[key] = None
        for key, value in (attrs.get("knobs") or {}).items():
            rec[f"knob.{key}"] = _compact(value)
            knob_cols[f"knob.{key}"] = None
        rec["reason"] = attrs.get("fail_reason", attrs.get("pruned_reason"))
        records.append(rec)
    columns = ["number", "state", *names, *attr_cols, *knob_cols, "reason"]
    return pd.DataFrame.from_records(records, columns=columns)


# --------------------------------------------------------------------------------------------- Pareto front


def non_dominated(losses: np.ndarray, chunk_elements: int = 1 << 22) -> np.ndarray:
    """Boolean mask of the rows of ``losses`` (n, m; every column minimised) that no other row dominates.

    Row j dominates row i when it is no worse in every column and better in at least one; equal rows do not
    dominate each other, so ties are all kept. Vectorised over blocks of rows (at most ``chunk_elements``
    comparisons in memory at once).
    """
    losses = np.asarray(losses, dtype=float)
    n, m = losses.shape
    keep = np.ones(n, dtype=bool)
    block = max(1, chunk_elements // max(1, n * m))
    for start in range(0, n, block):
        rows = losses[start : start + block, None, :]  # (b, 1, m)
        no_worse = (losses[None, :, :] <= rows).all(axis=-1)  # (b, n): j no worse than i everywhere
        better = (losses[None, :, :] < rows).any(axis=-1)  # (b, n): j better than i somewhere
        keep[start : start + block] = ~(no_worse & better).any(axis=1)
    return keep


def _losses(frame: pd.DataFrame, objectives: Sequence[Objective]) -> np.ndarray:
    signs = np.array([-1.0 if o.direction == "maximize" else 1.0 for o in objectives])
    values = frame[[o.name for o in objectives]].to_numpy(dtype=float)
    return values * signs


def pareto_front(frame: pd.DataFrame, objectives: Sequence[Objective]) -> pd.DataFrame:
    """The non-dominated COMPLETE trials of ``frame`` (ties kept), sorted by the first objective (ascending)."""
    for o in objectives:
        if o.direction not in ("maximize", "minimize"):
            raise ValueError(f"objective {o.name!r}: direction must be 'maximize' or 'minimize', not {o.direction!r}")
    names = [o.name for o in objectives]
    done = frame[frame["state"] == TrialState.COMPLETE.name].dropna(subset=names)
    if done.empty:
        return done.reset_index(drop=True)
    front = done[non_dominated(_losses(done, objectives))]
    return front.sort_values([names[0], "number"], kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------------------------- text helpers


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return _DASH
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isinf(v):
            return "∞" if v > 0 else "-∞"
        if v.is_integer() and abs(v) < 1e15:
            return str(int(v))
        return f"{v:.1f}" if abs(v) >= 100 else f"{v:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def format_markdown(frame: pd.DataFrame) -> str:
    """``frame`` as a GitHub Markdown table (numbers right-aligned, missing values as "—")."""
    headers = [str(c).replace("|", "\\|") for c in frame.columns]
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c]) for c in frame]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---:" if num else ":---" for num in numeric) + "|",
    ]
    for row in frame.itertuples(index=False, name=None):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def summary(frame: pd.DataFrame) -> str:
    """One short paragraph for the command line: counts by state, best mIoU, fastest latency."""
    if frame.empty:
        return "0 trials"
    counts = frame["state"].value_counts()
    lines = [f"{len(frame)} trials: " + ", ".join(f"{n} {state}" for state, n in counts.items())]
    done = frame[frame["state"] == TrialState.COMPLETE.name]
    if "miou" in done and done["miou"].notna().any():
        best = done.loc[done["miou"].astype(float).idxmax()]
        lines.append(f"best mIoU {100 * float(best['miou']):.2f} % (trial {int(best['number'])})")
    if "latency_ms" in done and done["latency_ms"].notna().any():
        fast = done.loc[done["latency_ms"].astype(float).idxmin()]
        lines.append(f"fastest latency {float(fast['latency_ms']):.2f} ms (trial {int(fast['number'])})")
    return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is pd.NA:
        return None
    return value


# --------------------------------------------------------------------------------------------- Pareto export


def _display_frame(front: pd.DataFrame, objectives: Sequence[Objective]) -> pd.DataFrame:
    """The columns worth reading in a Markdown Pareto table, fractions in % and multiply-adds in G."""
    names = [o.name for o in objectives]
    wanted = ["number", *names]
    wanted += [c for c in ("params", "madds", "latency_ms", *FRACTION_ATTRS, "row_label") if c not in wanted]
    wanted += [c for c in front.columns if c.startswith("knob.")]
    shown = front[[c for c in wanted if c in front.columns]].copy()
    renames: dict[str, str] = {}
    for col in shown.columns:
        if col in FRACTION_ATTRS:
            shown[col] = shown[col].astype(float) * 100
            renames[col] = f"{col} %"
        elif col == "madds":
            shown[col] = shown[col].astype(float) / 1e9
            renames[col] = "madds (G)"
    return shown.rename(columns=renames)


def _plot_axes(objectives: Sequence[Objective], frame: pd.DataFrame) -> tuple[str, str]:
    names = [o.name for o in objectives]
    if "latency_ms" in names and "miou" in names:
        return "latency_ms", "miou"
    if len(names) >= 2:
        return names[0], names[1]
    x = "latency_ms" if "latency_ms" in frame.columns and names[0] != "latency_ms" else "number"
    return x, names[0]


def _plot_pareto(
    frame: pd.DataFrame, front: pd.DataFrame, objectives: Sequence[Objective], path: Path, title: str
) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x_name, y_name = _plot_axes(objectives, frame)
    y_scale = 100.0 if y_name in FRACTION_ATTRS else 1.0
    x_scale = 100.0 if x_name in FRACTION_ATTRS else 1.0
    directions = {o.name: o.direction for o in objectives}

    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    done = frame[frame["state"] == TrialState.COMPLETE.name].dropna(subset=[x_name, y_name])
    ax.scatter(done[x_name].astype(float) * x_scale, done[y_name].astype(float) * y_scale,
               s=18, color="tab:blue", alpha=0.5, label=f"complete ({len(done)})")
    fx = front[x_name].astype(float).to_numpy() * x_scale if x_name in front else np.array([])
    fy = front[y_name].astype(float).to_numpy() * y_scale if y_name in front else np.array([])
    if len(fx):
        ax.scatter(fx, fy, s=36, color="tab:red", zorder=3, label=f"Pareto front ({len(fx)})")
        if x_name in directions and y_name in directions:
            # the staircase of the front projected on these two axes (the whole front when there are two objectives)
            plane = [o for o in objectives if o.name in (x_name, y_name)]
            on_plane = non_dominated(_losses(front, sorted(plane, key=lambda o: o.name != x_name)))
            order = np.argsort(fx[on_plane], kind="stable")
            where = "post" if directions[x_name] == "minimize" else "pre"
            ax.step(fx[on_plane][order], fy[on_plane][order], where=where, color="tab:red", lw=1.2)
    pruned = frame[frame["state"] == TrialState.PRUNED.name]
    if x_name in pruned and pruned[x_name].notna().any():
        px = pruned[x_name].dropna().astype(float) * x_scale
        # pruned trials have no y value: faint marks along the bottom edge, at their x (latency)
        ax.scatter(px, np.full(len(px), 0.03), transform=ax.get_xaxis_transform(), marker="x",
                   color="gray", alpha=0.5, s=24, label=f"pruned ({len(px)})")
        # autoscaling ignores artists in axes coordinates: widen the x range to show them
        lo, hi = ax.get_xlim()
        pad = 0.05 * (max(hi, px.max()) - min(lo, px.min()) or 1.0)
        ax.set_xlim(min(lo, px.min() - pad), max(hi, px.max() + pad))
    ax.set_xlabel(_AXIS_LABELS.get(x_name, f"{x_name} (%)" if x_scale == 100 else x_name))
    ax.set_ylabel(_AXIS_LABELS.get(y_name, f"{y_name} (%)" if y_scale == 100 else y_name))
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.savefig(path, dpi=120)


def export_pareto(study: optuna.Study, objectives: Sequence[Objective], out_dir: Path, name: str) -> dict[str, Path]:
    """Write ``<name>_pareto.csv``, ``.json``, ``.md`` and ``.png`` under ``out_dir``; return their paths.

    CSV: the front's rows of :func:`trials_frame`. JSON: one record per front trial with every user attribute
    as stored (``knobs`` a real dict, lists as lists). Markdown: the readable columns, mIoU etc. in %. PNG: all
    COMPLETE trials (x = latency_ms, y = mIoU %; or the first two objectives), the front as a step line, pruned
    trials as faint x marks at their latency.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = trials_frame(study, objectives)
    front = pareto_front(frame, objectives)
    paths = {ext: out_dir / f"{name}_pareto.{ext}" for ext in ("csv", "json", "md", "png")}

    front.to_csv(paths["csv"], index=False)

    by_number: dict[int, FrozenTrial] = {t.number: t for t in study.get_trials(deepcopy=False)}
    records = []
    for number in front["number"]:
        trial = by_number[int(number)]
        rec: dict[str, Any] = {"number": trial.number, "state": trial.state.name}
        rec.update({o.name: v for o, v in zip(objectives, trial.values or ())})
        rec.update({k: v for k, v in trial.user_attrs.items() if k not in rec})
        records.append(_json_safe(rec))
    paths["json"].write_text(json.dumps(records, indent=2, allow_nan=False) + "\n")

    arrows = ", ".join(f"{o.name} {'↑' if o.direction == 'maximize' else '↓'}" for o in objectives)
    table = format_markdown(_display_frame(front, objectives)).rstrip("\n")
    text = [f"# {name}: Pareto front", "", f"Objectives: {arrows}.", "", table]
    text += ["", summary(frame).replace("\n", "; ") + ".", "", f"![Pareto front]({paths['png'].name})", ""]
    paths["md"].write_text("\n".join(text))

    _plot_pareto(frame, front, objectives, paths["png"], f"{name}: {len(front)} on the front of {len(frame)} trials")
    return paths


# --------------------------------------------------------------------------------------------- ablation table


def _row_label(row: Mapping[str, Any], index: int) -> str:
    return str(row.get("label", f"row {index}"))


def _latest_per_row(study: optuna.Study, rows: Sequence[Mapping[str, Any]]) -> dict[int, FrozenTrial]:
    """The latest (highest-numbered) COMPLETE trial of each row index whose recorded label matches the row."""
    latest: dict[int, FrozenTrial] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        index = trial.user_attrs.get("row")
        if not isinstance(index, int) or not 0 <= index < len(rows):
            continue
        recorded = trial.user_attrs.get("row_label")
        if recorded is not None and recorded != _row_label(rows[index], index):
            log.warning("trial %d: row %d is labelled %r in the study but %r in the spec; ignored",
                        trial.number, index, recorded, _row_label(rows[index], index))
            continue
        if index not in latest or trial.number > latest[index].number:
            latest[index] = trial
    return latest


def _number(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def _kendall_lines(kendall: dict[str, dict[str, float]]) -> list[str]:
    if not kendall:
        return ["Kendall rank correlation: no comparable column has 3 or more rows with both values."]
    lines = ["Kendall rank correlation, paper vs ours (scipy.stats.kendalltau):", ""]
    for key, k in kendall.items():
        lines.append(f"- {key}: τ = {k['tau']:.3f}, p = {k['p']:.3g} (n = {int(k['n'])})")
    return lines


def ablation_table(
    study: optuna.Study, rows: Sequence[Mapping[str, Any]], out_dir: Path, name: str
) -> tuple[pd.DataFrame, dict[str, Path]]:
    """One line per spec row beside the paper's numbers; writes ``<name>_table.csv`` and ``<name>_table.md``.

    Columns: ``label``, ``knobs`` (the row's knobs), ``trial`` (number of the latest COMPLETE trial recorded
    for that row, matched by the ``row`` user attribute), the measured ``params``, ``madds_G``, ``latency_ms``,
    ``miou_pct``, ``pixel_acc_pct``, ``mean_acc_pct`` (and ``fps`` = 1000 / latency_ms when a row's ``paper:``
    gives fps). For each comparable ``paper:`` key present: ``paper_<col>`` and the ratios to the reference
    row (the first row having both values; NaN until one has) ``<col>_rel`` (ours) and ``paper_<col>_rel``
    (paper) — the papers' ablations compare ratios. Other paper keys become
    ``paper_<key>`` columns. Rows not yet run are NaN ("—" in Markdown).

    Under the Markdown table, Kendall's τ between the paper's and our values for every compared column with at
    least 3 rows having both; the same numbers are in ``frame.attrs["kendall"]``
    (``{column: {"tau", "p", "n"}}``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    latest = _latest_per_row(study, rows)
    papers = [dict(row.get("paper") or {}) for row in rows]
    compared = [k for k in _PAPER_KEYS if any(k in p for p in papers)]
    extra = list(dict.fromkeys(k for p in papers for k in p if k not in _PAPER_KEYS))

    measured_cols = list(_MEASURED)
    if "fps" in compared:
        measured_cols.insert(measured_cols.index("latency_ms") + 1, "fps")
    records = []
    devices: dict[str, None] = {}
    for index, row in enumerate(rows):
        trial = latest.get(index)
        attrs = trial.user_attrs if trial is not None else {}
        rec: dict[str, Any] = {
            "label": _row_label(row, index),
            "knobs": ", ".join(f"{k}={_compact(v)}" for k, v in (row.get("knobs") or {}).items()),
            "trial": trial.number if trial is not None else math.nan,
        }
        for col, (attr, scale) in _MEASURED.items():
            rec[col] = _number(attrs.get(attr)) * scale
        rec["fps"] = 1000.0 / rec["latency_ms"] if rec["latency_ms"] > 0 else math.nan
        for key in compared:
            col, scale = _PAPER_KEYS[key]
            rec[f"paper_{col}"] = _number(papers[index].get(key)) * scale
        for key in extra:
            rec[f"paper_{key}"] = papers[index].get(key)
        if attrs.get("device"):
            devices[str(attrs["device"])] = None
        records.append(rec)
    table = pd.DataFrame.from_records(records)

    columns = ["label", "knobs", "trial"]
    kendall: dict[str, dict[str, float]] = {}
    for col in measured_cols:
        columns.append(col)
        key = next((k for k in compared if _PAPER_KEYS[k][0] == col), None)
        if key is None or table.empty:
            continue
        paper_col = f"paper_{col}"
        columns.append(paper_col)
        columns += [f"{col}_rel", f"{paper_col}_rel"]
        both = np.isfinite(table[col]) & np.isfinite(table[paper_col])
        if not both.any():
            continue  # the ratio columns stay NaN until some row has both values
        ref = both.idxmax()  # the first row having both values
        table[f"{col}_rel"] = table[col] / table.at[ref, col]
        table[f"{paper_col}_rel"] = table[paper_col] / table.at[ref, paper_col]
        if both.sum() >= 3:
            tau, p = kendalltau(table.loc[both, paper_col], table.loc[both, col])
            kendall[col] = {"tau": float(tau), "p": float(p), "n": int(both.sum())}
    columns += [f"paper_{k}" for k in extra]
    table = table.reindex(columns=columns) if not table.empty else pd.DataFrame(columns=columns)
    table.attrs["kendall"] = kendall

    paths = {"csv": out_dir / f"{name}_table.csv", "md": out_dir / f"{name}_table.md"}
    table.to_csv(paths["csv"], index=False)
    text = [f"# {name}: ablation table", "", format_markdown(table), *_kendall_lines(kendall), ""]
    text.append(f"{len(latest)} of {len(rows)} rows measured; latency on: {', '.join(devices) or _DASH}. "
                "`*_rel` columns are ratios to the first row having both the measured and the paper value.")
    paths["md"].write_text("\n".join(text) + "\n")
    return table, paths
