"""The per-trial pipeline: sample → build → profile → gate → zero-cost scores → train → evaluate → record.

A trial is a pure function of (spec, sampled knobs, seed): everything random in it — weight initialisation,
sampling and augmentation — is seeded from (``search.seed``, builder, resolved knobs), so the same spec and
knobs give the same weights and mIoU in any process (on the CPU). Every number is stored
on the Optuna trial as a user attribute (DESIGN.md's trial record), so exports rebuild from the storage alone.
Cost (params, multiply-adds, latency) of an architecture on a device and input is measured once and reused
(:mod:`archsearch.search.cost_record`).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
import torch.nn as nn

from archsearch import builders, data
from archsearch.cost import (
    count_params,
    device_name,
    resolve_device,
)
from archsearch.search import rungs, space
from archsearch.search.cost_record import (
    COST_ATTRS,
    GateRejected,
    arch_key,
    constraint_values,
    gate,
    profile,
    reuse_cost,
    timing_threads,
)
from archsearch.spec import Spec, to_dict
from archsearch.spec.fidelity import rung_budgets
from archsearch.spec.fingerprint import comparable_proxy, fingerprint, fingerprint_hash
from archsearch.spec.metrics import objective_values
from archsearch.training import channel_pruning, checkpoint, scoring, train, zerocost
from archsearch.training.seeds import data_seeds, seed_everything, seed_of, seed_summary, training_seeds, trial_seed
from archsearch.util import files

log = logging.getLogger(__name__)


# The whole cost record, stored in ONE user attribute ``cost``: the only thing reused by other trials.
@dataclass
class Context:
    """What one worker process keeps between trials: the spec, the artifacts folder, loaded data sets."""

    spec: Spec
    artifacts: Path
    progress: bool = True
    echo: Callable[[str], Any] = print
    store: str | None = None  # artifact store of checkpoints (default: ``artifacts/checkpoints``)
    position: str = ""  # "[k/N]" of the running trial, for progress lines
    device: torch.device = field(init=False)
    _data: dict[str, Any] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.device = resolve_device(self.spec.target.device)
        if self.store is None:
            self.store = self.spec.artifacts or str((self.artifacts / "checkpoints").resolve())

    def say(self, line: str) -> None:
        """A progress line (silent with ``-q``)."""
        if self.progress:
            self.echo(line)

    def dataset(self, split: str) -> Any:
        if split not in self._data:
            self._data[split] = data.load(self.spec.data, split, self.spec.proxy.scale)
        return self._data[split]

    def scoring_dataset(self, split: str) -> Any:
        """``split`` for evaluation: images at the proxy scale, labels at the data set's own resolution."""
        key = f"scoring:{split}"
        if key not in self._data:
            self._data[key] = data.load_scoring(self.spec.data, split, self.spec.proxy.scale)
        return self._data[key]

    @property
    def num_classes(self) -> int:
        if self.spec.num_classes:
            return self.spec.num_classes

        return data.info(self.spec.data.name).num_classes


def budget(spec: Spec) -> dict[str, Any]:
    """What a trial's training costs and sees: the proxy section (without its memory layout, and without the keys
    added later that hold their old behaviour: :func:`~archsearch.spec.fingerprint.comparable_proxy`) and the data
    set's name, splits and sizes."""
    d = to_dict(spec)
    data = {k: d["data"][k] for k in ("name", "train_split", "val_split", "train_images", "val_images", "size")}
    out = {"proxy": comparable_proxy(d["proxy"]), "data": data}
    rung_its = rung_budgets(spec)
    if rung_its is not None:  # multi-fidelity: the rungs a trial may train (the top one is the full budget)
        out["fidelity"] = {**d["search"]["fidelity"], "budgets": rung_its}
    return out


