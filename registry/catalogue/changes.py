"""Changing what the catalogue records about existing versions: aliases, status, eval scores, Hub copies."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry import settings
from registry.catalogue.eventlog import append_event
from registry.catalogue.queries import DEPRECATED, resolve, utcnow, version_info
from registry.db import write_with_retry
from registry.errors import (
    NotFoundError,
    UsageError,
)
from registry.models import (
    AdapterRow,
    AliasRow,
    DatasetRow,
    EvalScoreRow,
    HubCopyRow,
    VersionRow,
)
from registry.refs import parse_ref, split_name, validate_alias
from registry.types import (
    DatasetInfo,
    VersionInfo,
)


@dataclass(frozen=True)
class EvalInput:
    """An eval score to record: ``METRIC=VALUE[@DATASET]``."""

    metric: str
    value: float
    dataset: DatasetInfo | None = None
    dataset_name: str | None = None
    split: str | None = None



def set_alias(ref: str, alias: str, *, db: str | None = None, actor: str | None = None) -> VersionInfo:
    """Point ``alias`` of the ref's adapter at the ref's version; logs the move (from -> to)."""
    parsed = parse_ref(ref)
    validate_alias(alias)
    who = settings.current_actor(actor)

    def work(session: Session) -> VersionInfo:
        row = resolve(session, parsed)
        existing = session.scalar(
            select(AliasRow).where(AliasRow.adapter_id == row.adapter_id, AliasRow.alias == alias)
        )
        previous = None
        now = utcnow()
        if existing is None:
            session.add(AliasRow(adapter_id=row.adapter_id, alias=alias, version_id=row.id, updated_at=now))
        else:
            if existing.version_id == row.id:
                return version_info(session, row)
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
        return version_info(session, row)

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
        row = resolve(session, parsed)
        if row.status == DEPRECATED and row.status_reason == reason:
            return version_info(session, row)
        row.status = DEPRECATED
        row.status_reason = reason
        append_event(
            session, action="deprecate", subject=f"{row.adapter.namespace}/{row.adapter.name}@{row.number}",
            actor=who, details={"reason": reason, "digest": row.digest},
        )
        session.flush()
        return version_info(session, row)

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
        row = resolve(session, parsed)
        now = utcnow()
        for score in scores:
            add_eval_row(session, row.id, score, who, now)
            append_event(
                session, action="eval", subject=f"{row.adapter.namespace}/{row.adapter.name}@{row.number}",
                actor=who,
                details={"metric": score.metric, "value": score.value,
                         "dataset": score.dataset.digest if score.dataset else score.dataset_name,
                         "split": score.split},
            )
        session.flush()
        session.expire(row, ["eval_scores"])
        return version_info(session, row)

    return write_with_retry(db, work, what="recording eval scores")


def record_hub_copy(
    ref: str, *, endpoint: str, repo_id: str, commit_sha: str, tag: str | None,
    db: str | None = None, actor: str | None = None, action: str = "push",
) -> VersionInfo:
    """Record that a version is on a Hub at ``repo_id``@``commit_sha`` (idempotent) and log it."""
    parsed = parse_ref(ref)
    who = settings.current_actor(actor)

    def work(session: Session) -> VersionInfo:
        row = resolve(session, parsed)
        existing = session.scalar(
            select(HubCopyRow).where(
                HubCopyRow.version_id == row.id, HubCopyRow.endpoint == endpoint, HubCopyRow.repo_id == repo_id
            )
        )
        if existing is not None and existing.commit_sha == commit_sha and existing.tag == tag:
            return version_info(session, row)
        if existing is None:
            session.add(HubCopyRow(version_id=row.id, endpoint=endpoint, repo_id=repo_id,
                                   commit_sha=commit_sha, tag=tag, pushed_at=utcnow()))
        else:
            existing.commit_sha, existing.tag, existing.pushed_at = commit_sha, tag, utcnow()
        append_event(
            session, action=action, subject=f"{row.adapter.namespace}/{row.adapter.name}@{row.number}", actor=who,
            details={"endpoint": endpoint, "repo": repo_id, "commit": commit_sha, "tag": tag},
        )
        session.flush()
        session.expire(row, ["hub_copies"])
        return version_info(session, row)

    return write_with_retry(db, work, what="recording a hub copy")



def dataset_id(session: Session, info: dict[str, Any] | None) -> int | None:
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


def add_eval_row(session: Session, version_id: int, ev: EvalInput, actor: str, now: datetime) -> None:
    if ev.dataset is not None:
        dataset_id(session, {k: v for k, v in ev.dataset.__dict__.items() if v is not None})
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
