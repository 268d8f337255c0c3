"""YAML → validated, frozen spec. ``--set a.b=v`` overrides; ``${VAR}`` expansion in paths; ``base:`` includes;
clear errors.

Every section is a frozen pydantic dataclass whose fields are the YAML keys (unknown keys are errors); knob
declarations are the tagged union of :mod:`archsearch.declarations`; metrics allowed as objectives and
constraints come from the trial record (:mod:`archsearch.record`). A validation error becomes one line
``FILE: dotted.key: message; allowed: …`` (:mod:`archsearch.specerrors`), which the command line prints with exit
status 2. ``archsearch schema`` publishes the JSON schema of the whole spec (:func:`json_schema`).

A search space is one builder (``builder:`` + ``fixed:`` + ``knobs:``) or several (``builders: {name: {fixed,
knobs}}``): the sampler then picks a builder and that builder's knobs (:mod:`archsearch.space`). A table's rows may
name their own builder (``builder:`` or a ``variant:`` of any builder).

Some rules stay at the spec level rather than in their section's type, so that code may build the sections freely
and leave the check to the module that uses them: ``data.name``, ``data.root`` and the image limits
(:mod:`archsearch.data` checks them again when it loads), whether a runtime is installed, and an objective's name
(reports take any name).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass
from typing_extensions import TypedDict

from archsearch.data import NAMES as DATA_NAMES
from archsearch.spec import fidelity, metrics
from archsearch.spec.declarations import KINDS, TAGS, Choices, Declaration, IntRange, Number
from archsearch.spec.errors import known_keys, located, one_line
from archsearch.spec.file import (  # noqa: F401 — part of this module's public surface
    BASE_KEY,
    _Loader,
    apply_overrides,
    expand_env,
    load_yaml,
    parse_assignment,
    read,
)
from archsearch.util.errors import KnobError, SpecError

PosInt = Annotated[StrictInt, Field(gt=0)]
NonNegInt = Annotated[StrictInt, Field(ge=0)]
PosNumber = Annotated[Number, Field(gt=0)]
NonNegNumber = Annotated[Number, Field(ge=0)]

DIRECTIONS = ("maximize", "minimize")
#: Metrics a trial records that can be objectives (from the trial record).
METRICS = metrics.objective_names()
#: Metrics known before training, so a constraint on them gates (prunes) a trial before it trains.
GATE_METRICS = metrics.constraint_names()
DECLARATION_KEYS = KINDS
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
#: longest study name: it names the SQLite file and the artifacts folder (file names stop at 255 bytes)
MAX_NAME = 100
NAME_MAX = MAX_NAME

_CONFIG = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


def _keys_of(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.name != "path"]


class _Section:
    """Unknown keys of a section name the allowed ones."""

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        return known_keys(data, _keys_of(cls))


def _positive_pair(value: tuple[int, int], key: str) -> None:
    if min(value) <= 0:
        raise located(f"{list(value)}: expected [H, W] > 0", key)


@dataclass(frozen=True, config=_CONFIG)
class DataSpec(_Section):
    """``data:`` — which data set the proxy trains and evaluates on."""

    name: Annotated[str, Field(json_schema_extra={"enum": list(DATA_NAMES)})] = "synthetic"
    root: str | None = None  # data set folder (cityscapes, camvid); ${VAR} expands
    train_split: str = "train"
    val_split: str = "val"
    # at most this many training images (synthetic: how many; default 64)
    train_images: Annotated[StrictInt | None, Field(json_schema_extra={"exclusiveMinimum": 0})] = None
    # at most this many evaluation images (synthetic: how many; default 16)
    val_images: Annotated[StrictInt | None, Field(json_schema_extra={"exclusiveMinimum": 0})] = None
    size: tuple[StrictInt, StrictInt] = (1024, 2048)  # synthetic only: native (H, W) that proxy.scale applies to
    cache_dir: str = "runs/cache"  # decoded, resized images (one .npy per data set, split and resolution)

    @model_validator(mode="after")
    def _size(self) -> DataSpec:
        _positive_pair(self.size, "size")
        return self


@dataclass(frozen=True, config=_CONFIG)
class ProxySpec(_Section):
    """``proxy:`` — the short training budget of each trial."""

    iterations: PosInt = 300
    batch: PosInt = 8
    scale: Annotated[Number, Field(gt=0, le=4)] = 0.25  # training/eval resolution relative to the native one
    lr: PosNumber = 0.01
    momentum: NonNegNumber = 0.9
    weight_decay: NonNegNumber = 5e-4
    poly_power: NonNegNumber = 0.9
    crop: tuple[StrictInt, StrictInt] | None = None  # random crop (H, W) at proxy resolution; None: the whole image
    scale_range: tuple[PosNumber, PosNumber] = (0.75, 1.5)  # random scaling before the crop
    flip: StrictBool = True
    amp: StrictBool = True  # mixed precision when training on CUDA
    eval_batch: PosInt = 4
    # keep rates to step through when keep_rate < 1
    prune_schedule: Annotated[tuple[Annotated[Number, Field(gt=0, le=1)], ...], Field(min_length=1)] | None = None
    workers: NonNegInt = 0  # DataLoader workers
    seeds: PosInt = 1  # trainings per trial (seeds derived from the trial's seed); miou is their mean
    # layout of weights and batches in training and evaluation (an execution detail, not compared between
    # studies): auto = channels_last on the CPU and on CUDA (with AMP when `amp`), NCHW elsewhere
    memory_format: Literal["auto", "channels_last", "nchw"] = "auto"
    # common random numbers: data order and augmentation drawn from (search.seed, data, proxy), so every
    # architecture of a study sees the same batches (initialisation stays from its knobs); false: from the trial
    common_random_numbers: StrictBool = False
    # evaluate an exponential moving average of the weights and batch-norm buffers with this decay; 0: the raw
    # weights after the last step
    ema_decay: Annotated[Number, Field(ge=0, lt=1)] = 0.0

    @model_validator(mode="after")
    def _ordered(self) -> ProxySpec:
        lo, hi = self.scale_range
        if lo > hi:
            raise located(f"{list(self.scale_range)}: expected [low, high] with 0 < low ≤ high", "scale_range")
        if self.crop is not None:
            _positive_pair(self.crop, "crop")
        s = self.prune_schedule
        if s is not None and any(a <= b for a, b in itertools.pairwise(s)):
            raise located(f"{list(s)}: expected decreasing keep rates in (0, 1]", "prune_schedule")
        return self


def _runtimes() -> tuple[str, ...]:
    from archsearch.cost.runtimes import RUNTIMES

    return tuple(RUNTIMES)


def _conventions() -> tuple[str, ...]:
    from archsearch.cost.measure import CONVENTIONS

    return tuple(CONVENTIONS)


@dataclass(frozen=True, config=_CONFIG)
class TargetSpec(_Section):
    """``target:`` — where and at what input latency and multiply-adds are measured."""

    input: tuple[PosInt, PosInt, PosInt, PosInt] = (1, 3, 1024, 2048)  # [N, 3, H, W]
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    # nchw | channels_last (often faster for depth-wise/pooling nets on CPU)
    memory_format: Literal["nchw", "channels_last"] = "nchw"
    warmup: NonNegInt = 3
    repeats: PosInt = 10
    # how multiply-adds are counted: measure.CONVENTIONS (conv_linear | wu2017)
    madds_convention: str = "conv_linear"
    threads: PosInt = 1  # torch/runtime threads, set for timing AND training/evaluation (stated default: 1)
    fold_bn: StrictBool = True  # fold batch norm into the convolutions before timing (as deployment toolchains do)
    max_seconds: PosNumber = 60.0  # bound of one latency measurement (warm-up included)
    rel_ci: Number = 0.02  # repeat until the median's 95% confidence half-width is within this fraction of it
    runtime: str = "eager"  # eager | compile | onnxruntime | openvino | tensorrt (archsearch.runtimes)

    @model_validator(mode="after")
    def _consistent(self) -> TargetSpec:
        if self.input[1] != 3:
            raise located(f"{list(self.input)}: expected [N, 3, H, W]", "input")
        if self.madds_convention not in _conventions():
            raise located(
                f"{self.madds_convention!r} is not allowed; allowed: {', '.join(_conventions())}", "madds_convention"
            )
        if not 0 < self.rel_ci < 1:
            raise located(f"{self.rel_ci}; allowed: a number in (0, 1), e.g. 0.02", "rel_ci")
        if self.runtime not in _runtimes():
            raise located(f"{self.runtime!r} is not allowed; allowed: {', '.join(_runtimes())}", "runtime")
        return self


@dataclass(frozen=True, config=_CONFIG)
class FidelitySpec(_Section):
    """``search.fidelity:`` — rung-wise training (successive halving): rung k of ``rungs`` trains
    ``proxy.iterations / eta ** (rungs - 1 - k)`` iterations. Absent: every trial trains the full budget."""

    eta: Annotated[StrictInt, Field(ge=2)] = 3
    rungs: PosInt = 3


@dataclass(frozen=True, config=_CONFIG)
class SearchSpec(_Section):
    """``search:`` — Optuna sampler and budget."""

    sampler: Literal["tpe", "nsga2", "random", "grid"] = "tpe"
    trials: PosInt = 20
    seed: StrictInt = 0
    timeout: PosNumber | None = None  # seconds for this invocation, None: no limit
    fidelity: FidelitySpec | None = None  # rung-wise training; None: full-budget search


@dataclass(frozen=True, config=_CONFIG)
class Objective(_Section):
    """One objective: a metric of the trial record and its direction (the spec checks the name)."""

    name: str
    direction: Literal["maximize", "minimize"]


class Bound(TypedDict, total=False):
    """A constraint's bounds: ``{max: V}``, ``{min: V}`` or both."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]
    max: Number
    min: Number


