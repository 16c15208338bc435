"""The S3 store's plumbing: the boto3 client, error translation, and streaming helpers.

Kept apart from :mod:`registry.storage.s3` (the store itself) so that each stays readable.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from registry.digest import CHUNK, ProgressCallback
from registry.errors import (
    BlobStoreError,
    DependencyMissingError,
    DigestMismatchError,
    IntegrityError,
    NotFoundError,
    UsageError,
)

if TYPE_CHECKING:
    from registry.storage.s3 import S3BlobStore

S3Client = Any  # boto3's client is generated at run time; its stubs are not a dependency

HEX64 = re.compile(r"[0-9a-f]{64}\Z")
DENIED = {
    "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
    "InvalidToken", "TokenRefreshRequired", "Forbidden", "403", "AccountProblem",
}
MISSING = {"NoSuchKey", "404", "NotFound"}
MARKER_FORMAT = "softprompt-registry/pending/v1"
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]\Z")


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")``; raises :class:`UsageError` otherwise."""
    if not url.startswith("s3://"):
        raise UsageError(f"blob URL {url!r} is not an s3:// URL", hint="write it as s3://BUCKET or s3://BUCKET/PREFIX")
    rest = url[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise UsageError(
            f"blob URL {url!r} does not name a valid bucket ({bucket!r})",
            hint="bucket names are 3-63 lower-case letters, digits, dots and hyphens: s3://BUCKET/PREFIX",
        )
    parts = prefix.split("/") if prefix else []
    if any(p in ("", ".", "..") or "\\" in p or any(ord(c) < 32 for c in p) for p in parts):
        raise UsageError(f"blob URL {url!r} has a malformed prefix {prefix!r}", hint="use s3://BUCKET/a/b (no empty, '.' or '..' parts)")
    return bucket, prefix


@dataclass
class Marker:
    """One writer's pending-upload marker: what it stores or reuses until its catalogue commit."""

    key: str
    shas: list[str] = field(default_factory=list)
    confirmed: list[str] = field(default_factory=list)  # found stored or uploaded: the commit will reference them
    uploads: list[str] = field(default_factory=list)
    written: bool = False  # created with the first blob named, not before (a writer that stores nothing costs nothing)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def body(self) -> bytes:
        doc = {
            "format": MARKER_FORMAT,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "written_at": time.time(),
            "shas": sorted(set(self.shas)),
            "uploads": sorted(set(self.uploads)),
        }
        return json.dumps(doc, sort_keys=True).encode("utf-8")


class Readable(Protocol):
    """Anything with ``read(n) -> bytes``: a file, a streaming body, a :class:`TeeReader`."""

    def read(self, n: int = -1, /) -> bytes: ...


def parse_marker(data: bytes) -> tuple[set[str], set[str]]:
    """``(shas, uploads)`` named by a pending marker's JSON; a malformed marker names nothing."""
    try:
        doc = json.loads(data)
        shas = {s for s in doc.get("shas", []) if isinstance(s, str) and HEX64.fullmatch(s)}
        ups = {u for u in doc.get("uploads", []) if isinstance(u, str)}
    except (ValueError, TypeError, AttributeError, RecursionError):
        return set(), set()
    return shas, ups


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def make_client(endpoint: str | None, concurrency: int) -> S3Client:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise DependencyMissingError(
            "an s3:// blob store needs boto3, which is not installed",
            hint="pip install 'softprompt-registry[s3]'",
        ) from None
    config = Config(
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
        max_pool_connections=max(10, concurrency + 2),
        # The store sends its own SHA-256 per part and per object; no second (CRC) checksum on top.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint, config=config)


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        err = response.get("Error") or {}
        code = err.get("Code")
        if code:
            return str(code)
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        if status:
            return str(status)
    return ""


def unsupported_condition(exc: BaseException) -> bool:
    code = error_code(exc)
    return code in ("NotImplemented", "501") or (code in ("InvalidArgument", "400") and "If-None-Match" in str(exc))


def translate_error(exc: BaseException, *, action: str, location: str, endpoint: str | None) -> Exception:
    """One RegistryError, with the fix, for a boto3/botocore failure; other exceptions are returned as they are."""
    try:
        from botocore import exceptions as bx
    except ImportError:  # pragma: no cover - boto3 is installed whenever a client exists
        return exc if isinstance(exc, Exception) else RuntimeError(str(exc))
    where = endpoint or "AWS S3"
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError, bx.CredentialRetrievalError)):
        return BlobStoreError(
            f"no AWS credentials found for {location} ({action})",
            hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run with an instance role",
        )
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectionClosedError, bx.ReadTimeoutError,
                        bx.ConnectTimeoutError, bx.ResponseStreamingError, bx.IncompleteReadError)):
        return BlobStoreError(
            f"the S3 endpoint {where} failed while {action} for {location}: {type(exc).__name__}",
            hint="check AWS_ENDPOINT_URL / --s3-endpoint and the network, then run the command again "
            "(nothing half-written is visible)",
        )
    if isinstance(exc, bx.ClientError):
        code = error_code(exc)
        if code in ("NoSuchBucket",):
            return NotFoundError(
                f"bucket {location.split('/')[2]!r} does not exist at {where}",
                hint="create it (aws s3 mb) or fix SPR_BLOB_URL / --blob-url and AWS_ENDPOINT_URL",
            )
        if code in DENIED:
            return BlobStoreError(
                f"access denied to {location} while {action} ({code})",
                hint="check the AWS credentials in use (AWS_PROFILE / AWS_ACCESS_KEY_ID) and that they may "
                "s3:ListBucket, s3:GetObject, s3:PutObject and s3:DeleteObject on the bucket",
            )
        message = str((exc.response.get("Error") or {}).get("Message") or code)
        return BlobStoreError(
            f"S3 at {where} refused {action} for {location}: {code}: {message}",
            hint="see the server's message; run the command again once it is fixed",
        )
    if isinstance(exc, bx.BotoCoreError):
        return BlobStoreError(f"the S3 client failed while {action} for {location}: {exc}", hint="run the command again")
    return exc if isinstance(exc, Exception) else RuntimeError(str(exc))


