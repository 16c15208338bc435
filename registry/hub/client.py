"""The one Hub client: endpoint, token, the HF cache, and error translation.

Every request spr makes to a Hub (push, pull, import, lock/sync, and base-model identification in
:mod:`registry.hub.remote_base`) goes through :class:`HubClient`: it decides which endpoint gets
the token, and :meth:`HubClient.call` turns the ``huggingface_hub`` client's exceptions into
:class:`~registry.errors.HubError` with one clear line (never carrying the token).

The token comes from :func:`registry.settings.hub_token` (``HF_TOKEN`` or the
``huggingface_hub`` login) and is handed to the client only: it is never stored, logged, put in
a result or an error message. It goes only to the endpoint the user configured
(``--endpoint``, else ``HF_ENDPOINT``, else huggingface.co): an endpoint read from a lockfile or a
recorded hub copy gets anonymous requests, and a plain ``http://`` one that is not loopback is
refused. The endpoint is always passed explicitly (:func:`registry.settings.hub_endpoint`),
because ``huggingface_hub`` reads ``HF_ENDPOINT`` once, at import time. ``huggingface_hub`` is
imported inside the functions, never torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from registry import settings
from registry.adapters.reader import WEIGHTS_NAME
from registry.adapters.tensorfile import StreamScan
from registry.digest import CHUNK
from registry.errors import HubError, IntegrityError, InvalidAdapterError, RegistryError, UsageError
from registry.hub.format import (
    DEFAULT_BRANCH,
    MANIFEST_FILENAME,
    MAX_HUB_MANIFEST_BYTES,
    HubVersion,
    hub_path,
    parse_hub_manifest,
)
from registry.refs import validate_name
from registry.storage import KnownFile

DOWNLOAD_WORKERS = 8

SHA1 = re.compile(r"^[0-9a-f]{40}\Z")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}\Z")


@dataclass(frozen=True)
class FetchedFile:
    """A downloaded file, checked in one read: sha256 and size (and, for the weights, every value).

    ``path`` is the blob in the HF cache; ``known`` lets the blob store link it without hashing it
    again; ``values_checked`` is True for a weights file whose floating-point values were all
    scanned and found finite in that same read.
    """

    path: Path
    known: KnownFile
    values_checked: bool = False


@dataclass(frozen=True)
class RepoSpec:
    """``NS/NAME[@REVISION]`` on a Hub; ``revision`` is a branch, a tag or a 40-hex commit sha."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


def parse_repo_spec(text: str) -> RepoSpec:
    """Parse ``NS/NAME[@REVISION]``. Raises :class:`UsageError` when malformed."""
    if not isinstance(text, str) or not text or len(text) > 400 or any(ord(c) < 32 for c in text):
        raise UsageError(f"invalid Hub repo {text!r}: expected 'NS/NAME[@TAG|@BRANCH|@SHA]'")
    repo, sep, revision = text.partition("@")
    namespace, slash, name = repo.partition("/")
    if not slash or "/" in name:
        raise UsageError(
            f"invalid Hub repo {text!r}: expected 'NS/NAME[@TAG|@BRANCH|@SHA]'",
            hint="for example team/coach@v3",
        )
    validate_name(namespace, "repo namespace")
    validate_name(name, "repo name")
    if sep and (not revision or not _REVISION.match(revision) or ".." in revision):
        raise UsageError(
            f"invalid revision {revision!r} in {text!r}: expected a tag, a branch or a 40-hex commit sha",
            hint="for example team/coach@v3",
        )
    return RepoSpec(f"{namespace}/{name}", revision or None)


def hub_cache_dir() -> Path:
    """The ``huggingface_hub`` cache, read at call time (``HF_HUB_CACHE``, else ``HF_HOME/hub``)."""
    return settings.hf_hub_cache()


