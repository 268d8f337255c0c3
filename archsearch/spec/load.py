"""Spec files in and out: read (with ``base:`` files and ``--set`` overrides), validate into a :class:`Spec` with
one-line errors (``FILE: dotted.key: message; allowed: …``, which the command line prints with exit status 2),
save as plain data, check a storage URL, and publish the JSON schema (``archsearch schema``)."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError

from archsearch import builders
from archsearch.cost import CONVENTIONS
from archsearch.cost.runtimes import RUNTIMES
from archsearch.spec.declarations import TAGS
from archsearch.spec.errors import one_line
from archsearch.spec.file import BASE_KEY, apply_overrides, expand_env, read
from archsearch.spec.model import Spec
from archsearch.spec.sections import DATA_NAMES, GATE_METRICS, MAX_NAME, METRICS, DataSpec, check_url
from archsearch.util.errors import SpecError

_ADAPTER: TypeAdapter[Spec] = TypeAdapter(Spec)
_DATA_ADAPTER: TypeAdapter[DataSpec] = TypeAdapter(DataSpec)


def validate_storage_url(url: str, *, source: str = "--storage", key: str | None = None) -> None:
    """An SQLAlchemy URL (``sqlite:///runs/x.db``, ``postgresql://user@host/db``) or an error naming it."""
    try:
        check_url(url)
    except PydanticCustomError as exc:
        raise SpecError(exc.message(), file=source, key=key) from None


#: Keys whose string values expand ``${VAR}`` and ``~``.
_PATH_KEYS = (("data", "root"), ("data", "cache_dir"), ("storage",), ("artifacts",), ("calibration",))


def _expand_paths(raw: dict[str, Any], file: str) -> dict[str, Any]:
    out = dict(raw)
    for keys in _PATH_KEYS:
        node = out
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                break
            node[k] = node = dict(node[k])
        else:
            if isinstance(node.get(keys[-1]), str):
                node[keys[-1]] = expand_env(node[keys[-1]], file=file, key=".".join(keys))
    return out


def parse(raw: Any, *, file: str) -> Spec:
    """Validate a raw mapping (from YAML) into a :class:`Spec`; errors are one-line :class:`SpecError`."""
    if not isinstance(raw, dict):
        raise SpecError("expected a mapping of top-level keys", file=file)
    try:
        return _ADAPTER.validate_python(_expand_paths(raw, file), context={"path": file})
    except ValidationError as exc:
        raise one_line(exc, file=file, skip=TAGS) from None


def parse_data(raw: Any, *, file: str) -> DataSpec:
    """Validate a ``data:`` mapping alone (e.g. from the resolved ``spec.yaml`` beside a run's checkpoints)."""
    try:
        data = _DATA_ADAPTER.validate_python({} if raw is None else raw)
    except ValidationError as exc:
        raise one_line(exc, file=file, skip=TAGS, prefix=("data",)) from None
    if data.name not in DATA_NAMES:
        raise SpecError(f"{data.name!r} is not allowed; allowed: {', '.join(DATA_NAMES)}", file=file, key="data.name")
    return data


def load(path: str | Path, overrides: typing.Sequence[str] = ()) -> Spec:
    """Read (with its ``base:`` files), override (``--set``) and validate a spec file. Errors are
    :class:`SpecError` (one line)."""
    file = str(path)
    raw = read(path)
    if isinstance(raw, dict):
        apply_overrides(raw, overrides, file=file)
    return parse(raw, file=file)


def to_dict(spec: Spec) -> dict[str, Any]:
    """The resolved spec as plain YAML/JSON data (tuples → lists), for saving beside the storage. Keys a spec
    does not use (``builders`` of a one-builder spec, ``builder`` of a several-builder one, an absent
    ``search.fidelity`` or ``calibration``) are left out, so a spec saved before they existed reads the same."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    out = plain(_ADAPTER.dump_python(spec, by_alias=True))
    out.pop("path", None)
    if out.get("calibration") is None:
        out.pop("calibration", None)
    if not out.get("builders"):
        out.pop("builders", None)
    else:
        for k in ("builder", "fixed", "knobs"):
            out.pop(k, None)
    if out["search"].get("fidelity") is None:
        out["search"].pop("fidelity", None)
    elif out["search"]["fidelity"].get("zero_cost") is None:  # no zero-cost rung: as saved before it existed
        for k in ("zero_cost", "screen"):
            out["search"]["fidelity"].pop(k, None)
    return out


def json_schema() -> dict[str, Any]:
    """The JSON schema of a spec file (for editors: yaml-language-server, VS Code, JetBrains)."""
    schema = _ADAPTER.json_schema()
    props = schema["properties"]
    props.pop("path", None)  # set by the loader
    props[BASE_KEY] = {
        "description": "spec file(s) this one extends, relative to it; its own keys merge over theirs",
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}],
    }
    props["name"]["maxLength"] = MAX_NAME
    schema["$defs"]["Objective"]["properties"]["name"]["enum"] = list(METRICS)
    props["constraints"]["propertyNames"] = {"enum": list(GATE_METRICS)}
    target = schema["$defs"]["TargetSpec"]["properties"]
    target["madds_convention"]["enum"] = list(CONVENTIONS)
    target["runtime"]["enum"] = list(RUNTIMES)
    target["rel_ci"].update(exclusiveMinimum=0, exclusiveMaximum=1)
    props["builder"]["anyOf"][0]["enum"] = builders.names()
    props["builders"]["propertyNames"] = {"enum": builders.names()}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "archsearch spec", **schema}