class Row(TypedDict, total=False):
    """One row of an ablation table (a plain mapping once validated): its label, knobs and the paper's values;
    ``variant`` when the registry's named variant gave them, ``builder`` when the row names its own builder. The
    loader fills label, knobs and paper (from the variant, or defaults), so a loaded row always has them."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]
    label: str
    knobs: dict[str, Any]
    paper: dict[str, Any]
    variant: str  # a named variant of the registry, <builder>.<name>
    builder: str  # the row's own builder (default: the spec's)


@dataclass(frozen=True, config=_CONFIG)
class BuilderSpace(_Section):
    """One builder of a ``builders:`` space: its fixed knobs and its searched knobs."""

    fixed: dict[str, Any] = dataclasses.field(default_factory=dict)
    knobs: dict[str, Declaration] = dataclasses.field(default_factory=dict)

    @field_validator("fixed", "knobs", mode="before")
    @classmethod
    def _knob_mapping(cls, value: Any) -> Any:
        return _knob_mapping(value)


def _knob_mapping(value: Any) -> Any:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise located("expected a mapping of knob names")
    return value


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
    from archsearch import builders

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


@dataclass(frozen=True, config=_CONFIG)
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
    num_classes: PosInt | None = None  # None: the data set's
    path: str = ""  # the file it came from

    # -- each key ---------------------------------------------------------------------------------------------
    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict):
            return data
        known_keys(data, [*_keys_of(cls), BASE_KEY])
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
        from archsearch import builders

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
        from archsearch import builders

        if value is not None and value not in builders.names():
            raise located(f"{value!r} is not a builder; allowed: {', '.join(builders.names())}")
        return value

    @field_validator("builders", mode="before")
    @classmethod
    def _builder_names(cls, value: Any) -> Any:
        from archsearch import builders

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
    def _knob_mapping(cls, value: Any) -> Any:
        return _knob_mapping(value)

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
            _check_url(value)
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
        from archsearch import data as data_mod
        from archsearch.cost import runtimes

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
        from archsearch import builders

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
        grow): :func:`archsearch.fidelity.problem`."""
        bad = fidelity.problem(self)
        if bad is not None:
            key, message = bad
            raise located(message, *key.split("."))

    def _check_exportable(self) -> None:
        """An exported runtime (target.runtime onnxruntime | openvino | tensorrt) refuses knob values it cannot
        export (fast inference): in the fixed knobs with the builder's defaults, in a searched knob, or in a row."""
        from archsearch import builders
        from archsearch.cost import runtimes

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