def normalise_endpoint(url: str) -> str:
    """``url`` in a comparable form: lower-case scheme and host, no default port, no trailing slash.

    Raises :class:`UsageError` for anything but an ``http(s)://host[:port][/path]`` URL (user
    info, a query or a fragment included: none belongs in a Hub endpoint).
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise UsageError(f"invalid Hub endpoint {url[:200]!r}", hint="expected https://host[:port]") from None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in ("http", "https") or not host or parts.username is not None or parts.password is not None \
            or parts.query or parts.fragment or any(ord(c) < 33 for c in url.strip()):
        raise UsageError(f"invalid Hub endpoint {url[:200]!r}", hint="expected https://host[:port]")
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != {"http": 80, "https": 443}[scheme]:
        netloc += f":{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def is_loopback_endpoint(url: str) -> bool:
    """Whether ``url``'s host is loopback (``localhost``, 127.0.0.0/8, ``::1``)."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HubClient:
    """One endpoint, its token and the HF cache; every client call goes through :meth:`call`.

    ``endpoint`` is what the user asked for (``--endpoint``; None: ``HF_ENDPOINT``, else
    huggingface.co): the *configured* endpoint, the only one that ever receives the token.
    ``recorded`` is an endpoint read from a lockfile or a recorded hub copy, used when the user
    gave no ``endpoint``: it is untrusted, so the client talks to it anonymously
    (``token=False``) unless it is the configured endpoint (compared with
    :func:`normalise_endpoint`), and refuses it when it is plain ``http://`` and not loopback.
    This is the one place that decides who gets the token: every ``HfApi`` and
    ``hf_hub_download`` call in the Hub room takes it from :attr:`_token` (or :attr:`token`).
    Raises :class:`UsageError` for a refused recorded endpoint, :class:`HubError` when
    ``need_token`` and no token is set.
    """

    def __init__(self, endpoint: str | None = None, *, recorded: str | None = None, need_token: bool = False) -> None:
        self.configured_endpoint = settings.hub_endpoint(endpoint)
        if endpoint is None and recorded is not None:
            self.endpoint = recorded.strip().rstrip("/")
        else:
            self.endpoint = self.configured_endpoint
        #: whether the token may be sent to :attr:`endpoint` (it is the configured endpoint)
        self.token_allowed = self.endpoint == self.configured_endpoint or _same_endpoint(
            self.endpoint, self.configured_endpoint
        )
        if not self.token_allowed:
            normalise_endpoint(self.endpoint)  # a malformed recorded endpoint is refused here
            if urlsplit(self.endpoint).scheme.lower() == "http" and not is_loopback_endpoint(self.endpoint):
                raise UsageError(
                    f"refusing the plain-http Hub endpoint {self.endpoint} (recorded, not configured): "
                    "its traffic could be read or changed on the way",
                    hint=f"use an https:// endpoint, or pass --endpoint {self.endpoint} (or set HF_ENDPOINT) "
                    "if you trust it",
                )
        if need_token and not self.token_allowed:
            raise HubError(
                f"{self.endpoint} is not the configured endpoint ({self.configured_endpoint}); the token is not sent there",
                hint=f"pass --endpoint {self.endpoint}",
            )
        self._need_token = need_token
        self._token_value: str | bool | None = None
        self._api: Any = None
        self.cache_dir = hub_cache_dir()
        if need_token:
            self._token  # noqa: B018 - fail before any work when a push has no token

    @property
    def _token(self) -> str | bool:
        # Read on first use: a pull answered from the cache never needs it (nor the login file).
        if self._token_value is None:
            if not self.token_allowed:
                # Anonymous: never hand another endpoint the user's token. False, not None: None
                # would make the client look for a token again on its own (HF_TOKEN, login file).
                self._token_value = False
                return False
            token = settings.hub_token()
            if self._need_token and not token:
                raise HubError(
                    f"pushing to {self.endpoint} needs a token, and none is set",
                    hint="set HF_TOKEN or run 'hf auth login'",
                )
            # False, not None: None would make the client look for a token again on its own.
            self._token_value = token or False
        return self._token_value

    def redact(self, text: str) -> str:
        """``text`` with the token (if one was read) replaced: a server or client may echo it."""
        if isinstance(self._token_value, str) and self._token_value:
            return text.replace(self._token_value, "<token>")
        return text

    @property
    def token(self) -> str | bool:
        """The token for :attr:`endpoint`, False for none (anonymous): for code building its own requests."""
        return self._token

    def _anonymous_hint(self) -> str:
        return (
            f"; spr sent no token to {self.endpoint}: the token goes only to the configured endpoint "
            f"({self.configured_endpoint}). Pass --endpoint {self.endpoint} if you trust it with your token"
        )

    @property
    def api(self) -> Any:
        """The ``HfApi`` for this endpoint (imported on first use: a cached pull never needs it)."""
        if self._api is None:
            from huggingface_hub import HfApi

            self._api = HfApi(endpoint=self.endpoint, token=self._token)
        return self._api

    def cached(self, repo_id: str, filename: str, commit_sha: str) -> Path | None:
        """The file in the HF cache for a pinned commit, or None.

        The same shortcut ``hf_hub_download`` takes for a 40-hex revision (``snapshots/<sha>/<path>``
        exists: no request), without importing the client at all; keeps a cached pull fast.
        """
        if not SHA1.match(commit_sha):
            return None
        folder = "models--" + repo_id.replace("/", "--")
        path = self.cache_dir / folder / "snapshots" / commit_sha / filename
        return path if path.exists() else None

    def known_missing(self, repo_id: str, filename: str, commit_sha: str) -> bool:
        """True when the HF cache recorded that ``filename`` does not exist at ``commit_sha``.

        ``hf_hub_download`` leaves a ``.no_exist`` marker after a 404 at a pinned commit; a commit
        never changes, so the answer stays true and no request is needed.
        """
        if not SHA1.match(commit_sha):
            return False
        folder = "models--" + repo_id.replace("/", "--")
        return (self.cache_dir / folder / ".no_exist" / commit_sha / filename).exists()

    def __repr__(self) -> str:  # never show the token
        return f"HubClient({self.endpoint!r})"

    def snapshot(self, repo_id: str, revision: str | None, allow_patterns: Sequence[str], *, what: str) -> Path:
        """Download the files of ``repo_id`` at ``revision`` matching ``allow_patterns``; returns the snapshot folder."""
        from huggingface_hub import snapshot_download

        with self.call(what, repo_id, revision=revision):
            return Path(
                snapshot_download(
                    repo_id,
                    revision=revision,
                    endpoint=self.endpoint,
                    token=self._token,
                    cache_dir=str(self.cache_dir),
                    allow_patterns=list(allow_patterns),
                )
            )

    @contextlib.contextmanager
    def call(self, what: str, repo_id: str, *, revision: str | None = None) -> Iterator[None]:
        """Turn the client's exceptions into :class:`HubError` with one clear line."""
        try:
            yield
        except RegistryError:
            raise
        except Exception as exc:
            raise self._translate(exc, what, repo_id, revision) from None

    def _translate(self, exc: Exception, what: str, repo_id: str, revision: str | None) -> Exception:
        import httpx2
        from huggingface_hub.errors import (
            EntryNotFoundError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        where = f"{repo_id} at {self.endpoint}"
        status = getattr(getattr(exc, "response", None), "status_code", None)
        anonymous = "" if self.token_allowed else self._anonymous_hint()
        if status == 401 and not isinstance(exc, RepositoryNotFoundError):
            if not self.token_allowed:
                return HubError(
                    f"{what}: {self.endpoint} asks for a token (401 Unauthorized)",
                    hint=anonymous.removeprefix("; "),
                    status=401,
                )
            return HubError(
                f"{what}: {self.endpoint} refused the token (401 Unauthorized)",
                hint="set HF_TOKEN to a valid token with write access, or run 'hf auth login'",
                status=401,
            )
        if isinstance(exc, RepositoryNotFoundError):
            return HubError(
                f"{what}: repository {where} not found",
                hint="check the name; a private repo is visible only with a token that can read it (HF_TOKEN)" + anonymous,
                status=status,
                reason="repo-not-found",
            )
        if isinstance(exc, RevisionNotFoundError):
            return HubError(
                f"{what}: {where} has no revision {revision!r}",
                hint="list the tags with 'hf download --help' or check the lockfile",
                status=status,
                reason="revision-not-found",
            )
        if isinstance(exc, EntryNotFoundError) and not isinstance(exc, LocalEntryNotFoundError):
            return HubError(f"{what}: a file is missing from {where}@{revision}", status=status, reason="entry-not-found")
        if isinstance(exc, (httpx2.TransportError, LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError)):
            return HubError(
                f"{what}: cannot reach the Hub at {self.endpoint} ({type(exc).__name__})",
                hint="check --endpoint / HF_ENDPOINT and that the server is running; then retry (it is safe)",
                reason="unreachable",
            )
        if isinstance(exc, HfHubHTTPError):
            # Redact before cutting: a token cut in half by [:200] would no longer match.
            message = (self.redact(exc.server_message or "").strip().splitlines() or [""])[0][:200]
            if status == 403:
                return HubError(
                    f"{what}: {self.endpoint} forbids this for {repo_id} (403){': ' + message if message else ''}",
                    hint="use a token with write access to that namespace",
                    status=403,
                )
            if status == 412:
                return HubError(
                    f"{what}: {where} changed while pushing (412: someone else committed)",
                    hint="retry the push",
                    status=412,
                )
            return HubError(
                f"{what}: {self.endpoint} answered {status}{': ' + message if message else ''}",
                hint="retry; if it persists, check the server",
                status=status,
            )
        if isinstance(exc, OSError) and "Consistency check failed" in str(exc):
            return IntegrityError(
                f"{what}: a file from {where}@{revision} arrived with the wrong size (truncated on the server or in transit)",
                hint="nothing was imported; ask the publisher to push again, then retry",
            )
        if self.redact(str(exc)) != str(exc) or any(
            isinstance(a, str) and self.redact(a) != a for a in getattr(exc, "args", ())
        ):
            # An unexpected exception whose text carries the token: never let it reach a message or log.
            return HubError(f"{what}: {type(exc).__name__}: {self.redact(str(exc))[:200]}", hint="retry; if it persists, run with --debug")
        return exc

    # -- reads --------------------------------------------------------------------------------

    def refs(self, repo_id: str, what: str = "listing tags") -> tuple[dict[str, str], dict[str, str]]:
        """``(branches, tags)``: name -> commit sha. Raises :class:`HubError`."""
        with self.call(what, repo_id):
            refs = self.api.list_repo_refs(repo_id)
        branches = {b.name: b.target_commit for b in refs.branches}
        tags = {t.name: t.target_commit for t in refs.tags}
        return branches, tags

    def resolve(self, repo_id: str, revision: str | None) -> tuple[str, str | None]:
        """``(commit sha, tag name or None)``. A 40-hex sha is returned as-is, with no request."""
        revision = revision or DEFAULT_BRANCH
        if SHA1.match(revision):
            return revision, None
        branches, tags = self.refs(repo_id)
        if revision in tags:
            return checked_sha(tags[revision], repo_id), revision
        if revision in branches:
            return checked_sha(branches[revision], repo_id), None
        known = ", ".join(sorted(tags)[-10:]) or "none"
        raise HubError(
            f"{repo_id} at {self.endpoint} has no tag or branch {revision!r} (tags: {known})",
            hint="pull a tag such as v1, a branch, or a 40-hex commit sha",
            reason="revision-not-found",
        )

    def download(
        self, repo_id: str, filename: str, commit_sha: str, *, limit: int, too_large: Callable[[int], Exception]
    ) -> Path:
        """Download one file pinned to ``commit_sha`` into the HF cache; returns its cached path.

        Reads at most ``limit`` bytes: a server that announces or sends more is cut off and
        ``too_large(bytes seen)`` is raised, with nothing of the file left in the cache (the
        client writes to a temp file it removes on error). A cached file is returned as it is.
        """
        hit = self.cached(repo_id, filename, commit_sha)
        if hit is not None:
            return hit
        from huggingface_hub import hf_hub_download

        with self.call(f"downloading {filename}", repo_id, revision=commit_sha):
            return Path(
                hf_hub_download(
                    repo_id,
                    filename,
                    revision=commit_sha,
                    endpoint=self.endpoint,
                    token=self._token,
                    cache_dir=str(self.cache_dir),
                    tqdm_class=_bounded_progress(limit, too_large),
                )
            )

    def tree(self, repo_id: str, commit_sha: str) -> dict[str, Any]:
        """``path -> RepoFile`` of every file at ``commit_sha``."""
        from huggingface_hub.hf_api import RepoFile

        with self.call("listing files", repo_id, revision=commit_sha):
            return {
                item.path: item
                for item in self.api.list_repo_tree(repo_id, revision=commit_sha, recursive=True)
                if isinstance(item, RepoFile)
            }

    def read_version(self, repo_id: str, commit_sha: str) -> HubVersion:
        """Read and validate ``spr_manifest.json`` at ``commit_sha``."""
        where = f"{repo_id}@{commit_sha[:12]}/{MANIFEST_FILENAME}"

        def too_large(seen: int) -> Exception:
            return InvalidAdapterError(
                f"{where} at {self.endpoint} is larger than {MAX_HUB_MANIFEST_BYTES} bytes, the limit for a manifest "
                f"(refused after {seen} bytes)",
                hint="the copy on the Hub is damaged or hostile; nothing was imported",
            )

        try:
            path = self.download(repo_id, MANIFEST_FILENAME, commit_sha, limit=MAX_HUB_MANIFEST_BYTES, too_large=too_large)
        except HubError as exc:
            if exc.fields.get("reason") == "entry-not-found":
                raise HubError(
                    f"{repo_id}@{commit_sha[:12]} at {self.endpoint} has no {MANIFEST_FILENAME}: it was not pushed by spr",
                    hint=f"catalogue a plain PEFT repo with 'spr import {repo_id}@{commit_sha}'",
                    reason="no-manifest",
                ) from None
            raise
        size = path.stat().st_size
        if size > MAX_HUB_MANIFEST_BYTES:  # a cached file, written by something else
            raise too_large(size)
        with open(path, "rb") as f:
            data = f.read(MAX_HUB_MANIFEST_BYTES + 1)
        if len(data) > MAX_HUB_MANIFEST_BYTES:
            raise too_large(len(data))
        return parse_hub_manifest(data, repo_id=repo_id, commit_sha=commit_sha, where=where)

    def fetch_files(self, repo_id: str, commit_sha: str, files: Sequence[dict[str, Any]]) -> dict[str, FetchedFile]:
        """Download every file of a manifest pinned to ``commit_sha`` and check it in one read.

        Each download stops at the size the manifest gives (a server sending more is refused:
        "larger than the manifest says"). Each file is then read once: sha256, size and, for the
        weights, a NaN/Inf scan of every floating-point tensor. Returns ``path -> FetchedFile``.
        Raises :class:`IntegrityError` naming the first file that differs (evicted from the HF
        cache so a retry downloads it again), :class:`InvalidAdapterError` for non-finite values.
        """
        where = f"{repo_id}@{commit_sha[:12]}"

        def one(entry: dict[str, Any]) -> tuple[str, FetchedFile]:
            path, size = entry["path"], entry["size"]

            def too_large(seen: int) -> Exception:
                return IntegrityError(
                    f"{where}: file {path!r} at {self.endpoint} is larger than the manifest says ({size} bytes): "
                    f"refused after {seen} bytes",
                    hint="the copy on the Hub was changed, or the server is hostile; nothing was imported",
                    path=path,
                )

            cached = self.download(repo_id, hub_path(path), commit_sha, limit=size, too_large=too_large)
            return path, _check_fetched(cached, entry, where)

        workers = max(1, min(DOWNLOAD_WORKERS, len(files)))
        if workers == 1:
            return dict(one(e) for e in files)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="spr-pull") as pool:
            return dict(pool.map(one, files))


