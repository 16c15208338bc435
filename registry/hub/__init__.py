"""Push and pull adapter versions to and from a Hugging Face Hub (or the project's own Hub server).

Files on the Hub for one version (one commit on ``main``, tagged ``v{N}``):

- the version's standard PEFT files from the blob store under their recorded paths
  (``adapter_config.json``, ``adapter_model.safetensors``, tokenizer files…), except that a
  ``README.md`` the adapter itself carries is stored as ``spr_original_README.md`` (see
  :data:`registry.hub.card.RELOCATED_FILES`), because ``README.md`` is the generated model card;
- ``spr_manifest.json`` beside ``adapter_config.json``: ``{"format", "digest", "manifest",
  "record"}``. ``manifest`` is the canonical manifest (its canonical JSON hashes to ``digest``,
  the version's identity); ``record`` is what the publishing catalogue knew (name, number,
  author, time, description, tags, eval scores, aliases) and is not covered by the digest;
- ``README.md``: the model card from :mod:`registry.hub.card`.

Pull resolves a revision to a commit sha, downloads with ``hf_hub_download`` pinned to that sha
(a cached pinned file makes no HTTP request at all), checks the manifest against its digest and
every file against the manifest's sha256 and size, and only then imports the version through
:func:`registry.catalogue.import_manifest`. The Hub client checks sizes only; hashing is ours.

The token comes from :func:`registry.settings.hub_token` (``HF_TOKEN`` or the
``huggingface_hub`` login) and is handed to the client only: it is never stored, logged, put in
a result or an error message. It goes only to the endpoint the user configured
(``--endpoint``, else ``HF_ENDPOINT``, else huggingface.co): an endpoint read from a lockfile or a
recorded hub copy gets anonymous requests (see :class:`HubClient`), and a plain ``http://`` one
that is not loopback is refused. The endpoint is always passed explicitly
(:func:`registry.settings.hub_endpoint`), because ``huggingface_hub`` reads ``HF_ENDPOINT`` once,
at import time. ``huggingface_hub`` is imported inside the functions, never torch.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from registry import catalogue, settings
from registry.adapters import manifest as manifests
from registry.adapters.dataset import dataset_from_digest
from registry.adapters.reader import COMPANION_FILES, CONFIG_NAME, PICKLE_NAMES, WEIGHTS_NAME
from registry.digest import (
    PREFIX,
    parse_digest,
    sha256_bytes,
    sha256_file,
)
from registry.errors import (
    HubError,
    IntegrityError,
    InvalidAdapterError,
    LockfileDriftError,
    NotFoundError,
    RegistryError,
    UsageError,
)
from registry.hub import lockfile
from registry.hub.card import RELOCATED_FILES
from registry.hub.card import render as render_card
from registry.refs import Ref, parse_ref, split_name, validate_name
from registry.storage import BlobStore, open_store
from registry.types import FileRecord, HubCopy, VersionInfo

MANIFEST_FILENAME = "spr_manifest.json"
CARD_FILENAME = "README.md"
HUB_FORMAT = "softprompt-registry/hub/v1"
DEFAULT_BRANCH = "main"
MAX_HUB_MANIFEST_BYTES = 20_000_000
DOWNLOAD_WORKERS = 8
# Names an adapter's own files may not take: they would collide with what push adds.
RESERVED_PATHS = frozenset({MANIFEST_FILENAME, ".gitattributes", *RELOCATED_FILES.values()})

_SHA1 = re.compile(r"^[0-9a-f]{40}\Z")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}\Z")


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class RepoSpec:
    """``NS/NAME[@REVISION]`` on a Hub; ``revision`` is a branch, a tag or a 40-hex commit sha."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class PushResult:
    ref: str
    digest: str
    endpoint: str
    repo_id: str
    commit_sha: str
    tag: str
    url: str
    committed: bool  # False when the Hub already held this version (nothing was uploaded)
    tagged: bool  # False when the tag already existed


@dataclass(frozen=True)
class PullResult:
    ref: str
    digest: str
    endpoint: str
    repo_id: str
    commit_sha: str
    revision: str | None  # as asked (tag, branch, sha), or the hub copy's tag
    imported: bool  # False when the catalogue already held this version (a safe retry)
    files: int
    bytes: int
    to: str | None
    source: str  # "hub" (NS/NAME[@REV]) or "catalogue" (a catalogue ref's hub copy)
    version: VersionInfo = field(repr=False, compare=False)


@dataclass(frozen=True)
class ImportResult:
    ref: str
    digest: str
    endpoint: str
    repo_id: str
    commit_sha: str
    imported: bool
    lineage_verified: bool
    base_model: str | None
    version: VersionInfo = field(repr=False, compare=False)


@dataclass(frozen=True)
class SyncItem:
    ref: str
    digest: str
    repo_id: str
    commit_sha: str
    imported: bool
    to: str | None


@dataclass(frozen=True)
class SyncResult:
    lockfile: str
    frozen: bool
    items: tuple[SyncItem, ...]


@dataclass(frozen=True)
class HubRecord:
    """The ``record`` part of ``spr_manifest.json``, validated (it comes from a server)."""

    namespace: str
    name: str
    number: int
    author: str | None
    created_at: str | None
    description: str | None
    tags: dict[str, str]
    evals: tuple[catalogue.EvalInput, ...]


@dataclass(frozen=True)
class HubVersion:
    """A version read from a Hub commit: its manifest (verified against its digest) and record."""

    repo_id: str
    commit_sha: str
    digest: str
    manifest: dict[str, Any]
    record: HubRecord


# ---------------------------------------------------------------------------------------------
# What goes on the Hub


def hub_path(path: str) -> str:
    """Where a version's file ``path`` is stored in a Hub repo."""
    return RELOCATED_FILES.get(path, path)


def manifest_document(version: VersionInfo) -> dict[str, Any]:
    """The content of ``spr_manifest.json`` for ``version``."""
    scores = sorted(version.eval_scores, key=lambda s: (s.recorded_at, s.metric))
    return {
        "format": HUB_FORMAT,
        "digest": version.digest,
        "manifest": version.manifest,
        "record": {
            "namespace": version.namespace,
            "name": version.name,
            "number": version.number,
            "author": version.created_by,
            "created_at": _iso(version.created_at),
            "description": version.description,
            "tags": version.tags,
            "status": version.status,
            "aliases": list(version.aliases),
            "eval_scores": [
                {
                    "metric": s.metric,
                    "value": s.value,
                    "dataset": s.dataset,
                    "dataset_name": s.dataset_name,
                    "split": s.split,
                    "recorded_by": s.recorded_by,
                    "recorded_at": _iso(s.recorded_at),
                }
                for s in scores
            ],
        },
    }


