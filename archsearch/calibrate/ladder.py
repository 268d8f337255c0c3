"""The calibration's plan: fidelities (trained proxy budgets and zero-cost scores), the architectures compared,
and the runs — each architecture at each fidelity with each seed index, found again in the study by what makes it
comparable (:meth:`Run.match`)."""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna

from archsearch import builders
from archsearch.search import space
from archsearch.search.trial import budget
from archsearch.spec.metrics import ZERO_COST, ZERO_COST_FREE
from archsearch.training.seeds import trial_seed
from archsearch.util.errors import ArchsearchError

STUDY_SUFFIX = ".calibrate"


class CalibrationError(ArchsearchError):
    """A bad ``calibrate`` option (one line, exit 2)."""


@dataclass(frozen=True)
class Fidelity:
    """A proxy budget: ``iterations`` of training at ``scale`` × the data's native resolution."""

    iterations: int
    scale: float

    @property
    def cost(self) -> float:
        """Relative training cost: iterations × pixels per image (∝ scale²)."""
        return self.iterations * self.scale**2

    @property
    def label(self) -> str:
        return f"{self.iterations}x{self.scale:g}"

    @property
    def key(self) -> str:
        """What identifies its runs in the study (with the architecture, seed index and recipe)."""
        return self.label

    @property
    def trained(self) -> bool:
        return True


@dataclass(frozen=True)
class ZeroCost:
    """A zero-cost fidelity ``zc:NAME``: no training; a run is the architecture's score ``NAME``
    (:mod:`archsearch.training.zerocost`; ``params`` and ``madds`` are its counts) at initialisation under the
    run's seed, on a batch of the training split at ``scale`` (the top fidelity's, filled in by
    :func:`resolve_ladder`)."""

    name: str
    scale: float | None = None

    cost = 0.0
    iterations = 0

    @property
    def label(self) -> str:
        return f"zc:{self.name}"

    @property
    def key(self) -> str:
        return self.label if self.name in ZERO_COST_FREE else f"{self.label}@{self.scale:g}"

    @property
    def trained(self) -> bool:
        return False


#: A rung of the calibration ladder: a trained proxy budget or a zero-cost score.
Rung = Fidelity | ZeroCost


def parse_fidelity(text: str, *, option: str = "--fidelities") -> Rung:
    """``ITERxSCALE`` (``150x0.5``): a positive integer of iterations and a scale in (0, 1]; or ``zc:NAME``, a
    zero-cost score (:data:`archsearch.spec.metrics.ZERO_COST`)."""
    if text.strip().lower().startswith("zc:"):
        name = text.strip()[3:].strip().lower()
        if name not in ZERO_COST:
            raise CalibrationError(
                f"{option}: {text!r}: unknown zero-cost score; allowed: zc:{', zc:'.join(ZERO_COST)}"
            )
        if option == "--top":
            raise CalibrationError(f"--top {text}: the top fidelity is a trained one (ITERxSCALE)")
        return ZeroCost(name)
    parts = text.strip().lower().split("x")
    try:
        if len(parts) != 2:
            raise ValueError
        iterations, scale = int(parts[0]), float(parts[1])
    except ValueError:
        raise CalibrationError(
            f"{option}: {text!r} is not a fidelity; expected ITERxSCALE such as 150x0.5 (iterations x proxy scale)"
        ) from None
    if iterations < 1 or not 0 < scale <= 1:
        raise CalibrationError(f"{option}: {text!r}: allowed: iterations ≥ 1 and a scale in (0, 1]")
    return Fidelity(iterations, scale)


def parse_ladder(text: str) -> list[Rung]:
    """A comma-separated list of fidelities, each listed once."""
    ladder = [parse_fidelity(t) for t in text.split(",") if t.strip()]
    labels = [f.label for f in ladder]
    for label in labels:
        if labels.count(label) > 1:
            raise CalibrationError(f"--fidelities: {label} is listed twice")
    return ladder


