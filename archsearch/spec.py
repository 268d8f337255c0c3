"""YAML → validated, frozen spec. ``--set a.b=v`` overrides; ``${VAR}`` expansion in paths; clear errors.

Every section is a frozen dataclass whose fields are the YAML keys (unknown keys are errors).
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from archsearch.errors import KnobError, SpecError


@dataclass(frozen=True)
class DataSpec:
    """``data:`` — which data set the proxy trains and evaluates on."""

    name: str = "synthetic"  # cityscapes | camvid | synthetic
    root: str | None = None  # data set folder (cityscapes, camvid); ${VAR} expands
    train_split: str = "train"
    val_split: str = "val"
    train_images: int | None = None  # at most this many training images (synthetic: how many; default 64)
    val_images: int | None = None  # at most this many evaluation images (synthetic: how many; default 16)
    size: tuple[int, int] = (1024, 2048)  # synthetic only: native (H, W) that proxy.scale applies to
    cache_dir: str = "runs/cache"  # decoded, resized images (one .npy per data set, split and resolution)


@dataclass(frozen=True)
class ProxySpec:
    """``proxy:`` — the short training budget of each trial."""

    iterations: int = 300
    batch: int = 8
    scale: float = 0.25  # training/eval resolution relative to the data's native resolution
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    crop: tuple[int, int] | None = None  # random crop (H, W) at proxy resolution; None: the whole image
    scale_range: tuple[float, float] = (0.75, 1.5)  # random scaling before the crop
    flip: bool = True
    amp: bool = True  # mixed precision when training on CUDA
    eval_batch: int = 4
    prune_schedule: tuple[float, ...] | None = None  # keep rates to step through when keep_rate < 1
    workers: int = 0  # DataLoader workers
    seeds: int = 1  # trainings per trial (seeds derived from the trial's seed); miou is their mean, miou_std the spread


@dataclass(frozen=True)
class TargetSpec:
    """``target:`` — where and at what input latency and multiply-adds are measured."""

    input: tuple[int, int, int, int] = (1, 3, 1024, 2048)
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "float32"  # float32 | float16 | bfloat16
    memory_format: str = "nchw"  # nchw | channels_last (often faster for depth-wise/pooling nets on CPU)
    warmup: int = 3
    repeats: int = 10
    madds_convention: str = "conv_linear"  # how multiply-adds are counted: measure.CONVENTIONS (conv_linear | wu2017)
    threads: int = 1  # torch/runtime threads, set for timing AND training/evaluation (stated default: 1)
    fold_bn: bool = True  # fold batch norm into the convolutions before timing (as deployment toolchains do)
    max_seconds: float = 60.0  # bound of one latency measurement (warm-up included)
    rel_ci: float = 0.02  # repeat until the median's 95% confidence half-width is within this fraction of it
    runtime: str = "eager"  # eager | compile | onnxruntime | openvino | tensorrt (archsearch.runtimes)


@dataclass(frozen=True)
class FidelitySpec:
    """``search.fidelity:`` — multi-fidelity search (archsearch.fidelity): trials train in ``rungs`` rungs of
    proxy.iterations / eta^(rungs−1−k) iterations and go on only when promoted."""

    eta: int = 3
    rungs: int = 3


@dataclass(frozen=True)
class SearchSpec:
    """``search:`` — Optuna sampler and budget."""

    sampler: str = "tpe"  # tpe | nsga2 | random | grid
    trials: int = 20
    seed: int = 0
    timeout: float | None = None  # seconds for this invocation, None: no limit
    fidelity: FidelitySpec | None = None  # None: every trial trains the full proxy budget


@dataclass(frozen=True)
class Objective:
    name: str
    direction: str  # maximize | minimize


@dataclass(frozen=True)
class Spec:
    """A whole spec file."""

    name: str
    builder: str
    fixed: dict[str, Any] = field(default_factory=dict)
    knobs: dict[str, Any] = field(default_factory=dict)
    rows: tuple[dict[str, Any], ...] = ()
    objectives: tuple[Objective, ...] = (Objective("miou", "maximize"), Objective("latency_ms", "minimize"))
    constraints: dict[str, dict[str, float]] = field(default_factory=dict)
    data: DataSpec = field(default_factory=DataSpec)
    proxy: ProxySpec = field(default_factory=ProxySpec)
    target: TargetSpec = field(default_factory=TargetSpec)
    search: SearchSpec = field(default_factory=SearchSpec)
    storage: str | None = None
    artifacts: str | None = None  # artifact store of checkpoints: a (shared) folder, s3://bucket or gs://bucket
    num_classes: int | None = None  # None: the data set's
    path: str = ""  # the file it came from


# --------------------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------------------

DATA_NAMES = ("cityscapes", "camvid", "synthetic")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "float16", "bfloat16")
MEMORY_FORMATS = ("nchw", "channels_last")
SAMPLERS = ("tpe", "nsga2", "random", "grid")
DIRECTIONS = ("maximize", "minimize")
#: Metrics a trial records that can be objectives.
METRICS = ("miou", "pixel_acc", "mean_acc", "latency_ms", "latency_p90_ms", "params", "madds", "train_seconds")
#: Metrics known before training, so a constraint on them gates (prunes) a trial before it trains.
GATE_METRICS = ("latency_ms", "latency_p90_ms", "params", "madds")
DECLARATION_KEYS = ("choices", "int", "float", "each")
#: longest study name: it names the SQLite file and the artifacts folder (file names stop at 255 bytes)
MAX_NAME = 100
_SECTIONS = {"data": DataSpec, "proxy": ProxySpec, "target": TargetSpec, "search": SearchSpec}
_TOP_KEYS = tuple(f.name for f in dataclasses.fields(Spec) if f.name != "path")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader reading numbers as YAML 1.2 does: ``1e6``, ``5e-4`` and ``1E+3`` are floats (YAML
    1.1, PyYAML's default, wants a dot and a signed exponent and reads ``1e6`` as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"""),
    list("-+0123456789"),
)


