"""Test isolation: every test gets its own SPR_HOME and HF_HOME, read by the library at call time.

Fixtures for tiny models live in ``model_fixtures.py`` and for the Hub server in
``hub_fixtures.py``; they are imported here so every test module can use them.

Backends. By default every test's catalogue is the default SQLite file in its own SPR_HOME.
With ``SPR_TEST_DATABASE=postgresql`` the same suite runs against PostgreSQL: each test gets a
fresh database on the server (``SPR_TEST_POSTGRES_URL``, default
``postgresql://postgres@127.0.0.1:5432/postgres``), cloned from a template migrated once per
session, and ``SPR_DATABASE_URL`` points at it (blobs still live in the test's SPR_HOME). When no
server answers, that run skips every test and says so in its summary (CI does not fail for it).

Markers: ``sqlite_only`` (SQLite behaviour: the default file's auto-upgrade, the backup API) and
``postgres_only`` (needs the PostgreSQL half) skip the test in the other half;
``backend_independent`` (a test that never touches the catalogue backend) runs in the SQLite half
only, so the PostgreSQL half does not repeat it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import ops_support
import pytest
from hub_fixtures import *  # noqa: F403  (fixtures are found by name)
from hub_fixtures import isolate_hf_client
from model_fixtures import *  # noqa: F403  (fixtures are found by name)
from ops_support import PostgresServer, backend_name, postgres_admin_dsn

_PG_UNREACHABLE: list[str] = []  # why the PostgreSQL half was skipped, if it was


@pytest.fixture(scope="session")
def backend() -> str:
    """``sqlite`` or ``postgresql``: the catalogue backend of this run."""
    return backend_name()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The PostgreSQL server of the PostgreSQL half, with a migrated template database."""
    server = PostgresServer()
    server.make_template()
    ops_support.ACTIVE_SERVER = server  # for ops_support.switch_home (plain helpers have no fixtures)
    try:
        yield server
    finally:
        ops_support.ACTIVE_SERVER = None
        server.close()


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[Path]:
    """Point the registry and the Hub client at per-test directories (and a per-test database)."""
    home = tmp_path / "spr-home"
    monkeypatch.setenv("SPR_HOME", str(home))
    monkeypatch.delenv("SPR_DATABASE_URL", raising=False)
    monkeypatch.setenv("SPR_ACTOR", "tester")
    # The Hub client fixes its cache, token and telemetry paths at import: move those too, so no
    # test reads a real login or writes into the user's ~/.cache/huggingface.
    isolate_hf_client(monkeypatch, tmp_path / "hf-home")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.delenv("SPR_BLOB_DIR", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    if backend_name() != "postgresql":
        yield home
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name, url = server.create()
    monkeypatch.setenv("SPR_DATABASE_URL", url)
    try:
        yield home
    finally:
        from registry import db

        db.dispose_all()
        server.drop_later(name)


@pytest.fixture
def fresh_database_url(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> Callable[..., str]:
    """``make(empty=True) -> URL``: another database of this run's backend (not the test's default).

    ``empty=True`` gives a database without any schema (for migration tests); ``empty=False`` one
    migrated to the newest schema. SQLite: a new file under ``tmp_path``.
    """
    counter = iter(range(1, 1_000_000))

    def make(*, empty: bool = True) -> str:
        if backend == "postgresql":
            server: PostgresServer = request.getfixturevalue("postgres_server")
            name, url = server.create(empty=empty)
            request.addfinalizer(lambda: server.drop_later(name))
            return url
        url = f"sqlite:///{tmp_path / f'extra-{next(counter)}.sqlite'}"
        if not empty:
            from registry import db

            db.upgrade(db.open_unchecked(url))
        return url

    return make


def pytest_configure(config: pytest.Config) -> None:
    # Child processes started by tests (``spr`` subprocesses) must not find a real Hub.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    config.addinivalue_line("markers", "sqlite_only: SQLite-specific behaviour; skipped in the PostgreSQL half")
    config.addinivalue_line("markers", "postgres_only: needs PostgreSQL; skipped in the SQLite half")
    config.addinivalue_line(
        "markers", "backend_independent: never uses the catalogue backend (e.g. its own SQLite file); "
        "runs in the SQLite half only, to keep the PostgreSQL half short",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    backend = backend_name()
    if backend == "postgresql":
        why = PostgresServer.reachable()
        if why is not None:
            _PG_UNREACHABLE.append(why)
            skip_all = pytest.mark.skip(reason=f"PostgreSQL half skipped: no server at {_safe_dsn()} ({why})")
            for item in items:
                item.add_marker(skip_all)
            return
    skip_sqlite = pytest.mark.skip(reason="SQLite-specific; this is the PostgreSQL half")
    skip_pg = pytest.mark.skip(reason="needs PostgreSQL; run with SPR_TEST_DATABASE=postgresql")
    skip_same = pytest.mark.skip(reason="backend-independent; it ran in the SQLite half")
    for item in items:
        if backend == "postgresql" and item.get_closest_marker("sqlite_only"):
            item.add_marker(skip_sqlite)
        elif backend == "postgresql" and item.get_closest_marker("backend_independent"):
            item.add_marker(skip_same)
        elif backend != "postgresql" and item.get_closest_marker("postgres_only"):
            item.add_marker(skip_pg)


def pytest_report_header(config: pytest.Config) -> str:
    if backend_name() == "postgresql":
        return f"catalogue backend: postgresql ({_safe_dsn()})"
    return "catalogue backend: sqlite (set SPR_TEST_DATABASE=postgresql for the PostgreSQL half)"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _PG_UNREACHABLE:
        terminalreporter.write_sep(
            "!", f"PostgreSQL half SKIPPED: no server at {_safe_dsn()} ({_PG_UNREACHABLE[0]})", yellow=True
        )


def _safe_dsn() -> str:
    return postgres_admin_dsn().split("@")[-1]