def manifest_file_bytes(version: VersionInfo) -> bytes:
    """``spr_manifest.json`` as pushed: indented, sorted keys (the digest covers ``manifest`` only)."""
    return (json.dumps(manifest_document(version), indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _iso(moment: Any) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _check_pushable(version: VersionInfo) -> None:
    for f in version.files:
        if f.path in RESERVED_PATHS:
            raise InvalidAdapterError(
                f"{version.ref} has a file named {f.path!r}, which push needs for itself",
                hint="re-publish the adapter without that file",
            )


# ---------------------------------------------------------------------------------------------
# Talking to the Hub


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
    value = os.environ.get("HF_HUB_CACHE")
    if value:
        return Path(os.path.expandvars(value)).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


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
    ``hf_hub_download`` call in this module takes it from :attr:`_token`.
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

    def _redact(self, text: str) -> str:
        """``text`` with the token (if one was read) replaced: a server or client may echo it."""
        if isinstance(self._token_value, str) and self._token_value:
            return text.replace(self._token_value, "<token>")
        return text

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
        if not _SHA1.match(commit_sha):
            return None
        folder = "models--" + repo_id.replace("/", "--")
        path = self.cache_dir / folder / "snapshots" / commit_sha / filename
        return path if path.exists() else None

    def __repr__(self) -> str:  # never show the token
        return f"HubClient({self.endpoint!r})"

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
            message = (self._redact(exc.server_message or "").strip().splitlines() or [""])[0][:200]
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
        if self._redact(str(exc)) != str(exc) or any(
            isinstance(a, str) and self._redact(a) != a for a in getattr(exc, "args", ())
        ):
            # An unexpected exception whose text carries the token: never let it reach a message or log.
            return HubError(f"{what}: {type(exc).__name__}: {self._redact(str(exc))[:200]}", hint="retry; if it persists, run with --debug")
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
        if _SHA1.match(revision):
            return revision, None
        branches, tags = self.refs(repo_id)
        if revision in tags:
            return _checked_sha(tags[revision], repo_id), revision
        if revision in branches:
            return _checked_sha(branches[revision], repo_id), None
        known = ", ".join(sorted(tags)[-10:]) or "none"
        raise HubError(
            f"{repo_id} at {self.endpoint} has no tag or branch {revision!r} (tags: {known})",
            hint="pull a tag such as v1, a branch, or a 40-hex commit sha",
            reason="revision-not-found",
        )

    def download(self, repo_id: str, filename: str, commit_sha: str) -> Path:
        """Download one file pinned to ``commit_sha`` into the HF cache; returns its cached path."""
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
                )
            )

    def read_version(self, repo_id: str, commit_sha: str) -> HubVersion:
        """Read and validate ``spr_manifest.json`` at ``commit_sha``."""
        where = f"{repo_id}@{commit_sha[:12]}/{MANIFEST_FILENAME}"
        try:
            path = self.download(repo_id, MANIFEST_FILENAME, commit_sha)
        except HubError as exc:
            if exc.fields.get("reason") == "entry-not-found":
                raise HubError(
                    f"{repo_id}@{commit_sha[:12]} at {self.endpoint} has no {MANIFEST_FILENAME}: it was not pushed by spr",
                    hint=f"catalogue a plain PEFT repo with 'spr import {repo_id}@{commit_sha}'",
                    reason="no-manifest",
                ) from None
            raise
        if path.stat().st_size > MAX_HUB_MANIFEST_BYTES:
            raise InvalidAdapterError(f"{where} is larger than {MAX_HUB_MANIFEST_BYTES} bytes")
        return parse_hub_manifest(path.read_bytes(), repo_id=repo_id, commit_sha=commit_sha, where=where)

    def fetch_files(self, repo_id: str, commit_sha: str, files: Sequence[dict[str, Any]]) -> dict[str, Path]:
        """Download every file of a manifest pinned to ``commit_sha`` and check its sha256 and size.

        Returns ``path -> cached file``. Raises :class:`IntegrityError` naming the first file that
        differs; that file is evicted from the HF cache so a retry downloads it again.
        """
        def one(entry: dict[str, Any]) -> tuple[str, Path]:
            return entry["path"], self.download(repo_id, hub_path(entry["path"]), commit_sha)

        workers = max(1, min(DOWNLOAD_WORKERS, len(files)))
        if workers == 1:
            fetched = dict(one(e) for e in files)
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="spr-pull") as pool:
                fetched = dict(pool.map(one, files))
        for entry in files:
            cached = fetched[entry["path"]]
            real = Path(os.path.realpath(cached))
            sha, size = sha256_file(real)
            if sha != entry["sha256"] or size != entry["size"]:
                _evict(cached, real)
                raise IntegrityError(
                    f"{repo_id}@{commit_sha[:12]}: file {entry['path']!r} is sha256:{sha} ({size} bytes) but the "
                    f"manifest says sha256:{entry['sha256']} ({entry['size']} bytes)",
                    hint="the copy on the Hub was changed or truncated after it was pushed; nothing was imported",
                    path=entry["path"],
                    expected=entry["sha256"],
                    found=sha,
                )
            fetched[entry["path"]] = real
        return fetched


def _same_endpoint(a: str, b: str) -> bool:
    """Whether two endpoint URLs name the same server (compared normalised; malformed: not the same)."""
    try:
        return normalise_endpoint(a) == normalise_endpoint(b)
    except UsageError:
        return False


def _checked_sha(value: Any, repo_id: str) -> str:
    if not isinstance(value, str) or not _SHA1.match(value):
        raise HubError(f"the Hub answered a malformed commit id for {repo_id}: {str(value)[:60]!r}")
    return value


def _evict(pointer: Path, blob: Path) -> None:
    for p in (pointer, blob):
        with contextlib.suppress(OSError):
            p.unlink()


