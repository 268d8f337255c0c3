"""Train one architecture of a study to convergence: resumable, scored on the validation split every K iterations,
its best and last weights in the study's artifact store, the result recorded beside the study's proxy trials.

A search ends with a front of proxies; what a user ships is one architecture trained properly, with the same
recipe (optimizer, schedule, augmentation, data, seed discipline) as the proxy but a full budget. Each final
training is a trial of the companion study ``<name>.final`` in the study's storage, recording the architecture
(builder, resolved knobs, where it came from: a trial number, a paper variant or knobs given), the recipe, the
validation mIoU after every evaluation (``history``), the best and the last one (``best_miou``, ``final_miou``),
and the artifact ids of the best and the last checkpoint.

**Resumable.** The last checkpoint holds the whole state of the fit (:meth:`archsearch.training.train.Trainer.
state_dict`: weights, optimizer, loss scaler, iterations done, augmentation and global random states; the data
order is the seed's). It is written after every evaluation and when SIGINT or SIGTERM stops the command; a kill -9
loses the work since the last evaluation. The same command continues from it and, on the CPU, reaches the same
weights as an uninterrupted run. A training of the same architecture with another recipe is refused (one line
naming the keys that differ) unless ``restart`` is asked for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import signal
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from archsearch import builders
from archsearch.search import workers
from archsearch.search.storage import open_storage
from archsearch.search.trial import Context, timing_threads
from archsearch.spec import Spec, to_dict
from archsearch.spec.fingerprint import differences
from archsearch.training import checkpoint, scoring, train
from archsearch.training.seeds import seed_everything, seed_of
from archsearch.util import interrupts
from archsearch.util.errors import ArchsearchError
from archsearch.util.formatting import fmt_duration

STUDY_SUFFIX = ".final"


class Stopped(ArchsearchError):
    """SIGINT or SIGTERM stopped a final training after its state was saved; ``signum`` says which."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message, exit_code=128 + signum)  # 130 for SIGINT, 143 for SIGTERM
        self.signum = signum


@dataclass(frozen=True)
class Budget:
    """A final training's budget: ``iterations`` at ``scale`` × the data's native resolution, scored every
    ``eval_every`` iterations (and at the end)."""

    iterations: int
    scale: float
    eval_every: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def budget(
    spec: Spec,
    train_images: int,
    *,
    iterations: int | None = None,
    epochs: float | None = None,
    scale: float | None = None,
    eval_every: int | None = None,
) -> Budget:
    """The budget from ``iterations`` or ``epochs`` (passes over ``train_images`` at the spec's batch), at
    ``scale`` (default: the proxy's), scored every ``eval_every`` iterations (default: ten times in all)."""
    if (iterations is None) == (epochs is None):
        raise ArchsearchError("train: give exactly one of --iterations and --epochs")
    if epochs is not None:
        if epochs <= 0:
            raise ArchsearchError(f"--epochs {epochs}: must be > 0")
        iterations = max(1, math.ceil(epochs * train_images / spec.proxy.batch))
    assert iterations is not None
    if iterations < 1:
        raise ArchsearchError(f"--iterations {iterations}: must be >= 1")
    every = eval_every if eval_every is not None else max(1, math.ceil(iterations / 10))
    if every < 1:
        raise ArchsearchError(f"--eval-every {every}: must be >= 1")
    s = spec.proxy.scale if scale is None else float(scale)
    if not 0 < s <= 1:
        raise ArchsearchError(f"--scale {s}: must be in (0, 1]")
    return Budget(int(iterations), s, int(every))


@dataclass(frozen=True)
class Architecture:
    """What to train: a builder, its knobs as given, and where they came from (``trial 7``, a variant's name,
    ``knobs``)."""

    builder: str
    knobs: dict[str, Any]
    source: str

    @property
    def resolved(self) -> dict[str, Any]:
        return builders.get(self.builder).resolve(self.knobs).as_dict()

    @property
    def key(self) -> str:
        blob = json.dumps({"b": self.builder, "k": self.resolved}, sort_keys=True, default=list)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


