"""hub_cmds commands."""

from __future__ import annotations

from registry.cli.app import cli  # noqa: F401
