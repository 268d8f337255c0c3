"""The per-trial pipeline: sample → build → profile → gate → train → evaluate → record.

A trial is a pure function of (spec, sampled knobs, seed): training uses ``search.seed``. Every number is stored
on the Optuna trial as a user attribute (DESIGN.md's trial record), so exports rebuild from the storage alone.
Cost (params, multiply-adds, latency) of an architecture on a device and input is measured once and reused
from any earlier trial of the study with the same architecture key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
import torch.nn as nn

from archsearch import builders, measure, space
from archsearch.spec import Spec

log = logging.getLogger(__name__)

COST_ATTRS = ("params", "madds", "latency_ms", "latency_p90_ms", "device", "input_size", "dtype")


class GateRejected(optuna.TrialPruned):
    """The trial's measured cost violates a constraint; it is pruned before any training."""


def arch_key(builder: str, knobs: dict[str, Any], num_classes: int, target: Any, device: str) -> str:
    """Identity of (architecture, device, input) for reusing cost measurements."""
    blob = json.dumps(
        {"b": builder, "k": knobs, "c": num_classes, "i": list(target.input), "d": device, "t": target.dtype,
         "m": target.memory_format},
        sort_keys=True,
    )
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


@dataclass
class Context:
    """What one worker process keeps between trials: the spec, the artifacts folder, loaded data sets."""

    spec: Spec
    artifacts: Path
    progress: bool = True
    device: torch.device = field(init=False)
    _data: dict[str, Any] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.device = measure.resolve_device(self.spec.target.device)

    def dataset(self, split: str) -> Any:
        if split not in self._data:
            from archsearch import data

            self._data[split] = data.load(self.spec.data, split, self.spec.proxy.scale)
        return self._data[split]

    @property
    def num_classes(self) -> int:
        if self.spec.num_classes:
            return self.spec.num_classes
        from archsearch import data

        return data.info(self.spec.data.name).num_classes


def _reuse_cost(study: optuna.Study, key: str) -> dict[str, Any] | None:
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("arch_key") == key and "latency_ms" in t.user_attrs:
            return {k: t.user_attrs[k] for k in COST_ATTRS if k in t.user_attrs}
    return None


def profile(model: nn.Module, spec: Spec, device: torch.device) -> dict[str, Any]:
    """Parameters, multiply-adds at the target input (on the CPU), latency on the target device."""
    t = spec.target
    params = measure.count_params(model)
    madds = measure.count_madds(model, t.input, convention=t.madds_convention)
    lat = measure.latency(model, t.input, device, warmup=t.warmup, repeats=t.repeats, dtype=t.dtype,
                          memory_format=t.memory_format)
    model.to("cpu")
    return {
        "params": params,
        "madds": madds,
        "latency_ms": lat.median_ms,
        "latency_p90_ms": lat.p90_ms,
        "device": lat.device,
        "input_size": list(lat.input_size),
        "dtype": lat.dtype,
    }


def gate(spec: Spec, cost: dict[str, Any]) -> str | None:
    """The reason a trial violates ``constraints``, or None."""
    for metric, bound in spec.constraints.items():
        value = cost[metric]
        if "max" in bound and value > bound["max"]:
            return f"{metric} {value:.4g} > max {bound['max']:.4g}"
        if "min" in bound and value < bound["min"]:
            return f"{metric} {value:.4g} < min {bound['min']:.4g}"
    return None


def _train(model: nn.Module, knobs: dict[str, Any], ctx: Context, trial: optuna.Trial) -> tuple[nn.Module, float]:
    """Proxy training; with a keep rate below 1 on a prunable builder, progressive L1 pruning.

    ``knobs`` is the resolved knob set (defaults included: ICNet's default keep rate is 0.5).
    """
    from archsearch import train

    spec = ctx.spec
    train_set = ctx.dataset(spec.data.train_split)
    entry = builders.get(spec.builder)
    start = time.perf_counter()
    keep = knobs.get("keep_rate", 1.0)
    if entry.prunable and keep < 1.0:
        from archsearch import pruning

        def fit(m: nn.Module, iterations: int, phase: str) -> None:
            train.fit(m, train_set, spec.proxy, ctx.device, seed=spec.search.seed, iterations=iterations,
                      progress=ctx.progress, desc=f"trial {trial.number} {phase}")

        model, history = pruning.progressive(
            spec.builder, knobs, ctx.num_classes, fit, spec.proxy.iterations, spec.proxy.prune_schedule
        )
        trial.set_user_attr("pruning", history)
    else:
        result = train.fit(model, train_set, spec.proxy, ctx.device, seed=spec.search.seed,
                           progress=ctx.progress, desc=f"trial {trial.number}")
        trial.set_user_attr("final_loss", result.final_loss)
        trial.set_user_attr("images_per_s", result.images_per_s)
    return model, time.perf_counter() - start


def save_checkpoint(model: nn.Module, path: Path, spec: Spec) -> None:
    """Weights plus what rebuilds the model (builder, knobs, classes) and evaluates it (data set)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "builder": model.archsearch_builder,
            "knobs": model.archsearch_knobs,
            "num_classes": model.archsearch_num_classes,
            "data": spec.data.name,
            "scale": spec.proxy.scale,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        },
        tmp,
    )
    tmp.replace(path)


def run(trial: optuna.Trial, ctx: Context) -> tuple[float, ...]:
    """The objective: one trial end to end. Returns the objective values in the spec's order."""
    from archsearch import metrics

    spec = ctx.spec
    knobs, row = space.sample(trial, spec)
    entry = builders.get(spec.builder)
    resolved = entry.resolve(knobs).as_dict()
    trial.set_user_attr("builder", spec.builder)
    trial.set_user_attr("knobs", resolved)
    if row is not None:
        trial.set_user_attr("row", row)
        trial.set_user_attr("row_label", spec.rows[row]["label"])

    model = builders.build(spec.builder, ctx.num_classes, **knobs)
    key = arch_key(spec.builder, resolved, ctx.num_classes, spec.target, str(ctx.device))
    trial.set_user_attr("arch_key", key)
    cost = _reuse_cost(trial.study, key)
    if cost is None:
        cost = profile(model, spec, ctx.device)
        cost["cost_reused"] = False
    else:
        cost["cost_reused"] = True
    for k, v in cost.items():
        trial.set_user_attr(k, v)

    reason = gate(spec, cost)
    if reason is not None:
        trial.set_user_attr("pruned_reason", reason)
        raise GateRejected(reason)

    model, seconds = _train(model, resolved, ctx, trial)
    trial.set_user_attr("train_seconds", seconds)
    if model.archsearch_knobs != resolved:
        trial.set_user_attr("knobs", model.archsearch_knobs)
    scores = metrics.evaluate(model, ctx.dataset(spec.data.val_split), ctx.device, batch=spec.proxy.eval_batch,
                              progress=ctx.progress)
    checkpoint = ctx.artifacts / "checkpoints" / f"trial_{trial.number:05d}.pt"
    save_checkpoint(model, checkpoint, spec)
    record = {
        "miou": scores.miou,
        "pixel_acc": scores.pixel_acc,
        "mean_acc": scores.mean_acc,
        "iou_per_class": [None if v is None or math.isnan(v) else float(v) for v in scores.iou_per_class],
        "checkpoint": str(checkpoint),
    }
    for k, v in record.items():
        trial.set_user_attr(k, v)
    values = {**cost, **record, "train_seconds": seconds}
    return tuple(float(values[o.name]) for o in spec.objectives)
