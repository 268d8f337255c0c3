"""Numbers, durations and tables as people read them: significant digits, units, "—" for a missing value, and
the one way every Markdown and terminal table is written (pandas' ``to_markdown``, i.e. tabulate)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

_DASH = "—"


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
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def fmt_ms(ms: Any) -> str:
    """Milliseconds as a plain number with sensible digits and the unit: ``6040 ms``, ``33.5 ms``, ``1.23 ms``."""
    return f"{fmt_num(ms)} ms"


def _cell(value: Any) -> str:
    """One table cell: missing values "—", integers without a decimal point, other numbers with 4 significant
    digits (one decimal from 100 on), text with ``|`` escaped and on one line."""
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
    return _escape(str(value))


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _numeric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


Align = Literal["left", "right"]


def markdown_table(frame: pd.DataFrame, align: Sequence[Align] | None = None) -> str:
    """``frame`` as a Markdown (pipe) table ending in a newline: ``|`` in cells and headers escaped, missing
    values "—", numbers as :func:`_cell` writes them. ``align``: one per column; default right for numeric
    columns, left for the others."""
    cells = frame.astype(object).map(_cell).rename(columns=lambda c: _escape(str(c)))
    colalign = list(align) if align is not None else ["right" if _numeric(frame[c]) else "left" for c in frame.columns]
    return cells.to_markdown(index=False, tablefmt="pipe", disable_numparse=True, colalign=colalign) + "\n"


def text_table(cells: pd.DataFrame, numeric: Sequence[bool]) -> str:
    """A frame of ready-made cell texts as a plain-text table for a terminal (tabulate's plain format): columns
    two spaces apart, the ``numeric`` ones right-aligned, the others left-aligned."""
    align = ["right" if num else "left" for num in numeric]
    # the header goes in as the first row: tabulate pads real headers by 2 more (MIN_PADDING), which would put
    # columns four spaces apart
    rows = pd.concat([pd.DataFrame([list(cells.columns)], columns=cells.columns), cells], ignore_index=True)
    text = rows.to_markdown(index=False, headers=(), tablefmt="plain", disable_numparse=True, colalign=align)
    return "\n".join(line.rstrip() for line in text.splitlines())
