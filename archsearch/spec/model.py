"""The whole spec: one builder (``builder:`` + ``fixed:`` + ``knobs:``) or several (``builders: {name: {fixed,
knobs}}``: the sampler then picks a builder and that builder's knobs, :mod:`archsearch.search.space`), or the rows
of an ablation table (each may name its own builder, or a ``variant:`` of any builder, whose knobs and paper numbers
come from the registry); and the checks across keys: knob names and values against their builder, the data set's
classes, the grid sampler's knobs, what an exported runtime and ``search.fidelity`` cannot serve.

Knob declarations are the tagged union of :mod:`archsearch.spec.declarations`; metrics allowed as objectives and
constraints come from the trial record (:mod:`archsearch.spec.metrics`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import typing
from typing import Annotated, Any

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic.dataclasses import dataclass

from archsearch import builders
from archsearch import data as data_mod
from archsearch.cost import runtimes
from archsearch.spec import fidelity
from archsearch.spec.declarations import Choices, Declaration, IntRange
from archsearch.spec.errors import known_keys, located
from archsearch.spec.file import BASE_KEY
from archsearch.spec.sections import (
    CONFIG,
    DATA_NAMES,
    GATE_METRICS,
    MAX_NAME,
    METRICS,
    NAME_PATTERN,
    Bound,
    BuilderSpace,
    DataSpec,
    Objective,
    PosInt,
    ProxySpec,
    Row,
    SearchSpec,
    TargetSpec,
    check_url,
    keys_of,
    knob_mapping,
)
from archsearch.util.errors import KnobError


def _numbers(paper: dict[str, Any]) -> dict[str, Any]:
    """Paper values as numbers where they read as numbers (``123.0e9`` given as a string, say)."""
    out = {}
    for k, v in paper.items():
        if isinstance(v, str):
            with contextlib.suppress(ValueError):
                v = float(v)
        out[k] = v
    return out


_DEFAULT_OBJECTIVES = (Objective("miou", "maximize"), Objective("latency_ms", "minimize"))
_ROW_KEYS = ("label", "knobs", "paper", "builder")


def _variant_row(row: dict[str, Any], i: int, spec_builder: Any, multi: bool) -> dict[str, Any]:
    """A ``{variant: <builder>.<name>, label?}`` row → label, knobs and paper numbers from the registry's variant
    (``knobs``/``paper`` beside ``variant`` are accepted only equal to the variant's, as in a saved spec)."""
    extra = set(row) - {"variant", "label", "knobs", "paper", "builder"}
    if extra:
        raise located(f"unknown key {min(extra)!r}; allowed beside variant: label", "rows", i)
    name = row["variant"]
    if multi or (isinstance(spec_builder, str) and row.get("builder") not in (None, spec_builder)):
        # a row of its own builder: a variant of any registered builder
        owner = name.split(".", 1)[0] if isinstance(name, str) else None
        allowed = ", ".join(v.qualname for b in builders.names() for v in builders.variants(b))
    else:
        owner = spec_builder
        allowed = ", ".join(v.qualname for v in builders.variants(owner)) if owner in builders.names() else ""
    if not isinstance(name, str) or owner not in builders.names() or not name.startswith(f"{owner}."):
        who = f"builder {spec_builder!r}" if not multi else "any builder"
        raise located(f"{name!r} is not a variant of {who}; allowed: {allowed or 'none'}", "rows", i, "variant")
    try:
        found = builders.variant(name)
    except KnobError:
        raise located(f"unknown variant {name!r}; allowed: {allowed or 'none'}", "rows", i, "variant") from None
    if row.get("builder") not in (None, found.builder):
        raise located(f"differs from variant {name!r}'s builder {found.builder!r}; remove it", "rows", i, "builder")
    for part, own in (("knobs", found.knob_values()), ("paper", dict(found.paper))):
        given = row.get(part)
        if given is not None and (_numbers(given) if isinstance(given, dict) else given) != own:
            raise located(
                f"differs from variant {name!r}'s {part} ({own}); remove it: the variant gives the {part}",
                "rows",
                i,
                part,
            )
    out = {
        "label": str(row.get("label", found.label)),
        "knobs": found.knob_values(),
        "paper": dict(found.paper),
        "variant": name,
    }
    if found.builder != spec_builder:
        out["builder"] = found.builder
    return out


def _plain_row(row: dict[str, Any], i: int) -> dict[str, Any]:
    extra = set(row) - set(_ROW_KEYS)
    if extra:
        raise located(f"unknown key {min(extra)!r}; allowed: {', '.join(_ROW_KEYS)}", "rows", i)
    knobs, paper = row.get("knobs") or {}, row.get("paper") or {}
    if not isinstance(knobs, dict) or not isinstance(paper, dict):
        raise located("knobs and paper must be mappings", "rows", i)
    out = {"label": str(row.get("label", f"row {i}")), "knobs": knobs, "paper": _numbers(paper)}
    if row.get("builder") is not None:
        out["builder"] = row["builder"]
    return out


@dataclass(frozen=True, config=CONFIG)
class Spec:
    """A whole spec file."""

    name: Annotated[str, Field(pattern=f"^{NAME_PATTERN}$")]
    builder: str | None = None  # one builder (with fixed and knobs), or None with builders
    fixed: dict[str, Any] = dataclasses.field(default_factory=dict)  # knobs held constant
    knobs: dict[str, Declaration] = dataclasses.field(default_factory=dict)  # searched knobs
    builders: dict[str, BuilderSpace] = dataclasses.field(default_factory=dict)  # a space over several builders
    rows: tuple[Row, ...] = ()  # enumerated configurations (an ablation table), instead of knobs
    objectives: Annotated[tuple[Objective, ...], Field(min_length=1)] = _DEFAULT_OBJECTIVES
    constraints: dict[str, Bound] = dataclasses.field(default_factory=dict)
    data: DataSpec = dataclasses.field(default_factory=DataSpec)
    proxy: ProxySpec = dataclasses.field(default_factory=ProxySpec)
    target: TargetSpec = dataclasses.field(default_factory=TargetSpec)
    search: SearchSpec = dataclasses.field(default_factory=SearchSpec)
    storage: str | None = None  # SQLAlchemy URL
    artifacts: Annotated[str | None, Field(min_length=1)] = None  # checkpoints: a folder, s3://bucket or gs://bucket
    # the calibration.json of `archsearch calibrate` behind the proxy (relative to the spec file holding it);
    # metadata: read by `run` and the reports, not part of the study's fingerprint
    calibration: Annotated[str | None, Field(min_length=1)] = None
    num_classes: PosInt | None = None  # None: the data set's
    path: str = ""  # the file it came from

    # -- each key ---------------------------------------------------------------------------------------------
    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict):
            return data
        known_keys(data, [*keys_of(cls), BASE_KEY])
        if BASE_KEY in data:
            raise located("a base file is read by the spec loader (archsearch.spec.load)", BASE_KEY)
        for k in ("name",):
            if not isinstance(data.get(k), str) or not data[k]:
                raise located("is required (a string)", k)
        multi = bool(data.get("builders"))
        if multi and data.get("builder") is not None:
            raise located(
                "a spec names one builder (builder: with fixed: and knobs:) or several (builders:), not both",
                "builders",
            )
        if multi:
            for k in ("fixed", "knobs"):
                if data.get(k):
                    raise located(f"with builders:, each builder has its own {k} (builders.NAME.{k})", k)
        elif not isinstance(data.get("builder"), str) or not data["builder"]:
            raise located("is required (a string; or builders: for a space over several)", "builder")
        rows = data.get("rows")
        if isinstance(rows, (list, tuple)) and rows and (multi or data["builder"] in builders.names()):
            resolved = []
            for i, row in enumerate(rows):
                if not isinstance(row, dict):
                    raise located("expected a mapping with label, knobs, paper (or variant)", "rows", i)
                row = dict(row)
                resolved.append(
                    _variant_row(row, i, data.get("builder"), multi) if "variant" in row else _plain_row(row, i)
                )
            data = {**data, "rows": resolved}
        file = (info.context or {}).get("path")
        return {**data, "path": file} if file is not None else data

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> Any:
        if isinstance(value, str) and not re.fullmatch(NAME_PATTERN, value):
            raise located(f"{value!r}: use letters, digits, '.', '_' and '-', starting with a letter or digit")
        if isinstance(value, str) and len(value) > MAX_NAME:
            raise located(f"{len(value)} characters; at most {MAX_NAME}")
        return value

    @field_validator("builder")
    @classmethod
    def _builder(cls, value: str | None) -> str | None:
        if value is not None and value not in builders.names():
            raise located(f"{value!r} is not a builder; allowed: {', '.join(builders.names())}")
        return value

    @field_validator("builders", mode="before")
    @classmethod
    def _builder_names(cls, value: Any) -> Any:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise located("expected a mapping of builder names to {fixed, knobs}")
        for name, body in value.items():
            if name not in builders.names():
                raise located(f"{name!r} is not a builder; allowed: {', '.join(builders.names())}", str(name))
            if body is None:
                value = {**value, name: {}}
        return value

    @field_validator("fixed", "knobs", mode="before")
    @classmethod
    def knob_mapping(cls, value: Any) -> Any:
        return knob_mapping(value)

    @field_validator("rows", mode="before")
    @classmethod
    def _rows(cls, value: Any) -> Any:
        if value is None or value == ():  # () when a spec is copied (dataclasses.replace)
            return ()
        if not isinstance(value, (list, tuple)) or not value:
            raise located("expected a non-empty list of rows")
        return value

    @field_validator("objectives", mode="before")
    @classmethod
    def _objectives(cls, value: Any) -> Any:
        if value is None:
            return _DEFAULT_OBJECTIVES
        if not isinstance(value, (list, tuple)) or not value:
            raise located("expected a list of {name, direction}")
        return value

    @field_validator("objectives")
    @classmethod
    def _objective_names(cls, value: tuple[Objective, ...]) -> tuple[Objective, ...]:
        for i, o in enumerate(value):
            if o.name not in METRICS:
                raise located(f"{o.name!r} is not allowed; allowed: {', '.join(METRICS)}", i, "name")
        if len({o.name for o in value}) != len(value):
            raise located("an objective is listed twice")
        return value

    @field_validator("constraints", mode="before")
    @classmethod
    def _constraints(cls, value: Any) -> Any:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise located("expected a mapping such as {latency_ms: {max: 33}}")
        for metric, bound in value.items():
            if metric not in GATE_METRICS:
                raise located(f"{metric!r} is not allowed; allowed: {', '.join(GATE_METRICS)}", str(metric))
            if not isinstance(bound, dict) or not bound:
                raise located(f"expected {{max: V}} and/or {{min: V}}, got {bound!r}", str(metric))
        return value

    @field_validator("storage")
    @classmethod
    def _storage(cls, value: str | None) -> str | None:
        if value is not None:
            check_url(value)
        return value

    # -- the space ----------------------------------------------------------------------------------------------
    @property
    def multi(self) -> bool:
        """True for a space over several builders (``builders:``): parameters are builder-qualified."""
        return bool(self.builders)

    def spaces(self) -> dict[str, BuilderSpace]:
        """Every builder of the search space with its fixed and searched knobs (one for ``builder:``)."""
        if self.builders:
            return dict(self.builders)
        assert self.builder is not None
        return {self.builder: BuilderSpace(fixed=dict(self.fixed), knobs=dict(self.knobs))}

    def fixed_of(self, builder: str) -> dict[str, Any]:
        """The fixed knobs the spec gives ``builder`` (none for a builder only a row names)."""
        space = self.spaces().get(builder)
        return dict(space.fixed) if space is not None else {}

    def row_builder(self, row: typing.Mapping[str, Any]) -> str:
        """The builder of an ablation row: its own, else the spec's."""
        name = row.get("builder") or self.builder
        assert name is not None
        return str(name)

    # -- across keys ------------------------------------------------------------------------------------------
    @model_validator(mode="after")
    def _consistent(self) -> Spec:
        if self.rows and any(s.knobs for s in self.spaces().values()):
            raise located("a spec has either knobs (a search) or rows (an ablation table), not both", "rows")
        self._check_data()
        if self.search.sampler == "grid":
            for prefix, space in self._prefixed():
                for name, decl in space.knobs.items():
                    if not isinstance(decl, (Choices, IntRange)):
                        raise located("the grid sampler needs choices or int ranges", *prefix, "knobs", name)
        self._check_knobs()
        self._check_exportable()
        self._check_fidelity()
        return self

    def _prefixed(self) -> list[tuple[tuple[str, ...], BuilderSpace]]:
        """Each builder's space with the key path of its fixed/knobs in the spec file."""
        if self.multi:
            return [(("builders", b), s) for b, s in self.builders.items()]
        return [((), s) for s in self.spaces().values()]

    def _check_data(self) -> None:
        d = self.data
        if d.name not in DATA_NAMES:
            raise located(f"{d.name!r} is not allowed; allowed: {', '.join(DATA_NAMES)}", "data", "name")
        if d.name in ("cityscapes", "camvid") and not d.root:
            raise located(f"data set {d.name!r} needs a folder; set data.root (or --set data.root=DIR)", "data", "root")
        for key in ("train_images", "val_images"):
            n = getattr(d, key)
            if n is not None and n <= 0:
                raise located(f"{n!r} must be > 0", "data", key)
        classes = data_mod.info(d.name).num_classes
        if self.num_classes is not None and self.num_classes < classes:
            raise located(
                f"{self.num_classes} is below the {classes} classes of data set {d.name!r}; allowed: "
                f"≥ {classes}, or leave it unset",
                "num_classes",
            )
        reason = runtimes.unavailable(self.target.runtime)
        if reason is not None:
            raise located(reason, "target", "runtime")

    def _check_knobs(self) -> None:
        """Knob names exist; fixed values, every choice, range ends and row knobs are valid for their builder."""

        def resolve(builder: str, knobs: dict[str, Any], *at: str | int) -> None:
            try:
                builders.get(builder).resolve(knobs)
            except KnobError as exc:
                raise located(f"{exc.detail} (builder {builder!r})", *at, exc.knob) from None

        for (prefix, space), builder in zip(self._prefixed(), self.spaces(), strict=False):
            resolve(builder, dict(space.fixed), *prefix, "fixed")
            allowed = [fd.name for fd in builders.get(builder).knob_fields()]
            for name, decl in space.knobs.items():
                if name not in allowed:
                    raise located(
                        f"unknown knob for builder {builder!r}; allowed: {', '.join(allowed)}", *prefix, "knobs", name
                    )
                if name in space.fixed:
                    raise located("is both fixed and searched; keep it in one place", *prefix, "knobs", name)
                for value in decl.probes():
                    resolve(builder, {**space.fixed, name: value}, *prefix, "knobs")
        for i, row in enumerate(self.rows):
            b = self.row_builder(row)
            if b not in builders.names():
                raise located(f"{b!r} is not a builder; allowed: {', '.join(builders.names())}", "rows", i, "builder")
            resolve(b, {**self.fixed_of(b), **row["knobs"]}, "rows", i, "knobs")

    def _check_fidelity(self) -> None:
        """``search.fidelity`` with what it cannot serve (rows, progressive pruning, rung budgets that do not
        grow): :func:`archsearch.spec.fidelity.problem`."""
        bad = fidelity.problem(self)
        if bad is not None:
            key, message = bad
            raise located(message, *key.split("."))

    def _check_exportable(self) -> None:
        """An exported runtime (target.runtime onnxruntime | openvino | tensorrt) refuses knob values it cannot
        export (fast inference): in the fixed knobs with the builder's defaults, in a searched knob, or in a row."""
        if self.target.runtime not in runtimes.EXPORTED:
            return
        candidates: list[tuple[tuple[str | int, ...], dict[str, Any]]] = []
        if self.rows:
            for i, row in enumerate(self.rows):
                b = self.row_builder(row)
                base = {**builders.get(b).defaults(), **self.fixed_of(b)}
                candidates.append((("rows", i, "knobs"), {**base, **row["knobs"]}))
        else:
            for (prefix, space), b in zip(self._prefixed(), self.spaces(), strict=False):
                base = {**builders.get(b).defaults(), **space.fixed}
                if "inference" not in space.knobs:
                    candidates.append(((*prefix, "fixed", "inference"), base))
                for name, decl in space.knobs.items():
                    candidates += [((*prefix, "knobs", name), {**base, name: v}) for v in decl.probes()]
        for at, knobs in candidates:
            reason = runtimes.refusal(self.target.runtime, knobs)
            if reason is not None:
                raise located(reason, *at)
