"""Reports rebuilt from an Optuna study alone: trial table, Pareto front, ablation tables, plots.

- :func:`objectives` — the study's objective names (its Optuna metric names) and directions.
- :func:`trials_frame` — one row per trial (objectives, scalar user attributes, ``knob.<name>`` columns, reason).
- :func:`pareto_front` — the rows of Optuna's ``study.best_trials`` (feasible, non-dominated, ties kept; in a
  multi-fidelity study over the trials that reached the top rung).
- :func:`export_pareto` — ``<name>_pareto.{csv,json,md,png}``.
- :func:`ablation_table` — one line per spec row beside the paper's numbers, relative-to-reference ratios and
  Kendall rank correlations; ``<name>_table.{csv,md}``.
- :func:`format_markdown`, :func:`text_table`, :func:`summary` — tables through pandas (``to_markdown``) and
  a short paragraph for the command line.
- :func:`fmt_num`, :func:`fmt_ms` — plain numbers with sensible digits (``6040 ms``, never ``6.04e+03``).
- :func:`front_table` — the front as a short terminal table (at most 8 columns); :func:`table_text` — an
  ablation table that fits a terminal; :func:`protocol` — device, input, dtype, threads and data set.

Every metric's name, unit, scale, label and column comes from the trial record (:mod:`archsearch.record`): the
trials store ``miou`` as a fraction and ``madds`` as a count; the tables show them as ``miou_pct`` in % and
``madds_G`` in G.
"""

from __future__ import annotations

import json
import logging
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import optuna
import pandas as pd
from optuna.study._multi_objective import _get_pareto_front_trials_by_trials, _is_pareto_front
from optuna.trial import FrozenTrial, TrialState
from scipy.stats import kendalltau

from archsearch.spec import metrics
from archsearch.util.errors import ArchsearchError
from archsearch.util.formatting import fmt_num

log = logging.getLogger(__name__)

#: user attributes that never become plain columns (knobs are flattened; the rest are long lists)
_NON_COLUMN_ATTRS = ("knobs", "iou_per_class", "fail_reason", "pruned_reason", "rungs")
#: the input (H, W) at which the four papers count multiply-adds and time their networks (Cityscapes' full
#: resolution); a row's ``paper: {input: [H, W]}`` says otherwise
PAPER_INPUT = (1024, 2048)
_DASH = "—"
#: states of a finished trial (RUNNING and WAITING trials are not counted in titles)
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


# --------------------------------------------------------------------------------------------- numbers


# --------------------------------------------------------------------------------------------- trial table


