"""Distinct, continuing sampler streams: every trial samples a configuration no other trial of the study holds.

Optuna's samplers keep their random state in the process: seeded with ``search.seed`` in every worker they run
in lockstep, and a resumed run replays the sequence from the start. :class:`DistinctSampler` wraps the sampler
the spec asks for (TPE, NSGA-II, random) and

- seeds a fresh inner sampler for each trial from (``search.seed``, trial number). Trial numbers are handed out
  by the storage, unique across workers and continuing across resumes, so the streams never coincide and a
  resume continues the search; a single worker on a fresh study is reproducible;
- chooses the whole configuration when the trial starts (every parameter is known from the spec) and, when the
  inner sampler proposes a configuration that another trial of the study already holds (finished, running or
  queued), asks again with another seed, then, in a finite space, takes an unvisited configuration at random.
  ``grid`` studies and ablation ``rows`` take unvisited configurations in declaration order;
- in a space over several builders, keeps of a proposal only the chosen builder's parameters (``project``), so
  a configuration is the builder and its own knobs and the other builders' parameters never make it look new.

Trials that were queued with fixed parameters (a retry of an interrupted trial) keep them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from archsearch.search.space import config_key
from archsearch.training.seeds import trial_seed
from archsearch.util.registry import Registry

#: Proposals asked of the inner sampler before falling back to an unvisited configuration.
ATTEMPTS = 8

#: ``search.sampler`` name → maker of the inner sampler from a seed (``grid`` and ablation rows enumerate
#: configurations instead and need no maker).
SAMPLERS: Registry[Callable[[int], BaseSampler]] = Registry("sampler")
SAMPLERS.register("tpe", lambda seed: optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True))
SAMPLERS.register("nsga2", lambda seed: optuna.samplers.NSGAIISampler(seed=seed))
SAMPLERS.register("random", lambda seed: optuna.samplers.RandomSampler(seed=seed))


def taken_keys(study: Study, exclude: int | None = None) -> set[str]:
    """Configurations held by the study's trials: finished (a failed one included: it is retried through a
    queued copy, never by sampling it again), running or queued."""
    keys = set()
    for t in study.get_trials(deepcopy=False):
        if t.number == exclude or (not t.params and not t.system_attrs.get("fixed_params")):
            continue
        keys.add(config_key(t.params or t.system_attrs.get("fixed_params", {})))
    return keys


class DistinctSampler(BaseSampler):
    """See the module docstring. ``make(seed)`` builds the inner sampler (None: enumerate ``configurations``);
    ``project`` keeps the parameters of one configuration from a proposal over ``distributions`` (default: all)."""

    def __init__(
        self,
        make: Callable[[int], BaseSampler] | None,
        seed: int,
        distributions: dict[str, BaseDistribution],
        configurations: list[dict[str, Any]] | None,
        *,
        ordered: bool = False,
        project: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self._project = project or dict
        self._make = make
        self._seed = seed
        self._distributions = distributions
        self._configurations = configurations
        self._ordered = ordered
        self._inner: BaseSampler = optuna.samplers.RandomSampler(seed=seed)

    # -- BaseSampler ------------------------------------------------------------------------------------
    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._inner = self._new_inner(trial.number, 0, study, trial)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(self._distributions)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if trial.system_attrs.get("fixed_params") or not search_space:
            return {}
        taken = taken_keys(study, exclude=trial.number)
        rng = random.Random(trial_seed(self._seed, "fallback", trial.number))
        if self._make is not None:
            for attempt in range(ATTEMPTS):
                inner = self._inner if attempt == 0 else self._new_inner(trial.number, attempt, study, trial)
                candidate = self._propose(inner, study, trial, search_space)
                if config_key(candidate) not in taken:
                    self._inner = inner
                    return candidate
        if self._configurations is not None:
            free = [c for c in self._configurations if config_key(c) not in taken]
            if free:
                return free[0] if self._ordered else rng.choice(free)
        # An infinite space whose proposals keep colliding, or an exhausted finite one (the run loop stops
        # before asking in that case): the trial pipeline notices the duplicate and does not train it.
        return self._propose(self._inner, study, trial, search_space)

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self._inner.after_trial(study, trial, state, values)

    # -- helpers ----------------------------------------------------------------------------------------
    def _new_inner(self, number: int, attempt: int, study: Study, trial: FrozenTrial) -> BaseSampler:
        seed = trial_seed(self._seed, "trial", number, attempt)
        inner = self._make(seed) if self._make is not None else optuna.samplers.RandomSampler(seed=seed)
        inner.before_trial(study, trial)
        return inner

    def _propose(
        self, inner: BaseSampler, study: Study, trial: FrozenTrial, space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        relative = inner.infer_relative_search_space(study, trial)
        params = dict(inner.sample_relative(study, trial, relative)) if relative else {}
        for name, dist in space.items():
            if name not in params:
                params[name] = inner.sample_independent(study, trial, name, dist)
        return self._project({name: params[name] for name in space})
