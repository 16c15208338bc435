"""The catalogue: publish, find, alias, deprecate, export, lineage and the audit log.

Every public function is one transaction (``db.session_scope`` / ``db.write_with_retry``) and
returns frozen dataclasses from ``registry.types``. Slow work (reading and hashing files, copying
blobs) happens before the transaction opens, so writers hold the database lock for milliseconds.

Order of a publish, and why it is crash-safe: blobs are written first (atomically, content
addressed), then one transaction inserts the version, its files and its event. A crash before the
commit leaves at most unreferenced blobs (``spr gc`` removes them), never a version without blobs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, joinedload, selectinload

from registry import settings
from registry.adapters import manifest as manifests
from registry.adapters import reader as adapter_reader
from registry.adapters.dataset import dataset_from_digest, describe_dataset
from registry.db import session_scope, write_with_retry
from registry.digest import (
    PREFIX,
    ProgressCallback,
    canonical_json,
    json_digest,
    parse_digest,
    parse_json_object,
    sha256_bytes,
    sha256_file,
)
from registry.errors import (
    AdapterNotFoundError,
    IntegrityError,
    InvalidAdapterError,
    NotFoundError,
    UsageError,
    VersionNotFoundError,
)
from registry.models import (
    AdapterRow,
    AliasRow,
    BaseModelRow,
    DatasetRow,
    EvalScoreRow,
    EventRow,
    FileRow,
    HubCopyRow,
    VersionRow,
)
from registry.refs import Ref, parse_ref, split_name, validate_alias
from registry.storage import BlobStore, open_store
from registry.types import (
    AdapterFacts,
    BaseModelInfo,
    DatasetInfo,
    EvalScore,
    Event,
    FileRecord,
    HubCopy,
    Lineage,
    LineageNode,
    PublishResult,
    VersionInfo,
    VersionSummary,
)

GENESIS_HASH = "0" * 64
ACTIVE = "active"
DEPRECATED = "deprecated"
MAX_TAGS = 100


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class EvalInput:
    """An eval score to record: ``METRIC=VALUE[@DATASET]``."""

    metric: str
    value: float
    dataset: DatasetInfo | None = None
    dataset_name: str | None = None
    split: str | None = None


def parse_eval(text: str) -> EvalInput:
    """Parse ``METRIC=VALUE[@DATASET]``; DATASET is a path (digested), ``sha256:…``, or a name."""
    metric, sep, rest = text.partition("=")
    metric = metric.strip()
    value_text, _, dataset_text = rest.partition("@")
    if not sep or not metric or len(metric) > 100 or not value_text.strip():
        raise UsageError(
            f"invalid eval score {text!r}: expected METRIC=VALUE[@DATASET]",
            hint="for example --eval eval_loss=2.31@data/heldout.jsonl",
        )
    try:
        value = float(value_text)
    except ValueError:
        raise UsageError(f"invalid eval score {text!r}: {value_text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise UsageError(f"invalid eval score {text!r}: the value must be finite")
    dataset: DatasetInfo | None = None
    name: str | None = None
    if dataset_text:
        if dataset_text.lower().startswith("sha256:"):
            dataset = dataset_from_digest(dataset_text)
        elif Path(dataset_text).exists():
            dataset = describe_dataset(Path(dataset_text))
            name = dataset.name
        else:
            name = dataset_text
    return EvalInput(metric=metric, value=value, dataset=dataset, dataset_name=name)


def parse_tags(items: Iterable[str]) -> dict[str, str]:
    """``k=v`` strings -> dict; raise :class:`UsageError` on a malformed one."""
    tags: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or len(key) > 100 or len(value) > 1000:
            raise UsageError(f"invalid tag {item!r}: expected KEY=VALUE", hint="for example --tag team=search")
        tags[key.strip()] = value
    if len(tags) > MAX_TAGS:
        raise UsageError(f"too many tags ({len(tags)}); at most {MAX_TAGS}")
    return tags


def read_training_args(path: Path) -> dict[str, Any]:
    """Load ``--training-args FILE.json`` (an object)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read training arguments {path}: {exc.strerror}") from None
    return parse_json_object(raw, f"training arguments {path}", UsageError, hint="pass a JSON object")


