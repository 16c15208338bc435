"""Settings, read when they are used and never at import time.

Tests isolate themselves by setting ``SPR_HOME`` (and ``HF_HOME``) in an autouse fixture;
because nothing here is cached, every call sees the current environment.
"""

from __future__ import annotations

import getpass
import os
import subprocess
from pathlib import Path

import platformdirs


def home() -> Path:
    """The registry's data directory: ``$SPR_HOME`` or the per-user data directory."""
    value = os.environ.get("SPR_HOME")
    if value:
        return Path(value).expanduser()
    return Path(platformdirs.user_data_dir("softprompt-registry", appauthor=False))


def blobs_dir() -> Path:
    """Where the content-addressed blob store lives: ``$SPR_BLOB_DIR``, else ``$SPR_HOME/blobs``.

    A team sharing one PostgreSQL catalogue points ``SPR_BLOB_DIR`` at shared storage, so every
    member's catalogue rows find their bytes.
    """
    value = os.environ.get("SPR_BLOB_DIR")
    if value:
        return Path(value).expanduser()
    return home() / "blobs"


def default_database_path() -> Path:
    return home() / "catalogue.sqlite"


def database_url(override: str | None = None) -> str:
    """The catalogue URL: ``override`` (``--db``), else ``$SPR_DATABASE_URL``, else the default SQLite file."""
    if override:
        return override
    value = os.environ.get("SPR_DATABASE_URL")
    if value:
        return value
    return f"sqlite:///{default_database_path()}"


def is_default_database(url: str) -> bool:
    """True when ``url`` is the default SQLite file, which upgrades itself on open."""
    return url == f"sqlite:///{default_database_path()}"


def hub_endpoint(override: str | None = None) -> str:
    """The Hub endpoint: ``override``, else ``$HF_ENDPOINT``, else huggingface.co."""
    if override:
        return override.rstrip("/")
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_endpoint_is_set() -> bool:
    """Whether ``$HF_ENDPOINT`` names an endpoint (else :func:`hub_endpoint` falls back to huggingface.co)."""
    return bool(os.environ.get("HF_ENDPOINT"))


def hf_home() -> Path:
    """``huggingface_hub``'s home: ``$HF_HOME``, else ``$XDG_CACHE_HOME/huggingface`` (``~/.cache``)."""
    value = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(os.path.expandvars(value)).expanduser()


def hf_hub_cache() -> Path:
    """The ``huggingface_hub`` download cache: ``$HF_HUB_CACHE``, else ``hf_home()/hub``."""
    value = os.environ.get("HF_HUB_CACHE")
    if value:
        return Path(os.path.expandvars(value)).expanduser()
    return hf_home() / "hub"


def hub_token() -> str | None:
    """The Hub token from ``HF_TOKEN`` or the ``huggingface_hub`` login. Never stored or printed."""
    token = os.environ.get("HF_TOKEN")
    if token:
        return token
    from huggingface_hub import get_token

    return get_token()


def redact_token(text: str) -> str:
    """``text`` with the Hub token (:func:`hub_token`) replaced by ``<token>``.

    For messages built from a server's answer: a server may echo the Authorization header it was
    sent, and such a message must not carry the token onto a terminal or into a log.
    """
    try:
        token = hub_token()
    except Exception:
        return text
    if token:
        text = text.replace(token, "<token>")
    return text


def current_actor(override: str | None = None) -> str:
    """Who is acting: ``override`` (``--author``), else ``$SPR_ACTOR``, else git ``user.name``, else the OS user."""
    if override:
        return override
    value = os.environ.get("SPR_ACTOR")
    if value:
        return value
    try:
        out = subprocess.run(
            ["git", "config", "user.name"], capture_output=True, text=True, timeout=2, check=False
        )
        name = out.stdout.strip()
        if name:
            return name
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
