"""Knob declarations (a spec's ``knobs:``): a tagged union of frozen pydantic models that suggest and enumerate
themselves.

- :class:`Choices` — ``{choices: [...]}`` or the bare list ``[...]``; values may be lists (Optuna sees them as their
  JSON text, e.g. ``"[24, 48, 96]"``);
- :class:`IntRange` — ``{int: [lo, hi], step: 1, log: false}``;
- :class:`FloatRange` — ``{float: [lo, hi], step: null, log: false}``;
- :class:`Each` — ``{each: [decl, ...]}``: a list knob whose elements are searched separately (Optuna parameters
  ``name[0]``, ``name[1]``, …).

Each class has ``suggest(trial, name)``, ``distributions(name)`` (the Optuna distributions of its parameters),
``values()`` (every value when finite, else None), ``size()`` and ``probes()`` (the values checked against the
builder: every choice, both ends of a range). A declaration also reads like its YAML mapping:
``decl["int"]``, ``decl.get("step", 1)``, ``"each" in decl``.
"""

from __future__ import annotations

import itertools
import json
import math
from typing import Annotated, Any, ClassVar

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import BaseTrial
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    Strict,
    StrictBool,
    StrictInt,
    Tag,
    TypeAdapter,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from archsearch.spec.errors import known_keys

#: a number in a spec: an int or a float (not a bool, not a string), read as a float
Number = Annotated[float, Strict()]
#: the YAML keys that name a declaration's kind
KINDS = ("choices", "int", "float", "each")


def encode(value: Any) -> Any:
    """Optuna categorical values must be scalars: lists and dicts go as their JSON text."""
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else value


