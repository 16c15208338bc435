"""The Hub manifest format: what a pushed version looks like in a Hub repo, and reading it back.

``spr_manifest.json`` sits beside ``adapter_config.json``: ``{"format", "digest", "manifest",
"record"}``. ``manifest`` is the canonical manifest (its canonical JSON hashes to ``digest``, the
version's identity); ``record`` is what the publishing catalogue knew (name, number, author, time,
description, tags, eval scores, aliases) and is not covered by the digest. A ``README.md`` the
adapter itself carries is stored as ``spr_original_README.md`` (:data:`RELOCATED_FILES`), because
``README.md`` is the generated model card. Everything read back is untrusted and validated here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import timezone
from typing import Any

from registry import catalogue
from registry.adapters import manifest as manifests
from registry.adapters.dataset import dataset_from_digest
from registry.adapters.reader import CONFIG_NAME
from registry.digest import PREFIX, parse_digest
from registry.errors import InvalidAdapterError, UsageError
from registry.hub.card import RELOCATED_FILES
from registry.refs import validate_name
from registry.types import VersionInfo

MANIFEST_FILENAME = "spr_manifest.json"
CARD_FILENAME = "README.md"
HUB_FORMAT = "softprompt-registry/hub/v1"
DEFAULT_BRANCH = "main"
MAX_HUB_MANIFEST_BYTES = 20_000_000
# Names an adapter's own files may not take: they would collide with what push adds.
RESERVED_PATHS = frozenset({MANIFEST_FILENAME, ".gitattributes", *RELOCATED_FILES.values()})


@dataclass(frozen=True)
class HubRecord:
    """The ``record`` part of ``spr_manifest.json``, validated (it comes from a server)."""

    namespace: str
    name: str
    number: int
    author: str | None
    created_at: str | None
    description: str | None
    tags: dict[str, str]
    evals: tuple[catalogue.EvalInput, ...]


@dataclass(frozen=True)
class HubVersion:
    """A version read from a Hub commit: its manifest (verified against its digest) and record."""

    repo_id: str
    commit_sha: str
    digest: str
    manifest: dict[str, Any]
    record: HubRecord


# ---------------------------------------------------------------------------------------------
# What goes on the Hub


def hub_path(path: str) -> str:
    """Where a version's file ``path`` is stored in a Hub repo."""
    return RELOCATED_FILES.get(path, path)


def manifest_document(version: VersionInfo) -> dict[str, Any]:
    """The content of ``spr_manifest.json`` for ``version``."""
    scores = sorted(version.eval_scores, key=lambda s: (s.recorded_at, s.metric))
    return {
        "format": HUB_FORMAT,
        "digest": version.digest,
        "manifest": version.manifest,
        "record": {
            "namespace": version.namespace,
            "name": version.name,
            "number": version.number,
            "author": version.created_by,
            "created_at": _iso(version.created_at),
            "description": version.description,
            "tags": version.tags,
            "status": version.status,
            "aliases": list(version.aliases),
            "eval_scores": [
                {
                    "metric": s.metric,
                    "value": s.value,
                    "dataset": s.dataset,
                    "dataset_name": s.dataset_name,
                    "split": s.split,
                    "recorded_by": s.recorded_by,
                    "recorded_at": _iso(s.recorded_at),
                }
                for s in scores
            ],
        },
    }


