"""Ablation tables: one line per spec row beside the paper's numbers, ratios to a reference row and Kendall's
rank correlation between the paper's and the measured orderings; written as CSV and Markdown, shown in a
terminal."""

from __future__ import annotations

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

from archsearch.report.frames import (
    DASH,
    column_header,
    compact,
    data_description,
    number,
    protocol,
    short,
    terminal_value,
    trials_frame_of,
)
from archsearch.report.trust import statement as trust_statement
from archsearch.spec import metrics
from archsearch.util.formatting import markdown_table, text_table

log = logging.getLogger(__name__)

#: the input (H, W) at which the four papers count multiply-adds and time their networks (Cityscapes' full
#: resolution); a row's ``paper: {input: [H, W]}`` says otherwise
PAPER_INPUT = (1024, 2048)


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
        latency = number(attrs.get("latency_ms"))
        return 1000.0 / latency if latency > 0 else math.nan
    return m.shown(number(attrs.get(m.name)))


def _hw(size: Any) -> tuple[int, int] | None:
    """(H, W) of an input size given as [H, W] or [N, C, H, W]; None when absent or malformed."""
    if not isinstance(size, (list, tuple)) or len(size) not in (2, 4):
        return None
    try:
        return int(size[-2]), int(size[-1])
    except (TypeError, ValueError):
        return None


def ablation_table(
    study: optuna.Study, rows: Sequence[Mapping[str, Any]], out_dir: Path, name: str, *, statement: str | None = None
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
    the measurement protocol (:func:`protocol`) and how far the mIoU can be trusted (``statement``, also in
    ``frame.attrs["calibration"]``; default: the one stored on the study, :func:`archsearch.report.trust.statement`).
    Nothing is written to the study.
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
            "knobs": ", ".join(f"{k}={compact(v)}" for k, v in (row.get("knobs") or {}).items()),
            "trial": trial.number if trial is not None else math.nan,
        }
        for m in shown:
            rec[m.column] = _measured(m, attrs)
            if m.name in compared:  # a paper value under the metric's name is in stored units, else in shown ones
                key = compared[m.name]
                rec[f"paper_{m.column}"] = number(papers[index].get(key)) * (m.scale if key == m.name else 1.0)
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
    table.attrs["calibration"] = trust_statement(study=study) if statement is None else statement

    paths = {"csv": out_dir / f"{name}_table.csv", "md": out_dir / f"{name}_table.md"}
    table.to_csv(paths["csv"], index=False)
    text = [
        f"# {name}: ablation table",
        "",
        f"Measured: {table.attrs['protocol']}.",
        "",
        f"{table.attrs['calibration']}.",
        "",
        markdown_table(table),
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
    cells = pd.DataFrame({"row": [short(label, label_width) for label in table["label"]]})
    for m in shown:
        col, paper_col = m.column, f"paper_{m.column}"
        with_paper = paper_col in table and col not in not_compared and table[paper_col].notna().any()
        values = [terminal_value(m, number(v) / m.scale) for v in table[col]]  # the table holds shown values
        if with_paper:
            values = [
                v if pd.isna(p) else f"{v} ({terminal_value(m, number(p) / m.scale)})"
                for v, p in zip(values, table[paper_col], strict=False)
            ]
        cells[f"{column_header(m)} (paper)" if with_paper else column_header(m)] = values
    lines = [
        f"{name}: {table.attrs.get('measured', '?')} of {len(table)} rows measured",
        f"measured: {table.attrs.get('protocol', DASH)}",
        *([table.attrs["calibration"]] if table.attrs.get("calibration") else []),
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
                    f"{column_header(by_column[c]) if c in by_column else c} {k['tau']:.2f} (n={int(k['n'])})"
                    for c, k in kendall.items()
                ),
                100,
                subsequent_indent="  ",
                break_long_words=False,
            )
        )
    for col, why in not_compared.items():
        lines.append(
            f"{column_header(by_column[col]) if col in by_column else col}: not compared with the paper, {why}"
        )
    return "\n".join(lines).rstrip("\n")