# ---------------------------------------------------------------------------------------------
# Publish


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
    with open_store().writing():  # from the first stored blob to the commit: gc keeps out
        files = _store_files(facts, progress)
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
) -> PublishResult:
    """Record a version whose manifest came from elsewhere (a Hub pull), after checking every file.

    ``directory`` holds the downloaded files; each must match the manifest's sha256 and size.
    The version keeps the manifest's digest, so a version pulled into another catalogue has the
    same identity as the original. Raises :class:`IntegrityError` on any mismatch, before writing.
    """
    namespace, short = split_name(name)
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


def _store_files(facts: AdapterFacts, progress: ProgressCallback | None) -> list[FileRecord]:
    store = open_store()
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
        now = _now()
        if adapter is None:
            adapter = AdapterRow(namespace=namespace, name=name, description=description, created_at=now)
            session.add(adapter)
            session.flush()
        else:
            existing = session.scalar(
                select(VersionRow).where(VersionRow.adapter_id == adapter.id, VersionRow.digest == digest)
            )
            if existing is not None:
                return PublishResult(_version_info(session, existing), created=False)
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
            dataset_id=_dataset_id(session, manifest.get("dataset")),
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
            _add_eval(session, row.id, ev, actor, now)
        subject = f"{namespace}/{name}@{number}"
        append_event(
            session,
            action=action,
            subject=subject,
            actor=actor,
            details={"digest": digest, "files": len(manifest["files"]), **(details or {})},
        )
        session.flush()
        return PublishResult(_version_info(session, row), created=True)

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


def _dataset_id(session: Session, info: dict[str, Any] | None) -> int | None:
    if not info:
        return None
    row = session.scalar(select(DatasetRow).where(DatasetRow.digest == info["digest"]))
    if row is None:
        row = DatasetRow(
            digest=info["digest"], name=info.get("name"), format=info.get("format"),
            records=info.get("records"), size=info.get("size"),
        )
        session.add(row)
        session.flush()
    return row.id


def _add_eval(session: Session, version_id: int, ev: EvalInput, actor: str, now: datetime) -> None:
    if ev.dataset is not None:
        _dataset_id(session, {k: v for k, v in ev.dataset.__dict__.items() if v is not None})
    session.add(
        EvalScoreRow(
            version_id=version_id,
            metric=ev.metric,
            value=ev.value,
            dataset_digest=ev.dataset.digest if ev.dataset else None,
            dataset_name=ev.dataset_name or (ev.dataset.name if ev.dataset else None),
            split=ev.split,
            recorded_by=actor,
            recorded_at=now,
        )
    )


# ---------------------------------------------------------------------------------------------
# Reading


def get_version(ref: str | Ref, *, db: str | None = None) -> VersionInfo:
    """Resolve a reference to a version. Raises :class:`NotFoundError` subclasses with a next step."""
    parsed = parse_ref(ref) if isinstance(ref, str) else ref
    with session_scope(db) as session:
        return _version_info(session, _resolve(session, parsed))


def _resolve(session: Session, ref: Ref) -> VersionRow:
    adapter = session.scalar(
        select(AdapterRow).where(AdapterRow.namespace == ref.namespace, AdapterRow.name == ref.name)
    )
    if adapter is None:
        raise AdapterNotFoundError(
            f"no adapter named {ref.full_name!r} in the catalogue",
            hint="see 'spr list' for published adapters",
            ref=str(ref),
        )
    query = select(VersionRow).where(VersionRow.adapter_id == adapter.id)
    if ref.number is not None:
        row = session.scalar(query.where(VersionRow.number == ref.number))
        if row is None:
            latest = session.scalar(select(func.max(VersionRow.number)).where(VersionRow.adapter_id == adapter.id))
            raise VersionNotFoundError(
                f"adapter {ref.full_name!r} has no version {ref.number} (latest is {latest})",
                hint=f"see 'spr versions {ref.full_name}'",
                ref=str(ref),
            )
        return row
    if ref.alias is not None:
        alias = session.scalar(
            select(AliasRow).where(AliasRow.adapter_id == adapter.id, AliasRow.alias == ref.alias)
        )
        if alias is None:
            raise VersionNotFoundError(
                f"adapter {ref.full_name!r} has no alias {ref.alias!r}",
                hint=f"set it with 'spr alias set {ref.full_name}@N {ref.alias}'",
                ref=str(ref),
            )
        return session.get_one(VersionRow, alias.version_id)
    if ref.digest is not None:
        row = session.scalar(query.where(VersionRow.digest == PREFIX + ref.digest))
        if row is None:
            raise VersionNotFoundError(
                f"adapter {ref.full_name!r} has no version with digest sha256:{ref.digest[:12]}…",
                hint=f"see 'spr versions {ref.full_name}'",
                ref=str(ref),
            )
        return row
    row = session.scalar(query.where(VersionRow.status == ACTIVE).order_by(VersionRow.number.desc()).limit(1))
    if row is None:
        raise VersionNotFoundError(
            f"adapter {ref.full_name!r} has no active version (all are deprecated)",
            hint=f"name a version explicitly, e.g. '{ref.full_name}@1'; see 'spr versions {ref.full_name}'",
            ref=str(ref),
        )
    return row


