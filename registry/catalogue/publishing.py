"""Adapters in and out of the catalogue: publish, import_manifest (a Hub pull) and export.

This is the part of the room that touches blobs. Order of a publish, and why it is crash-safe:
blobs are written first (atomically, content addressed), then one transaction inserts the version,
its files and its event. A crash before the commit leaves at most unreferenced blobs (``spr gc``
removes them), never a version without blobs. Slow work (reading and hashing files, copying blobs)
happens before the transaction opens, so writers hold the database lock for milliseconds.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from registry import settings
from registry.adapters import manifest as manifests
from registry.adapters import reader as adapter_reader
from registry.adapters.dataset import dataset_from_digest, describe_dataset
from registry.catalogue.changes import EvalInput, add_eval_row, dataset_id
from registry.catalogue.eventlog import append_event, log_event
from registry.catalogue.queries import ACTIVE, get_version, utcnow, version_info
from registry.db import write_with_retry
from registry.digest import (
    PREFIX,
    ProgressCallback,
    json_digest,
    parse_digest,
    sha256_bytes,
    sha256_file,
)
from registry.errors import (
    IntegrityError,
    InvalidAdapterError,
    UsageError,
)
from registry.models import (
    AdapterRow,
    BaseModelRow,
    FileRow,
    VersionRow,
)
from registry.refs import split_name
from registry.storage import BlobStore, open_store
from registry.types import (
    AdapterFacts,
    BaseModelInfo,
    DatasetInfo,
    FileRecord,
    PublishResult,
)

MAX_TAGS = 100


@dataclass
class PublishOptions:
    """Everything ``publish`` records besides the adapter's own files."""

    base_model: str | None = None
    base_model_info: BaseModelInfo | None = None  # already identified (training, pull)
    dataset: Path | None = None
    dataset_digest: str | None = None
    dataset_info: DatasetInfo | None = None
    evals: Sequence[EvalInput] = ()
    parent: str | None = None
    parent_digest: str | None = None  # a parent known only by digest (pull)
    training: dict[str, Any] = field(default_factory=dict)
    template: str | None = None
    description: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    author: str | None = None
    # False for adapters catalogued from outside (``spr import`` of a plain PEFT repo): their
    # base model and data are what the adapter claims, not what the registry saw.
    lineage_verified: bool = True


def publish(
    directory: Path | str,
    name: str,
    *,
    db: str | None = None,
    options: PublishOptions | None = None,
    progress: ProgressCallback | None = None,
    store: BlobStore | None = None,
) -> PublishResult:
    """Validate the adapter in ``directory``, store its files and record a new version of ``name``.

    Publishing content whose manifest digest already exists for ``name`` returns that version
    (``created=False``): retries are safe. Raises :class:`InvalidAdapterError` and friends for bad
    input, before anything is written.
    """
    options = options or PublishOptions()
    namespace, short = split_name(name)
    facts = adapter_reader.read_adapter(Path(directory))
    base = _base_model_info(facts, options)
    dataset = _dataset_info(options)
    parent_digest = _parent_digest(options, db)
    _check_template(options.template)
    actor = settings.current_actor(options.author)
    if store is None:
        store = open_store()
    with store.writing():  # from the first stored blob to the commit: gc keeps out
        files = _store_files(facts, store, progress)
        manifest = manifests.build(
            facts,
            files,
            base_model=base,
            dataset=dataset,
            training=options.training,
            template=options.template,
            parent_digest=parent_digest,
        )
        return _record_version(
            db,
            namespace,
            short,
            manifest,
            actor=actor,
            description=options.description,
            tags=options.tags,
            evals=options.evals,
            lineage_verified=options.lineage_verified,
            action="publish",
        )


