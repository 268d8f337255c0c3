"""Argument parsing shared by every command: the parser class, option types and the options several verbs take.

Bad options raise :class:`UsageError` (one line, exit 2 from :func:`archsearch.cli.main`) instead of argparse's
usage block.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import Any, NoReturn, Protocol

from archsearch import __version__
from archsearch.cost.devices import DEVICE_PATTERN, DEVICES
from archsearch.util.errors import ArchsearchError

EXIT_USAGE = 2


class UsageError(ArchsearchError):
    """A command-line option is missing or has a bad value (argparse's errors, as one line)."""


class Parser(argparse.ArgumentParser):
    """argparse with its errors raised as :class:`UsageError` — one line and exit 2 from :func:`main` — instead
    of a usage block."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


class AddVerb(Protocol):
    """Adds the sub-command ``name`` (with the global options) and returns its parser; each command module's
    ``register(verb)`` calls it once per verb it provides."""

    def __call__(self, name: str, summary: str) -> argparse.ArgumentParser: ...


def int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value}; allowed: ≥ {minimum}")
        return value

    return parse


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text}; allowed: a number > 0")
    return value


def fraction(text: str) -> float:
    value = positive_float(text)
    if not value < 1:
        raise argparse.ArgumentTypeError(f"{text}; allowed: a number in (0, 1)")
    return value


def parse_input(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N,C,H,W such as 1,3,1024,2048") from None
    if len(dims) != 4 or min(dims) <= 0 or dims[1] != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N,3,H,W with positive sizes")
    return dims


def global_options(q: argparse.ArgumentParser, *, top: bool) -> None:
    """-v, -q and --version, accepted before and after the verb (after it, they leave the default unset so that
    a value given before the verb stands)."""

    default: Any = False if top else argparse.SUPPRESS
    q.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default,
        help="debug logging, with tracebacks of failed trials (default: off)",
    )
    q.add_argument("-q", "--quiet", action="store_true", default=default, help="no progress bars (default: off)")
    q.add_argument(
        "--version", action="version", version=f"archsearch {__version__}", help="print the version and exit"
    )


def spec_args(q: argparse.ArgumentParser) -> None:
    """SPEC, --storage, --set and --out: the options of every verb that works on a study."""
    q.add_argument("spec", help="spec YAML file (spaces/*.yaml or studies/*.yaml)")
    q.add_argument(
        "--storage", metavar="URL", help="SQLAlchemy URL (default: the spec's storage, else sqlite:///runs/NAME.db)"
    )
    q.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec key (dotted), YAML value; repeatable (default: none)",
    )
    q.add_argument(
        "--out",
        metavar="DIR",
        help="folder for the exports (default: beside the storage, runs/NAME/ for sqlite:///runs/NAME.db)",
    )


def device_option(text: str) -> str:
    """``--device``: auto, cpu, cuda or cuda:N (:data:`archsearch.cost.devices.DEVICE_PATTERN`)."""
    if not re.match(DEVICE_PATTERN, text):
        raise argparse.ArgumentTypeError(f"{text!r}; allowed: {DEVICES}")
    return text
