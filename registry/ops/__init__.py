"""Keeping a catalogue honest: audit, garbage collection, backup and restore.

- :func:`audit` (``ops/auditing.py``) re-hashes every blob the catalogue references (streamed, in
  parallel threads), verifies the event chain, foreign keys, each version's manifest digest and its
  file list, and lists blobs nobody references, missing blobs and leftover temp files. Each finding
  is one :class:`Problem`. Errors mean the catalogue or the store is damaged; warnings (orphan
  blobs, temp files, stray files) are what a killed publish or pull leaves behind by design (blobs
  are written before the transaction that references them) and are harmless: ``spr gc`` removes them.
- :func:`gc` (``ops/collecting.py``) removes unreferenced blobs and temp files older than a grace
  period (dry run by default). The grace period protects a publish that has written its blobs but
  not yet committed.
- :func:`backup` (``ops/backups.py``) writes a consistent copy of a SQLite catalogue and every blob
  it references into one tar file while others keep writing; :func:`restore` brings it back into an
  empty location. PostgreSQL catalogues are backed up with ``pg_dump`` plus a copy of the blob
  directory (README).
- ``ops/defaults.py`` holds the defaults (``DEFAULT_GRACE_SECONDS``); it imports nothing, so the
  CLI reads it at start-up.

Every function reaches blobs through the :class:`~registry.storage.BlobStore` protocol only and
takes ``store: BlobStore | None = None`` (``open_store()`` when none is passed). The names below are
loaded on first use, so importing ``registry.ops`` (or ``registry.ops.defaults``) stays free of
SQLAlchemy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from registry.ops.defaults import DEFAULT_GRACE_SECONDS

if TYPE_CHECKING:
    from registry.ops.auditing import ERROR_KINDS, WARNING_KINDS, AuditReport, Problem, audit
    from registry.ops.backups import BackupReport, backup, read_backup_index, restore
    from registry.ops.collecting import GcReport, gc

_HOMES = {
    "ERROR_KINDS": "auditing",
    "WARNING_KINDS": "auditing",
    "AuditReport": "auditing",
    "Problem": "auditing",
    "audit": "auditing",
    "BackupReport": "backups",
    "backup": "backups",
    "read_backup_index": "backups",
    "restore": "backups",
    "GcReport": "collecting",
    "gc": "collecting",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'registry.ops' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"registry.ops.{home}"), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_GRACE_SECONDS",
    "ERROR_KINDS",
    "WARNING_KINDS",
    "AuditReport",
    "BackupReport",
    "GcReport",
    "Problem",
    "audit",
    "backup",
    "gc",
    "read_backup_index",
    "restore",
]
