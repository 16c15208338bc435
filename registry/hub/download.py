"""Pull and import: Hub repos into the catalogue, every byte verified before anything is written.

Pull resolves a revision to a commit sha, downloads with ``hf_hub_download`` pinned to that sha
(a cached pinned file makes no HTTP request at all), checks the manifest against its digest and
every file against the manifest's sha256 and size, and only then imports the version through
:func:`registry.catalogue.import_manifest`. The Hub client checks sizes only; hashing is ours.
Import catalogues a plain PEFT repo (no ``spr_manifest.json``) with its lineage unverified.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry import catalogue, settings, trust
from registry.adapters import manifest as manifests
from registry.adapters.reader import COMPANION_FILES, CONFIG_NAME, PICKLE_NAMES, WEIGHTS_NAME
from registry.digest import parse_digest, sha256_file
from registry.errors import (
    DependencyMissingError,
    HubError,
    IntegrityError,
    InvalidAdapterError,
    NotFoundError,
    UsageError,
)
from registry.hub.client import SHA1, FetchedFile, HubClient, RefusalCleanup, parse_repo_spec
from registry.hub.format import (
    DEFAULT_BRANCH,
    MANIFEST_FILENAME,
    MAX_SIGNATURE_BYTES,
    SIGNATURE_FILENAME,
    HubVersion,
)
from registry.refs import Ref, parse_ref, split_name
from registry.storage import BlobStore, atomic_write_bytes, open_store
from registry.types import FileRecord, HubCopy, VersionInfo


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


def pull(
    target: str,
    *,
    to: Path | str | None = None,
    endpoint: str | None = None,
    db: str | None = None,
    name: str | None = None,
    store: BlobStore | None = None,
    trust_policy: str | os.PathLike[str] | None = None,
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

    A ``model.sig`` beside the files (a model-signing bundle, see ``spr push``) is read when the
    version is imported, verified against it and stored. The trust policy (``trust_policy``, else
    ``$SPR_TRUST_POLICY``) is applied before anything is written to ``to``: a refusal raises
    :class:`~registry.errors.UntrustedError` (exit 3; the version stays catalogued, its bytes
    verified, and verify/load refuse it under the same policy); a ``model.sig`` that does not verify
    raises :class:`~registry.errors.SignatureError` and is not stored.

    Raises :class:`IntegrityError` (tampered or truncated remote copy: nothing imported),
    :class:`HubError`, :class:`NotFoundError`, :class:`UsageError`.
    """
    store = store if store is not None else open_store()
    policy = trust.active_policy(trust_policy)
    local = _catalogue_target(target, db)
    if local is not None:
        copy = pick_copy(local, endpoint)
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
        tag = tag or (spec.revision if spec.revision and not SHA1.match(spec.revision) else None)
    hub_tag = revision if (local is not None) else (tag if source == "hub" else None)
    with RefusalCleanup(hub.cache_dir) as cleanup:  # a refused pull leaves nothing of the revision in the HF cache
        cleanup.watch(repo_id, commit_sha)
        remote = hub.read_version(repo_id, commit_sha)
        if expected is not None and remote.digest != expected:
            raise IntegrityError(
                f"{repo_id}@{commit_sha[:12]} at {hub.endpoint} holds {remote.digest}, but the catalogue's "
                f"{local.ref if local else target} is {expected}",
                hint="the hub copy was replaced; do not use it",
                expected=expected,
                found=remote.digest,
            )
        present = present_version(import_as, remote.digest, db, store)
        bundle = None
        if present is None:
            files = hub.fetch_files(repo_id, commit_sha, remote.manifest["files"])
            bundle = fetch_signature(hub, repo_id, commit_sha)
            version, created = import_verified(remote, files, import_as, hub, db=db, store=store, tag=hub_tag)
        else:  # already imported and verified then: the blob store, not the HF cache, is what counts now
            version, created = present, False
    version = record_pull(version, hub, repo_id, commit_sha, hub_tag, db=db)
    apply_trust(version, bundle, policy, db=db)
    written = write_to(version, Path(to), db=db) if to is not None else None
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
    if not sep or SHA1.match(selector):
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


