"""What the Hub server stores, as values: repo keys, objects, file entries, commits, trees, changes.

Pure data and pure functions over it (no disk, no locks): :mod:`registry.hubserver.storage` keeps
them on disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from registry.hubserver.errors import BadRequest, EntryNotFound
from registry.hubserver.validation import REPO_TYPES, validate_repo_id, validate_repo_path

_LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"

def hub_time(moment: datetime | None = None) -> str:
    """A UTC time in the Hub's format, ``%Y-%m-%dT%H:%M:%S.%fZ`` (milliseconds)."""
    moment = moment or datetime.now(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def git_blob_sha1(data: bytes) -> str:
    """The git blob id of ``data``: sha1 of ``b"blob <len>\\0" + data``."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-LFS pointer file that stands in git for an LFS object."""
    return _LFS_POINTER.format(sha256=sha256, size=size).encode()


def canonical_json(value: object) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the bytes commit ids are computed over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class RepoKey:
    """A repo's identity: its type (``model``/``dataset``/``space``) and ``namespace/name``."""

    repo_type: str
    repo_id: str

    def __post_init__(self) -> None:
        if self.repo_type not in REPO_TYPES:
            raise BadRequest(f"invalid repo type {self.repo_type!r}: expected one of {', '.join(REPO_TYPES)}")
        parts = self.repo_id.split("/")
        if len(parts) != 2:
            raise BadRequest(f"invalid repo id {self.repo_id!r}: expected 'namespace/name'")
        validate_repo_id(parts[0], parts[1])


@dataclass(frozen=True)
class StoredObject:
    """A blob in the object store; ``created`` when this write put it there (it was not stored before)."""

    sha256: str
    size: int
    created: bool = field(default=False, compare=False)


@dataclass(frozen=True)
class GcReport:
    """What :meth:`HubStorage.gc` found: objects no commit references, and upload leftovers."""

    unreferenced: tuple[StoredObject, ...]
    leftovers: tuple[Path, ...]
    kept_young: int  # unreferenced but younger than the grace period (an upload in flight)
    removed: bool

    @property
    def bytes(self) -> int:
        return sum(o.size for o in self.unreferenced)


@dataclass(frozen=True)
class FileEntry:
    """One file of a commit's tree."""

    sha256: str
    size: int
    lfs: bool
    oid: str  # git blob id the Hub reports: of the content (regular) or of the LFS pointer (lfs)

    @property
    def pointer_size(self) -> int:
        return len(lfs_pointer(self.sha256, self.size))

    def to_json(self) -> dict[str, object]:
        return {"sha256": self.sha256, "size": self.size, "lfs": self.lfs, "oid": self.oid}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> FileEntry:
        return cls(sha256=str(data["sha256"]), size=int(data["size"]), lfs=bool(data["lfs"]), oid=str(data["oid"]))  # type: ignore[call-overload]


@dataclass(frozen=True)
class Commit:
    """An immutable commit: the full tree plus message, author and time."""

    id: str
    parent: str | None
    tree: Mapping[str, FileEntry]
    summary: str
    description: str
    author: str
    time: str

    def body(self) -> dict[str, object]:
        """Everything but the id: what the id is the sha1 of."""
        return {
            "parent": self.parent,
            "tree": {path: entry.to_json() for path, entry in sorted(self.tree.items())},
            "summary": self.summary,
            "description": self.description,
            "author": self.author,
            "time": self.time,
        }


@dataclass(frozen=True)
class RepoRecord:
    """A repo's settings."""

    key: RepoKey
    private: bool
    created_at: str


@dataclass(frozen=True)
class PutFile:
    """Add or replace ``path`` with a stored object, as a regular or an LFS file."""

    path: str
    obj: StoredObject
    lfs: bool
    oid: str  # git blob id (see FileEntry.oid)


@dataclass(frozen=True)
class DeleteFile:
    path: str


@dataclass(frozen=True)
class DeleteFolder:
    path: str


Change = PutFile | DeleteFile | DeleteFolder


@dataclass(frozen=True)
class TreeItem:
    """A file or folder in a tree listing."""

    kind: str  # "file" | "directory"
    path: str
    entry: FileEntry | None  # files only
    oid: str


def tree_items(commit: Commit, folder: str, *, recursive: bool) -> list[TreeItem]:
    """The files and folders under ``folder`` ("" = root) at ``commit``, sorted by path.

    Raises :class:`EntryNotFound` if ``folder`` is neither the root nor a folder of the tree.
    """
    prefix = f"{folder}/" if folder else ""
    files: dict[str, FileEntry] = {p: e for p, e in commit.tree.items() if p.startswith(prefix)}
    if folder and not files:
        raise EntryNotFound(f"{folder} does not exist at {commit.id}", commit=commit.id)
    items: dict[str, TreeItem] = {}
    for path, entry in files.items():
        rest = path[len(prefix) :].split("/")
        depth = len(rest) if recursive else 1
        for level in range(1, min(depth, len(rest) - 1) + 1):
            sub = prefix + "/".join(rest[:level])
            if sub not in items:
                items[sub] = TreeItem("directory", sub, None, _folder_oid(commit, sub))
        if recursive or len(rest) == 1:
            items[path] = TreeItem("file", path, entry, entry.oid)
    return [items[p] for p in sorted(items)]


def _folder_oid(commit: Commit, folder: str) -> str:
    # Not git's tree id, but stable: the same content under the folder gives the same id.
    prefix = folder + "/"
    listing = "".join(f"{e.oid} {p}\n" for p, e in sorted(commit.tree.items()) if p.startswith(prefix))
    return hashlib.sha1(listing.encode()).hexdigest()


def apply_changes(tree: dict[str, FileEntry], changes: Sequence[Change], head: str) -> dict[str, FileEntry]:
    for change in changes:
        if isinstance(change, PutFile):
            path = validate_repo_path(change.path)
            tree[path] = FileEntry(sha256=change.obj.sha256, size=change.obj.size, lfs=change.lfs, oid=change.oid)
        elif isinstance(change, DeleteFile):
            path = validate_repo_path(change.path)
            if path not in tree:
                raise EntryNotFound(f"A file with this name doesn't exist: {path}", commit=head)
            del tree[path]
        else:
            folder = validate_repo_path(change.path, folder=True)
            doomed = [p for p in tree if p.startswith(folder + "/")]
            if not doomed:
                raise EntryNotFound(f"A folder with this name doesn't exist: {folder}", commit=head)
            for path in doomed:
                del tree[path]
    folders = {"/".join(p.split("/")[:i]) for p in tree for i in range(1, p.count("/") + 1)}
    clash = sorted(folders & tree.keys())
    if clash:
        raise BadRequest(f"{clash[0]!r} cannot be both a file and a folder")
    return tree


def make_commit(
    parent: str | None, tree: Mapping[str, FileEntry], summary: str, description: str, author: str, time: str
) -> Commit:
    draft = Commit(
        id="", parent=parent, tree=dict(tree), summary=summary, description=description, author=author, time=time
    )
    return dataclasses.replace(draft, id=hashlib.sha1(canonical_json(draft.body())).hexdigest())