def load_yaml(text: str) -> Any:
    """YAML safely loaded (no tags that build objects), with YAML 1.2 numbers."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 — _Loader is a SafeLoader


def expand_env(value: str, *, file: str, key: str) -> str:
    """Expand ``${VAR}`` from the environment; an unset variable is an error naming the key."""

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise SpecError(f"environment variable {name} is not set (used as ${{{name}}})", file=file, key=key)
        return os.environ[name]

    return os.path.expanduser(_ENV.sub(sub, value))


def apply_overrides(raw: dict[str, Any], overrides: typing.Sequence[str], *, file: str) -> dict[str, Any]:
    """Apply ``--set a.b=v`` overrides (dotted keys, YAML values) to the raw mapping, in place."""
    for item in overrides:
        if "=" not in item:
            raise SpecError(f"--set {item!r}: expected KEY=VALUE, e.g. --set proxy.iterations=50", file=file)
        key, text = item.split("=", 1)
        key = key.strip()
        try:
            value = load_yaml(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise SpecError(f"--set {key}: value {text!r} is not valid YAML ({exc.__class__.__name__})", file=file) from None
        parts = key.split(".")
        node = raw
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SpecError(f"--set {key}: {'.'.join(parts[: depth + 1])} is not a mapping", file=file)
            node = child
        node[parts[-1]] = value
    return raw


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, *, file: str, key: str) -> Any:
    """Check/convert a YAML value against a dataclass field type (int, float, str, bool, tuples, Optional)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], file=file, key=key)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):  # a nested section (search.fidelity)
        return _section(tp, value, file=file, key=key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise SpecError(f"expected a list, got {value!r}", file=file, key=key)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], file=file, key=f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise SpecError(f"expected a list of {len(args)} values, got {list(value)!r}", file=file, key=key)
        return tuple(_coerce(v, a, file=file, key=f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise SpecError(f"expected true or false, got {value!r}", file=file, key=key)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"expected an integer, got {value!r}", file=file, key=key)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"expected a number, got {value!r}", file=file, key=key)
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise SpecError(f"expected a string, got {value!r}", file=file, key=key)
        return str(value)
    raise SpecError(f"unsupported type {_type_name(tp)}", file=file, key=key)


