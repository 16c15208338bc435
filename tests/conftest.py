"""Test isolation: every test gets its own SPR_HOME and HF_HOME, read by the library at call time.

Fixtures for tiny models live in ``model_fixtures.py`` and for the Hub server in
``hub_fixtures.py``; they are imported here so every test module can use them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hub_fixtures import *  # noqa: F401,F403
from model_fixtures import *  # noqa: F401,F403


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the registry and the Hub client at per-test directories."""
    home = tmp_path / "spr-home"
    monkeypatch.setenv("SPR_HOME", str(home))
    monkeypatch.delenv("SPR_DATABASE_URL", raising=False)
    monkeypatch.setenv("SPR_ACTOR", "tester")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return home


def pytest_configure(config: pytest.Config) -> None:
    # Child processes started by tests (``spr`` subprocesses) must not find a real Hub.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