def of_trial(study: optuna.Study, number: int) -> Architecture:
    """The architecture that trial ``number`` of a search study trained (its builder and resolved knobs)."""
    for t in study.get_trials(deepcopy=False):
        if t.number == number:
            knobs = t.user_attrs.get("knobs")
            if not isinstance(knobs, dict):
                break
            builder = t.user_attrs.get("builder") or study.user_attrs.get("spec", {}).get("builder")
            if not builder:
                break
            return Architecture(str(builder), dict(knobs), f"trial {number}")
    done = [t.number for t in study.get_trials(deepcopy=False) if isinstance(t.user_attrs.get("knobs"), dict)]
    raise ArchsearchError(
        f"--trial {number}: study {study.study_name!r} has no such trial with knobs "
        f"(trials: {', '.join(map(str, done[:20])) or 'none'})"
    )


def of_variant(name: str) -> Architecture:
    """A paper's named variant (``ndnet.ndnet45``)."""
    v = builders.variant(name)
    return Architecture(v.builder, dict(v.knobs), f"variant {v.qualname}")


def final_spec(spec: Spec, b: Budget) -> Spec:
    """The study's spec with the proxy budget replaced by the final one (every other key of the recipe kept)."""
    return dataclasses.replace(spec, proxy=dataclasses.replace(spec.proxy, iterations=b.iterations, scale=b.scale))


#: Keys of the recipe that do not change what a training means (where the data sit, loader processes).
_NOT_RECIPE = {("data", "root"), ("data", "cache_dir"), ("proxy", "workers")}


def recipe(spec: Spec, arch: Architecture, b: Budget) -> dict[str, Any]:
    """What makes two final trainings the same training: architecture, classes, data, the proxy recipe at the
    final budget, the evaluation interval and the seed."""
    d = to_dict(final_spec(spec, b))
    out: dict[str, Any] = {
        "builder": arch.builder,
        "knobs": arch.resolved,
        "num_classes": d.get("num_classes"),
        "data": d["data"],
        "proxy": d["proxy"],
        "eval_every": b.eval_every,
        "seed": d["search"]["seed"],
    }
    for section, key in _NOT_RECIPE:
        out[section].pop(key, None)
    return json.loads(json.dumps(out, sort_keys=True, default=list))


def open_study(url: str, name: str) -> optuna.Study:
    """The companion study ``<name>.final`` (created on first use) in the study's storage."""
    return optuna.create_study(
        study_name=f"{name}{STUDY_SUFFIX}", storage=open_storage(url), direction="maximize", load_if_exists=True
    )


@dataclass(frozen=True)
class Result:
    """A final training's outcome, as recorded on its trial of the companion study."""

    number: int
    best_miou: float
    best_iteration: int
    final_miou: float
    history: list[dict[str, Any]]
    seconds: float
    resumed_from: int
    best_artifact: str
    last_artifact: str


def _result(t: FrozenTrial) -> Result:
    a = t.user_attrs
    return Result(
        number=t.number,
        best_miou=float(a["best_miou"]),
        best_iteration=int(a["best_iteration"]),
        final_miou=float(a["final_miou"]),
        history=list(a.get("history", [])),
        seconds=float(a.get("train_seconds", 0.0)),
        resumed_from=int(a.get("resumed_from", 0)),
        best_artifact=str(a.get("best_artifact", "")),
        last_artifact=str(a.get("last_artifact", "")),
    )


def _mine(study: optuna.Study, arch: Architecture) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("arch_key") == arch.key]


def _unfinished(study: optuna.Study, arch: Architecture) -> FrozenTrial | None:
    """The latest earlier training of ``arch`` that stopped before its end (failed, or RUNNING in a worker of this
    machine that is gone) and saved a state to continue from; a live one is refused."""
    for t in sorted(_mine(study, arch), key=lambda x: x.number, reverse=True):
        if t.state == TrialState.COMPLETE:
            return None
        if t.state == TrialState.RUNNING:
            worker = t.user_attrs.get("worker")
            if not workers.local_and_dead(worker):
                raise ArchsearchError(
                    f"final training of {arch.source} is running in another process ({worker}); "
                    "wait for it, or stop it first"
                )
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                study.tell(t.number, state=TrialState.FAIL)
        if t.user_attrs.get("state_artifact"):
            return t
    return None