def parse_hub_manifest(data: bytes, *, repo_id: str, commit_sha: str, where: str) -> HubVersion:
    """Validate ``spr_manifest.json`` bytes from a server (untrusted) into a :class:`HubVersion`.

    Raises :class:`IntegrityError` when the manifest does not hash to the digest it claims and
    :class:`InvalidAdapterError` when anything is malformed (hostile paths included).
    """
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError):
        raise InvalidAdapterError(f"{where} is not valid JSON", hint="the copy on the Hub is damaged; push it again") from None
    if not isinstance(doc, dict) or doc.get("format") != HUB_FORMAT:
        raise InvalidAdapterError(
            f"{where}: expected format {HUB_FORMAT!r}",
            hint="it was pushed by an incompatible spr; push it again",
        )
    digest_text = doc.get("digest")
    inner = doc.get("manifest")
    if not isinstance(digest_text, str) or not isinstance(inner, dict):
        raise InvalidAdapterError(f"{where}: 'digest' and 'manifest' are required")
    digest = PREFIX + parse_digest(digest_text)
    manifest = manifests.parse(manifests.encode(inner), expected_digest=digest, where=where)
    for entry in manifest["files"]:
        if entry["path"] in RESERVED_PATHS:
            raise InvalidAdapterError(f"{where}: the manifest lists the reserved file {entry['path']!r}")
    if not any(e["path"] == CONFIG_NAME for e in manifest["files"]):
        raise InvalidAdapterError(f"{where}: the manifest lists no {CONFIG_NAME}")
    record = _parse_record(doc.get("record"), where)
    return HubVersion(repo_id=repo_id, commit_sha=commit_sha, digest=digest, manifest=manifest, record=record)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _parse_record(raw: Any, where: str) -> HubRecord:
    def bad(message: str) -> InvalidAdapterError:
        return InvalidAdapterError(f"{where}: record: {message}", hint="the copy on the Hub is damaged; push it again")

    if not isinstance(raw, dict):
        raise bad("expected an object")

    def opt_text(key: str, limit: int) -> str | None:
        value = raw.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or len(value) > limit:
            raise bad(f"{key!r} must be a string of at most {limit} characters")
        return value

    try:
        namespace = validate_name(str(raw.get("namespace")), "namespace")
        name = validate_name(str(raw.get("name")), "name")
    except UsageError as exc:
        raise bad(exc.message) from None
    number = raw.get("number")
    if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= 10**9:
        raise bad("'number' must be a positive integer")
    tags_raw = raw.get("tags") or {}
    if not isinstance(tags_raw, dict) or len(tags_raw) > catalogue.MAX_TAGS:
        raise bad(f"'tags' must be an object of at most {catalogue.MAX_TAGS} entries")
    tags: dict[str, str] = {}
    for key, value in tags_raw.items():
        if not isinstance(value, str) or not key or len(key) > 100 or len(value) > 1000:
            raise bad(f"malformed tag {str(key)[:40]!r}")
        tags[key] = value
    scores_raw = raw.get("eval_scores") or []
    if not isinstance(scores_raw, list) or len(scores_raw) > 10_000:
        raise bad("'eval_scores' must be a list")
    evals = []
    for s in scores_raw:
        if not isinstance(s, dict):
            raise bad("every eval score must be an object")
        metric, value = s.get("metric"), s.get("value")
        if not isinstance(metric, str) or not metric or len(metric) > 100:
            raise bad("an eval score has no valid 'metric'")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise bad(f"eval score {metric!r} has no finite 'value'")
        dataset = s.get("dataset")
        dataset_name = s.get("dataset_name")
        split = s.get("split")
        # The catalogue's column sizes (eval_score.dataset_name 1000, .split 100).
        for label, text, limit in (("dataset_name", dataset_name, 1000), ("split", split, 100)):
            if text is not None and (not isinstance(text, str) or len(text) > limit):
                raise bad(f"eval score {metric!r}: malformed {label} (a string of at most {limit} characters)")
        try:
            info = dataset_from_digest(dataset, dataset_name) if dataset is not None else None
        except (UsageError, AttributeError, TypeError):
            raise bad(f"eval score {metric!r}: malformed dataset digest") from None
        evals.append(catalogue.EvalInput(metric=metric, value=float(value), dataset=info, dataset_name=dataset_name, split=split))
    return HubRecord(
        namespace=namespace,
        name=name,
        number=number,
        author=opt_text("author", 200),
        created_at=opt_text("created_at", 40),
        description=opt_text("description", 100_000),
        tags=tags,
        evals=tuple(evals),
    )


# ---------------------------------------------------------------------------------------------
# Push