def _check_fetched(cached: Path, entry: dict[str, Any], where: str) -> FetchedFile:
    """Hash, size and (for the weights) scan a downloaded file in one read; evict it when it differs."""
    real = Path(os.path.realpath(cached))
    h = hashlib.sha256()
    size = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(real, "rb", buffering=0) as f:
        st = os.fstat(f.fileno())  # the inode as it was before the read: a change during it shows
        file_size = st.st_size
        scan = StreamScan(file_size, f"{where}/{entry['path']}") if entry["path"] == WEIGHTS_NAME else None
        while n := f.readinto(buf):
            h.update(view[:n])
            if scan is not None:
                scan.feed(view[:n])
            size += n
    sha = h.hexdigest()
    known = KnownFile(sha256=sha, size=size, device=st.st_dev, inode=st.st_ino, mtime_ns=st.st_mtime_ns)
    if sha != entry["sha256"] or size != entry["size"]:
        _evict(cached, real)
        raise IntegrityError(
            f"{where}: file {entry['path']!r} is sha256:{sha} ({size} bytes) but the "
            f"manifest says sha256:{entry['sha256']} ({entry['size']} bytes)",
            hint="the copy on the Hub was changed or truncated after it was pushed; nothing was imported",
            path=entry["path"],
            expected=entry["sha256"],
            found=sha,
        )
    if scan is not None and scan.bad:
        name, count = next(iter(scan.bad.items()))
        raise InvalidAdapterError(
            f"{where}/{entry['path']}: tensor {name!r} holds {count} non-finite values (NaN or Inf)",
            hint="the publisher's training diverged; nothing was imported",
        )
    return FetchedFile(real, known, values_checked=scan is not None and scan.complete)