def _section(cls: type, raw: Any, *, file: str, key: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpecError(f"expected a mapping, got {raw!r}", file=file, key=key)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for k, v in raw.items():
        if k not in names:
            raise SpecError(f"unknown key; allowed: {', '.join(names)}", file=file, key=f"{key}.{k}")
        values[k] = _coerce(v, hints[k], file=file, key=f"{key}.{k}")
    return cls(**values)


def _choose(value: Any, allowed: typing.Sequence[str], *, file: str, key: str) -> None:
    if value not in allowed:
        raise SpecError(f"{value!r} is not allowed; allowed: {', '.join(allowed)}", file=file, key=key)


def _positive(value: float | int | None, *, file: str, key: str, zero_ok: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not zero_ok)):
        raise SpecError(f"{value!r} must be {'≥ 0' if zero_ok else '> 0'}", file=file, key=key)


def _check_sections(spec_file: str, data: DataSpec, proxy: ProxySpec, target: TargetSpec, search: SearchSpec) -> None:
    f = spec_file
    _choose(data.name, DATA_NAMES, file=f, key="data.name")
    if data.name in ("cityscapes", "camvid") and not data.root:
        raise SpecError(f"data set {data.name!r} needs a folder; set data.root (or --set data.root=DIR)", file=f, key="data.root")
    for k in ("train_images", "val_images"):
        _positive(getattr(data, k), file=f, key=f"data.{k}")
    if min(data.size) <= 0:
        raise SpecError(f"{list(data.size)}: expected [H, W] > 0", file=f, key="data.size")
    for k in ("iterations", "batch", "scale", "lr", "eval_batch", "seeds"):
        _positive(getattr(proxy, k), file=f, key=f"proxy.{k}")
    for k in ("momentum", "weight_decay", "poly_power", "workers"):
        _positive(getattr(proxy, k), file=f, key=f"proxy.{k}", zero_ok=True)
    if proxy.scale > 4:
        raise SpecError(f"{proxy.scale} is too large; allowed: (0, 4]", file=f, key="proxy.scale")
    lo, hi = proxy.scale_range
    if not 0 < lo <= hi:
        raise SpecError(f"{list(proxy.scale_range)}: expected [low, high] with 0 < low ≤ high", file=f, key="proxy.scale_range")
    if proxy.crop is not None and min(proxy.crop) <= 0:
        raise SpecError(f"{list(proxy.crop)}: expected [H, W] > 0", file=f, key="proxy.crop")
    if proxy.prune_schedule is not None:
        s = proxy.prune_schedule
        if not s or any(not 0 < r <= 1 for r in s) or any(a <= b for a, b in zip(s, s[1:])):
            raise SpecError(f"{list(s)}: expected decreasing keep rates in (0, 1]", file=f, key="proxy.prune_schedule")
    if target.input[1] != 3 or min(target.input) <= 0:
        raise SpecError(f"{list(target.input)}: expected [N, 3, H, W]", file=f, key="target.input")
    _choose(target.device, DEVICES, file=f, key="target.device")
    _choose(target.dtype, DTYPES, file=f, key="target.dtype")
    _choose(target.memory_format, MEMORY_FORMATS, file=f, key="target.memory_format")
    _positive(target.repeats, file=f, key="target.repeats")
    _positive(target.warmup, file=f, key="target.warmup", zero_ok=True)
    from archsearch.measure import CONVENTIONS

    _choose(target.madds_convention, tuple(CONVENTIONS), file=f, key="target.madds_convention")
    _positive(target.threads, file=f, key="target.threads")
    _positive(target.max_seconds, file=f, key="target.max_seconds")
    if not 0 < target.rel_ci < 1:
        raise SpecError(f"{target.rel_ci}; allowed: a number in (0, 1), e.g. 0.02", file=f, key="target.rel_ci")
    from archsearch import runtimes

    _choose(target.runtime, runtimes.RUNTIMES, file=f, key="target.runtime")
    reason = runtimes.unavailable(target.runtime)
    if reason is not None:
        raise SpecError(reason, file=f, key="target.runtime")
    _choose(search.sampler, SAMPLERS, file=f, key="search.sampler")
    _positive(search.trials, file=f, key="search.trials")
    _positive(search.timeout, file=f, key="search.timeout")


