"""Checks on every name and path a client sends; anything doubtful is refused, never repaired.

Paths end up on the client's disk (``hf_hub_download`` writes ``snapshots/<sha>/<path>``), so a path
that could climb out of a folder, hide a control character or mean something else on Windows is
refused here before the server stores or serves it.
"""

from __future__ import annotations

import re

from registry.hubserver.errors import BadRequest

# The Hub's URL prefixes per repo type, and the plural used in ``/api/{T}/...``.
REPO_TYPES: tuple[str, ...] = ("model", "dataset", "space")
URL_PREFIXES: dict[str, str] = {"model": "", "dataset": "datasets/", "space": "spaces/"}
API_PLURALS: dict[str, str] = {"models": "model", "datasets": "dataset", "spaces": "space"}

# First URL segments that would make a model repo URL ambiguous with another route.
RESERVED_NAMESPACES = frozenset({"api", "models", "datasets", "spaces", "kernels", "buckets", "lfs-upload"})

_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?\Z")
_REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}\Z")
_SHA1_RE = re.compile(r"^[0-9a-f]{40}\Z")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
# Folders the client itself refuses to write into (``huggingface_hub.utils._paths.FORBIDDEN_FOLDERS``):
# ``.cache/huggingface`` holds the client's local-dir metadata.
_FORBIDDEN_SEGMENTS = frozenset({".git", ".cache"})
MAX_PATH_LENGTH = 1024


def is_commit_sha(value: str) -> bool:
    """True for a full, lower-case 40-hex commit id."""
    return bool(_SHA1_RE.match(value))


def validate_sha256(value: object) -> str:
    """Return ``value`` if it is a lower-case 64-hex sha256, else raise :class:`BadRequest`."""
    if not isinstance(value, str) or not _SHA256_RE.match(value):
        raise BadRequest(f"invalid sha256 oid {value!r}: expected 64 lower-case hex characters")
    return value


def validate_name_part(value: str, what: str) -> str:
    """Check one half of a repo id (namespace or name)."""
    if not _NAME_RE.match(value) or "--" in value or ".." in value:
        raise BadRequest(
            f"invalid {what} {value!r}: use letters, digits, '-', '_' and '.', start and end with a letter or"
            " digit, at most 96 characters, no '--' or '..'"
        )
    if what == "repo name" and value.lower().endswith(".git"):
        raise BadRequest(f"invalid repo name {value!r}: it may not end with '.git'")
    if what == "namespace" and value.lower() in RESERVED_NAMESPACES:
        raise BadRequest(f"invalid namespace {value!r}: it is reserved")
    return value


def validate_repo_id(namespace: str, name: str) -> str:
    """Return ``namespace/name`` after checking both halves."""
    validate_name_part(namespace, "namespace")
    validate_name_part(name, "repo name")
    return f"{namespace}/{name}"


def validate_ref_name(value: object, what: str = "revision") -> str:
    """Check a branch or tag name a client wants to create or write to."""
    if (
        not isinstance(value, str)
        or not _REF_RE.match(value)
        or ".." in value
        or "//" in value
        or value.endswith(("/", ".", ".lock"))
        or is_commit_sha(value)
        or value.startswith("refs/")
    ):
        raise BadRequest(
            f"invalid {what} name {value!r}: use letters, digits, '.', '_', '-' and '/', no '..', not a"
            " 40-hex commit id"
        )
    return value


def validate_repo_path(value: object, *, folder: bool = False) -> str:
    """Return a file path inside a repo (``folder=True``: a folder, trailing ``/`` allowed and dropped).

    Refused: empty paths, absolute paths, ``.``/``..``/empty segments, backslashes, control
    characters, Windows drive prefixes, and the ``.git``/``.cache`` folders.
    """
    if not isinstance(value, str):
        raise BadRequest(f"invalid path {value!r}: expected a string")
    path = value
    if folder and path.endswith("/"):
        path = path[:-1]
    reason = _path_problem(path)
    if reason:
        raise BadRequest(f"invalid path {value!r}: {reason}")
    return path


def _path_problem(path: str) -> str | None:
    if not path:
        return "empty"
    if len(path) > MAX_PATH_LENGTH:
        return f"longer than {MAX_PATH_LENGTH} characters"
    if path.startswith("/"):
        return "absolute paths are not allowed"
    if "\\" in path:
        return "backslashes are not allowed"
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        return "control characters are not allowed"
    if _DRIVE_RE.match(path):
        return "drive prefixes are not allowed"
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            return "empty, '.' and '..' segments are not allowed"
        if segment in _FORBIDDEN_SEGMENTS:
            return f"the {segment!r} folder is reserved"
    return None