def pick_copy(version: VersionInfo, endpoint: str | None) -> HubCopy:
    if not version.hub_copies:
        raise HubError(
            f"{version.ref} has no copy on a Hub",
            hint=f"push it first: spr push {version.ref} --repo NS/NAME",
            reason="no-hub-copy",
        )
    copies = sorted(version.hub_copies, key=lambda c: c.pushed_at, reverse=True)
    if endpoint is not None or settings.hub_endpoint_is_set():
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


def find_version(name: str, digest: str, db: str | None) -> VersionInfo | None:
    namespace, short = split_name(name)
    try:
        return catalogue.get_version(Ref(namespace, short, digest=parse_digest(digest)), db=db)
    except NotFoundError:
        return None


@contextlib.contextmanager
def _staging(files: dict[str, Path]) -> Iterator[Path]:
    """A private directory holding ``files`` as regular files (hard links where possible).

    The HF cache keeps files as symlinks, which the catalogue rightly refuses to follow. A hard
    link is the same inode, so what the pull hashed is what the catalogue links (see
    :class:`registry.storage.KnownFile`).
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


def present_version(name: str, digest: str, db: str | None, store: BlobStore) -> VersionInfo | None:
    """The version ``name`` holds with ``digest`` when all its blobs are in ``store``, else None."""
    existing = find_version(name, digest, db)
    if existing is not None and all(store.has(f.sha256) for f in existing.files):
        return existing
    return None


def import_verified(
    remote: HubVersion, files: dict[str, FetchedFile], name: str, hub: HubClient, *, db: str | None,
    store: BlobStore, tag: str | None = None,
) -> tuple[VersionInfo, bool]:
    """Import a fetched and verified Hub version as ``name`` (nothing when ``store`` already holds it).

    The version keeps the publisher's author, creation time and eval-score times from the
    manifest's record; the import is a ``pull`` event by the local user, with the hub copy.
    """
    existing = present_version(name, remote.digest, db, store)
    if existing is not None:
        return existing, False
    record = remote.record
    weights = files.get(WEIGHTS_NAME)
    with _staging({path: f.path for path, f in files.items()}) as staging:
        result = catalogue.import_manifest(
            staging,
            name,
            remote.manifest,
            db=db,
            author=record.author,
            created_at=record.created_at,
            description=record.description,
            tags=record.tags,
            evals=record.evals,
            lineage_verified=True,
            preferred_number=record.number,
            pulled_from=catalogue.PulledFrom(hub.endpoint, remote.repo_id, remote.commit_sha, tag),
            known={path: f.known for path, f in files.items()},
            values_checked=weights is not None and weights.values_checked,
            details={
                "published_as": f"{record.namespace}/{record.name}@{record.number}",
                "published_by": record.author,
                "published_at": record.created_at.isoformat() if record.created_at else None,
            },
        )
    return result.version, result.created


def record_pull(
    version: VersionInfo, hub: HubClient, repo_id: str, commit_sha: str, tag: str | None, *, db: str | None
) -> VersionInfo:
    for copy in version.hub_copies:
        same_commit = copy.endpoint == hub.endpoint and copy.repo_id == repo_id and copy.commit_sha == commit_sha
        if same_commit and (tag is None or copy.tag == tag):
            return version  # already recorded: a repeated pull writes nothing
    return catalogue.record_hub_copy(
        version.ref, endpoint=hub.endpoint, repo_id=repo_id, commit_sha=commit_sha, tag=tag, db=db, action="pull"
    )


def fetch_signature(hub: HubClient, repo_id: str, commit_sha: str) -> bytes | None:
    """``model.sig`` at ``commit_sha`` (bounded), or None when the commit has none."""
    if hub.known_missing(repo_id, SIGNATURE_FILENAME, commit_sha):
        return None  # the HF cache already knows this commit has none: no request
    try:
        path = hub.download(
            repo_id, SIGNATURE_FILENAME, commit_sha, limit=MAX_SIGNATURE_BYTES,
            too_large=lambda n: IntegrityError(
                f"{repo_id}@{commit_sha[:12]}/{SIGNATURE_FILENAME} is larger than {MAX_SIGNATURE_BYTES} bytes",
                hint="the signature bundle is not one spr push writes; do not use this copy",
            ),
        )
    except HubError as exc:
        if exc.fields.get("reason") == "entry-not-found":
            return None
        raise
    with open(path, "rb") as fh:
        data = fh.read(MAX_SIGNATURE_BYTES + 1)
    if len(data) > MAX_SIGNATURE_BYTES:
        raise IntegrityError(f"{repo_id}@{commit_sha[:12]}/{SIGNATURE_FILENAME} is larger than {MAX_SIGNATURE_BYTES} bytes")
    return data


def apply_trust(version: VersionInfo, bundle: bytes | None, policy: trust.Policy | None, *, db: str | None) -> None:
    """Store a pulled bundle (verified; a key bundle only when the policy knows its key), then
    raise :class:`~registry.errors.UntrustedError` when the policy refuses the version."""
    if bundle is None and policy is None:
        return
    trust.check_pulled(version, bundle, policy=policy, db=db).raise_if_refused()


def dir_matches(directory: Path, files: Sequence[FileRecord]) -> bool:
    """Whether ``directory`` holds exactly ``files`` (names, sizes and sha256), besides the
    ``spr_manifest.json`` and ``model.sig`` a signed version's directory carries."""
    present = sorted(
        p.relative_to(directory).as_posix() for p in directory.rglob("*")
        if (p.is_file() or p.is_symlink()) and p.relative_to(directory).as_posix() not in (MANIFEST_FILENAME, SIGNATURE_FILENAME)
    )
    if present != sorted(f.path for f in files):
        return False
    for f in files:
        path = directory / f.path
        if path.is_symlink() or path.stat().st_size != f.size or sha256_file(path)[0] != f.sha256:
            return False
    return True