def import_manifest(
    directory: Path,
    name: str,
    manifest: dict[str, Any],
    *,
    db: str | None = None,
    author: str | None = None,
    description: str | None = None,
    tags: dict[str, str] | None = None,
    evals: Sequence[EvalInput] = (),
    lineage_verified: bool = True,
    preferred_number: int | None = None,
    details: dict[str, Any] | None = None,
    store: BlobStore | None = None,
) -> PublishResult:
    """Record a version whose manifest came from elsewhere (a Hub pull), after checking every file.

    ``directory`` holds the downloaded files; each must match the manifest's sha256 and size.
    The version keeps the manifest's digest, so a version pulled into another catalogue has the
    same identity as the original. Raises :class:`IntegrityError` on any mismatch, before writing.
    """
    namespace, short = split_name(name)
    if store is None:
        store = open_store()
    with store.writing():  # from the first stored blob to the commit: gc keeps out
        return _import_files_and_record(
            store, Path(directory), namespace, short, manifest, db=db, actor=settings.current_actor(author),
            description=description, tags=tags or {}, evals=evals, lineage_verified=lineage_verified,
            preferred_number=preferred_number, details=details,
        )


def _import_files_and_record(
    store: BlobStore,
    directory: Path,
    namespace: str,
    short: str,
    manifest: dict[str, Any],
    *,
    db: str | None,
    actor: str,
    description: str | None,
    tags: dict[str, str],
    evals: Sequence[EvalInput],
    lineage_verified: bool,
    preferred_number: int | None,
    details: dict[str, Any] | None,
) -> PublishResult:
    for entry in manifest["files"]:
        rel = manifests.check_relative_path(entry["path"], "manifest")
        path = Path(directory) / rel
        if not path.is_file() or path.is_symlink():
            raise IntegrityError(
                f"file {rel!r} listed in the manifest is missing from {directory}",
                hint="the download is incomplete; pull again",
            )
        if store.reuse(entry["sha256"]):
            # Already stored (a re-pull, or shared with another version): check, don't copy.
            sha, size = sha256_file(path)
        else:
            # A pull's files are links into the Hub client's cache, which never rewrites a file in
            # place: link instead of copying (a 200 MB pull spent 0.8 s copying and fsyncing).
            sha, size = store.link_file(path)
        if sha != entry["sha256"] or size != entry["size"]:
            raise IntegrityError(
                f"file {rel!r} is sha256:{sha} ({size} bytes) but the manifest says "
                f"sha256:{entry['sha256']} ({entry['size']} bytes)",
                hint="the remote copy was changed or truncated; do not use it",
                expected=entry["sha256"],
                found=sha,
            )
    _check_manifest_describes(directory, manifest)
    return _record_version(
        db,
        namespace,
        short,
        manifest,
        actor=actor,
        description=description,
        tags=tags,
        evals=evals,
        lineage_verified=lineage_verified,
        action="import",
        preferred_number=preferred_number,
        details=details,
    )


def _check_manifest_describes(directory: Path, manifest: dict[str, Any]) -> None:
    """Validate the files as an adapter (as ``publish`` does) and hold the manifest to them.

    A manifest's digest only proves the document is unchanged, not that its claims are true: a
    hostile repo could describe a pickle as a 4096-wide prompt. So the files are read like any
    published adapter (safetensors only, shapes, finite values) and the manifest's PEFT facts,
    config and tensor list must be exactly what they yield.
    """
    facts = adapter_reader.read_adapter(directory)
    files = [FileRecord(f["path"], f["sha256"], f["size"]) for f in manifest["files"]]
    rebuilt = manifests.build(facts, files, base_model=None, dataset=None, training={}, template=None,
                              parent_digest=None)
    for section in ("peft", "peft_config", "tensors"):
        if rebuilt[section] != manifest.get(section):
            raise IntegrityError(
                f"the manifest's {section!r} does not describe the files it lists "
                f"(the files say {str(rebuilt[section])[:160]})",
                hint="the remote manifest is wrong or hostile; do not use this version",
            )


