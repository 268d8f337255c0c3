"""Registry of builders: name → (function, knob dataclass, paper).

Every builder is a plain function ``fn(knobs, num_classes) -> nn.Module`` whose knobs are a frozen
dataclass derived from :class:`Knobs`. Each knob field is declared with :func:`knob`, which records the
paper's default, the paper's own name for it and the allowed values, so that ``archsearch builders`` and
spec validation read one place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch.nn as nn

from archsearch.errors import KnobError

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
        return dataclasses.field(default_factory=lambda d=default: d, metadata=meta)
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


@dataclass(frozen=True)
class BuilderEntry:
    """One registered builder."""

    name: str
    fn: Callable[[Any, int], nn.Module]
    knobs: type[Knobs]
    paper: str
    summary: str
    prunable: bool = False

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


_REGISTRY: dict[str, BuilderEntry] = {}


def register(
    name: str, *, knobs: type[Knobs], paper: str, summary: str, prunable: bool = False
) -> Callable[[Callable[[Any, int], nn.Module]], Callable[[Any, int], nn.Module]]:
    """Decorator: register ``fn(knobs, num_classes) -> nn.Module`` under ``name``."""

    def wrap(fn: Callable[[Any, int], nn.Module]) -> Callable[[Any, int], nn.Module]:
        if name in _REGISTRY:
            raise RuntimeError(f"builder {name!r} registered twice")
        knobs.builder_name = name
        _REGISTRY[name] = BuilderEntry(name, fn, knobs, paper, summary, prunable)
        return fn

    return wrap


def names() -> list[str]:
    """Registered builder names, sorted."""
    return sorted(_REGISTRY)


def get(name: str) -> BuilderEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KnobError(name, "builder", f"unknown builder; registered: {', '.join(names())}") from None


def build(builder: str, num_classes: int = 19, **knobs: Any) -> nn.Module:
    """Build a network: ``builder`` name, number of classes, knobs (unset knobs take the paper defaults).

    The returned module carries ``archsearch_builder`` and ``archsearch_knobs`` (the resolved knob dict),
    so a checkpoint can rebuild it.
    """
    entry = get(builder)
    resolved = entry.resolve(knobs)
    model = entry.fn(resolved, num_classes)
    model.archsearch_builder = builder  # type: ignore[assignment]
    model.archsearch_knobs = resolved.as_dict()  # type: ignore[assignment]
    model.archsearch_num_classes = num_classes  # type: ignore[assignment]
    return model
