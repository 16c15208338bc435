"""Engine, connection pragmas, one session scope, and schema upgrade/check from code.

- SQLite: WAL, ``busy_timeout`` and ``foreign_keys`` on every connection; write transactions start
  with ``BEGIN IMMEDIATE`` so two writers queue on the lock instead of deadlocking on an upgrade.
- Every public catalogue call runs in one :func:`session_scope` (one transaction). Writers race
  for version numbers and for the next event in the chain; the database refuses the loser and
  :func:`write_with_retry` runs the whole transaction again with bounded, jittered backoff.
- The default SQLite file upgrades itself on open; any other URL is refused while out of date,
  and a schema newer than the code is refused everywhere.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from registry import settings
from registry.errors import DatabaseError, RegistryError, SchemaError

T = TypeVar("T")

BUSY_TIMEOUT_MS = 30_000
MAX_ATTEMPTS = 60
_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()
_checked: set[str] = set()
_schema_lock = threading.Lock()


class RetryableConflict(Exception):
    """Raised inside a write to ask :func:`write_with_retry` for another attempt."""


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    try:
        engine = create_engine(url, pool_pre_ping=True)
    except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError, ImportError) as exc:
        raise DatabaseError(
            f"cannot use catalogue URL {_redact(url)}: {exc}",
            hint="use 'sqlite:///PATH' or 'postgresql+psycopg://USER@HOST/DB' "
            "(install 'softprompt-registry[postgres]' for PostgreSQL)",
        ) from None
    if engine.dialect.name == "postgresql":
        event.listen(engine, "begin", _postgresql_on_begin)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event emit BEGIN itself (the pysqlite driver's implicit BEGIN is deferred).
    dbapi_connection.isolation_level = None
    cur = dbapi_connection.cursor()
    cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    _set_wal(cur)
    cur.execute("PRAGMA foreign_keys = ON")
    cur.execute("PRAGMA synchronous = NORMAL")
    cur.close()


def _set_wal(cur: Any) -> None:
    # Switching a new file to WAL takes an exclusive lock and SQLite answers SQLITE_BUSY at once,
    # without calling the busy handler: processes opening a fresh catalogue together would see
    # "database is locked". Retry with backoff for as long as the busy timeout (WAL is persistent,
    # so only the first opens of a new file can race here).
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            cur.execute("PRAGMA journal_mode = WAL")
            return
        except Exception as exc:  # sqlite3.OperationalError; the driver module is not imported here
            if not _is_lock_error(exc) or time.monotonic() > deadline:
                raise
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 0.1)


def _sqlite_on_begin(conn: Any) -> None:
    if conn.get_execution_options().get("spr_write"):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")


# Arbitrary, fixed: every spr writer of one PostgreSQL database takes this transaction-level lock.
PG_WRITE_LOCK = 0x535052  # "SPR"


def _postgresql_on_begin(conn: Any) -> None:
    # Every write transaction appends to the one event chain, so writers are serial anyway. Under
    # READ COMMITTED, two writers that read the same row (an alias, the next version number) and
    # then write would each act on what they read before the other committed: the alias history
    # would log a move "from" a version the alias had already left. Queuing write transactions on
    # one advisory lock before their first read gives PostgreSQL what BEGIN IMMEDIATE gives SQLite;
    # the unique constraints stay as the backstop for writers that bypass spr.
    if conn.get_execution_options().get("spr_write"):
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{BUSY_TIMEOUT_MS}ms'")
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_WRITE_LOCK})")


def _redact(url: str) -> str:
    """Hide a password in a URL before it reaches a message."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def get_engine(url: str | None = None) -> Engine:
    """The engine for ``url`` (default: the configured catalogue), schema-checked once per process."""
    url = settings.database_url(url)
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = _make_engine(url)
    if url not in _checked:
        # Alembic's command API keeps global state: threads must not run it at the same time.
        with _schema_lock:
            if url not in _checked:
                ensure_schema(engine, auto_upgrade=settings.is_default_database(url))
                _checked.add(url)
    return engine


