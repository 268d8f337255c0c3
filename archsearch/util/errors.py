"""Error types that the command line turns into one clear line and exit status 2."""

from __future__ import annotations


class ArchsearchError(Exception):
    """Base class of errors the command line prints as one line: the user's input (spec, knobs, paths, URLs;
    exit status 2) or a run stopped on purpose (``exit_code`` says how)."""

    exit_code: int = 2

    def __init__(self, *args: object, exit_code: int | None = None) -> None:
        super().__init__(*args)
        if exit_code is not None:
            self.exit_code = exit_code


class SpecError(ArchsearchError):
    """A spec file is missing, malformed, or has an unknown key or a bad value.

    The message names the file, the dotted key and the allowed values.
    """

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None) -> None:
        self.file = file
        self.key = key
        where = ": ".join(part for part in (file, key) if part)
        super().__init__(f"{where}: {message}" if where else message)


class KnobError(ArchsearchError, ValueError):
    """A builder knob is unknown, or its value is outside what the builder allows."""

    def __init__(self, builder: str, knob: str, message: str) -> None:
        self.builder = builder
        self.knob = knob
        self.detail = message
        super().__init__(f"builder '{builder}', knob '{knob}': {message}")


class DataError(ArchsearchError):
    """A data set cannot be found or read where the spec says it is."""