def train_proxy(
    model: nn.Module,
    knobs: dict[str, Any],
    ctx: Context,
    trial: optuna.Trial,
    seed: int,
    builder: str | None = None,
    data_seed: int | None = None,
) -> tuple[nn.Module, float]:
    """Proxy training; with a keep rate below 1 on a prunable builder, progressive L1 pruning. ``data_seed``
    (common random numbers, :func:`archsearch.training.seeds.data_seeds`; default: from ``seed``) seeds the
    batches and their augmentation.

    ``knobs`` is the resolved knob set (defaults included: ICNet's default keep rate is 0.5).
    """

    spec = ctx.spec
    train_set = ctx.dataset(spec.data.train_split)
    builder = builder or spec.builder
    assert builder is not None  # a space over several builders passes the trial's own
    entry = builders.get(builder)
    start = time.perf_counter()
    keep = knobs.get(entry.prune_knob, 1.0) if entry.prune_knob is not None else 1.0
    if keep < 1.0:
        scaler = train.grad_scaler(spec.proxy, ctx.device)  # one loss scaling across the phases

        def fit(m: nn.Module, iterations: int, phase: str, start: int = 0) -> None:
            # one poly schedule over the whole budget; each phase draws its own images (a seed per phase)
            train.fit(
                m,
                train_set,
                spec.proxy,
                ctx.device,
                seed=seed if start == 0 else trial_seed(seed, "phase", start),
                data_seed=data_seed if start == 0 or data_seed is None else trial_seed(data_seed, "phase", start),
                iterations=iterations,
                schedule=(start, spec.proxy.iterations),
                progress=ctx.progress,
                desc=f"trial {trial.number} {phase}",
                threads=timing_threads(spec),
                scaler=scaler,
            )

        model, history = channel_pruning.progressive(
            builder, knobs, ctx.num_classes, fit, spec.proxy.iterations, spec.proxy.prune_schedule
        )
        trial.set_user_attr("pruning", history)
    else:
        result = train.fit(
            model,
            train_set,
            spec.proxy,
            ctx.device,
            seed=seed,
            data_seed=data_seed,
            progress=ctx.progress,
            desc=f"trial {trial.number}",
            threads=timing_threads(spec),
        )
        trial.set_user_attr("final_loss", result.final_loss)
        trial.set_user_attr("images_per_s", result.images_per_s)
    return model, time.perf_counter() - start


class _Clock:
    """Wall and process CPU seconds of a trial's training and of its evaluations (the machine may be shared: CPU
    time is the fairer measure of what a trial cost)."""

    def __init__(self) -> None:
        self.train_seconds = self.train_cpu_seconds = self.eval_seconds = self.eval_cpu_seconds = 0.0

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.train_seconds += time.perf_counter() - wall
            self.train_cpu_seconds += time.process_time() - cpu

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.eval_seconds += time.perf_counter() - wall
            self.eval_cpu_seconds += time.process_time() - cpu

    def record(self) -> dict[str, float]:
        return {
            "train_seconds": self.train_seconds,
            "train_cpu_seconds": self.train_cpu_seconds,
            "eval_seconds": self.eval_seconds,
            "eval_cpu_seconds": self.eval_cpu_seconds,
        }