def dispose_all() -> None:
    """Close every pooled connection (tests, and after a fork)."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _checked.clear()


def current_revision(engine: Engine) -> str | None:
    """The schema revision stored in the database, or None for an empty database."""
    try:
        with engine.connect() as conn:
            row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
            conn.rollback()
    except sa_exc.OperationalError as exc:
        if "no such table" in str(exc).lower():
            return None
        raise _translate(exc) from None
    except sa_exc.ProgrammingError as exc:  # PostgreSQL: undefined table
        if "does not exist" in str(exc).lower():
            return None
        raise _translate(exc) from None
    except sa_exc.DBAPIError as exc:
        raise _translate(exc) from None
    return row[0] if row else None


def ensure_schema(engine: Engine, *, auto_upgrade: bool) -> None:
    """Refuse a catalogue whose schema differs from the code's, or upgrade it when ``auto_upgrade``."""
    from registry.migrations import HEAD

    found = current_revision(engine)
    if found == HEAD:
        return
    url = _redact(engine.url.render_as_string(hide_password=False))
    if found is not None and found not in known_revisions():
        raise SchemaError(
            f"catalogue {url} has schema revision {found!r}, newer than this spr (which knows up to {HEAD!r})",
            hint="upgrade softprompt-registry (pip install -U softprompt-registry)",
            found=found,
            expected=HEAD,
        )
    if auto_upgrade:
        upgrade(engine)
        return
    raise SchemaError(
        f"catalogue {url} is at schema revision {found or 'none (empty)'}, expected {HEAD!r}",
        hint=f"run 'spr db upgrade --db {url}'",
        found=found,
        expected=HEAD,
    )


def _script_location() -> Path:
    import registry.migrations

    return Path(registry.migrations.__file__).parent


def alembic_config(engine: Engine) -> Any:
    """An Alembic ``Config`` for ``engine`` with the installed migrations (for tests and ``spr db``)."""
    import sys

    from alembic.config import Config

    # Alembic's default stdout is the sys.stdout of when alembic.config was first imported (a
    # default argument): name today's, or a replaced-and-closed stream breaks every later command.
    cfg = Config(stdout=sys.stdout)
    cfg.set_main_option("script_location", str(_script_location()))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


def known_revisions() -> set[str]:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config(stdout=sys.stdout)
    cfg.set_main_option("script_location", str(_script_location()))
    return {s.revision for s in ScriptDirectory.from_config(cfg).walk_revisions()}


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Run Alembic migrations up to ``revision`` on ``engine``; returns the new revision."""
    from alembic import command

    cfg = alembic_config(engine)
    # One transaction around every step, begun before Alembic sees the connection: for SQLite
    # (no transactional DDL) Alembic otherwise commits after each migration, and a second process
    # upgrading the same new file slips in between and runs a step this one has planned too.
    with engine.connect().execution_options(spr_write=True) as conn, conn.begin():
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    return current_revision(engine)


def downgrade(engine: Engine, revision: str) -> str | None:
    """Run Alembic migrations down to ``revision``."""
    from alembic import command

    cfg = alembic_config(engine)
    with engine.connect().execution_options(spr_write=True) as conn, conn.begin():
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)
    return current_revision(engine)


def open_unchecked(url: str | None = None) -> Engine:
    """An engine without the schema check (for ``spr db upgrade|current``)."""
    url = settings.database_url(url)
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = _make_engine(url)
    return engine


@contextmanager
def session_scope(url: str | None = None, *, write: bool = False) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any error, translate database errors."""
    engine = get_engine(url)
    bind = engine.execution_options(spr_write=True) if write else engine
    session = Session(bind=bind, expire_on_commit=False, autoflush=True)
    try:
        yield session
        session.commit()
    except RegistryError:
        session.rollback()
        raise
    except (sa_exc.IntegrityError, RetryableConflict):
        session.rollback()
        raise
    except sa_exc.OperationalError as exc:
        session.rollback()
        if _is_lock_error(exc):
            raise
        raise _translate(exc, engine.url) from None
    except sa_exc.DBAPIError as exc:
        session.rollback()
        if _is_serialization_error(exc):
            raise
        raise _translate(exc, engine.url) from None
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def write_with_retry(url: str | None, work: Callable[[Session], T], *, what: str) -> T:
    """Run ``work`` in a write transaction, retrying races (unique conflicts, locks) with backoff.

    ``work`` must be safe to run again from the start: it sees a fresh transaction each attempt.
    """
    delay = 0.005
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            with session_scope(url, write=True) as session:
                return work(session)
        except (sa_exc.IntegrityError, RetryableConflict, sa_exc.OperationalError, sa_exc.DBAPIError) as exc:
            if isinstance(exc, sa_exc.OperationalError) and not _is_lock_error(exc):
                raise _translate(exc, settings.database_url(url)) from None
            if isinstance(exc, sa_exc.DBAPIError) and not isinstance(
                exc, (sa_exc.IntegrityError, sa_exc.OperationalError)
            ) and not _is_serialization_error(exc):
                raise _translate(exc, settings.database_url(url)) from None
            if attempt == MAX_ATTEMPTS:
                raise DatabaseError(
                    f"{what} lost {MAX_ATTEMPTS} races with concurrent writers in a row ({type(exc).__name__})",
                    hint="retry the command; if it keeps failing, check what else writes to the catalogue",
                ) from None
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.25)
    raise AssertionError("unreachable")


