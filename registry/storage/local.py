"""The local blob store: a directory, ``$SPR_HOME/blobs/sha256/ab/abcdef…``.

Bytes are streamed into a temporary file in the same folder while hashed, fsynced, and renamed
into place only when complete, so a crash never leaves a partial blob under a real name.
Leftover ``.tmp-*`` files from a killed process are invisible to readers and removed by ``spr gc``.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import secrets
import stat as stat_module
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, BinaryIO, cast

from registry import settings
from registry.digest import CHUNK, ProgressCallback, sha256_file

try:
    import fcntl
except ImportError:  # Windows: no flock; gc then relies on its grace period alone
    fcntl = None  # type: ignore[assignment]
from registry.errors import DigestMismatchError, IntegrityError, NotFoundError
from registry.storage import BlobStat  # defined before registry.storage imports this module

TMP_PREFIX = ".tmp-"
_HEX64 = re.compile(r"[0-9a-f]{64}")
LOCK_NAME = ".gc.lock"


class LocalBlobStore:
    """A folder of immutable blobs named by their sha256 (implements :class:`registry.storage.BlobStore`)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else settings.blobs_dir()

    @property
    def location(self) -> str:
        return str(self.root)

    def path(self, sha256: str) -> Path:
        """Where the blob lives or would live (local stores only)."""
        return self.root / "sha256" / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def stat(self, sha256: str) -> BlobStat | None:
        try:
            st = self.path(sha256).stat()
        except OSError:
            return None
        if not stat_module.S_ISREG(st.st_mode):  # a directory under a blob's name is no blob
            return None
        return BlobStat(sha256, st.st_size, st.st_mtime)

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Held (shared) by a publish or pull from its first blob until its commit.

        ``spr gc`` takes the same lock exclusively while it decides and deletes, so it can never
        remove a blob that a running publish has stored (or found already stored) and is about to
        reference. Many writers hold it at once. The operating system releases it if the process dies.
        """
        with self._flock(exclusive=False):
            yield

    @contextmanager
    def collecting(self) -> Iterator[None]:
        """Held exclusively by ``spr gc``: no publish is between storing blobs and committing."""
        with self._flock(exclusive=True):
            yield

    @contextmanager
    def _flock(self, *, exclusive: bool) -> Iterator[None]:
        if fcntl is None:
            yield
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def reuse(self, sha256: str) -> bool:
        """True when the blob is already stored; it is then marked fresh so gc's grace period covers it."""
        path = self.path(sha256)
        if not path.is_file():
            return False
        _touch(path)
        return True

    def put_file(self, source: Path, progress: ProgressCallback | None = None) -> tuple[str, int]:
        """Copy ``source`` into the store, hashing on the way. Returns ``(sha256, size)``.

        One read of the source: the bytes are hashed while written to a temp file, which is then
        renamed to its digest. If the blob already exists the temp file is dropped.
        """
        with open(source, "rb", buffering=0) as src:
            tmp, digest, size = _hashing_copy(src, self._tmp_dir(), progress)
        self._install_or_drop(tmp, digest)
        return digest, size

    def put_stream(
        self, src: IO[bytes], expected_sha256: str, *, where: str, progress: ProgressCallback | None = None
    ) -> int:
        """Store the bytes read from ``src``, which must hash to ``expected_sha256``; returns the size.

        Raises :class:`IntegrityError` (and stores nothing) when they hash to something else.
        """
        tmp, digest, size = _hashing_copy(src, self._tmp_dir(), progress)
        if digest != expected_sha256:
            tmp.unlink(missing_ok=True)
            raise IntegrityError(
                f"{where}: blob sha256:{expected_sha256} hashes to sha256:{digest}",
                hint="the source is damaged; use another copy",
                expected=expected_sha256,
                found=digest,
            )
        self._install_or_drop(tmp, digest)
        return size

    def _tmp_dir(self) -> Path:
        directory = self.root / "sha256"
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def _install_or_drop(self, tmp: Path, digest: str) -> None:
        try:
            self._install(tmp, digest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def link_file(self, source: Path, progress: ProgressCallback | None = None) -> tuple[str, int]:
        """Store ``source`` by hard link (no copy) when it is on the store's filesystem.

        For files that another content-addressed store already holds and never rewrites in place
        (the Hub client's cache): the linked inode itself is hashed, so what is stored under a
        digest is exactly what hashes to it. Falls back to :meth:`put_file` across filesystems.
        """
        shard_tmp = self.root / "sha256"
        shard_tmp.mkdir(parents=True, exist_ok=True)
        tmp = shard_tmp / f"{TMP_PREFIX}{secrets.token_hex(8)}"
        try:
            os.link(source, tmp)
        except OSError:
            return self.put_file(source, progress)
        try:
            digest, size = sha256_file(tmp, progress)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._install(tmp, digest)
            return digest, size
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def put_bytes(self, data: bytes) -> str:
        """Store ``data``; returns its sha256."""
        digest = hashlib.sha256(data).hexdigest()
        if self.reuse(digest):
            return digest
        shard_tmp = self.root / "sha256"
        shard_tmp.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=shard_tmp)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as dst:
                dst.write(data)
                dst.flush()
                os.fsync(dst.fileno())
            self._install(tmp, digest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return digest

    def _install(self, tmp: Path, digest: str) -> None:
        final = self.path(digest)
        if final.is_file():
            tmp.unlink(missing_ok=True)
            _touch(final)
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o444)
        os.replace(tmp, final)
        _fsync_dir(final.parent)

    @contextmanager
    def open_read(self, sha256: str) -> Iterator[BinaryIO]:
        with open(self.local_path(sha256), "rb") as fh:
            yield fh

    def local_path(self, sha256: str) -> Path:
        """The path of an existing blob; raise :class:`NotFoundError` if it is missing."""
        p = self.path(sha256)
        if not p.is_file():
            raise NotFoundError(
                f"blob sha256:{sha256} is missing from the blob store {self.root}",
                hint="run 'spr audit' to list every missing blob; restore from a backup or re-publish",
                sha256=sha256,
            )
        return p

    def verify(self, sha256: str, progress: ProgressCallback | None = None) -> None:
        """Re-hash a blob; raise :class:`DigestMismatchError` when its bytes changed."""
        actual, _ = sha256_file(self.local_path(sha256), progress)
        if actual != sha256:
            raise DigestMismatchError(
                f"blob sha256:{sha256} was changed on disk (its bytes now hash to sha256:{actual})",
                hint="run 'spr audit'; restore the blob from a backup or re-publish the adapter",
                expected=sha256,
                found=actual,
            )

    def export(self, sha256: str, destination: Path, progress: ProgressCallback | None = None) -> None:
        """Copy a blob to ``destination`` atomically, verifying its sha256 on the way out."""
        source = self.local_path(sha256)
        destination.parent.mkdir(parents=True, exist_ok=True)
        with open(source, "rb", buffering=0) as src:
            tmp, digest, _ = _hashing_copy(src, destination.parent, progress)
        try:
            if digest != sha256:
                raise DigestMismatchError(
                    f"blob sha256:{sha256} was changed on disk (its bytes now hash to sha256:{digest}); "
                    f"refusing to export it to {destination}",
                    hint="run 'spr audit'; restore the blob from a backup or re-publish the adapter",
                    expected=sha256,
                    found=digest,
                )
            # mkstemp creates 0600; exported adapters are ordinary files, as PEFT writes them.
            os.chmod(tmp, 0o644)
            os.replace(tmp, destination)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def iter_blob_paths(self) -> Iterator[tuple[str, Path]]:
        """Every complete blob as ``(file name, path)``; temp files are skipped (local stores only)."""
        base = self.root / "sha256"
        if not base.is_dir():
            return
        for shard in sorted(base.iterdir()):
            if not shard.is_dir():
                continue
            for blob in sorted(shard.iterdir()):
                if not blob.name.startswith(TMP_PREFIX):
                    yield blob.name, blob

    def iter_blobs(self) -> Iterator[BlobStat]:
        """Every complete blob: a regular file named by a sha256 in its two-letter shard."""
        for name, path, st in self._iter_named():
            if _is_blob(name, path, st):
                yield BlobStat(name, st.st_size, st.st_mtime)

    def iter_stray(self) -> Iterator[BlobStat]:
        """Files in the shards that are neither blobs nor temp files (keys relative to the root)."""
        for name, path, st in self._iter_named():
            if not _is_blob(name, path, st):
                yield BlobStat(path.relative_to(self.root).as_posix(), st.st_size, st.st_mtime)

    def _iter_named(self) -> Iterator[tuple[str, Path, os.stat_result]]:
        for name, path in self.iter_blob_paths():
            try:
                st = path.stat()
            except OSError:
                continue
            yield name, path, st

    def iter_temp_files(self) -> Iterator[Path]:
        """Leftovers of interrupted writes (local stores only)."""
        base = self.root / "sha256"
        if not base.is_dir():
            return
        yield from base.rglob(f"{TMP_PREFIX}*")

    def iter_incomplete(self) -> Iterator[BlobStat]:
        """Leftovers of interrupted writes; keys are paths relative to the root (``sha256/.tmp-…``)."""
        for p in self.iter_temp_files():
            try:
                st = p.stat()
            except OSError:
                continue
            yield BlobStat(p.relative_to(self.root).as_posix(), st.st_size, st.st_mtime)

    def remove_incomplete(self, key: str) -> None:
        """Delete a leftover named by :meth:`iter_incomplete`; a key naming anything else is ignored."""
        base = (self.root / "sha256").resolve()
        target = (self.root / key).resolve()
        if base not in target.parents or not target.name.startswith(TMP_PREFIX):
            return  # not a leftover of ours: never delete outside the store
        target.unlink(missing_ok=True)

    def remove(self, sha256: str) -> None:
        p = self.path(sha256)
        if p.exists():
            os.chmod(p, 0o644)
            p.unlink()


