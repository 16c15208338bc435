"""``spr demo`` runs end to end as a user would run it: a fresh process, a fresh directory."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from registry.demo import toymodels

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
    assert f"SPR_HOME={tmp_path / 'demo' / 'publisher' / 'spr-home'} spr ui" in out  # where to look next
    for machine in ("publisher", "deploy"):
        assert (tmp_path / "demo" / machine / "spr-home" / "catalogue.sqlite").is_file()
    # Section 1 shows its progress instead of a silent minute.
    assert "pretraining: step 200/200 loss" in out
    assert "pretraining: step 50/200" in out
    # The pretrained base writes words, and the two soft prompts steer the same request to their
    # tasks: a coach's reply and a saying. Were soft prompts ignored, both would print the same.
    said = two_tasks(out)
    assert said["team/coach@2"] != said["team/quotes@1"], said
    assert starts_one_of(said["team/coach@2"], [c for _, c in toymodels.COACH_DIALOGUES]), said
    assert starts_one_of(said["team/quotes@1"], toymodels.QUOTES), said
    # Internal reads are not logged as exports; a score is shown once with its sources.
    assert "/tmp/train-" not in out and "spr-home/tmp" not in out
    assert re.search(r"eval eval_loss=\S+ on coach_replies_eval.jsonl \(spr train, [^;]+; spr eval, ", out), out


def two_tasks(out: str) -> dict[str, str]:
    """The generations of the two-tasks step: ``{ref: text}``."""
    found = dict(re.findall(r"^ +(team/\S+|\(base alone\)) +-> ('.*'|\".*\")$", out, flags=re.MULTILINE))
    return {ref: ast.literal_eval(text) for ref, text in found.items()}


def starts_one_of(text: str, candidates: list[str], n: int = 12) -> bool:
    """Whether ``text`` begins like one of ``candidates`` (its first ``n`` characters)."""
    text = text.strip()
    return len(text) >= n and any(c.startswith(text[:n]) for c in candidates)
