"""A zero-cost first rung (``search.fidelity.zero_cost``): score many configurations at initialisation, train
the best fraction.

The run loop asks ``search.fidelity.screen`` trials at a time; each is prepared as usual (built, its cost
measured, its zero-cost scores recorded, gated: :func:`archsearch.search.trial.prepare`) but not trained. Then
the round is decided at once, each trial against every trial the study has scored so far (this round's, earlier
rounds' and other workers', trained or screened out): its objective vector with the chosen zero-cost score in
place of every accuracy objective (mIoU, pixel and mean accuracy: the score predicts them) and its measured cost
for the rest (training seconds, unknown before training, are left out) is ordered by :func:`archsearch.search.
rungs.promote` — non-domination rank, then crowding distance — and goes on to training iff it is within the best
``max(1, floor(n / eta))`` of the n scored. A trial that does not is told PRUNED with its scores and the reason
(``pruned_reason``), so every trial counts once and means one thing: a configuration scored and screened out,
or scored and trained (then through the trained rungs, or the whole budget with ``rungs: 1``). Every decision
is recorded on the trial (user attribute ``screen``). A trial whose score could not be computed is not judged:
it goes on to training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import TrialState

from archsearch.search import rungs
from archsearch.spec import Spec
from archsearch.spec.metrics import zero_cost_attribute

#: objectives the zero-cost score stands in for
ACCURACY = ("miou", "pixel_acc", "mean_acc")
#: objectives not known before training: not compared at the screen
AFTER_TRAINING = ("train_seconds",)


def values(attrs: Mapping[str, Any], objectives: Sequence[str], score: str) -> list[float] | None:
    """A trial's vector at the screen: the zero-cost ``score`` for each accuracy objective, the recorded value
    (its measured cost) for the others; None if one is missing."""
    out = []
    for name in objectives:
        value = attrs.get(zero_cost_attribute(score) if name in ACCURACY else name)
        if value is None:
            return None
        out.append(float(value))
    return out


def compared(spec: Spec) -> tuple[list[str], list[str]]:
    """The objectives compared at the screen and their directions."""
    kept = [o for o in spec.objectives if o.name not in AFTER_TRAINING]
    return [o.name for o in kept], [o.direction for o in kept]


def decide(study: optuna.Study, numbers: Sequence[int], spec: Spec) -> dict[int, rungs.Decision | None]:
    """The screening decision of each trial ``numbers`` (prepared, not yet decided) against every trial scored
    so far (those with a ``screen`` record, RUNNING, COMPLETE or PRUNED) and each other; None: not judged (no
    score)."""
    f = spec.search.fidelity
    assert f is not None and f.zero_cost is not None
    names, directions = compared(spec)
    pending = set(numbers)
    vectors: dict[int, list[float]] = {}
    for t in study.get_trials(deepcopy=False):
        scored = isinstance(t.user_attrs.get("screen"), dict) and t.state in (
            TrialState.RUNNING,
            TrialState.COMPLETE,
            TrialState.PRUNED,
        )
        if t.number in pending or scored:
            v = values(t.user_attrs, names, f.zero_cost)
            if v is not None:
                vectors[t.number] = v
    out: dict[int, rungs.Decision | None] = {}
    for n in numbers:
        if n not in vectors or not names:
            out[n] = None
            continue
        others = [v for m, v in vectors.items() if m != n]
        out[n] = rungs.promote(vectors[n], others, directions, f.eta)
    return out


def record(trial: optuna.Trial, spec: Spec, decision: rungs.Decision | None) -> str | None:
    """Store the decision on the trial (user attribute ``screen``); the pruned reason when it is screened out,
    else None."""
    f = spec.search.fidelity
    assert f is not None and f.zero_cost is not None
    attr = zero_cost_attribute(f.zero_cost)
    entry: dict[str, Any] = {"score": f.zero_cost, "value": trial.user_attrs.get(attr)}
    if decision is None:
        entry["promoted"] = True
        trial.set_user_attr("screen", entry)
        return None
    entry.update(
        promoted=decision.promoted, peers=decision.n, keep=decision.keep, ahead=decision.ahead, rank=decision.rank
    )
    trial.set_user_attr("screen", entry)
    if decision.promoted:
        return None
    reason = (
        f"screened out by zero-cost {f.zero_cost}: {decision.ahead} of the {decision.n} configurations scored "
        f"so far rank ahead of it, the best {decision.keep} are trained"
    )
    trial.set_user_attr("pruned_reason", reason)
    return reason
