"""Rows bound to the events that made them: the hash chain covers eval scores, alias moves,
deprecations, Hub copies and signatures, not only the events' own text.

An event that creates or changes such a row carries ``details["bound"] = {KEY: ROW_HASH}``, where
``KEY`` names the row (``eval_score/12``, ``alias/3/prod``, ``version-status/7``, ``hub_copy/5``,
``signature/2``) and ``ROW_HASH`` is the sha256 of the row's content in canonical JSON (``None``
when the event removed the row: ``alias-remove``). The event's own hash covers its details, so a
row edited with SQL no longer matches the newest event that bound it, a deleted row leaves a
binding without a row, and a row inserted behind the library's back has no binding.

Rows recorded before bindings existed (catalogues older than this code) have no binding; they are
recognised by their ids (below every bound row's of their table) and not reported.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.db import session_scope
from registry.digest import canonical_json, sha256_bytes
from registry.models import AliasRow, EvalScoreRow, EventRow, HubCopyRow, SignatureRow, VersionRow

ACTIVE = "active"


@dataclass(frozen=True)
class BindingProblem:
    severity: str  # "error" or "warning"
    kind: str  # row-edited, row-deleted, row-unbound
    subject: str  # the row key
    message: str


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    value = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _digest(content: dict[str, Any]) -> str:
    return sha256_bytes(canonical_json(content))


def eval_binding(row: EvalScoreRow) -> tuple[str, str]:
    return f"eval_score/{row.id}", _digest({
        "version_id": row.version_id, "metric": row.metric, "value": row.value, "dataset_digest": row.dataset_digest,
        "dataset_name": row.dataset_name, "split": row.split, "recorded_by": row.recorded_by,
        "recorded_at": _iso(row.recorded_at),
    })


def alias_key(adapter_id: int, alias: str) -> str:
    return f"alias/{adapter_id}/{alias}"


def alias_binding(row: AliasRow) -> tuple[str, str]:
    return alias_key(row.adapter_id, row.alias), _digest({
        "adapter_id": row.adapter_id, "alias": row.alias, "version_id": row.version_id,
    })


def status_binding(row: VersionRow) -> tuple[str, str]:
    return f"version-status/{row.id}", _digest({"status": row.status, "status_reason": row.status_reason})


def hub_copy_binding(row: HubCopyRow) -> tuple[str, str]:
    return f"hub_copy/{row.id}", _digest({
        "version_id": row.version_id, "endpoint": row.endpoint, "repo_id": row.repo_id, "commit_sha": row.commit_sha,
        "tag": row.tag, "pushed_at": _iso(row.pushed_at),
    })


def signature_binding(row: SignatureRow) -> tuple[str, str]:
    return f"signature/{row.id}", _digest({
        "version_id": row.version_id, "kind": row.kind, "signer": row.signer, "key_fingerprint": row.key_fingerprint,
        "public_key": row.public_key, "bundle_sha256": row.bundle_sha256, "signed_by": row.signed_by,
        "signed_at": _iso(row.signed_at),
    })


def bound(*pairs: tuple[str, str | None]) -> dict[str, dict[str, str | None]]:
    """``details`` entries for an event that binds these rows: ``{"bound": {key: hash}}``."""
    return {"bound": dict(pairs)}


def _current_rows(session: Session) -> Iterator[tuple[str, str, str, int, datetime | None]]:
    """Every bindable row as ``(key, hash, table, row id, when it was recorded)``."""
    for e in session.scalars(select(EvalScoreRow)).yield_per(2000):
        yield (*eval_binding(e), "eval_score", e.id, e.recorded_at)
    for a in session.scalars(select(AliasRow)):
        yield (*alias_binding(a), "alias", a.id, a.updated_at)
    for v in session.scalars(select(VersionRow).where(VersionRow.status != ACTIVE)):
        yield (*status_binding(v), "version", v.id, v.created_at)
    for h in session.scalars(select(HubCopyRow)):
        yield (*hub_copy_binding(h), "hub_copy", h.id, h.pushed_at)
    for s in session.scalars(select(SignatureRow)):
        yield (*signature_binding(s), "signature", s.id, s.signed_at)


def check_bindings(*, db: str | None = None) -> list[BindingProblem]:
    """Compare every bindable row with the newest event that bound it; one problem per mismatch.

    A row without a binding is an error unless it predates bindings (a catalogue upgraded from
    before them): its id is below every bound row's of its table (ids only grow), or, in a table
    with no bound row yet, it was recorded before the first binding event. Those legacy rows are
    not covered by the chain and not reported.
    """
    expected: dict[str, tuple[str | None, int]] = {}
    first_binding_at: datetime | None = None
    problems: list[BindingProblem] = []
    with session_scope(db) as session:
        query = select(EventRow.id, EventRow.at, EventRow.details_json).where(
            EventRow.details_json.contains('"bound":')
        ).order_by(EventRow.id)
        for event_id, at, details_json in session.execute(query).yield_per(2000):
            try:
                mapping = json.loads(details_json).get("bound")
            except (ValueError, AttributeError):
                continue  # an edited event is the chain check's finding
            if not isinstance(mapping, dict):
                continue
            if first_binding_at is None:
                first_binding_at = at
            for key, value in mapping.items():
                expected[str(key)] = (value if isinstance(value, str) else None, event_id)
        rows = list(_current_rows(session))
    lowest_bound: dict[str, int] = {}
    for key, _, table, row_id, _ in rows:
        if key in expected:
            lowest_bound[table] = min(row_id, lowest_bound.get(table, row_id))
    seen: set[str] = set()
    for key, digest, table, row_id, when in rows:
        seen.add(key)
        want = expected.get(key)
        if want is None:
            if table in lowest_bound:
                legacy = row_id < lowest_bound[table]
            else:
                legacy = first_binding_at is None or (when is not None and _naive(when) < _naive(first_binding_at))
            if not legacy:
                problems.append(BindingProblem(
                    "error", "row-unbound", key, "no event records this row: it was inserted or changed without the library",
                ))
        elif want[0] is None:
            problems.append(BindingProblem("error", "row-edited", key, f"event {want[1]} removed this row, but it exists again"))
        elif want[0] != digest:
            problems.append(BindingProblem(
                "error", "row-edited", key,
                f"its content hashes to {digest[:12]}…, but event {want[1]} recorded {want[0][:12]}… (the row was edited)",
            ))
    for key, (value, event_id) in expected.items():
        if value is None or key in seen:
            continue
        if key.startswith("version-status/"):
            problems.append(BindingProblem("error", "row-edited", key, f"event {event_id} deprecated this version; it is active again"))
        else:
            problems.append(BindingProblem("error", "row-deleted", key, f"event {event_id} recorded this row; it is gone"))
    return problems


def _naive(value: datetime) -> datetime:
    return value.astimezone(timezone.utc).replace(tzinfo=None) if value.tzinfo else value


__all__ = [
    "BindingProblem", "alias_binding", "alias_key", "bound", "check_bindings", "eval_binding", "hub_copy_binding",
    "signature_binding", "status_binding",
]
