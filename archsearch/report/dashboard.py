"""A live view of a study: optuna-dashboard served on its storage, with the Pareto front attached to the study.

optuna-dashboard (the ``dashboard`` extra) reads the study as any worker writes it, so a running search shows
its trials as they finish: every trial's record (its user attributes: knobs, cost, mIoU, timings, checkpoint)
on the trial pages, the objectives under their names. The front's plot (:func:`report.export_pareto`'s PNG) is
uploaded to the study through Optuna's artifact API into the artifact store the run keeps its checkpoints in,
so the dashboard shows it beside the checkpoints; a front that has not changed since the last upload is not
uploaded again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import tempfile
from collections.abc import Iterable
from pathlib import Path

import optuna
from optuna.artifacts import get_all_artifact_meta, upload_artifact
from optuna.storages import BaseStorage

from archsearch.report.pareto import export_pareto
from archsearch.spec import Spec
from archsearch.training import checkpoint
from archsearch.util.errors import ArchsearchError

#: The pip command that installs optuna-dashboard.
EXTRA = "pip install 'archsearch[dashboard]'"


def require() -> None:
    """:class:`ArchsearchError` (one line, the install command) when optuna-dashboard is not installed."""
    if importlib.util.find_spec("optuna_dashboard") is None:
        raise ArchsearchError(f"the dashboard needs the package optuna-dashboard: {EXTRA}")


def store_location(spec: Spec, artifacts: Path, trials: Iterable[optuna.trial.FrozenTrial]) -> str:
    """The artifact store the run uses: the one its trials recorded (``checkpoint_store``, the latest trial's),
    else the one a run would use (the spec's ``artifacts``, else ``checkpoints/`` in the ``artifacts`` folder,
    as :class:`archsearch.search.trial.Context` makes it)."""
    recorded = [str(t.user_attrs["checkpoint_store"]) for t in trials if "checkpoint_store" in t.user_attrs]
    if recorded:
        return recorded[-1]
    return spec.artifacts or str((artifacts / "checkpoints").resolve())


def attach_front(study: optuna.Study, name: str, location: str) -> tuple[str, bool] | None:
    """Upload the Pareto front's PNG to ``study`` in the artifact store at ``location``; returns the artifact's
    file name and whether it was uploaded now (False: the same plot is attached already), or None when no trial
    is complete (no front to draw).

    The file is named ``<name>_pareto_<finished>trials_<sha256[:12]>.png`` after the finished trials it shows and
    its content, so each change of the front adds one plot and an unchanged front adds none."""

    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return None
    store = checkpoint.store(location)
    with tempfile.TemporaryDirectory(prefix="archsearch-front-") as tmp:
        png = export_pareto(study, Path(tmp), name)["png"]
        digest = hashlib.sha256(png.read_bytes()).hexdigest()[:12]
        finished = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
        target = png.with_name(f"{name}_pareto_{finished}trials_{digest}.png")
        png.rename(target)
        if any(meta.filename == target.name for meta in get_all_artifact_meta(study)):
            return target.name, False
        upload_artifact(artifact_store=store, file_path=str(target), study_or_trial=study, mimetype="image/png")
    return target.name, True


def url(host: str, port: int, storage: BaseStorage, name: str) -> str:
    """The address of study ``name``'s page on the dashboard (its id from the storage's public API)."""
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
    return f"http://{shown}:{port}/dashboard/studies/{storage.get_study_id_from_name(name)}"


def serve(storage_url: str, location: str, host: str, port: int) -> None:
    """Serve optuna-dashboard on the storage at ``storage_url`` with the artifact store at ``location`` until
    interrupted; a port that cannot be bound is an :class:`ArchsearchError`."""
    require()
    from optuna_dashboard import run_server

    try:
        run_server(storage_url, host=host, port=port, artifact_store=checkpoint.store(location))
    except OSError as exc:
        raise ArchsearchError(f"--port {port}: cannot serve on {host}:{port} ({exc.strerror or exc})") from None