def _compact(value: Any) -> Any:
    """Scalars unchanged; lists/tuples/dicts as one short string such as ``"[1, 1, 2, 0]"``."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(_compact(v)) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_compact(v)}" for k, v in value.items()) + "}"
    return value


def objectives(study: optuna.Study) -> dict[str, str]:
    """The study's objectives in order, name → ``"maximize"`` or ``"minimize"``: the names are the study's Optuna
    metric names (:mod:`archsearch.search.session` sets them when it creates the study), the directions the study's."""
    names = study.metric_names
    if names is None:
        raise ArchsearchError(
            f"study {study.study_name!r} stores no objective names (Optuna metric names): it was made by an older "
            "archsearch; run the spec again under a new name (--set name=NEW)"
        )
    return {name: d.name.lower() for name, d in zip(names, study.directions, strict=False)}


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial of ``study``.

    Columns: ``number``, ``state`` (the state's name), one column per objective named as in
    :func:`objectives`, taken from ``trial.values`` for COMPLETE trials and from the user attribute of that name
    otherwise, every scalar user attribute (short lists such as ``input_size`` rendered compactly), the resolved
    knobs flattened as ``knob.<name>`` columns (lists rendered as ``"[1, 1, 2, 0]"``), ``reason`` (fail or
    pruned reason), ``violation`` (the sum of the trial's positive Optuna constraint values, 0 when it meets every
    constraint or has none) and ``feasible`` (``violation == 0``).
    """
    names = list(objectives(study))
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


def pareto_front(study: optuna.Study, frame: pd.DataFrame | None = None) -> pd.DataFrame:
    """The rows of :func:`trials_frame` (``frame``, when the caller has it already) of Optuna's
    ``study.best_trials``, sorted by the first objective (ascending) then number.

    ``best_trials`` keeps the non-dominated COMPLETE trials, ties included; when any trial stores constraint values
    (``trial.set_constraint``, as a trial does before its latency gate) only the feasible ones (every value ≤ 0).
    """
    frame = trials_frame(study) if frame is None else frame
    first = next(iter(objectives(study)))
    front = frame[frame["number"].isin([t.number for t in best_trials(study)])]
    return front.sort_values([first, "number"], kind="stable").reset_index(drop=True)


def _non_dominated_2d(points: pd.DataFrame, directions: Mapping[str, str]) -> np.ndarray:
    """Mask of the rows of ``points`` that no other row dominates in the columns ``directions`` names (ties kept):
    the staircase of a 3+-objective front projected on the plot's two axes. Optuna's own test
    (``optuna.study._multi_objective._is_pareto_front``, the one behind ``best_trials``; private, as Optuna offers
    no public non-dominance test of plain values)."""
    losses = np.column_stack(
        [points[n].to_numpy(dtype=float) * (-1.0 if d == "maximize" else 1.0) for n, d in directions.items()]
    )
    return np.asarray(_is_pareto_front(losses, assume_unique_lexsorted=False), dtype=bool)


def top_rung(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``frame`` that trained the full proxy budget: multi-fidelity trials stopped at a lower rung
    (column ``stopped_at_rung`` set; archsearch.fidelity) hold low-budget values and are left out of fronts and
    best values. A frame without that column is returned whole."""
    if "stopped_at_rung" not in frame.columns:
        return frame
    return frame[frame["stopped_at_rung"].isna()]


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Optuna's ``study.best_trials``; in a multi-fidelity study, the same front (Optuna's, constraints included)
    over the trials that reached the top rung only — a trial stopped at a lower rung holds low-budget values."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    full = [t for t in trials if t.user_attrs.get("stopped_at_rung") is None]
    if len(full) == len(trials):
        return study.best_trials
    constrained = any(t.constraints for t in study.get_trials(deepcopy=False))
    return _get_pareto_front_trials_by_trials(full, study.directions, consider_constraint=constrained)


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


def _numeric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def format_markdown(frame: pd.DataFrame) -> str:
    """``frame`` as a Markdown table (pandas' ``to_markdown``, tabulate's pipe format): numbers right-aligned,
    missing values as "—"."""
    cells = frame.astype(object).map(_cell).rename(columns=lambda c: str(c).replace("|", "\\|"))
    align = ["right" if _numeric(frame[c]) else "left" for c in frame.columns]
    return cells.to_markdown(index=False, tablefmt="pipe", disable_numparse=True, colalign=align) + "\n"


def text_table(cells: pd.DataFrame, numeric: Sequence[bool]) -> str:
    """A frame of ready-made cell texts as a plain-text table (``to_markdown``, tabulate's plain format): columns
    two spaces apart, the ``numeric`` ones right-aligned, the others left-aligned."""
    align = ["right" if num else "left" for num in numeric]
    # the header goes in as the first row: tabulate pads real headers by 2 more (MIN_PADDING), which would put
    # columns four spaces apart
    rows = pd.concat([pd.DataFrame([list(cells.columns)], columns=cells.columns), cells], ignore_index=True)
    text = rows.to_markdown(index=False, headers=(), tablefmt="plain", disable_numparse=True, colalign=align)
    return "\n".join(line.rstrip() for line in text.splitlines())


def _best(done: pd.DataFrame, name: str, word: str, pick: str) -> str | None:
    """``best mIoU 60.00 % (trial 3)``: the trial of ``done`` whose metric ``name`` is ``pick`` (idxmax/idxmin)."""
    if name not in done or not done[name].notna().any():
        return None
    m = metrics.get(name)
    best = done.loc[getattr(done[name].astype(float), pick)()]
    value = fmt_num(m.shown(best[name]), 4 if m.unit == "%" else 3)  # accuracies with two decimals, as the papers
    return f"{word} {m.label} {value} {m.unit} (trial {int(best['number'])})".replace("  ", " ")


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
    lines += [
        line for line in (_best(done, "miou", "best", "idxmax"), _best(done, "latency_ms", "fastest", "idxmin")) if line
    ]
    return "\n".join(lines)


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
        parts = [f"{c[len('knob.') :]}={_knob_value(row[c])}" for c in varying if not pd.isna(row[c])]
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


