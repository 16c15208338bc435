"""The blob store: immutable bytes keyed by their sha256.

This package is the one seam between the catalogue (which records *which* bytes a version has)
and wherever the bytes live. :class:`BlobStore` is the interface every backend implements;
:func:`open_store` is the one place a store is constructed from settings. Callers take a store as
an argument (``store: BlobStore | None = None``) and ask :func:`open_store` only when none was
passed, so a command opens its store once and hands it down.

Backends: :class:`LocalBlobStore` (a directory, ``$SPR_BLOB_DIR`` or ``$SPR_HOME/blobs``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, Protocol, runtime_checkable

from registry.digest import ProgressCallback


@dataclass(frozen=True)
class BlobStat:
    """One stored object: a complete blob (``key`` is its sha256) or an incomplete write's leftover."""

    key: str
    size: int
    mtime: float


@runtime_checkable
class BlobStore(Protocol):
    """What the registry needs from a place that keeps blobs.

    Every method that stores bytes hashes them on the way and installs them under their sha256
    only when complete, so readers never see a partial blob. Every method that hands bytes out
    either verifies them (``export``, ``verify``, ``local_path``) or says it does not (``open_read``).
    """

    @property
    def location(self) -> str:
        """Where the blobs live, for messages (a directory, a bucket URL)."""
        ...

    def has(self, sha256: str) -> bool:
        """True when a complete blob with this digest is stored."""
        ...

    def stat(self, sha256: str) -> BlobStat | None:
        """Size and modification time of a stored blob, or ``None`` when it is missing."""
        ...

    def reuse(self, sha256: str) -> bool:
        """True when the blob is stored; it is then marked fresh so gc's grace period covers it."""
        ...

    def put_file(self, source: Path, progress: ProgressCallback | None = None) -> tuple[str, int]:
        """Store a file's bytes; returns ``(sha256, size)``."""
        ...

    def link_file(self, source: Path, progress: ProgressCallback | None = None) -> tuple[str, int]:
        """Store a file that another content-addressed cache holds and never rewrites.

        A store on the same filesystem may hard-link instead of copying; any other stores a copy.
        """
        ...

    def put_stream(
        self, src: IO[bytes], expected_sha256: str, *, where: str, progress: ProgressCallback | None = None
    ) -> int:
        """Store the bytes read from ``src``, which must hash to ``expected_sha256``; returns the size.

        Raises :class:`~registry.errors.IntegrityError` and stores nothing when they do not.
        """
        ...

    def put_bytes(self, data: bytes) -> str:
        """Store ``data``; returns its sha256."""
        ...

    def open_read(self, sha256: str) -> AbstractContextManager[BinaryIO]:
        """A binary stream of the stored bytes (not re-verified: hash them if you need to).

        Raises :class:`~registry.errors.NotFoundError` when the blob is missing.
        """
        ...

    def local_path(self, sha256: str) -> Path:
        """A local file holding exactly these bytes, for code that needs a path (PEFT, safetensors).

        A local store returns the blob itself; a remote one a verified copy in a local cache.
        The file must not be modified. Raises NotFoundError when the blob is missing.
        """
        ...

    def export(self, sha256: str, destination: Path, progress: ProgressCallback | None = None) -> None:
        """Copy a blob to ``destination`` atomically, verifying its sha256 on the way out."""
        ...

    def verify(self, sha256: str, progress: ProgressCallback | None = None) -> None:
        """Re-hash a blob; raise DigestMismatchError when its bytes changed, NotFoundError when missing."""
        ...

    def iter_blobs(self) -> Iterator[BlobStat]:
        """Every complete blob, in key order."""
        ...

    def iter_incomplete(self) -> Iterator[BlobStat]:
        """Leftovers of interrupted writes (never visible as blobs); gc removes the old ones.

        Keys name the leftover relative to :attr:`location` (``f"{location}/{key}"`` is where it is).
        """
        ...

    def iter_stray(self) -> Iterator[BlobStat]:
        """Objects where blobs live that are neither blobs nor leftovers of writes (not spr's).

        Keys are relative to :attr:`location`, as for :meth:`iter_incomplete`. Audit reports them;
        gc never removes them.
        """
        ...

    def remove(self, sha256: str) -> None:
        """Delete a blob (missing is fine)."""
        ...

    def remove_incomplete(self, key: str) -> None:
        """Delete a leftover named by :meth:`iter_incomplete` (missing is fine)."""
        ...

    def writing(self) -> AbstractContextManager[None]:
        """Held (shared) by a writer from its first stored blob to its catalogue commit."""
        ...

    def collecting(self) -> AbstractContextManager[None]:
        """Held exclusively by gc while it decides and deletes."""
        ...


def open_store(location: str | Path | None = None) -> BlobStore:
    """The blob store named by ``location``, else by the settings (``$SPR_BLOB_DIR``, ``$SPR_HOME/blobs``).

    This is the one place a store is constructed from settings.
    """
    from registry.storage.local import LocalBlobStore

    if location is None:
        return LocalBlobStore()
    return LocalBlobStore(Path(location))


from registry.storage.local import LocalBlobStore, atomic_write_bytes  # noqa: E402  (re-exported)

__all__ = ["BlobStat", "BlobStore", "LocalBlobStore", "atomic_write_bytes", "open_store"]
