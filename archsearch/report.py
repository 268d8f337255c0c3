"""Reports rebuilt from an Optuna study alone: trial table, Pareto front, ablation tables, plots.

- :func:`trials_frame` — one row per trial (objectives, scalar user attributes, ``knob.<name>`` columns, reason).
- :func:`pareto_front` — the non-dominated COMPLETE trials (vectorised dominance with numpy).
- :func:`export_pareto` — ``<name>_pareto.{csv,json,md,png}``.
- :func:`ablation_table` — one line per spec row beside the paper's numbers, relative-to-reference ratios and
  Kendall rank correlations; ``<name>_table.{csv,md}``.
- :func:`format_markdown`, :func:`summary` — small text helpers for the files and the command line.
- :func:`fmt_num`, :func:`fmt_ms` — plain numbers with sensible digits (``6040 ms``, never ``6.04e+03``).
- :func:`front_table` — the front as a short terminal table (at most 8 columns); :func:`table_text` — an
  ablation table that fits a terminal; :func:`protocol` — device, input, dtype, threads and data set.

Units: the trial records hold ``miou``, ``pixel_acc`` and ``mean_acc`` as fractions and ``madds`` as a count;
the tables show them in % and in G (1e9) multiply-adds.
"""

from __future__ import annotations

import json
import logging
import math
import textwrap
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
_NON_COLUMN_ATTRS = ("knobs", "iou_per_class", "fail_reason", "pruned_reason", "rungs")
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
#: columns whose values depend on the input size: compared with the paper only at the paper's input
_INPUT_DEPENDENT = ("madds_G", "latency_ms", "fps")
#: the input (H, W) at which the four papers count multiply-adds and time their networks (Cityscapes' full
#: resolution); a row's ``paper: {input: [H, W]}`` says otherwise
PAPER_INPUT = (1024, 2048)
_DASH = "—"
#: states of a finished trial (RUNNING and WAITING trials are not counted in titles)
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
_AXIS_LABELS = {"latency_ms": "latency (ms)", "miou": "mIoU (%)", "pixel_acc": "pixel accuracy (%)",
                "mean_acc": "mean accuracy (%)", "params": "parameters", "madds": "multiply-adds"}


# --------------------------------------------------------------------------------------------- numbers


def fmt_num(value: Any, digits: int = 3) -> str:
    """A plain number with ``digits`` significant digits and no exponent: 6040, 33.5, 1.23, 0.0123.

    Values of ``10**(digits-1)`` and above are rounded to an integer (``6043.2`` → ``6043``); missing values are
    "—".
    """
    if value is None or value is pd.NA:
        return _DASH
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(v):
        return _DASH
    if math.isinf(v):
        return "∞" if v > 0 else "-∞"
    if abs(v) >= 10 ** (digits - 1):
        return f"{v:.0f}"
    if v == 0:
        return "0"
    rounded = float(f"{v:.{digits}g}")  # round to the significant digits first: 9.996 → 10.0, not 10.00
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(rounded))))
    return f"{rounded:.{decimals}f}"


def fmt_duration(seconds: float) -> str:
    """A duration for progress lines: 42s, 3m05s, 1h07m."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def fmt_ms(ms: Any) -> str:
    """Milliseconds as a plain number with sensible digits and the unit: ``6040 ms``, ``33.5 ms``, ``1.23 ms``."""
    return f"{fmt_num(ms)} ms"


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
    ``knob.<name>`` columns (lists rendered as ``"[1, 1, 2, 0]"``), ``reason`` (fail or pruned reason),
    ``violation`` (the sum of the trial's positive Optuna constraint values, 0 when it meets every constraint or
    has none) and ``feasible`` (``violation == 0``).
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
        violation = sum(v for v in trial.constraints.values() if v > 0)  # Optuna's constraint values (≤ 0: met)
        rec["violation"] = violation
        rec["feasible"] = violation == 0
        records.append(rec)
    columns = ["number", "state", *names, *attr_cols, *knob_cols, "reason", "violation", "feasible"]
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


def top_rung(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``frame`` that trained the full proxy budget: multi-fidelity trials stopped at a lower rung
    (column ``stopped_at_rung`` set; archsearch.fidelity) hold low-budget values and are left out of fronts and
    best values. A frame without that column is returned whole."""
    if "stopped_at_rung" not in frame.columns:
        return frame
    return frame[frame["stopped_at_rung"].isna()]