def _train_in_rungs(
    model: nn.Module,
    knobs: dict[str, Any],
    ctx: Context,
    trial: optuna.Trial,
    seeds: list[int],
    rung_its: list[int],
    cost: dict[str, Any],
    clock: _Clock,
    builder: str,
) -> tuple[nn.Module, list[Any]]:
    """Multi-fidelity training (``search.fidelity``, :mod:`archsearch.fidelity`): each seed's model trains rung by
    rung within ONE fit of the top budget (:class:`archsearch.train.Trainer`: one learning-rate schedule, the
    optimizer and data streams carried on), so a trial that reaches the top rung is trained exactly as a
    full-budget trial. After each rung every seed's model is evaluated, the rung is recorded (user attribute
    ``rungs``: iterations, mIoU, pixel and mean accuracy, cumulative training and evaluation seconds, wall and
    CPU; ``rung``: the index reached) and :func:`archsearch.fidelity.promote` decides whether the trial goes on;
    a stopped trial records ``stopped_at_rung``. Returns the first seed's model and the last rung's scores."""

    spec = ctx.spec
    assert spec.search.fidelity is not None  # rung budgets exist only when it is on
    eta = spec.search.fidelity.eta
    threads = timing_threads(spec)
    train_set = ctx.dataset(spec.data.train_split)
    score_set = ctx.scoring_dataset(spec.data.val_split)
    objectives = [o.name for o in spec.objectives]
    directions = [o.direction for o in spec.objectives]
    trainers = []
    for i, (s, d) in enumerate(zip(seeds, data_seeds(spec, len(seeds)), strict=True)):
        if i > 0:  # a fresh model, initialised under this seed as the first one was under its own
            seed_everything(s)
            model = builders.build(builder, ctx.num_classes, **knobs)
        seed_everything(s)
        trainers.append(
            train.Trainer(model, train_set, spec.proxy, ctx.device, seed=s, data_seed=d, iterations=rung_its[-1])
        )
    reached: list[dict[str, Any]] = []
    runs: list[Any] = []
    done = 0
    for k, its in enumerate(rung_its):
        runs = []
        losses = []
        for trainer in trainers:
            with clock.training():
                fit = trainer.advance(
                    its - done, progress=ctx.progress, desc=f"trial {trial.number} rung {k}", threads=threads
                )
            losses.append(fit.final_loss)
            with clock.evaluating():
                runs.append(
                    scoring.evaluate(
                        trainer.scored_model,
                        score_set,
                        ctx.device,
                        batch=spec.proxy.eval_batch,
                        progress=ctx.progress,
                        threads=threads,
                    )
                )
        done = its
        scores = seed_summary(runs)
        record: dict[str, Any] = {
            "iterations": its,
            **{m: scores[m] for m in ("miou", "pixel_acc", "mean_acc")},
            "seconds": clock.train_seconds,
            "cpu_seconds": clock.train_cpu_seconds,
            "eval_seconds": clock.eval_seconds,
            "eval_cpu_seconds": clock.eval_cpu_seconds,
        }
        if scores["miou_std"] is not None:
            record["miou_std"] = scores["miou_std"]
        record["final_loss"] = losses[0]  # the first seed's last training loss (its weights are the checkpoint)
        reached.append(record)
        trial.set_user_attr("final_loss", losses[0])
        trial.set_user_attr("rungs", [dict(r) for r in reached])  # before deciding: other trials read it
        trial.set_user_attr("rung", k)
        if k == len(rung_its) - 1:
            break
        own = rungs.values_at(record, cost, objectives)
        others = rungs.peers(trial.study.get_trials(deepcopy=False), trial.number, k, its, objectives)
        decision = rungs.promote(own, others, directions, eta) if own is not None else None
        go = decision is None or decision.promoted
        if decision is not None:
            record.update(promoted=go, peers=decision.n, keep=decision.keep, ahead=decision.ahead, rank=decision.rank)
            trial.set_user_attr("rungs", [dict(r) for r in reached])
        ctx.say(
            f"{ctx.position} trial {trial.number} rung {k} ({its} it): mIoU {100 * scores['miou']:.2f}% — "
            + ("promoted" if go else "stopped")
            + (f" ({decision.ahead} ahead of it among {decision.n}, {decision.keep} go on)" if decision else "")
        )
        if not go:
            trial.set_user_attr("stopped_at_rung", k)
            break
    return trainers[0].scored_model, runs


def _store_checkpoint(model: nn.Module, trial: optuna.Trial, ctx: Context) -> dict[str, Any]:
    """Save the trained weights through the artifact store; the trial records where (path for a folder store)."""
    spec = ctx.spec
    assert ctx.store is not None
    ctx.artifacts.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ctx.artifacts, prefix=".ckpt-") as tmp:
        path = checkpoint.save(
            model,
            Path(tmp) / f"trial_{trial.number:05d}.pt",
            data=spec.data.name,
            root=spec.data.root,
            scale=spec.proxy.scale,
        )
        artifact = checkpoint.upload(trial, path, ctx.store)
    local = "://" not in ctx.store
    return {
        "checkpoint": str(Path(ctx.store) / artifact) if local else f"{ctx.store.rstrip('/')}/{artifact}",
        "checkpoint_artifact": artifact,
        "checkpoint_store": ctx.store,
    }


@dataclass
class Prepared:
    """A trial up to its training: its configuration, seed, initialised model and measured cost."""

    builder: str
    knobs: dict[str, Any]  # as sampled (what the builder is called with)
    resolved: dict[str, Any]  # defaults included
    seed: int
    model: nn.Module
    cost: dict[str, Any]


def zero_cost(model: nn.Module, ctx: Context, seed: int) -> dict[str, float | None]:
    """The zero-cost scores of the initialised ``model`` on one batch of the training split drawn with ``seed``
    (:mod:`archsearch.training.zerocost`); a score that fails is None."""
    return zerocost.on_dataset(model, ctx.dataset(ctx.spec.data.train_split), seed, threads=timing_threads(ctx.spec))


