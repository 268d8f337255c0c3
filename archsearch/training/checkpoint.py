"""Trained weights of a trial: one file format, saved and loaded in one place, kept in Optuna's artifact store.

A checkpoint is a ``torch.save`` of plain data — builder, knobs, classes, the data set it was trained on (name,
folder, proxy scale) and the state dict — loaded back with ``weights_only=True`` (no pickled code runs). A trial
uploads its checkpoint to an artifact store (:func:`store`): a local folder by default, any shared folder, or an
object store (``s3://bucket/prefix`` with boto3, ``gs://bucket`` with google-cloud-storage). The store's location
is kept on the study, so ``archsearch eval`` and ``pareto`` work from any machine that reaches the storage and
the store.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import optuna
import torch
import torch.nn as nn
from optuna.artifacts import (
    Boto3ArtifactStore,
    FileSystemArtifactStore,
    GCSArtifactStore,
    download_artifact,
    upload_artifact,
)
from optuna.artifacts.exceptions import ArtifactNotFound

from archsearch import builders
from archsearch.builders.registry import CONFIG_ATTR
from archsearch.util import files
from archsearch.util.errors import ArchsearchError

REQUIRED = ("builder", "knobs", "num_classes", "state_dict")


def payload(model: nn.Module, *, data: str, root: str | None, scale: float) -> dict[str, Any]:
    """What rebuilds the model (builder, knobs, classes; the variant it was built as) and evaluates it (data set,
    folder, scale)."""
    config = builders.config_of(model)
    return {
        "builder": config.builder,
        "knobs": config.knobs.as_dict(),
        "num_classes": config.num_classes,
        "variant": config.variant,
        "data": data,
        "root": root,
        "scale": scale,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def save(model: nn.Module, path: str | Path, *, data: str, root: str | None = None, scale: float = 1.0) -> Path:
    """Write the checkpoint of ``model`` to ``path`` atomically."""
    with files.atomic_path(path) as tmp:
        torch.save(payload(model, data=data, root=root, scale=scale), tmp)
    return Path(path)


def read(path: str | Path) -> dict[str, Any]:
    """The checkpoint's data (``weights_only=True``); a file that is not one is an :class:`ArchsearchError`."""
    path = Path(path)
    if not path.is_file():
        raise ArchsearchError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 — any unreadable or unsafe file
        raise ArchsearchError(f"{path}: not an archsearch checkpoint ({exc.__class__.__name__})") from None
    if not isinstance(ckpt, dict) or not set(REQUIRED) <= set(ckpt):
        raise ArchsearchError(f"{path}: not an archsearch checkpoint (needs {', '.join(REQUIRED)})")
    return ckpt


def load(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint and load its weights; weights that do not fit are one clear error."""
    ckpt = read(path)
    # the checkpoint's state dict replaces a pre-trained start: rebuild without reading the ``weights`` file, which
    # need not exist where the checkpoint is evaluated; the model still carries the knobs it was trained with
    knobs = {**ckpt["knobs"], **({"weights": None} if ckpt["knobs"].get("weights") is not None else {})}
    try:
        model = builders.build(ckpt["builder"], ckpt["num_classes"], **knobs)
    except (KeyError, ValueError, TypeError) as exc:
        raise ArchsearchError(f"{path}: cannot rebuild {ckpt['builder']!r} from its knobs ({exc})") from None
    if knobs != ckpt["knobs"]:  # the model carries the knobs it was trained with, its weights file included
        config = builders.config_of(model)
        # config.knobs is the builder's Knobs subclass, which has ``weights`` (the checkpoint's knobs name one); the
        # base class, its static type, does not
        trained = dataclasses.replace(config.knobs, weights=ckpt["knobs"]["weights"])  # type: ignore[call-arg]
        setattr(model, CONFIG_ATTR, dataclasses.replace(config, knobs=trained))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:  # missing, unexpected or mis-shaped tensors: the first one named
        details = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()] or [str(exc)]
        raise ArchsearchError(
            f"{path}: its weights do not fit builder {ckpt['builder']!r} with its knobs ({details[0][:200]})"
        ) from None
    return model, ckpt


class AtomicFileSystemArtifactStore(FileSystemArtifactStore):
    """Optuna's folder store, writing each artifact whole (a full disk leaves no partial file behind)."""

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        with files.atomic_path(self._get_filepath(artifact_id)) as tmp, open(tmp, "wb") as fh:
            shutil.copyfileobj(content_body, fh)


def store(location: str) -> Any:
    """An Optuna artifact store at ``location``: a folder (created), ``s3://bucket[/prefix]`` or ``gs://bucket``."""
    if location.startswith("s3://"):
        try:  # Optuna imports boto3 when the store is made
            return Boto3ArtifactStore(location[5:].split("/", 1)[0])
        except ImportError as exc:  # pragma: no cover — boto3 missing
            raise ArchsearchError(f"artifacts {location}: needs boto3 (pip install boto3)") from exc
    if location.startswith("gs://"):
        try:  # and google-cloud-storage
            return GCSArtifactStore(location[5:].split("/", 1)[0])
        except ImportError as exc:  # pragma: no cover
            raise ArchsearchError(f"artifacts {location}: needs google-cloud-storage") from exc
    folder = Path(location)
    if folder.exists() and not folder.is_dir():
        raise ArchsearchError(f"artifacts {location}: not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    return AtomicFileSystemArtifactStore(folder)


def upload(trial: optuna.Trial, path: str | Path, location: str) -> str:
    """Upload the checkpoint file ``path`` for ``trial``; returns the artifact id."""

    if "://" not in location:
        files.ensure_space(location, Path(path).stat().st_size)
    return upload_artifact(artifact_store=store(location), file_path=str(path), study_or_trial=trial)


def fetch(location: str, artifact_id: str) -> Path:
    """Download an artifact to a temporary file and return its path."""

    dest = Path(tempfile.mkdtemp(prefix="archsearch-")) / f"{artifact_id}.pt"
    try:
        download_artifact(artifact_store=store(location), file_path=str(dest), artifact_id=artifact_id)
    except ArtifactNotFound:
        raise ArchsearchError(f"artifacts {location}: no artifact {artifact_id}") from None
    return dest


def of_trial(attrs: Mapping[str, Any]) -> Path:
    """The checkpoint file a trial recorded (its user attributes ``checkpoint``, ``checkpoint_artifact`` and
    ``checkpoint_store``, as the trial writes them after :func:`upload`): the local file when this machine has it,
    else the artifact downloaded from the store."""
    local = Path(str(attrs.get("checkpoint", "")))
    if local.is_file():
        return local
    if "checkpoint_artifact" not in attrs or "checkpoint_store" not in attrs:
        raise ArchsearchError(f"checkpoint {local}: no such file, and the trial records no artifact store")
    return fetch(str(attrs["checkpoint_store"]), str(attrs["checkpoint_artifact"]))