_ADAPTER: TypeAdapter[Spec] = TypeAdapter(Spec)
_DATA_ADAPTER: TypeAdapter[DataSpec] = TypeAdapter(DataSpec)


# --------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------


def _check_url(url: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
    except ArgumentError:
        raise located(
            f"{url!r} is not an SQLAlchemy URL; e.g. sqlite:///runs/study.db or postgresql://user:pw@host/db"
        ) from None


def validate_storage_url(url: str, *, source: str = "--storage", key: str | None = None) -> None:
    """An SQLAlchemy URL (``sqlite:///runs/x.db``, ``postgresql://user@host/db``) or an error naming it."""
    from pydantic_core import PydanticCustomError

    try:
        _check_url(url)
    except PydanticCustomError as exc:
        raise SpecError(exc.message(), file=source, key=key) from None


#: Keys whose string values expand ``${VAR}`` and ``~``.
_PATH_KEYS = (("data", "root"), ("data", "cache_dir"), ("storage",), ("artifacts",))


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
    ``search.fidelity``) are left out, so a spec saved before they existed reads the same."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    out = plain(_ADAPTER.dump_python(spec, by_alias=True))
    out.pop("path", None)
    if not out.get("builders"):
        out.pop("builders", None)
    else:
        for k in ("builder", "fixed", "knobs"):
            out.pop(k, None)
    if out["search"].get("fidelity") is None:
        out["search"].pop("fidelity", None)
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
    target["madds_convention"]["enum"] = list(_conventions())
    target["runtime"]["enum"] = list(_runtimes())
    target["rel_ci"].update(exclusiveMinimum=0, exclusiveMaximum=1)
    from archsearch import builders

    props["builder"]["anyOf"][0]["enum"] = builders.names()
    props["builders"]["propertyNames"] = {"enum": builders.names()}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "archsearch spec", **schema}
