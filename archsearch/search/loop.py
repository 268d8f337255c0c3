"""The run loop: Optuna's ask-and-tell, so that the study means one thing under any number of workers and any fault.

- **exact totals** — under the study-wide lock (:meth:`archsearch.search.session.Session.lock`) a worker counts the
  study's trials and asks for a new one only while finished + running < the requested total;
- **distinct configurations** — the whole configuration is chosen at ask time under the same lock;
- **dead workers** — a RUNNING trial whose worker died is failed and its configuration queued again
  (:mod:`archsearch.search.retries`); so is a trial stopped by SIGINT, SIGTERM or an I/O error;
- **one line per trial** — its state, cost, mIoU and configuration, and the time left.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import signal
import statistics
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import optuna
import yaml
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from archsearch.cost import release_memory
from archsearch.search import cuda_faults, screening, space, workers
from archsearch.search import trial as trial_mod
from archsearch.search.faults import (
    Interrupted,
    Outage,
    Patient,
    RunStopped,
    StorageLost,
    io_failure,
    lost_storage,
    not_waiting,
)
from archsearch.search.retries import FINISHED, counts, fail_dead, fail_trial, finished, retried
from archsearch.search.sampler import taken_keys
from archsearch.search.session import Session, open_session
from archsearch.search.storage import artifacts_dir, heartbeat, shown, trial_row
from archsearch.spec import Spec, metrics, to_dict
from archsearch.util import files, interrupts
from archsearch.util.formatting import fmt_duration, fmt_ms

log = logging.getLogger(__name__)

#: Seconds between heartbeat tries while the storage is away.
RETRY_BEAT_S = 2
#: Consecutive duplicate proposals (an infinite space whose sampler keeps colliding) before a run stops.
MAX_DUPLICATES = 10


def _describe(t: FrozenTrial, spec: Spec) -> str:
    a = t.user_attrs
    knobs = a.get("knobs", {})

    def short(v: Any) -> Any:
        if isinstance(v, float):
            return float(f"{v:.3g}")
        return [short(x) for x in v] if isinstance(v, list) else v

    builder = a.get("builder") or spec.builder
    searched = spec.spaces().get(builder) if not spec.rows and builder else None
    label = a.get("row_label") or ", ".join(
        f"{k}={short(knobs[k])}" for k in (searched.knobs if searched else ()) if k in knobs
    )
    if spec.multi and not spec.rows and builder:
        label = f"{builder}: {label}" if label else str(builder)
    parts = [f"trial {t.number:>3} {t.state.name:<8}"]
    madds, miou = metrics.get("madds"), metrics.get("miou")
    if "params" in a and "latency_ms" in a:
        parts.append(
            f"params {a['params'] / 1e6:.3g}M madds {madds.shown(a['madds']):.4g}{madds.unit} "
            f"latency {fmt_ms(a['latency_ms'])}"
        )
    if t.state == TrialState.COMPLETE:
        spread = f" ± {miou.shown(a['miou_std']):.2f}" if a.get("miou_std") is not None else ""
        parts.append(
            f"{miou.label} {miou.shown(a['miou']):.2f}{spread}{miou.unit} ({a.get('train_seconds', 0):.0f}s train)"
        )
        if a.get("stopped_at_rung") is not None:  # multi-fidelity: it did not reach the top rung
            rungs = a.get("rungs") or []
            its = f", {rungs[-1]['iterations']} it" if rungs and isinstance(rungs[-1], dict) else ""
            parts.append(f"stopped at rung {a['stopped_at_rung']}{its}")
    elif t.state == TrialState.PRUNED:
        parts.append(f"pruned: {a.get('pruned_reason', '?')}")
    elif t.state == TrialState.FAIL:
        parts.append(f"failed: {a.get('fail_reason', 'see log')}")
    return " | ".join(parts) + (f" | {label}" if label else "")


class DuplicateConfiguration(Exception):
    """The sampled configuration is already held by another trial (it is not trained again)."""

    def __init__(self, number: int) -> None:
        super().__init__(f"duplicate of trial {number}")
        self.number = number


class _Heartbeat:
    """Beat for one running trial in a background thread (Optuna's RDB heartbeat)."""

    def __init__(self, storage: RDBStorage, row: int, outage: Outage) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(storage, row, outage), daemon=True)
        self._thread.start()

    def _beat(self, storage: RDBStorage, row: int, outage: Outage) -> None:
        """Beats every interval; while the storage is away, tries every few seconds (never waiting inside a call),
        so that the trial's heartbeat is fresh again as soon as the storage is back."""
        with not_waiting():
            while True:
                try:
                    storage.record_heartbeat(row)
                    pause = heartbeat()[0]
                except Exception:  # noqa: BLE001 — a lost storage, or any other: the trial goes on regardless
                    outage.missed()
                    pause = min(heartbeat()[0], RETRY_BEAT_S)
                if self._stop.wait(pause):
                    return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _ask(study: optuna.Study, spec: Spec, dists: dict[str, Any]) -> optuna.Trial:
    """A new trial with its whole configuration chosen. In a space over several builders it suggests the builder
    and then only that builder's parameters (asking with the union would give it every builder's)."""
    if not spec.multi or spec.rows:
        return study.ask(dists)
    trial = study.ask()
    space.sample_config(trial, spec)
    return trial


