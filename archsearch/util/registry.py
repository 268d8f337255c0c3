"""One way to keep named things: :class:`Registry`, a name → thing table with one-line errors.

archsearch keeps five such tables (builders, data sets, runtimes, counting conventions, samplers). Each is a
:class:`Registry`: names in the order they were registered, a duplicate refused, and an unknown name one line
naming the kind and the allowed names (``unknown runtime 'tvm'; allowed: eager, compile, ...``), as timm's model
registry does for its model names. A table may be filled lazily by a ``loader`` run at its first read (the builder
registry loads the ``archsearch.builders`` entry points that way).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, overload

from archsearch.util.errors import ArchsearchError

T = TypeVar("T")


class UnknownName(ArchsearchError, ValueError):
    """A name that no registered thing of its kind has (the command line prints it as one line, exit 2)."""


class Registry(Generic[T]):
    """Name → thing, in registration order.

    ``kind`` names the things in messages (``"runtime"``). ``error(name, allowed)`` builds the exception for an
    unknown name (``allowed``: the registered names joined by ``", "``); the default is :class:`UnknownName`
    with ``unknown <kind> '<name>'; allowed: a, b, c``. ``loader`` runs once, at the first read (``get``,
    ``names``, ``in``, iteration); registering never runs it, so a loader may register. A loader that raises is
    run again at the next read.
    """

    def __init__(
        self,
        kind: str,
        *,
        error: Callable[[str, str], Exception] | None = None,
        loader: Callable[[], None] | None = None,
    ) -> None:
        self.kind = kind
        self._things: dict[str, T] = {}
        self._error = error
        self._loader = loader
        self._loaded = loader is None
        self._loading = False

    def _load(self) -> None:
        if self._loaded or self._loading or self._loader is None:
            return
        self._loading = True
        try:
            self._loader()
            self._loaded = True
        finally:
            self._loading = False

    def add(self, name: str, thing: T) -> T:
        """Register ``thing`` under ``name``; a name registered before is a ``ValueError``. Returns ``thing``."""
        if name in self._things:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._things[name] = thing
        return thing

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...
    @overload
    def register(self, name: str, thing: T) -> T: ...
    def register(self, name: str, thing: T | None = None) -> T | Callable[[T], T]:
        """``register(name, thing)``, or as a decorator ``@registry.register(name)`` (the thing is returned)."""
        if thing is not None:
            return self.add(name, thing)

        def decorate(thing: T) -> T:
            return self.add(name, thing)

        return decorate

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        self._load()
        return tuple(self._things)

    def unknown(self, name: str) -> Exception:
        """The exception :meth:`get` raises for the unknown ``name`` (not raised here)."""
        allowed = ", ".join(self.names())
        if self._error is not None:
            return self._error(name, allowed)
        return UnknownName(f"unknown {self.kind} {name!r}; allowed: {allowed}")

    def get(self, name: str) -> T:
        """The thing registered as ``name``; an unknown name raises :meth:`unknown`'s one-line error."""
        self._load()
        try:
            return self._things[name]
        except KeyError:
            raise self.unknown(name) from None

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._things

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def items(self) -> list[tuple[str, T]]:
        """``(name, thing)`` pairs in registration order."""
        self._load()
        return list(self._things.items())

    def copy(self) -> Registry[T]:
        """A registry with the same things and hooks whose loader runs again at its first read (a throwaway copy
        for tests that load plugins)."""
        other: Registry[T] = Registry(self.kind, error=self._error, loader=self._loader)
        other._things = dict(self._things)
        return other

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._things)})"