_UNSET: Any = object()


def _version_info(
    session: Session, row: VersionRow, *, aliases: tuple[str, ...] | None = None, parent_ref: str | None = _UNSET
) -> VersionInfo:
    """Build the frozen view of a row; ``aliases``/``parent_ref`` may be passed when already known."""
    adapter = row.adapter
    if aliases is None:
        aliases = tuple(
            session.scalars(select(AliasRow.alias).where(AliasRow.version_id == row.id).order_by(AliasRow.alias))
        )
    if parent_ref is _UNSET:
        parent_ref = (
            _ref_for_digest(session, row.parent_digest, prefer_adapter=row.adapter_id) if row.parent_digest else None
        )
    return VersionInfo(
        namespace=adapter.namespace,
        name=adapter.name,
        number=row.number,
        digest=row.digest,
        status=row.status,
        status_reason=row.status_reason,
        peft_type=row.peft_type,
        task_type=row.task_type,
        num_virtual_tokens=row.num_virtual_tokens,
        token_dim=row.token_dim,
        num_transformer_submodules=row.num_transformer_submodules,
        init_method=row.init_method,
        init_text=row.init_text,
        tokenizer=row.tokenizer,
        template=row.template,
        peft_version=row.peft_version,
        description=row.description,
        tags=json.loads(row.tags_json),
        training=json.loads(row.training_json),
        peft_config=json.loads(row.peft_config_json),
        base_model=_base_info(row.base_model),
        dataset=_dataset_info_of(row.dataset),
        parent_digest=row.parent_digest,
        parent_ref=parent_ref,
        lineage_verified=row.lineage_verified,
        files=tuple(FileRecord(f.path, f.sha256, f.size) for f in row.files),
        aliases=aliases,
        eval_scores=tuple(
            EvalScore(
                metric=s.metric, value=s.value, dataset=s.dataset_digest, dataset_name=s.dataset_name,
                split=s.split, recorded_by=s.recorded_by, recorded_at=_utc(s.recorded_at),
            )
            for s in row.eval_scores
        ),
        hub_copies=tuple(
            HubCopy(h.endpoint, h.repo_id, h.commit_sha, h.tag, _utc(h.pushed_at)) for h in row.hub_copies
        ),
        created_by=row.created_by,
        created_at=_utc(row.created_at),
        manifest=json.loads(row.manifest),
    )


def _ref_for_digest(session: Session, digest: str, prefer_adapter: int | None = None) -> str | None:
    rows = session.execute(
        select(AdapterRow.namespace, AdapterRow.name, VersionRow.number, VersionRow.adapter_id)
        .join(VersionRow, VersionRow.adapter_id == AdapterRow.id)
        .where(VersionRow.digest == digest)
        .order_by(VersionRow.id)
    ).all()
    if not rows:
        return None
    best = next((r for r in rows if r.adapter_id == prefer_adapter), rows[0])
    return f"{best.namespace}/{best.name}@{best.number}"


def _base_info(row: BaseModelRow | None) -> BaseModelInfo | None:
    if row is None:
        return None
    return BaseModelInfo(
        name=row.name, revision=row.revision, architecture=row.architecture, model_type=row.model_type,
        hidden_size=row.hidden_size, vocab_size=row.vocab_size, num_layers=row.num_layers,
        num_heads=row.num_heads, is_encoder_decoder=row.is_encoder_decoder, config_digest=row.config_digest,
        embedding_fingerprint=row.embedding_fingerprint, tokenizer_digest=row.tokenizer_digest, source=row.source,
    )