def pareto_front(frame: pd.DataFrame, objectives: Sequence[Objective]) -> pd.DataFrame:
    """The non-dominated feasible COMPLETE trials of ``frame`` (ties kept), sorted by the first objective
    (ascending). A trial is feasible when its ``feasible`` column is true (no constraint violated; a frame without
    that column counts every trial feasible), as Optuna's ``best_trials`` in constrained optimisation."""
    for o in objectives:
        if o.direction not in ("maximize", "minimize"):
            raise ValueError(f"objective {o.name!r}: direction must be 'maximize' or 'minimize', not {o.direction!r}")
    names = [o.name for o in objectives]
    done = top_rung(frame[frame["state"] == TrialState.COMPLETE.name]).dropna(subset=names)
    if "feasible" in done.columns:
        done = done[done["feasible"].astype(bool)]
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
    stopped = len(done) - len(top_rung(done))
    if stopped:
        lines.append(f"{stopped} COMPLETE stopped at a lower rung (multi-fidelity; not on the front)")
    done = top_rung(done)
    if "miou" in done and done["miou"].notna().any():
        best = done.loc[done["miou"].astype(float).idxmax()]
        lines.append(f"best mIoU {100 * float(best['miou']):.2f} % (trial {int(best['number'])})")
    if "latency_ms" in done and done["latency_ms"].notna().any():
        fast = done.loc[done["latency_ms"].astype(float).idxmin()]
        lines.append(f"fastest latency {fmt_ms(fast['latency_ms'])} (trial {int(fast['number'])})")
    return "\n".join(lines)


