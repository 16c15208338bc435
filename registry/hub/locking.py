"""Lock and sync: pin versions for a deploy (``spr lock``) and fetch exactly those (``spr sync``).

The lockfile format is :mod:`registry.hub.lockfile`; this module makes and honours one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry import catalogue, settings
from registry.errors import HubError, IntegrityError, LockfileDriftError, NotFoundError, UsageError
from registry.hub import lockfile
from registry.hub.client import HubClient, parse_repo_spec
from registry.hub.download import (
    dir_matches,
    find_version,
    import_verified,
    pick_copy,
    present_version,
    record_pull,
    write_to,
)
from registry.hub.format import MANIFEST_FILENAME, HubVersion
from registry.refs import Ref, parse_ref, split_name
from registry.storage import BlobStore, open_store
from registry.types import FileRecord, VersionInfo


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
        copy = pick_copy(version, endpoint)
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
    store: BlobStore | None = None,
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
    store = store if store is not None else open_store()
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
        present = present_version(entry.name, entry.digest, db, store)
        remote, files = _fetch_locked(entry, hub, frozen=frozen, refs_cache=refs_cache, download=present is None)
        if frozen:
            _check_frozen_catalogue(entry, db)
        fetched.append((entry, hub, remote, files))
    items = []
    for entry, hub, remote, files in fetched:
        if files is None:
            version, created = catalogue.get_version(f"{entry.name}@{entry.digest}", db=db), False
        else:
            version, created = import_verified(remote, files, entry.name, hub, db=db, store=store)
        version = record_pull(version, hub, entry.repo, entry.commit, entry.tag, db=db)
        written = None
        if to is not None:
            written = write_to(version, _sync_dir(Path(to), entry), db=db)
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
    other = find_version(entry.name, entry.digest, db)
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
    :class:`UsageError` (as :func:`write_to` would say, but before anything was imported).
    """
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        files = [FileRecord(f.path, f.sha256, f.size) for f in entry.files]
        if not directory.is_dir() or not dir_matches(directory, files):
            if not frozen:
                raise UsageError(
                    f"{directory} already holds other files than {entry.ref}; nothing was imported or written",
                    hint="choose a new or empty directory (--to)",
                )
            raise _drift(
                entry, f"{directory} holds other files than the lockfile pins",
                "remove the directory, or deploy into a new one", reason="target-differs",
            )