def push(
    ref: str,
    repo_id: str,
    *,
    private: bool = False,
    endpoint: str | None = None,
    db: str | None = None,
) -> PushResult:
    """Push the version ``ref`` to the Hub repo ``repo_id`` as one commit on ``main`` tagged ``v{N}``.

    Creates the repo (private with ``private=True``) when it does not exist. Uploads the version's
    files (each re-verified against its sha256 first), ``spr_manifest.json`` and the model card;
    files of the previous version that this one lacks are deleted in the same commit. Pushing a
    version the repo already holds (tag ``v{N}`` on a commit with the same manifest digest)
    uploads nothing; a push interrupted after its commit finishes by tagging that commit.
    Records the hub copy and a ``push`` event. Raises :class:`HubError` (the Hub refused or is
    unreachable), :class:`IntegrityError` (a stored blob changed), :class:`NotFoundError`.
    """
    spec = parse_repo_spec(repo_id)
    if spec.revision:
        raise UsageError(f"--repo takes NS/NAME without a revision, found {repo_id!r}", hint="push always tags v{N}")
    repo_id = spec.repo_id
    version = catalogue.get_version(ref, db=db)
    _check_pushable(version)
    store = open_store()
    for f in version.files:  # never publish bytes that no longer match the catalogue
        store.verify(f.sha256)
    hub = HubClient(endpoint, need_token=True)
    tag = f"v{version.number}"
    try:
        branches, tags = hub.refs(repo_id, f"pushing {version.ref}")
    except HubError as exc:
        if exc.fields.get("reason") != "repo-not-found":
            raise
        with hub.call("creating the repo", repo_id):
            hub.api.create_repo(repo_id, private=private, exist_ok=True)
        branches, tags = hub.refs(repo_id)

    if tag in tags:
        tagged_sha = _checked_sha(tags[tag], repo_id)
        existing = hub.read_version(repo_id, tagged_sha)
        if existing.digest != version.digest:
            raise HubError(
                f"tag {tag} of {repo_id} at {hub.endpoint} already holds another version ({existing.digest}), "
                f"not {version.ref} ({version.digest})",
                hint="push to another repo; a published tag is never moved",
                reason="tag-conflict",
            )
        return _pushed(version, hub, repo_id, tagged_sha, tag, committed=False, tagged=False, db=db)

    head = branches.get(DEFAULT_BRANCH)
    manifest_bytes = manifest_file_bytes(version)
    commit_sha: str | None = None
    stale: list[str] = []
    if head is not None:
        head = _checked_sha(head, repo_id)
        remote = _tree(hub, repo_id, head)
        if _holds_version(remote, version, manifest_bytes):
            commit_sha = head  # an earlier push committed but was cut off before tagging
        wanted = {hub_path(f.path) for f in version.files} | {MANIFEST_FILENAME, CARD_FILENAME, ".gitattributes"}
        stale = sorted(p for p in remote if p not in wanted)
    committed = False
    if commit_sha is None:
        commit_sha = _commit(hub, repo_id, version, manifest_bytes, stale, parent=head)
        committed = True
    with hub.call(f"creating tag {tag}", repo_id):
        from huggingface_hub.errors import HfHubHTTPError

        try:
            hub.api.create_tag(repo_id, tag=tag, revision=commit_sha, tag_message=f"{version.ref} {version.digest}")
        except HfHubHTTPError as exc:
            if getattr(exc.response, "status_code", None) != 409:
                raise
            # Someone tagged it meanwhile (a concurrent push of the same version): accept it only if it holds our digest.
            _, tags = hub.refs(repo_id)
            other = _checked_sha(tags.get(tag, ""), repo_id)
            if hub.read_version(repo_id, other).digest != version.digest:
                raise HubError(
                    f"tag {tag} of {repo_id} was just created by someone else for another version",
                    hint="push to another repo",
                    reason="tag-conflict",
                ) from None
            commit_sha = other
    return _pushed(version, hub, repo_id, commit_sha, tag, committed=committed, tagged=True, db=db)


def _tree(hub: HubClient, repo_id: str, commit_sha: str) -> dict[str, Any]:
    """``path -> RepoFile`` of every file at ``commit_sha``."""
    from huggingface_hub.hf_api import RepoFile

    with hub.call("listing files", repo_id, revision=commit_sha):
        return {
            item.path: item
            for item in hub.api.list_repo_tree(repo_id, revision=commit_sha, recursive=True)
            if isinstance(item, RepoFile)
        }


def _holds_version(tree: dict[str, Any], version: VersionInfo, manifest_bytes: bytes) -> bool:
    """Whether a commit's tree already is exactly this version: same ``spr_manifest.json`` bytes and
    every file with the same content (LFS sha256, or git blob id for regular files), read from the
    tree listing alone (no download). The card may differ (it is regenerated on every push)."""
    store = open_store()
    def manifest_oid() -> str:
        return _git_blob_sha1_bytes(manifest_bytes)

    wanted: dict[str, tuple[int, Callable[[], str], str]] = {
        MANIFEST_FILENAME: (len(manifest_bytes), manifest_oid, sha256_bytes(manifest_bytes)),
    }
    for f in version.files:
        wanted[hub_path(f.path)] = (f.size, _file_oid(store.local_path(f.sha256), f.size), f.sha256)
    for repo_path, (size, git_oid, sha256) in wanted.items():
        entry = tree.get(repo_path)
        if entry is None or entry.size != size:
            return False
        lfs = getattr(entry, "lfs", None)
        if lfs is not None:
            if getattr(lfs, "sha256", None) != sha256:
                return False
        elif getattr(entry, "blob_id", None) != git_oid():
            return False
    return True


def _file_oid(path: Path, size: int) -> Callable[[], str]:
    """The git blob id of a stored file, computed only if asked (LFS entries carry a sha256 instead)."""
    return lambda: _git_blob_sha1_file(path, size)


