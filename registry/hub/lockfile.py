"""Lockfiles: the exact adapter versions a deploy script fetches (``spr lock`` / ``spr sync``).

A lockfile is JSON with sorted keys, two-space indentation and a final newline, so the same
versions always give the same bytes (diffable, reviewable)::

    {
      "adapters": [
        {
          "commit": "<40-hex commit sha on the Hub>",
          "digest": "sha256:<manifest digest: the version's identity>",
          "endpoint": "https://huggingface.co",
          "files": [{"path": "adapter_config.json", "sha256": "<hex>", "size": 412}, ...],
          "name": "team/coach",
          "repo": "team/coach",
          "tag": "v3",
          "version": 3
        }
      ],
      "lockfile_version": 1
    }

Entries are sorted by ``(name, version)``; files by path (the paths are the adapter's own, as in
its manifest). ``tag`` is informational unless ``spr sync --frozen`` is used, which also checks
that the tag still points at ``commit``. Everything read back is validated: a lockfile is input
a deploy script may have been handed by someone else.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.adapters.manifest import check_relative_path
from registry.digest import PREFIX, parse_digest
from registry.errors import InvalidAdapterError, UsageError
from registry.refs import split_name, validate_name
from registry.storage.local import atomic_write_bytes

LOCKFILE_VERSION = 1
MAX_LOCKFILE_BYTES = 20_000_000
_COMMIT = re.compile(r"^[0-9a-f]{40}\Z")
_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}\Z")


@dataclass(frozen=True)
class LockedFile:
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class LockEntry:
    """One pinned adapter version: where it lives on the Hub and what every byte must hash to."""

    name: str  # ns/name in the catalogue it is imported into
    version: int
    digest: str  # sha256:<hex> of the manifest
    repo: str  # ns/name on the Hub
    endpoint: str
    commit: str  # 40-hex commit sha
    tag: str | None
    files: tuple[LockedFile, ...]

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class Lockfile:
    entries: tuple[LockEntry, ...]
    lockfile_version: int = LOCKFILE_VERSION


def to_dict(lock: Lockfile) -> dict[str, Any]:
    """The JSON-ready form of a lockfile (entries and files in their canonical order)."""
    entries = sorted(lock.entries, key=lambda e: (e.name, e.version))
    return {
        "lockfile_version": lock.lockfile_version,
        "adapters": [
            {
                "name": e.name,
                "version": e.version,
                "digest": e.digest,
                "repo": e.repo,
                "endpoint": e.endpoint,
                "commit": e.commit,
                "tag": e.tag,
                "files": [
                    {"path": f.path, "sha256": f.sha256, "size": f.size}
                    for f in sorted(e.files, key=lambda f: f.path)
                ],
            }
            for e in entries
        ],
    }


def dumps(lock: Lockfile) -> bytes:
    """The lockfile's bytes: stable for the same content."""
    return (json.dumps(to_dict(lock), indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def write(lock: Lockfile, path: Path | str) -> Path:
    """Write ``lock`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    atomic_write_bytes(path, dumps(lock))
    return path


def read(path: Path | str) -> Lockfile:
    """Read and validate a lockfile. Raises :class:`UsageError` naming the first problem."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_LOCKFILE_BYTES:
            raise UsageError(f"lockfile {path} is {size} bytes; refusing anything over {MAX_LOCKFILE_BYTES}")
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read lockfile {path}: {exc.strerror or exc}", hint="run 'spr lock REF… -o FILE' first") from None
    return loads(data, where=str(path))


def loads(data: bytes, *, where: str = "lockfile") -> Lockfile:
    """Parse lockfile bytes (untrusted). Raises :class:`UsageError` on anything malformed."""

    def bad(message: str) -> UsageError:
        return UsageError(f"{where}: {message}", hint="regenerate it with 'spr lock REF… -o FILE'")

    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError):
        raise bad("not valid JSON") from None
    if not isinstance(doc, dict):
        raise bad("expected a JSON object")
    version = doc.get("lockfile_version")
    if version != LOCKFILE_VERSION:
        raise bad(f"unsupported lockfile_version {str(version)[:20]!r}; this spr reads version {LOCKFILE_VERSION}")
    adapters = doc.get("adapters")
    if not isinstance(adapters, list):
        raise bad("'adapters' must be a list")
    entries: list[LockEntry] = []
    seen: set[tuple[str, int]] = set()
    for i, raw in enumerate(adapters):
        entry = _entry(raw, lambda m, i=i: bad(f"adapter #{i + 1}: {m}"))
        key = (entry.name, entry.version)
        if key in seen:
            raise bad(f"{entry.ref} is listed twice")
        seen.add(key)
        entries.append(entry)
    return Lockfile(entries=tuple(entries), lockfile_version=version)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _entry(raw: Any, bad: Any) -> LockEntry:
    if not isinstance(raw, dict):
        raise bad("expected an object")

    def text(key: str, limit: int = 300) -> str:
        value = raw.get(key)
        if not isinstance(value, str) or not value or len(value) > limit or any(ord(c) < 32 for c in value):
            raise bad(f"'{key}' must be a non-empty string")
        return value

    name = text("name")
    try:
        namespace, short = split_name(name)
        repo_ns, _, repo_name = text("repo").partition("/")
        validate_name(repo_ns, "repo namespace")
        validate_name(repo_name, "repo name")
    except UsageError as exc:
        raise bad(exc.message) from None
    number = raw.get("version")
    if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= 10**9:
        raise bad("'version' must be a positive integer")
    try:
        digest = PREFIX + parse_digest(text("digest", 80))
    except UsageError:
        raise bad("'digest' must be 'sha256:<64 hex>'") from None
    endpoint = text("endpoint", 1000)
    if not re.match(r"^https?://[^\s/]+", endpoint):
        raise bad("'endpoint' must be an http(s) URL")
    commit = text("commit", 40)
    if not _COMMIT.match(commit):
        raise bad("'commit' must be a 40-hex commit sha")
    tag = raw.get("tag")
    if tag is not None and (not isinstance(tag, str) or not _REVISION.match(tag) or ".." in tag):
        raise bad("'tag' must be a tag name or null")
    files_raw = raw.get("files")
    if not isinstance(files_raw, list) or not files_raw:
        raise bad("'files' must be a non-empty list")
    files: list[LockedFile] = []
    paths: set[str] = set()
    for f in files_raw:
        if not isinstance(f, dict):
            raise bad("every file must be an object")
        path, sha, size = f.get("path"), f.get("sha256"), f.get("size")
        if not isinstance(path, str) or not isinstance(sha, str) or not _HEX64.match(sha):
            raise bad(f"malformed file entry {str(f)[:100]}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise bad(f"file {path[:100]!r}: 'size' must be a non-negative integer")
        try:
            check_relative_path(path, "lockfile")
        except InvalidAdapterError as exc:  # report it as a lockfile problem
            raise bad(str(exc)) from None
        if path in paths:
            raise bad(f"file {path!r} is listed twice")
        paths.add(path)
        files.append(LockedFile(path, sha, size))
    return LockEntry(
        name=f"{namespace}/{short}",
        version=number,
        digest=digest,
        repo=f"{repo_ns}/{repo_name}",
        endpoint=endpoint.rstrip("/"),
        commit=commit,
        tag=tag,
        files=tuple(sorted(files, key=lambda f: f.path)),
    )


__all__ = ["LOCKFILE_VERSION", "LockEntry", "LockedFile", "Lockfile", "dumps", "loads", "read", "to_dict", "write"]