def _header(m: metrics.Metric) -> str:
    """A terminal table's column header: ``mIoU %``, ``latency ms``, ``parameters M`` (:func:`metrics.compact`);
    the label alone when the unit is the label (``fps``)."""
    unit = metrics.compact(m)[0]
    return f"{m.label} {unit}" if unit and unit != m.label else m.label


def _terminal(m: metrics.Metric, value: Any) -> str:
    """A stored value of ``m`` in a terminal table's unit, with sensible digits."""
    return fmt_num(_number(value) * metrics.compact(m)[1])


def _arrows(directions: Mapping[str, str]) -> str:
    return ", ".join(f"{n} {'↑' if d == 'maximize' else '↓'}" for n, d in directions.items())


def front_table(study: optuna.Study, frame: pd.DataFrame | None = None) -> str:
    """The Pareto front as a short terminal table: a title line, then one line per front trial with ``trial``,
    a compact knob label (:func:`knob_labels`), the headline metrics (:data:`metrics.HEADLINE`: mIoU, latency,
    parameters, multiply-adds) and any other objective — at most 8 columns. ``frame``: the study's
    :func:`trials_frame`, when the caller has it already."""
    directions = objectives(study)
    frame = trials_frame(study) if frame is None else frame
    finished = int(frame["state"].isin([s.name for s in FINISHED_STATES]).sum()) if len(frame) else 0
    front = pareto_front(study, frame)
    title = f"Pareto front ({_arrows(directions)}): {len(front)} of {finished} finished trials"
    if front.empty:
        return f"{title}; no COMPLETE trial yet"
    names = [n for n in dict.fromkeys([*metrics.HEADLINE, *directions]) if n in metrics.BY_NAME][:6]
    labels = dict(zip(frame["number"], knob_labels(frame), strict=False))
    cells = pd.DataFrame(
        {"trial": front["number"].astype(int).astype(str), "knobs": [labels.get(n, _DASH) for n in front["number"]]}
    )
    for n in names:
        m = metrics.get(n)
        cells[_header(m)] = [_terminal(m, v) for v in (front[n] if n in front else [math.nan] * len(front))]
    return title + "\n" + text_table(cells, [True, False, *([True] * len(names))])


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


def _display_frame(front: pd.DataFrame, directions: Mapping[str, str]) -> pd.DataFrame:
    """The columns worth reading in a Markdown Pareto table: the objectives, then the record's headline and
    table metrics, each in its shown unit under its column name (``miou_pct``, ``madds_G``), then the row label
    and the knobs."""
    wanted = ["number", *directions, *metrics.HEADLINE, *(n for n in metrics.TABLE if n in metrics.BY_NAME)]
    wanted = [*dict.fromkeys(wanted), "row_label", *(c for c in front.columns if c.startswith("knob."))]
    shown = front[[c for c in wanted if c in front.columns]].copy()
    renames: dict[str, str] = {}
    for col in shown.columns:
        if col in metrics.BY_NAME:
            m = metrics.get(col)
            shown[col] = shown[col].astype(float) * m.scale
            renames[col] = m.column
    return shown.rename(columns=renames)


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


def _plot_pareto(
    frame: pd.DataFrame,
    front: pd.DataFrame,
    directions: Mapping[str, str],
    path: Path,
    title: str,
    labels: Sequence[str] = (),
) -> None:
    """All COMPLETE trials, the front (each point labelled with ``labels``, in ``front``'s order) as a step line,
    pruned trials as x marks along the bottom; ``title`` may hold a second line (the protocol)."""
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
            on_plane = _non_dominated_2d(front, {n: directions[n] for n in (x_name, y_name)})
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


