"""The ``archsearch`` command: argument parsing and the commands, each a thin call into the library."""

from archsearch.cli.commands import main, parser

__all__ = ["main", "parser"]
