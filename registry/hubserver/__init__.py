"""A Hub-compatible HTTP server that the real ``huggingface_hub`` client (2.4.x) talks to.

Tests, the demo and air-gapped teams point the client at it with ``HF_ENDPOINT`` (or ``endpoint=``)
and use it like the Hub: ``create_repo``, ``create_commit``/``upload_folder`` (regular files inside
the commit, or git-LFS batch + PUT + verify), ``create_tag``/``delete_tag``, ``list_repo_refs``,
``model_info``/``repo_info`` at a branch, tag or commit sha (with ``files_metadata``),
``list_repo_files``/``list_repo_tree``, ``hf_hub_download``, ``snapshot_download``, the ``hf download``
CLI, ``get_safetensors_metadata`` (Range requests), ``whoami``, ``delete_repo``. Errors carry the
Hub's ``X-Error-Code``/``X-Error-Message`` headers, so the client raises its own
``RepositoryNotFoundError``, ``RevisionNotFoundError``, ``EntryNotFoundError``, ``BadRequestError``, and
the "Invalid credentials in Authorization header" 401 for a bad token.

Usage::

    from registry.hubserver import HubServer

    with HubServer(root, tokens=["secret alice"]) as server:   # background thread, free port
        api = HfApi(endpoint=server.url, token="secret")
        ...
    HubServer(root, port=8080, tokens_file=path).serve_forever()   # foreground (``spr hub serve``)

Behaviour worth knowing:

- Storage is persistent under ``root`` (see :mod:`registry.hubserver.storage`): a server restarted
  on the same root sees every repo, commit, tag and object. Commit ids are 40-hex (sha1 of the
  commit's canonical JSON), not git's.
- Auth (see :mod:`registry.hubserver.auth`): any request with a token the server does not know is
  answered 401; writes need a valid token; private repos answer anonymous callers 404
  ``RepoNotFound``. Every valid token may read and write every repo.
- Upload mode (``lfs_mode``): the client gives the server no way to know, when it asks ``preupload``,
  whether it will upload "lfs" files through Xet or through git-LFS (the request is the same with
  and without ``HF_HUB_DISABLE_XET``; the LFS batch call that would tell comes only after the answer).
  So it is a server option: ``"regular"`` (default) answers ``regular`` for every file and works
  with every client (contents travel base64 inside the commit); ``"auto"`` answers ``lfs`` for files
  over 10 MB, with a binary suffix (``.safetensors``, ``.bin``, …) or with a NUL byte in their first
  512 bytes, as the Hub does, and then needs clients with ``HF_HUB_DISABLE_XET=1``. A Xet-enabled
  client that meets ``"auto"`` gets a 400 naming both fixes when it asks for a Xet token.
- Large regular files (a Xet-enabled client sends a 200 MB adapter base64 inside the commit) are
  decoded into the store chunk by chunk (:mod:`registry.hubserver.commitstream`): the server's
  memory stays flat whatever the file size.
- Downloads stream from disk (``sendfile``) and honour single ``Range`` requests (206). HEAD and
  the tree report the recorded size; GET sends what is on disk, so a damaged object (see
  ``HubStorage.tamper``/``truncate``) reaches the client as it would from a broken server.
- Repo ids are always ``namespace/name``; the namespaces ``api``, ``models``, ``datasets``,
  ``spaces``, ``kernels``, ``buckets`` and ``lfs-upload`` are reserved. Paths from clients are
  refused with 400 when absolute, with ``.``/``..``/empty segments, backslashes, control
  characters, drive prefixes, or under ``.git``/``.cache``.

What it does NOT emulate: Xet storage (no ``X-Xet-Hash``/``xetHash`` is ever sent, Xet tokens are
refused), gated repos, pull requests and discussions (``create_pr`` is refused), branches other
than ``main`` (no ``create_branch``), ``CommitOperationCopy`` (``paths-info``), commit history
listing (``list_repo_commits``), ``super_squash``, pagination (every listing comes in one page), rate
limits, search/listing of repos, model cards parsed into ``cardData``, ``.gitignore`` rules
(``shouldIgnore`` is always false), git itself (no clone/push over git), permissions per namespace
or organisations, web pages, and the LFS ``download`` operation. Tag messages are accepted and
dropped. Only the requests the 2.4.x client makes are known to work: a contract test records them.
"""

from __future__ import annotations

from registry.hubserver.app import LFS_MODES, LfsMode
from registry.hubserver.auth import DEFAULT_USERNAME, TokenRegistry
from registry.hubserver.errors import INVALID_CREDENTIALS_MESSAGE
from registry.hubserver.records import RepoKey
from registry.hubserver.server import HubServer, RequestRecord
from registry.hubserver.storage import HubStorage

__all__ = [
    "DEFAULT_USERNAME",
    "INVALID_CREDENTIALS_MESSAGE",
    "LFS_MODES",
    "HubServer",
    "HubStorage",
    "LfsMode",
    "RepoKey",
    "RequestRecord",
    "TokenRegistry",
]
