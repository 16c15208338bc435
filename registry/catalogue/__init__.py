"""The catalogue: publish, find, alias, deprecate, export, lineage and the audit log.

Every public function is one transaction (``db.session_scope`` / ``db.write_with_retry``) and
returns frozen dataclasses from ``registry.types``. All SQL of the registry lives in this room:

- ``publishing``: adapters in and out (publish, import_manifest, export): the only part touching blobs
- ``queries``: get_version, list_versions, versions, lineage; rows -> frozen dataclasses
- ``changes``: aliases, deprecation, eval scores, Hub copies
- ``eventlog``: the hash-chained audit log
- ``signatures``: signature rows, the chain's head and the append-only guards (``registry.trust``'s SQL)
- ``bindings``: rows bound to the events that made them (eval scores, aliases, deprecations, copies, signatures)
- ``browse``: paged, counted, filtered reads for the web catalogue (adapters, events, eval history)

Other rooms, the CLI and the tests use only the names re-exported here.
"""

from __future__ import annotations

from registry.catalogue.bindings import BindingProblem, check_bindings
from registry.catalogue.browse import (
    MAX_PAGE,
    AdapterListing,
    AdapterPage,
    EvalPoint,
    EventPage,
    Facets,
    browse_adapters,
    browse_events,
    change_marker,
    eval_history,
    facets,
)
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
from registry.catalogue.integrity import BlobRefs, CatalogueCheck, blob_referenced, check_catalogue, referenced_blobs
from registry.catalogue.publishing import MAX_TAGS, PublishOptions, PulledFrom, export, import_manifest, publish
from registry.catalogue.queries import get_version, lineage, list_versions, versions
from registry.catalogue.signatures import (
    EXPECTED_GUARDS,
    ChainHead,
    NewSignature,
    add_signature,
    all_signatures,
    chain_head,
    event_hash_at,
    missing_guards,
    version_signatures,
)

__all__ = [
    "EXPECTED_GUARDS",
    "GENESIS_HASH",
    "MAX_PAGE",
    "MAX_TAGS",
    "AdapterListing",
    "AdapterPage",
    "BindingProblem",
    "BlobRefs",
    "CatalogueCheck",
    "ChainHead",
    "EvalInput",
    "EvalPoint",
    "EventPage",
    "Facets",
    "NewSignature",
    "PublishOptions",
    "PulledFrom",
    "add_eval",
    "add_evals",
    "add_signature",
    "all_signatures",
    "blob_referenced",
    "browse_adapters",
    "browse_events",
    "chain_head",
    "change_marker",
    "check_bindings",
    "check_catalogue",
    "deprecate",
    "eval_history",
    "event_hash",
    "event_hash_at",
    "events",
    "export",
    "facets",
    "get_version",
    "import_manifest",
    "lineage",
    "list_versions",
    "log_event",
    "missing_guards",
    "publish",
    "record_hub_copy",
    "referenced_blobs",
    "remove_alias",
    "set_alias",
    "verify_event_chain",
    "version_signatures",
    "versions",
]
