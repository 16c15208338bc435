"""``spr demo`` runs end to end as a user would run it: a fresh process, a fresh directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("SPR_HOME", "SPR_DATABASE_URL")}
    proc = subprocess.run(
        [sys.executable, "-m", "registry.cli.main", "demo", "--workdir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "published team/coach@1" in out and "published team/coach@2" in out
    assert "already published (identical content) team/coach@1" in out
    assert "parent team/coach@1" in out
    assert "team/coach@prod -> 2" in out
    assert (tmp_path / "demo" / "spr-home" / "catalogue.sqlite").is_file()
