"""``spr demo`` runs end to end as a user would run it: a fresh process, a fresh directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# the demo always uses its own SQLite catalogues (it clears SPR_DATABASE_URL): run once, in the SQLite half.
pytestmark = pytest.mark.backend_independent


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("SPR_HOME", "SPR_DATABASE_URL")}
    proc = subprocess.run(
        [sys.executable, "-m", "registry.cli.main", "demo", "--workdir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr  # data on stdout, messages (audit summary, errors) on stderr
    # Trained, published with lineage, promoted.
    assert "published team/coach@1" in out and "published team/coach@2" in out and "published team/quotes@1" in out
    assert "parent team/coach@1" in out
    assert "team/coach@prod -> 2" in out
    # PEFT alone fails late; spr refuses early with the right findings, then loads and generates.
    assert "generate(): RuntimeError: Sizes of tensors must match" in out
    assert "token-dim-mismatch" in out and "embedding-fingerprint-differs" in out
    assert "compatible: team/coach@2 fits base model" in out
    assert "[team/coach@2]" in out and "[base model]" in out
    assert out.count("(batch of 2; same tokens as PEFT's generate with that adapter alone)") == 2
    # Pushed, locked, synced and pulled on another machine; a tampered byte refused.
    assert "pushed team/coach@2 -> team/coach@v2" in out
    assert "synced 2 adapter(s)" in out
    assert "(exit 5, as expected)" in out
    assert "audit: 0 error(s)" in out
    for machine in ("publisher", "deploy"):
        assert (tmp_path / "demo" / machine / "spr-home" / "catalogue.sqlite").is_file()
