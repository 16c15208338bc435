"""Helpers for tests that drive ``spr`` in-process and write small datasets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from registry.cli.main import run


def spr(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``spr`` in-process through the console script's entry point; return (code, stdout, stderr)."""
    capsys.readouterr()
    code = run(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path
