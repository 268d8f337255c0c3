"""pydantic's validation errors → one :class:`~archsearch.util.errors.SpecError` line ``FILE: dotted.key: message``.

Validators raise :func:`located` errors (a message, and optionally a key below the validated model) and check
keys with :func:`known_keys` so an unknown key names the allowed ones; :func:`one_line` turns the first error of
a :class:`pydantic.ValidationError` into one line in the words of the rest of archsearch's errors.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

from archsearch.util.errors import SpecError

#: the error type of :func:`located` errors (the message is used as it is)
SPEC_ERROR = "spec"


def located(message: str, *at: str | int) -> PydanticCustomError:
    """An error ``message`` about the key ``at`` below the model being validated (none: the model itself)."""
    return PydanticCustomError(SPEC_ERROR, message, {"spec_at": at})


def known_keys(data: Any, allowed: Sequence[str]) -> Any:
    """``data`` unchanged when it is not a mapping or has only ``allowed`` keys; else an error naming them."""
    if isinstance(data, dict):
        for key in data:
            if key not in allowed:
                raise located(f"unknown key; allowed: {', '.join(allowed)}", str(key))
    return data


def dotted(loc: Iterable[str | int]) -> str:
    """``('rows', 0, 'knobs', 'depths')`` → ``rows[0].knobs.depths``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _bound(value: Any) -> str:
    """A bound as written: ``0``, not pydantic's ``0.0`` for a float field."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _allowed(expected: str) -> str:
    """pydantic's ``'auto', 'cpu' or 'cuda'`` → ``auto, cpu, cuda``."""
    return expected.replace(" or ", ", ").replace("'", "")


def message(err: ErrorDetails) -> str:
    """The error in archsearch's words: what is wrong, the value, and the allowed values where known."""
    kind, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
    if kind in (SPEC_ERROR, "declaration"):
        return err["msg"]
    if kind == "declaration_kind":
        return f"{err['msg']}; got {_short(got)}"
    if kind == "greater_than":
        return f"{_short(got)} must be > {_bound(ctx['gt'])}"
    if kind == "greater_than_equal":
        return f"{_short(got)} must be ≥ {_bound(ctx['ge'])}"
    if kind == "less_than_equal":
        return f"{_short(got)} is too large; allowed: ≤ {_bound(ctx['le'])}"
    if kind == "less_than":
        return f"{_short(got)} is too large; allowed: < {_bound(ctx['lt'])}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected an integer, got {_short(got)}"
    if kind in ("float_type", "float_parsing", "finite_number"):
        return f"expected a number, got {_short(got)}"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false, got {_short(got)}"
    if kind == "string_type":
        return f"expected a string, got {_short(got)}"
    if kind == "literal_error":
        return f"{_short(got)} is not allowed; allowed: {_allowed(str(ctx.get('expected', '')))}"
    if kind in ("too_short", "too_long"):
        if ctx.get("field_type") == "Tuple":
            n = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
            return f"expected a list of {n} values, got {_short(got)}"
        if kind == "too_short" and ctx.get("min_length") == 1:
            return f"expected a non-empty list, got {_short(got)}"
        return err["msg"]
    if kind in ("tuple_type", "list_type"):
        return f"expected a list, got {_short(got)}"
    if kind in ("dict_type", "model_type", "dataclass_type", "model_attributes_type", "dataclass_exact_type"):
        return f"expected a mapping, got {_short(got)}"
    if kind in ("missing", "missing_argument"):
        return "is required"
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        return "unknown key"
    return err["msg"]


def one_line(
    exc: ValidationError, *, file: str, skip: frozenset[str] = frozenset(), prefix: tuple[str, ...] = ()
) -> SpecError:
    """The first error of ``exc`` as a one-line :class:`SpecError` naming ``file`` and the dotted key.

    ``skip``: location parts that are not keys of the spec (the tags of a tagged union); ``prefix``: the key of
    the validated section in the spec (``("data",)`` for a data section validated alone).
    """
    err = exc.errors(include_url=False)[0]
    ctx = err.get("ctx") or {}
    loc = [*prefix] + [p for p in err["loc"] if not (isinstance(p, str) and p in skip)] + list(ctx.get("spec_at", ()))
    text = " ".join(message(err).split())  # one line, whatever the value held
    return SpecError(text, file=file, key=dotted(loc) or None)
