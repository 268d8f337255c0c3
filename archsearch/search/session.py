"""An open study: the sampler the spec asks for, the study created or resumed under one meaning, and the lock that
serialises its workers' short critical sections.

- **distinct configurations** — every parameter is chosen at ask time by
  :class:`~archsearch.search.sampler.DistinctSampler`, under the study's lock, so no two trials hold one configuration;
- **one meaning** — the study stores a fingerprint of what makes trials comparable; a run whose spec differs is
  refused (:class:`SpecChanged`) unless asked to continue anyway.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

import optuna
from optuna.storages import RDBStorage
from sqlalchemy.exc import SQLAlchemyError

from archsearch.search import faults, retries, space
from archsearch.search.faults import Outage
from archsearch.search.sampler import SAMPLERS, DistinctSampler
from archsearch.search.storage import creation_lock, open_storage, sqlite_path
from archsearch.spec import Spec, to_dict
from archsearch.spec.fingerprint import differences, fingerprint
from archsearch.util import locks
from archsearch.util.errors import ArchsearchError

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


def _one_creator_at_a_time(fn: Callable[Concatenate[Spec, str, P], R]) -> Callable[Concatenate[Spec, str, P], R]:
    """Run ``fn(spec, url, ...)`` inside :func:`~archsearch.search.storage.creation_lock` of ``url``."""

    @functools.wraps(fn)
    def wrapper(spec: Spec, url: str, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with creation_lock(url):
            return fn(spec, url, *args, **kwargs)

    return wrapper


def sampler(spec: Spec) -> DistinctSampler:
    """The sampler the spec asks for, wrapped so that every trial gets its own stream and a new configuration.

    Row studies take their rows in order, ``grid`` takes unvisited grid points at random; TPE (multivariate,
    with the constant liar for concurrent workers), NSGA-II and random are re-seeded per trial from
    (``search.seed``, trial number).
    """
    seed = spec.search.seed
    dists = space.distributions(spec)
    configs = space.configurations(spec)

    def project(params: dict[str, Any]) -> dict[str, Any]:
        return space.project(spec, params)

    if spec.rows or spec.search.sampler == "grid":
        return DistinctSampler(None, seed, dists, configs, ordered=bool(spec.rows), project=project)
    return DistinctSampler(SAMPLERS.get(spec.search.sampler), seed, dists, configs, project=project)


class SpecChanged(ArchsearchError):
    """The stored study was run with a spec whose trials would not be comparable with this one's."""


def _check_fingerprint(study: optuna.Study, spec: Spec, url: str, allow_changed: bool) -> None:
    stored = study.user_attrs.get("fingerprint")
    current = fingerprint(spec)
    if stored is None or stored == current:
        return
    diff = differences(stored, current)
    if any(d.startswith("objectives") for d in diff):
        raise SpecChanged(
            f"{spec.path}: study {spec.name!r} in {url} has objectives "
            f"{[o['name'] for o in stored['objectives']]}, the spec asks for {[o.name for o in spec.objectives]}; "
            "objectives cannot change within a study: use another name (--set name=NEW) or storage"
        )
    if not allow_changed:
        shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
        raise SpecChanged(
            f"{spec.path}: study {spec.name!r} in {url} was run with another spec ({shown}); its trials would not "
            "be comparable: use another name (--set name=NEW) or storage, or pass --allow-changed-spec to add "
            "these trials anyway (each trial records its budget)"
        )
    log.warning("study %s: continuing with a changed spec (%s)", spec.name, "; ".join(diff))


@dataclass
class Session:
    """An open study with what the run loop needs beside it: the storage, its URL, the spec, and the clock of a
    storage that went away (:class:`~archsearch.search.faults.Outage`)."""

    study: optuna.Study
    storage: RDBStorage
    url: str
    spec: Spec
    outage: Outage

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """The study-wide lock between workers (:func:`archsearch.util.locks.database_lock`)."""
        with locks.database_lock(self.storage.engine, self.spec.name):
            yield


@_one_creator_at_a_time
def open_session(spec: Spec, url: str, *, allow_changed: bool = False) -> Session:
    """Create or resume the study named ``spec.name`` (for a run): directions from the spec's objectives, the
    spec and its fingerprint stored when the study is created, a changed spec refused."""
    storage = open_storage(url, on_stale=retries.retry_stale)
    directions = [o.direction for o in spec.objectives]
    with locks.database_lock(storage.engine, spec.name):
        try:
            study = optuna.create_study(
                study_name=spec.name,
                storage=storage,
                directions=directions,
                sampler=sampler(spec),
                load_if_exists=True,
            )
        except ValueError as exc:
            raise ArchsearchError(f"{url}: study {spec.name!r}: {exc}") from None
        stored_directions = [d.name.lower() for d in study.directions]
        if stored_directions != directions:
            raise SpecChanged(
                f"{url}: study {spec.name!r} exists with directions {stored_directions}, the spec asks for "
                f"{directions}; use another name or storage"
            )
        if "fingerprint" not in study.user_attrs:
            study.set_user_attr("spec", to_dict(spec))
            study.set_user_attr("fingerprint", fingerprint(spec))
            study.set_metric_names([o.name for o in spec.objectives])
        else:
            _check_fingerprint(study, spec, url, allow_changed)
    outage = Outage(url)
    faults.ride_out(storage.engine, outage)
    return Session(study, storage, url, spec, outage)


def open_study(spec: Spec, url: str, *, create: bool = True, allow_changed: bool = False) -> optuna.Study:
    """The study named ``spec.name``. ``create=False`` (reports) opens an existing study for reading: it writes
    nothing — no database file, no study, no user attributes — and a missing study is an error."""
    if create:
        return open_session(spec, url, allow_changed=allow_changed).study
    db = sqlite_path(url)
    if db is not None and not db.is_file():  # connecting would create an empty database
        raise ArchsearchError(
            f"{url}: no study named {spec.name!r} (no such file {db}); run `archsearch run {spec.path}` first"
        )
    storage = open_storage(url, create=False, on_stale=retries.retry_stale)
    try:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    except SQLAlchemyError as exc:
        raise ArchsearchError(f"{url}: not an archsearch (Optuna) storage ({exc.__class__.__name__})") from None
    if spec.name not in names:
        raise ArchsearchError(
            f"{url}: no study named {spec.name!r} (studies there: {', '.join(names) or 'none'}); "
            f"run `archsearch run {spec.path}` first"
        )
    return optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler(spec))