def _check_declaration(decl: Any, *, file: str, key: str) -> None:
    """A knob declaration: {choices: [...]}, {int: [lo, hi], step?, log?}, {float: [lo, hi], log?}, {each: [...]}."""
    if isinstance(decl, list):
        decl = {"choices": decl}
    if not isinstance(decl, dict) or len(set(decl) & set(DECLARATION_KEYS)) != 1:
        raise SpecError(
            f"expected a declaration with one of {', '.join(DECLARATION_KEYS)}, e.g. {{choices: [2, 4]}} or "
            f"{{int: [1, 6]}}; got {decl!r}",
            file=file,
            key=key,
        )
    kind = next(k for k in DECLARATION_KEYS if k in decl)
    extra = set(decl) - {kind, "step", "log"}
    if extra:
        raise SpecError(f"unknown key {sorted(extra)[0]!r}; allowed: {kind}, step, log", file=file, key=key)
    body = decl[kind]
    if kind == "choices":
        if not isinstance(body, list) or not body:
            raise SpecError("choices must be a non-empty list", file=file, key=f"{key}.choices")
    elif kind == "each":
        if not isinstance(body, list) or not body:
            raise SpecError("each must be a non-empty list of declarations", file=file, key=f"{key}.each")
        for i, d in enumerate(body):
            _check_declaration(d, file=file, key=f"{key}.each[{i}]")
    else:
        typ = int if kind == "int" else float
        ok = isinstance(body, list) and len(body) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in body
        )
        if not ok or body[0] > body[1] or (typ is int and not all(isinstance(v, int) for v in body)):
            raise SpecError(f"expected [low, high] {kind}s with low ≤ high, got {body!r}", file=file, key=f"{key}.{kind}")
        if decl.get("log") and body[0] <= 0:
            raise SpecError("log scale needs low > 0", file=file, key=f"{key}.{kind}")


def declaration_values(decl: Any) -> list[Any]:
    """Representative values of a declaration for validation: every choice, or both ends of a range."""
    if isinstance(decl, list):
        return list(decl)
    if "choices" in decl:
        return list(decl["choices"])
    if "each" in decl:
        per = [declaration_values(d) for d in decl["each"]]
        return [[vals[0] for vals in per], [vals[-1] for vals in per]]
    kind = "int" if "int" in decl else "float"
    return list(decl[kind])


def _check_knobs(spec: Spec, entry: Any) -> None:
    """Knob names exist; fixed values, every choice, range ends and row knobs are valid for the builder."""
    f = spec.path

    def resolve(knobs: dict[str, Any], key: str) -> None:
        try:
            entry.resolve(knobs)
        except KnobError as exc:
            raise SpecError(f"{exc.detail} (builder {spec.builder!r})", file=f, key=f"{key}.{exc.knob}") from None

    resolve(dict(spec.fixed), "fixed")
    allowed = [fd.name for fd in entry.knob_fields()]
    for name, decl in spec.knobs.items():
        if name not in allowed:
            raise SpecError(f"unknown knob for builder {spec.builder!r}; allowed: {', '.join(allowed)}", file=f, key=f"knobs.{name}")
        if name in spec.fixed:
            raise SpecError("is both fixed and searched; keep it in one place", file=f, key=f"knobs.{name}")
        _check_declaration(decl, file=f, key=f"knobs.{name}")
        for value in declaration_values(decl):
            resolve({**spec.fixed, name: value}, "knobs")
    for i, row in enumerate(spec.rows):
        resolve({**spec.fixed, **row["knobs"]}, f"rows[{i}].knobs")


