"""A study as tables: one row per trial (objectives, scalar user attributes, ``knob.<name>`` columns, reason),
the study's objectives, compact knob labels, the measurement protocol and a short summary for the command line.

Every metric's name, unit, scale, label and column comes from the trial record (:mod:`archsearch.spec.metrics`):
the trials store ``miou`` as a fraction and ``madds`` as a count; the tables show them as ``miou_pct`` in % and
``madds_G`` in G.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from archsearch.spec import metrics
from archsearch.util.errors import ArchsearchError
from archsearch.util.formatting import fmt_num

#: user attributes that never become plain columns (knobs are flattened; the rest are long lists)
NON_COLUMN_ATTRS = ("knobs", "iou_per_class", "fail_reason", "pruned_reason", "rungs")
DASH = "—"
#: states of a finished trial (RUNNING and WAITING trials are not counted in titles)
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def compact(value: Any) -> Any:
    """Scalars unchanged; lists/tuples/dicts as one short string such as ``"[1, 1, 2, 0]"``."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(compact(v)) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {compact(v)}" for k, v in value.items()) + "}"
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
            if key in NON_COLUMN_ATTRS or key in names:
                continue
            rec[key] = compact(value)
            attr_cols[key] = None
        for key, value in (attrs.get("knobs") or {}).items():
            rec[f"knob.{key}"] = compact(value)
            knob_cols[f"knob.{key}"] = None
        rec["reason"] = attrs.get("fail_reason", attrs.get("pruned_reason"))
        violation = sum(v for v in trial.constraints.values() if v > 0)  # Optuna's constraint values (≤ 0: met)
        rec["violation"] = violation
        rec["feasible"] = violation == 0
        records.append(rec)
    columns = ["number", "state", *names, *attr_cols, *knob_cols, "reason", "violation", "feasible"]
    return pd.DataFrame.from_records(records, columns=columns)


def top_rung(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``frame`` that trained the full proxy budget: multi-fidelity trials stopped at a lower rung
    (column ``stopped_at_rung`` set; :mod:`archsearch.search.rungs`) hold low-budget values and are left out of
    fronts and best values. A frame without that column is returned whole."""
    if "stopped_at_rung" not in frame.columns:
        return frame
    return frame[frame["stopped_at_rung"].isna()]


def trials_frame_of(trials: Sequence[FrozenTrial]) -> pd.DataFrame:
    """The scalar user attributes of ``trials`` (``number``, ``state`` and, e.g., ``device``, ``input_size``),
    one row each — enough for :func:`protocol`."""
    records = [
        {
            "number": t.number,
            "state": t.state.name,
            **{k: compact(v) for k, v in t.user_attrs.items() if k not in NON_COLUMN_ATTRS},
        }
        for t in trials
    ]
    return pd.DataFrame.from_records(records, columns=None if records else ["number", "state"])


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


def short(text: str, limit: int) -> str:
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
            return short(row["row_label"], limit)
        parts = [f"{c[len('knob.') :]}={_knob_value(row[c])}" for c in varying if not pd.isna(row[c])]
        return short(" ".join(parts), limit) or DASH

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
    where = ", ".join(devices) or DASH
    if threads and not any("thread" in d for d in devices):
        where += f" ({', '.join(threads)} threads)"
    parts.append(f"latency on {where}")
    inputs = [_input_text(v) for v in _distinct(measured, "input_size")]
    parts.append(f"input {', '.join(inputs) or DASH}")
    parts += [", ".join(_distinct(measured, "dtype"))] if _distinct(measured, "dtype") else []
    if data:
        parts.append(data)
    return " · ".join(parts)


def number(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def column_header(m: metrics.Metric) -> str:
    """A terminal table's column header: ``mIoU %``, ``latency ms``, ``parameters M`` (:func:`metrics.compact`);
    the label alone when the unit is the label (``fps``)."""
    unit = metrics.compact(m)[0]
    return f"{m.label} {unit}" if unit and unit != m.label else m.label


def terminal_value(m: metrics.Metric, value: Any) -> str:
    """A stored value of ``m`` in a terminal table's unit, with sensible digits."""
    return fmt_num(number(value) * metrics.compact(m)[1])


def arrows(directions: Mapping[str, str]) -> str:
    return ", ".join(f"{n} {'↑' if d == 'maximize' else '↓'}" for n, d in directions.items())