def _is_blob(name: str, path: Path, st: os.stat_result) -> bool:
    return bool(_HEX64.fullmatch(name)) and path.parent.name == name[:2] and stat_module.S_ISREG(st.st_mode)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all: a temp file in the same folder, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _hashing_copy(src: IO[bytes], directory: Path, progress: ProgressCallback | None) -> tuple[Path, str, int]:
    """Stream ``src`` into a new fsynced temp file in ``directory``, hashing on the way.

    Returns ``(temp path, sha256, size)``; the caller renames or removes the temp file.
    """
    # Every stream handed in (files, tar members, HTTP bodies) is an io object with readinto().
    reader = cast(io.BufferedIOBase, src)
    fd, name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=directory)
    tmp = Path(name)
    try:
        h = hashlib.sha256()
        size = 0
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        with os.fdopen(fd, "wb", buffering=0) as dst:
            while n := reader.readinto(buf):
                h.update(view[:n])
                dst.write(view[:n])
                size += n
                if progress is not None:
                    progress(n)
            os.fsync(dst.fileno())
        return tmp, h.hexdigest(), size
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _touch(path: Path) -> None:
    # A blob that is about to be referenced again must look new to 'spr gc', whose grace period
    # (by mtime) protects blobs written by a publish that has not committed yet.
    try:
        os.utime(path)
    except OSError:
        pass


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