def _numbers(paper: dict[str, Any]) -> dict[str, Any]:
    """Paper values as numbers where they read as numbers: PyYAML takes ``786.0e9`` (no exponent sign) as a string."""
    out = {}
    for k, v in paper.items():
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                pass
        out[k] = v
    return out


def _check_rows(raw: Any, *, file: str, builder: str | None = None) -> tuple[dict[str, Any], ...]:
    """Rows as ``{label, knobs, paper}``; a row ``{variant: <builder>.<name>, label?}`` takes its label, knobs and
    paper numbers from the registry's named variant (``archsearch.builders.variant``), which must be one of the
    spec's ``builder`` (rows from it also carry ``variant``: the variant's name). ``knobs``/``paper`` beside
    ``variant`` are accepted only equal to the variant's (as in a saved, resolved spec)."""
    from archsearch import builders

    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw:
        raise SpecError("expected a non-empty list of rows", file=file, key="rows")
    rows = []
    for i, row in enumerate(raw):
        key = f"rows[{i}]"
        if not isinstance(row, dict):
            raise SpecError("expected a mapping with label, knobs, paper (or variant)", file=file, key=key)
        if "variant" in row:
            extra = set(row) - {"variant", "label", "knobs", "paper"}
            if extra:
                raise SpecError(f"unknown key {sorted(extra)[0]!r}; allowed beside variant: label", file=file, key=key)
            name = row["variant"]
            allowed = ", ".join(v.qualname for v in builders.variants(builder)) if builder in builders.names() else ""
            if not isinstance(name, str) or builder is None or not name.startswith(f"{builder}."):
                raise SpecError(f"{name!r} is not a variant of builder {builder!r}; allowed: {allowed or 'none'}",
                                file=file, key=f"{key}.variant")
            try:
                found = builders.variant(name)
            except KnobError:
                raise SpecError(f"unknown variant {name!r}; allowed: {allowed or 'none'}", file=file,
                                key=f"{key}.variant") from None
            for part, own in (("knobs", found.knob_values()), ("paper", dict(found.paper))):
                given = row.get(part)
                if given is not None and (_numbers(given) if isinstance(given, dict) else given) != own:
                    raise SpecError(f"differs from variant {name!r}'s {part} ({own}); remove it: the variant gives "
                                    f"the {part}", file=file, key=f"{key}.{part}")
            label = str(row.get("label", found.label))
            rows.append({"label": label, "knobs": found.knob_values(), "paper": dict(found.paper), "variant": name})
            continue
        extra = set(row) - {"label", "knobs", "paper"}
        if extra:
            raise SpecError(f"unknown key {sorted(extra)[0]!r}; allowed: label, knobs, paper", file=file, key=key)
        knobs = row.get("knobs") or {}
        paper = row.get("paper") or {}
        if not isinstance(knobs, dict) or not isinstance(paper, dict):
            raise SpecError("knobs and paper must be mappings", file=file, key=key)
        rows.append({"label": str(row.get("label", f"row {i}")), "knobs": knobs, "paper": _numbers(paper)})
    return tuple(rows)


def _check_objectives(raw: Any, *, file: str) -> tuple[Objective, ...]:
    if raw is None:
        return Spec.__dataclass_fields__["objectives"].default  # type: ignore[return-value]
    if not isinstance(raw, list) or not raw:
        raise SpecError("expected a list of {name, direction}", file=file, key="objectives")
    out = []
    for i, obj in enumerate(raw):
        key = f"objectives[{i}]"
        if not isinstance(obj, dict) or set(obj) != {"name", "direction"}:
            raise SpecError(f"expected {{name, direction}}, got {obj!r}", file=file, key=key)
        _choose(obj["name"], METRICS, file=file, key=f"{key}.name")
        _choose(obj["direction"], DIRECTIONS, file=file, key=f"{key}.direction")
        out.append(Objective(obj["name"], obj["direction"]))
    if len({o.name for o in out}) != len(out):
        raise SpecError("an objective is listed twice", file=file, key="objectives")
    return tuple(out)


