"""Multi-fidelity multi-objective search: rung budgets and the promotion rule (``search.fidelity``).

Optuna's pruners refuse multi-objective studies, so archsearch decides itself whether a trial goes on. With
``search.fidelity: {eta: η, rungs: R}`` a trial trains in rungs of :func:`budgets` iterations — ``proxy.iterations
/ η^(R−1−k)`` for k = 0 … R−1, the top rung being the whole proxy budget — evaluates after each, records the rung
(user attribute ``rungs``) and goes on only if :func:`promote` says so: successive halving (asynchronous, in the
stop-or-continue form of Optuna's ``SuccessiveHalvingPruner`` / ASHA) with non-dominated sorting in place of a
single score. A promoted trial continues from its own weights (:class:`archsearch.training.train.Trainer`): at the top
rung it is trained exactly as a full-budget trial. Nothing waits for other trials: the decision reads what the
study holds at that moment.

The rule, at rung k: take the trials of the study whose rung k is recorded with the same budget (running or
complete, this trial included; n of them), each as its objective vector with the rung's accuracy (:func:`values_at`:
mIoU, pixel and mean accuracy and training seconds of the rung, the rest — latency, parameters, multiply-adds —
from the trial's measured cost). Order them by non-domination rank, then by crowding distance within a rank
(NSGA-II's order, Deb et al. 2002). The trial continues iff fewer than ``max(1, floor(n / η))`` trials come
strictly before it in that order — ties count in its favour, so the first trial at a rung always continues, and
so does every trial on an edge of the rung's first front (infinite crowding distance).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import moocore
import numpy as np
from optuna.trial import TrialState

#: rung values that replace a trial's objective at that rung (objective name → key of the rung record)
RUNG_OBJECTIVES = {"miou": "miou", "pixel_acc": "pixel_acc", "mean_acc": "mean_acc", "train_seconds": "seconds"}


def values_at(rung: Mapping[str, Any], attrs: Mapping[str, Any], objectives: Sequence[str]) -> list[float] | None:
    """A trial's objective vector at a rung: the rung's value for mIoU, accuracies and training seconds
    (:data:`RUNG_OBJECTIVES`), the trial's user attribute (its measured cost) for the rest; None if one is
    missing."""
    out = []
    for name in objectives:
        value = rung.get(RUNG_OBJECTIVES[name]) if name in RUNG_OBJECTIVES else attrs.get(name)
        if value is None or not math.isfinite(float(value)):
            return None
        out.append(float(value))
    return out


def losses(values: Sequence[Sequence[float]], directions: Sequence[str]) -> np.ndarray:
    """Objective vectors as losses (every column minimised): maximised objectives negated."""
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    return np.asarray(values, dtype=float).reshape(-1, len(signs)) * signs


def crowding(front: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of the rows of one front (losses): per objective, the gap between a row's two
    neighbours in that objective's order divided by the objective's range, summed; rows at either end of an
    objective get infinity; an objective whose values are all equal adds nothing."""
    n, m = front.shape
    dist = np.zeros(n)
    if n <= 2:
        return np.full(n, math.inf)
    for j in range(m):
        order = np.argsort(front[:, j], kind="stable")
        col = front[order, j]
        span = col[-1] - col[0]
        if span <= 0:
            continue
        dist[order[0]] = dist[order[-1]] = math.inf
        dist[order[1:-1]] += (col[2:] - col[:-2]) / span
    return dist


def rank_and_crowding(loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-domination rank (0 = the first front; moocore's ``pareto_rank``, equal vectors ranked alike) and
    crowding distance within each rank, per row of ``loss``."""
    ranks = np.asarray(moocore.pareto_rank(loss), dtype=int)
    dist = np.zeros(len(loss))
    for r in np.unique(ranks):
        members = np.flatnonzero(ranks == r)
        dist[members] = crowding(loss[members])
    return ranks, dist


@dataclass(frozen=True)
class Decision:
    """The outcome of :func:`promote`: whether the trial goes on, the trials at the rung (n, itself included),
    how many may go on (``keep``), how many came strictly before it (``ahead``), and its rank."""

    promoted: bool
    n: int
    keep: int
    ahead: int
    rank: int


def promote(own: Sequence[float], others: Sequence[Sequence[float]], directions: Sequence[str], eta: int) -> Decision:
    """Whether a trial with objective vector ``own`` at a rung goes on, given the vectors of the other trials
    that reached that rung (module docstring: rank, then crowding distance; within the top
    ``max(1, floor(n / eta))``, ties in its favour)."""
    loss = losses([list(own), *map(list, others)], directions)
    n = len(loss)
    keep = max(1, n // eta)
    ranks, dist = rank_and_crowding(loss)
    ahead = int(np.sum((ranks < ranks[0]) | ((ranks == ranks[0]) & (dist > dist[0]))))
    return Decision(promoted=ahead < keep, n=n, keep=keep, ahead=ahead, rank=int(ranks[0]))


def peers(
    trials: Sequence[Any], number: int, rung: int, iterations: int, objectives: Sequence[str]
) -> list[list[float]]:
    """Objective vectors at ``rung`` of the trials (FrozenTrials) other than ``number`` that recorded that rung
    with the same budget (``iterations``), RUNNING or COMPLETE (a failed trial's rungs are not counted: its
    configuration may run again)."""

    out = []
    for t in trials:
        if t.number == number or t.state not in (TrialState.RUNNING, TrialState.COMPLETE):
            continue
        rungs = t.user_attrs.get("rungs")
        if not isinstance(rungs, list) or len(rungs) <= rung or not isinstance(rungs[rung], dict):
            continue
        if rungs[rung].get("iterations") != iterations:
            continue
        values = values_at(rungs[rung], t.user_attrs, objectives)
        if values is not None:
            out.append(values)
    return out