def prepare(trial: optuna.Trial, ctx: Context) -> Prepared:
    """Everything before training: sample, build, measure the cost, gate, score at initialisation
    (``zc_<name>``; a gated trial is not scored). Raises :class:`GateRejected` for a trial that breaks a
    constraint."""

    spec = ctx.spec
    builder, knobs, row = space.sample_config(trial, spec)
    entry = builders.get(builder)
    resolved = entry.resolve(knobs).as_dict()
    seed = seed_of(spec, resolved, builder)
    trial.set_user_attr("builder", builder)
    trial.set_user_attr("knobs", resolved)
    trial.set_user_attr("seed", seed)
    trial.set_user_attr("budget", budget(spec))
    trial.set_user_attr("fingerprint", fingerprint_hash(fingerprint(spec)))
    if row is not None:
        trial.set_user_attr("row", row)
        trial.set_user_attr("row_label", spec.rows[row]["label"])

    seed_everything(seed)
    model = builders.build(builder, ctx.num_classes, **knobs)
    threads = timing_threads(spec)
    key = arch_key(builder, resolved, ctx.num_classes, spec.target, ctx.device, threads)
    trial.set_user_attr("arch_key", key)
    cost = reuse_cost(trial.study, key)
    reused = cost is not None
    if cost is None:
        ctx.say(
            f"{ctx.position} trial {trial.number}: measuring latency at {list(spec.target.input)} on "
            f"{device_name(ctx.device, threads)} ..."
        )
        cost = {**profile(model, spec, ctx.device, threads), "key": key}
    trial.set_user_attr("cost", cost)  # whole, in one write: other workers reuse only this record
    for k in COST_ATTRS:  # the flat attributes of the trial record, after it
        trial.set_user_attr(k, cost[k])
    trial.set_user_attr("cost_reused", reused)
    for name, value in constraint_values(spec, cost).items():  # stored before tell: the samplers read them
        trial.set_constraint(name, value)
    reason = gate(spec, cost)
    if reason is not None:
        trial.set_user_attr("pruned_reason", reason)
        raise GateRejected(reason)
    wall, cpu = time.perf_counter(), time.process_time()
    for name, score in zero_cost(model, ctx, seed).items():
        trial.set_user_attr(f"zc_{name}", score)
    trial.set_user_attr("zc_seconds", time.perf_counter() - wall)
    trial.set_user_attr("zc_cpu_seconds", time.process_time() - cpu)
    return Prepared(builder, knobs, resolved, seed, model, cost)


def run(trial: optuna.Trial, ctx: Context, prepared: Prepared | None = None) -> tuple[float, ...]:
    """The objective: one trial end to end (from :func:`prepare`'s result when given). Returns the objective
    values in the spec's order."""

    p = prepare(trial, ctx) if prepared is None else prepared
    spec = ctx.spec
    builder, knobs, resolved, seed, model, cost = p.builder, p.knobs, p.resolved, p.seed, p.model, p.cost
    threads = timing_threads(spec)

    # a result that could not be saved is not worth training for: check the space first
    files.ensure_space(ctx.artifacts, 8 * count_params(model) + (1 << 20))
    seeds = training_seeds(seed, spec.proxy.seeds)
    trial.set_user_attr("seeds", seeds)
    streams = data_seeds(spec, len(seeds))
    if spec.proxy.common_random_numbers:
        trial.set_user_attr("data_seeds", streams)
    clock = _Clock()
    rung_its = rung_budgets(spec)
    if rung_its is not None and len(rung_its) > 1:  # one rung (after a zero-cost screen): trained as usual
        model, runs = _train_in_rungs(model, knobs, ctx, trial, seeds, rung_its, cost, clock, builder)
    else:
        runs = []
        kept: nn.Module | None = None
        for i, s in enumerate(seeds):
            if i > 0:  # a fresh model, initialised under this seed as the first one was under its own
                seed_everything(s)
                model = builders.build(builder, ctx.num_classes, **knobs)
            seed_everything(s)
            with clock.training():
                trained, _ = train_proxy(model, resolved, ctx, trial, s, builder, data_seed=streams[i])
            with clock.evaluating():
                runs.append(
                    scoring.evaluate(
                        trained,
                        ctx.scoring_dataset(spec.data.val_split),
                        ctx.device,
                        batch=spec.proxy.eval_batch,
                        progress=ctx.progress,
                        threads=threads,
                    )
                )
            if kept is None:
                kept = trained  # the checkpoint holds the first seed's weights
        assert kept is not None
        model = kept
    seconds = clock.train_seconds
    for k, v in clock.record().items():  # train_seconds, train_cpu_seconds, eval_seconds, eval_cpu_seconds
        trial.set_user_attr(k, v)
    trained_knobs = builders.config_of(model).knobs.as_dict()
    if trained_knobs != resolved:
        trial.set_user_attr("knobs", trained_knobs)
    record = {**seed_summary(runs), **_store_checkpoint(model, trial, ctx)}
    for k, v in record.items():
        trial.set_user_attr(k, v)
    values = {**cost, **record, "train_seconds": seconds}
    return objective_values(values, [o.name for o in spec.objectives])
