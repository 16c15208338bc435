"""Garbage collection: remove blobs no version references, and leftovers of interrupted writes.

Through the :class:`~registry.storage.BlobStore` protocol only: the store is listed with
``iter_blobs``/``iter_incomplete`` and cleaned with ``remove``/``remove_incomplete`` while gc holds
the store's ``collecting`` lock; the catalogue says which blobs are referenced.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from registry.catalogue import referenced_blobs
from registry.errors import UsageError
from registry.ops.defaults import DEFAULT_GRACE_SECONDS
from registry.storage import BlobStore, open_store


@dataclass(frozen=True)
class GcReport:
    """What :func:`gc` removed (or, in a dry run, would remove)."""

    dry_run: bool
    grace_seconds: float
    blobs: tuple[str, ...]
    temp_files: tuple[str, ...]
    bytes: int
    kept_recent: int


def gc(
    *,
    db: str | None = None,
    dry_run: bool = True,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    store: BlobStore | None = None,
) -> GcReport:
    """Remove blobs no version references, and temp files, older than ``grace_seconds``.

    Why it is safe next to a running publish or pull: each holds the store's lock (shared) from
    its first stored blob until its commit, and gc holds it exclusively while it lists the store,
    reads the catalogue and deletes, so a blob about to be referenced is never removed. The grace
    period (by mtime; a publish touches blobs it reuses) is a second guard for writers on other
    machines sharing the store over a filesystem that may not honour locks.
    """
    if grace_seconds < 0:
        raise UsageError(f"the grace period must be 0 or more seconds, found {grace_seconds}")
    if store is None:
        store = open_store()
    if dry_run:
        return _gc(store, db, dry_run, grace_seconds)
    with store.collecting():  # no publish is between storing its blobs and committing meanwhile
        return _gc(store, db, dry_run, grace_seconds)


def _gc(store: BlobStore, db: str | None, dry_run: bool, grace_seconds: float) -> GcReport:
    now = time.time()
    listed = list(store.iter_blobs())
    temps = list(store.iter_incomplete())
    referenced = referenced_blobs(db)

    removed: list[str] = []
    removed_temp: list[str] = []
    freed = 0
    kept = 0
    for blob in listed:
        if blob.key in referenced:
            continue
        if now - blob.mtime < grace_seconds:
            kept += 1
            continue
        if not dry_run:
            try:  # re-check the age: a publish may have touched it since the listing
                current = store.stat(blob.key)
                if current is None:
                    continue
                if time.time() - current.mtime < grace_seconds:
                    kept += 1
                    continue
                store.remove(blob.key)
            except OSError:
                continue
        removed.append(blob.key)
        freed += blob.size
    for leftover in temps:
        if now - leftover.mtime < grace_seconds:
            kept += 1
            continue
        if not dry_run:
            try:
                store.remove_incomplete(leftover.key)
            except OSError:
                continue
        removed_temp.append(f"{store.location}/{leftover.key}")
        freed += leftover.size
    return GcReport(
        dry_run=dry_run, grace_seconds=grace_seconds, blobs=tuple(removed), temp_files=tuple(removed_temp),
        bytes=freed, kept_recent=kept,
    )


__all__ = ["DEFAULT_GRACE_SECONDS", "GcReport", "gc"]
