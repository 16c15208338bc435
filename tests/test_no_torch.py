"""Metadata commands never import torch (or transformers/peft): measured in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from adapter_files import write_prompt_adapter

HEAVY = ("torch", "transformers", "peft")
PROBE = f"""
import json, sys
from registry.cli.main import run
code = run(sys.argv[1:])
print(json.dumps({{"code": code, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}), file=sys.stderr)
"""


def run_fresh(*argv: str) -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120)
    return json.loads(proc.stderr.strip().splitlines()[-1])


@pytest.fixture
def published(tmp_path: Path) -> None:
    for seed in range(2):
        result = run_fresh("publish", str(write_prompt_adapter(tmp_path / f"a{seed}", seed=seed)), "--name", "coach")
        assert result["code"] == 0
    assert run_fresh("alias", "set", "coach@1", "prod")["code"] == 0


@pytest.mark.parametrize(
    "argv",
    [
        ["list"], ["show", "coach@prod"], ["lineage", "coach"], ["versions", "coach"], ["log"],
        ["--json", "show", "coach"],
    ],
)
def test_metadata_commands_do_not_import_torch(published: None, argv: list[str]) -> None:
    result = run_fresh(*argv)
    assert result == {"code": 0, "heavy": []}


def test_publish_does_not_import_torch(tmp_path: Path) -> None:
    result = run_fresh("publish", str(write_prompt_adapter(tmp_path / "a")), "--name", "x")
    assert result == {"code": 0, "heavy": []}


def test_the_probe_would_see_torch() -> None:
    # The probe itself is able to detect an import: guards against a check that cannot fail.
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, torch; print('torch' in sys.modules)"], capture_output=True, text=True
    )
    assert proc.stdout.strip() == "True"
