"""The ``archsearch`` command: argument parsing and the commands, each a thin call into the library.

:func:`parser` builds the verbs from the command modules in :data:`COMMANDS` (each has ``register(verb)``);
:func:`main` runs one. Bad input (spec, knobs, paths, URLs) prints one line ``archsearch: error: …`` and exits
with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence

import optuna

from archsearch.cli import checkpoint_commands, dashboard, model_commands, study_commands, train_command
from archsearch.cli.arguments import EXIT_USAGE, Parser, UsageError, global_options
from archsearch.util.errors import ArchsearchError

#: The command modules, in the order their verbs are listed; a new command is a module with ``register(verb)``.
COMMANDS = (study_commands, train_command, model_commands, checkpoint_commands, dashboard)


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="archsearch", description="Architecture ablation and search for real-time semantic segmentation.")
    global_options(p, top=True)
    sub = p.add_subparsers(dest="verb", required=True)

    def verb(name: str, summary: str) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")
        global_options(q, top=False)
        return q

    for module in COMMANDS:
        module.register(verb)
    sub.metavar = "{" + ",".join(sub.choices) + "}"
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except UsageError as exc:
        print(f"archsearch: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.quiet:
        os.environ["TQDM_DISABLE"] = "1"  # every progress bar, the data cache's included

    # heartbeats and metric names are stable enough for us; the CLI output stays one line per trial
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.DEBUG if args.verbose else optuna.logging.WARNING)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.fn(args) or 0)
    except ArchsearchError as exc:
        label = "error" if exc.exit_code == EXIT_USAGE else "stopped"
        print(f"archsearch: {label}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("archsearch: interrupted; finished trials are stored", file=sys.stderr)
        return 130


__all__ = ["COMMANDS", "main", "parser"]
