"""Shared test settings, and a private PostgreSQL server (tests/pg.py) for the multi-worker tests."""

import os
from collections.abc import Iterator

import pytest
import torch

import pg


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``@pytest.mark.cuda`` tests need a CUDA GPU: skipped without one (benchmarks/gpu_check.py runs them)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> Iterator[None]:
    """Tests run tiny tensors: one thread is faster, and far faster on a loaded machine (no OpenMP spin-waiting)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def postgres() -> Iterator[pg.PostgresServer]:
    """A local PostgreSQL server for the session. Skips when it cannot be had, except in CI (``CI`` set): fails."""
    try:
        import psycopg  # noqa: F401 — the driver postgresql:// URLs use (the `postgres` extra)

        server = pg.PostgresServer()
    except (ImportError, pg.Unavailable) as exc:
        reason = f"PostgreSQL tests: {exc}"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(f"{reason} (CI is set: these tests must run; .ci/run installs postgresql)", pytrace=False)
        pytest.skip(reason)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(postgres: pg.PostgresServer) -> str:
    """The URL of a fresh, empty database on the session's server."""
    return postgres.create_database()
