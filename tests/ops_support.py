"""Support for the operations tests (backends, concurrency, crash safety, audit, backup).

- :func:`write_small_adapter`: a valid PROMPT_TUNING adapter written with numpy only (no torch),
  distinct per ``seed``; publishing it takes milliseconds, so tests can publish hundreds.
- :class:`PostgresServer`: creates and drops per-test databases on the local PostgreSQL server
  (``SPR_TEST_POSTGRES_URL``, default ``postgresql://postgres@127.0.0.1:5432/postgres``). Used by
  ``conftest.py`` for the PostgreSQL half of the suite (``SPR_TEST_DATABASE=postgresql``).
- :data:`WORKER`: the code of a writer process (publishes distinct adapters and moves an alias),
  shared by the concurrency, crash and backup tests.
"""

from __future__ import annotations

import json
import os
import queue
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "WORKER",
    "PostgresServer",
    "alias_history_problems",
    "backend_name",
    "home_env",
    "machine_env",
    "postgres_admin_dsn",
    "switch_home",
    "write_small_adapter",
]


ACTIVE_SERVER: PostgresServer | None = None  # set by conftest's postgres_server fixture


def home_env(home: Path | str) -> dict[str, str]:
    """Environment of "another machine": its own SPR_HOME and, in the PostgreSQL half, its own database.

    In the SQLite half the catalogue is the default file inside ``home``, so ``SPR_HOME`` is
    enough. In the PostgreSQL half every test's catalogue is ``SPR_DATABASE_URL``: a test that
    only changed ``SPR_HOME`` would keep the first catalogue. Use it for subprocesses:
    ``env={**os.environ, **home_env(tmp_path / "deploy")}``.
    """
    env = {"SPR_HOME": str(home)}
    if backend_name() == "postgresql":
        if ACTIVE_SERVER is None:
            raise RuntimeError("the postgres_server fixture is not active")
        _name, url = ACTIVE_SERVER.create(extra=True)
        env["SPR_DATABASE_URL"] = url
    return env


def machine_env() -> dict[str, str]:
    """The current "machine": ``SPR_HOME`` and, if set, ``SPR_DATABASE_URL`` (to switch back later)."""
    return {k: os.environ[k] for k in ("SPR_HOME", "SPR_DATABASE_URL") if k in os.environ}


def switch_home(monkeypatch: Any, home: Path | str | Mapping[str, str]) -> dict[str, str]:
    """Switch this test to another machine's empty catalogue and blob store (see :func:`home_env`).

    ``home`` may also be a mapping returned by :func:`machine_env`, to switch back to that machine.
    """
    if isinstance(home, Mapping):
        env = dict(home)
        if "SPR_DATABASE_URL" not in env:
            monkeypatch.delenv("SPR_DATABASE_URL", raising=False)
    else:
        env = home_env(home)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def write_small_adapter(directory: Path | str, seed: int, *, tokens: int = 4, dim: int = 64) -> Path:
    """Write a PEFT prompt-tuning adapter (config + safetensors) whose weights depend on ``seed``."""
    from safetensors.numpy import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "PROMPT_TUNING",
        "task_type": "CAUSAL_LM",
        "num_virtual_tokens": tokens,
        "token_dim": dim,
        "num_transformer_submodules": 1,
        "num_attention_heads": 4,
        "num_layers": 2,
        "base_model_name_or_path": "tiny-bloom",
        "prompt_tuning_init": "RANDOM",
        "peft_version": "0.21.2",
    }
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    weights = np.random.default_rng(seed).standard_normal((tokens, dim)).astype(np.float32)
    save_file({"prompt_embeddings": weights}, str(out / "adapter_model.safetensors"))
    return out


def backend_name() -> str:
    """``sqlite`` or ``postgresql``: which backend this pytest run gives every test (``SPR_TEST_DATABASE``)."""
    value = os.environ.get("SPR_TEST_DATABASE", "sqlite").strip().lower()
    if value in ("pg", "postgres", "postgresql"):
        return "postgresql"
    return "sqlite"


