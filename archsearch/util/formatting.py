"""Numbers and durations as people read them: significant digits, units, "—" for a missing value."""

from __future__ import annotations

import math
from typing import Any

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