def _dataset_info_of(row: DatasetRow | None) -> DatasetInfo | None:
    if row is None:
        return None
    return DatasetInfo(digest=row.digest, name=row.name, format=row.format, records=row.records, size=row.size)


def list_versions(
    *,
    db: str | None = None,
    name: str | None = None,
    base_model: str | None = None,
    peft_type: str | None = None,
    dataset: str | None = None,
    include_inactive: bool = False,
    limit: int | None = 50,
) -> list[VersionSummary]:
    """Versions newest first, filtered. ``base_model`` and ``dataset`` match a name or a digest."""
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1, found {limit}")
    with session_scope(db) as session:
        query = (
            select(VersionRow, AdapterRow, BaseModelRow.name, DatasetRow.name, DatasetRow.digest)
            .join(AdapterRow, VersionRow.adapter_id == AdapterRow.id)
            .outerjoin(BaseModelRow, VersionRow.base_model_id == BaseModelRow.id)
            .outerjoin(DatasetRow, VersionRow.dataset_id == DatasetRow.id)
        )
        if name is not None:
            namespace, short = split_name(name)
            query = query.where(AdapterRow.namespace == namespace, AdapterRow.name == short)
            adapter_exists = session.scalar(
                select(AdapterRow.id).where(AdapterRow.namespace == namespace, AdapterRow.name == short)
            )
            if adapter_exists is None:
                raise AdapterNotFoundError(
                    f"no adapter named {namespace}/{short!s} in the catalogue", hint="see 'spr list'"
                )
        # Filters resolve to ids first: with one id, the (id, created_at) index yields rows
        # already newest first, so the database never sorts the whole match.
        if base_model is not None:
            base_ids = session.scalars(select(BaseModelRow.id).where(BaseModelRow.name == base_model)).all()
            query = query.where(VersionRow.base_model_id.in_(base_ids))
        if peft_type is not None:
            query = query.where(VersionRow.peft_type == peft_type.upper().replace("-", "_"))
        if dataset is not None:
            column = DatasetRow.digest if dataset.startswith(PREFIX) else DatasetRow.name
            dataset_ids = session.scalars(select(DatasetRow.id).where(column == dataset)).all()
            query = query.where(VersionRow.dataset_id.in_(dataset_ids))
        if not include_inactive:
            query = query.where(VersionRow.status == ACTIVE)
        query = query.order_by(VersionRow.created_at.desc(), VersionRow.id.desc())
        if limit is not None:
            query = query.limit(limit)
        rows = session.execute(query).all()
        ids = [r[0].id for r in rows]
        aliases: dict[int, list[str]] = {}
        if ids:
            for version_id, alias in session.execute(
                select(AliasRow.version_id, AliasRow.alias).where(AliasRow.version_id.in_(ids)).order_by(AliasRow.alias)
            ):
                aliases.setdefault(version_id, []).append(alias)
        return [
            VersionSummary(
                namespace=a.namespace, name=a.name, number=v.number, digest=v.digest, status=v.status,
                peft_type=v.peft_type, num_virtual_tokens=v.num_virtual_tokens, base_model=bname,
                dataset=dname or ddigest, aliases=tuple(aliases.get(v.id, ())), created_by=v.created_by,
                created_at=_utc(v.created_at),
            )
            for v, a, bname, dname, ddigest in rows
        ]


def versions(name: str, *, db: str | None = None) -> list[VersionSummary]:
    """Every version of one adapter, newest first, including deprecated ones."""
    return list_versions(db=db, name=name, include_inactive=True, limit=None)


# ---------------------------------------------------------------------------------------------
# Aliases, status, eval scores, hub copies


