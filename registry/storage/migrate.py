"""Operator tasks on a blob store: copy one store into another (local folder -> bucket), verify all blobs.

Both work through the :class:`~registry.storage.BlobStore` protocol, so any pair of backends works.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from registry.digest import ProgressCallback
from registry.errors import IntegrityError, NotFoundError
from registry.storage import BlobStore


@dataclass(frozen=True)
class CopyReport:
    """What :func:`copy_blobs` did: blobs copied, blobs the target already had, and damaged sources."""

    source: str
    target: str
    copied: int
    skipped: int
    bytes_copied: int
    damaged: tuple[str, ...]
    seconds: float


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify_blobs` found: blobs checked, and those missing or damaged (``sha: reason``)."""

    location: str
    checked: int
    bytes: int
    problems: tuple[str, ...]
    seconds: float


def copy_blobs(source: BlobStore, target: BlobStore, progress: ProgressCallback | None = None) -> CopyReport:
    """Copy every blob of ``source`` that ``target`` lacks; each copy is re-hashed on its way in.

    Resumable: a blob the target already holds (same size) is skipped, so running it again after
    an interruption copies only the rest. A source blob whose bytes do not hash to its name is not
    copied and is listed in ``damaged`` (run ``spr audit`` on the source). Errors of the target
    (access denied, network) stop the copy with one line naming the fix.
    """
    started = time.perf_counter()
    copied = skipped = nbytes = 0
    damaged: list[str] = []
    for blob in source.iter_blobs():
        have = target.stat(blob.key)
        if have is not None and have.size == blob.size:
            skipped += 1
            if progress is not None:
                progress(blob.size)
            continue
        try:
            with source.open_read(blob.key) as src:
                nbytes += target.put_stream(src, blob.key, where=f"{source.location} (blob sha256:{blob.key})",
                                            progress=progress)
        except IntegrityError:
            damaged.append(blob.key)
            continue
        except NotFoundError:
            continue  # removed from the source meanwhile (gc): nothing to copy
        copied += 1
    return CopyReport(
        source=source.location, target=target.location, copied=copied, skipped=skipped, bytes_copied=nbytes,
        damaged=tuple(damaged), seconds=time.perf_counter() - started,
    )


def verify_blobs(
    store: BlobStore, shas: Iterable[str] | None = None, progress: ProgressCallback | None = None
) -> VerifyReport:
    """Re-hash ``shas`` (default: every blob) as stored; never raises for damage, reports it."""
    started = time.perf_counter()
    problems: list[str] = []
    checked = nbytes = 0
    if shas is None:
        todo = [(b.key, b.size) for b in store.iter_blobs()]
    else:
        todo = []
        for sha in shas:
            st = store.stat(sha)
            if st is None:
                problems.append(f"sha256:{sha}: missing from {store.location}")
            else:
                todo.append((sha, st.size))
    for sha, size in todo:
        try:
            # the stored bytes themselves, not a local cached copy of them (S3)
            getattr(store, "verify_remote", store.verify)(sha, progress)
        except NotFoundError:
            problems.append(f"sha256:{sha}: missing from {store.location}")
            continue
        except IntegrityError as exc:
            problems.append(f"sha256:{sha}: {exc.message}")
            continue
        checked += 1
        nbytes += size
    return VerifyReport(
        location=store.location, checked=checked, bytes=nbytes, problems=tuple(problems),
        seconds=time.perf_counter() - started,
    )