def _git_blob_sha1_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _git_blob_sha1_file(path: Path, size: int) -> str:
    import hashlib

    h = hashlib.sha1(b"blob %d\0" % size, usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _commit(
    hub: HubClient, repo_id: str, version: VersionInfo, manifest_bytes: bytes, stale: list[str], *, parent: str | None
) -> str:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    store = open_store()
    operations: list[Any] = [
        CommitOperationAdd(path_in_repo=hub_path(f.path), path_or_fileobj=str(store.local_path(f.sha256)))
        for f in version.files
    ]
    operations.append(CommitOperationAdd(path_in_repo=MANIFEST_FILENAME, path_or_fileobj=manifest_bytes))
    operations.append(CommitOperationAdd(path_in_repo=CARD_FILENAME, path_or_fileobj=render_card(version, repo_id).encode("utf-8")))
    operations += [CommitOperationDelete(path_in_repo=p) for p in stale]
    with hub.call(f"pushing {version.ref}", repo_id):
        info = hub.api.create_commit(
            repo_id,
            operations=operations,
            commit_message=f"spr: {version.full_name} v{version.number} ({version.digest})",
            commit_description=f"{version.ref} published by {version.created_by}; manifest digest {version.digest}",
            revision=DEFAULT_BRANCH,
            parent_commit=parent,
        )
    return _checked_sha(info.oid, repo_id)


def _pushed(
    version: VersionInfo, hub: HubClient, repo_id: str, commit_sha: str, tag: str, *, committed: bool, tagged: bool,
    db: str | None,
) -> PushResult:
    catalogue.record_hub_copy(
        version.ref, endpoint=hub.endpoint, repo_id=repo_id, commit_sha=commit_sha, tag=tag, db=db, action="push"
    )
    return PushResult(
        ref=version.ref,
        digest=version.digest,
        endpoint=hub.endpoint,
        repo_id=repo_id,
        commit_sha=commit_sha,
        tag=tag,
        url=f"{hub.endpoint}/{repo_id}/tree/{tag}",
        committed=committed,
        tagged=tagged,
    )


# ---------------------------------------------------------------------------------------------
# Pull


def pull(
    target: str,
    *,
    to: Path | str | None = None,
    endpoint: str | None = None,
    db: str | None = None,
    name: str | None = None,
) -> PullResult:
    """Fetch a version from the Hub, verify every byte, and import it into the catalogue.

    ``target`` is either a Hub repo ``NS/NAME[@TAG|@BRANCH|@SHA]`` (default ``main``), imported as
    ``name`` (default: the repo id) with the publisher's version number when it is free; or a
    catalogue ref with a hub copy (``ns/name@N``, ``@sha256:…``, or an alias this catalogue has),
    fetched from the commit recorded for it. Everything is checked before anything is written:
    the manifest against its digest (and against the catalogue's digest for a catalogue ref),
    every file against the manifest's sha256 and size. A recorded hub copy's endpoint gets the
    token only when it is the configured one (see :class:`HubClient`). A version the catalogue already holds
    under that name (same digest, blobs present) is not downloaded again, only its manifest is
    read, so repeating a pinned pull makes no HTTP request at all. ``to`` also writes the files as a standard PEFT directory
    (atomically; an existing directory must be empty or already hold exactly these files).

    Raises :class:`IntegrityError` (tampered or truncated remote copy: nothing imported),
    :class:`HubError`, :class:`NotFoundError`, :class:`UsageError`.
    """
    local = _catalogue_target(target, db)
    if local is not None:
        copy = _pick_copy(local, endpoint)
        hub = HubClient(endpoint, recorded=copy.endpoint)  # the recorded endpoint gets no token unless configured
        commit_sha, revision, repo_id = copy.commit_sha, copy.tag, copy.repo_id
        import_as = local.full_name
        expected = local.digest
        source = "catalogue"
    else:
        spec = parse_repo_spec(target)
        hub = HubClient(endpoint)
        commit_sha, tag = hub.resolve(spec.repo_id, spec.revision)
        revision, repo_id = spec.revision or DEFAULT_BRANCH, spec.repo_id
        import_as = _import_name(name, repo_id)
        expected = None
        source = "hub"
        tag = tag or (spec.revision if spec.revision and not _SHA1.match(spec.revision) else None)
    remote = hub.read_version(repo_id, commit_sha)
    if expected is not None and remote.digest != expected:
        raise IntegrityError(
            f"{repo_id}@{commit_sha[:12]} at {hub.endpoint} holds {remote.digest}, but the catalogue's "
            f"{local.ref if local else target} is {expected}",
            hint="the hub copy was replaced; do not use it",
            expected=expected,
            found=remote.digest,
        )
    present = _present(import_as, remote.digest, db)
    if present is None:
        files = hub.fetch_files(repo_id, commit_sha, remote.manifest["files"])
        version, created = _import_verified(remote, files, import_as, hub, db=db)
    else:  # already imported and verified then: the blob store, not the HF cache, is what counts now
        version, created = present, False
    hub_tag = revision if (local is not None) else (tag if source == "hub" else None)
    version = _record_pull(version, hub, repo_id, commit_sha, hub_tag, db=db)
    written = _write_to(version, Path(to), db=db) if to is not None else None
    return PullResult(
        ref=version.ref,
        digest=version.digest,
        endpoint=hub.endpoint,
        repo_id=repo_id,
        commit_sha=commit_sha,
        revision=revision,
        imported=created,
        files=len(version.files),
        bytes=sum(f.size for f in version.files),
        to=str(written) if written is not None else None,
        source=source,
        version=version,
    )


def _catalogue_target(target: str, db: str | None) -> VersionInfo | None:
    """The catalogue version ``target`` names, or None when it names a Hub repo (see :func:`pull`)."""
    base, sep, selector = target.partition("@")
    if not sep or _SHA1.match(selector):
        return None
    try:
        ref = parse_ref(target)
    except UsageError:
        return None
    if ref.number is None and ref.digest is None:
        try:  # an alias: a catalogue ref only if this catalogue has it and it was pushed
            version = catalogue.get_version(ref, db=db)
        except NotFoundError:
            return None
        return version if version.hub_copies else None
    try:
        return catalogue.get_version(ref, db=db)
    except NotFoundError as exc:
        hint = f"to pull tag v{ref.number} from the Hub, run 'spr pull {base}@v{ref.number}'" if ref.number else exc.hint
        raise type(exc)(exc.message, hint=hint, **exc.fields) from None


def _pick_copy(version: VersionInfo, endpoint: str | None) -> HubCopy:
    if not version.hub_copies:
        raise HubError(
            f"{version.ref} has no copy on a Hub",
            hint=f"push it first: spr push {version.ref} --repo NS/NAME",
            reason="no-hub-copy",
        )
    copies = sorted(version.hub_copies, key=lambda c: c.pushed_at, reverse=True)
    if endpoint is not None or os.environ.get("HF_ENDPOINT"):
        wanted = settings.hub_endpoint(endpoint)
        matching = [c for c in copies if c.endpoint == wanted]
        if matching:
            return matching[0]
        if endpoint is not None:
            raise HubError(
                f"{version.ref} has no copy on {wanted} (it is on {', '.join(sorted({c.endpoint for c in copies}))})",
                hint="leave out --endpoint to use the recorded one",
                reason="no-hub-copy",
            )
    return copies[0]


def _import_name(name: str | None, repo_id: str) -> str:
    namespace, short = split_name(name or repo_id)
    return f"{namespace}/{short}"


def _find(name: str, digest: str, db: str | None) -> VersionInfo | None:
    namespace, short = split_name(name)
    try:
        return catalogue.get_version(Ref(namespace, short, digest=parse_digest(digest)), db=db)
    except NotFoundError:
        return None


@contextlib.contextmanager
def _staging(files: dict[str, Path]) -> Iterator[Path]:
    """A private directory holding ``files`` as regular files (hard links where possible).

    The HF cache keeps files as symlinks, which the catalogue rightly refuses to follow.
    """
    root = settings.home() / "tmp"
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".spr-pull-", dir=root))
    try:
        for rel, source in files.items():
            dest = staging / manifests.check_relative_path(rel, "manifest")
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, dest)
            except OSError:
                shutil.copyfile(source, dest)
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _present(name: str, digest: str, db: str | None) -> VersionInfo | None:
    """The version ``name`` holds with ``digest`` when all its blobs are in the store, else None."""
    existing = _find(name, digest, db)
    store = open_store()
    if existing is not None and all(store.has(f.sha256) for f in existing.files):
        return existing
    return None


