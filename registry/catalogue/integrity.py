"""The catalogue's side of an audit and of gc: read-only queries that check the rows themselves.

:func:`check_catalogue` reads the whole catalogue in one snapshot and returns what the blob store
must hold (every referenced blob with its size and who references it) and every inconsistency
among the rows: file sizes that disagree, manifests that do not hash to their version's digest or
list other files, rows pointing at rows that do not exist, aliases pointing at another adapter's
version. :func:`referenced_blobs` is the set gc keeps. The event chain is checked by
``verify_event_chain``. ``registry.ops`` turns these into an audit report.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from sqlalchemy import Engine, and_, func, select, text
from sqlalchemy.orm import Session

from registry import db as dbmod
from registry.digest import PREFIX
from registry.models import AdapterRow, AliasRow, Base, EventRow, FileRow, VersionRow


@dataclass(frozen=True)
class Finding:
    """One inconsistency among the catalogue's rows (always an error); ``kind`` as in ``registry.ops.ERROR_KINDS``."""

    kind: str
    subject: str
    message: str


@dataclass
class BlobRefs:
    """A blob the catalogue references: the size recorded for it and ``ref:path`` of each reference."""

    size: int
    refs: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CatalogueCheck:
    """What :func:`check_catalogue` read and found."""

    database: str  # the catalogue's URL, password redacted
    versions: int
    files: int
    events: int
    referenced: dict[str, BlobRefs]
    findings: tuple[Finding, ...]


def check_catalogue(db: str | None = None) -> CatalogueCheck:
    """Check the catalogue's rows against each other, in one read snapshot; never raises for damage."""
    engine = dbmod.get_engine(db)
    findings: list[Finding] = []
    with dbmod.session_scope(db) as session:
        _snapshot_isolation(session)
        referenced, nversions, nfiles = _check_versions(session, findings)
        _check_foreign_keys(session, engine, findings)
        _check_aliases(session, findings)
        nevents = session.scalar(select(func.count()).select_from(EventRow)) or 0
    return CatalogueCheck(
        database=dbmod._redact(engine.url.render_as_string(hide_password=False)),
        versions=nversions,
        files=nfiles,
        events=nevents,
        referenced=referenced,
        findings=tuple(findings),
    )


def referenced_blobs(db: str | None = None) -> set[str]:
    """The sha256 of every blob some file row references."""
    with dbmod.session_scope(db) as session:
        return set(session.scalars(select(FileRow.sha256).distinct()))


def _snapshot_isolation(session: Session) -> None:
    # PostgreSQL's default (read committed) gives each statement its own snapshot: a version
    # committed between two queries would look like a version without files. One snapshot for
    # the whole read. SQLite (WAL) already reads one snapshot per transaction.
    if session.get_bind().dialect.name == "postgresql":
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})


def _check_versions(session: Session, findings: list[Finding]) -> tuple[dict[str, BlobRefs], int, int]:
    files_by_version: dict[int, set[tuple[str, str, int]]] = {}
    nfiles = 0
    for version_id, path, sha, size in session.execute(
        select(FileRow.version_id, FileRow.path, FileRow.sha256, FileRow.size)
    ):
        files_by_version.setdefault(version_id, set()).add((path, sha, size))
        nfiles += 1

    referenced: dict[str, BlobRefs] = {}
    nversions = 0
    query = (
        select(VersionRow.id, VersionRow.number, VersionRow.digest, VersionRow.manifest, AdapterRow.namespace, AdapterRow.name)
        .join(AdapterRow, VersionRow.adapter_id == AdapterRow.id, isouter=True)
        .order_by(VersionRow.id)
        .execution_options(yield_per=500)
    )
    for vid, number, digest, manifest_text, namespace, name in session.execute(query):
        nversions += 1
        ref = f"{namespace}/{name}@{number}" if name is not None else f"version id {vid}"
        rows = files_by_version.pop(vid, set())
        for path, sha, size in sorted(rows):
            entry = referenced.setdefault(sha, BlobRefs(size))
            if entry.size != size:
                findings.append(Finding(
                    "blob-size", PREFIX + sha,
                    f"{ref} file {path!r} records {size} bytes but another version records {entry.size} for the same blob",
                ))
            entry.refs.append(f"{ref}:{path}")
        _check_manifest(ref, digest, manifest_text, rows, findings)
    for vid, rows in files_by_version.items():  # file rows of versions that do not exist
        for path, sha, size in rows:
            referenced.setdefault(sha, BlobRefs(size)).refs.append(f"version id {vid}:{path}")
    return referenced, nversions, nfiles


def _check_manifest(
    ref: str, digest: str, manifest_text: str, rows: set[tuple[str, str, int]], findings: list[Finding]
) -> None:
    actual = PREFIX + hashlib.sha256(manifest_text.encode("utf-8")).hexdigest()
    if actual != digest:
        findings.append(Finding(
            "manifest-digest", ref,
            f"the stored manifest hashes to {actual} but the version's digest is {digest} (the row was edited)",
        ))
    try:
        doc = json.loads(manifest_text)
        listed = {(f["path"], f["sha256"], f["size"]) for f in doc["files"]}
    except (ValueError, TypeError, KeyError, RecursionError):
        findings.append(Finding("manifest-invalid", ref, "the stored manifest is not a valid manifest document"))
        return
    if listed != rows:
        missing = sorted(p for p, _, _ in listed - rows)
        extra = sorted(p for p, _, _ in rows - listed)
        detail = []
        if missing:
            detail.append(f"no file row (or a different one) for {', '.join(missing)[:200]}")
        if extra:
            detail.append(f"file rows not in the manifest: {', '.join(extra)[:200]}")
        findings.append(Finding("manifest-files", ref, "the version's files differ from its manifest: " + "; ".join(detail)))


def _check_foreign_keys(session: Session, engine: Engine, findings: list[Finding]) -> None:
    if engine.dialect.name == "sqlite":
        for table, rowid, parent, _fkid in session.execute(text("PRAGMA foreign_key_check")):
            findings.append(Finding(
                "foreign-key", f"{table} row {rowid}", f"points at a row of {parent} that does not exist",
            ))
        return
    # Generic: for every foreign key the schema declares, rows whose target is gone.
    for table in Base.metadata.sorted_tables:
        for fk in table.foreign_keys:
            child_col = fk.parent
            parent_col = fk.column
            parent_table = parent_col.table.alias("p")
            query = (
                select(table.c.id, child_col)
                .select_from(table.outerjoin(parent_table, child_col == parent_table.c[parent_col.name]))
                .where(and_(child_col.is_not(None), parent_table.c[parent_col.name].is_(None)))
                .limit(100)
            )
            for row_id, value in session.execute(query):
                findings.append(Finding(
                    "foreign-key", f"{table.name} row {row_id}",
                    f"{child_col.name}={value} points at a row of {parent_col.table.name} that does not exist",
                ))


def _check_aliases(session: Session, findings: list[Finding]) -> None:
    query = (
        select(AliasRow.id, AliasRow.alias, AliasRow.adapter_id, VersionRow.adapter_id, VersionRow.number)
        .join(VersionRow, AliasRow.version_id == VersionRow.id)
        .where(AliasRow.adapter_id != VersionRow.adapter_id)
    )
    for alias_id, alias, adapter_id, version_adapter, number in session.execute(query):
        findings.append(Finding(
            "alias-adapter", f"alias {alias!r} (row {alias_id})",
            f"belongs to adapter id {adapter_id} but points at version {number} of adapter id {version_adapter}",
        ))


__all__ = ["BlobRefs", "CatalogueCheck", "Finding", "check_catalogue", "referenced_blobs"]
