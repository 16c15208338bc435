"""On-disk storage of the Hub server: content-addressed objects, commits as JSON, refs under a lock.

Layout under ``root`` (a server restarted on the same root sees everything)::

    objects/sha256/ab/abcdef…             file bytes, named by their sha256 (shared by all repos)
    tmp/                                  uploads in progress (moved into objects/ once verified)
    repos/{model|dataset|space}/{ns}/{name}/
        repo.json                         {"id", "type", "private", "createdAt"}
        refs.json                         {"heads": {branch: sha}, "tags": {tag: sha}}
        commits/{sha}.json                one immutable commit (see :class:`Commit`)
        .lock                             flock'ed while refs.json is read-modified-written

A commit records the whole tree: ``path -> {sha256, size, lfs, oid}`` where ``oid`` is the git
blob id the Hub reports (sha1 of ``"blob <size>\\0" + content`` for a regular file, of the LFS
pointer for an LFS file). The commit id is the sha1 of the commit's canonical JSON (sorted keys,
no whitespace) without its ``id`` field, so it is 40-hex like a git commit id and anyone can
recompute it. All files are written atomically (temp file in the same folder, fsync, ``os.replace``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from registry.hubserver.errors import (
    BadRequest,
    Conflict,
    EntryNotFound,
    HubServerError,
    PreconditionFailed,
    RepoNotFound,
    RevisionNotFound,
)
from registry.hubserver.records import (
    Change,
    Commit,
    FileEntry,
    GcReport,
    RepoKey,
    RepoRecord,
    StoredObject,
    apply_changes,
    canonical_json,
    git_blob_sha1,
    hub_time,
    make_commit,
)
from registry.hubserver.validation import (
    is_commit_sha,
    validate_ref_name,
    validate_sha256,
)

try:  # POSIX: refs are also safe against a second server process on the same root.
    import fcntl
except ImportError:  # pragma: no cover - Windows: in-process lock only
    fcntl = None  # type: ignore[assignment]

DEFAULT_BRANCH = "main"
_CHUNK = 1024 * 1024

# What the Hub puts in the first commit of every new repo (trimmed to the common patterns).
INITIAL_GITATTRIBUTES = b"""*.7z filter=lfs diff=lfs merge=lfs -text
*.bin filter=lfs diff=lfs merge=lfs -text
*.ckpt filter=lfs diff=lfs merge=lfs -text
*.gguf filter=lfs diff=lfs merge=lfs -text
*.gz filter=lfs diff=lfs merge=lfs -text
*.h5 filter=lfs diff=lfs merge=lfs -text
*.msgpack filter=lfs diff=lfs merge=lfs -text
*.npy filter=lfs diff=lfs merge=lfs -text
*.npz filter=lfs diff=lfs merge=lfs -text
*.onnx filter=lfs diff=lfs merge=lfs -text
*.parquet filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.pth filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
*.tar filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
"""


class ObjectWriter:
    """Bytes on their way into the object store, hashed as they are written."""

    def __init__(self, handle: BinaryIO, install: Callable[[str, int], StoredObject]) -> None:
        self._handle = handle
        self._install = install
        self._digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self._digest.update(data)
        self._handle.write(data)
        self.size += len(data)

    def sha256(self) -> str:
        return self._digest.hexdigest()

    def finish(self) -> StoredObject:
        """Flush, fsync and move the object into place under its sha256."""
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        return self._install(self.sha256(), self.size)


class HubStorage:
    """Repos, commits, refs and objects under one root folder. Safe for concurrent threads and processes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        for sub in ("objects/sha256", "tmp", "repos"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._locks: dict[Path, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._commit_cache: dict[tuple[Path, str], Commit] = {}
        self._cache_guard = threading.Lock()
        # Objects a request in this process has stored or found and may still commit: a refused
        # commit never deletes one of these out from under another request.
        self._in_flight: dict[str, int] = {}
        self._in_flight_guard = threading.Lock()

    # ------------------------------------------------------------------ objects

    def object_path(self, sha256: str) -> Path:
        """Where the object with this sha256 lives (whether or not it exists)."""
        validate_sha256(sha256)
        return self.root / "objects" / "sha256" / sha256[:2] / sha256

    def find_object(self, sha256: str) -> StoredObject | None:
        """The stored object with this sha256, or None."""
        path = self.object_path(sha256)
        try:
            return StoredObject(sha256=sha256, size=path.stat().st_size)
        except FileNotFoundError:
            return None

    def put_bytes(self, data: bytes) -> StoredObject:
        """Store ``data`` (idempotent) and return its object."""
        sha256 = hashlib.sha256(data).hexdigest()
        existing = self.find_object(sha256)
        if existing is not None and existing.size == len(data):
            self._hold(sha256)
            return existing
        tmp = self._tmp_path()
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            return self._install(tmp, sha256, len(data))
        finally:
            tmp.unlink(missing_ok=True)

    def put_stream(self, stream: BinaryIO, *, expected_sha256: str, expected_size: int) -> StoredObject:
        """Copy ``stream`` into the store, checking it against the sha256 and size the client announced.

        Raises :class:`BadRequest` when the bytes do not match (nothing is stored then).
        """
        validate_sha256(expected_sha256)
        with self.object_writer() as writer:
            while True:
                chunk = stream.read(_CHUNK)
                if not chunk:
                    break
                if writer.size + len(chunk) > expected_size:
                    raise BadRequest(f"upload of {expected_sha256} is longer than the announced {expected_size} bytes")
                writer.write(chunk)
            if writer.size != expected_size:
                raise BadRequest(f"upload of {expected_sha256} has {writer.size} bytes, expected {expected_size}")
            if writer.sha256() != expected_sha256:
                raise BadRequest(
                    f"upload does not match its oid: got sha256 {writer.sha256()}, expected {expected_sha256}"
                )
            return writer.finish()

    @contextlib.contextmanager
    def object_writer(self) -> Iterator[ObjectWriter]:
        """A writer for an object whose sha256 is known only at the end; ``finish()`` stores it.

        Whatever was not finished is discarded when the block ends.
        """
        tmp = self._tmp_path()
        handle = open(tmp, "wb")  # noqa: SIM115  (handed to the writer; closed below)
        try:
            yield ObjectWriter(handle, lambda sha256, size: self._install(tmp, sha256, size))
        finally:
            handle.close()
            tmp.unlink(missing_ok=True)

    def content_git_sha1(self, sha256: str) -> str:
        """The git blob id of an object's content, streamed from disk (for LFS files answered as regular)."""
        path = self.object_path(sha256)
        size = path.stat().st_size
        digest = hashlib.sha1(b"blob %d\x00" % size)
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(_CHUNK), b""):
                digest.update(chunk)
        return digest.hexdigest()

    def _tmp_path(self) -> Path:
        return self.root / "tmp" / f"upload-{uuid.uuid4().hex}"

    def _install(self, tmp: Path, sha256: str, size: int) -> StoredObject:
        target = self.object_path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        self._hold(sha256)
        created = not target.exists()
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        return StoredObject(sha256=sha256, size=size, created=created)

    def _hold(self, sha256: str) -> None:
        with self._in_flight_guard:
            self._in_flight[sha256] = self._in_flight.get(sha256, 0) + 1

    def release(self, objects: Iterable[StoredObject], *, discard: bool) -> None:
        """A request is done with ``objects`` (each stored or found once by it).

        With ``discard`` (the request was refused), the objects it created are deleted unless
        another request in flight holds them or a commit references them: a refused commit leaves
        nothing behind, so refused commits cannot fill the disk.
        """
        for obj in objects:
            with self._in_flight_guard:
                left = self._in_flight.get(obj.sha256, 0) - 1
                if left > 0:
                    self._in_flight[obj.sha256] = left
                else:
                    self._in_flight.pop(obj.sha256, None)
                if discard and obj.created and left <= 0 and obj.sha256 not in self._referenced():
                    self.object_path(obj.sha256).unlink(missing_ok=True)

    def _referenced(self) -> set[str]:
        """Every object sha256 that some commit of some repo references."""
        found: set[str] = set()
        for commit_file in (self.root / "repos").glob("*/*/*/commits/*.json"):
            try:
                data = json.loads(commit_file.read_bytes())
                found.update(entry["sha256"] for entry in data["tree"].values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                # A commit we cannot read might reference anything: refuse to judge.
                raise HubServerError(f"cannot read commit {commit_file}: {exc}; not deleting objects") from None
        return found

    def gc(self, *, grace_seconds: float = 3600.0, remove: bool = False) -> GcReport:
        """Objects that no commit references and upload leftovers older than ``grace_seconds``.

        Nothing is deleted unless ``remove``. Younger objects may belong to an upload whose commit
        has not arrived yet (git-LFS uploads come before their commit), so they are kept.
        """
        cutoff = time.time() - grace_seconds
        referenced = self._referenced()
        unreferenced: list[StoredObject] = []
        young = 0
        for path in sorted((self.root / "objects" / "sha256").glob("*/*")):
            if path.name in referenced or not path.is_file():
                continue
            st = path.stat()
            with self._in_flight_guard:
                busy = path.name in self._in_flight
            if st.st_mtime > cutoff or busy:
                young += 1
                continue
            unreferenced.append(StoredObject(path.name, st.st_size))
        leftovers = [p for p in sorted((self.root / "tmp").glob("upload-*")) if p.stat().st_mtime <= cutoff]
        if remove:
            for obj in unreferenced:
                self.object_path(obj.sha256).unlink(missing_ok=True)
            for p in leftovers:
                p.unlink(missing_ok=True)
        return GcReport(tuple(unreferenced), tuple(leftovers), young, remove)

    # ------------------------------------------------------------------ repos

    def create_repo(self, key: RepoKey, *, private: bool, author: str) -> RepoRecord:
        """Create a repo whose ``main`` holds one commit with ``.gitattributes``, as the Hub does.

        Raises :class:`Conflict` if it exists.
        """
        final = self._repo_dir(key)
        if final.exists():
            raise Conflict(f"You already created this {key.repo_type} repo: {key.repo_id}")
        record = RepoRecord(key=key, private=private, created_at=hub_time())
        gitattributes = self.put_bytes(INITIAL_GITATTRIBUTES)
        entry = FileEntry(
            sha256=gitattributes.sha256, size=gitattributes.size, lfs=False, oid=git_blob_sha1(INITIAL_GITATTRIBUTES)
        )
        first = make_commit(None, {".gitattributes": entry}, "initial commit", "", author, record.created_at)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".creating-", dir=final.parent))
        try:
            (staging / "commits").mkdir()
            _atomic_write(staging / "commits" / f"{first.id}.json", canonical_json({"id": first.id, **first.body()}))
            _atomic_write(staging / "refs.json", canonical_json({"heads": {DEFAULT_BRANCH: first.id}, "tags": {}}))
            _atomic_write(
                staging / "repo.json",
                canonical_json(
                    {"id": key.repo_id, "type": key.repo_type, "private": private, "createdAt": record.created_at}
                ),
            )
            try:
                # rename() of a directory onto an existing non-empty one fails: two racing creators get one winner.
                os.rename(staging, final)
            except OSError as exc:
                raise Conflict(f"You already created this {key.repo_type} repo: {key.repo_id}") from exc
        finally:
            if staging.exists():
                _remove_tree(staging)
        _fsync_dir(final.parent)
        return record

    def get_repo(self, key: RepoKey) -> RepoRecord:
        """The repo's record; raises :class:`RepoNotFound`."""
        try:
            data = json.loads((self._repo_dir(key) / "repo.json").read_bytes())
        except FileNotFoundError:
            raise RepoNotFound(f"Repository not found: {key.repo_type} {key.repo_id}") from None
        return RepoRecord(key=key, private=bool(data["private"]), created_at=str(data["createdAt"]))

    def delete_repo(self, key: RepoKey) -> None:
        """Delete a repo's commits and refs (objects stay: they may be shared). Raises :class:`RepoNotFound`."""
        self.get_repo(key)
        directory = self._repo_dir(key)
        with self._repo_lock(key):
            graveyard = directory.parent / f".deleting-{uuid.uuid4().hex}"
            os.rename(directory, graveyard)
        _remove_tree(graveyard)
        with self._cache_guard:
            for cache_key in [k for k in self._commit_cache if k[0] == directory]:
                del self._commit_cache[cache_key]

    # ------------------------------------------------------------------ refs and commits

    def refs(self, key: RepoKey) -> tuple[dict[str, str], dict[str, str]]:
        """``(branches, tags)``: name -> commit sha."""
        self.get_repo(key)
        data = json.loads((self._repo_dir(key) / "refs.json").read_bytes())
        return dict(data["heads"]), dict(data["tags"])

    def resolve(self, key: RepoKey, revision: str) -> Commit:
        """The commit a branch, tag, ``refs/heads/x``, ``refs/tags/x`` or 40-hex sha names.

        Raises :class:`RepoNotFound` or :class:`RevisionNotFound`.
        """
        branches, tags = self.refs(key)
        sha: str | None = None
        if revision.startswith("refs/heads/"):
            sha = branches.get(revision[len("refs/heads/") :])
        elif revision.startswith("refs/tags/"):
            sha = tags.get(revision[len("refs/tags/") :])
        elif revision in branches:
            sha = branches[revision]
        elif revision in tags:
            sha = tags[revision]
        elif is_commit_sha(revision):
            sha = revision
        commit = self.get_commit(key, sha) if sha else None
        if commit is None:
            raise RevisionNotFound(f"Invalid rev id: {revision}")
        return commit

    def get_commit(self, key: RepoKey, sha: str) -> Commit | None:
        """The commit with this id in this repo, or None."""
        if not is_commit_sha(sha):
            return None
        directory = self._repo_dir(key)
        cache_key = (directory, sha)
        with self._cache_guard:
            cached = self._commit_cache.get(cache_key)
        if cached is not None:
            return cached
        try:
            data = json.loads((directory / "commits" / f"{sha}.json").read_bytes())
        except FileNotFoundError:
            return None
        commit = Commit(
            id=data["id"],
            parent=data["parent"],
            tree={path: FileEntry.from_json(entry) for path, entry in data["tree"].items()},
            summary=data["summary"],
            description=data["description"],
            author=data["author"],
            time=data["time"],
        )
        with self._cache_guard:
            if len(self._commit_cache) > 512:
                self._commit_cache.clear()
            self._commit_cache[cache_key] = commit
        return commit

    def commit(
        self,
        key: RepoKey,
        branch: str,
        changes: Sequence[Change],
        *,
        summary: str,
        description: str = "",
        author: str,
        parent_commit: str | None = None,
    ) -> Commit:
        """Apply ``changes`` on top of ``branch`` and move the branch, atomically.

        Commits to one branch are serialised under the repo lock; a ``parent_commit`` that is not
        the head any more raises :class:`PreconditionFailed` (412). Raises :class:`RevisionNotFound`
        for an unknown branch, :class:`EntryNotFound` for deleting a path that does not exist,
        :class:`BadRequest` when a file and a folder would share a path.
        """
        with self._repo_lock(key):
            branches, tags = self.refs(key)
            if branch not in branches:
                if branch in tags or is_commit_sha(branch):
                    raise BadRequest(f"can only commit to a branch, and {branch!r} is not one")
                raise RevisionNotFound(f"Invalid rev id: {branch}")
            head = branches[branch]
            if parent_commit is not None and parent_commit != head:
                raise PreconditionFailed(
                    f"A commit has happened since. Please refresh and try again. (parent commit {parent_commit},"
                    f" head of {branch} is {head})"
                )
            current = self.get_commit(key, head)
            assert current is not None, f"refs point at a missing commit {head}"
            tree = apply_changes(dict(current.tree), changes, head)
            new = make_commit(head, tree, summary, description, author, hub_time())
            directory = self._repo_dir(key)
            _atomic_write(directory / "commits" / f"{new.id}.json", canonical_json({"id": new.id, **new.body()}))
            branches[branch] = new.id
            self._write_refs(key, branches, tags)
            return new

    def create_tag(self, key: RepoKey, tag: str, revision: str) -> str:
        """Tag the commit ``revision`` names; returns its sha. Raises :class:`Conflict` if the tag exists."""
        validate_ref_name(tag, "tag")
        with self._repo_lock(key):
            target = self.resolve(key, revision)
            branches, tags = self.refs(key)
            if tag in tags:
                raise Conflict(f"Tag {tag!r} already exists (it points at {tags[tag]})")
            if tag in branches:
                raise Conflict(f"A branch is already named {tag!r}")
            tags[tag] = target.id
            self._write_refs(key, branches, tags)
            return target.id

    def delete_tag(self, key: RepoKey, tag: str) -> None:
        """Remove a tag. Raises :class:`RevisionNotFound` if there is none of that name."""
        with self._repo_lock(key):
            branches, tags = self.refs(key)
            if tag not in tags:
                raise RevisionNotFound(f"Invalid rev id: {tag}")
            del tags[tag]
            self._write_refs(key, branches, tags)

    def _write_refs(self, key: RepoKey, branches: Mapping[str, str], tags: Mapping[str, str]) -> None:
        _atomic_write(self._repo_dir(key) / "refs.json", canonical_json({"heads": dict(branches), "tags": dict(tags)}))

    # ------------------------------------------------------------------ test helpers

    def tamper(
        self, repo_id: str, path: str, new_bytes: bytes, *, revision: str = DEFAULT_BRANCH, repo_type: str = "model"
    ) -> Path:
        """Overwrite the stored bytes of ``path`` in place; every recorded sha256, size and oid stays as it was.

        For tests of "tampered remote file -> pull refused". The object is shared by every file
        with the same content, in every repo. Returns the object's path.
        """
        target = self._object_of(repo_id, path, revision, repo_type)
        with open(target, "r+b") as handle:
            handle.seek(0)
            handle.write(new_bytes)
            handle.truncate()
        return target

    def truncate(
        self,
        repo_id: str,
        path: str,
        size: int | None = None,
        *,
        revision: str = DEFAULT_BRANCH,
        repo_type: str = "model",
    ) -> Path:
        """Cut the stored bytes of ``path`` to ``size`` bytes (default: half); metadata is unchanged.

        HEAD and the tree keep announcing the recorded size; GET serves what is on disk. Returns the object's path.
        """
        target = self._object_of(repo_id, path, revision, repo_type)
        current = target.stat().st_size
        with open(target, "r+b") as handle:
            handle.truncate(current // 2 if size is None else size)
        return target

    def _object_of(self, repo_id: str, path: str, revision: str, repo_type: str) -> Path:
        key = RepoKey(repo_type, repo_id)
        commit = self.resolve(key, revision)
        entry = commit.tree.get(path)
        if entry is None:
            raise EntryNotFound(f"{path} does not exist in {repo_id}@{revision}", commit=commit.id)
        return self.object_path(entry.sha256)

    # ------------------------------------------------------------------ internals

    def _repo_dir(self, key: RepoKey) -> Path:
        namespace, name = key.repo_id.split("/")
        return self.root / "repos" / key.repo_type / namespace / name

    @contextlib.contextmanager
    def _repo_lock(self, key: RepoKey) -> Iterator[None]:
        directory = self._repo_dir(key)
        with self._locks_guard:
            lock = self._locks.setdefault(directory, threading.Lock())
        with lock:
            if fcntl is None:
                yield
                return
            try:
                handle = open(directory / ".lock", "a+b")  # noqa: SIM115  (held for the lock's lifetime)
            except FileNotFoundError:
                raise RepoNotFound(f"Repository not found: {key.repo_type} {key.repo_id}") from None
            with handle:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _remove_tree(directory: Path) -> None:
    import shutil

    shutil.rmtree(directory, ignore_errors=True)