def decode(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        return json.loads(value)
    return value


def _error(message: str) -> PydanticCustomError:
    return PydanticCustomError("declaration", message)


class _Declaration(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    tag: ClassVar[str]

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        return known_keys(data, [f.alias or n for n, f in cls.model_fields.items()])

    def suggest(self, trial: BaseTrial, name: str) -> Any:
        raise NotImplementedError

    def distributions(self, name: str) -> dict[str, BaseDistribution]:
        raise NotImplementedError

    def values(self) -> list[Any] | None:
        """Every value, when finite."""
        raise NotImplementedError

    def size(self) -> int | None:
        """How many values, when finite."""
        values = self.values()
        return None if values is None else len(values)

    def probes(self) -> list[Any]:
        """Representative values to validate against the builder: every choice, or both ends of a range."""
        raise NotImplementedError

    # -- read access as the YAML mapping ----------------------------------------------------------------------
    def _mapping(self) -> dict[str, Any]:
        fields = type(self).model_fields
        return {(fields[n].alias or n): getattr(self, n) for n in fields}

    def __getitem__(self, key: str) -> Any:
        return self._mapping()[key]

    def __contains__(self, key: object) -> bool:
        return key in self._mapping()

    def get(self, key: str, default: Any = None) -> Any:
        return self._mapping().get(key, default)

    @model_serializer(mode="wrap")
    def _as_given(self, handler: SerializerFunctionWrapHandler) -> Any:
        """Dumped as written: only the keys the spec gave (``{int: [1, 6]}`` stays without step and log)."""
        data = handler(self)
        fields = type(self).model_fields
        given = {fields[n].alias or n for n in self.model_fields_set} | set(self.model_fields_set)
        return {k: v for k, v in data.items() if k in given}


def _or_bare_list(schema: dict[str, Any]) -> None:
    """The JSON schema of :class:`Choices` admits the bare list too."""
    mapping = dict(schema)
    schema.clear()
    schema.update(
        title=mapping.pop("title", "Choices"),
        description=mapping.get("description", ""),
        anyOf=[mapping, {"type": "array", "minItems": 1}],
    )


class Choices(_Declaration):
    """``{choices: [a, b, ...]}`` (or the bare list): one of the listed values."""

    model_config = ConfigDict(json_schema_extra=_or_bare_list)
    tag: ClassVar[str] = "Choices"
    choices: list[Any] = Field(min_length=1, description="the values (scalars or lists)")

    @model_validator(mode="before")
    @classmethod
    def _bare_list(cls, data: Any) -> Any:
        return {"choices": data} if isinstance(data, list) else data

    def suggest(self, trial: BaseTrial, name: str) -> Any:
        return decode(trial.suggest_categorical(name, [encode(c) for c in self.choices]))

    def distributions(self, name: str) -> dict[str, BaseDistribution]:
        return {name: CategoricalDistribution([encode(c) for c in self.choices])}

    def values(self) -> list[Any]:
        return list(self.choices)

    def probes(self) -> list[Any]:
        return list(self.choices)


#: JSON schema: ``log: true`` admits no step (an int range: step 1 only)
_LOG: dict[str, Any] = {"properties": {"log": {"const": True}}, "required": ["log"]}


class IntRange(_Declaration):
    """``{int: [lo, hi], step: 1, log: false}``: an integer from lo to hi (inclusive)."""

    model_config = ConfigDict(json_schema_extra={"if": _LOG, "then": {"properties": {"step": {"const": 1}}}})
    tag: ClassVar[str] = "IntRange"
    bounds: tuple[StrictInt, StrictInt] = Field(alias="int", description="[low, high], inclusive")
    step: StrictInt = Field(1, gt=0)
    log: StrictBool = False

    @model_validator(mode="after")
    def _consistent(self) -> IntRange:
        lo, hi = self.bounds
        if lo > hi:
            raise _error(f"[{lo}, {hi}]: expected [low, high] with low ≤ high")
        if self.log and lo < 1:
            raise _error(f"log scale needs low ≥ 1, got {lo}")
        if self.log and self.step != 1:
            raise _error(f"step {self.step} and log: true cannot be combined; allowed: step 1 with log, or no log")
        return self

    def suggest(self, trial: BaseTrial, name: str) -> Any:
        lo, hi = self.bounds
        return trial.suggest_int(name, lo, hi, step=self.step, log=self.log)

    def distributions(self, name: str) -> dict[str, BaseDistribution]:
        lo, hi = self.bounds
        return {name: IntDistribution(lo, hi, log=self.log, step=self.step)}

    def values(self) -> list[Any]:
        lo, hi = self.bounds
        return list(range(lo, hi + 1, self.step))

    def probes(self) -> list[Any]:
        values = self.values()
        return [values[0], values[-1]]


class FloatRange(_Declaration):
    """``{float: [lo, hi], step: null, log: false}``: a real number from lo to hi."""

    model_config = ConfigDict(json_schema_extra={"if": _LOG, "then": {"not": {"required": ["step"]}}})
    tag: ClassVar[str] = "FloatRange"
    bounds: tuple[Number, Number] = Field(alias="float", description="[low, high]")
    step: Number | None = Field(None, gt=0)
    log: StrictBool = False

    @model_validator(mode="after")
    def _consistent(self) -> FloatRange:
        lo, hi = self.bounds
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
            raise _error(f"[{lo}, {hi}]: expected finite [low, high] with low ≤ high")
        if self.log and lo <= 0:
            raise _error(f"log scale needs low > 0, got {lo}")
        if self.log and self.step is not None:
            raise _error(f"step {self.step} and log: true cannot be combined; allowed: one of them")
        return self

    def suggest(self, trial: BaseTrial, name: str) -> Any:
        lo, hi = self.bounds
        return trial.suggest_float(name, lo, hi, step=self.step, log=self.log)

    def distributions(self, name: str) -> dict[str, BaseDistribution]:
        lo, hi = self.bounds
        return {name: FloatDistribution(lo, hi, log=self.log, step=self.step)}

    def values(self) -> list[Any] | None:
        if self.step is None:
            return None
        lo, hi = self.bounds
        n = round((hi - lo) / self.step)
        return [lo + i * self.step for i in range(n + 1)]

    def probes(self) -> list[Any]:
        return list(self.bounds)


class Each(_Declaration):
    """``{each: [decl, ...]}``: a list knob, one declaration per element."""

    tag: ClassVar[str] = "Each"
    each: list[Declaration] = Field(min_length=1, description="one declaration per element of the list")

    def suggest(self, trial: BaseTrial, name: str) -> Any:
        return [d.suggest(trial, f"{name}[{i}]") for i, d in enumerate(self.each)]

    def distributions(self, name: str) -> dict[str, BaseDistribution]:
        out: dict[str, BaseDistribution] = {}
        for i, d in enumerate(self.each):
            out.update(d.distributions(f"{name}[{i}]"))
        return out

    def values(self) -> list[Any] | None:
        per = [d.values() for d in self.each]
        if any(v is None for v in per):
            return None
        return [list(combo) for combo in itertools.product(*(v or [] for v in per))]

    def size(self) -> int | None:
        total = 1
        for d in self.each:
            n = d.size()
            if n is None:
                return None
            total *= n
        return total

    def probes(self) -> list[Any]:
        per = [d.probes() for d in self.each]
        return [[p[0] for p in per], [p[-1] for p in per]]


_CLASSES: dict[str, type[_Declaration]] = {"choices": Choices, "int": IntRange, "float": FloatRange, "each": Each}
#: the union's tags (they appear in pydantic's error locations, never in a spec)
TAGS = frozenset(cls.tag for cls in _CLASSES.values())


def _tag_of(value: Any) -> str | None:
    if isinstance(value, _Declaration):
        return value.tag
    if isinstance(value, list):
        return Choices.tag
    if isinstance(value, dict):
        kinds = [k for k in KINDS if k in value]
        if len(kinds) == 1:
            return _CLASSES[kinds[0]].tag
    return None


Declaration = Annotated[
    Annotated[Choices, Tag(Choices.tag)]
    | Annotated[IntRange, Tag(IntRange.tag)]
    | Annotated[FloatRange, Tag(FloatRange.tag)]
    | Annotated[Each, Tag(Each.tag)],
    Discriminator(
        _tag_of,
        custom_error_type="declaration_kind",
        custom_error_message="expected a declaration with one of choices, int, float, each, e.g. {choices: [2, 4]} "
        "or {int: [1, 6]}",
    ),
]
"""A knob declaration: :class:`Choices`, :class:`IntRange`, :class:`FloatRange` or :class:`Each`."""

Each.model_rebuild()


_DECLARATION: TypeAdapter[Any] = TypeAdapter(Declaration)


def declaration(decl: Any) -> Any:
    """A declaration object; a raw mapping or list (as written in YAML) is validated into one."""
    return _DECLARATION.validate_python(decl)


def declaration_values(decl: Any) -> list[Any]:
    """Representative values of a declaration (a declaration object, or its YAML mapping or list) for
    validation: every choice, or both ends of a range."""
    return declaration(decl).probes()
