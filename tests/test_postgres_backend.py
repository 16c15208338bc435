"""PostgreSQL-specific behaviour (the rest of the suite also runs on PostgreSQL in the PostgreSQL half).

Run with ``SPR_TEST_DATABASE=postgresql``; in the SQLite half these tests are skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from ops_support import write_small_adapter
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from registry import catalogue, db
from registry import ops as audit
from registry.cli.main import run
from registry.errors import DatabaseError, SchemaError

pytestmark = pytest.mark.postgres_only


def test_the_suite_really_runs_on_postgresql() -> None:
    engine = db.get_engine()
    assert engine.dialect.name == "postgresql"
    assert os.environ["SPR_DATABASE_URL"].startswith("postgresql+psycopg://")


def test_a_team_server_walkthrough(tmp_path: Path, fresh_database_url: Callable[..., str]) -> None:
    """What a team does: create the database, 'spr db upgrade' once, then everyone points at the URL."""
    url = fresh_database_url(empty=True)
    env = {**os.environ, "SPR_DATABASE_URL": url}
    spr = [sys.executable, "-m", "registry.cli.main"]

    refused = subprocess.run([*spr, "list"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == SchemaError.exit_code
    assert "spr db upgrade" in refused.stderr

    assert subprocess.run([*spr, "db", "upgrade"], env=env, capture_output=True, text=True, timeout=60, check=False).returncode == 0
    adapter = write_small_adapter(tmp_path / "a", 1)
    published = subprocess.run([*spr, "--json", "publish", str(adapter), "--name", "team/coach"],
                               env=env, capture_output=True, text=True, timeout=60, check=False)
    assert published.returncode == 0, published.stderr
    assert json.loads(published.stdout)["version"]["number"] == 1
    # A second member (another SPR_HOME, the same server) sees it at once.
    other = {**env, "SPR_HOME": str(tmp_path / "other-member")}
    shown = subprocess.run([*spr, "show", "team/coach@1", "--json"], env=other, capture_output=True, text=True, timeout=60, check=False)
    assert shown.returncode == 0 and json.loads(shown.stdout)["digest"] == json.loads(published.stdout)["version"]["digest"]


def test_the_database_refuses_edits_of_published_rows() -> None:
    catalogue.publish(write_small_adapter(Path(os.environ["SPR_HOME"]) / "a", 2), "team/coach")
    engine = db.get_engine()
    for statement, message in [
        ("UPDATE version SET digest = 'x'", "published versions are immutable"),
        ("DELETE FROM version", "published versions are immutable"),
        ("UPDATE file SET sha256 = 'x'", "published files are immutable"),
        ("DELETE FROM event", "the audit log is append-only"),
        ("UPDATE event SET actor = 'mallory'", "the audit log is append-only"),
    ]:
        with pytest.raises(sa_exc.DBAPIError, match=message), engine.begin() as conn:
            conn.execute(text(statement))
    catalogue.deprecate("team/coach@1", "superseded")  # status is the one mutable column
    assert catalogue.get_version("team/coach@1").status == "deprecated"
    assert audit.audit().problems == ()


def test_writers_queue_on_one_advisory_lock() -> None:
    """A write transaction holds the lock; another writer waits for it instead of racing."""
    catalogue.publish(write_small_adapter(Path(os.environ["SPR_HOME"]) / "a", 3), "team/coach")
    catalogue.publish(write_small_adapter(Path(os.environ["SPR_HOME"]) / "b", 4), "team/coach")
    holding = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with db.session_scope(write=True) as session:
            session.execute(text("SELECT 1"))
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(10)
    with db.get_engine().connect() as conn:
        locks = conn.execute(text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = :k AND granted"
        ), {"k": db.PG_WRITE_LOCK}).scalar_one()
    assert locks == 1
    catalogue.get_version("team/coach@1")  # readers are not blocked
    done: list[float] = []
    mover = threading.Thread(target=lambda: (catalogue.set_alias("team/coach@2", "prod"), done.append(time.monotonic())))
    mover.start()
    time.sleep(0.3)
    assert done == [], "a second writer ran while the first held the write lock"
    released_at = time.monotonic()
    release.set()
    holder.join(10)
    mover.join(10)
    assert done and done[0] >= released_at
    assert catalogue.get_version("team/coach@prod").number == 2


def test_unreachable_server_is_a_clear_error_without_the_password(capsys: pytest.CaptureFixture[str]) -> None:
    url = "postgresql+psycopg://spr:s3cret-pw@127.0.0.1:1/catalogue"
    with pytest.raises(DatabaseError) as info:
        catalogue.list_versions(db=url)
    assert "s3cret-pw" not in str(info.value)
    assert "SPR_DATABASE_URL" in str(info.value)
    capsys.readouterr()
    assert run(["--db", url, "list"]) == DatabaseError.exit_code
    err = capsys.readouterr().err
    assert err.startswith("error: the catalogue database failed") and "s3cret-pw" not in err
    assert "Traceback" not in err


def test_missing_database_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    base = os.environ["SPR_DATABASE_URL"].rsplit("/", 1)[0]
    capsys.readouterr()
    assert run(["--db", f"{base}/no_such_catalogue_db", "list"]) == DatabaseError.exit_code
    assert "no_such_catalogue_db" in capsys.readouterr().err


def test_timestamps_come_back_in_utc() -> None:
    result = catalogue.publish(write_small_adapter(Path(os.environ["SPR_HOME"]) / "a", 5), "team/coach")
    engine = db.get_engine()
    with engine.begin() as conn:  # every new session of this database now speaks New York time
        conn.execute(text(f'ALTER DATABASE "{engine.url.database}" SET timezone = \'America/New_York\''))
    db.dispose_all()
    assert result.version.created_at.utcoffset() is not None
    assert result.version.created_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert catalogue.get_version("team/coach@1").created_at == result.version.created_at