def aligned(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool]) -> str:
    """A plain-text table: columns two spaces apart, numbers right-aligned, text left-aligned."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        out = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)]
        return "  ".join(out).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


def _short(text: str, limit: int) -> str:
    text = " ".join(str(text).split())  # one space between words: columns are told apart by two
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _knob_value(value: Any) -> str:
    if isinstance(value, (float, np.floating)):  # a knob column with missing values is float
        return str(int(value)) if float(value).is_integer() else fmt_num(value)
    text = str(value).replace(", ", ",")
    return text[1:-1] if text.startswith("[") and text.endswith("]") else text  # "[24, 48, 96]" → "24,48,96"


def knob_labels(frame: pd.DataFrame, limit: int = 48) -> pd.Series:
    """A compact label per trial: the row label of an ablation, else ``knob=value`` for the knobs that differ
    between the COMPLETE trials of ``frame`` (all knobs when none differ), at most ``limit`` characters."""
    knob_cols = [c for c in frame.columns if c.startswith("knob.")]
    done = frame[frame["state"] == TrialState.COMPLETE.name] if "state" in frame else frame
    varying = [c for c in knob_cols if done[c].astype(str).nunique() > 1] or knob_cols

    def label(row: pd.Series) -> str:
        if "row_label" in row and isinstance(row["row_label"], str):
            return _short(row["row_label"], limit)
        parts = [f"{c[len('knob.'):]}={_knob_value(row[c])}" for c in varying if not pd.isna(row[c])]
        return _short(" ".join(parts), limit) or _DASH

    return frame.apply(label, axis=1) if len(frame) else pd.Series([], dtype=str)


def _distinct(frame: pd.DataFrame, column: str) -> list[str]:
    if column not in frame:
        return []
    values = frame[column].dropna()
    return list(dict.fromkeys(str(v) for v in values))


def _input_text(value: str) -> str:
    """``"[1, 3, 1024, 2048]"`` → ``"1×3×1024×2048"``."""
    return "×".join(part.strip() for part in value.strip("[]()").split(","))


def data_description(study: optuna.Study) -> str | None:
    """The data set and proxy resolution a study's trials trained and evaluated on, from the spec that ``run``
    stored on the study (``None`` when the study has none)."""
    spec = study.user_attrs.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("data"), dict):
        return None
    data = spec["data"]
    text = f"data {data.get('name', '?')}"
    scale = (spec.get("proxy") or {}).get("scale")
    if scale is not None:
        text += f" at scale {fmt_num(scale)}"
    return text


def protocol(frame: pd.DataFrame, data: str | None = None) -> str:
    """How the cost columns were measured, from the trial records: device(s), input size(s), dtype(s) and
    threads, plus ``data`` (see :func:`data_description`), e.g.
    ``latency on cpu (2 threads) · input 1×3×1024×2048 · float32 · data synthetic at scale 0.125``."""
    measured = frame[frame["latency_ms"].notna()] if "latency_ms" in frame else frame.iloc[0:0]
    parts = []
    devices = _distinct(measured, "device")
    threads = _distinct(measured, "threads")
    where = ", ".join(devices) or _DASH
    if threads and not any("thread" in d for d in devices):
        where += f" ({', '.join(threads)} threads)"
    parts.append(f"latency on {where}")
    inputs = [_input_text(v) for v in _distinct(measured, "input_size")]
    parts.append(f"input {', '.join(inputs) or _DASH}")
    parts += [", ".join(_distinct(measured, "dtype"))] if _distinct(measured, "dtype") else []
    if data:
        parts.append(data)
    return " · ".join(parts)


#: front_table's columns beside the label: column header → (frame column, scale)
_FRONT_COLUMNS: dict[str, tuple[str, float]] = {
    "mIoU %": ("miou", 100.0),
    "latency ms": ("latency_ms", 1.0),
    "params M": ("params", 1e-6),
    "GMAdds": ("madds", 1e-9),
}
#: further objectives front_table shows when the spec optimises them (the table stays within 8 columns)
_EXTRA_COLUMNS: dict[str, tuple[str, str, float]] = {
    "pixel_acc": ("pixel acc %", "pixel_acc", 100.0),
    "mean_acc": ("mean acc %", "mean_acc", 100.0),
    "latency_p90_ms": ("p90 ms", "latency_p90_ms", 1.0),
    "train_seconds": ("train s", "train_seconds", 1.0),
}


def front_table(study_or_frame: optuna.Study | pd.DataFrame, objectives: Sequence[Objective]) -> str:
    """The Pareto front as a short terminal table: a title line, then one line per front trial with ``trial``,
    a compact knob label (:func:`knob_labels`), mIoU %, latency ms, params M, GMAdds and any other objective —
    at most 8 columns. ``study_or_frame`` is a study or its :func:`trials_frame`."""
    if isinstance(study_or_frame, pd.DataFrame):
        frame = study_or_frame
    else:
        frame = trials_frame(study_or_frame, objectives)
    finished = int(frame["state"].isin([s.name for s in FINISHED_STATES]).sum()) if len(frame) else 0
    front = pareto_front(frame, objectives) if len(frame) else frame
    arrows = ", ".join(f"{o.name} {'↑' if o.direction == 'maximize' else '↓'}" for o in objectives)
    title = f"Pareto front ({arrows}): {len(front)} of {finished} finished trials"
    if front.empty:
        return f"{title}; no COMPLETE trial yet"
    columns = dict(_FRONT_COLUMNS)
    for o in objectives:
        if o.name in _EXTRA_COLUMNS and len(columns) < 6:
            header, col, scale = _EXTRA_COLUMNS[o.name]
            columns[header] = (col, scale)
    by_number = dict(zip(frame["number"], knob_labels(frame)))
    headers = ["trial", "knobs", *columns]
    rows = []
    for _, rec in front.iterrows():
        cells = [str(int(rec["number"])), by_number.get(rec["number"], _DASH)]
        cells += [fmt_num(_number(rec.get(col)) * scale) for col, scale in columns.values()]
        rows.append(cells)
    return title + "\n" + aligned(headers, rows, [True, False, *([True] * len(columns))])


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
    frame: pd.DataFrame, front: pd.DataFrame, objectives: Sequence[Objective], path: Path, title: str,
    labels: Sequence[str] = (),
) -> None:
    """All COMPLETE trials, the front (each point labelled with ``labels``, in ``front``'s order) as a step line,
    pruned trials as x marks along the bottom; ``title`` may hold a second line (the protocol)."""
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
    low = done.drop(top_rung(done).index)  # multi-fidelity trials stopped at a lower rung
    if len(low):
        ax.scatter(low[x_name].astype(float) * x_scale, low[y_name].astype(float) * y_scale, s=14,
                   color="lightgray", label=f"stopped at a lower rung ({len(low)})")
    done = top_rung(done)
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
    if len(fx) and len(labels):
        from adjustText import adjust_text

        texts = [ax.text(x, y, text, fontsize=6.5, color="darkred", zorder=4) for x, y, text in zip(fx, fy, labels)]
        # moves the labels apart and off the points, inside the axes, with a thin line to their point
        adjust_text(texts, x=fx, y=fy, ax=ax, ensure_inside_axes=True,
                    arrowprops={"arrowstyle": "-", "color": "darkred", "lw": 0.4})
    ax.set_xlabel(_AXIS_LABELS.get(x_name, f"{x_name} (%)" if x_scale == 100 else x_name))
    ax.set_ylabel(_AXIS_LABELS.get(y_name, f"{y_name} (%)" if y_scale == 100 else y_name))
    ax.set_title("\n".join(textwrap.fill(line, 90) for line in title.splitlines()), fontsize="small")
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
    data = data_description(study)
    text = [f"# {name}: Pareto front", "", f"Objectives: {arrows}. Measured: {protocol(frame, data)}.", "", table]
    text += ["", summary(frame).replace("\n", "; ") + ".", "", f"![Pareto front]({paths['png'].name})", ""]
    paths["md"].write_text("\n".join(text))

    finished = int(frame["state"].isin([st.name for st in FINISHED_STATES]).sum())
    title = f"{name}: {len(front)} on the front of {finished} finished trials\n{protocol(frame, data)}"
    by_number = dict(zip(frame["number"], knob_labels(frame)))
    front_labels = [f"#{int(n)} {by_number.get(n, '')}".strip() for n in front["number"]]
    _plot_pareto(frame, front, objectives, paths["png"], title, front_labels)
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

    Like with like: multiply-adds, latency and fps depend on the input size, so for them a row is compared
    (ratios, Kendall's τ) only when its trial was measured at the paper's input (``paper: {input: [H, W]}``,
    default :data:`PAPER_INPUT`); ``frame.attrs["not_compared"]`` maps such columns to the reason, and the
    paper's values stay in the ``paper_<col>`` columns. The Markdown states the measurement protocol
    (:func:`protocol`). Nothing is written to the study.
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
    same_input: list[bool] = []  # measured at the paper's input, per row
    mismatched: dict[str, None] = {}  # "256×512 (paper 1024×2048)" descriptions
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
        measured_hw = _hw(attrs.get("input_size"))
        paper_hw = _hw(papers[index].get("input")) or PAPER_INPUT
        same_input.append(measured_hw == paper_hw)
        if measured_hw is not None and measured_hw != paper_hw:
            mismatched[f"{measured_hw[0]}×{measured_hw[1]} (paper {paper_hw[0]}×{paper_hw[1]})"] = None
        records.append(rec)
    table = pd.DataFrame.from_records(records)
    comparable = pd.Series(same_input, index=table.index, dtype=bool)

    columns = ["label", "knobs", "trial"]
    kendall: dict[str, dict[str, float]] = {}
    not_compared: dict[str, str] = {}
    for col in measured_cols:
        columns.append(col)
        key = next((k for k in compared if _PAPER_KEYS[k][0] == col), None)
        if key is None or table.empty:
            continue
        paper_col = f"paper_{col}"
        columns.append(paper_col)
        columns += [f"{col}_rel", f"{paper_col}_rel"]
        both = np.isfinite(table[col]) & np.isfinite(table[paper_col])
        if col in _INPUT_DEPENDENT:
            if (both & ~comparable).any():
                not_compared[col] = "measured at " + ", ".join(mismatched)
            both &= comparable
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
    table.attrs["not_compared"] = not_compared
    measured = trials_frame_of(list(latest.values()))
    table.attrs["protocol"] = protocol(measured, data_description(study))
    table.attrs["measured"] = len(latest)

    paths = {"csv": out_dir / f"{name}_table.csv", "md": out_dir / f"{name}_table.md"}
    table.to_csv(paths["csv"], index=False)
    text = [f"# {name}: ablation table", "", f"Measured: {table.attrs['protocol']}.", "", format_markdown(table),
            *_kendall_lines(kendall), ""]
    text += [f"- {col}: not compared with the paper: {why}." for col, why in not_compared.items()]
    text.append(f"{len(latest)} of {len(rows)} rows measured. "
                "`*_rel` columns are ratios to the first row having both the measured and the paper value.")
    paths["md"].write_text("\n".join(text) + "\n")
    return table, paths


def _hw(size: Any) -> tuple[int, int] | None:
    """(H, W) of an input size given as [H, W] or [N, C, H, W]; None when absent or malformed."""
    if not isinstance(size, (list, tuple)) or len(size) not in (2, 4):
        return None
    try:
        return int(size[-2]), int(size[-1])
    except (TypeError, ValueError):
        return None


def trials_frame_of(trials: Sequence[FrozenTrial]) -> pd.DataFrame:
    """The scalar user attributes of ``trials`` (``number``, ``state`` and, e.g., ``device``, ``input_size``),
    one row each — enough for :func:`protocol`."""
    records = [{"number": t.number, "state": t.state.name,
                **{k: _compact(v) for k, v in t.user_attrs.items() if k not in _NON_COLUMN_ATTRS}} for t in trials]
    return pd.DataFrame.from_records(records, columns=None if records else ["number", "state"])


#: table_text's columns: table column → (header, scale)
_TEXT_COLUMNS: dict[str, tuple[str, float]] = {
    "params": ("params M", 1e-6),
    "madds_G": ("GMAdds", 1.0),
    "latency_ms": ("ms", 1.0),
    "fps": ("fps", 1.0),
    "miou_pct": ("mIoU %", 1.0),
    "pixel_acc_pct": ("pix acc %", 1.0),
    "mean_acc_pct": ("mean acc %", 1.0),
}


def table_text(table: pd.DataFrame, name: str, label_width: int = 24) -> str:
    """An ablation table (from :func:`ablation_table`) for a terminal: the protocol, one line per row with our
    value and, in brackets, the paper's where it is compared like with like, Kendall's τ, and what was not
    compared. Always shows params, multiply-adds, latency and mIoU; fps, pixel and mean accuracy when the paper
    gives them."""
    not_compared = table.attrs.get("not_compared", {})
    shown = [c for c in _TEXT_COLUMNS if c in ("params", "madds_G", "latency_ms", "miou_pct") or f"paper_{c}" in table]
    headers = ["row"]
    paper_shown = {}
    for col in shown:
        header, _ = _TEXT_COLUMNS[col]
        paper_shown[col] = f"paper_{col}" in table and col not in not_compared and table[f"paper_{col}"].notna().any()
        headers.append(f"{header} (paper)" if paper_shown[col] else header)
    rows = []
    for _, rec in table.iterrows():
        cells = [_short(rec["label"], label_width)]
        for col in shown:
            scale = _TEXT_COLUMNS[col][1]
            cell = fmt_num(_number(rec[col]) * scale)
            if paper_shown[col] and not pd.isna(rec[f"paper_{col}"]):
                cell += f" ({fmt_num(_number(rec[f'paper_{col}']) * scale)})"
            cells.append(cell)
        rows.append(cells)
    lines = [f"{name}: {table.attrs.get('measured', '?')} of {len(table)} rows measured",
             f"measured: {table.attrs.get('protocol', _DASH)}", "",
             aligned(headers, rows, [False, *([True] * len(shown))]), ""]
    kendall = table.attrs.get("kendall", {})
    if kendall:
        lines.append("Kendall τ, paper vs ours: " + ", ".join(
            f"{_TEXT_COLUMNS.get(c, (c,))[0]} {k['tau']:.2f} (n={int(k['n'])})" for c, k in kendall.items()))
    for col, why in not_compared.items():
        lines.append(f"{_TEXT_COLUMNS.get(col, (col,))[0]}: not compared with the paper, {why}")
    return "\n".join(lines).rstrip("\n")
