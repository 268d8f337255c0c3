"""Registry of builders: name → (function, knob dataclass, paper, named paper variants).

Every builder is a plain function ``fn(knobs, num_classes) -> nn.Module`` whose knobs are a frozen
dataclass derived from :class:`Knobs`. Each knob field is declared with :func:`knob`, which records the
paper's default, the paper's own name for it and the allowed values, so that ``archsearch builders`` and
spec validation read one place.

A builder's registration also declares the paper's named configurations, :class:`Variant` (as timm's
pretrained configs do): their knobs, the numbers the paper reports for them and where (table, row, device).
``build("ndnet.ndnet45")`` builds one; studies, tests and benchmarks read the paper's numbers from there, so each
is written once. Every model :func:`build` returns carries one :class:`ModelConfig` (:func:`config_of`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib.metadata
import math
import re
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import torch.nn as nn

from archsearch.util.errors import ArchsearchError, KnobError
from archsearch.util.registry import Registry

_MISSING = dataclasses.MISSING


def knob(
    default: Any,
    *,
    paper: str,
    doc: str,
    choices: Sequence[Any] | None = None,
    low: float | None = None,
    high: float | None = None,
    length: int | tuple[int, int] | None = None,
    item_choices: Sequence[Any] | None = None,
    item_low: float | None = None,
    item_high: float | None = None,
) -> Any:
    """Declare one knob of a builder.

    ``paper`` is the paper's name for the knob (e.g. ``"n_md"``, ``"λ"``); ``doc`` one sentence.
    ``choices`` / ``low``..``high`` constrain scalar values; for list knobs ``length`` (exact, or an inclusive
    ``(min, max)``) and ``item_*`` constrain the list and each element. Lists are stored as tuples.
    """
    if isinstance(default, list):
        default = tuple(default)
    meta = {
        "paper": paper,
        "doc": doc,
        "choices": tuple(choices) if choices is not None else None,
        "low": low,
        "high": high,
        "length": length,
        "item_choices": tuple(item_choices) if item_choices is not None else None,
        "item_low": item_low,
        "item_high": item_high,
    }
    if isinstance(default, (tuple, dict)):
        return dataclasses.field(default_factory=functools.partial(copy.copy, default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _as_tuple(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_as_tuple(v) for v in value)
    return value


def _describe(meta: dict[str, Any]) -> str:
    parts = []
    if meta["choices"] is not None:
        parts.append("one of " + ", ".join(map(repr, meta["choices"])))
    if meta["low"] is not None or meta["high"] is not None:
        parts.append(f"in [{meta['low']}, {meta['high']}]")
    if meta["length"] is not None:
        parts.append(f"a list of length {meta['length']}")
    if meta["item_choices"] is not None:
        parts.append("items from " + ", ".join(map(repr, meta["item_choices"])))
    if meta["item_low"] is not None or meta["item_high"] is not None:
        parts.append(f"items in [{meta['item_low']}, {meta['item_high']}]")
    return "; ".join(parts) or "any value"


def allowed_values(f: dataclasses.Field[Any]) -> str:
    """The values a knob field allows, in words (as knob errors state them), e.g. ``in [1, 8]``."""
    return _describe(dict(f.metadata)) if f.metadata else "any value"


def _in_range(v: Any, low: float | None, high: float | None) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return (low is None or v >= low) and (high is None or v <= high)


@dataclass(frozen=True)
class Knobs:
    """Base of every builder's knob dataclass: validates each field against its :func:`knob` metadata.

    Subclasses add cross-knob rules in :meth:`check` (raise :class:`KnobError` via :meth:`fail`).
    """

    builder_name: ClassVar[str] = "?"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = _as_tuple(getattr(self, f.name))
            object.__setattr__(self, f.name, value)
            meta = f.metadata
            if not meta:
                continue
            if not self._value_ok(value, meta):
                self.fail(f.name, f"{value!r} is not allowed; allowed: {_describe(dict(meta))}")
        self.check()

    @staticmethod
    def _value_ok(value: Any, meta: Any) -> bool:
        if meta["choices"] is not None and value not in meta["choices"]:
            return False
        if (meta["low"] is not None or meta["high"] is not None) and not _in_range(value, meta["low"], meta["high"]):
            return False
        length = meta["length"]
        item_rules = (meta["item_choices"], meta["item_low"], meta["item_high"])
        if length is not None or any(r is not None for r in item_rules):
            if not isinstance(value, tuple):
                return False
            if isinstance(length, int) and len(value) != length:
                return False
            if isinstance(length, tuple) and not (length[0] <= len(value) <= length[1]):
                return False
            for item in value:
                if meta["item_choices"] is not None and item not in meta["item_choices"]:
                    return False
                if (meta["item_low"] is not None or meta["item_high"] is not None) and not _in_range(
                    item, meta["item_low"], meta["item_high"]
                ):
                    return False
        return True

    def check(self) -> None:
        """Cross-knob rules; the default has none."""

    def fail(self, knob_name: str, message: str) -> None:
        raise KnobError(self.builder_name, knob_name, message)

    def as_dict(self) -> dict[str, Any]:
        """The full resolved knob set (defaults included), lists as lists (JSON- and YAML-friendly)."""

        def plain(v: Any) -> Any:
            return [plain(x) for x in v] if isinstance(v, tuple) else v

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _plain(v: Any) -> Any:
    return [_plain(x) for x in v] if isinstance(v, tuple) else v


_VARIANT_NAME = re.compile(r"[a-z0-9_]+")


@dataclass(frozen=True)
class Variant:
    """A paper's named configuration of a builder, built by ``build("<builder>.<name>")``.

    ``knobs``: the knobs the paper's row sets (the builder's defaults fill the rest; lists are stored as tuples).
    ``paper``: the numbers the paper reports for it, units in the key names — ``params`` and ``madds`` (counts;
    multiply-adds at the paper's input), ``miou_pct``, ``pixel_acc_pct``, ``mean_acc_pct``, ``latency_ms``,
    ``fps``, ``memory_gb``, ... (the keys ``archsearch table`` compares are those of a study row's ``paper:``).
    ``source``: where the numbers are — paper, table, row, data split, device and input. ``label``: the paper's
    own name for the row (default: ``name``). ``builder`` is filled in by :func:`register`.
    """

    name: str
    knobs: Mapping[str, Any]
    paper: Mapping[str, float]
    source: str
    label: str = ""
    builder: str = ""

    def __post_init__(self) -> None:
        if not _VARIANT_NAME.fullmatch(self.name):
            raise ValueError(f"variant name {self.name!r}: use lower-case letters, digits and '_'")
        for key, value in self.paper.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"variant {self.name!r}: paper[{key!r}] = {value!r} is not a finite number")
        if not self.source:
            raise ValueError(f"variant {self.name!r}: source (paper, table, row, device) is required")
        object.__setattr__(self, "knobs", MappingProxyType({k: _as_tuple(v) for k, v in self.knobs.items()}))
        object.__setattr__(self, "paper", MappingProxyType(dict(self.paper)))
        object.__setattr__(self, "label", self.label or self.name)

    @property
    def qualname(self) -> str:
        """``<builder>.<name>``, the name :func:`build` and a study row's ``variant:`` take."""
        return f"{self.builder}.{self.name}"

    def knob_values(self) -> dict[str, Any]:
        """The variant's knobs, lists as lists (as a spec row's ``knobs:``)."""
        return {k: _plain(v) for k, v in self.knobs.items()}


@dataclass(frozen=True)
class BuilderEntry:
    """One registered builder."""

    name: str
    fn: Callable[[Any, int], nn.Module]
    knobs: type[Knobs]
    paper: str
    summary: str
    prune_knob: str | None = None
    variants: tuple[Variant, ...] = ()

    @property
    def prunable(self) -> bool:
        """Whether the builder declared a pruning knob (progressive L1 pruning narrows the model along it)."""
        return self.prune_knob is not None

    def knob_fields(self) -> list[dataclasses.Field[Any]]:
        return list(dataclasses.fields(self.knobs))

    def resolve(self, knobs: dict[str, Any]) -> Knobs:
        """Validate ``knobs`` (unknown names, values, cross-knob rules) into the frozen knob dataclass."""
        allowed = {f.name for f in self.knob_fields()}
        for key in knobs:
            if key not in allowed:
                raise KnobError(self.name, key, f"unknown knob; this builder's knobs: {', '.join(sorted(allowed))}")
        return self.knobs(**knobs)

    def defaults(self) -> dict[str, Any]:
        return self.knobs().as_dict()

    def variant(self, name: str) -> Variant:
        """The variant ``name`` (without the builder prefix); unknown → :class:`KnobError` listing the allowed."""
        for v in self.variants:
            if v.name == name:
                return v
        allowed = ", ".join(v.qualname for v in self.variants) or "none"
        raise KnobError(self.name, "variant", f"unknown variant {name!r}; allowed: {allowed}")


@dataclass(frozen=True)
class ModelConfig:
    """What a model was built from: builder, resolved knobs, classes, and the variant's ``<builder>.<name>``
    when it was built as one with its own knobs (``None`` otherwise). :func:`build` sets it; :func:`config_of`
    reads it."""

    builder: str
    knobs: Knobs
    num_classes: int
    variant: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly: ``{"builder", "knobs" (the full resolved knob dict), "num_classes", "variant"}``."""
        return {
            "builder": self.builder,
            "knobs": self.knobs.as_dict(),
            "num_classes": self.num_classes,
            "variant": self.variant,
        }


CONFIG_ATTR = "archsearch_config"

#: The entry-point group through which an installed package adds builders (README, "Adding a builder").
ENTRY_POINT_GROUP = "archsearch.builders"


class PluginError(ArchsearchError):
    """A package's ``archsearch.builders`` entry point failed to load or to register its builders."""


_plugins_loaded: set[tuple[str, str]] = set()


def load_plugins() -> None:
    """Load every ``archsearch.builders`` entry point not loaded yet: each names a module whose import registers
    builders (``name = "pkg.module"``) or a callable that does (``name = "pkg.module:register_all"``).

    Runs at the first read of the builder registry; a failing entry point is one :class:`PluginError` line naming
    it (and is tried again at the next read).
    """
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        key = (ep.name, ep.value)
        if key in _plugins_loaded:
            continue
        try:
            loaded = ep.load()
            if callable(loaded):
                loaded()
        except Exception as exc:
            detail = (str(exc).strip().splitlines() or [""])[0]
            raise PluginError(
                f"builder plugin {ep.name} = {ep.value!r} (entry point group {ENTRY_POINT_GROUP}) failed: "
                f"{type(exc).__name__}: {detail}"
            ) from exc
        _plugins_loaded.add(key)


def _unknown_builder(name: str, allowed: str) -> KnobError:
    return KnobError(name, "builder", f"unknown builder; registered: {', '.join(names())}")


_BUILDERS: Registry[BuilderEntry] = Registry("builder", error=_unknown_builder, loader=load_plugins)


def register(
    name: str,
    *,
    knobs: type[Knobs],
    paper: str,
    summary: str,
    prune_knob: str | None = None,
    variants: Sequence[Variant] = (),
) -> Callable[[Callable[[Any, int], nn.Module]], Callable[[Any, int], nn.Module]]:
    """Decorator: register ``fn(knobs, num_classes) -> nn.Module`` under ``name`` with the paper's ``variants``.

    Every variant's knobs are validated here, so a variant the builder rejects fails at import. ``prune_knob`` names
    the knob (a rate in (0, 1]: the fraction of each prunable convolution's filters kept) along which
    :mod:`archsearch.pruning` narrows the model progressively; builders without one are not pruned.
    """

    def wrap(fn: Callable[[Any, int], nn.Module]) -> Callable[[Any, int], nn.Module]:
        own = tuple(dataclasses.replace(v, builder=name) for v in variants)
        seen = [v.name for v in own]
        if len(set(seen)) != len(seen):
            raise RuntimeError(f"builder {name!r}: a variant name is declared twice: {seen}")
        if prune_knob is not None and prune_knob not in {f.name for f in dataclasses.fields(knobs)}:
            raise RuntimeError(f"builder {name!r}: prune_knob {prune_knob!r} is not one of its knobs")
        entry = _BUILDERS.add(name, BuilderEntry(name, fn, knobs, paper, summary, prune_knob, own))
        knobs.builder_name = name
        for v in own:
            entry.resolve(v.knob_values())
        return fn

    return wrap


def names() -> list[str]:
    """Registered builder names (the ``archsearch.builders`` entry points' included), sorted."""
    return sorted(_BUILDERS.names())


def get(name: str) -> BuilderEntry:
    """The builder ``name``; unknown → :class:`KnobError` listing the registered builders."""
    return _BUILDERS.get(name)


def _split(name: str) -> tuple[str, str | None]:
    builder, dot, variant_name = name.partition(".")
    return builder, (variant_name if dot else None)


def variants(builder: str) -> list[Variant]:
    """The named paper variants of ``builder``, in the order the builder declares them."""
    return list(get(builder).variants)


def variant(qualname: str) -> Variant:
    """The variant ``"<builder>.<name>"``, e.g. ``variant("ndnet.ndnet45").paper["params"]``."""
    builder, name = _split(qualname)
    entry = get(builder)
    if name is None:
        raise KnobError(builder, "variant", f"{qualname!r}: expected <builder>.<variant>, e.g. ndnet.ndnet45")
    return entry.variant(name)


def build(builder: str, num_classes: int = 19, **knobs: Any) -> nn.Module:
    """Build a network: a builder name (or ``<builder>.<variant>``), number of classes, knobs (unset knobs take
    the variant's, then the paper defaults; given knobs win).

    The returned module carries its :class:`ModelConfig` (:func:`config_of`), so a checkpoint can rebuild it.
    """
    name, variant_name = _split(builder)
    entry = get(name)
    chosen = entry.variant(variant_name) if variant_name is not None else None
    base = chosen.knob_values() if chosen is not None else {}
    resolved = entry.resolve({**base, **knobs})
    model = entry.fn(resolved, num_classes)
    unchanged = chosen is not None and resolved == entry.resolve(base)
    config = ModelConfig(name, resolved, num_classes, chosen.qualname if chosen is not None and unchanged else None)
    setattr(model, CONFIG_ATTR, config)
    return model


def config_of(model: nn.Module) -> ModelConfig:
    """The :class:`ModelConfig` that :func:`build` set on ``model``; a model not built by it is a ``ValueError``."""
    config = getattr(model, CONFIG_ATTR, None)
    if not isinstance(config, ModelConfig):
        raise ValueError(f"{type(model).__name__} was not built by archsearch.build (it has no {CONFIG_ATTR})")
    return config


def _number_text(value: float) -> str:
    if abs(value) >= 1e9:
        return f"{value / 1e9:g}G"
    if abs(value) >= 1e6:
        return f"{value / 1e6:g}M"
    return f"{value:g}" if isinstance(value, float) else str(value)


def format_variants(builder: str, width: int = 100) -> list[str]:
    """Lines describing ``builder``'s variants (name, label, knobs, paper numbers, source), at most ``width``
    columns each — the block ``archsearch builders`` prints under each builder."""
    found = variants(builder)
    if not found:
        return []
    lines = ["  variants (build with archsearch.build(NAME); a study row takes {variant: NAME}):"]
    for v in found:
        lines.append(f"    {v.qualname} — {v.label}")
        for title, text in (
            ("knobs", ", ".join(f"{k}={_plain(x)}".replace(" ", "\xa0") for k, x in v.knobs.items())),
            ("paper", ", ".join(f"{k}\xa0{_number_text(x)}" for k, x in v.paper.items())),
            ("source", v.source),
        ):
            indent = f"      {title:<7}"
            wrapped = textwrap.wrap(text or "—", width, initial_indent=indent, subsequent_indent=" " * len(indent))
            lines += [line.replace("\xa0", " ") for line in wrapped]
    return lines