def _bounded_progress(limit: int, too_large: Callable[[int], Exception]) -> type[Any]:
    """A progress-bar class for ``hf_hub_download`` that refuses a body longer than ``limit`` bytes.

    The client announces the expected size when it creates the bar and reports every chunk to
    ``update`` before writing it, so raising there stops the read: at most ``limit`` bytes reach
    the disk, and one chunk (10 MB) more is read from the socket. The bar shows as the client's own.
    """
    from huggingface_hub.utils import tqdm as hf_tqdm

    class BoundedProgress(hf_tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._spr_seen = int(kwargs.get("initial") or 0)
            super().__init__(*args, **kwargs)
            total = kwargs.get("total")
            if total is not None and total > limit:
                self.close()
                raise too_large(int(total))

        def update(self, n: float | None = 1) -> bool | None:
            self._spr_seen += int(n or 0)
            if self._spr_seen > limit:
                raise too_large(self._spr_seen)
            return super().update(n)

    return BoundedProgress


class RefusalCleanup:
    """Removes from the HF cache what a refused pull downloaded for the revisions it watched.

    Use as a context manager around a pull: :meth:`watch` each ``(repo, commit)`` before its
    first download. When the block raises :class:`IntegrityError` or :class:`InvalidAdapterError`
    (the remote copy was refused: tampered, oversized, hostile), every snapshot file of a watched
    commit that was not there before, and the blob it points to when that blob is new too, is
    deleted, and folders left empty are removed: a refused pull leaves nothing of that revision
    behind. Files that were cached before stay; other errors (network) keep what was downloaded,
    since every later pull checks it again.
    """

    def __init__(self, cache_dir: Path | None = None) -> None:
        self.cache_dir = cache_dir if cache_dir is not None else hub_cache_dir()
        self._before: dict[tuple[str, str], tuple[set[str], set[str], set[str]]] = {}

    def _folders(self, repo_id: str, commit_sha: str) -> tuple[Path, Path, Path]:
        folder_name = "models--" + repo_id.replace("/", "--")
        folder = self.cache_dir / folder_name
        return folder, folder / "snapshots" / commit_sha, self.cache_dir / ".locks" / folder_name

    def watch(self, repo_id: str, commit_sha: str) -> None:
        if (repo_id, commit_sha) in self._before or not SHA1.match(commit_sha):
            return
        folder, snapshot, locks = self._folders(repo_id, commit_sha)
        self._before[(repo_id, commit_sha)] = (_names(snapshot, recursive=True), _names(folder / "blobs"), _names(locks))

    def __enter__(self) -> RefusalCleanup:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if kind is not None and issubclass(kind, (IntegrityError, InvalidAdapterError)):
            self.clean()

    def clean(self) -> None:
        for (repo_id, commit_sha), (pointers, blobs, lock_names) in self._before.items():
            folder, snapshot, locks = self._folders(repo_id, commit_sha)
            for rel in sorted(_names(snapshot, recursive=True) - pointers):
                pointer = snapshot / rel
                target = Path(os.path.realpath(pointer))
                with contextlib.suppress(OSError):
                    pointer.unlink()
                if target.parent == folder / "blobs" and target.name not in blobs:
                    with contextlib.suppress(OSError):
                        target.unlink()
            for name in _names(locks) - lock_names:
                with contextlib.suppress(OSError):
                    (locks / name).unlink()
            for directory in sorted((p for p in snapshot.rglob("*") if p.is_dir()), reverse=True):
                _remove_if_empty(directory)
            for directory in (snapshot, folder / "snapshots", folder / "blobs", folder / "refs", folder, locks):
                _remove_if_empty(directory)


def _names(directory: Path, *, recursive: bool = False) -> set[str]:
    """Names of the files (and symlinks) in ``directory``, relative to it; empty when it is absent."""
    if not directory.is_dir():
        return set()
    if not recursive:
        return {p.name for p in directory.iterdir() if not p.is_dir() or p.is_symlink()}
    return {p.relative_to(directory).as_posix() for p in directory.rglob("*") if not p.is_dir() or p.is_symlink()}


def _remove_if_empty(directory: Path) -> None:
    with contextlib.suppress(OSError):
        directory.rmdir()


def _same_endpoint(a: str, b: str) -> bool:
    """Whether two endpoint URLs name the same server (compared normalised; malformed: not the same)."""
    try:
        return normalise_endpoint(a) == normalise_endpoint(b)
    except UsageError:
        return False


def checked_sha(value: Any, repo_id: str) -> str:
    if not isinstance(value, str) or not SHA1.match(value):
        raise HubError(f"the Hub answered a malformed commit id for {repo_id}: {str(value)[:60]!r}")
    return value


def _evict(pointer: Path, blob: Path) -> None:
    for p in (pointer, blob):
        with contextlib.suppress(OSError):
            p.unlink()