def _holder(study: optuna.Study, trial: optuna.Trial) -> int | None:
    """A trial that already holds this trial's configuration (for the rare proposal the sampler could not
    steer away from), or None."""
    key = space.config_key(trial.params)
    again = retried(study)
    for t in study.get_trials(deepcopy=False):
        if t.number == trial.number or space.config_key(t.params) != key:
            continue
        if t.state in (TrialState.RUNNING, TrialState.WAITING) or counts(t, again):
            return t.number
    return None


def optimize(
    spec: Spec,
    url: str,
    trials: int | None = None,
    *,
    progress: bool = True,
    echo: Callable[[str], Any] = print,
    allow_changed: bool = False,
    user_attrs: Mapping[str, Any] | None = None,
) -> optuna.Study:
    """Run trials until the study holds the requested total of counted trials (resuming a stored study);
    ``user_attrs`` are set on the study when it is opened (metadata such as the calibration statement).

    A trial that raises is recorded FAIL with its reason (``fail_reason``, one line; the traceback with
    ``-v``) and the study goes on; a trial the latency gate rejects is PRUNED with ``pruned_reason``, its
    constraint values (set by the trial before it is told) telling the sampler how far over the bound it is. Several
    workers may run this on one storage, on one machine or many. SIGINT/SIGTERM raise :class:`Interrupted`
    and an I/O error :class:`RunStopped` after the running trial was failed and queued again. A storage that goes
    away is waited for (:class:`~archsearch.search.faults.Outage`); past the bound :class:`StorageLost` is raised.
    """
    artifacts = artifacts_dir(spec, url)
    ctx = trial_mod.Context(spec, artifacts, progress=progress, echo=echo)
    for split in (spec.data.train_split, spec.data.val_split):
        ctx.dataset(split)  # a bad data path or split is one clear error now, not a failure in every trial
    ctx.scoring_dataset(spec.data.val_split)
    session = open_session(spec, url, allow_changed=allow_changed)
    gc.collect()  # the storage's set-up garbage now, not in the middle of a trial: see util.interrupts
    study, outage = session.study, session.outage
    for key, value in (user_attrs or {}).items():
        outage.call(study.set_user_attr, key, value)
    total = trials if trials is not None else (len(spec.rows) if spec.rows else spec.search.trials)
    dists = space.distributions(spec)
    configs = space.configurations(spec)
    done = outage.call(_first_look, session)
    if done >= total:
        echo(f"{spec.name}: {done} finished trials already (requested {total}); nothing to run")
        return study
    try:
        artifacts.mkdir(parents=True, exist_ok=True)
        files.write_text(artifacts / "spec.yaml", yaml.safe_dump(to_dict(spec), sort_keys=False))
    except OSError as exc:
        raise RunStopped(io_failure(exc) or f"{artifacts}: cannot write ({exc.strerror})") from None
    echo(
        f"{spec.name}: {done} of {total} finished, running up to {total - done} more on {ctx.device} "
        f"(storage {shown(url)}, artifacts {artifacts})"
    )

    started = time.monotonic()
    durations: list[float] = []
    duplicates = 0
    screen = spec.search.fidelity.screen if spec.search.fidelity and spec.search.fidelity.zero_cost else None
    scored: list[Held] = []  # prepared, awaiting the round's screening decision
    held: list[Held] = []  # screened in, awaiting training
    asked_all = False  # nothing more to ask: decide the round as it is
    trial: optuna.Trial | None
    with interrupts.raising():
        while True:
            if spec.search.timeout is not None and time.monotonic() - started >= spec.search.timeout:
                echo(f"{spec.name}: search.timeout of {spec.search.timeout:g} s reached")
                break
            trial = None
            prepared: Any = None
            try:
                interrupts.check()  # a signal dropped while no training ran (storage, timing, a gated trial)
                if scored and (asked_all or len(scored) >= (screen or 0)):
                    held += _screen(session, spec, scored, total, echo)
                    scored = []
                    continue
                if held:
                    trial, prepared, beat = held.pop(0)
                    holder = None
                else:
                    if asked_all:
                        break
                    turn = _take_turn(session, total, dists, configs)
                    if isinstance(turn, str):
                        if turn:
                            echo(turn)
                        asked_all = True
                        continue
                    trial, holder, position = turn
                    row = outage.call(trial_row, session.storage, study, trial.number)
                    beat = _Heartbeat(session.storage, row, outage)
                    ctx.position = f"[{position}/{total}]"
                t0 = time.monotonic()
                patient = cast(optuna.Trial, Patient(trial, outage))
                try:
                    if holder is not None:
                        raise DuplicateConfiguration(holder)
                    if screen is not None and prepared is None:  # scored now, trained if the round keeps it
                        scored.append((trial, trial_mod.prepare(patient, ctx), beat))
                        ctx.say(f"{ctx.position} trial {trial.number}: scored, waiting for its screening round")
                        continue
                    values = trial_mod.run(patient, ctx, prepared)
                    frozen = _tell(outage, study, trial, values)
                    duplicates = 0
                except trial_mod.GateRejected:
                    frozen = _tell(outage, study, trial, state=TrialState.PRUNED)
                except DuplicateConfiguration as exc:
                    duplicates += 1
                    outage.call(trial.set_user_attr, "duplicate_of", exc.number)
                    outage.call(trial.set_user_attr, "fail_reason", str(exc))
                    _tell(outage, study, trial, state=TrialState.FAIL)
                    if duplicates >= MAX_DUPLICATES:
                        echo(
                            f"{spec.name}: the sampler proposed {duplicates} configurations in a row that already "
                            "ran; stopping (widen the space or lower --trials)"
                        )
                        break
                    continue
                except StorageLost:
                    raise
                except Exception as exc:  # a failed trial: recorded, the study goes on
                    if io_failure(exc) is not None:
                        raise
                    lost = lost_storage(exc)
                    fault = cuda_faults.triage(exc, ctx.device, int(patient.user_attrs.get("retry_count", 0)))
                    if lost is not None:  # the storage broke off one of the trial's own writes: run it again
                        reason = f"the storage broke off a write of this trial ({lost})"[:500]
                    else:
                        reason = f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
                        log.debug("trial %d failed", trial.number, exc_info=True)
                    if lost is not None or fault.retry:  # also an out-of-memory (once) or a lost CUDA context
                        outage.call(fail_trial, study, session.storage, trial.number, reason, retry=True)
                        frozen = outage.call(_frozen, study, trial.number)
                    else:
                        outage.call(trial.set_user_attr, "fail_reason", reason)
                        frozen = _tell(outage, study, trial, state=TrialState.FAIL)
                    if fault.stop is not None:
                        raise cuda_faults.DeviceLost(fault.stop) from None
                finally:
                    if not scored or scored[-1][0] is not trial:  # a trial waiting for its round keeps beating
                        beat.stop()
                    release_memory(ctx.device)  # a worker sharing the GPU does not keep this trial's peak
                trial = None  # recorded: nothing of it is left to retry
                durations.append(time.monotonic() - t0)
                now = outage.call(finished, study)
                left = outage.call(_time_left, durations, study, total - now)
                echo(f"[{now}/{total}] " + _describe(frozen, spec) + left)
            except interrupts.Signal as sig:
                interrupts.take()
                name = signal.Signals(sig.signum).name
                with interrupts.ignored():
                    retry = _abandon(session, trial, "interrupted")
                    _abandon_all(session, scored + held, "interrupted")
                raise Interrupted(
                    f"{name}: stopped; "
                    + (
                        f"trial {trial.number} was failed and will be retried by the next run; "
                        if trial is not None and retry
                        else ""
                    )
                    + "finished trials are stored",
                    exit_code=130 if sig.signum == signal.SIGINT else 143,
                ) from None
            except StorageLost as exc:
                raise exc.during(trial.number if trial is not None else None) from None
            except Exception as exc:
                stop = io_failure(exc)
                if stop is None:
                    raise
                with interrupts.ignored():
                    _abandon(session, trial, stop)
                    _abandon_all(session, scored + held, stop)
                raise RunStopped(stop + "; the running trial will be retried by the next run") from None
    _abandon_all(session, scored + held, "the run ended before training it")  # a timeout: scored, not trained
    return study