def _import_verified(
    remote: HubVersion, files: dict[str, Path], name: str, hub: HubClient, *, db: str | None
) -> tuple[VersionInfo, bool]:
    existing = _present(name, remote.digest, db)
    if existing is not None:
        return existing, False
    record = remote.record
    with _staging(files) as staging:
        result = catalogue.import_manifest(
            staging,
            name,
            remote.manifest,
            db=db,
            author=record.author,
            description=record.description,
            tags=record.tags,
            evals=record.evals,
            lineage_verified=True,
            preferred_number=record.number,
            details={
                "endpoint": hub.endpoint,
                "repo": remote.repo_id,
                "commit": remote.commit_sha,
                "published_as": f"{record.namespace}/{record.name}@{record.number}",
                "pulled_by": settings.current_actor(),
            },
        )
    return result.version, result.created


def _record_pull(
    version: VersionInfo, hub: HubClient, repo_id: str, commit_sha: str, tag: str | None, *, db: str | None
) -> VersionInfo:
    for copy in version.hub_copies:
        same_commit = copy.endpoint == hub.endpoint and copy.repo_id == repo_id and copy.commit_sha == commit_sha
        if same_commit and (tag is None or copy.tag == tag):
            return version  # already recorded: a repeated pull writes nothing
    return catalogue.record_hub_copy(
        version.ref, endpoint=hub.endpoint, repo_id=repo_id, commit_sha=commit_sha, tag=tag, db=db, action="pull"
    )


def _dir_matches(directory: Path, files: Sequence[FileRecord]) -> bool:
    """Whether ``directory`` holds exactly ``files`` (names, sizes and sha256)."""
    present = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file() or p.is_symlink())
    if present != sorted(f.path for f in files):
        return False
    for f in files:
        path = directory / f.path
        if path.is_symlink() or path.stat().st_size != f.size or sha256_file(path)[0] != f.sha256:
            return False
    return True


def _write_to(version: VersionInfo, destination: Path, *, db: str | None) -> Path:
    if destination.exists() and destination.is_dir() and any(destination.iterdir()):
        if _dir_matches(destination, version.files):
            return destination
        raise UsageError(
            f"{destination} already holds other files than {version.ref}",
            hint="choose a new or empty directory",
        )
    return catalogue.export(version.ref, destination, db=db)


# ---------------------------------------------------------------------------------------------
# Import of a plain PEFT repo


def import_repo(
    target: str,
    *,
    name: str | None = None,
    endpoint: str | None = None,
    db: str | None = None,
    description: str | None = None,
) -> ImportResult:
    """Catalogue a plain PEFT adapter repo (no ``spr_manifest.json``) from the Hub.

    Downloads ``adapter_config.json``, ``adapter_model.safetensors`` and the companion files the
    catalogue keeps, pinned to the resolved commit, and publishes them as ``name`` (default: the
    repo id) with what can be known: the base model from ``adapter_config.json``, tags naming
    the source (``hub.repo``, ``hub.commit``, ``hub.endpoint``), and lineage marked unverified.
    A repo holding only a pickled ``adapter_model.bin`` is refused. Idempotent (same bytes, same
    version). Raises :class:`InvalidAdapterError`, :class:`HubError`, :class:`UsageError`.
    """
    spec = parse_repo_spec(target)
    hub = HubClient(endpoint)
    commit_sha, tag = hub.resolve(spec.repo_id, spec.revision)
    tree = _tree(hub, spec.repo_id, commit_sha)
    if MANIFEST_FILENAME in tree:
        raise UsageError(
            f"{spec.repo_id}@{commit_sha[:12]} was pushed by spr (it has {MANIFEST_FILENAME})",
            hint=f"pull it with its verified lineage: spr pull {spec.repo_id}@{commit_sha}",
        )
    if CONFIG_NAME not in tree:
        raise InvalidAdapterError(
            f"{spec.repo_id}@{commit_sha[:12]} has no {CONFIG_NAME}: it is not a PEFT adapter repo",
            hint="spr imports repos that PEFT's save_pretrained()/push_to_hub() wrote",
        )
    if WEIGHTS_NAME not in tree:
        pickled = [n for n in PICKLE_NAMES if n in tree]
        raise InvalidAdapterError(
            f"{spec.repo_id}@{commit_sha[:12]} has no {WEIGHTS_NAME}"
            + (f", only {pickled[0]} (a pickle, which is never loaded: unpickling runs arbitrary code)" if pickled else ""),
            hint="ask the publisher to push safetensors weights (save_pretrained(safe_serialization=True))",
        )
    wanted = [p for p in (CONFIG_NAME, WEIGHTS_NAME, *COMPANION_FILES) if p in tree]
    downloaded: dict[str, Path] = {}
    for path in wanted:
        downloaded[path] = Path(os.path.realpath(hub.download(spec.repo_id, path, commit_sha)))
    import_as = _import_name(name, spec.repo_id)
    options = catalogue.PublishOptions(
        description=description,
        tags={"hub.repo": spec.repo_id, "hub.commit": commit_sha, "hub.endpoint": hub.endpoint, "source": "hub-import"},
        lineage_verified=False,
    )
    with _staging(downloaded) as staging:
        result = catalogue.publish(staging, import_as, db=db, options=options)
    version = catalogue.record_hub_copy(
        result.version.ref, endpoint=hub.endpoint, repo_id=spec.repo_id, commit_sha=commit_sha, tag=tag, db=db,
        action="hub-import",
    )
    return ImportResult(
        ref=version.ref,
        digest=version.digest,
        endpoint=hub.endpoint,
        repo_id=spec.repo_id,
        commit_sha=commit_sha,
        imported=result.created,
        lineage_verified=version.lineage_verified,
        base_model=version.base_model.name if version.base_model else None,
        version=version,
    )


# ---------------------------------------------------------------------------------------------
# Lockfiles


