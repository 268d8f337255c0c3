"""The Pareto front of a study: which trials are on it (feasible, non-dominated, ties kept; top-rung trials only
in a multi-fidelity study), the front as a terminal table, and its export as CSV, JSON, Markdown and PNG."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import moocore
import numpy as np
import optuna
import pandas as pd
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from archsearch.report.frames import (
    DASH,
    FINISHED_STATES,
    arrows,
    column_header,
    data_description,
    knob_labels,
    objectives,
    protocol,
    summary,
    terminal_value,
    trials_frame,
)
from archsearch.report.plot import plot_pareto
from archsearch.report.trust import statement as trust_statement
from archsearch.spec import metrics
from archsearch.util.formatting import markdown_table, text_table


def is_feasible(trial: FrozenTrial) -> bool:
    """Whether ``trial`` meets every constraint it stores (Optuna's convention: a value ≤ 0 is met)."""
    return all(v <= 0 for v in trial.constraints.values())


def non_dominated(trials: Sequence[FrozenTrial], directions: Sequence[StudyDirection]) -> list[FrozenTrial]:
    """The trials of ``trials`` (each with ``values``) that no other one dominates, ties kept (moocore's
    ``is_nondominated`` with ``keep_weakly``), in their order."""
    if not trials:
        return []
    maximise = [d == StudyDirection.MAXIMIZE for d in directions]
    values = np.array([t.values for t in trials], dtype=float)
    keep = moocore.is_nondominated(values, maximise=maximise, keep_weakly=True)
    return [t for t, k in zip(trials, keep, strict=True) if k]


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The front of ``study``, as Optuna's ``study.best_trials`` defines it: the non-dominated COMPLETE trials,
    ties kept; when any trial stores constraint values (``trial.set_constraint``, as a trial does before its
    latency gate) only the feasible ones. In a multi-fidelity study, over the trials that reached the top rung
    only — a trial stopped at a lower rung holds low-budget values."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    full = [t for t in trials if t.user_attrs.get("stopped_at_rung") is None]
    if any(t.constraints for t in study.get_trials(deepcopy=False)):
        full = [t for t in full if is_feasible(t)]
    return non_dominated(full, study.directions)


def pareto_front(study: optuna.Study, frame: pd.DataFrame | None = None) -> pd.DataFrame:
    """The rows of :func:`trials_frame` (``frame``, when the caller has it already) of the trials of
    :func:`best_trials`, sorted by the first objective (ascending) then number."""
    frame = trials_frame(study) if frame is None else frame
    first = next(iter(objectives(study)))
    front = frame[frame["number"].isin([t.number for t in best_trials(study)])]
    return front.sort_values([first, "number"], kind="stable").reset_index(drop=True)


def front_table(study: optuna.Study, frame: pd.DataFrame | None = None, *, statement: str | None = None) -> str:
    """The Pareto front as a short terminal table: a title line, the line saying how far its mIoU can be trusted
    (``statement``; default: the one stored on the study, :func:`archsearch.report.trust.statement`), then one line
    per front trial with ``trial``, a compact knob label (:func:`knob_labels`), the headline metrics
    (:data:`metrics.HEADLINE`: mIoU, latency, parameters, multiply-adds) and any other objective — at most 8
    columns. ``frame``: the study's :func:`trials_frame`, when the caller has it already."""
    directions = objectives(study)
    frame = trials_frame(study) if frame is None else frame
    finished = int(frame["state"].isin([s.name for s in FINISHED_STATES]).sum()) if len(frame) else 0
    front = pareto_front(study, frame)
    title = f"Pareto front ({arrows(directions)}): {len(front)} of {finished} finished trials"
    if front.empty:
        return f"{title}; no COMPLETE trial yet"
    title += "\n" + (trust_statement(study=study) if statement is None else statement)
    names = [n for n in dict.fromkeys([*metrics.HEADLINE, *directions]) if n in metrics.BY_NAME][:6]
    labels = dict(zip(frame["number"], knob_labels(frame), strict=False))
    cells = pd.DataFrame(
        {"trial": front["number"].astype(int).astype(str), "knobs": [labels.get(n, DASH) for n in front["number"]]}
    )
    for n in names:
        m = metrics.get(n)
        cells[column_header(m)] = [terminal_value(m, v) for v in (front[n] if n in front else [math.nan] * len(front))]
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


def export_pareto(study: optuna.Study, out_dir: Path, name: str, *, statement: str | None = None) -> dict[str, Path]:
    """Write ``<name>_pareto.csv``, ``.json``, ``.md`` and ``.png`` under ``out_dir``; return their paths. The
    Markdown and the PNG's subtitle say how far the front's mIoU can be trusted (``statement``; default: the one
    stored on the study, :func:`archsearch.report.trust.statement`).

    CSV: the front's rows of :func:`trials_frame`. JSON: one record per front trial with every user attribute
    as stored (``knobs`` a real dict, lists as lists). Markdown: the readable columns in their shown units
    (:func:`_display_frame`). PNG: all COMPLETE trials (x = latency, y = mIoU; or the first two objectives), the
    front as a step line, pruned trials as faint x marks at their latency.
    """
    directions = objectives(study)  # an old study without objective names stops here, before anything is written
    statement = trust_statement(study=study) if statement is None else statement
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

    table = markdown_table(_display_frame(front, directions)).rstrip("\n")
    data = data_description(study)
    text = [
        f"# {name}: Pareto front",
        "",
        f"Objectives: {arrows(directions)}. Measured: {protocol(frame, data)}.",
        "",
        f"{statement}.",
        "",
        table,
    ]
    text += ["", summary(frame).replace("\n", "; ") + ".", "", f"![Pareto front]({paths['png'].name})", ""]
    paths["md"].write_text("\n".join(text))

    finished = int(frame["state"].isin([st.name for st in FINISHED_STATES]).sum())
    title = f"{name}: {len(front)} on the front of {finished} finished trials\n{protocol(frame, data)}\n{statement}"
    labels = dict(zip(frame["number"], knob_labels(frame), strict=False))
    front_labels = [f"#{int(n)} {labels.get(n, '')}".strip() for n in front["number"]]
    plot_pareto(frame, front, directions, paths["png"], title, front_labels)
    return paths