#: A trial this worker asked for and scored but has not finished: (trial, its prepared state, its heartbeat).
Held = tuple[optuna.Trial, Any, "_Heartbeat"]


def _screen(session: Session, spec: Spec, scored: list[Held], total: int, echo: Callable[[str], Any]) -> list[Held]:
    """Decide a screening round (:mod:`archsearch.search.screening`): the screened-out trials are told PRUNED;
    returns the others, to be trained."""
    study, outage = session.study, session.outage
    decisions = outage.call(screening.decide, study, [t.number for t, _, _ in scored], spec)
    kept = []
    for trial, prepared, beat in scored:
        if outage.call(screening.record, trial, spec, decisions[trial.number]) is None:
            kept.append((trial, prepared, beat))
            continue
        frozen = _tell(outage, study, trial, state=TrialState.PRUNED)
        beat.stop()
        now = outage.call(finished, study)
        echo(f"[{now}/{total}] " + _describe(frozen, spec))
    return kept


def _abandon_all(session: Session, held: list[Held], reason: str) -> None:
    """Fail and queue again the trials this worker scored but did not finish."""
    for trial, _, beat in held:
        beat.stop()
        _abandon(session, trial, reason)


def _first_look(session: Session) -> int:
    """Fail the trials of dead workers and count the study's trials (before the first trial of a run)."""
    with session.lock():
        fail_dead(session.study, session.storage, orphans=True, stale=not session.outage.recent(heartbeat()[1]))
        return finished(session.study)