def lock(
    refs: Sequence[str],
    output: Path | str | None = None,
    *,
    db: str | None = None,
    endpoint: str | None = None,
) -> lockfile.Lockfile:
    """Pin versions for a deploy script; writes ``output`` when given and returns the lockfile.

    Each ref is a catalogue ref (any form, including a bare name for the latest version) whose
    version has a hub copy: locked offline from the catalogue. A name the catalogue does not
    know is read as a Hub repo ``NS/NAME[@REV]``: its revision is resolved to a commit and its
    manifest read (and checked) from the Hub. Raises :class:`HubError` for a version never pushed.
    """
    if not refs:
        raise UsageError("name at least one version to lock", hint="spr lock team/coach@prod -o adapters.lock")
    entries: dict[tuple[str, int], lockfile.LockEntry] = {}
    for text in refs:
        entry = _lock_entry(text, db=db, endpoint=endpoint)
        entries[(entry.name, entry.version)] = entry
    result = lockfile.Lockfile(entries=tuple(entries[k] for k in sorted(entries)))
    if output is not None:
        lockfile.write(result, output)
    return result


def _lock_entry(text: str, *, db: str | None, endpoint: str | None) -> lockfile.LockEntry:
    version: VersionInfo | None = None
    base = text.partition("@")[0]
    try:
        ref = parse_ref(text)
    except UsageError:
        ref = None
    if ref is not None:
        try:
            version = catalogue.get_version(ref, db=db)
        except NotFoundError as exc:
            from registry.errors import AdapterNotFoundError

            if not isinstance(exc, AdapterNotFoundError) or "/" not in base:
                raise
    if version is not None:
        copy = _pick_copy(version, endpoint)
        return lockfile.LockEntry(
            name=version.full_name,
            version=version.number,
            digest=version.digest,
            repo=copy.repo_id,
            endpoint=copy.endpoint,
            commit=copy.commit_sha,
            tag=copy.tag,
            files=tuple(lockfile.LockedFile(f.path, f.sha256, f.size) for f in version.files),
        )
    spec = parse_repo_spec(text)
    hub = HubClient(endpoint)
    commit_sha, tag = hub.resolve(spec.repo_id, spec.revision)
    remote = hub.read_version(spec.repo_id, commit_sha)
    return lockfile.LockEntry(
        name=spec.repo_id,
        version=remote.record.number,
        digest=remote.digest,
        repo=spec.repo_id,
        endpoint=hub.endpoint,
        commit=commit_sha,
        tag=tag,
        files=tuple(lockfile.LockedFile(f["path"], f["sha256"], f["size"]) for f in remote.manifest["files"]),
    )


def sync(
    path: Path | str,
    *,
    to: Path | str | None = None,
    frozen: bool = False,
    db: str | None = None,
    endpoint: str | None = None,
) -> SyncResult:
    """Fetch exactly the commits a lockfile pins, verify them, and import them.

    Every entry is fetched and checked before anything is imported: the commit must exist, its
    manifest must hash to the locked digest and list the locked files, and every file must hash
    to the locked sha256. Without ``frozen`` a tag is never resolved (the commit is what counts)
    and a version may land under another number if the local catalogue already used the locked
    one. With ``frozen`` the Hub and the catalogue must match the lockfile exactly: every tag it
    names must still point at its commit, each version must land as exactly ``name@version``,
    and in both modes every existing ``to`` directory is checked before anything is fetched or
    imported: it must be empty or already hold the locked files. ``to`` receives one
    standard PEFT directory per entry, ``TO/<namespace>/<name>@<version>``. ``endpoint``
    overrides the lockfile's endpoints (a mirror). The token is sent only to the configured
    endpoint (``endpoint``, else ``HF_ENDPOINT``, else huggingface.co); a lockfile's other
    endpoints are read anonymously, and a plain-http one that is not loopback is refused
    (:class:`UsageError`) before any request. A version already in the catalogue under its
    name is checked through its manifest only (no file download). Raises :class:`LockfileDriftError` naming the
    entry and the drift, :class:`HubError`, :class:`UsageError`.
    """
    lock_path = Path(path)
    locked = lockfile.read(lock_path)
    if not locked.entries:
        raise UsageError(f"lockfile {lock_path} pins no adapters")
    clients: dict[str, HubClient] = {}
    for entry in locked.entries:
        # Every client first: a refused endpoint (plain http, not configured) fails before any request.
        # The lockfile's endpoints are untrusted: only the configured one gets the token (HubClient).
        ep = settings.hub_endpoint(endpoint) if endpoint else entry.endpoint
        if ep not in clients:
            clients[ep] = HubClient(endpoint, recorded=entry.endpoint)
    if to is not None:
        # Every target directory before anything is fetched or imported, in both modes: a
        # conflict on a later entry must not leave earlier ones imported and written.
        for entry in locked.entries:
            _check_target_dir(entry, _sync_dir(Path(to), entry), frozen=frozen)
    refs_cache: dict[tuple[str, str], dict[str, str]] = {}
    fetched: list[tuple[lockfile.LockEntry, HubClient, HubVersion, dict[str, Path] | None]] = []
    for entry in locked.entries:
        hub = clients[settings.hub_endpoint(endpoint) if endpoint else entry.endpoint]
        present = _present(entry.name, entry.digest, db)
        remote, files = _fetch_locked(entry, hub, frozen=frozen, refs_cache=refs_cache, download=present is None)
        if frozen:
            _check_frozen_catalogue(entry, db)
        fetched.append((entry, hub, remote, files))
    items = []
    for entry, hub, remote, files in fetched:
        if files is None:
            version, created = catalogue.get_version(f"{entry.name}@{entry.digest}", db=db), False
        else:
            version, created = _import_verified(remote, files, entry.name, hub, db=db)
        version = _record_pull(version, hub, entry.repo, entry.commit, entry.tag, db=db)
        written = None
        if to is not None:
            written = _write_to(version, _sync_dir(Path(to), entry), db=db)
        items.append(
            SyncItem(
                ref=version.ref, digest=version.digest, repo_id=entry.repo, commit_sha=entry.commit, imported=created,
                to=str(written) if written else None,
            )
        )
    return SyncResult(lockfile=str(lock_path), frozen=frozen, items=tuple(items))


def _sync_dir(root: Path, entry: lockfile.LockEntry) -> Path:
    namespace, short = split_name(entry.name)
    return root / namespace / f"{short}@{entry.version}"


