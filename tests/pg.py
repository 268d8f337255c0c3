"""A private PostgreSQL server for tests, started from Debian's binaries (package ``postgresql``).

The server gets a temporary data directory, a free port on 127.0.0.1, its own unix-socket directory and
``trust`` authentication; it is stopped and its files removed by :meth:`PostgresServer.stop`. PostgreSQL refuses
to run as root, so under root the server runs as the ``postgres`` system user the package creates.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

SERVER_GLOB = "/usr/lib/postgresql/*/bin"
SERVER_USER = "postgres"


class Unavailable(RuntimeError):
    """The server binaries, the ``postgres`` user or the Python driver are missing (the reason says which)."""


def bin_dir() -> Path:
    """The newest installed server's bin directory holding ``initdb`` and ``pg_ctl``."""
    dirs = [Path(d) for d in glob.glob(SERVER_GLOB) if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists()]
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not dirs and initdb and pg_ctl:
        dirs = [Path(initdb).parent]
    if not dirs:
        raise Unavailable(f"no PostgreSQL server binaries ({SERVER_GLOB}/initdb, pg_ctl); apt-get install postgresql")

    def version(d: Path) -> tuple[int, ...]:
        name = d.parent.name
        return tuple(int(p) for p in name.split(".")) if name.replace(".", "").isdigit() else (0,)

    return max(dirs, key=version)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """``start()`` a throw-away server; ``create_database()`` a fresh database and get its URL; ``stop()``."""

    def __init__(self) -> None:
        self.bin = bin_dir()
        self.run_as: dict[str, Any] = {}
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise Unavailable(f"running as root and there is no {SERVER_USER!r} user to run the server") from None
            self.run_as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
            self._owner = (pw.pw_uid, pw.pw_gid)
        self.base = Path(tempfile.mkdtemp(prefix="archsearch-pg-"))
        self.data = self.base / "data"
        self.socket_dir = self.base / "socket"
        self.log = self.base / "server.log"
        self.port = free_port()
        self._names = itertools.count()

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        out = subprocess.run(args, cwd=self.base, env=env, capture_output=True, text=True, timeout=120, **self.run_as)
        if out.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}\n{log}")
        return out

    def start(self) -> None:
        self.socket_dir.mkdir()
        if self.run_as:
            for path in (self.base, self.socket_dir):
                os.chown(path, *self._owner)
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            SERVER_USER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        self.resume()

    def _pg_ctl(self, action: str, *args: str) -> None:
        options = (
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        # -l: the server's output goes to the log file, never to a pipe of this process (that would keep it open)
        starts = ["-l", str(self.log), "-o", options] if action in ("start", "restart") else []
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), *starts, *args, action)

    def resume(self) -> None:
        """Start the server (again, after :meth:`pause`) and wait until it accepts connections."""
        self._pg_ctl("start", "-w", "-t", "60")

    def pause(self) -> None:
        """Stop the server as a maintenance window does (``-m fast``: sessions are ended), keeping its data."""
        self._pg_ctl("stop", "-m", "fast", "-w", "-t", "60")

    def restart(self) -> None:
        """``pg_ctl restart -m fast``, as a failover or a maintenance restart does: every session ends."""
        self._pg_ctl("restart", "-m", "fast", "-w", "-t", "60")

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SERVER_USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; returns its ``postgresql://`` URL."""
        import sqlalchemy

        name = f"{prefix}_{next(self._names)}"
        engine = sqlalchemy.create_engine(self.url(), isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return self.url(name)