def check_sha(sha256: str) -> None:
    if not HEX64.fullmatch(sha256):
        raise UsageError(f"{sha256!r} is not a sha256 (64 lower-case hex digits)", hint="pass the blob's sha256")


def check_digest(actual: str, expected: str, where: str) -> None:
    if actual != expected:
        raise IntegrityError(
            f"{where}: blob sha256:{expected} hashes to sha256:{actual}",
            hint="the source changed or is damaged; nothing was stored; use an intact copy",
            expected=expected,
            found=actual,
        )


def read_full(src: Readable, size: int) -> bytes:
    """Up to ``size`` bytes (fewer only at the end of the stream)."""
    out = bytearray()
    while len(out) < size:
        data = src.read(size - len(out))
        if not data:
            break
        out += data
    return bytes(out)


def server_time(resp: dict[str, Any]) -> float:
    # Ages are measured on the server's clock (its Date header) against its LastModified, so a
    # skewed clock on this machine cannot make a live marker look stale.
    try:
        return parsedate_to_datetime(resp["ResponseMetadata"]["HTTPHeaders"]["date"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return time.time()


def write_verified(
    src: BinaryIO, sha256: str, destination: Path, mode: int, progress: ProgressCallback | None, *, where: str
) -> None:
    """Stream ``src`` into a temp file beside ``destination``, hashing; rename into place only when it matches."""
    fd, name = tempfile.mkstemp(prefix=".tmp-", dir=destination.parent)
    tmp = Path(name)
    try:
        h = hashlib.sha256()
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        with os.fdopen(fd, "wb", buffering=0) as dst:
            while n := src.readinto(buf):  # type: ignore[attr-defined]
                h.update(view[:n])
                dst.write(view[:n])
                if progress is not None:
                    progress(n)
            os.fsync(dst.fileno())
        if h.hexdigest() != sha256:
            raise DigestMismatchError(
                f"blob sha256:{sha256} from {where} hashes to sha256:{h.hexdigest()}; refusing to use it",
                hint="the stored object was changed: run 'spr audit' and restore it from a backup or re-publish",
                expected=sha256,
                found=h.hexdigest(),
            )
        os.chmod(tmp, mode)
        os.replace(tmp, destination)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class BodyReader(io.RawIOBase):
    """A botocore streaming body as a raw binary stream; a body cut short is an error, never a short file."""

    def __init__(self, body: Any, size: int, store: S3BlobStore, sha256: str) -> None:
        self._body = body
        self._size = size
        self._read = 0
        self._store = store
        self._sha = sha256

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        try:
            data = self._body.read(len(view))
        except Exception as exc:
            raise self._cut(exc) from None
        n = len(data)
        if n == 0 and self._read < self._size:
            raise self._cut(None)
        view[:n] = data
        self._read += n
        return n

    def _cut(self, exc: BaseException | None) -> Exception:
        if exc is not None and type(exc).__name__ not in ("IncompleteReadError", "ResponseStreamingError",
                                                         "ProtocolError", "ReadTimeoutError"):
            return self._store._fail(exc, f"downloading blob sha256:{self._sha}")
        return BlobStoreError(
            f"the download of blob sha256:{self._sha} from {self._store.location} was cut short "
            f"after {self._read} of {self._size} bytes",
            hint="check the network and run the command again; nothing was written",
        )

    def close(self) -> None:
        try:
            self._body.close()
        finally:
            super().close()
