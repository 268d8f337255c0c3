"""Knob declarations → Optuna suggestions; enumerated rows for ablation tables.

A declaration (spec ``knobs:``) is one of ``{choices: [...]}`` (values may be lists: they are suggested by
their JSON text, so the Optuna parameter shows e.g. ``"[24, 48, 96]"``), ``{int: [lo, hi], step, log}``,
``{float: [lo, hi], log}``, or ``{each: [decl, ...]}`` for a list knob whose elements are searched separately
(parameters ``name[0]``, ``name[1]``, …). A row study suggests the parameter ``row`` (its index).
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

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


def _declared(name: str, decl: Any) -> dict[str, BaseDistribution]:
    decl = _normal(decl)
    if "choices" in decl:
        return {name: CategoricalDistribution([_encode(c) for c in decl["choices"]])}
    if "each" in decl:
        out: dict[str, BaseDistribution] = {}
        for i, d in enumerate(decl["each"]):
            out.update(_declared(f"{name}[{i}]", d))
        return out
    log = bool(decl.get("log", False))
    if "int" in decl:
        lo, hi = decl["int"]
        return {name: IntDistribution(lo, hi, log=log, step=decl.get("step", 1))}
    lo, hi = decl["float"]
    return {name: FloatDistribution(float(lo), float(hi), log=log, step=decl.get("step"))}


def distributions(spec: Spec) -> dict[str, BaseDistribution]:
    """Every Optuna parameter of the spec with its distribution (exactly what :func:`sample` suggests), so a
    trial can be asked with all of them at once (``study.ask(fixed_distributions=...)``)."""
    if spec.rows:
        return {ROW_PARAM: CategoricalDistribution(list(range(len(spec.rows))))}
    out: dict[str, BaseDistribution] = {}
    for name, decl in spec.knobs.items():
        out.update(_declared(name, decl))
    return out


#: A finite space larger than this is not enumerated (the sampler then relies on its own randomness).
ENUMERATION_LIMIT = 200_000


def _values(dist: BaseDistribution) -> list[Any] | None:
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, IntDistribution) and not dist.log:
        return list(range(dist.low, dist.high + 1, dist.step))
    if isinstance(dist, IntDistribution):
        return list(range(dist.low, dist.high + 1))
    if isinstance(dist, FloatDistribution) and dist.step is not None:
        n = int(round((dist.high - dist.low) / dist.step))
        return [dist.low + i * dist.step for i in range(n + 1)]
    return None


def configurations(spec: Spec) -> list[dict[str, Any]] | None:
    """Every configuration (Optuna parameters) of a finite space in declaration order, or None when the
    space is continuous or larger than :data:`ENUMERATION_LIMIT`."""
    dists = distributions(spec)
    per = {name: _values(d) for name, d in dists.items()}
    if any(v is None for v in per.values()):
        return None
    total = 1
    for v in per.values():
        total *= len(v or [])
        if total > ENUMERATION_LIMIT:
            return None
    names = list(per)
    return [dict(zip(names, combo)) for combo in itertools.product(*(per[n] or [] for n in names))]


def config_key(params: dict[str, Any]) -> str:
    """A canonical text of a configuration's Optuna parameters, for finding a configuration run before."""
    return json.dumps(params, sort_keys=True, default=str)


def grid(spec: Spec) -> dict[str, list[Any]]:
    """The search space as lists of values (choices and int ranges; validated by the spec)."""
    return {name: _values(d) or [] for name, d in distributions(spec).items()}


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
