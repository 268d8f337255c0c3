"""Which trials count towards a study's total, and trials that are failed and run again.

A trial counts once: COMPLETE and PRUNED trials count; a FAIL counts unless its configuration was queued again
(a worker died, was stopped, or lost its storage while it ran) or it was a duplicate that never ran. A RUNNING trial
whose worker died on this machine, or whose heartbeat is stale (Optuna's heartbeat), is failed and its
configuration queued again, at most :data:`MAX_RETRIES` times in a chain.
"""

from __future__ import annotations

import warnings

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from archsearch.search import workers
from archsearch.search.storage import trial_row

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
#: How often one configuration is queued again after its worker died or was stopped.
MAX_RETRIES = 2


def retried(study: optuna.Study) -> set[int]:
    """Numbers of failed trials that another trial retries (user attribute ``retry_of``)."""
    return {int(t.user_attrs["retry_of"]) for t in study.get_trials(deepcopy=False) if "retry_of" in t.user_attrs}


def counts(t: FrozenTrial, retried_numbers: set[int]) -> bool:
    """Whether a trial counts towards the requested total: COMPLETE and PRUNED do; FAIL does unless it was
    retried or was a duplicate that never ran."""
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    if t.state == TrialState.FAIL:
        return t.number not in retried_numbers and "duplicate_of" not in t.user_attrs and not t.user_attrs.get("retry")
    return False


def finished(study: optuna.Study) -> int:
    """Trials that count towards the requested total (see :func:`counts`)."""
    again = retried(study)
    return sum(counts(t, again) for t in study.get_trials(deepcopy=False, states=FINISHED))


def _retry_count(t: FrozenTrial) -> int:
    return int(t.user_attrs.get("retry_count", 0))


def queue_retry(study: optuna.Study, t: FrozenTrial) -> bool:
    """Queue ``t``'s configuration again (at most :data:`MAX_RETRIES` times in a chain); True if queued."""
    if _retry_count(t) >= MAX_RETRIES or not t.params or t.number in retried(study):
        return False
    attrs = {"retry_of": t.number, "retry_count": _retry_count(t) + 1}
    for k in ("row", "row_label"):
        if k in t.user_attrs:
            attrs[k] = t.user_attrs[k]
    study.enqueue_trial(t.params, user_attrs=attrs)
    return True


def retry_stale(study: optuna.Study, t: FrozenTrial) -> None:
    """Optuna's heartbeat callback: a trial whose worker stopped beating is queued again."""
    queue_retry(study, t)


def fail_trial(study: optuna.Study, storage: RDBStorage, number: int, reason: str, *, retry: bool) -> bool:
    """Mark a RUNNING trial FAIL with ``reason`` (race-safe: False when another worker finished it first);
    ``retry`` marks it as not counting and queues its configuration again."""
    row = trial_row(storage, study, number)
    try:
        storage.set_trial_user_attr(row, "fail_reason", reason)
        if retry:
            storage.set_trial_user_attr(row, "retry", True)
        if not storage.set_trial_state_values(row, state=TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    if retry:
        queue_retry(study, storage.get_trial(row))
    return True


def fail_dead(
    study: optuna.Study, storage: RDBStorage, *, retry: bool = True, orphans: bool = False, stale: bool = True
) -> list[int]:
    """Fail the RUNNING trials whose worker died on this machine and, with ``retry``, queue their configurations
    again; with ``retry`` and ``stale`` also those whose worker elsewhere stopped beating (Optuna's heartbeat).
    ``orphans`` (only under the study's lock, in which every worker names itself on the trial it asks for) also
    fails trials that name no worker: asks that a lost storage cut off. Returns the numbers failed here."""
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        if workers.local_and_dead(worker):
            reason = f"worker died (pid {worker['pid']} on {worker['host']})"
        elif orphans and worker is None:
            reason = "its worker lost the storage while asking for it; not run"
        else:
            continue
        if fail_trial(study, storage, t.number, reason, retry=retry):
            failed.append(t.number)
    if retry and stale:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    return failed