def postgres_admin_dsn() -> str:
    """libpq DSN of the maintenance database on the test server."""
    return os.environ.get("SPR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


class PostgresServer:
    """Per-test databases on one PostgreSQL server: cloned from a migrated template, dropped in the background.

    ``CREATE DATABASE … TEMPLATE`` of a migrated catalogue takes ~20 ms here; ``DROP DATABASE``
    ~70 ms, so drops run on a background thread while the next test runs.
    """

    def __init__(self, dsn: str | None = None) -> None:
        import psycopg

        self.dsn = dsn or postgres_admin_dsn()
        self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=3)
        self._lock = threading.Lock()
        self._counter = 0
        self.prefix = f"spr_t_{os.getpid()}_"
        self.template: str | None = None
        self._extra: list[str] = []
        self._drops: queue.Queue[str | None] = queue.Queue()
        self._dropper = threading.Thread(target=self._drop_loop, name="pg-dropper", daemon=True)
        self._dropper.start()
        self._drop_stale()

    @staticmethod
    def reachable(dsn: str | None = None) -> str | None:
        """None when the server answers; otherwise why not (one line)."""
        try:
            import psycopg
        except ImportError:
            return "psycopg is not installed (pip install 'softprompt-registry[postgres]')"
        try:
            with psycopg.connect(dsn or postgres_admin_dsn(), connect_timeout=3) as conn:
                conn.execute("SELECT 1")
        except Exception as exc:
            return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        return None

    def url(self, name: str) -> str:
        """SQLAlchemy URL of database ``name`` on this server."""
        from sqlalchemy.engine import make_url

        base = make_url(self.dsn.replace("postgresql://", "postgresql+psycopg://", 1))
        return base.set(database=name).render_as_string(hide_password=False)

    def _next_name(self) -> str:
        with self._lock:
            self._counter += 1
            return f"{self.prefix}{self._counter}"

    def make_template(self) -> str:
        """Create and migrate the template database (once per session)."""
        from registry import db

        name = f"spr_tpl_{os.getpid()}"
        with self._lock:
            self._conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            self._conn.execute(f'CREATE DATABASE "{name}"')
        engine = db.open_unchecked(self.url(name))
        db.upgrade(engine)
        db.dispose_all()
        self.template = name
        return name

    def create(self, *, empty: bool = False, extra: bool = False) -> tuple[str, str]:
        """A new database: a clone of the migrated template, or ``empty``. Returns ``(name, url)``.

        ``extra`` databases are dropped when the session ends (their creator has no teardown).
        """
        name = self._next_name()
        if extra:
            self._extra.append(name)
        with self._lock:
            if empty or self.template is None:
                self._conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
            else:
                self._conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        return name, self.url(name)

    def drop_later(self, name: str) -> None:
        """Drop ``name`` on the background thread (connections to it are terminated)."""
        self._drops.put(name)

    def _drop_loop(self) -> None:
        import psycopg

        conn = psycopg.connect(self.dsn, autocommit=True)
        try:
            while True:
                name = self._drops.get()
                if name is None:
                    return
                try:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                except psycopg.Error:
                    pass  # a leftover is dropped by the next session's _drop_stale
        finally:
            conn.close()

    def _drop_stale(self) -> None:
        """Drop databases left by earlier sessions whose process is gone (a killed pytest)."""
        rows = self._conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'spr\\_t\\_%' OR datname LIKE 'spr\\_tpl\\_%'"
        ).fetchall()
        for (name,) in rows:
            m = re.match(r"^spr_(?:t|tpl)_(\d+)", name)
            if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
                self._drops.put(name)

    def close(self) -> None:
        """Drop the template, wait for pending drops, close connections."""
        for name in self._extra:
            self._drops.put(name)
        if self.template is not None:
            self._drops.put(self.template)
        self._drops.put(None)
        self._dropper.join(timeout=120)
        self._conn.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def alias_history_problems(events: list[Any], alias: str) -> list[str]:
    """Check that every ``alias-set`` event's ``from`` is the previous event's ``to`` for ``alias``."""
    problems = []
    previous: int | None = None
    for ev in events:
        if ev.action not in ("alias-set", "alias-remove") or ev.details.get("alias") != alias:
            continue
        if ev.details.get("from") != previous:
            problems.append(
                f"event {ev.id}: {alias} moved from {ev.details.get('from')} but the previous move left it at {previous}"
            )
        previous = ev.details.get("to") if ev.action == "alias-set" else None
    return problems


# A writer process: python -c WORKER NAME FIRST_SEED COUNT WORKDIR [ALIAS]
# Publishes COUNT distinct adapters of NAME through the library and points ALIAS at each new
# version; waits for a line on stdin before starting so that all writers start together;
# prints one JSON line per action to stdout.
WORKER = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[5])
from ops_support import write_small_adapter
from registry import catalogue

name, first, count, workdir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
alias = sys.argv[6] if len(sys.argv) > 6 else None
dirs = [write_small_adapter(workdir / f"a{first + i}", first + i) for i in range(count)]
print("ready", flush=True)
sys.stdin.readline()
for d in dirs:
    result = catalogue.publish(d, name)
    out = {"published": result.version.number, "digest": result.version.digest, "created": result.created}
    if alias:
        catalogue.set_alias(f"{name}@{result.version.number}", alias)
        out["alias"] = alias
    print(json.dumps(out), flush=True)
"""