def set_alias(ref: str, alias: str, *, db: str | None = None, actor: str | None = None) -> VersionInfo:
    """Point ``alias`` of the ref's adapter at the ref's version; logs the move (from -> to)."""
    parsed = parse_ref(ref)
    validate_alias(alias)
    who = settings.current_actor(actor)

    def work(session: Session) -> VersionInfo:
        row = _resolve(session, parsed)
        existing = session.scalar(
            select(AliasRow).where(AliasRow.adapter_id == row.adapter_id, AliasRow.alias == alias)
        )
        previous = None
        now = _now()
        if existing is None:
            session.add(AliasRow(adapter_id=row.adapter_id, alias=alias, version_id=row.id, updated_at=now))
        else:
            if existing.version_id == row.id:
                return _version_info(session, row)
            previous = session.get_one(VersionRow, existing.version_id).number
            existing.version_id = row.id
            existing.updated_at = now
        append_event(
            session,
            action="alias-set",
            subject=f"{row.adapter.namespace}/{row.adapter.name}@{alias}",
            actor=who,
            details={"alias": alias, "from": previous, "to": row.number, "digest": row.digest},
        )
        session.flush()
        return _version_info(session, row)

    return write_with_retry(db, work, what=f"moving alias {alias!r}")


def remove_alias(name: str, alias: str, *, db: str | None = None, actor: str | None = None) -> None:
    """Delete an alias; logs the removal. Raises :class:`NotFoundError` when it does not exist."""
    namespace, short = split_name(name)
    who = settings.current_actor(actor)

    def work(session: Session) -> None:
        row = session.scalar(
            select(AliasRow)
            .join(AdapterRow, AliasRow.adapter_id == AdapterRow.id)
            .where(AdapterRow.namespace == namespace, AdapterRow.name == short, AliasRow.alias == alias)
        )
        if row is None:
            raise NotFoundError(
                f"adapter '{namespace}/{short}' has no alias {alias!r}", hint=f"see 'spr versions {namespace}/{short}'"
            )
        number = session.get_one(VersionRow, row.version_id).number
        session.delete(row)
        append_event(
            session, action="alias-remove", subject=f"{namespace}/{short}@{alias}", actor=who,
            details={"alias": alias, "from": number},
        )

    write_with_retry(db, work, what=f"removing alias {alias!r}")


def deprecate(ref: str, reason: str, *, db: str | None = None, actor: str | None = None) -> VersionInfo:
    """Mark a version deprecated (it stays resolvable by number, alias and digest)."""
    if not reason or not reason.strip():
        raise UsageError("a deprecation needs a reason", hint="pass --reason TEXT")
    parsed = parse_ref(ref)
    who = settings.current_actor(actor)

    def work(session: Session) -> VersionInfo:
        row = _resolve(session, parsed)
        if row.status == DEPRECATED and row.status_reason == reason:
            return _version_info(session, row)
        row.status = DEPRECATED
        row.status_reason = reason
        append_event(
            session, action="deprecate", subject=f"{row.adapter.namespace}/{row.adapter.name}@{row.number}",
            actor=who, details={"reason": reason, "digest": row.digest},
        )
        session.flush()
        return _version_info(session, row)

    return write_with_retry(db, work, what="deprecation")


def add_eval(ref: str, score: EvalInput, *, db: str | None = None, actor: str | None = None) -> VersionInfo:
    """Record one more eval score for a version; see :func:`add_evals`."""
    return add_evals(ref, [score], db=db, actor=actor)


def add_evals(
    ref: str, scores: Sequence[EvalInput], *, db: str | None = None, actor: str | None = None
) -> VersionInfo:
    """Record eval scores for a version, all or none, in one transaction.

    Scores accumulate over time and are not part of the version's digest. Raises
    :class:`UsageError` for a split name over 100 characters, before anything is written.
    """
    parsed = parse_ref(ref)
    who = settings.current_actor(actor)
    for score in scores:
        if score.split is not None and len(score.split) > 100:
            raise UsageError(f"split name {score.split[:40]!r}… is over 100 characters", hint="use a short name such as 'test'")

    def work(session: Session) -> VersionInfo:
        row = _resolve(session, parsed)
        now = _now()
        for score in scores:
            _add_eval(session, row.id, score, who, now)
            append_event(
                session, action="eval", subject=f"{row.adapter.namespace}/{row.adapter.name}@{row.number}",
                actor=who,
                details={"metric": score.metric, "value": score.value,
                         "dataset": score.dataset.digest if score.dataset else score.dataset_name,
                         "split": score.split},
            )
        session.flush()
        session.expire(row, ["eval_scores"])
        return _version_info(session, row)

    return write_with_retry(db, work, what="recording eval scores")


