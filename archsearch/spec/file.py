"""A spec file → its raw mapping: YAML (safe, YAML 1.2 numbers), ``base:`` includes, ``--set`` overrides, ``${VAR}``.

``base:`` names one file or a list of files, relative to the including file (mmseg's ``_base_``). Each base is
read the same way (it may have bases of its own); the bases are merged in order and the file's own keys are
merged over them: mappings merge key by key, everything else (lists included) is replaced. A file that includes
itself, directly or through others, is an error.
"""

from __future__ import annotations

import copy
import os
import re
import typing
from pathlib import Path
from typing import Any

import yaml

from archsearch.util.errors import SpecError

BASE_KEY = "base"
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader reading numbers and booleans as YAML 1.2 does: ``1e6``, ``5e-4`` and ``1E+3`` are
    floats (YAML 1.1, PyYAML's default, wants a dot and a signed exponent and reads ``1e6`` as a string), and only
    ``true``/``false`` are booleans (``yes``, ``no``, ``on``, ``off`` stay strings, so ``log: yes`` is an error
    rather than a silent true)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"""),
    list("-+0123456789"),
)
_BOOL = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL]
    for first, resolvers in _Loader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def load_yaml(text: str) -> Any:
    """YAML safely loaded (no tags that build objects), with YAML 1.2 numbers."""
    return yaml.load(text, Loader=_Loader)


def expand_env(value: str, *, file: str, key: str) -> str:
    """Expand ``${VAR}`` from the environment; an unset variable is an error naming the key."""

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise SpecError(f"environment variable {name} is not set (used as ${{{name}}})", file=file, key=key)
        return os.environ[name]

    return os.path.expanduser(_ENV.sub(sub, value))


def parse_assignment(text: str, *, example: str = "proxy.iterations=50") -> tuple[str, Any]:
    """One ``--set KEY=VALUE`` item: the key (stripped) and the value read as YAML by :func:`load_yaml` (YAML 1.2
    numbers; an empty value is None). A malformed item is a SpecError naming it (``example`` shows a good one)."""
    if "=" not in text:
        raise SpecError(f"--set {text!r}: expected KEY=VALUE, e.g. --set {example}")
    key, value = text.split("=", 1)
    key = key.strip()
    try:
        return key, (load_yaml(value) if value.strip() else None)
    except yaml.YAMLError as exc:
        raise SpecError(f"--set {key}: value {value!r} is not valid YAML ({exc.__class__.__name__})") from None


def apply_overrides(raw: dict[str, Any], overrides: typing.Sequence[str], *, file: str) -> dict[str, Any]:
    """Apply ``--set a.b=v`` overrides (dotted keys, YAML values) to the raw mapping, in place."""
    for item in overrides:
        try:
            key, value = parse_assignment(item)
        except SpecError as exc:
            raise SpecError(str(exc), file=file) from None
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


def merge(base: Any, over: Any) -> Any:
    """``over`` merged over ``base``: mappings key by key (recursively), anything else replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


def _yaml_file(path: Path) -> Any:
    file = str(path)
    if path.is_dir():
        raise SpecError("is a folder; expected a spec YAML file such as spaces/ndnet.yaml", file=file)
    if not path.is_file():
        raise SpecError("no such spec file", file=file)
    try:
        raw = load_yaml(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or exc.__class__.__name__
        raise SpecError(f"invalid YAML{where}: {problem}", file=file) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read: {exc.__class__.__name__}", file=file) from None
    if raw is None:
        raise SpecError("the file is empty", file=file)
    return raw


#: Keys naming a file relative to the spec file that holds them (``${VAR}`` and ``~`` expanded first).
RELATIVE_KEYS = ("calibration",)


def _relative_to(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """``raw`` with each of its own :data:`RELATIVE_KEYS` paths joined to the folder of ``path`` (a base file's
    to the base file's folder)."""
    for key in RELATIVE_KEYS:
        value = raw.get(key)
        if isinstance(value, str) and value:
            value = expand_env(value, file=str(path), key=key)
            raw = {**raw, key: value if Path(value).is_absolute() else os.path.normpath(path.parent / value)}
    return raw


def read(path: str | Path, _chain: tuple[Path, ...] = ()) -> Any:
    """The raw mapping of a spec file with its ``base:`` files merged under it (a non-mapping is returned as is,
    for the validator to reject); paths of :data:`RELATIVE_KEYS` relative to the file that holds them."""
    path = Path(path)
    file = str(path)
    raw = _yaml_file(path)
    if isinstance(raw, dict):
        raw = _relative_to(raw, path)
    if not isinstance(raw, dict) or BASE_KEY not in raw:
        return raw
    names = raw.pop(BASE_KEY)
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise SpecError(f"expected a file name or a list of file names, got {names!r}", file=file, key=BASE_KEY)
    here = path.resolve()
    merged: dict[str, Any] = {}
    for name in names:
        base = path.parent / expand_env(name, file=file, key=BASE_KEY)
        chain = (*_chain, here)
        if base.resolve() in chain:
            cycle = " → ".join(str(p) for p in (*chain[chain.index(base.resolve()) :], base.resolve()))
            raise SpecError(f"{name!r} includes itself: {cycle}", file=file, key=BASE_KEY)
        if not base.is_file():
            raise SpecError(f"{name!r}: no such file (relative to {path.parent})", file=file, key=BASE_KEY)
        loaded = read(base, chain)
        if not isinstance(loaded, dict):
            raise SpecError("expected a mapping of spec keys", file=str(base))
        merged = merge(merged, loaded)
    return merge(merged, raw)