def write_to(version: VersionInfo, destination: Path, *, db: str | None) -> Path:
    """Export ``version`` into ``destination``; a signed version also gets ``spr_manifest.json`` (its
    canonical manifest) and ``model.sig``, so ``model_signing verify`` accepts the directory."""
    if destination.exists() and destination.is_dir() and any(destination.iterdir()):
        if dir_matches(destination, version.files):
            return destination
        raise UsageError(
            f"{destination} already holds other files than {version.ref}",
            hint="choose a new or empty directory",
        )
    written = catalogue.export(version.ref, destination, db=db)
    try:
        bundle = trust.bundle_for_push(version, db=db) if trust.signatures(version.ref, db=db) else None
    except DependencyMissingError:
        bundle = None  # without model-signing the stored signatures cannot be checked: write none
    if bundle is not None:
        atomic_write_bytes(written / MANIFEST_FILENAME, trust.manifest_bytes(version))
        atomic_write_bytes(written / SIGNATURE_FILENAME, bundle.encode("utf-8"))
    return written


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
    tree = hub.tree(spec.repo_id, commit_sha)
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
    import_as = _import_name(name, spec.repo_id)
    options = catalogue.PublishOptions(
        description=description,
        tags={"hub.repo": spec.repo_id, "hub.commit": commit_sha, "hub.endpoint": hub.endpoint, "source": "hub-import"},
        lineage_verified=False,
    )
    with RefusalCleanup(hub.cache_dir) as cleanup:
        cleanup.watch(spec.repo_id, commit_sha)
        downloaded: dict[str, Path] = {}
        for path in wanted:
            downloaded[path] = Path(os.path.realpath(
                hub.download(spec.repo_id, path, commit_sha, limit=_listed_size(tree[path]), too_large=_larger_than_listed(
                    spec.repo_id, commit_sha, path, hub.endpoint))
            ))
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


def _listed_size(item: Any) -> int:
    """The size the repo's file listing gives (what an import may download), refusing a malformed one."""
    size = getattr(item, "size", None)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise HubError(f"the Hub listed {getattr(item, 'path', '?')!r} with a malformed size: {str(size)[:40]!r}")
    return size


def _larger_than_listed(repo_id: str, commit_sha: str, path: str, endpoint: str) -> Callable[[int], Exception]:
    def too_large(seen: int) -> Exception:
        return IntegrityError(
            f"{repo_id}@{commit_sha[:12]}: file {path!r} at {endpoint} is larger than the repo's listing says: "
            f"refused after {seen} bytes",
            hint="the server is damaged or hostile; nothing was imported",
            path=path,
        )

    return too_large
