"""Read-only queries for browsing the catalogue page by page (the web catalogue, ``spr ui``).

The CLI's queries answer one question each (``list_versions``, ``get_version``, ``events``); a
catalogue page needs a filtered, counted page of adapters with their newest version, aliases and
newest eval scores, the eval history of an adapter across versions, and a filtered, counted page
of the audit log, newest first. Each function here is one transaction and returns frozen
dataclasses; the queries stay on indexed columns so a page costs milliseconds at 100,000 versions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, String, and_, cast, exists, func, or_, select, type_coerce
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from registry.db import session_scope
from registry.errors import AdapterNotFoundError, UsageError
from registry.models import AdapterRow, AliasRow, BaseModelRow, EvalScoreRow, EventRow, VersionRow
from registry.refs import parse_ref, split_name
from registry.types import EvalScore, Event

MAX_PAGE = 500
MAX_QUERY = 200  # characters of a search text or filter value


@dataclass(frozen=True)
class AdapterListing:
    """One adapter on a catalogue page: its newest version's facts, its aliases and newest scores."""

    namespace: str
    name: str
    versions: int
    latest_number: int
    latest_digest: str
    status: str
    peft_type: str
    num_virtual_tokens: int | None
    base_model: str | None
    description: str | None
    tags: dict[str, str]
    aliases: dict[str, int]  # alias -> version number
    latest_scores: tuple[EvalScore, ...]  # of the newest version: the newest per (metric, eval dataset)
    created_by: str
    created_at: datetime

    @property
    def full_name(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def ref(self) -> str:
        return f"{self.full_name}@{self.latest_number}"


@dataclass(frozen=True)
class AdapterPage:
    items: tuple[AdapterListing, ...]
    total: int  # adapters matching the filters
    limit: int
    offset: int


@dataclass(frozen=True)
class EvalPoint:
    """One recorded eval score of one version of an adapter."""

    number: int
    digest: str
    metric: str
    value: float
    dataset: str | None
    dataset_name: str | None
    split: str | None
    recorded_by: str
    recorded_at: datetime


@dataclass(frozen=True)
class EventPage:
    items: tuple[Event, ...]  # newest first
    total: int  # events matching the filters
    limit: int
    offset: int


@dataclass(frozen=True)
class Facets:
    """The values the catalogue's filters can take (for drop-downs), each sorted and capped."""

    namespaces: tuple[str, ...]
    base_models: tuple[str, ...]
    methods: tuple[str, ...]
    actors: tuple[str, ...]


def browse_adapters(
    *,
    db: str | None = None,
    query: str | None = None,
    namespace: str | None = None,
    base_model: str | None = None,
    method: str | None = None,
    tag: str | None = None,
    alias: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> AdapterPage:
    """A page of adapters sorted by name, filtered on their newest version, with the total count.

    ``query`` matches a substring of ``namespace/name`` or the description (case-insensitive);
    ``base_model`` a base model name; ``method`` a PEFT type (``prompt-tuning`` or
    ``PROMPT_TUNING``); ``tag`` ``KEY`` (present) or ``KEY=VALUE``; ``alias`` an alias the adapter
    has. Raises :class:`UsageError` for a bad limit, offset or filter.
    """
    limit, offset = _check_window(limit, offset)
    with session_scope(db) as session:
        latest_id = (
            select(VersionRow.id)
            .where(VersionRow.adapter_id == AdapterRow.id)
            .order_by(VersionRow.number.desc())
            .limit(1)
            .correlate(AdapterRow)
            .scalar_subquery()
        )
        conditions: list[ColumnElement[bool]] = []
        version_level = bool(query or base_model or method or tag)
        if query:
            pattern = "%" + _like_escape(_bounded(query, "search text").lower()) + "%"
            conditions.append(
                or_(
                    func.lower(AdapterRow.namespace + "/" + AdapterRow.name).like(pattern, escape="\\"),
                    func.lower(func.coalesce(VersionRow.description, "")).like(pattern, escape="\\"),
                )
            )
        if namespace:
            conditions.append(AdapterRow.namespace == _bounded(namespace, "namespace"))
        if base_model:
            conditions.append(BaseModelRow.name == _bounded(base_model, "base model"))
        if method:
            conditions.append(VersionRow.peft_type == _bounded(method, "method").upper().replace("-", "_"))
        if tag:
            conditions.append(_tag_condition(session, _bounded(tag, "tag")))
        if alias:
            conditions.append(
                exists().where(AliasRow.adapter_id == AdapterRow.id, AliasRow.alias == _bounded(alias, "alias"))
            )
        base = (
            select(
                AdapterRow.id.label("adapter_id"), AdapterRow.namespace, AdapterRow.name, VersionRow.id,
                VersionRow.number, VersionRow.digest, VersionRow.status, VersionRow.peft_type,
                VersionRow.num_virtual_tokens, VersionRow.description, VersionRow.tags_json, VersionRow.created_by,
                VersionRow.created_at, BaseModelRow.name.label("base_model"),
            )
            .select_from(AdapterRow)
            .join(VersionRow, VersionRow.id == latest_id)
            .outerjoin(BaseModelRow, VersionRow.base_model_id == BaseModelRow.id)
            .where(*conditions)
        )
        if version_level:
            total = session.scalar(select(func.count()).select_from(base.with_only_columns(AdapterRow.id).subquery())) or 0
        else:  # nothing to read from the newest version: count adapters (each has one) by index
            total = session.scalar(
                select(func.count()).select_from(AdapterRow)
                .where(exists().where(VersionRow.adapter_id == AdapterRow.id), *conditions)
            ) or 0
        rows = session.execute(base.order_by(AdapterRow.namespace, AdapterRow.name).limit(limit).offset(offset)).all()
        adapter_ids = [r.adapter_id for r in rows]
        aliases = _aliases_of(session, adapter_ids)
        counts: dict[int, int] = {}
        if adapter_ids:
            for adapter_id, count in session.execute(
                select(VersionRow.adapter_id, func.count())
                .where(VersionRow.adapter_id.in_(adapter_ids))
                .group_by(VersionRow.adapter_id)
            ):
                counts[adapter_id] = count
        scores = _latest_scores(session, [r.id for r in rows])
        items = tuple(
            AdapterListing(
                namespace=r.namespace, name=r.name, versions=counts.get(r.adapter_id, 0), latest_number=r.number,
                latest_digest=r.digest, status=r.status, peft_type=r.peft_type,
                num_virtual_tokens=r.num_virtual_tokens, base_model=r.base_model, description=r.description,
                tags=_json_object(r.tags_json), aliases=aliases.get(r.adapter_id, {}),
                latest_scores=scores.get(r.id, ()), created_by=r.created_by, created_at=_utc(r.created_at),
            )
            for r in rows
        )
        return AdapterPage(items=items, total=total, limit=limit, offset=offset)


def eval_history(name: str, *, db: str | None = None) -> list[EvalPoint]:
    """Every eval score recorded for any version of adapter ``name``, oldest first.

    Raises :class:`AdapterNotFoundError` when no adapter has that name.
    """
    namespace, short = split_name(name)
    with session_scope(db) as session:
        adapter_id = session.scalar(
            select(AdapterRow.id).where(AdapterRow.namespace == namespace, AdapterRow.name == short)
        )
        if adapter_id is None:
            raise AdapterNotFoundError(
                f"no adapter named {namespace}/{short} in the catalogue", hint="see 'spr list'", ref=name
            )
        rows = session.execute(
            select(VersionRow.number, VersionRow.digest, EvalScoreRow)
            .join(EvalScoreRow, EvalScoreRow.version_id == VersionRow.id)
            .where(VersionRow.adapter_id == adapter_id)
            .order_by(EvalScoreRow.recorded_at, EvalScoreRow.id)
        ).all()
        return [
            EvalPoint(
                number=number, digest=digest, metric=s.metric, value=s.value, dataset=s.dataset_digest,
                dataset_name=s.dataset_name, split=s.split, recorded_by=s.recorded_by,
                recorded_at=_utc(s.recorded_at),
            )
            for number, digest, s in rows
        ]


def browse_events(
    *,
    db: str | None = None,
    adapter: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> EventPage:
    """A page of audit events, newest first, with the total count of events matching the filters.

    ``adapter`` is a name (``ns/name``: events about it, its versions and aliases), a numbered
    version (``ns/name@3``: events about that version) or an alias (``ns/name@prod``: its moves). Raises :class:`UsageError` for bad input.
    """
    limit, offset = _check_window(limit, offset)
    conditions: list[ColumnElement[bool]] = []
    if adapter:
        ref = parse_ref(_bounded(adapter, "adapter"))
        if ref.number is not None or ref.alias is not None:  # one version's events, or one alias's moves
            conditions.append(EventRow.subject == str(ref))
        elif ref.digest is not None:
            raise UsageError(
                f"filter events by a name, a numbered version or an alias, found {adapter!r}",
                hint="for example 'team/coach', 'team/coach@3' or 'team/coach@prod'",
            )
        else:
            conditions.append(or_(EventRow.subject == ref.full_name,
                                  EventRow.subject.startswith(ref.full_name + "@", autoescape=True)))
    if actor:
        conditions.append(EventRow.actor == _bounded(actor, "actor"))
    if action:
        conditions.append(EventRow.action == _bounded(action, "action"))
    with session_scope(db) as session:
        where = and_(*conditions) if conditions else None
        count_query = select(func.count()).select_from(EventRow)
        page_query = select(EventRow).order_by(EventRow.id.desc()).limit(limit).offset(offset)
        if where is not None:
            count_query = count_query.where(where)
            page_query = page_query.where(where)
        total = session.scalar(count_query) or 0
        items = tuple(
            Event(
                id=r.id, at=_utc(r.at), actor=r.actor, action=r.action, subject=r.subject,
                details=_json_object(r.details_json), prev_hash=r.prev_hash, hash=r.hash,
            )
            for r in session.scalars(page_query)
        )
        return EventPage(items=items, total=total, limit=limit, offset=offset)


def facets(*, db: str | None = None, cap: int = 200, actors: bool = False) -> Facets:
    """Distinct namespaces, base model names and PEFT types, and with ``actors`` the event actors
    (at most ``cap`` each; actors cost a scan of the event log, so only the audit page asks)."""
    with session_scope(db) as session:
        def distinct(column: Any) -> tuple[str, ...]:
            return tuple(v for v in session.scalars(select(column).distinct().order_by(column).limit(cap)) if v)

        def distinct_indexed(column: Any) -> tuple[str, ...]:
            # A few values over many rows (PEFT types of 100,000 versions): one index seek per
            # value instead of scanning the whole index.
            found: list[str] = []
            while len(found) < cap:
                query = select(func.min(column))
                if found:
                    query = query.where(column > found[-1])
                value = session.scalar(query)
                if value is None:
                    break
                found.append(value)
            return tuple(found)

        return Facets(
            namespaces=distinct_indexed(AdapterRow.namespace),
            base_models=distinct(BaseModelRow.name),
            methods=distinct_indexed(VersionRow.peft_type),
            actors=distinct(EventRow.actor) if actors else (),
        )


def change_marker(*, db: str | None = None) -> int:
    """The id of the newest audit event (0 when none): every catalogue write appends one in its
    own transaction, so a cached page keyed on this value is stale as soon as anything changes."""
    with session_scope(db) as session:
        return session.scalar(select(func.max(EventRow.id))) or 0


# ---------------------------------------------------------------------------------------------


def _check_window(limit: int, offset: int) -> tuple[int, int]:
    if not 1 <= limit <= MAX_PAGE:
        raise UsageError(f"page size must be 1-{MAX_PAGE}, found {limit}")
    if not 0 <= offset <= 10**9:
        raise UsageError(f"offset must be 0 or more, found {offset}")
    return limit, offset


def _bounded(value: str, what: str) -> str:
    if len(value) > MAX_QUERY or any(ord(c) < 32 for c in value):
        raise UsageError(f"invalid {what}: at most {MAX_QUERY} printable characters")
    return value


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _tag_condition(session: Session, tag: str) -> ColumnElement[bool]:
    key, sep, value = tag.partition("=")
    key = key.strip()
    if not key:
        raise UsageError(f"invalid tag filter {tag!r}: expected KEY or KEY=VALUE")
    # SQLite stores JSON as text and reads it with json_extract; PostgreSQL needs a cast to json.
    tags: Any
    if session.get_bind().dialect.name == "postgresql":
        tags = cast(VersionRow.tags_json, JSON)
    else:
        tags = type_coerce(VersionRow.tags_json, JSON)
    element = tags[key].as_string()
    if not sep:
        return element.isnot(None)
    return cast(element, String) == value


def _aliases_of(session: Session, adapter_ids: list[int]) -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = {}
    if not adapter_ids:
        return out
    for adapter_id, alias, number in session.execute(
        select(AliasRow.adapter_id, AliasRow.alias, VersionRow.number)
        .join(VersionRow, VersionRow.id == AliasRow.version_id)
        .where(AliasRow.adapter_id.in_(adapter_ids))
        .order_by(AliasRow.alias)
    ):
        out.setdefault(adapter_id, {})[alias] = number
    return out


def _latest_scores(session: Session, version_ids: list[int]) -> dict[int, tuple[EvalScore, ...]]:
    newest: dict[int, dict[tuple[str, str | None], EvalScore]] = {}
    if not version_ids:
        return {}
    s = EvalScoreRow
    for vid, metric, value, digest, name, split, by, at in session.execute(
        select(s.version_id, s.metric, s.value, s.dataset_digest, s.dataset_name, s.split, s.recorded_by, s.recorded_at)
        .where(s.version_id.in_(version_ids))
        .order_by(s.recorded_at, s.id)
    ):
        newest.setdefault(vid, {})[(metric, digest or name)] = EvalScore(
            metric=metric, value=value, dataset=digest, dataset_name=name, split=split, recorded_by=by,
            recorded_at=_utc(at),
        )
    return {vid: tuple(sorted(scores.values(), key=lambda e: e.metric)) for vid, scores in newest.items()}


def _json_object(text: str) -> dict[str, Any]:
    import json

    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


__all__ = [
    "MAX_PAGE", "AdapterListing", "AdapterPage", "EvalPoint", "EventPage", "Facets", "browse_adapters",
    "browse_events", "change_marker", "eval_history", "facets",
]