class _Store:
    """The study's artifact store, holding one current file per role (``best``, ``last``, ``state``) of a trial."""

    def __init__(self, location: str, trial: optuna.Trial) -> None:
        self.location, self.trial = location, trial
        self._store = checkpoint.store(location)

    def put(self, role: str, path: Path) -> str:
        artifact = checkpoint.upload(self.trial, path, self.location)
        old = self.trial.user_attrs.get(f"{role}_artifact")
        self.trial.set_user_attr(f"{role}_artifact", artifact)
        if old and old != artifact:
            with contextlib.suppress(Exception):
                self._store.remove(old)
        return artifact


def run(
    spec: Spec,
    arch: Architecture,
    b: Budget,
    *,
    url: str,
    artifacts: Path,
    store: str | None = None,
    progress: bool = True,
    echo: Callable[[str], Any] = print,
    restart: bool = False,
) -> Result:
    """Train ``arch`` with the study's recipe at budget ``b``, resuming an interrupted training of the same
    recipe; record it in the companion study (module docstring). Returns the recorded result; a training of
    this recipe that already finished is returned as it is."""
    fspec = final_spec(spec, b)
    ctx = Context(fspec, artifacts, progress=progress, echo=echo, store=store)
    want = recipe(spec, arch, b)
    study = open_study(url, spec.name)
    earlier = None if restart else _unfinished(study, arch)
    if earlier is None and not restart:
        for t in sorted(_mine(study, arch), key=lambda x: x.number, reverse=True):
            if t.state == TrialState.COMPLETE and t.user_attrs.get("recipe") == want:
                echo(f"final training of {arch.source} already done (final trial {t.number})")
                return _result(t)
    if earlier is not None and earlier.user_attrs.get("recipe") != want:
        diff = differences(earlier.user_attrs.get("recipe") or {}, want)
        raise ArchsearchError(
            f"final training of {arch.source} was started with another recipe ({'; '.join(diff[:4])}); "
            "use the same options to continue it, or --restart to start over"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the storage's heartbeat is Study.optimize's; this trial saves its state
        trial = study.ask()
    for k, v in {
        "arch_key": arch.key,
        "builder": arch.builder,
        "knobs": arch.resolved,
        "source": arch.source,
        "recipe": want,
        "budget": b.as_dict(),
        "worker": workers.identity(),
    }.items():
        trial.set_user_attr(k, v)
    try:
        return _train(ctx, arch, b, trial, study, earlier)
    except Stopped:
        raise
    except BaseException as exc:
        with contextlib.suppress(Exception):
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}")
            study.tell(trial, state=TrialState.FAIL)
        raise


