"""Reading the catalogue: resolve a ref, list versions, walk a lineage; rows become frozen dataclasses.

Also the helpers the rest of the room shares for reading rows (:func:`resolve`, :func:`version_info`)
and for timestamps (:func:`utcnow`, :func:`as_utc`).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, joinedload, selectinload

from registry.db import session_scope
from registry.digest import (
    PREFIX,
)
from registry.errors import (
    AdapterNotFoundError,
    UsageError,
    VersionNotFoundError,
)
from registry.models import (
    AdapterRow,
    AliasRow,
    BaseModelRow,
    DatasetRow,
    VersionRow,
)
from registry.refs import Ref, parse_ref, split_name
from registry.types import (
    BaseModelInfo,
    DatasetInfo,
    EvalScore,
    FileRecord,
    HubCopy,
    Lineage,
    LineageNode,
    VersionInfo,
    VersionSummary,
)

ACTIVE = "active"
DEPRECATED = "deprecated"


def get_version(ref: str | Ref, *, db: str | None = None) -> VersionInfo:
    """Resolve a reference to a version. Raises :class:`NotFoundError` subclasses with a next step."""
    parsed = parse_ref(ref) if isinstance(ref, str) else ref
    with session_scope(db) as session:
        return version_info(session, resolve(session, parsed))


def resolve(session: Session, ref: Ref) -> VersionRow:
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


def version_info(
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
                split=s.split, recorded_by=s.recorded_by, recorded_at=as_utc(s.recorded_at),
            )
            for s in row.eval_scores
        ),
        hub_copies=tuple(
            HubCopy(h.endpoint, h.repo_id, h.commit_sha, h.tag, as_utc(h.pushed_at)) for h in row.hub_copies
        ),
        created_by=row.created_by,
        created_at=as_utc(row.created_at),
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
                created_at=as_utc(v.created_at),
            )
            for v, a, bname, dname, ddigest in rows
        ]


def versions(name: str, *, db: str | None = None) -> list[VersionSummary]:
    """Every version of one adapter, newest first, including deprecated ones."""
    return list_versions(db=db, name=name, include_inactive=True, limit=None)


def lineage(ref: str, *, db: str | None = None, max_depth: int = 10_000) -> Lineage:
    """The version and its ancestors, parent first. Cycles cannot occur (a digest covers its parent's).

    The chain is walked with one indexed lookup per generation, then every ancestor is loaded
    with its files, scores and aliases in a few batched queries.
    """
    parsed = parse_ref(ref)
    with session_scope(db) as session:
        row = resolve(session, parsed)
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
            info = version_info(session, rows[vid], aliases=tuple(aliases.get(vid, ())), parent_ref=parent_ref)
            ancestors.append(LineageNode(ref=refs[i], digest=node_digest, version=info))
        version = version_info(session, row, parent_ref=refs[0] if refs else None)
        complete = not chain or chain[-1][1] is not None
        return Lineage(version=version, ancestors=tuple(ancestors), complete=complete)



def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes; everything stored is UTC."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