def _check_constraints(raw: Any, *, file: str) -> dict[str, dict[str, float]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpecError("expected a mapping such as {latency_ms: {max: 33}}", file=file, key="constraints")
    out: dict[str, dict[str, float]] = {}
    for metric, bound in raw.items():
        key = f"constraints.{metric}"
        _choose(metric, GATE_METRICS, file=file, key=key)
        if not isinstance(bound, dict) or not bound or set(bound) - {"max", "min"}:
            raise SpecError(f"expected {{max: V}} and/or {{min: V}}, got {bound!r}", file=file, key=key)
        out[metric] = {k: float(_coerce(v, float, file=file, key=f"{key}.{k}")) for k, v in bound.items()}
    return out


def _check_storage(url: Any, *, file: str) -> str | None:
    if url is None:
        return None
    if not isinstance(url, str):
        raise SpecError(f"expected an SQLAlchemy URL string, got {url!r}", file=file, key="storage")
    url = expand_env(url, file=file, key="storage")
    validate_storage_url(url, source=file, key="storage")
    return url


def _check_artifacts(location: Any, *, file: str) -> str | None:
    if location is None:
        return None
    if not isinstance(location, str) or not location:
        raise SpecError(f"expected a folder, s3://bucket or gs://bucket, got {location!r}", file=file, key="artifacts")
    return expand_env(location, file=file, key="artifacts")


def validate_storage_url(url: str, *, source: str = "--storage", key: str | None = None) -> None:
    """An SQLAlchemy URL (``sqlite:///runs/x.db``, ``postgresql://user@host/db``) or an error naming it."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
    except ArgumentError:
        raise SpecError(
            f"{url!r} is not an SQLAlchemy URL; e.g. sqlite:///runs/study.db or postgresql://user:pw@host/db",
            file=source,
            key=key,
        ) from None


def parse(raw: Any, *, file: str) -> Spec:
    """Validate a raw mapping (from YAML) into a :class:`Spec`."""
    from archsearch import builders

    if not isinstance(raw, dict):
        raise SpecError("expected a mapping of top-level keys", file=file)
    for k in raw:
        if k not in _TOP_KEYS:
            raise SpecError(f"unknown key; allowed: {', '.join(_TOP_KEYS)}", file=file, key=str(k))
    for k in ("name", "builder"):
        if not isinstance(raw.get(k), str) or not raw[k]:
            raise SpecError("is required (a string)", file=file, key=k)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", raw["name"]):  # names a file and a folder under runs/
        raise SpecError(f"{raw['name']!r}: use letters, digits, '.', '_' and '-', starting with a letter or digit",
                        file=file, key="name")
    if len(raw["name"]) > MAX_NAME:
        raise SpecError(f"{len(raw['name'])} characters; at most {MAX_NAME}", file=file, key="name")
    if raw["builder"] not in builders.names():
        raise SpecError(f"{raw['builder']!r} is not a builder; allowed: {', '.join(builders.names())}", file=file, key="builder")
    sections = {k: _section(cls, raw.get(k), file=file, key=k) for k, cls in _SECTIONS.items()}
    data: DataSpec = sections["data"]
    if data.root:
        data = dataclasses.replace(data, root=expand_env(data.root, file=file, key="data.root"))
    data = dataclasses.replace(data, cache_dir=expand_env(data.cache_dir, file=file, key="data.cache_dir"))
    _check_sections(file, data, sections["proxy"], sections["target"], sections["search"])
    for k in ("fixed", "knobs"):
        if raw.get(k) is not None and not isinstance(raw[k], dict):
            raise SpecError("expected a mapping of knob names", file=file, key=k)
    if raw.get("knobs") and raw.get("rows"):
        raise SpecError("a spec has either knobs (a search) or rows (an ablation table), not both", file=file, key="rows")
    num_classes = raw.get("num_classes")
    if num_classes is not None:
        num_classes = _coerce(num_classes, int, file=file, key="num_classes")
        _positive(num_classes, file=file, key="num_classes")
        from archsearch.data import info

        needed = info(data.name).num_classes
        if num_classes < needed:
            raise SpecError(f"{num_classes} is below the {needed} classes of data set {data.name!r}; allowed: ≥ "
                            f"{needed}, or leave it unset", file=file, key="num_classes")
    spec = Spec(
        name=raw["name"],
        builder=raw["builder"],
        fixed=dict(raw.get("fixed") or {}),
        knobs=dict(raw.get("knobs") or {}),
        rows=_check_rows(raw.get("rows"), file=file, builder=raw["builder"]),
        objectives=_check_objectives(raw.get("objectives"), file=file),
        constraints=_check_constraints(raw.get("constraints"), file=file),
        data=data,
        proxy=sections["proxy"],
        target=sections["target"],
        search=sections["search"],
        storage=_check_storage(raw.get("storage"), file=file),
        artifacts=_check_artifacts(raw.get("artifacts"), file=file),
        num_classes=num_classes,
        path=file,
    )
    if spec.search.sampler == "grid":
        for name, decl in spec.knobs.items():
            if isinstance(decl, dict) and ("float" in decl or "each" in decl):
                raise SpecError("the grid sampler needs choices or int ranges", file=file, key=f"knobs.{name}")
    _check_knobs(spec, builders.get(spec.builder))
    _check_exportable(spec, builders.get(spec.builder))
    from archsearch import fidelity

    bad = fidelity.problem(spec)
    if bad is not None:
        raise SpecError(bad[1], file=file, key=bad[0])
    return spec


def _check_exportable(spec: Spec, entry: Any) -> None:
    """An exported runtime (target.runtime onnxruntime | openvino | tensorrt) refuses knob values it cannot
    export (fast inference): in the fixed knobs with the builder's defaults, in a searched knob, or in a row."""
    from archsearch import runtimes

    if spec.target.runtime not in runtimes.EXPORTED:
        return
    base = {**entry.defaults(), **spec.fixed}
    if spec.rows:
        candidates = [(f"rows[{i}].knobs", {**base, **row["knobs"]}) for i, row in enumerate(spec.rows)]
    else:
        candidates = [] if "inference" in spec.knobs else [("fixed.inference", base)]
        for name, decl in spec.knobs.items():
            candidates += [(f"knobs.{name}", {**base, name: v}) for v in declaration_values(decl)]
    for key, knobs in candidates:
        reason = runtimes.refusal(spec.target.runtime, knobs)
        if reason is not None:
            raise SpecError(reason, file=spec.path, key=key)


def parse_data(raw: Any, *, file: str) -> DataSpec:
    """Validate a ``data:`` mapping alone (e.g. from the resolved ``spec.yaml`` beside a run's checkpoints)."""
    data: DataSpec = _section(DataSpec, raw, file=file, key="data")
    _choose(data.name, DATA_NAMES, file=file, key="data.name")
    return data


def load(path: str | Path, overrides: typing.Sequence[str] = ()) -> Spec:
    """Read, override (``--set``) and validate a spec file. Errors are :class:`SpecError` (one line)."""
    file = str(path)
    p = Path(path)
    if p.is_dir():
        raise SpecError("is a folder; expected a spec YAML file such as spaces/ndnet.yaml", file=file)
    if not p.is_file():
        raise SpecError("no such spec file", file=file)
    try:
        raw = load_yaml(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or exc.__class__.__name__
        raise SpecError(f"invalid YAML{where}: {problem}", file=file) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read: {exc.__class__.__name__}", file=file) from None
    if raw is None:
        raise SpecError("the file is empty", file=file)
    if isinstance(raw, dict):
        apply_overrides(raw, overrides, file=file)
    return parse(raw, file=file)


def to_dict(spec: Spec) -> dict[str, Any]:
    """The resolved spec as plain YAML/JSON data (tuples → lists), for saving beside the storage."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    out = plain(spec)
    out.pop("path", None)
    return out
