"""Knob declarations → Optuna suggestions; enumerated rows for ablation tables; spaces over several builders.

The declarations (spec ``knobs:``) are the classes of :mod:`archsearch.declarations` — ``{choices: [...]}``
(values may be lists: they are suggested by their JSON text, so the Optuna parameter shows e.g.
``"[24, 48, 96]"``), ``{int: [lo, hi], step, log}``, ``{float: [lo, hi], step, log}``, or ``{each: [decl, ...]}``
for a list knob whose elements are searched separately (parameters ``name[0]``, ``name[1]``, …); each suggests,
lists its distributions and counts itself, and this module delegates to them. A row study suggests the parameter
``row`` (its index).

A space over several builders (spec ``builders:``) suggests the categorical parameter ``builder`` and then that
builder's knobs under builder-qualified names (``ndnet.depths[0]``, ``fast_scnn.pooling``), so distributions of
different builders never clash; a configuration is the builder and its own parameters (:func:`project`).
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import BaseTrial

from archsearch.spec import Spec
from archsearch.spec.declarations import declaration

ROW_PARAM = "row"
#: the parameter of a space over several builders that picks the builder
BUILDER_PARAM = "builder"


def suggest(trial: BaseTrial, name: str, decl: Any) -> Any:
    """One knob value from its declaration."""
    return declaration(decl).suggest(trial, name)


def _prefix(spec: Spec, builder: str) -> str:
    """The parameter-name prefix of ``builder``'s knobs: none in a one-builder space."""
    return f"{builder}." if spec.multi else ""


def sample_config(trial: BaseTrial, spec: Spec) -> tuple[str, dict[str, Any], int | None]:
    """The builder of this trial, its knobs (fixed ones included) and, for a row study, the row index."""
    if spec.rows:
        row = int(trial.suggest_categorical(ROW_PARAM, list(range(len(spec.rows)))))
        builder = spec.row_builder(spec.rows[row])
        return builder, {**spec.fixed_of(builder), **spec.rows[row]["knobs"]}, row
    spaces = spec.spaces()
    builder = str(trial.suggest_categorical(BUILDER_PARAM, list(spaces))) if spec.multi else next(iter(spaces))
    knobs = dict(spaces[builder].fixed)
    for name, decl in spaces[builder].knobs.items():
        knobs[name] = decl.suggest(trial, _prefix(spec, builder) + name)
    return builder, knobs, None


def sample(trial: BaseTrial, spec: Spec) -> tuple[dict[str, Any], int | None]:
    """The knobs of this trial (fixed ones included) and, for a row study, the row index."""
    _, knobs, row = sample_config(trial, spec)
    return knobs, row


def distributions(spec: Spec) -> dict[str, BaseDistribution]:
    """Every Optuna parameter of the spec with its distribution. In a one-builder space this is exactly what
    :func:`sample` suggests; in a space over several builders it is the union (``builder`` and every builder's
    qualified parameters), of which a trial holds the builder's own (:func:`project`)."""
    if spec.rows:
        return {ROW_PARAM: CategoricalDistribution(list(range(len(spec.rows))))}
    spaces = spec.spaces()
    out: dict[str, BaseDistribution] = {}
    if spec.multi:
        out[BUILDER_PARAM] = CategoricalDistribution(list(spaces))
    for builder, space in spaces.items():
        for name, decl in space.knobs.items():
            out.update(decl.distributions(_prefix(spec, builder) + name))
    return out


def project(spec: Spec, params: dict[str, Any]) -> dict[str, Any]:
    """The parameters of one configuration: in a space over several builders, ``builder`` and that builder's
    qualified parameters (those of the other builders dropped); else ``params`` as they are."""
    if not spec.multi or spec.rows or BUILDER_PARAM not in params:
        return dict(params)
    prefix = f"{params[BUILDER_PARAM]}."
    return {k: v for k, v in params.items() if k == BUILDER_PARAM or k.startswith(prefix)}


def builder_of(spec: Spec, params: dict[str, Any]) -> str:
    """The builder of a trial from its Optuna parameters."""
    if spec.rows:
        return spec.row_builder(spec.rows[int(params[ROW_PARAM])])
    if spec.multi:
        return str(params[BUILDER_PARAM])
    assert spec.builder is not None
    return spec.builder


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
        n = round((dist.high - dist.low) / dist.step)
        return [dist.low + i * dist.step for i in range(n + 1)]
    return None


def _product(dists: dict[str, BaseDistribution], fixed: dict[str, Any], limit: int) -> list[dict[str, Any]] | None:
    per = {name: _values(d) for name, d in dists.items()}
    if any(v is None for v in per.values()):
        return None
    total = 1
    for v in per.values():
        total *= len(v or [])
        if total > limit:
            return None
    names = list(per)
    return [
        {**fixed, **dict(zip(names, combo, strict=False))}
        for combo in itertools.product(*(per[n] or [] for n in names))
    ]


def configurations(spec: Spec) -> list[dict[str, Any]] | None:
    """Every configuration (Optuna parameters) of a finite space in declaration order (builder by builder in a
    space over several), or None when the space is continuous or larger than :data:`ENUMERATION_LIMIT`."""
    if not spec.multi or spec.rows:
        return _product(distributions(spec), {}, ENUMERATION_LIMIT)
    out: list[dict[str, Any]] = []
    for builder, space in spec.spaces().items():
        dists: dict[str, BaseDistribution] = {}
        for name, decl in space.knobs.items():
            dists.update(decl.distributions(_prefix(spec, builder) + name))
        configs = _product(dists, {BUILDER_PARAM: builder}, ENUMERATION_LIMIT - len(out))
        if configs is None:
            return None
        out += configs
    return out


def config_key(params: dict[str, Any]) -> str:
    """A canonical text of a configuration's Optuna parameters, for finding a configuration run before."""
    return json.dumps(params, sort_keys=True, default=str)


def grid(spec: Spec) -> dict[str, list[Any]]:
    """The search space as lists of values (choices and int ranges; validated by the spec)."""
    return {name: _values(d) or [] for name, d in distributions(spec).items()}


def size(spec: Spec) -> int | None:
    """Number of distinct configurations when finite (rows, or finite declarations only), else None; a space over
    several builders holds the sum of theirs."""
    if spec.rows:
        return len(spec.rows)
    out = 0
    for space in spec.spaces().values():
        total = 1
        for decl in space.knobs.values():
            n = decl.size()
            if n is None:
                return None
            total *= n
        out += total
    return out