def _base_model_info(facts: AdapterFacts, options: PublishOptions) -> BaseModelInfo | None:
    # Imported here: identifying a base model reads weights headers (numpy); reads don't need it.
    from registry.adapters import basemodel

    if options.base_model_info is not None:
        return options.base_model_info
    if options.base_model:
        return basemodel.identify(options.base_model)
    return basemodel.from_adapter(facts)


def _dataset_info(options: PublishOptions) -> DatasetInfo | None:
    if options.dataset_info is not None:
        return options.dataset_info
    if options.dataset is not None and options.dataset_digest is not None:
        raise UsageError("give --dataset or --dataset-digest, not both")
    if options.dataset is not None:
        return describe_dataset(Path(options.dataset))
    if options.dataset_digest is not None:
        return dataset_from_digest(options.dataset_digest)
    return None


def _parent_digest(options: PublishOptions, db: str | None) -> str | None:
    if options.parent is not None:
        return get_version(options.parent, db=db).digest
    if options.parent_digest is not None:
        return PREFIX + parse_digest(options.parent_digest)
    return None


def _check_template(template: str | None) -> None:
    if template is not None and "{prompt}" not in template:
        raise UsageError(
            f"invalid template {template[:60]!r}: it must contain the placeholder {{prompt}}",
            hint="for example --template 'Human: {prompt}\\n\\nAssistant: '",
        )


def _store_files(facts: AdapterFacts, store: BlobStore, progress: ProgressCallback | None) -> list[FileRecord]:
    records = []
    for f in facts.files:
        sha, size = store.put_file(Path(f.source), progress)
        if size != f.size:
            raise InvalidAdapterError(
                f"{f.source} changed while it was being published ({f.size} bytes, then {size})",
                hint="wait until training has finished writing the adapter, then publish again",
            )
        records.append(FileRecord(path=f.path, sha256=sha, size=size))
    # Re-read the weights header from the stored copy: what is recorded is what was validated.
    weights = next(r for r in records if r.path == adapter_reader.WEIGHTS_NAME)
    from registry.adapters.tensorfile import read_header

    stored = read_header(store.local_path(weights.sha256), where=adapter_reader.WEIGHTS_NAME)
    shapes = {n: (t.dtype, t.shape) for n, t in stored.tensors.items()}
    if shapes != {t.name: (t.dtype, t.shape) for t in facts.tensors}:
        raise InvalidAdapterError(
            f"{adapter_reader.WEIGHTS_NAME} changed while it was being published",
            hint="wait until training has finished writing the adapter, then publish again",
        )
    return records


