"""Signature rows and the catalogue's integrity facts (append-only guards, the chain head).

Every public function is one transaction. A stored signature is bound to its ``sign`` event: the
event's details carry the bundle's sha256, so an edited bundle disagrees with the hash chain.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from registry import settings
from registry.catalogue.bindings import bound, signature_binding
from registry.catalogue.eventlog import GENESIS_HASH, append_event
from registry.catalogue.queries import resolve
from registry.db import session_scope, write_with_retry
from registry.digest import sha256_bytes
from registry.errors import IntegrityError
from registry.models import AdapterRow, EventRow, SignatureRow, VersionRow
from registry.refs import parse_ref
from registry.types import SignatureInfo

# The append-only guards the migrations create (0001: versions, files, events; 0002: signatures).
EXPECTED_GUARDS = (
    "guard_version_update", "guard_version_delete", "guard_file_update", "guard_file_delete",
    "guard_event_update", "guard_event_delete", "guard_signature_update", "guard_signature_delete",
)


@dataclass(frozen=True)
class NewSignature:
    """What :func:`add_signature` stores; the bundle was verified by ``registry.trust`` first."""

    kind: str
    signer: str
    key_fingerprint: str
    public_key: str
    bundle: str


@dataclass(frozen=True)
class ChainHead:
    """The newest event: how many events the chain holds and the newest one's hash."""

    count: int
    head_id: int | None
    head_hash: str  # GENESIS_HASH when the chain is empty


def add_signature(
    ref: str, expected_digest: str, new: NewSignature, *, db: str | None = None, actor: str | None = None
) -> tuple[SignatureInfo, bool]:
    """Store a signature of the version ``ref`` and log a ``sign`` event, in one transaction.

    ``expected_digest`` is the digest the bundle was verified against: if ``ref`` (an alias, say)
    now names another version, nothing is stored. Signing again with a key that already signed
    the version returns the stored signature and ``False``.
    """
    who = settings.current_actor(actor)
    parsed = parse_ref(ref)

    def work(session: Session) -> tuple[SignatureInfo, bool]:
        version = resolve(session, parsed)
        if version.digest != expected_digest:
            raise IntegrityError(
                f"{ref} now names {version.digest[:19]}…, not the version that was signed ({expected_digest[:19]}…)",
                hint="sign the exact version, e.g. NAME@N",
            )
        existing = session.scalar(
            select(SignatureRow).where(
                SignatureRow.version_id == version.id, SignatureRow.key_fingerprint == new.key_fingerprint
            )
        )
        if existing is not None:
            return _info(session, existing), False
        bundle_sha = sha256_bytes(new.bundle.encode("utf-8"))
        row = SignatureRow(
            version_id=version.id, kind=new.kind, signer=new.signer, key_fingerprint=new.key_fingerprint,
            public_key=new.public_key, bundle=new.bundle, bundle_sha256=bundle_sha, signed_by=who,
            signed_at=datetime.now(timezone.utc),
        )
        session.add(row)
        session.flush()
        subject = f"{version.adapter.namespace}/{version.adapter.name}@{version.number}"
        append_event(
            session, action="sign", subject=subject, actor=who,
            details={
                "digest": version.digest, "kind": new.kind, "signer": new.signer,
                "key_fingerprint": new.key_fingerprint, "bundle_sha256": bundle_sha,
                **bound(signature_binding(row)),
            },
        )
        return _info(session, row), True

    return write_with_retry(db, work, what=f"signing {ref}")


def version_signatures(ref: str, *, db: str | None = None) -> list[SignatureInfo]:
    """The signatures of the version ``ref``, oldest first."""
    with session_scope(db) as session:
        version = resolve(session, parse_ref(ref))
        rows = session.scalars(select(SignatureRow).where(SignatureRow.version_id == version.id).order_by(SignatureRow.id))
        return [_info(session, r) for r in rows]


def all_signatures(*, db: str | None = None) -> Iterator[SignatureInfo]:
    """Every stored signature, by version then age (for ``spr audit``)."""
    with session_scope(db) as session:
        rows = list(session.scalars(select(SignatureRow).order_by(SignatureRow.version_id, SignatureRow.id)))
        infos = [_info(session, r) for r in rows]
    yield from infos


def chain_head(*, db: str | None = None) -> ChainHead:
    """The chain's length and newest event (two indexed queries, whatever the log's size)."""
    with session_scope(db) as session:
        count = session.scalar(select(func.count()).select_from(EventRow)) or 0
        newest = session.execute(select(EventRow.id, EventRow.hash).order_by(EventRow.id.desc()).limit(1)).first()
    if newest is None:
        return ChainHead(0, None, GENESIS_HASH)
    return ChainHead(int(count), int(newest[0]), str(newest[1]))


def event_hash_at(position: int, *, db: str | None = None) -> str | None:
    """The hash of the ``position``-th event (1-based, oldest first), or None past the end."""
    if position < 1:
        return None
    with session_scope(db) as session:
        return session.scalar(select(EventRow.hash).order_by(EventRow.id).offset(position - 1).limit(1))


def missing_guards(*, db: str | None = None) -> list[str]:
    """The append-only triggers that should exist but do not (someone dropped them)."""
    with session_scope(db) as session:
        dialect = session.get_bind().dialect.name
        if dialect == "sqlite":
            present = set(session.scalars(text("SELECT name FROM sqlite_master WHERE type = 'trigger'")))
        elif dialect == "postgresql":
            present = set(session.scalars(text("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")))
        else:  # pragma: no cover - only SQLite and PostgreSQL are supported
            return []
    return [name for name in EXPECTED_GUARDS if name not in present]


def _info(session: Session, row: SignatureRow) -> SignatureInfo:
    version = session.get_one(VersionRow, row.version_id)
    adapter = session.get_one(AdapterRow, version.adapter_id)
    at = row.signed_at
    return SignatureInfo(
        ref=f"{adapter.namespace}/{adapter.name}@{version.number}", digest=version.digest, kind=row.kind,
        signer=row.signer, key_fingerprint=row.key_fingerprint, public_key=row.public_key, bundle=row.bundle,
        bundle_sha256=row.bundle_sha256, signed_by=row.signed_by,
        signed_at=at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc),
    )


__all__ = [
    "EXPECTED_GUARDS", "ChainHead", "NewSignature", "add_signature", "all_signatures", "chain_head",
    "event_hash_at", "missing_guards", "version_signatures",
]
