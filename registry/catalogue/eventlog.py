"""The audit log: a hash chain of events, appended inside each catalogue transaction."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry import settings
from registry.catalogue.queries import as_utc, resolve, utcnow
from registry.db import session_scope, write_with_retry
from registry.digest import (
    canonical_json,
    sha256_bytes,
)
from registry.models import (
    EventRow,
)
from registry.refs import parse_ref
from registry.types import (
    Event,
)

GENESIS_HASH = "0" * 64


def event_hash(at: datetime, actor: str, action: str, subject: str, details_json: str, prev_hash: str) -> str:
    """The sha256 an event row must carry; anyone can recompute it from the row."""
    return sha256_bytes(
        canonical_json(
            {
                "at": as_utc(at).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
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
    at = utcnow()
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
                subject = str(parsed) if parsed.digest is None else f"{parsed.full_name}@{resolve(session, parsed).number}"
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
        id=row.id, at=as_utc(row.at), actor=row.actor, action=row.action, subject=row.subject,
        details=json.loads(row.details_json), prev_hash=row.prev_hash, hash=row.hash,
    )
