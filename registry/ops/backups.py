"""Backup and restore of a SQLite catalogue and the blobs it references, as one plain tar file.

:func:`backup` copies the catalogue with SQLite's online backup API (one read snapshot, so
writers carry on) and streams every referenced blob into the tar through the
:class:`~registry.storage.BlobStore` protocol (``stat``, ``open_read``), verifying each on the way;
:func:`restore` checks every member and installs blobs with ``put_stream`` before the catalogue.
The SQL here reads the snapshot file (or the restored file) with ``sqlite3`` before it becomes a
catalogue: counts for the backup's index and SQLite's integrity check.
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
import tarfile
import tempfile
import time
import zlib
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from registry import db as dbmod
from registry import settings
from registry.digest import CHUNK, ProgressCallback, sha256_file
from registry.errors import IntegrityError, NotFoundError, UsageError
from registry.storage import BlobStore, open_store

BACKUP_FORMAT = "softprompt-registry/backup/v1"
BACKUP_INDEX = "spr-backup.json"
BACKUP_CATALOGUE = "catalogue.sqlite"
_BLOB_MEMBER = re.compile(r"blobs/sha256/([0-9a-f]{2})/([0-9a-f]{64})")


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


def backup(
    destination: Path | str,
    *,
    db: str | None = None,
    progress: ProgressCallback | None = None,
    store: BlobStore | None = None,
) -> BackupReport:
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
    if store is None:
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
    missing = IntegrityError(
        f"blob sha256:{sha} is referenced by the catalogue but missing from the store {store.location}",
        hint="run 'spr audit' and repair the store before taking a backup",
    )
    found = store.stat(sha)
    if found is None:
        raise missing
    if found.size != size:
        raise IntegrityError(
            f"blob sha256:{sha} is {found.size} bytes but the catalogue records {size}",
            hint="run 'spr audit' and repair the store before taking a backup",
        )
    with ExitStack() as stack:
        try:
            f = stack.enter_context(store.open_read(sha))
        except (OSError, NotFoundError):  # only opening errors mean "missing"
            raise missing from None
        reader = _HashingReader(f, progress)
        tar.addfile(_tarinfo(f"blobs/sha256/{sha[:2]}/{sha}", size), reader)
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


def restore(
    archive: Path | str,
    *,
    db: str | None = None,
    progress: ProgressCallback | None = None,
    store: BlobStore | None = None,
) -> BackupReport:
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
    if store is None:
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


__all__ = ["BACKUP_FORMAT", "BackupReport", "backup", "read_backup_index", "restore"]
