"""The catalogue: publish, find, alias, deprecate, export, lineage and the audit log.

Every public function is one transaction (``db.session_scope`` / ``db.write_with_retry``) and
returns frozen dataclasses from ``registry.types``. All SQL of the registry lives in this room:

- ``publishing``: adapters in and out (publish, import_manifest, export): the only part touching blobs
- ``queries``: get_version, list_versions, versions, lineage; rows -> frozen dataclasses
- ``changes``: aliases, deprecation, eval scores, Hub copies
- ``eventlog``: the hash-chained audit log

Other rooms, the CLI and the tests use only the names re-exported here.
"""

from __future__ import annotations

from registry.catalogue.changes import (
    EvalInput,
    add_eval,
    add_evals,
    deprecate,
    record_hub_copy,
    remove_alias,
    set_alias,
)
from registry.catalogue.eventlog import GENESIS_HASH, event_hash, events, log_event, verify_event_chain
from registry.catalogue.integrity import BlobRefs, CatalogueCheck, check_catalogue, referenced_blobs
from registry.catalogue.publishing import MAX_TAGS, PublishOptions, export, import_manifest, publish
from registry.catalogue.queries import get_version, lineage, list_versions, versions

__all__ = [
    "GENESIS_HASH",
    "MAX_TAGS",
    "BlobRefs",
    "CatalogueCheck",
    "EvalInput",
    "PublishOptions",
    "add_eval",
    "add_evals",
    "check_catalogue",
    "deprecate",
    "event_hash",
    "events",
    "export",
    "get_version",
    "import_manifest",
    "lineage",
    "list_versions",
    "log_event",
    "publish",
    "record_hub_copy",
    "referenced_blobs",
    "remove_alias",
    "set_alias",
    "verify_event_chain",
    "versions",
]
