"""The rung budgets of ``search.fidelity`` and what a spec's multi-fidelity setting cannot serve."""

from __future__ import annotations

import itertools
from typing import Any

from archsearch import builders
from archsearch.spec.declarations import declaration_values


def budgets(iterations: int, eta: int, rungs: int) -> list[int]:
    """Cumulative training iterations at the end of each rung: ``round(iterations / eta ** (rungs − 1 − k))``
    (at least 1), k = 0 … rungs − 1; the last is ``iterations``. ValueError when they are not strictly
    increasing (too many rungs for the budget) or an argument is out of range."""
    if iterations < 1 or eta < 2 or rungs < 1:
        raise ValueError(
            f"iterations {iterations}, eta {eta}, rungs {rungs}: need iterations >= 1, eta >= 2, rungs >= 1"
        )
    out = [max(1, round(iterations / eta ** (rungs - 1 - k))) for k in range(rungs)]
    if any(a >= b for a, b in itertools.pairwise(out)):
        raise ValueError(
            f"rung budgets {out} are not strictly increasing: {rungs} rungs of eta {eta} need "
            f"proxy.iterations >= about {eta ** (rungs - 1)}; use fewer rungs or more iterations"
        )
    return out


def rung_budgets(spec: Any) -> list[int] | None:
    """The spec's rung budgets, or None when ``search.fidelity`` is off (full-budget trials)."""
    f = getattr(spec.search, "fidelity", None)
    if f is None:
        return None
    return budgets(int(spec.proxy.iterations), int(f.eta), int(f.rungs))


def problem(spec: Any) -> tuple[str, str] | None:
    """Why the spec's ``search.fidelity`` cannot be used, as (key, message), or None (eta ≥ 2 and rungs ≥ 1 are
    the spec's own checks). Checked: strictly increasing rung budgets, a search (``knobs``) rather than an
    ablation table (``rows``), and no
    progressive pruning (a prunable builder at a keep rate below 1 trains in pruning phases, not in rungs) when
    there is more than one trained rung (``rungs: 1`` trains the full budget as usual, e.g. after a zero-cost
    rung)."""
    f = getattr(spec.search, "fidelity", None)
    if f is None:
        return None
    try:
        budgets(int(spec.proxy.iterations), f.eta, f.rungs)
    except ValueError as exc:
        return "search.fidelity", str(exc)
    if spec.rows:
        return (
            "search.fidelity",
            "multi-fidelity search needs searched knobs; an ablation table (rows) trains every row in full",
        )
    if f.rungs == 1:  # one trained rung is the full budget, trained as usual (pruning phases included)
        return None

    for name, space in spec.spaces().items():
        knob = builders.get(name).prune_knob
        if knob is None:
            continue
        if knob in space.knobs:
            rates = declaration_values(space.knobs[knob])
        else:
            rates = [{**builders.get(name).defaults(), **space.fixed}.get(knob, 1.0)]
        if any(float(r) < 1.0 for r in rates if r is not None):
            return (
                "search.fidelity",
                f"builder {name!r} with {knob} < 1 trains in pruning phases, not in rungs; "
                f"set {knob}: 1, remove search.fidelity, or screen only (zero_cost with rungs: 1)",
            )
    return None