def _take_turn(
    session: Session, total: int, dists: dict[str, Any], configs: list[dict[str, Any]] | None
) -> tuple[optuna.Trial, int | None, int] | str:
    """Under the study's lock: fail dead workers' trials, count, and ask for a new trial with its whole
    configuration — (trial, the trial already holding its configuration or None, its position) — or say why the
    run ends (a line to print, or "" when the total is reached).

    A storage that goes away meanwhile is waited for, and the turn taken again. A trial asked for in a turn that
    the storage broke off (the lock may have been lost with its connection, so another worker may have counted
    and asked at the same time) is failed and its configuration queued: it never runs from this turn. One whose
    ask was cut off before it returned has no worker attribute, and the next turn fails it (``orphans``)."""
    study, spec, outage = session.study, session.spec, session.outage
    while True:
        trial: optuna.Trial | None = None
        try:
            with session.lock():
                fail_dead(study, session.storage, orphans=True, stale=not outage.recent(heartbeat()[1]))
                again = retried(study)
                all_trials = study.get_trials(deepcopy=False)
                done = sum(counts(t, again) for t in all_trials if t.state in FINISHED)
                running = sum(t.state == TrialState.RUNNING for t in all_trials)
                waiting = sum(t.state == TrialState.WAITING for t in all_trials)
                if done + running >= total:
                    return ""
                if configs is not None and not waiting and len(taken_keys(study)) >= len(configs):
                    return f"{spec.name}: the search space is exhausted: all {len(configs)} configurations have a trial"
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with optimize"
                    trial = _ask(study, spec, dists)
                trial.set_user_attr("worker", workers.identity())
                holder = _holder(study, trial)
            outage.ok()
            return trial, holder, done + running + 1
        except Exception as exc:
            reason = lost_storage(exc)
            if reason is None:
                raise
            try:
                outage.wait(reason)
            except StorageLost as stop:
                raise stop.during(trial.number if trial is not None else None) from None
            if trial is not None:
                why = f"asked for while the storage was lost ({reason}); not run"[:500]
                outage.call(fail_trial, study, session.storage, trial.number, why, retry=True)


def _tell(
    outage: Outage,
    study: optuna.Study,
    trial: optuna.Trial,
    values: Sequence[float] | None = None,
    state: TrialState | None = None,
) -> FrozenTrial:
    """Tell the storage how ``trial`` ended, waiting for a storage that went away; a trial that is finished already
    (its last try was stored before the connection broke, or another worker failed it meanwhile) is left as it is."""
    return outage.call(study.tell, trial, values, state=state, skip_if_finished=True)


def _frozen(study: optuna.Study, number: int) -> FrozenTrial:
    return study.get_trials(deepcopy=False)[number]


def _abandon(session: Session, trial: optuna.Trial | None, reason: str) -> bool:
    """Fail a trial this worker cannot finish and queue it again; False when that could not be recorded (its
    worker is then found dead by the next run on this machine, or by the heartbeat). Tried once: a storage that is
    away is not waited for here."""
    if trial is None:
        return False
    with not_waiting(), contextlib.suppress(Exception):
        return fail_trial(session.study, session.storage, trial.number, reason, retry=True)
    return False


def _time_left(durations: list[float], study: optuna.Study, left: int) -> str:
    """Median trial time × trials left, shared among this worker and the others running now."""
    if left <= 0 or not durations:
        return ""
    active = {
        json.dumps(t.user_attrs.get("worker"), sort_keys=True)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    }
    per = statistics.median(durations) * left / max(1, len(active) + 1)
    return f" | ~{fmt_duration(per)} left"
