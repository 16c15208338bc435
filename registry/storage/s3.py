"""Blobs in S3-compatible object storage (AWS S3, MinIO, Ceph, R2, …): ``s3://bucket/prefix``.

Objects are keyed ``<prefix>/sha256/ab/<sha256>``, the layout of the local store, so a bucket and a
folder hold the same tree. Credentials come from the standard AWS chain (environment, profile,
instance role) through boto3 and are never stored or printed; the endpoint from
``AWS_ENDPOINT_URL`` (or the ``endpoint_url`` argument).

Writes. The sha256 is known before a byte is sent (a file is hashed first, a stream comes with
its expected digest), so an object that exists is never uploaded again: content addressing makes
publish idempotent across machines. New bytes go up in parts of ``part_size`` with at most
``max_concurrency`` parts in flight (bounded memory), each part carrying its own
``ChecksumSHA256`` for the server to check; the whole object's sha256 is computed on the way and
the multipart upload is completed only when it matches, so a reader never sees a wrong or partial
object under a blob's key. Small blobs are one ``PutObject`` with the whole object's
``ChecksumSHA256``. Writes are conditional (``If-None-Match: *``) where the server supports it.

Reads. :meth:`S3BlobStore.open_read` streams; :meth:`~S3BlobStore.local_path` and
:meth:`~S3BlobStore.export` go through a verified local cache (``$SPR_HOME/cache/blobs``: each
blob downloaded once per machine, hashed on the way); :meth:`~S3BlobStore.verify` re-hashes the
bytes this machine uses, :meth:`~S3BlobStore.verify_remote` the bucket's.

Garbage collection across machines: there is no lock a bucket can give, so :meth:`writing`
keeps a *pending marker* ``<prefix>/pending/<uuid>.json`` naming every blob the writer stores or
reuses (before it checks or uploads it) and its open multipart uploads, refreshed by a heartbeat
and deleted after the commit; gc reads the markers (:meth:`in_use`) before the catalogue for each
candidate, and :meth:`remove` re-reads them. The protocol and its one remaining window are in
the README ("Teams: blobs in S3").
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, BinaryIO, TypeVar

from registry import settings
from registry.digest import CHUNK, ProgressCallback, sha256_file
from registry.errors import (
    BlobInUseError,
    DigestMismatchError,
    IntegrityError,
    NotFoundError,
    UsageError,
)
from registry.storage import BlobStat
from registry.storage.s3_io import (
    MISSING,
    BodyReader,
    Marker,
    Readable,
    S3Client,
    b64,
    check_digest,
    check_sha,
    error_code,
    make_client,
    parse_marker,
    parse_s3_url,
    read_full,
    server_time,
    translate_error,
    unsupported_condition,
    write_verified,
)

T = TypeVar("T")

MIB = 1 << 20
DEFAULT_PART_SIZE = 8 * MIB  # S3's minimum part is 5 MiB; boto3's default is 8 MiB
DEFAULT_CONCURRENCY = 8
DEFAULT_HEARTBEAT_SECONDS = 30.0
DEFAULT_PENDING_TTL_SECONDS = 600.0  # a marker not refreshed for this long belongs to a dead writer
MAX_MARKER_BYTES = 4 * MIB  # a marker read from the bucket is bounded like any other input

_BLOB_KEY = re.compile(r"sha256/([0-9a-f]{2})/([0-9a-f]{64})\Z")
_MARKER_KEY = re.compile(r"pending/([0-9a-f]{32})\.json\Z")
_UPLOAD_KEY = re.compile(r"(sha256/[0-9a-f]{2}/[0-9a-f]{64})\?uploadId=(.+)\Z")



_OPEN: dict[tuple[str | None, ...], S3BlobStore] = {}
_OPEN_LOCK = threading.Lock()


def open_bucket(url: str) -> S3BlobStore:
    """The store for ``url`` with the current settings; reused while the settings stay the same.

    A command opens its store several times (publish, then verify…): creating a boto3 client
    costs tens of milliseconds, so one is kept per URL, endpoint and credential source (the
    access key id or profile name, never the secret).
    """
    ident = (url, settings.s3_endpoint(), os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_PROFILE"),
             os.environ.get("AWS_SHARED_CREDENTIALS_FILE"))
    with _OPEN_LOCK:
        store = _OPEN.get(ident)
        if store is None:
            store = _OPEN[ident] = S3BlobStore(url)
        return store


class S3BlobStore:
    """Blobs in an S3 bucket under a prefix (implements :class:`registry.storage.BlobStore`).

    ``url`` is ``s3://bucket/prefix``; ``endpoint_url`` defaults to ``AWS_ENDPOINT_URL``
    (``None`` means AWS itself). ``cache_dir`` defaults to ``$SPR_HOME/cache/blobs`` (read when
    used). The bucket must exist: the store never creates one.
    """

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        cache_dir: Path | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        max_concurrency: int = DEFAULT_CONCURRENCY,
        heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS,
        pending_ttl_seconds: float = DEFAULT_PENDING_TTL_SECONDS,
        client: S3Client | None = None,
    ) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        if part_size < 5 * MIB:
            raise UsageError(f"S3 part size {part_size} is below S3's minimum of 5 MiB", hint="use 5 MiB or more")
        self.part_size = part_size
        self.max_concurrency = max(1, max_concurrency)
        self.heartbeat_seconds = heartbeat_seconds
        self.pending_ttl_seconds = pending_ttl_seconds
        self._base = f"{self.prefix}/" if self.prefix else ""
        self._cache_dir = cache_dir
        self._endpoint = endpoint_url if endpoint_url is not None else settings.s3_endpoint()
        self._client = client if client is not None else make_client(self._endpoint, self.max_concurrency)
        self._conditional = True  # If-None-Match: * until the server says it does not support it
        self._local = threading.local()  # the marker of the writing() this thread is inside
        self._collect_lock = threading.Lock()
        self._collecting = 0
        self._listed: dict[str, float] = {}  # sha -> mtime seen by iter_blobs while collecting
        self._marker_cache: dict[str, tuple[str, set[str], set[str]]] = {}  # key -> (etag, shas, uploads)

    # ------------------------------------------------------------------ naming

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    @property
    def endpoint(self) -> str:
        return str(self._client.meta.endpoint_url)

    def key(self, sha256: str) -> str:
        """The object key of a blob."""
        return f"{self._base}sha256/{sha256[:2]}/{sha256}"

    def cache_path(self, sha256: str) -> Path:
        """Where :meth:`local_path` keeps its verified copy of a blob."""
        root = self._cache_dir if self._cache_dir is not None else settings.blob_cache_dir()
        return root / "sha256" / sha256[:2] / sha256

    # ------------------------------------------------------------------ errors

    def _fail(self, exc: BaseException, action: str) -> Exception:
        """The RegistryError for a client exception (anything else is returned unchanged)."""
        return translate_error(exc, action=action, location=self.location, endpoint=self._endpoint)

    def _call(self, action: str, fn: Callable[..., T], **kwargs: Any) -> T:
        try:
            return fn(Bucket=self.bucket, **kwargs)
        except Exception as exc:
            raise self._fail(exc, action) from None

    # ------------------------------------------------------------------ queries

    def has(self, sha256: str) -> bool:
        return self.stat(sha256) is not None

    def stat(self, sha256: str) -> BlobStat | None:
        check_sha(sha256)
        head = self._head(self.key(sha256), f"checking blob sha256:{sha256}")
        if head is None:
            return None
        return BlobStat(sha256, int(head["ContentLength"]), head["LastModified"].timestamp())

    def _head(self, key: str, action: str) -> dict[str, Any] | None:
        try:
            return self._client.head_object(Bucket=self.bucket, Key=key)  # type: ignore[no-any-return,unused-ignore]
        except Exception as exc:
            if error_code(exc) in MISSING:
                return None
            raise self._fail(exc, action) from None

    # ------------------------------------------------------------------ writing

    def reuse(self, sha256: str) -> bool:
        """True when the blob is stored. Inside :meth:`writing` it is first named in the pending marker."""
        check_sha(sha256)
        self._note(sha256)
        if self.stat(sha256) is None:
            return False
        self._confirm(sha256)
        return True

    def put_file(self, source: Path, progress: ProgressCallback | None = None) -> tuple[str, int]:
        """Store a file: hashed first (the key), then uploaded unless the bucket already has it.

        The upload re-hashes what it sends and refuses (stores nothing) when the file changed
        between the two reads. (Writing the bytes sent into the local cache as well cost more
        than the upload on a busy disk: the cache fills on first use instead.)
        """
        sha, size = sha256_file(source)
        self._note(sha)
        if self.stat(sha) is not None:
            self._confirm(sha)
            if progress is not None:
                progress(size)
            return sha, size
        with open(source, "rb", buffering=0) as src:
            sent = self._upload(src, sha, where=str(source), progress=progress)
        return sha, sent

    def link_file(self, source: Path, progress: ProgressCallback | None = None) -> tuple[str, int]:
        """A bucket cannot link: same as :meth:`put_file`."""
        return self.put_file(source, progress)

    def put_stream(
        self, src: IO[bytes], expected_sha256: str, *, where: str, progress: ProgressCallback | None = None
    ) -> int:
        """Store ``src``'s bytes under ``expected_sha256``; :class:`IntegrityError` (nothing stored) if they differ.

        When the blob is already stored the stream is not read and the stored size is returned.
        """
        check_sha(expected_sha256)
        self._note(expected_sha256)
        existing = self.stat(expected_sha256)
        if existing is not None:
            self._confirm(expected_sha256)
            return existing.size
        return self._upload(src, expected_sha256, where=where, progress=progress)

    def put_bytes(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        self._note(sha)
        if self.stat(sha) is None:
            self._upload(io.BytesIO(data), sha, where="bytes", progress=None)
        else:
            self._confirm(sha)
        return sha

    def _upload(self, src: Readable, expected: str, *, where: str, progress: ProgressCallback | None) -> int:
        key = self.key(expected)
        first = read_full(src, self.part_size)
        if len(first) < self.part_size:
            digest = hashlib.sha256(first).digest()
            if progress is not None and first:
                progress(len(first))
            check_digest(digest.hex(), expected, where)
            self._put_object(key, first, b64(digest), expected)
            return len(first)
        # Not added to the post-commit check: a gc that listed an earlier copy of this key keeps
        # this one (remove() sees a LastModified newer than its listing), and a gc that listed
        # after this upload reads the marker or the catalogue first.
        return self._multipart(src, first, key, expected, where=where, progress=progress)

    def _put_object(self, key: str, body: bytes, checksum: str, sha: str) -> None:
        action = f"uploading blob sha256:{sha}"
        kwargs: dict[str, Any] = {"Key": key, "Body": body, "ChecksumSHA256": checksum}
        while True:
            if self._conditional:
                kwargs["IfNoneMatch"] = "*"
            else:
                kwargs.pop("IfNoneMatch", None)
            try:
                self._client.put_object(Bucket=self.bucket, **kwargs)
                return
            except Exception as exc:
                code = error_code(exc)
                if code in ("PreconditionFailed", "412"):
                    return  # another writer stored the same bytes first: content addressing makes that fine
                if code == "ConditionalRequestConflict":
                    if self.stat(sha) is not None:
                        return
                    continue
                if self._conditional and unsupported_condition(exc):
                    self._conditional = False
                    continue
                raise self._fail(exc, action) from None

    def _multipart(
        self, src: Readable, first: bytes, key: str, expected: str, *, where: str, progress: ProgressCallback | None
    ) -> int:
        action = f"uploading blob sha256:{expected}"
        created = self._call(action, self._client.create_multipart_upload, Key=key, ChecksumAlgorithm="SHA256")
        upload_id = created["UploadId"]
        self._note_upload(key, upload_id)
        whole = hashlib.sha256()
        size = 0
        parts: list[dict[str, Any]] = []
        inflight: deque[Future[dict[str, Any]]] = deque()
        pool = ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="spr-s3-part")
        try:
            chunk = first
            number = 1
            while chunk:
                whole.update(chunk)
                size += len(chunk)
                while len(inflight) >= self.max_concurrency:  # bounded memory: wait for the oldest part
                    parts.append(inflight.popleft().result())
                inflight.append(pool.submit(self._upload_part, key, upload_id, number, chunk, action))
                if progress is not None:
                    progress(len(chunk))
                number += 1
                chunk = read_full(src, self.part_size)
            while inflight:
                parts.append(inflight.popleft().result())
            check_digest(whole.hexdigest(), expected, where)
            self._complete(key, upload_id, parts, expected, action)
        except BaseException:
            for fut in inflight:
                fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            self._abort(key, upload_id)
            raise
        pool.shutdown(wait=True)
        return size

    def _upload_part(self, key: str, upload_id: str, number: int, chunk: bytes, action: str) -> dict[str, Any]:
        checksum = b64(hashlib.sha256(chunk).digest())
        resp = self._call(
            action, self._client.upload_part, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk,
            ChecksumSHA256=checksum,
        )
        return {"PartNumber": number, "ETag": resp["ETag"], "ChecksumSHA256": resp.get("ChecksumSHA256", checksum)}

    def _complete(self, key: str, upload_id: str, parts: list[dict[str, Any]], sha: str, action: str) -> None:
        while True:
            kwargs: dict[str, Any] = {"Key": key, "UploadId": upload_id, "MultipartUpload": {"Parts": parts}}
            if self._conditional:
                kwargs["IfNoneMatch"] = "*"
            try:
                self._client.complete_multipart_upload(Bucket=self.bucket, **kwargs)
                return
            except Exception as exc:
                code = error_code(exc)
                if code in ("PreconditionFailed", "412"):
                    self._abort(key, upload_id)  # the same bytes were stored meanwhile by another writer
                    return
                if code == "ConditionalRequestConflict" and self.stat(sha) is not None:
                    self._abort(key, upload_id)
                    return
                if self._conditional and unsupported_condition(exc):
                    self._conditional = False
                    continue
                raise self._fail(exc, action) from None

    def _abort(self, key: str, upload_id: str) -> None:
        try:  # best effort: an upload left open is listed by iter_incomplete and removed by gc
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except Exception:
            pass

    # ------------------------------------------------------------------ reading

    @contextmanager
    def open_read(self, sha256: str) -> Iterator[BinaryIO]:
        """Stream the object (not re-verified). Raises NotFoundError when it is missing."""
        body, size = self._get(sha256)
        raw = BodyReader(body, size, self, sha256)
        try:
            yield io.BufferedReader(raw, CHUNK)  # type: ignore[misc,unused-ignore]
        finally:
            raw.close()

    def _get(self, sha256: str) -> tuple[Any, int]:
        check_sha(sha256)
        try:
            resp = self._client.get_object(Bucket=self.bucket, Key=self.key(sha256))
        except Exception as exc:
            if error_code(exc) in MISSING:
                raise self._missing(sha256) from None
            raise self._fail(exc, f"downloading blob sha256:{sha256}") from None
        return resp["Body"], int(resp["ContentLength"])

    def _missing(self, sha256: str) -> NotFoundError:
        return NotFoundError(
            f"blob sha256:{sha256} is missing from the blob store {self.location}",
            hint="run 'spr audit' to list every missing blob; restore from a backup or re-publish",
            sha256=sha256,
        )

    def local_path(self, sha256: str) -> Path:
        """A verified local copy in the cache; the first call downloads, later calls make no request."""
        return self._cached(sha256, None)[0]

    def _cached(self, sha256: str, progress: ProgressCallback | None) -> tuple[Path, bool]:
        """``(cache path, downloaded now)``."""
        check_sha(sha256)
        path = self.cache_path(sha256)
        if path.is_file():
            return path, False
        path.parent.mkdir(parents=True, exist_ok=True)
        self._download(sha256, path, mode=0o444, progress=progress)
        return path, True

    def export(self, sha256: str, destination: Path, progress: ProgressCallback | None = None) -> None:
        """Copy a blob to ``destination`` atomically, re-hashing on the way.

        Goes through the local cache (downloading into it first when needed), so a second export
        or load of the same bytes on this machine downloads nothing.
        """
        cached, downloaded = self._cached(sha256, progress)
        destination.parent.mkdir(parents=True, exist_ok=True)
        with open(cached, "rb", buffering=0) as src:
            write_verified(src, sha256, destination, 0o644, None if downloaded else progress,
                           where=f"the cached copy {cached}")

    def _download(self, sha256: str, destination: Path, *, mode: int, progress: ProgressCallback | None) -> None:
        with self.open_read(sha256) as src:
            write_verified(src, sha256, destination, mode, progress, where=f"{self.location} ({self.key(sha256)})")

    def verify(self, sha256: str, progress: ProgressCallback | None = None) -> None:
        """Re-hash the bytes this store hands out on this machine.

        That is the cached copy when there is one (what ``export``/``local_path``/``load`` use: a
        second ``load`` downloads nothing), else the object in the bucket. :meth:`verify_remote`
        always re-hashes the bucket's bytes (``spr audit`` and ``spr blobs verify`` do).
        """
        check_sha(sha256)
        cached = self.cache_path(sha256)
        if cached.is_file():
            actual, _ = sha256_file(cached, progress)
            if actual != sha256:
                raise DigestMismatchError(
                    f"the cached copy {cached} of blob sha256:{sha256} was changed (it hashes to sha256:{actual})",
                    hint=f"delete {cached}; the next use downloads a verified copy from {self.location}",
                    expected=sha256,
                    found=actual,
                )
            return
        self.verify_remote(sha256, progress)

    def verify_remote(self, sha256: str, progress: ProgressCallback | None = None) -> None:
        """Re-hash the object as stored in the bucket (the cache is not consulted)."""
        h = hashlib.sha256()
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        with self.open_read(sha256) as src:
            while n := src.readinto(buf):  # type: ignore[attr-defined]
                h.update(view[:n])
                if progress is not None:
                    progress(n)
        if h.hexdigest() != sha256:
            raise DigestMismatchError(
                f"blob sha256:{sha256} in {self.location} was changed (its bytes now hash to sha256:{h.hexdigest()})",
                hint="run 'spr audit'; restore the blob from a backup or re-publish the adapter",
                expected=sha256,
                found=h.hexdigest(),
            )

    # ------------------------------------------------------------------ listing

    def _list(self, prefix: str, action: str) -> Iterator[tuple[dict[str, Any], float]]:
        """``(object, server time of the listing)`` for every object under ``prefix``, in key order."""
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            resp = self._call(action, self._client.list_objects_v2, **kwargs)
            now = server_time(resp)
            for obj in resp.get("Contents", []):
                yield obj, now
            if not resp.get("IsTruncated"):
                return
            token = resp["NextContinuationToken"]

    def iter_blobs(self) -> Iterator[BlobStat]:
        for obj, _ in self._list(self._base + "sha256/", "listing blobs"):
            rel = obj["Key"][len(self._base):]
            m = _BLOB_KEY.fullmatch(rel)
            if m and m.group(2).startswith(m.group(1)):
                stat = BlobStat(m.group(2), int(obj["Size"]), obj["LastModified"].timestamp())
                if self._collecting:
                    self._listed[stat.key] = stat.mtime
                yield stat

    def iter_stray(self) -> Iterator[BlobStat]:
        """Objects under the prefix that are neither blobs nor pending markers (keys relative to the prefix)."""
        for obj, _ in self._list(self._base, "listing the bucket"):
            rel = obj["Key"][len(self._base):]
            m = _BLOB_KEY.fullmatch(rel)
            if (m and m.group(2).startswith(m.group(1))) or _MARKER_KEY.fullmatch(rel):
                continue
            yield BlobStat(rel, int(obj["Size"]), obj["LastModified"].timestamp())

    def iter_incomplete(self) -> Iterator[BlobStat]:
        """Multipart uploads no live writer owns (``sha256/ab/<sha>?uploadId=…``) and stale markers (``pending/…``)."""
        live_shas, live_uploads, stale = self._pending()
        del live_shas
        for key, mtime, size in stale:
            yield BlobStat(key, size, mtime)
        marker: dict[str, Any] = {"Prefix": self._base + "sha256/"}
        while True:
            resp = self._call("listing unfinished uploads", self._client.list_multipart_uploads, **marker)
            for up in resp.get("Uploads", []):
                rel = up["Key"][len(self._base):]
                ident = f"{rel}?uploadId={up['UploadId']}"
                if ident in live_uploads or not _BLOB_KEY.fullmatch(rel):
                    continue
                yield BlobStat(ident, 0, up["Initiated"].timestamp())
            if not resp.get("IsTruncated"):
                return
            marker = {
                "Prefix": self._base + "sha256/",
                "KeyMarker": resp.get("NextKeyMarker", ""),
                "UploadIdMarker": resp.get("NextUploadIdMarker", ""),
            }

    def remove_incomplete(self, key: str) -> None:
        """Abort an unfinished upload or delete a stale marker named by :meth:`iter_incomplete`; anything else is ignored."""
        if m := _UPLOAD_KEY.fullmatch(key):
            self._abort(self._base + m.group(1), m.group(2))
        elif _MARKER_KEY.fullmatch(key):
            self._delete(self._base + key, "removing a stale pending marker")

    def in_use(self) -> frozenset[str]:
        """The blobs live pending markers name (read now: one LIST, and a GET per marker not seen before)."""
        return frozenset(self._pending()[0])

    def remove(self, sha256: str) -> None:
        """Delete a blob (missing is fine).

        Inside :meth:`collecting` a blob is kept, with :class:`BlobInUseError`, when a live pending
        marker names it or it was stored again after gc listed it: a writer on another machine is
        about to reference it.
        """
        check_sha(sha256)
        if self._collecting:
            live_shas, _, _ = self._pending()
            if sha256 in live_shas:
                raise BlobInUseError(f"blob sha256:{sha256} is named by a live pending-upload marker; kept")
            head = self._head(self.key(sha256), f"checking blob sha256:{sha256}")
            if head is None:
                return
            listed = self._listed.get(sha256)
            if listed is not None and head["LastModified"].timestamp() > listed:
                raise BlobInUseError(f"blob sha256:{sha256} was stored again after gc listed it; kept")
        self._delete(self.key(sha256), f"deleting blob sha256:{sha256}")

    def _delete(self, key: str, action: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if error_code(exc) in MISSING:
                return
            raise self._fail(exc, action) from None

    # ------------------------------------------------------------------ pending markers

    def _pending(self) -> tuple[set[str], set[str], list[tuple[str, float, int]]]:
        """``(shas named by live markers, uploads named by them, stale markers as (key, mtime, size))``."""
        shas: set[str] = set()
        uploads: set[str] = set()
        stale: list[tuple[str, float, int]] = []
        seen: set[str] = set()
        for obj, now in self._list(self._base + "pending/", "listing pending markers"):
            rel = obj["Key"][len(self._base):]
            if not _MARKER_KEY.fullmatch(rel):
                continue
            mtime = obj["LastModified"].timestamp()
            if now - mtime > self.pending_ttl_seconds:
                stale.append((rel, mtime, int(obj["Size"])))
                continue
            seen.add(rel)
            etag = str(obj.get("ETag", ""))
            cached = self._marker_cache.get(rel)
            if cached is None or cached[0] != etag:
                cached = (etag, *self._read_marker(obj["Key"], int(obj["Size"])))
                self._marker_cache[rel] = cached
            shas |= cached[1]
            uploads |= cached[2]
        for rel in set(self._marker_cache) - seen:
            del self._marker_cache[rel]
        return shas, uploads, stale

    def _read_marker(self, key: str, size: int) -> tuple[set[str], set[str]]:
        if size > MAX_MARKER_BYTES:
            return set(), set()
        try:
            resp = self._client.get_object(Bucket=self.bucket, Key=key)
            data = resp["Body"].read(MAX_MARKER_BYTES + 1)
        except Exception as exc:
            if error_code(exc) in MISSING:
                return set(), set()  # its writer finished meanwhile
            raise self._fail(exc, "reading a pending marker") from None
        return parse_marker(data)

    def _write_marker(self, marker: Marker) -> None:
        with marker.lock:
            body = marker.body()
            self._call("writing the pending-upload marker", self._client.put_object, Key=marker.key, Body=body)
            marker.written = True

    def _note(self, sha256: str) -> None:
        marker: Marker | None = getattr(self._local, "marker", None)
        if marker is None or sha256 in marker.shas:
            return
        marker.shas.append(sha256)
        self._write_marker(marker)  # named before the blob is checked or uploaded: gc sees it first

    def _confirm(self, sha256: str) -> None:
        marker: Marker | None = getattr(self._local, "marker", None)
        if marker is not None:
            marker.confirmed.append(sha256)

    def _note_upload(self, key: str, upload_id: str) -> None:
        marker: Marker | None = getattr(self._local, "marker", None)
        if marker is None:
            return
        marker.uploads.append(f"{key[len(self._base):]}?uploadId={upload_id}")
        self._write_marker(marker)

    @contextmanager
    def writing(self) -> Iterator[None]:
        """From a writer's first stored blob to its catalogue commit: a pending marker guards its blobs.

        On a normal exit every blob it recorded is checked to still exist; a blob removed
        meanwhile (only possible in a window of one request against a gc on another machine)
        raises :class:`IntegrityError` naming the fix: run the command again, which re-uploads it.
        """
        outer: Marker | None = getattr(self._local, "marker", None)
        if outer is not None:  # nested: the outer writer's marker already covers this thread
            yield
            return
        marker = Marker(key=f"{self._base}pending/{uuid.uuid4().hex}.json")
        self._local.marker = marker
        beat = threading.Thread(target=self._heartbeat, args=(marker,), daemon=True, name="spr-s3-heartbeat")
        beat.start()
        ok = False
        try:
            yield
            ok = True
        finally:
            self._local.marker = None
            marker.stop.set()
            beat.join()
            try:
                if ok:
                    self._check_recorded(marker.confirmed)
            finally:
                try:
                    if marker.written:
                        self._delete(marker.key, "removing the pending-upload marker")
                except Exception:
                    if ok:
                        raise

    def _check_recorded(self, shas: list[str]) -> None:
        gone = [sha for sha in dict.fromkeys(shas) if self.stat(sha) is None]
        if gone:
            raise IntegrityError(
                f"blob sha256:{gone[0]} was removed from {self.location} while this command was recording it "
                f"(a gc on another machine raced it; {len(gone)} blob(s) affected)",
                hint="run the same command again: it uploads the missing blob(s) and changes nothing else",
                missing=gone,
            )

    def _heartbeat(self, marker: Marker) -> None:
        while not marker.stop.wait(self.heartbeat_seconds):
            if not marker.written:
                continue
            try:
                self._write_marker(marker)
            except Exception:
                pass  # the next beat tries again; a marker that stays stale only delays gc's protection

    @contextmanager
    def collecting(self) -> Iterator[None]:
        """gc's side: no lock exists across machines, so :meth:`remove` consults the live markers per delete."""
        with self._collect_lock:
            self._collecting += 1
        try:
            yield
        finally:
            with self._collect_lock:
                self._collecting -= 1
                if not self._collecting:
                    self._listed.clear()