def record_hub_copy(
    ref: str, *, endpoint: str, repo_id: str, commit_sha: str, tag: str | None,
    db: str | None = None, actor: str | None = None, action: str = "push",
) -> VersionInfo:
    """Record that a version is on a Hub at ``repo_id``@``commit_sha`` (idempotent) and log it."""
    parsed = parse_ref(ref)
    who = settings.current_actor(actor)

    def work(session: Session) -> VersionInfo:
        row = _resolve(session, parsed)
        existing = session.scalar(
            select(HubCopyRow).where(
                HubCopyRow.version_id == row.id, HubCopyRow.endpoint == endpoint, HubCopyRow.repo_id == repo_id
            )
        )
        if existing is not None and existing.commit_sha == commit_sha and existing.tag == tag:
            return _version_info(session, row)
        if existing is None:
            session.add(HubCopyRow(version_id=row.id, endpoint=endpoint, repo_id=repo_id,
                                   commit_sha=commit_sha, tag=tag, pushed_at=_now()))
        else:
            existing.commit_sha, existing.tag, existing.pushed_at = commit_sha, tag, _now()
        append_event(
            session, action=action, subject=f"{row.adapter.namespace}/{row.adapter.name}@{row.number}", actor=who,
            details={"endpoint": endpoint, "repo": repo_id, "commit": commit_sha, "tag": tag},
        )
        session.flush()
        session.expire(row, ["hub_copies"])
        return _version_info(session, row)

    return write_with_retry(db, work, what="recording a hub copy")


# ---------------------------------------------------------------------------------------------
# Export and lineage


