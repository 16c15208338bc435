"""``spr verify``: exit codes, readable findings, JSON, overrides, and no torch import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hub_fixtures import HUB_TOKEN

from registry import catalogue
from registry.catalogue import PublishOptions
from registry.cli.main import run
from registry.hubserver import HubServer
from registry.storage import LocalBlobStore

HEAVY = ("torch", "transformers", "peft")
PROBE = f"""
import json, sys
from registry.cli.main import run
code = run(sys.argv[1:])
print(json.dumps({{"code": code, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}), file=sys.stderr)
"""


def run_fresh(*argv: str) -> tuple[dict[str, object], str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120)
    return json.loads(proc.stderr.strip().splitlines()[-1]), proc.stdout


def test_compatible_directory_exits_0(prompt_tuning_random: Path, tiny_bloom: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["verify", str(prompt_tuning_random), "--base-model", str(tiny_bloom)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("compatible:") and str(tiny_bloom.resolve()) in out


def test_incompatible_exits_3_with_one_line_per_finding(prompt_tuning_random: Path, tiny_bloom_wide: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["verify", str(prompt_tuning_random), "--base-model", str(tiny_bloom_wide)]) == 3
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert lines[0].startswith("INCOMPATIBLE")
    token = [line for line in lines if "token-dim-mismatch" in line]
    assert len(token) == 1 and "expected 128, found 64" in token[0] and "retrain" in token[0]
    assert "incompatible" in captured.err


def test_json_report(prompt_tuning_random: Path, tiny_bloom_other: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["verify", str(prompt_tuning_random), "--base-model", str(tiny_bloom_other), "--json"]) == 3
    doc = json.loads(capsys.readouterr().out)
    assert doc["compatible"] is False
    assert [(f["code"], f["severity"]) for f in doc["findings"]] == [("embedding-fingerprint-differs", "identity")]
    assert doc["base_model"]["embedding_fingerprint"].startswith("sha256:")


def test_ref_override_is_logged(prompt_tuning_random: Path, tiny_bloom: Path, tiny_bloom_other: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    catalogue.publish(prompt_tuning_random, "team/coach", options=PublishOptions(base_model=str(tiny_bloom)))
    assert run(["verify", "team/coach", "--base-model", str(tiny_bloom)]) == 0
    assert run(["verify", "team/coach@1", "--base-model", str(tiny_bloom_other)]) == 3
    assert not [e for e in catalogue.events() if e.action == "verify-override"]
    capsys.readouterr()
    assert run(["verify", "team/coach@1", "--base-model", str(tiny_bloom_other), "--allow-different-base", "--author", "bob"]) == 0
    assert "--allow-different-base" in capsys.readouterr().out
    (event,) = [e for e in catalogue.events() if e.action == "verify-override"]
    assert (event.subject, event.actor, event.details["via"]) == ("team/coach@1", "bob", "spr verify")


def test_tampered_blob_exits_3(lora: Path, tiny_bloom: Path, capsys: pytest.CaptureFixture[str]) -> None:
    version = catalogue.publish(lora, "team/lora", options=PublishOptions(base_model=str(tiny_bloom))).version
    record = next(f for f in version.files if f.path == "adapter_config.json")
    blob = LocalBlobStore().path(record.sha256)
    os.chmod(blob, 0o644)
    blob.write_bytes(blob.read_bytes().replace(b'"r": 4', b'"r": 5'))
    assert run(["verify", "team/lora@1", "--base-model", str(tiny_bloom)]) == 3
    assert "file-digest-mismatch" in capsys.readouterr().out


def test_other_errors(prompt_tuning_random: Path, tiny_bloom: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["verify", "team/ghost", "--base-model", str(tiny_bloom)]) == 4
    assert run(["verify", str(prompt_tuning_random), "--base-model", str(tmp_path / "missing")]) == 1
    assert run(["verify", str(prompt_tuning_random)]) == 2  # --base-model is required
    err = capsys.readouterr().err
    assert "error:" in err


def test_verify_against_a_hub_repo(prompt_tuning_random: Path, tiny_bloom: Path, hub_server: HubServer,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub_server.url, token=HUB_TOKEN)
    api.create_repo("tester/tiny-bloom")
    commit = api.upload_folder(repo_id="tester/tiny-bloom", folder_path=str(tiny_bloom)).oid
    assert run(["verify", str(prompt_tuning_random), "--base-model", f"tester/tiny-bloom@{commit}", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["base_model"]["revision"] == commit and doc["findings"] == []


def test_spr_verify_never_imports_torch(prompt_tuning_random: Path, lora: Path, tiny_bloom: Path, tiny_bloom_wide: Path) -> None:
    result, out = run_fresh("verify", str(prompt_tuning_random), "--base-model", str(tiny_bloom))
    assert result == {"code": 0, "heavy": []}, out
    result, out = run_fresh("verify", str(lora), "--base-model", str(tiny_bloom_wide), "--json")
    assert result == {"code": 3, "heavy": []}
    assert json.loads(out)["compatible"] is False
    result, _ = run_fresh("publish", str(prompt_tuning_random), "--name", "team/coach", "--base-model", str(tiny_bloom))
    assert result["code"] == 0
    result, _ = run_fresh("verify", "team/coach@1", "--base-model", str(tiny_bloom))
    assert result == {"code": 0, "heavy": []}


def test_the_probe_would_see_torch() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, registry.ml.loading as l, torch; print('torch' in sys.modules)"],
        capture_output=True, text=True,
    )
    assert proc.stdout.strip() == "True"


def test_verify_command_is_documented() -> None:
    from registry.cli.app import cli

    command = cli.commands["verify"]
    assert command.help and "Exit status: 0 compatible" in command.help
    assert {p.name for p in command.params} >= {"base_model", "allow_different_base"}
