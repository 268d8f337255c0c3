"""Knob declarations → Optuna suggestions; enumerated rows for ablation tables.

A declaration (spec ``knobs:``) is one of ``{choices: [...]}`` (values may be lists: they are suggested by
their JSON text, so the Optuna parameter shows e.g. ``"[24, 48, 96]"``), ``{int: [lo, hi], step, log}``,
``{float: [lo, hi], log}``, or ``{each: [decl, ...]}`` for a list knob whose elements are searched separately
(parameters ``name[0]``, ``name[1]``, …). A row study suggests the parameter ``row`` (its index).
"""

from __future__ import annotations

import json
from typing import Any

import optuna

from archsearch.spec import Spec

ROW_PARAM = "row"


def _encode(value: Any) -> Any:
    """Optuna categorical values must be scalars: lists and dicts go as their JSON text."""
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else value


def _decode(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        return json.loads(value)
    return value


def _normal(decl: Any) -> dict[str, Any]:
    return {"choices": decl} if isinstance(decl, list) else decl


def suggest(trial: optuna.Trial, name: str, decl: Any) -> Any:
    """One knob value from its declaration."""
    decl = _normal(decl)
    if "choices" in decl:
        return _decode(trial.suggest_categorical(name, [_encode(c) for c in decl["choices"]]))
    if "each" in decl:
        return [suggest(trial, f"{name}[{i}]", d) for i, d in enumerate(decl["each"])]
    if "int" in decl:
        lo, hi = decl["int"]
        return trial.suggest_int(name, lo, hi, step=decl.get("step", 1), log=bool(decl.get("log", False)))
    lo, hi = decl["float"]
    return trial.suggest_float(name, float(lo), float(hi), step=decl.get("step"), log=bool(decl.get("log", False)))


def sample(trial: optuna.Trial, spec: Spec) -> tuple[dict[str, Any], int | None]:
    """The knobs of this trial (fixed ones included) and, for a row study, the row index."""
    if spec.rows:
        row = trial.suggest_categorical(ROW_PARAM, list(range(len(spec.rows))))
        return {**spec.fixed, **spec.rows[row]["knobs"]}, int(row)
    knobs = dict(spec.fixed)
    for name, decl in spec.knobs.items():
        knobs[name] = suggest(trial, name, decl)
    return knobs, None


def grid(spec: Spec) -> dict[str, list[Any]]:
    """The search space for Optuna's GridSampler (choices and int ranges; validated by the spec)."""
    if spec.rows:
        return {ROW_PARAM: list(range(len(spec.rows)))}
    space: dict[str, list[Any]] = {}
    for name, decl in spec.knobs.items():
        decl = _normal(decl)
        if "choices" in decl:
            space[name] = [_encode(c) for c in decl["choices"]]
        else:
            lo, hi = decl["int"]
            space[name] = list(range(lo, hi + 1, decl.get("step", 1)))
    return space


def size(spec: Spec) -> int | None:
    """Number of distinct configurations when finite (rows, or choices/int ranges only), else None."""
    if spec.rows:
        return len(spec.rows)
    total = 1

    def count(decl: Any) -> int | None:
        decl = _normal(decl)
        if "choices" in decl:
            return len(decl["choices"])
        if "each" in decl:
            n = 1
            for d in decl["each"]:
                c = count(d)
                if c is None:
                    return None
                n *= c
            return n
        if "int" in decl:
            lo, hi = decl["int"]
            return len(range(lo, hi + 1, decl.get("step", 1)))
        return None

    for decl in spec.knobs.values():
        c = count(decl)
        if c is None:
            return None
        total *= c
    return total
