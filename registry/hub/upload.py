"""Push: one catalogue version to a Hub repo, as one commit on ``main`` tagged ``v{N}``.

The commit holds the version's files from the blob store (each re-verified first),
``spr_manifest.json`` (:mod:`registry.hub.format`) and the model card (:mod:`registry.hub.card`).
A push interrupted after its commit finishes by tagging that commit; pushing a version the repo
already holds uploads nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry import catalogue
from registry.digest import sha256_bytes
from registry.errors import HubError, UsageError
from registry.hub.card import render as render_card
from registry.hub.client import HubClient, checked_sha, parse_repo_spec
from registry.hub.format import (
    CARD_FILENAME,
    DEFAULT_BRANCH,
    MANIFEST_FILENAME,
    check_pushable,
    hub_path,
    manifest_file_bytes,
)
from registry.storage import BlobStore, open_store
from registry.types import VersionInfo


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


def push(
    ref: str,
    repo_id: str,
    *,
    private: bool = False,
    endpoint: str | None = None,
    db: str | None = None,
    store: BlobStore | None = None,
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
    check_pushable(version)
    store = store if store is not None else open_store()
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
        tagged_sha = checked_sha(tags[tag], repo_id)
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
        head = checked_sha(head, repo_id)
        remote = hub.tree(repo_id, head)
        if _holds_version(store, remote, version, manifest_bytes):
            commit_sha = head  # an earlier push committed but was cut off before tagging
        wanted = {hub_path(f.path) for f in version.files} | {MANIFEST_FILENAME, CARD_FILENAME, ".gitattributes"}
        stale = sorted(p for p in remote if p not in wanted)
    committed = False
    if commit_sha is None:
        commit_sha = _commit(store, hub, repo_id, version, manifest_bytes, stale, parent=head)
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
            other = checked_sha(tags.get(tag, ""), repo_id)
            if hub.read_version(repo_id, other).digest != version.digest:
                raise HubError(
                    f"tag {tag} of {repo_id} was just created by someone else for another version",
                    hint="push to another repo",
                    reason="tag-conflict",
                ) from None
            commit_sha = other
    return _pushed(version, hub, repo_id, commit_sha, tag, committed=committed, tagged=True, db=db)


def _holds_version(store: BlobStore, tree: dict[str, Any], version: VersionInfo, manifest_bytes: bytes) -> bool:
    """Whether a commit's tree already is exactly this version: same ``spr_manifest.json`` bytes and
    every file with the same content (LFS sha256, or git blob id for regular files), read from the
    tree listing alone (no download). The card may differ (it is regenerated on every push)."""
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
    store: BlobStore, hub: HubClient, repo_id: str, version: VersionInfo, manifest_bytes: bytes, stale: list[str], *, parent: str | None
) -> str:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

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
    return checked_sha(info.oid, repo_id)


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