def _is_lock_error(exc: BaseException) -> bool:
    text_ = str(exc).lower()
    return "database is locked" in text_ or "database table is locked" in text_ or "busy" in text_


def _is_serialization_error(exc: BaseException) -> bool:
    code = getattr(getattr(exc, "orig", None), "sqlstate", None)
    return code in ("40001", "40P01")


LOW_SPACE_BYTES = 1 << 20  # an I/O error with less than this free where the database lives: a full disk


def _translate(exc: BaseException, url: Any = None) -> DatabaseError:
    """A :class:`DatabaseError` saying what failed; ``url`` (the catalogue's) lets a full disk be named."""
    orig = getattr(exc, "orig", exc)
    detail = f"{type(orig).__name__}: {str(orig).splitlines()[0][:300]}" if str(orig) else type(orig).__name__
    full = _disk_full(orig, url)
    if full is not None:
        return DatabaseError(
            f"the catalogue could not be written: {full} ({detail})",
            hint="free some space on that disk ('spr gc' removes unreferenced blobs), then retry",
        )
    if isinstance(exc, sa_exc.DataError):
        return DatabaseError(
            f"the catalogue refused a value: {detail}",
            hint="this is a bug in spr or a schema older than the code; run 'spr db current' and report it",
        )
    return DatabaseError(
        f"the catalogue database failed: {detail}",
        hint="check that the database is reachable and that --db / SPR_DATABASE_URL is right",
    )


def _disk_full(orig: BaseException, url: Any) -> str | None:
    """Why a database error is a full disk, or None: SQLite's SQLITE_FULL, PostgreSQL's disk_full, or
    SQLite's generic "disk I/O error" (what a write into its WAL on a full disk reports) while the
    database's folder has under :data:`LOW_SPACE_BYTES` free."""
    name = str(getattr(orig, "sqlite_errorname", "") or "")
    text_ = str(orig).lower()
    if getattr(orig, "sqlstate", None) == "53100":
        return "the PostgreSQL server's disk is full"
    path = _sqlite_path(url)
    where = f"the disk holding {path}" if path else "the disk holding the catalogue"
    if name.startswith("SQLITE_FULL") or "database or disk is full" in text_:
        return f"{where} is full"
    if (name.startswith("SQLITE_IOERR") or "disk i/o error" in text_) and path is not None:
        import shutil

        try:
            free = shutil.disk_usage(path.parent).free
        except OSError:
            return None
        if free < LOW_SPACE_BYTES:
            return f"{where} is full ({free} bytes free)"
    return None


def _sqlite_path(url: Any) -> Path | None:
    if url is None:
        return None
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(str(url)) if isinstance(url, str) else url
    except Exception:
        return None
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).expanduser().resolve()


def upgrade_url(url: str | None = None) -> str | None:
    """``spr db upgrade``: migrate the catalogue at ``url`` to the newest schema."""
    engine = open_unchecked(url)
    found = current_revision(engine)
    if found is not None and found not in known_revisions():
        ensure_schema(engine, auto_upgrade=False)  # raises: newer than the code
    revision = upgrade(engine)
    _checked.add(settings.database_url(url))
    return revision


def revision_status(url: str | None = None) -> tuple[str | None, str]:
    """``spr db current``: (revision in the database, newest revision this code knows)."""
    from registry.migrations import HEAD

    return current_revision(open_unchecked(url)), HEAD