def export_pareto(study: optuna.Study, out_dir: Path, name: str) -> dict[str, Path]:
    """Write ``<name>_pareto.csv``, ``.json``, ``.md`` and ``.png`` under ``out_dir``; return their paths.

    CSV: the front's rows of :func:`trials_frame`. JSON: one record per front trial with every user attribute
    as stored (``knobs`` a real dict, lists as lists). Markdown: the readable columns in their shown units
    (:func:`_display_frame`). PNG: all COMPLETE trials (x = latency, y = mIoU; or the first two objectives), the
    front as a step line, pruned trials as faint x marks at their latency.
    """
    directions = objectives(study)  # an old study without objective names stops here, before anything is written
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = trials_frame(study)
    front = pareto_front(study, frame)
    paths = {ext: out_dir / f"{name}_pareto.{ext}" for ext in ("csv", "json", "md", "png")}

    front.to_csv(paths["csv"], index=False)

    by_number: dict[int, FrozenTrial] = {t.number: t for t in study.get_trials(deepcopy=False)}
    records = []
    for number in front["number"]:
        trial = by_number[int(number)]
        rec: dict[str, Any] = {"number": trial.number, "state": trial.state.name}
        rec.update(dict(zip(directions, trial.values or (), strict=False)))
        rec.update({k: v for k, v in trial.user_attrs.items() if k not in rec})
        records.append(_json_safe(rec))
    paths["json"].write_text(json.dumps(records, indent=2, allow_nan=False) + "\n")

    table = format_markdown(_display_frame(front, directions)).rstrip("\n")
    data = data_description(study)
    text = [
        f"# {name}: Pareto front",
        "",
        f"Objectives: {_arrows(directions)}. Measured: {protocol(frame, data)}.",
        "",
        table,
    ]
    text += ["", summary(frame).replace("\n", "; ") + ".", "", f"![Pareto front]({paths['png'].name})", ""]
    paths["md"].write_text("\n".join(text))

    finished = int(frame["state"].isin([st.name for st in FINISHED_STATES]).sum())
    title = f"{name}: {len(front)} on the front of {finished} finished trials\n{protocol(frame, data)}"
    labels = dict(zip(frame["number"], knob_labels(frame), strict=False))
    front_labels = [f"#{int(n)} {labels.get(n, '')}".strip() for n in front["number"]]
    _plot_pareto(frame, front, directions, paths["png"], title, front_labels)
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
            log.warning(
                "trial %d: row %d is labelled %r in the study but %r in the spec; ignored",
                trial.number,
                index,
                recorded,
                _row_label(rows[index], index),
            )
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


def _measured(m: metrics.Metric, attrs: Mapping[str, Any]) -> float:
    """A row's value of ``m`` in its shown unit: stored ones from the trial, ``fps`` from its latency."""
    if m.name == "fps":
        latency = _number(attrs.get("latency_ms"))
        return 1000.0 / latency if latency > 0 else math.nan
    return m.shown(_number(attrs.get(m.name)))