def _train(
    ctx: Context, arch: Architecture, b: Budget, trial: optuna.Trial, study: optuna.Study, earlier: FrozenTrial | None
) -> Result:
    spec = ctx.spec
    location = ctx.store
    assert location is not None
    store = _Store(location, trial)
    seed = seed_of(spec, arch.resolved, arch.builder)
    seed_everything(seed)
    model = builders.build(arch.builder, ctx.num_classes, **arch.knobs)
    seed_everything(seed)
    train_set = ctx.dataset(spec.data.train_split)
    val_set = ctx.scoring_dataset(spec.data.val_split)
    threads = timing_threads(spec)
    trainer = train.Trainer(model, train_set, spec.proxy, ctx.device, seed=seed, iterations=b.iterations)
    history: list[dict[str, Any]] = []
    best = (-math.inf, 0)
    seconds = 0.0
    if earlier is not None:
        state = torch.load(
            checkpoint.fetch(location, str(earlier.user_attrs["state_artifact"])), map_location="cpu", weights_only=True
        )
        trainer.load_state_dict(state["trainer"])
        history = list(state["history"])
        best = (float(state["best_miou"]), int(state["best_iteration"]))
        seconds = float(state["seconds"])
        for role in ("best", "last"):  # until this training writes its own
            if earlier.user_attrs.get(f"{role}_artifact"):
                trial.set_user_attr(f"{role}_artifact", earlier.user_attrs[f"{role}_artifact"])
        trial.set_user_attr("resumed_from", trainer.done)
        trial.set_user_attr("resumed_trial", earlier.number)
        ctx.say(f"resuming the final training of {arch.source} at iteration {trainer.done} of {b.iterations}")
    flag: dict[str, int] = {}
    bar = tqdm(total=b.iterations, initial=trainer.done, desc=f"train {arch.source}", disable=not ctx.progress)

    def save(role: str) -> None:
        with tempfile.TemporaryDirectory(dir=ctx.artifacts, prefix=".final-") as tmp:
            if role == "state":
                path = Path(tmp) / "state.pt"
                torch.save(
                    {
                        "trainer": trainer.state_dict(),
                        "history": history,
                        "best_miou": best[0],
                        "best_iteration": best[1],
                        "seconds": seconds,
                    },
                    path,
                )
            else:
                path = checkpoint.save(
                    trainer.scored_model,
                    Path(tmp) / f"{role}.pt",
                    data=spec.data.name,
                    root=spec.data.root,
                    scale=spec.proxy.scale,
                )
            store.put(role, path)

    ctx.artifacts.mkdir(parents=True, exist_ok=True)
    try:
        with interrupts.handling(lambda signum, _frame: flag.update(signum=signum)):  # stop between iterations
            while trainer.done < b.iterations:
                if "signum" in flag:
                    break
                step = min(b.eval_every - trainer.done % b.eval_every, b.iterations - trainer.done)
                t0 = time.perf_counter()
                for _ in range(step):  # one iteration at a time: a signal stops it between two of them
                    fit = trainer.advance(1, threads=threads)
                    bar.update(1)
                    bar.set_postfix(loss=f"{fit.final_loss:.3f}", refresh=False)
                    if "signum" in flag:
                        break
                seconds += time.perf_counter() - t0
                if trainer.done % b.eval_every and trainer.done < b.iterations:
                    break  # stopped between two evaluations
                scores = scoring.evaluate(
                    trainer.scored_model,
                    val_set,
                    ctx.device,
                    batch=spec.proxy.eval_batch,
                    progress=False,
                    threads=threads,
                )
                miou = float(scores.miou)
                history.append({"iteration": trainer.done, "miou": miou, "seconds": seconds})
                trial.set_user_attr("history", history)
                bar.set_postfix(val_miou=f"{100 * miou:.2f}%", refresh=False)
                ctx.say(
                    f"iteration {trainer.done}/{b.iterations}: val mIoU {100 * miou:.2f}% "
                    f"({fmt_duration(seconds)} training)"
                )
                if miou > best[0]:
                    best = (miou, trainer.done)
                    save("best")
                save("last")
                save("state")
            if "signum" in flag:
                save("state")
                save("last")
                trial.set_user_attr(
                    "fail_reason", f"interrupted at iteration {trainer.done}; the same command continues"
                )
                study.tell(trial, state=TrialState.FAIL)
                name = signal.Signals(flag["signum"]).name
                raise Stopped(
                    f"stopped by {name} at iteration {trainer.done} of {b.iterations}; "
                    "the same command continues from there",
                    flag["signum"],
                )
    finally:
        bar.close()
    final = history[-1]["miou"]
    for k, v in {
        "best_miou": best[0],
        "best_iteration": best[1],
        "final_miou": final,
        "train_seconds": seconds,
        "iterations": b.iterations,
    }.items():
        trial.set_user_attr(k, v)
    study.tell(trial, best[0])
    return _result(_frozen(study, trial.number))


def _frozen(study: optuna.Study, number: int) -> FrozenTrial:
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def results_by_source(url: str, name: str) -> dict[int, Result]:
    """Finished final trainings of a study's trials, by the search trial number they came from (the newest of
    each); empty when the study has no companion study."""
    try:
        study = optuna.load_study(study_name=f"{name}{STUDY_SUFFIX}", storage=url)
    except KeyError:
        return {}
    out: dict[int, Result] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        source = str(t.user_attrs.get("source", ""))
        if source.startswith("trial "):
            out[int(source.split()[1])] = _result(t)
    return out