def manifest_file_bytes(version: VersionInfo) -> bytes:
    """``spr_manifest.json`` as pushed: indented, sorted keys (the digest covers ``manifest`` only)."""
    return (json.dumps(manifest_document(version), indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _iso(moment: Any) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def check_pushable(version: VersionInfo) -> None:
    """Refuse a version with a file named like one push adds (:data:`RESERVED_PATHS`)."""
    for f in version.files:
        if f.path in RESERVED_PATHS:
            raise InvalidAdapterError(
                f"{version.ref} has a file named {f.path!r}, which push needs for itself",
                hint="re-publish the adapter without that file",
            )


def parse_hub_manifest(data: bytes, *, repo_id: str, commit_sha: str, where: str) -> HubVersion:
    """Validate ``spr_manifest.json`` bytes from a server (untrusted) into a :class:`HubVersion`.

    Raises :class:`IntegrityError` when the manifest does not hash to the digest it claims and
    :class:`InvalidAdapterError` when anything is malformed (hostile paths included).
    """
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError):
        raise InvalidAdapterError(f"{where} is not valid JSON", hint="the copy on the Hub is damaged; push it again") from None
    if not isinstance(doc, dict) or doc.get("format") != HUB_FORMAT:
        raise InvalidAdapterError(
            f"{where}: expected format {HUB_FORMAT!r}",
            hint="it was pushed by an incompatible spr; push it again",
        )
    digest_text = doc.get("digest")
    inner = doc.get("manifest")
    if not isinstance(digest_text, str) or not isinstance(inner, dict):
        raise InvalidAdapterError(f"{where}: 'digest' and 'manifest' are required")
    digest = PREFIX + parse_digest(digest_text)
    manifest = manifests.parse(manifests.encode(inner), expected_digest=digest, where=where)
    for entry in manifest["files"]:
        if entry["path"] in RESERVED_PATHS:
            raise InvalidAdapterError(f"{where}: the manifest lists the reserved file {entry['path']!r}")
    if not any(e["path"] == CONFIG_NAME for e in manifest["files"]):
        raise InvalidAdapterError(f"{where}: the manifest lists no {CONFIG_NAME}")
    record = _parse_record(doc.get("record"), where)
    return HubVersion(repo_id=repo_id, commit_sha=commit_sha, digest=digest, manifest=manifest, record=record)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _parse_record(raw: Any, where: str) -> HubRecord:
    def bad(message: str) -> InvalidAdapterError:
        return InvalidAdapterError(f"{where}: record: {message}", hint="the copy on the Hub is damaged; push it again")

    if not isinstance(raw, dict):
        raise bad("expected an object")

    def opt_text(key: str, limit: int) -> str | None:
        value = raw.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or len(value) > limit:
            raise bad(f"{key!r} must be a string of at most {limit} characters")
        return value

    try:
        namespace = validate_name(str(raw.get("namespace")), "namespace")
        name = validate_name(str(raw.get("name")), "name")
    except UsageError as exc:
        raise bad(exc.message) from None
    number = raw.get("number")
    if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= 10**9:
        raise bad("'number' must be a positive integer")
    tags_raw = raw.get("tags") or {}
    if not isinstance(tags_raw, dict) or len(tags_raw) > catalogue.MAX_TAGS:
        raise bad(f"'tags' must be an object of at most {catalogue.MAX_TAGS} entries")
    tags: dict[str, str] = {}
    for key, value in tags_raw.items():
        if not isinstance(value, str) or not key or len(key) > 100 or len(value) > 1000:
            raise bad(f"malformed tag {str(key)[:40]!r}")
        tags[key] = value
    scores_raw = raw.get("eval_scores") or []
    if not isinstance(scores_raw, list) or len(scores_raw) > 10_000:
        raise bad("'eval_scores' must be a list")
    evals = []
    for s in scores_raw:
        if not isinstance(s, dict):
            raise bad("every eval score must be an object")
        metric, value = s.get("metric"), s.get("value")
        if not isinstance(metric, str) or not metric or len(metric) > 100:
            raise bad("an eval score has no valid 'metric'")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise bad(f"eval score {metric!r} has no finite 'value'")
        dataset = s.get("dataset")
        dataset_name = s.get("dataset_name")
        split = s.get("split")
        # The catalogue's column sizes (eval_score.dataset_name 1000, .split 100).
        for label, text, limit in (("dataset_name", dataset_name, 1000), ("split", split, 100)):
            if text is not None and (not isinstance(text, str) or len(text) > limit):
                raise bad(f"eval score {metric!r}: malformed {label} (a string of at most {limit} characters)")
        try:
            info = dataset_from_digest(dataset, dataset_name) if dataset is not None else None
        except (UsageError, AttributeError, TypeError):
            raise bad(f"eval score {metric!r}: malformed dataset digest") from None
        evals.append(catalogue.EvalInput(metric=metric, value=float(value), dataset=info, dataset_name=dataset_name, split=split))
    return HubRecord(
        namespace=namespace,
        name=name,
        number=number,
        author=opt_text("author", 200),
        created_at=opt_text("created_at", 40),
        description=opt_text("description", 100_000),
        tags=tags,
        evals=tuple(evals),
    )