def default_ladder(iterations: int, scale: float) -> list[Fidelity]:
    """The spec's proxy as top, with iterations/4 and /2 at its scale and iterations/2 at half its scale."""
    candidates = [
        Fidelity(iterations // 4, scale),
        Fidelity(iterations // 2, scale / 2),
        Fidelity(iterations // 2, scale),
        Fidelity(iterations, scale),
    ]
    out: list[Fidelity] = []
    for f in candidates:
        if f.iterations >= 1 and f not in out:
            out.append(f)
    return out


def resolve_ladder(ladder: Sequence[Rung], top: Rung | None) -> tuple[list[Rung], Fidelity]:
    """The ladder sorted by cost (``top`` added when missing; the zero-cost ones first, at the top's scale) and
    its top: the single most expensive fidelity, a trained one."""
    rungs = list(ladder)
    if top is not None and top not in rungs:
        rungs.append(top)
    if len(rungs) < 2:
        raise CalibrationError("--fidelities: give at least two fidelities (cheap ones and the top one)")
    if not any(f.trained for f in rungs):
        raise CalibrationError("--fidelities: zero-cost scores only; the top fidelity is a trained one (ITERxSCALE)")
    rungs.sort(key=lambda f: (f.cost, f.iterations, f.label))
    if top is None:
        top = rungs[-1]
        ties = [f.label for f in rungs[:-1] if math.isclose(f.cost, top.cost)]
        if ties:
            raise CalibrationError(
                f"--fidelities: {', '.join(ties)} and {top.label} cost the same (iterations × "
                "scale²); say which is the top with --top"
            )
    else:
        dearer = [f.label for f in rungs if f != top and f.cost >= top.cost]
        if dearer:
            raise CalibrationError(
                f"--top {top.label} is not the most expensive fidelity: {', '.join(dearer)} "
                f"cost as much or more (iterations × scale²); allowed: the fidelity with the "
                "largest cost"
            )
    assert isinstance(top, Fidelity)
    return [ZeroCost(f.name, top.scale) if isinstance(f, ZeroCost) else f for f in rungs], top


@dataclass(frozen=True)
class Arch:
    """One architecture of the calibration: its Optuna parameters, build knobs, resolved knobs and label."""

    key: str
    label: str
    params: dict[str, Any]
    knobs: dict[str, Any]
    resolved: dict[str, Any]
    builder: str = ""  # its builder (a space or rows may range over several)


def _arch_key(builder: str, resolved: dict[str, Any]) -> str:
    blob = json.dumps({"b": builder, "k": resolved}, sort_keys=True, default=list)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _label(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={str(v).replace(' ', '')}" for k, v in params.items())


def _arch(spec: Any, params: dict[str, Any]) -> Arch:
    builder, knobs, row = space.sample_config(optuna.trial.FixedTrial(params), spec)
    resolved = builders.get(builder).resolve(knobs).as_dict()
    label = spec.rows[row]["label"] if row is not None else _label(params)
    return Arch(_arch_key(builder, resolved), label, dict(params), knobs, resolved, builder)


def architectures(spec: Any, count: int) -> list[Arch]:
    """The spec's rows, else ``count`` distinct configurations of its space drawn with ``search.seed`` (all of
    a finite space that has fewer)."""
    if spec.rows:
        archs = [_arch(spec, {space.ROW_PARAM: i}) for i in range(len(spec.rows))]
    else:
        seed = trial_seed(spec.search.seed, "calibrate")
        configs = space.configurations(spec)
        if configs is not None:
            picked = random.Random(seed).sample(configs, min(count, len(configs)))
        else:  # a continuous space: Optuna's random sampler over the declared distributions, until distinct
            study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
            dists = space.distributions(spec)
            picked, keys = [], set()
            for _ in range(100 * count):
                params = study.ask(dists).params
                if space.config_key(params) not in keys:
                    keys.add(space.config_key(params))
                    picked.append(params)
                if len(picked) == count:
                    break
        archs = []
        for params in picked:  # two parameter sets may resolve to one architecture: keep it once
            arch = _arch(spec, params)
            if arch.key not in {a.key for a in archs}:
                archs.append(arch)
    if len(archs) < 2:
        raise CalibrationError(
            f"{spec.path}: {len(archs)} architecture; a ranking needs at least 2 (rows, or a "
            "space with 2 or more configurations)"
        )
    return archs


@dataclass(frozen=True)
class Run:
    """One planned training: an architecture at a fidelity with its seed index."""

    arch: Arch
    fidelity: Rung
    seed_index: int

    def match(self, recipe: str) -> str:
        return f"{self.arch.key}|{self.fidelity.key}|{self.seed_index}|{recipe}"


def recipe(spec: Any) -> str:
    """What else makes two trainings comparable: the builder and the budget without iterations, scale, seeds."""
    b = budget(spec)
    proxy = {k: v for k, v in b["proxy"].items() if k not in ("iterations", "scale", "seeds")}
    what = {"builder": spec.builder, "classes": spec.num_classes, "proxy": proxy, "data": b["data"]}
    if spec.multi:  # a space over several builders: each one's fixed knobs (absent for one builder, as before)
        what["builders"] = {name: space.fixed for name, space in spec.spaces().items()}
    blob = json.dumps(what, sort_keys=True, default=list)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def plan(archs: Sequence[Arch], ladder: Sequence[Rung], top: Fidelity, seeds: int, top_seeds: int) -> list[Run]:
    """Every run: the top fidelity first (every comparison needs it), then the others from the cheapest (a
    zero-cost score: one per seed, also where the score does not depend on it: its seed noise is then 0)."""
    runs = []
    for f in [top, *(f for f in ladder if f != top)]:
        for i in range(top_seeds if f == top else seeds):
            runs += [Run(a, f, i) for a in archs]
    return runs


def study_name(spec: Any) -> str:
    return f"{spec.name}{STUDY_SUFFIX}"
