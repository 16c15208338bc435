"""Fixtures for the local Hub-compatible server (:mod:`registry.hubserver`).

``hub_server``
    A fresh server per test on a free port, storing under ``tmp_path``, accepting the token
    :data:`HUB_TOKEN` as user :data:`HUB_USER`, in ``lfs_mode="regular"`` (works with the client
    whether Xet is on or off). It also points the client's *import-time* endpoint at the server
    (see :func:`point_client_at`), so code that does not pass ``endpoint=`` reaches it too, and
    moves the client's import-time cache and token paths under ``tmp_path / "hf-home"`` (see
    :func:`isolate_hf_client`).

``hub_server_lfs``
    Same, in ``lfs_mode="auto"`` (binary/large files go through git-LFS), with the client's Xet
    disabled for the test (``HF_HUB_DISABLE_XET`` in the environment and in
    ``huggingface_hub.constants``), as a Xet-enabled client cannot upload "lfs" files here.

``hub_server_session``
    One server for the whole session (regular mode). It does NOT touch the client's constants or
    the environment: pass ``endpoint=hub_server_session.url`` explicitly, and use repo names no
    other test uses.

What callers must know:

- ``huggingface_hub`` reads ``HF_ENDPOINT`` once, at import, into ``constants.ENDPOINT``,
  ``constants.HUGGINGFACE_CO_URL_TEMPLATE`` and the module-level ``HfApi`` behind
  ``huggingface_hub.model_info`` & co. Setting the variable in a test is not enough; library code
  should always pass ``endpoint=`` (``registry.settings.hub_endpoint()``) to ``HfApi``,
  ``hf_hub_download`` and ``snapshot_download``. Subprocesses (``spr``, ``hf``) read the
  ``HF_ENDPOINT`` these fixtures set in ``os.environ``.
- No token is placed in the environment: pass ``token=HUB_TOKEN`` or set
  ``monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)`` in tests of code that reads ``HF_TOKEN``.
- ``server.requests`` / ``server.routes_seen()`` show what the client asked;
  ``server.storage.tamper(...)``/``truncate(...)`` damage stored bytes; ``server.fail(...)``
  makes chosen requests fail or drop (see :class:`registry.hubserver.HubServer`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import constants as hf_constants

from registry.hubserver import HubServer

HUB_TOKEN = "test-token"
HUB_USER = "tester"

__all__ = [
    "HUB_TOKEN",
    "HUB_USER",
    "disable_xet",
    "hub_server",
    "hub_server_lfs",
    "hub_server_session",
    "isolate_hf_client",
    "point_client_at",
]


def isolate_hf_client(monkeypatch: pytest.MonkeyPatch, hf_home: Path) -> None:
    """Point the client's import-time paths under ``hf_home`` and turn its telemetry off, for one test.

    ``huggingface_hub`` computes its cache, token and telemetry settings from the environment once,
    at import (before any fixture runs), so setting ``HF_HOME`` in a fixture does not move them:
    without this, in-process downloads land in the user's real ``~/.cache/huggingface`` and a token
    stored there by ``hf auth login`` is sent to the test server (which answers 401).
    """
    hub_cache = str(hf_home / "hub")
    for name, value in {
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": hub_cache,
        "HUGGINGFACE_HUB_CACHE": hub_cache,
        "HF_ASSETS_CACHE": str(hf_home / "assets"),
        "HF_XET_CACHE": str(hf_home / "xet"),
        "HF_TOKEN_PATH": str(hf_home / "token"),
        "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(hf_home / ".agent_harnesses.json"),
        "CHECK_FOR_UPDATE_DONE_PATH": str(hf_home / ".check_for_update_done"),
        "HF_HUB_DISABLE_TELEMETRY": True,  # else the first request of a process also asks for /api/agent-harnesses
    }.items():
        monkeypatch.setattr(hf_constants, name, value)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


def point_client_at(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """Point ``HF_ENDPOINT`` and the client's import-time copies of it at ``url`` for one test."""
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(hf_constants, "ENDPOINT", url)
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    import huggingface_hub.hf_api  # a submodule: not an attribute until imported

    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", url)


def disable_xet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the client use git-LFS instead of Xet for "lfs" uploads, here and in subprocesses.

    ``huggingface_hub`` reads ``HF_HUB_DISABLE_XET`` at import into ``constants.HF_HUB_DISABLE_XET``
    and checks that constant at call time (``utils._runtime.is_xet_available``).
    """
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)


def _start(root: Path, lfs_mode: str = "regular") -> HubServer:
    return HubServer(root, tokens=[f"{HUB_TOKEN} {HUB_USER}"], lfs_mode=lfs_mode).start()  # type: ignore[arg-type]


@pytest.fixture
def hub_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """A fresh Hub server for this test, with the client pointed at it (regular uploads)."""
    server = _start(tmp_path / "hub-root")
    isolate_hf_client(monkeypatch, tmp_path / "hf-home")
    point_client_at(monkeypatch, server.url)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def hub_server_lfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """A fresh Hub server in ``lfs_mode="auto"``, the client pointed at it with Xet disabled."""
    server = _start(tmp_path / "hub-root", lfs_mode="auto")
    isolate_hf_client(monkeypatch, tmp_path / "hf-home")
    point_client_at(monkeypatch, server.url)
    disable_xet(monkeypatch)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def hub_server_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    """One Hub server for the session; pass ``endpoint=`` explicitly and use unique repo names."""
    server = _start(tmp_path_factory.mktemp("hub-session-root"))
    try:
        yield server
    finally:
        server.stop()