def _drift(entry: lockfile.LockEntry, message: str, hint: str, **fields: Any) -> LockfileDriftError:
    return LockfileDriftError(f"lockfile drift for {entry.ref} ({entry.repo}@{entry.commit[:12]}): {message}", hint=hint, **fields)


def _fetch_locked(
    entry: lockfile.LockEntry, hub: HubClient, *, frozen: bool, refs_cache: dict[tuple[str, str], dict[str, str]],
    download: bool = True,
) -> tuple[HubVersion, dict[str, Path] | None]:
    regenerate = "if the change is intended, regenerate the lockfile with 'spr lock'"
    if frozen and entry.tag:
        key = (hub.endpoint, entry.repo)
        if key not in refs_cache:
            try:
                refs_cache[key] = hub.refs(entry.repo)[1]
            except HubError as exc:
                if exc.fields.get("reason") == "repo-not-found":
                    raise _drift(
                        entry, f"the repo is gone from {hub.endpoint}" + ("" if hub.token_allowed else " (or is private)"),
                        regenerate + ("" if hub.token_allowed else hub._anonymous_hint()), reason="missing-repo",
                    ) from None
                raise
        target = refs_cache[key].get(entry.tag)
        if target is None:
            raise _drift(entry, f"tag {entry.tag} no longer exists", regenerate, reason="tag-missing")
        if target != entry.commit:
            raise _drift(
                entry,
                f"tag {entry.tag} moved from {entry.commit} to {target}",
                "someone re-pointed a release tag; " + regenerate,
                reason="tag-moved",
                expected=entry.commit,
                found=target,
            )
    try:
        remote = hub.read_version(entry.repo, entry.commit)
    except HubError as exc:
        reason = exc.fields.get("reason")
        if reason in ("repo-not-found", "revision-not-found", "no-manifest", "entry-not-found"):
            what = {
                "repo-not-found": f"the repo is gone from {hub.endpoint} (or is private to you)",
                "revision-not-found": f"commit {entry.commit} no longer exists in the repo",
            }.get(reason, f"the commit holds no {MANIFEST_FILENAME}")
            hint = regenerate + ("" if hub.token_allowed or reason != "repo-not-found" else hub._anonymous_hint())
            raise _drift(entry, f"missing version: {what}", hint, reason="missing-version") from None
        raise
    except IntegrityError as exc:
        raise _drift(entry, exc.message, "the copy on the Hub was changed; do not deploy it", reason="manifest-changed") from None
    if remote.digest != entry.digest:
        raise _drift(
            entry,
            f"the manifest digest differs: the Hub has {remote.digest}, the lockfile {entry.digest}",
            regenerate,
            reason="digest-differs",
            expected=entry.digest,
            found=remote.digest,
        )
    hub_files = {f["path"]: (f["sha256"], f["size"]) for f in remote.manifest["files"]}
    locked_files = {f.path: (f.sha256, f.size) for f in entry.files}
    if hub_files != locked_files:
        changed = sorted(p for p in set(hub_files) | set(locked_files) if hub_files.get(p) != locked_files.get(p))
        raise _drift(
            entry,
            f"the lockfile's file list differs from the manifest it pins ({', '.join(changed[:5])})",
            "the lockfile was edited; regenerate it with 'spr lock'",
            reason="files-differ",
        )
    if not download:
        return remote, None
    try:
        files = hub.fetch_files(entry.repo, entry.commit, remote.manifest["files"])
    except IntegrityError as exc:
        raise _drift(
            entry, f"changed bytes: {exc.message.split(': ', 1)[-1]}", "the copy on the Hub was changed; do not deploy it",
            reason="bytes-changed", path=exc.fields.get("path"),
        ) from None
    return remote, files


def _check_frozen_catalogue(entry: lockfile.LockEntry, db: str | None) -> None:
    namespace, short = split_name(entry.name)
    try:
        present = catalogue.get_version(Ref(namespace, short, number=entry.version), db=db)
    except NotFoundError:
        present = None
    if present is not None:
        if present.digest != entry.digest:
            raise _drift(
                entry,
                f"this catalogue's {entry.ref} is another version ({present.digest})",
                "--frozen needs every version to land under its locked number; use another catalogue (--db)",
                reason="catalogue-differs",
            )
        return
    other = _find(entry.name, entry.digest, db)
    if other is not None:
        raise _drift(
            entry, f"this catalogue already holds it as {other.ref}",
            "--frozen needs every version under its locked number; use another catalogue (--db)", reason="catalogue-differs",
        )
    try:
        taken = max((v.number for v in catalogue.versions(entry.name, db=db)), default=0)
    except NotFoundError:
        taken = 0
    if taken >= entry.version:
        raise _drift(
            entry, f"version number {entry.version} is not free in this catalogue (it has up to {taken})",
            "--frozen needs every version under its locked number; use another catalogue (--db)", reason="catalogue-differs",
        )


def _check_target_dir(entry: lockfile.LockEntry, directory: Path, *, frozen: bool) -> None:
    """Refuse a target directory that exists and is neither empty nor already exactly the locked files.

    :class:`LockfileDriftError` with ``frozen`` (the deploy does not match the lockfile), else
    :class:`UsageError` (as :func:`_write_to` would say, but before anything was imported).
    """
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        files = [FileRecord(f.path, f.sha256, f.size) for f in entry.files]
        if not directory.is_dir() or not _dir_matches(directory, files):
            if not frozen:
                raise UsageError(
                    f"{directory} already holds other files than {entry.ref}; nothing was imported or written",
                    hint="choose a new or empty directory (--to)",
                )
            raise _drift(
                entry, f"{directory} holds other files than the lockfile pins",
                "remove the directory, or deploy into a new one", reason="target-differs",
            )


__all__ = [
    "CARD_FILENAME", "HUB_FORMAT", "MANIFEST_FILENAME", "HubClient", "HubRecord", "HubVersion", "ImportResult",
    "PullResult", "PushResult", "RepoSpec", "SyncItem", "SyncResult", "hub_cache_dir", "hub_path", "import_repo",
    "lock", "manifest_document", "manifest_file_bytes", "parse_hub_manifest", "parse_repo_spec", "pull", "push", "sync",
]