def _record_version(
    db: str | None,
    namespace: str,
    name: str,
    manifest: dict[str, Any],
    *,
    actor: str,
    description: str | None,
    tags: dict[str, str],
    evals: Sequence[EvalInput],
    lineage_verified: bool,
    action: str,
    preferred_number: int | None = None,
    details: dict[str, Any] | None = None,
) -> PublishResult:
    manifest_bytes = manifests.encode(manifest)
    digest = PREFIX + sha256_bytes(manifest_bytes)

    def work(session: Session) -> PublishResult:
        adapter = session.scalar(
            select(AdapterRow).where(AdapterRow.namespace == namespace, AdapterRow.name == name)
        )
        now = utcnow()
        if adapter is None:
            adapter = AdapterRow(namespace=namespace, name=name, description=description, created_at=now)
            session.add(adapter)
            session.flush()
        else:
            existing = session.scalar(
                select(VersionRow).where(VersionRow.adapter_id == adapter.id, VersionRow.digest == digest)
            )
            if existing is not None:
                return PublishResult(version_info(session, existing), created=False)
        latest = session.scalar(select(func.max(VersionRow.number)).where(VersionRow.adapter_id == adapter.id)) or 0
        number = latest + 1
        if preferred_number is not None and session.scalar(
            select(VersionRow.id).where(VersionRow.adapter_id == adapter.id, VersionRow.number == preferred_number)
        ) is None:
            # A pulled version keeps its publisher's number when it is free here (numbers are
            # never deleted, so a free number was never used).
            number = preferred_number
        peft = manifest["peft"]
        row = VersionRow(
            adapter_id=adapter.id,
            number=number,
            digest=digest,
            manifest=manifest_bytes.decode("utf-8"),
            peft_type=peft["peft_type"],
            task_type=peft.get("task_type"),
            num_virtual_tokens=peft.get("num_virtual_tokens"),
            token_dim=peft.get("token_dim"),
            num_transformer_submodules=peft.get("num_transformer_submodules"),
            init_method=peft.get("init_method"),
            init_text=peft.get("init_text"),
            tokenizer=peft.get("tokenizer"),
            template=manifest.get("template"),
            peft_version=peft.get("peft_version"),
            description=description,
            tags_json=json.dumps(tags, sort_keys=True),
            training_json=json.dumps(manifest.get("training") or {}, sort_keys=True),
            peft_config_json=json.dumps(manifest["peft_config"], sort_keys=True),
            base_model_id=_base_model_id(session, manifest.get("base_model")),
            dataset_id=dataset_id(session, manifest.get("dataset")),
            parent_digest=manifest.get("parent"),
            lineage_verified=lineage_verified,
            created_by=actor,
            created_at=now,
            status=ACTIVE,
        )
        session.add(row)
        session.flush()
        for f in manifest["files"]:
            session.add(FileRow(version_id=row.id, path=f["path"], sha256=f["sha256"], size=f["size"]))
        for ev in evals:
            add_eval_row(session, row.id, ev, actor, now)
        subject = f"{namespace}/{name}@{number}"
        append_event(
            session,
            action=action,
            subject=subject,
            actor=actor,
            details={"digest": digest, "files": len(manifest["files"]), **(details or {})},
        )
        session.flush()
        return PublishResult(version_info(session, row), created=True)

    return write_with_retry(db, work, what=f"{action} of {namespace}/{name}")


def _base_model_id(session: Session, identity: dict[str, Any] | None) -> int | None:
    if not identity:
        return None
    key = json_digest(identity)
    row = session.scalar(select(BaseModelRow).where(BaseModelRow.identity_digest == key))
    if row is None:
        row = BaseModelRow(identity_digest=key, **{k: identity.get(k) for k in _BASE_FIELDS}, source=identity.get("source", "adapter_config"))
        session.add(row)
        session.flush()
    return row.id


_BASE_FIELDS = (
    "name", "revision", "architecture", "model_type", "hidden_size", "vocab_size", "num_layers",
    "num_heads", "is_encoder_decoder", "config_digest", "embedding_fingerprint", "tokenizer_digest",
)



def export(
    ref: str, destination: Path | str, *, db: str | None = None, actor: str | None = None,
    progress: ProgressCallback | None = None, store: BlobStore | None = None,
) -> Path:
    """Write the version's files as a standard PEFT directory, verifying every byte on the way out.

    ``destination`` must not exist or be empty. The files are written to a temporary sibling
    folder and renamed into place, so a failure leaves nothing half-written.
    """
    version = get_version(ref, db=db)
    destination = Path(destination)
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise UsageError(
            f"export destination {destination} exists and is not an empty directory",
            hint="choose a new directory",
        )
    destination.parent.mkdir(parents=True, exist_ok=True)
    if store is None:
        store = open_store()
    staging = Path(tempfile.mkdtemp(prefix=".spr-export-", dir=destination.parent))
    try:
        for f in version.files:
            store.export(f.sha256, staging / manifests.check_relative_path(f.path, "catalogue"), progress)
        if destination.exists():
            destination.rmdir()
        os.replace(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log_event("export", version.ref, {"digest": version.digest, "to": str(destination.resolve())}, db=db, actor=actor)
    return destination
