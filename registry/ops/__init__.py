"""Keeping a catalogue honest: audit, garbage collection, backup and restore.

- :func:`audit` re-hashes every blob the catalogue references (streamed, in parallel threads:
  ``hashlib`` releases the GIL), verifies the event chain, foreign keys, each version's manifest
  digest and its file list, and lists blobs nobody references, missing blobs and leftover temp
  files. Each finding is one :class:`Problem`. Errors mean the catalogue or the store is damaged;
  warnings (orphan blobs, temp files, stray files) are what a killed publish or pull leaves
  behind by design (blobs are written before the transaction that references them) and are
  harmless: ``spr gc`` removes them.
- :func:`gc` removes unreferenced blobs and temp files older than a grace period (dry run by
  default). The grace period protects a publish that has written its blobs but not yet committed.
- :func:`backup` writes a consistent copy of a SQLite catalogue and every blob it references into
  one tar file while others keep writing; :func:`restore` brings it back into an empty location.
  PostgreSQL catalogues are backed up with ``pg_dump`` plus a copy of the blob directory (README).
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import re
import sqlite3
import stat
import tarfile
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Engine, and_, func, select, text
from sqlalchemy.orm import Session

from registry import db as dbmod
from registry import settings
from registry.catalogue import verify_event_chain
from registry.digest import CHUNK, PREFIX, ProgressCallback, sha256_file
from registry.errors import IntegrityError, NotFoundError, UsageError
from registry.models import AdapterRow, AliasRow, Base, EventRow, FileRow, VersionRow
from registry.storage import BlobStore, open_store

ERROR = "error"
WARNING = "warning"
DEFAULT_GRACE_SECONDS = 3600.0
BACKUP_FORMAT = "softprompt-registry/backup/v1"
BACKUP_INDEX = "spr-backup.json"
BACKUP_CATALOGUE = "catalogue.sqlite"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_BLOB_MEMBER = re.compile(r"blobs/sha256/([0-9a-f]{2})/([0-9a-f]{64})")

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


@dataclass(frozen=True)
class GcReport:
    """What :func:`gc` removed (or, in a dry run, would remove)."""

    dry_run: bool
    grace_seconds: float
    blobs: tuple[str, ...]
    temp_files: tuple[str, ...]
    bytes: int
    kept_recent: int


@dataclass(frozen=True)
class BackupReport:
    """A backup written by :func:`backup` (or read back by :func:`restore`)."""

    path: str
    schema: str | None
    versions: int
    events: int
    blobs: int
    bytes: int
    created_at: str
    seconds: float
    restored_blobs: int = 0
    database: str | None = None


# ---------------------------------------------------------------------------------------------
# Audit


def audit(
    *,
    db: str | None = None,
    rehash: bool = True,
    progress: ProgressCallback | None = None,
    workers: int | None = None,
) -> AuditReport:
    """Check the catalogue at ``db`` and the blob store; return every problem found.

    The catalogue is read in one snapshot first; the store is scanned afterwards, so a publish in
    flight shows up as orphan blobs (warnings) rather than as missing ones. ``rehash=False`` only
    checks that blobs exist and have the recorded size. Never raises for damage: damage is reported.
    """
    started = time.perf_counter()
    engine = dbmod.get_engine(db)
    store = open_store()
    problems: list[Problem] = []

    with dbmod.session_scope(db) as session:
        _snapshot_isolation(session)
        referenced, nversions, nfiles = _check_versions(session, problems)
        _check_foreign_keys(session, engine, problems)
        _check_aliases(session, problems)
        nevents = session.scalar(select(func.count()).select_from(EventRow)) or 0
    for line in verify_event_chain(db=db):
        subject = line.split(":", 1)[0]
        problems.append(Problem(ERROR, "event-chain", subject, line.split(":", 1)[1].strip()))

    bytes_hashed = _check_blobs(store, referenced, problems, rehash=rehash, progress=progress, workers=workers)
    _scan_store(store, referenced, problems)

    return AuditReport(
        database=dbmod._redact(engine.url.render_as_string(hide_password=False)),
        blob_root=str(store.location),
        versions=nversions,
        files=nfiles,
        blobs=len(referenced),
        bytes_hashed=bytes_hashed,
        events=nevents,
        seconds=time.perf_counter() - started,
        problems=tuple(problems),
    )


@dataclass
class _BlobRef:
    size: int
    refs: list[str] = field(default_factory=list)


def _snapshot_isolation(session: Session) -> None:
    # PostgreSQL's default (read committed) gives each statement its own snapshot: a version
    # committed between two queries would look like a version without files. One snapshot for
    # the whole read. SQLite (WAL) already reads one snapshot per transaction.
    if session.get_bind().dialect.name == "postgresql":
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})


def _check_versions(session: Session, problems: list[Problem]) -> tuple[dict[str, _BlobRef], int, int]:
    files_by_version: dict[int, set[tuple[str, str, int]]] = {}
    nfiles = 0
    for version_id, path, sha, size in session.execute(
        select(FileRow.version_id, FileRow.path, FileRow.sha256, FileRow.size)
    ):
        files_by_version.setdefault(version_id, set()).add((path, sha, size))
        nfiles += 1

    referenced: dict[str, _BlobRef] = {}
    nversions = 0
    query = (
        select(VersionRow.id, VersionRow.number, VersionRow.digest, VersionRow.manifest, AdapterRow.namespace, AdapterRow.name)
        .join(AdapterRow, VersionRow.adapter_id == AdapterRow.id, isouter=True)
        .order_by(VersionRow.id)
        .execution_options(yield_per=500)
    )
    for vid, number, digest, manifest_text, namespace, name in session.execute(query):
        nversions += 1
        ref = f"{namespace}/{name}@{number}" if name is not None else f"version id {vid}"
        rows = files_by_version.pop(vid, set())
        for path, sha, size in sorted(rows):
            entry = referenced.setdefault(sha, _BlobRef(size))
            if entry.size != size:
                problems.append(Problem(
                    ERROR, "blob-size", PREFIX + sha,
                    f"{ref} file {path!r} records {size} bytes but another version records {entry.size} for the same blob",
                ))
            entry.refs.append(f"{ref}:{path}")
        _check_manifest(ref, digest, manifest_text, rows, problems)
    for vid, rows in files_by_version.items():  # file rows of versions that do not exist
        for path, sha, size in rows:
            referenced.setdefault(sha, _BlobRef(size)).refs.append(f"version id {vid}:{path}")
    return referenced, nversions, nfiles


def _check_manifest(
    ref: str, digest: str, manifest_text: str, rows: set[tuple[str, str, int]], problems: list[Problem]
) -> None:
    actual = PREFIX + hashlib.sha256(manifest_text.encode("utf-8")).hexdigest()
    if actual != digest:
        problems.append(Problem(
            ERROR, "manifest-digest", ref,
            f"the stored manifest hashes to {actual} but the version's digest is {digest} (the row was edited)",
        ))
    try:
        doc = json.loads(manifest_text)
        listed = {(f["path"], f["sha256"], f["size"]) for f in doc["files"]}
    except (ValueError, TypeError, KeyError, RecursionError):
        problems.append(Problem(ERROR, "manifest-invalid", ref, "the stored manifest is not a valid manifest document"))
        return
    if listed != rows:
        missing = sorted(p for p, _, _ in listed - rows)
        extra = sorted(p for p, _, _ in rows - listed)
        detail = []
        if missing:
            detail.append(f"no file row (or a different one) for {', '.join(missing)[:200]}")
        if extra:
            detail.append(f"file rows not in the manifest: {', '.join(extra)[:200]}")
        problems.append(Problem(
            ERROR, "manifest-files", ref, "the version's files differ from its manifest: " + "; ".join(detail)
        ))


def _check_foreign_keys(session: Session, engine: Engine, problems: list[Problem]) -> None:
    if engine.dialect.name == "sqlite":
        for table, rowid, parent, _fkid in session.execute(text("PRAGMA foreign_key_check")):
            problems.append(Problem(
                ERROR, "foreign-key", f"{table} row {rowid}", f"points at a row of {parent} that does not exist",
            ))
        return
    # Generic: for every foreign key the schema declares, rows whose target is gone.
    for table in Base.metadata.sorted_tables:
        for fk in table.foreign_keys:
            child_col = fk.parent
            parent_col = fk.column
            parent_table = parent_col.table.alias("p")
            query = (
                select(table.c.id, child_col)
                .select_from(table.outerjoin(parent_table, child_col == parent_table.c[parent_col.name]))
                .where(and_(child_col.is_not(None), parent_table.c[parent_col.name].is_(None)))
                .limit(100)
            )
            for row_id, value in session.execute(query):
                problems.append(Problem(
                    ERROR, "foreign-key", f"{table.name} row {row_id}",
                    f"{child_col.name}={value} points at a row of {parent_col.table.name} that does not exist",
                ))


def _check_aliases(session: Session, problems: list[Problem]) -> None:
    query = (
        select(AliasRow.id, AliasRow.alias, AliasRow.adapter_id, VersionRow.adapter_id, VersionRow.number)
        .join(VersionRow, AliasRow.version_id == VersionRow.id)
        .where(AliasRow.adapter_id != VersionRow.adapter_id)
    )
    for alias_id, alias, adapter_id, version_adapter, number in session.execute(query):
        problems.append(Problem(
            ERROR, "alias-adapter", f"alias {alias!r} (row {alias_id})",
            f"belongs to adapter id {adapter_id} but points at version {number} of adapter id {version_adapter}",
        ))


def _check_blobs(
    store: BlobStore,
    referenced: dict[str, _BlobRef],
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
        if not _HEX64.fullmatch(sha):  # never build a path from a value that is not a digest
            return sha, Problem(ERROR, "blob-corrupt", repr(sha[:80]), f"referenced by {where}; not a sha256"), 0
        path = store.path(sha)
        try:
            st = path.stat()
        except OSError:
            return sha, Problem(ERROR, "blob-missing", PREFIX + sha, f"referenced by {where} but not in the store"), 0
        if not stat.S_ISREG(st.st_mode):
            return sha, Problem(ERROR, "blob-missing", PREFIX + sha, f"referenced by {where}; {path} is not a file"), 0
        if not rehash:
            if st.st_size != entry.size:
                return sha, Problem(
                    ERROR, "blob-size", PREFIX + sha,
                    f"is {st.st_size} bytes but {where} records {entry.size}",
                ), 0
            return sha, None, 0
        try:
            actual, size = sha256_file(path, counted if progress is not None else None)
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


def _scan_store(store: BlobStore, referenced: dict[str, _BlobRef], problems: list[Problem]) -> None:
    for name, path in store.iter_blob_paths():
        if not _HEX64.fullmatch(name) or path.parent.name != name[:2]:
            problems.append(Problem(WARNING, "stray-file", str(path), "not named like a blob; not used by spr"))
        elif name not in referenced:
            size = _size(path)
            problems.append(Problem(
                WARNING, "orphan-blob", PREFIX + name,
                f"{size} bytes referenced by no version (left by an interrupted publish or pull); 'spr gc' removes it",
            ))
    for path in store.iter_temp_files():
        problems.append(Problem(
            WARNING, "temp-file", str(path), f"{_size(path)} bytes left by an interrupted write; 'spr gc' removes it",
        ))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# ---------------------------------------------------------------------------------------------
# Garbage collection


def gc(*, db: str | None = None, dry_run: bool = True, grace_seconds: float = DEFAULT_GRACE_SECONDS) -> GcReport:
    """Remove blobs no version references, and temp files, older than ``grace_seconds``.

    Why it is safe next to a running publish or pull: each holds the store's lock (shared) from
    its first stored blob until its commit, and gc holds it exclusively while it lists the store,
    reads the catalogue and deletes, so a blob about to be referenced is never removed. The grace
    period (by mtime; a publish touches blobs it reuses) is a second guard for writers on other
    machines sharing the store over a filesystem that may not honour locks.
    """
    if grace_seconds < 0:
        raise UsageError(f"the grace period must be 0 or more seconds, found {grace_seconds}")
    store = open_store()
    if dry_run:
        return _gc(store, db, dry_run, grace_seconds)
    with store.collecting():  # no publish is between storing its blobs and committing meanwhile
        return _gc(store, db, dry_run, grace_seconds)


def _gc(store: BlobStore, db: str | None, dry_run: bool, grace_seconds: float) -> GcReport:
    now = time.time()
    listed: list[tuple[str, Path]] = [
        (name, path) for name, path in store.iter_blob_paths() if _HEX64.fullmatch(name) and path.parent.name == name[:2]
    ]
    temps = list(store.iter_temp_files())
    with dbmod.session_scope(db) as session:
        referenced = set(session.scalars(select(FileRow.sha256).distinct()))

    removed: list[str] = []
    removed_temp: list[str] = []
    freed = 0
    kept = 0
    for name, path in listed:
        if name in referenced:
            continue
        try:
            st = path.stat()
        except OSError:
            continue
        if now - st.st_mtime < grace_seconds:
            kept += 1
            continue
        if not dry_run:
            try:  # re-check the age: a publish may have touched it since the listing
                if time.time() - path.stat().st_mtime < grace_seconds:
                    kept += 1
                    continue
                store.remove(name)
            except OSError:
                continue
        removed.append(name)
        freed += st.st_size
    for path in temps:
        try:
            st = path.stat()
        except OSError:
            continue
        if now - st.st_mtime < grace_seconds:
            kept += 1
            continue
        if not dry_run:
            try:
                path.unlink()
            except OSError:
                continue
        removed_temp.append(str(path))
        freed += st.st_size
    return GcReport(
        dry_run=dry_run, grace_seconds=grace_seconds, blobs=tuple(removed), temp_files=tuple(removed_temp),
        bytes=freed, kept_recent=kept,
    )


# ---------------------------------------------------------------------------------------------
# Backup and restore (SQLite)


def _sqlite_path(db: str | None, action: str) -> Path:
    from sqlalchemy.engine import make_url

    url = settings.database_url(db)
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        raise UsageError(
            f"'spr {action}' works on SQLite catalogues; {dbmod._redact(url)} is not one",
            hint="for PostgreSQL use pg_dump / pg_restore and copy the blob directory after the dump "
            "(see 'Backups' in the README)",
        )
    return Path(parsed.database)


def backup(destination: Path | str, *, db: str | None = None, progress: ProgressCallback | None = None) -> BackupReport:
    """Write a consistent backup of a SQLite catalogue and its blobs to ``destination`` (a tar file).

    The catalogue is copied with SQLite's online backup API in one step (one read snapshot, so
    writers carry on); then every blob the snapshot references is copied, verified on the way.
    Blobs are immutable and content-addressed, so copying them after the snapshot is consistent.
    The tar holds ``spr-backup.json``, ``catalogue.sqlite`` and ``blobs/sha256/ab/<sha256>``; it
    is written to a temp file and renamed into place. Raises :class:`UsageError` for a
    non-SQLite catalogue or an existing ``destination``, :class:`IntegrityError` when a
    referenced blob is missing or damaged (run ``spr audit``).
    """
    started = time.perf_counter()
    destination = Path(destination)
    source = _sqlite_path(db, "backup")
    if not source.is_file():
        raise NotFoundError(f"there is no catalogue at {source} to back up", hint="check --db / SPR_DATABASE_URL")
    if destination.exists():
        raise UsageError(f"backup destination {destination} already exists", hint="choose a new file name")
    destination.parent.mkdir(parents=True, exist_ok=True)
    store = open_store()
    snapshot_fd, snapshot_name = tempfile.mkstemp(prefix=".spr-backup-", suffix=".sqlite", dir=destination.parent)
    os.close(snapshot_fd)
    snapshot = Path(snapshot_name)
    tar_fd, tar_name = tempfile.mkstemp(prefix=".spr-backup-", suffix=".tar", dir=destination.parent)
    tar_tmp = Path(tar_name)
    try:
        _snapshot_sqlite(source, snapshot)
        con = sqlite3.connect(snapshot)
        try:
            schema = _scalar(con, "SELECT version_num FROM alembic_version")
            versions = int(_scalar(con, "SELECT count(*) FROM version") or 0)
            events = int(_scalar(con, "SELECT count(*) FROM event") or 0)
            blobs = sorted(con.execute("SELECT sha256, max(size) FROM file GROUP BY sha256").fetchall())
        except sqlite3.DatabaseError as exc:
            raise IntegrityError(f"the catalogue {source} cannot be read for a backup: {exc}",
                                 hint="run 'spr audit'") from None
        finally:
            con.close()
        catalogue_sha, _ = sha256_file(snapshot)
        created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        index = {
            "format": BACKUP_FORMAT, "created_at": created, "schema": schema, "versions": versions,
            "events": events, "blobs": len(blobs), "bytes": sum(size for _, size in blobs),
            "catalogue_sha256": catalogue_sha,
        }
        with os.fdopen(tar_fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            data = json.dumps(index, indent=2, sort_keys=True).encode("utf-8")
            tar.addfile(_tarinfo(BACKUP_INDEX, len(data)), io.BytesIO(data))
            with open(snapshot, "rb") as f:
                tar.addfile(_tarinfo(BACKUP_CATALOGUE, snapshot.stat().st_size), f)
            for sha, size in blobs:
                _add_blob(tar, store, sha, size, progress)
            tar.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tar_tmp, destination)
    except BaseException:
        tar_tmp.unlink(missing_ok=True)
        raise
    finally:
        snapshot.unlink(missing_ok=True)
    return BackupReport(
        path=str(destination), schema=schema, versions=versions, events=events, blobs=len(blobs),
        bytes=index["bytes"], created_at=created, seconds=time.perf_counter() - started,
    )


def _snapshot_sqlite(source: Path, target: Path) -> None:
    src = sqlite3.connect(source, timeout=dbmod.BUSY_TIMEOUT_MS / 1000)
    dst = sqlite3.connect(target)
    try:
        src.execute(f"PRAGMA busy_timeout = {dbmod.BUSY_TIMEOUT_MS}")
        # pages=-1: the whole database in one step, under one read snapshot (WAL readers do not
        # block writers); a multi-step copy would restart whenever someone writes.
        src.backup(dst, pages=-1)
        dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file, no -wal beside it
        dst.commit()
    except sqlite3.DatabaseError as exc:
        raise IntegrityError(f"could not snapshot the catalogue {source}: {exc}", hint="run 'spr audit'") from None
    finally:
        dst.close()
        src.close()


def _scalar(con: sqlite3.Connection, sql: str) -> Any:
    row = con.execute(sql).fetchone()
    return row[0] if row else None


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o444
    info.mtime = int(time.time())
    return info


class _HashingReader:
    """Wraps a file: hashes what is read, so a blob is verified while it is copied."""

    def __init__(self, f: IO[bytes], progress: ProgressCallback | None) -> None:
        self.f = f
        self.h = hashlib.sha256()
        self.n = 0
        self.progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.h.update(data)
        self.n += len(data)
        if self.progress is not None and data:
            self.progress(len(data))
        return data


def _add_blob(tar: tarfile.TarFile, store: BlobStore, sha: str, size: int, progress: ProgressCallback | None) -> None:
    path = store.path(sha)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the "with f" below; only open() errors mean "missing"
    except OSError:
        raise IntegrityError(
            f"blob sha256:{sha} is referenced by the catalogue but missing from the store {store.location}",
            hint="run 'spr audit' and repair the store before taking a backup",
        ) from None
    with f:
        actual_size = os.fstat(f.fileno()).st_size
        if actual_size != size:
            raise IntegrityError(
                f"blob sha256:{sha} is {actual_size} bytes but the catalogue records {size}",
                hint="run 'spr audit' and repair the store before taking a backup",
            )
        reader = _HashingReader(f, progress)
        tar.addfile(_tarinfo(f"blobs/sha256/{sha[:2]}/{sha}", size), reader)  # type: ignore[arg-type]
        if reader.h.hexdigest() != sha:
            raise IntegrityError(
                f"blob sha256:{sha} was changed on disk (it hashes to sha256:{reader.h.hexdigest()})",
                hint="run 'spr audit' and repair the store before taking a backup",
            )


def read_backup_index(archive: Path | str) -> dict[str, Any]:
    """The ``spr-backup.json`` of a backup file; raises :class:`IntegrityError` if it is not one."""
    with _open_archive(Path(archive)) as tar:
        return _index(tar, Path(archive))


# What reading a damaged archive can raise. Restore reads plain tars only, so the decompressors'
# errors (EOFError, zlib.error, lzma.LZMAError) should not occur; they are listed so that no
# damaged file, whatever it turns out to be, ends in a traceback.
_ARCHIVE_READ_ERRORS: tuple[type[BaseException], ...] = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError)
_COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}


def _damaged(archive: Path, exc: BaseException | str) -> IntegrityError:
    detail = exc if isinstance(exc, str) else f"{type(exc).__name__}: {str(exc)[:120]}"
    return IntegrityError(
        f"{archive}: the backup file is damaged or truncated ({detail})",
        hint="no catalogue was restored; use another copy of the backup",
    )


def _open_archive(archive: Path) -> tarfile.TarFile:
    """Open a backup for reading: a plain (uncompressed) tar, which is what :func:`backup` writes."""
    if not archive.is_file():
        raise NotFoundError(f"backup file {archive} does not exist")
    try:
        with open(archive, "rb") as f:
            head = f.read(8)
        kind = next((name for magic, name in _COMPRESSED_MAGIC.items() if head.startswith(magic)), None)
        if kind is not None:
            raise IntegrityError(
                f"{archive} is {kind}-compressed; spr backup files are plain tar files",
                hint=f"decompress it first (a damaged or truncated {kind} file cannot be restored), then retry",
            )
        return tarfile.open(archive, mode="r:")  # never "r:*": no decompressor runs on a backup
    except _ARCHIVE_READ_ERRORS as exc:
        raise _damaged(archive, exc) from None
    except OSError as exc:
        raise IntegrityError(f"{archive} is not a readable spr backup: {exc}") from None


def _index(tar: tarfile.TarFile, archive: Path) -> dict[str, Any]:
    try:
        member = tar.getmember(BACKUP_INDEX)
        f = tar.extractfile(member)
        if f is None or member.size > 1_000_000:
            raise KeyError(BACKUP_INDEX)
        index = json.loads(f.read())
    except _ARCHIVE_READ_ERRORS as exc:
        raise _damaged(archive, exc) from None
    except (KeyError, ValueError):
        raise IntegrityError(f"{archive} is not an spr backup (no valid {BACKUP_INDEX})",
                             hint="pass a file written by 'spr backup'") from None
    if not isinstance(index, dict) or index.get("format") != BACKUP_FORMAT:
        raise IntegrityError(f"{archive}: unknown backup format {str(index.get('format') if isinstance(index, dict) else None)[:60]!r}",
                             hint=f"this spr reads {BACKUP_FORMAT}")
    return index


def restore(archive: Path | str, *, db: str | None = None, progress: ProgressCallback | None = None) -> BackupReport:
    """Restore a backup written by :func:`backup` into the SQLite catalogue at ``db`` and the blob store.

    The catalogue file must not exist yet (restore never overwrites a catalogue). Every member of
    the archive is checked before it is used: only the index, the catalogue and blobs named by
    their sha256 are accepted, regular files only, and each blob must hash to its name. Blobs are
    installed first and the catalogue last, so an interrupted restore never leaves a catalogue
    that references missing blobs. The archive must be a plain tar, as :func:`backup` writes it
    (a compressed file is refused, never decompressed); a damaged or truncated archive, including
    one cut at a member boundary (fewer blobs than its index lists), is refused with
    :class:`IntegrityError` before any catalogue is written. Raises :class:`UsageError`,
    :class:`IntegrityError`.
    """
    started = time.perf_counter()
    archive = Path(archive)
    target = _sqlite_path(db, "restore")
    if target.exists() or Path(f"{target}-wal").exists():
        raise UsageError(
            f"a catalogue already exists at {target}; restore never overwrites one",
            hint="restore into a new location (--db sqlite:///NEW.sqlite or another SPR_HOME), "
            "or move the existing catalogue away first",
        )
    store = open_store()
    restored = 0
    present = 0
    seen: set[str] = set()
    try:
        with _open_archive(archive) as tar:
            index = _index(tar, archive)
            catalogue_member: tarfile.TarInfo | None = None
            for member in tar:
                if member.name == BACKUP_INDEX:
                    continue
                if not member.isreg():
                    raise IntegrityError(f"{archive}: member {member.name[:100]!r} is not a regular file; refusing the backup")
                if member.name == BACKUP_CATALOGUE:
                    catalogue_member = member
                    continue
                m = _BLOB_MEMBER.fullmatch(member.name)
                if m is None or m.group(1) != m.group(2)[:2]:
                    raise IntegrityError(f"{archive}: unexpected member {member.name[:100]!r}; refusing the backup",
                                         hint="pass a file written by 'spr backup'")
                sha = m.group(2)
                seen.add(sha)
                if store.has(sha):
                    present += 1
                    continue
                f = tar.extractfile(member)
                assert f is not None
                store.put_stream(f, sha, where=f"{archive} (a backup)", progress=progress)
                restored += 1
            if catalogue_member is None:
                raise IntegrityError(f"{archive} holds no {BACKUP_CATALOGUE}", hint="pass a file written by 'spr backup'")
            # A tar cut at a member boundary just ends early (tarfile reports nothing): count the blobs.
            expected_blobs = index.get("blobs")
            if not isinstance(expected_blobs, int) or isinstance(expected_blobs, bool):
                raise IntegrityError(f"{archive}: {BACKUP_INDEX} does not say how many blobs the backup holds",
                                     hint="pass a file written by 'spr backup'")
            if len(seen) < expected_blobs:
                raise _damaged(archive, f"it holds {len(seen)} of the {expected_blobs} blobs its index lists")
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=".spr-restore-", suffix=".sqlite", dir=target.parent)
            tmp = Path(tmp_name)
            try:
                h = hashlib.sha256()
                src = tar.extractfile(catalogue_member)
                assert src is not None
                with os.fdopen(fd, "wb") as out:
                    while chunk := src.read(CHUNK):
                        h.update(chunk)
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                if h.hexdigest() != index.get("catalogue_sha256"):
                    raise IntegrityError(f"{archive}: the catalogue's sha256 differs from the one the backup recorded",
                                         hint="the backup file is damaged; use another one")
                con = sqlite3.connect(tmp)
                try:
                    ok = _scalar(con, "PRAGMA integrity_check")
                    versions = int(_scalar(con, "SELECT count(*) FROM version") or 0)
                    events = int(_scalar(con, "SELECT count(*) FROM event") or 0)
                except sqlite3.DatabaseError as exc:
                    raise IntegrityError(f"{archive}: the catalogue in the backup is not readable: {exc}") from None
                finally:
                    con.close()
                if ok != "ok":
                    raise IntegrityError(f"{archive}: SQLite integrity check of the catalogue failed: {str(ok)[:200]}")
                if target.exists():
                    raise UsageError(f"a catalogue appeared at {target} during the restore; not overwriting it")
                os.replace(tmp, target)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
    except _ARCHIVE_READ_ERRORS as exc:
        raise _damaged(archive, exc) from None
    return BackupReport(
        path=str(archive), schema=index.get("schema"), versions=versions, events=events,
        blobs=restored + present, bytes=int(index.get("bytes") or 0), created_at=str(index.get("created_at")),
        seconds=time.perf_counter() - started, restored_blobs=restored, database=str(target),
    )


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