def export(
    ref: str, destination: Path | str, *, db: str | None = None, actor: str | None = None,
    progress: ProgressCallback | None = None,
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


def lineage(ref: str, *, db: str | None = None, max_depth: int = 10_000) -> Lineage:
    """The version and its ancestors, parent first. Cycles cannot occur (a digest covers its parent's).

    The chain is walked with one indexed lookup per generation, then every ancestor is loaded
    with its files, scores and aliases in a few batched queries.
    """
    parsed = parse_ref(ref)
    with session_scope(db) as session:
        row = _resolve(session, parsed)
        chain: list[tuple[str, int | None]] = []  # (digest, version id or None when unknown here)
        digest = row.parent_digest
        seen = {row.digest}
        while digest and len(chain) < max_depth and digest not in seen:
            seen.add(digest)
            found = session.execute(
                select(VersionRow.id, VersionRow.parent_digest)
                .where(VersionRow.digest == digest)
                .order_by((VersionRow.adapter_id == row.adapter_id).desc(), VersionRow.id)
                .limit(1)
            ).first()
            chain.append((digest, found.id if found else None))
            if found is None:
                break
            digest = found.parent_digest
        ids = [vid for _, vid in chain if vid is not None]
        rows = {
            r.id: r
            for r in session.scalars(
                select(VersionRow)
                .where(VersionRow.id.in_(ids))
                .options(
                    joinedload(VersionRow.adapter), joinedload(VersionRow.base_model), joinedload(VersionRow.dataset),
                    selectinload(VersionRow.files), selectinload(VersionRow.eval_scores),
                    selectinload(VersionRow.hub_copies),
                )
            )
        } if ids else {}
        aliases: dict[int, list[str]] = {}
        for version_id, alias in session.execute(
            select(AliasRow.version_id, AliasRow.alias).where(AliasRow.version_id.in_(ids)).order_by(AliasRow.alias)
        ):
            aliases.setdefault(version_id, []).append(alias)
        ancestors: list[LineageNode] = []
        refs = [f"{rows[vid].adapter.namespace}/{rows[vid].adapter.name}@{rows[vid].number}" if vid else None
                for _, vid in chain]
        for i, (node_digest, vid) in enumerate(chain):
            if vid is None:
                ancestors.append(LineageNode(ref=None, digest=node_digest, version=None))
                continue
            parent_ref = refs[i + 1] if i + 1 < len(chain) else None
            info = _version_info(session, rows[vid], aliases=tuple(aliases.get(vid, ())), parent_ref=parent_ref)
            ancestors.append(LineageNode(ref=refs[i], digest=node_digest, version=info))
        version = _version_info(session, row, parent_ref=refs[0] if refs else None)
        complete = not chain or chain[-1][1] is not None
        return Lineage(version=version, ancestors=tuple(ancestors), complete=complete)


# ---------------------------------------------------------------------------------------------
# Audit log


def event_hash(at: datetime, actor: str, action: str, subject: str, details_json: str, prev_hash: str) -> str:
    """The sha256 an event row must carry; anyone can recompute it from the row."""
    return sha256_bytes(
        canonical_json(
            {
                "at": _utc(at).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "actor": actor,
                "action": action,
                "subject": subject,
                "details": json.loads(details_json),
                "prev": prev_hash,
            }
        )
    )


def append_event(session: Session, *, action: str, subject: str, actor: str, details: dict[str, Any]) -> EventRow:
    """Append an event inside the caller's transaction, chained to the newest event.

    Two writers appending after the same event collide on the unique ``prev_hash``; the loser's
    whole transaction is retried by ``write_with_retry``.
    """
    prev = session.scalar(select(EventRow.hash).order_by(EventRow.id.desc()).limit(1)) or GENESIS_HASH
    at = _now()
    details_json = json.dumps(details, sort_keys=True, separators=(",", ":"))
    row = EventRow(
        at=at, actor=actor, action=action, subject=subject, details_json=details_json, prev_hash=prev,
        hash=event_hash(at, actor, action, subject, details_json, prev),
    )
    session.add(row)
    session.flush()
    return row


def log_event(
    action: str, subject: str, details: dict[str, Any], *, db: str | None = None, actor: str | None = None
) -> Event:
    """Record one event in its own transaction (for actions outside the catalogue: verify overrides, exports)."""
    who = settings.current_actor(actor)
    return write_with_retry(
        db, lambda s: _event(append_event(s, action=action, subject=subject, actor=who, details=details)),
        what=f"logging {action}",
    )


def events(ref: str | None = None, *, db: str | None = None, limit: int | None = None) -> list[Event]:
    """Audit events oldest first; with ``ref``, only those about that adapter (any version or alias)."""
    with session_scope(db) as session:
        query = select(EventRow)
        if ref is not None:
            parsed = parse_ref(ref)
            if parsed.number is not None or parsed.alias is not None or parsed.digest is not None:
                subject = str(parsed) if parsed.digest is None else f"{parsed.full_name}@{_resolve(session, parsed).number}"
                query = query.where(EventRow.subject == subject)
            else:
                query = query.where(
                    (EventRow.subject == parsed.full_name) | EventRow.subject.startswith(parsed.full_name + "@")
                )
        if limit is not None:
            rows = list(reversed(session.scalars(query.order_by(EventRow.id.desc()).limit(limit)).all()))
        else:
            rows = list(session.scalars(query.order_by(EventRow.id)))
        return [_event(r) for r in rows]


def verify_event_chain(*, db: str | None = None) -> list[str]:
    """Check every event's hash and link; returns one line per problem (empty when intact)."""
    problems: list[str] = []
    with session_scope(db) as session:
        prev = GENESIS_HASH
        for row in session.scalars(select(EventRow).order_by(EventRow.id)).yield_per(1000):
            if row.prev_hash != prev:
                problems.append(
                    f"event {row.id} ({row.action} {row.subject}): links to {row.prev_hash[:12]}… but the "
                    f"previous event hashes to {prev[:12]}… (an event was deleted or reordered)"
                )
            try:
                expected = event_hash(row.at, row.actor, row.action, row.subject, row.details_json, row.prev_hash)
            except (ValueError, TypeError):
                expected = "unparseable"
            if expected != row.hash:
                problems.append(
                    f"event {row.id} ({row.action} {row.subject}): its content hashes to {expected[:12]}… "
                    f"but it records {row.hash[:12]}… (the row was edited)"
                )
            prev = row.hash
    return problems


def _event(row: EventRow) -> Event:
    return Event(
        id=row.id, at=_utc(row.at), actor=row.actor, action=row.action, subject=row.subject,
        details=json.loads(row.details_json), prev_hash=row.prev_hash, hash=row.hash,
    )


# ---------------------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes; everything stored is UTC."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


__all__ = [
    "EvalInput", "PublishOptions", "add_eval", "add_evals", "deprecate", "events", "export", "get_version",
    "import_manifest", "lineage", "list_versions", "log_event", "parse_eval", "parse_tags", "publish",
    "read_training_args", "record_hub_copy", "remove_alias", "set_alias", "verify_event_chain", "versions",
]
