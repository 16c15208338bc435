"""Audit: re-verify the catalogue and every stored byte.

The catalogue's rows are checked by ``registry.catalogue.integrity`` (one read snapshot) and the
event chain by ``verify_event_chain``; this module checks the blob store against what the
catalogue references, through the :class:`~registry.storage.BlobStore` protocol only: each
referenced blob is streamed (``open_read``) and re-hashed in parallel threads (``hashlib`` releases
the GIL), and the store is listed for blobs nobody references, leftovers of interrupted writes and
stray files.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from registry.catalogue import BlobRefs, check_catalogue, verify_event_chain
from registry.digest import CHUNK, PREFIX, ProgressCallback
from registry.errors import NotFoundError
from registry.storage import BlobStore, open_store

ERROR = "error"
WARNING = "warning"
_HEX64 = re.compile(r"[0-9a-f]{64}")

# Problem kinds. Errors: the catalogue or the store is damaged. Warnings: leftovers of interrupted
# writes (harmless; 'spr gc' removes them).
ERROR_KINDS = (
    "blob-missing",      # a file row names a blob that is not in the store
    "blob-corrupt",      # a blob's bytes no longer hash to its name
    "blob-size",         # a blob's size differs from the size recorded for it
    "event-chain",       # an event row was edited, deleted or reordered
    "foreign-key",       # a row points at a row that does not exist
    "manifest-digest",   # a version's stored manifest does not hash to the version's digest
    "manifest-files",    # a version's file rows differ from its manifest's file list
    "manifest-invalid",  # a version's stored manifest is not a JSON manifest
    "alias-adapter",     # an alias points at a version of another adapter
)
WARNING_KINDS = (
    "orphan-blob",  # a blob no file row references (a publish or pull killed before its commit)
    "temp-file",    # a partial write left by a killed process
    "stray-file",   # a file in the blob store that is not named like a blob
)


@dataclass(frozen=True)
class Problem:
    """One finding of an audit: ``severity`` is ``error`` or ``warning``; ``kind`` is from the lists above."""

    severity: str
    kind: str
    subject: str
    message: str

    def line(self) -> str:
        """The one-line form printed by ``spr audit``."""
        return f"{self.severity} {self.kind} {self.subject}: {self.message}"


@dataclass(frozen=True)
class AuditReport:
    """What :func:`audit` checked and found."""

    database: str
    blob_root: str
    versions: int
    files: int
    blobs: int
    bytes_hashed: int
    events: int
    seconds: float
    problems: tuple[Problem, ...]

    @property
    def errors(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity == ERROR)

    @property
    def warnings(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity == WARNING)

    @property
    def ok(self) -> bool:
        """True when nothing is damaged (warnings allowed)."""
        return not self.errors


def audit(
    *,
    db: str | None = None,
    rehash: bool = True,
    progress: ProgressCallback | None = None,
    workers: int | None = None,
    store: BlobStore | None = None,
) -> AuditReport:
    """Check the catalogue at ``db`` and the blob store; return every problem found.

    The catalogue is read in one snapshot first; the store is scanned afterwards, so a publish in
    flight shows up as orphan blobs (warnings) rather than as missing ones. ``rehash=False`` only
    checks that blobs exist and have the recorded size. Never raises for damage: damage is reported.
    """
    started = time.perf_counter()
    if store is None:
        store = open_store()
    checked = check_catalogue(db)
    problems = [Problem(ERROR, f.kind, f.subject, f.message) for f in checked.findings]
    for line in verify_event_chain(db=db):
        subject = line.split(":", 1)[0]
        problems.append(Problem(ERROR, "event-chain", subject, line.split(":", 1)[1].strip()))

    referenced = checked.referenced
    bytes_hashed = _check_blobs(store, referenced, problems, rehash=rehash, progress=progress, workers=workers)
    _scan_store(store, referenced, problems)

    return AuditReport(
        database=checked.database,
        blob_root=str(store.location),
        versions=checked.versions,
        files=checked.files,
        blobs=len(referenced),
        bytes_hashed=bytes_hashed,
        events=checked.events,
        seconds=time.perf_counter() - started,
        problems=tuple(problems),
    )


def _hash_stream(f: BinaryIO, progress: ProgressCallback | None) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    readinto = getattr(f, "readinto", None)  # files have it (no copy per chunk); any stream has read()
    while True:
        if readinto is not None:
            n = readinto(buf) or 0
            chunk = view[:n]
        else:
            chunk = memoryview(f.read(CHUNK))
            n = len(chunk)
        if not n:
            break
        h.update(chunk)
        size += n
        if progress is not None:
            progress(n)
    return h.hexdigest(), size


def _check_blobs(
    store: BlobStore,
    referenced: dict[str, BlobRefs],
    problems: list[Problem],
    *,
    rehash: bool,
    progress: ProgressCallback | None,
    workers: int | None,
) -> int:
    lock = threading.Lock()

    def counted(n: int) -> None:  # progress bars are not thread-safe
        if progress is not None:
            with lock:
                progress(n)

    def check(sha: str) -> tuple[str, Problem | None, int]:
        entry = referenced[sha]
        where = ", ".join(entry.refs[:3]) + (f" and {len(entry.refs) - 3} more" if len(entry.refs) > 3 else "")
        if not _HEX64.fullmatch(sha):  # never hand the store a key that is not a digest
            return sha, Problem(ERROR, "blob-corrupt", repr(sha[:80]), f"referenced by {where}; not a sha256"), 0
        missing = Problem(ERROR, "blob-missing", PREFIX + sha, f"referenced by {where} but not in the store")
        if not rehash:
            found = store.stat(sha)
            if found is None:
                return sha, missing, 0
            if found.size != entry.size:
                return sha, Problem(
                    ERROR, "blob-size", PREFIX + sha,
                    f"is {found.size} bytes but {where} records {entry.size}",
                ), 0
            return sha, None, 0
        try:
            with store.open_read(sha) as f:
                actual, size = _hash_stream(f, counted if progress is not None else None)
        except NotFoundError:
            return sha, missing, 0
        except OSError as exc:
            return sha, Problem(ERROR, "blob-missing", PREFIX + sha, f"referenced by {where}; unreadable: {exc.strerror}"), 0
        if actual != sha:
            return sha, Problem(
                ERROR, "blob-corrupt", PREFIX + sha,
                f"its bytes now hash to {PREFIX}{actual} (referenced by {where}); restore it from a backup",
            ), size
        if size != entry.size:
            return sha, Problem(ERROR, "blob-size", PREFIX + sha, f"is {size} bytes but {where} records {entry.size}"), size
        return sha, None, size

    n = workers or min(4, os.cpu_count() or 1)
    total = 0
    found: dict[str, Problem] = {}
    shas = sorted(referenced)
    if n <= 1 or len(shas) < 2:
        results: Iterator[tuple[str, Problem | None, int]] = map(check, shas)
        for sha, problem, size in results:
            total += size
            if problem:
                found[sha] = problem
    else:
        with ThreadPoolExecutor(max_workers=n, thread_name_prefix="spr-audit") as pool:
            for sha, problem, size in pool.map(check, shas):
                total += size
                if problem:
                    found[sha] = problem
    problems.extend(found[sha] for sha in sorted(found))
    return total


def _scan_store(store: BlobStore, referenced: dict[str, BlobRefs], problems: list[Problem]) -> None:
    for blob in store.iter_blobs():
        if blob.key not in referenced:
            problems.append(Problem(
                WARNING, "orphan-blob", PREFIX + blob.key,
                f"{blob.size} bytes referenced by no version (left by an interrupted publish or pull); 'spr gc' removes it",
            ))
    for stray in store.iter_stray():
        problems.append(Problem(
            WARNING, "stray-file", f"{store.location}/{stray.key}", "not named like a blob; not used by spr",
        ))
    for leftover in store.iter_incomplete():
        problems.append(Problem(
            WARNING, "temp-file", f"{store.location}/{leftover.key}",
            f"{leftover.size} bytes left by an interrupted write; 'spr gc' removes it",
        ))


__all__ = ["ERROR", "ERROR_KINDS", "WARNING", "WARNING_KINDS", "AuditReport", "Problem", "audit"]
