"""Push and pull adapter versions to and from a Hugging Face Hub (or the project's own Hub server).

Files on the Hub for one version (one commit on ``main``, tagged ``v{N}``): the version's standard
PEFT files from the blob store, ``spr_manifest.json`` beside ``adapter_config.json`` (the Hub
manifest format, :mod:`registry.hub.format`) and ``README.md``, the model card
(:mod:`registry.hub.card`).

The room's modules:

- :mod:`~registry.hub.client`: the one Hub client (:class:`HubClient`): endpoint, token (sent only
  to the configured endpoint), the HF cache, and error translation;
- :mod:`~registry.hub.format`: the Hub manifest format, written and (untrusted) read back;
- :mod:`~registry.hub.upload`: :func:`push`;
- :mod:`~registry.hub.download`: :func:`pull` and :func:`import_repo`;
- :mod:`~registry.hub.locking`: :func:`lock` and :func:`sync` (the file format is
  :mod:`~registry.hub.lockfile`);
- :mod:`~registry.hub.remote_base`: base-model identification over the Hub by range requests,
  through the same client (:func:`inspect_base`).

Entry points that touch blobs take ``store: BlobStore | None = None`` and open the store from
settings once when none is passed. ``huggingface_hub`` is imported inside functions, never torch.
"""

from __future__ import annotations

from registry.hub.client import (
    DOWNLOAD_WORKERS,
    HubClient,
    RepoSpec,
    hub_cache_dir,
    is_loopback_endpoint,
    normalise_endpoint,
    parse_repo_spec,
)
from registry.hub.download import ImportResult, PullResult, import_repo, pull
from registry.hub.format import (
    CARD_FILENAME,
    DEFAULT_BRANCH,
    HUB_FORMAT,
    MANIFEST_FILENAME,
    MAX_HUB_MANIFEST_BYTES,
    RESERVED_PATHS,
    HubRecord,
    HubVersion,
    hub_path,
    manifest_document,
    manifest_file_bytes,
    parse_hub_manifest,
)
from registry.hub.locking import SyncItem, SyncResult, lock, sync
from registry.hub.remote_base import inspect_base
from registry.hub.upload import PushResult, push

__all__ = [
    "CARD_FILENAME",
    "DEFAULT_BRANCH",
    "DOWNLOAD_WORKERS",
    "HUB_FORMAT",
    "MANIFEST_FILENAME",
    "MAX_HUB_MANIFEST_BYTES",
    "RESERVED_PATHS",
    "HubClient",
    "HubRecord",
    "HubVersion",
    "ImportResult",
    "PullResult",
    "PushResult",
    "RepoSpec",
    "SyncItem",
    "SyncResult",
    "hub_cache_dir",
    "hub_path",
    "import_repo",
    "inspect_base",
    "is_loopback_endpoint",
    "lock",
    "manifest_document",
    "manifest_file_bytes",
    "normalise_endpoint",
    "parse_hub_manifest",
    "parse_repo_spec",
    "pull",
    "push",
    "sync",
]