def ablation_table(
    study: optuna.Study, rows: Sequence[Mapping[str, Any]], out_dir: Path, name: str
) -> tuple[pd.DataFrame, dict[str, Path]]:
    """One line per spec row beside the paper's numbers; writes ``<name>_table.csv`` and ``<name>_table.md``.

    Columns: ``label``, ``knobs`` (the row's knobs), ``trial`` (number of the latest COMPLETE trial recorded
    for that row, matched by the ``row`` user attribute), then the metrics of :data:`metrics.TABLE` under their
    column names in their shown units (``params``, ``madds_G``, ``latency_ms``, ``miou_pct``, ``pixel_acc_pct``,
    ``mean_acc_pct``; the derived ``fps`` = 1000 / latency_ms only when a row's ``paper:`` gives it). A ``paper:``
    key names a metric by its name (stored units: ``madds`` as a count) or its column (``miou_pct``); for each
    one present: ``paper_<col>`` and the ratios to the reference row (the first row having both values; NaN until
    one has) ``<col>_rel`` (ours) and ``paper_<col>_rel`` (paper) — the papers' ablations compare ratios. Other
    paper keys become ``paper_<key>`` columns. Rows not yet run are NaN ("—" in Markdown).

    Under the Markdown table, Kendall's τ between the paper's and our values for every compared column with at
    least 3 rows having both; the same numbers are in ``frame.attrs["kendall"]``
    (``{column: {"tau", "p", "n"}}``).

    Like with like: the metrics of :data:`metrics.INPUT_DEPENDENT` (multiply-adds, latency, fps) depend on the
    input size, so for them a row is compared (ratios, Kendall's τ) only when its trial was measured at the
    paper's input (``paper: {input: [H, W]}``, default :data:`PAPER_INPUT`); ``frame.attrs["not_compared"]`` maps
    such columns to the reason, and the paper's values stay in the ``paper_<col>`` columns. The Markdown states
    the measurement protocol (:func:`protocol`). Nothing is written to the study.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    latest = _latest_per_row(study, rows)
    papers = [dict(row.get("paper") or {}) for row in rows]
    keys = list(dict.fromkeys(k for p in papers for k in p))
    compared = {m.name: k for k in reversed(keys) if (m := metrics.paper_metric(k)) is not None}  # first key wins
    extra = [k for k in keys if metrics.paper_metric(k) is None]
    shown = [m for m in map(metrics.metric, metrics.TABLE) if m.name in metrics.BY_NAME or m.name in compared]

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
        for m in shown:
            rec[m.column] = _measured(m, attrs)
            if m.name in compared:  # a paper value under the metric's name is in stored units, else in shown ones
                key = compared[m.name]
                rec[f"paper_{m.column}"] = _number(papers[index].get(key)) * (m.scale if key == m.name else 1.0)
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
    for m in shown:
        col = m.column
        columns.append(col)
        if m.name not in compared or table.empty:
            continue
        paper_col = f"paper_{col}"
        columns += [paper_col, f"{col}_rel", f"{paper_col}_rel"]
        both = np.isfinite(table[col]) & np.isfinite(table[paper_col])
        if m.name in metrics.INPUT_DEPENDENT:
            if (both & ~comparable).any():
                not_compared[col] = "measured at " + ", ".join(mismatched)
            both &= comparable
        if not both.any():
            continue  # the ratio columns stay NaN until some row has both values
        ref = int(np.flatnonzero(both.to_numpy())[0])  # the first row having both values
        for c in (col, paper_col):
            values = table[c].to_numpy(dtype=float)
            table[f"{c}_rel"] = values / values[ref]
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
    text = [
        f"# {name}: ablation table",
        "",
        f"Measured: {table.attrs['protocol']}.",
        "",
        format_markdown(table),
        *_kendall_lines(kendall),
        "",
    ]
    text += [f"- {col}: not compared with the paper: {why}." for col, why in not_compared.items()]
    text.append(
        f"{len(latest)} of {len(rows)} rows measured. "
        "`*_rel` columns are ratios to the first row having both the measured and the paper value."
    )
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
    records = [
        {
            "number": t.number,
            "state": t.state.name,
            **{k: _compact(v) for k, v in t.user_attrs.items() if k not in _NON_COLUMN_ATTRS},
        }
        for t in trials
    ]
    return pd.DataFrame.from_records(records, columns=None if records else ["number", "state"])


def table_text(table: pd.DataFrame, name: str, label_width: int = 24) -> str:
    """An ablation table (from :func:`ablation_table`) for a terminal: the protocol, one line per row with our
    value and, in brackets, the paper's where it is compared like with like, Kendall's τ, and what was not
    compared. Always shows the headline metrics (:data:`metrics.HEADLINE`); the other metrics of the table when
    the paper gives them."""
    not_compared = table.attrs.get("not_compared", {})
    by_column = {m.column: m for m in map(metrics.metric, metrics.TABLE)}
    shown = [
        m
        for m in by_column.values()
        if m.column in table and (m.name in metrics.HEADLINE or f"paper_{m.column}" in table)
    ]
    cells = pd.DataFrame({"row": [_short(label, label_width) for label in table["label"]]})
    for m in shown:
        col, paper_col = m.column, f"paper_{m.column}"
        with_paper = paper_col in table and col not in not_compared and table[paper_col].notna().any()
        values = [_terminal(m, _number(v) / m.scale) for v in table[col]]  # the table holds shown values
        if with_paper:
            values = [
                v if pd.isna(p) else f"{v} ({_terminal(m, _number(p) / m.scale)})"
                for v, p in zip(values, table[paper_col], strict=False)
            ]
        cells[f"{_header(m)} (paper)" if with_paper else _header(m)] = values
    lines = [
        f"{name}: {table.attrs.get('measured', '?')} of {len(table)} rows measured",
        f"measured: {table.attrs.get('protocol', _DASH)}",
        "",
        text_table(cells, [False, *([True] * len(shown))]),
        "",
    ]
    kendall = table.attrs.get("kendall", {})
    if kendall:
        lines.append(
            textwrap.fill(
                "Kendall τ, paper vs ours: "
                + ", ".join(
                    f"{_header(by_column[c]) if c in by_column else c} {k['tau']:.2f} (n={int(k['n'])})"
                    for c, k in kendall.items()
                ),
                100,
                subsequent_indent="  ",
                break_long_words=False,
            )
        )
    for col, why in not_compared.items():
        lines.append(f"{_header(by_column[col]) if col in by_column else col}: not compared with the paper, {why}")
    return "\n".join(lines).rstrip("\n")
