"""A study command's storage and output folder: checked before any work, and opened read-only for reports."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from archsearch import search
from archsearch.util.errors import ArchsearchError
from archsearch.util.files import check_writable_dir

if TYPE_CHECKING:
    import optuna

    from archsearch.spec import Spec

#: Tables that every Optuna (hence archsearch) storage has.
OPTUNA_TABLES = ("version_info", "studies")


def out_dir(args: argparse.Namespace, spec: Spec, url: str) -> Path:
    """``--out``, else the artifacts folder beside the storage; checked to be writable before any work."""
    out = Path(args.out) if args.out else search.artifacts_dir(spec, url)
    check_writable_dir(out, f"--out {out}" if args.out else f"output folder {out}")
    return out


def check_storage_folder(url: str) -> None:
    """An SQLite storage's folder can be created and written (before any trial runs)."""
    db = search.sqlite_path(url)
    if db is not None:
        if db.exists() and not db.is_file():
            raise ArchsearchError(f"storage {url}: {db} is not a file")
        check_writable_dir(db.parent, f"storage {url}")


def has_optuna_tables(url: str) -> bool | None:
    """Whether the database at ``url`` holds Optuna's tables; None when that cannot be told (no driver, no
    connection, no SQLite file: the caller's own error says why; connecting would create the file)."""
    db = search.sqlite_path(url)
    if db is not None and not db.is_file():
        return None
    try:
        engine = sqlalchemy.create_engine(make_url(url), poolclass=NullPool)
        try:
            inspector = sqlalchemy.inspect(engine)
            return all(inspector.has_table(name) for name in OPTUNA_TABLES)
        finally:
            engine.dispose()
    except Exception:  # noqa: BLE001 — a driver or connection problem: leave it to the storage's own error
        return None


def open_for_reading(spec: Spec, url: str) -> optuna.Study:
    """The study named ``spec.name`` for a report (read-only: nothing is created or written). A database that
    holds no archsearch study at all — a fresh PostgreSQL database, an empty SQLite file — gives the same line
    as one without this study, not the database's complaint about a missing table."""
    try:
        return search.open_study(spec, url, create=False)
    except ArchsearchError:
        if has_optuna_tables(url) is False:
            shown = make_url(url).render_as_string(hide_password=True)
            raise ArchsearchError(
                f"{shown}: no study named {spec.name!r} (studies there: none); run `archsearch run {spec.path}` first"
            ) from None
        raise
