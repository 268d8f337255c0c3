"""``archsearch dashboard SPEC``: optuna-dashboard on the study's storage, the Pareto front attached to the study."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable

from sqlalchemy.engine import make_url

from archsearch import search
from archsearch import spec as spec_mod
from archsearch.report import dashboard


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value}; allowed: 1–65535")
    return value


def cmd_dashboard(args: argparse.Namespace) -> int:

    dashboard.require()  # before anything is read or written
    spec = spec_mod.load(args.spec, args.set)
    url = search.storage_url(spec, args.storage)
    study = search.open_study(spec, url, create=False)
    trials = study.get_trials(deepcopy=False)
    location = dashboard.store_location(spec, search.artifacts_dir(spec, url), trials)
    if spec.rows:
        front = "an ablation table has no Pareto front to attach"
    else:
        attached = dashboard.attach_front(study, spec.name, location)
        front = (
            "no complete trial yet: no Pareto front to attach"
            if attached is None
            else f"Pareto front {'attached' if attached[1] else 'already attached'} as {attached[0]}"
        )

    shown = make_url(url).render_as_string(hide_password=True)  # a PostgreSQL URL may hold the password
    print(f"study {spec.name!r}: {len(trials)} trials in {shown}; artifacts in {location}; {front}")
    page = dashboard.url(args.host, args.port, search.open_storage(url, create=False), spec.name)
    print(f"serving {page} (Ctrl-C stops)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):  # optuna-dashboard's server (bottle) returns on Ctrl-C itself
        dashboard.serve(url, location, args.host, args.port)
    print("archsearch: dashboard stopped", file=sys.stderr)
    return 0


def register(verb: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """Add the ``dashboard`` verb through ``verb(name, summary)`` (the parser's own verb maker)."""
    q = verb("dashboard", "serve optuna-dashboard on the study's storage, with its Pareto front attached")
    q.add_argument("spec", help="the study's spec YAML file")
    q.add_argument(
        "--storage", metavar="URL", help="SQLAlchemy URL (default: the spec's storage, else sqlite:///runs/NAME.db)"
    )
    q.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="spec overrides, as for run (default: none)"
    )
    q.add_argument("--port", type=_port, default=8080, metavar="P", help="port to serve on (default: 8080)")
    q.add_argument(
        "--host", default="127.0.0.1", help="address to serve on; 0.0.0.0 for every interface (default: 127.0.0.1)"
    )
    q.set_defaults(fn=cmd_dashboard)
