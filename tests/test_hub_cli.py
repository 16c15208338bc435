"""The Hub commands as a user runs them: ``spr push/pull/import/lock/sync`` and ``spr hub serve``.

In-process runs go through ``registry.cli.app.run`` (the same error formatting as the console
script); what must hold for a fresh process (no torch, no request for a cached pinned pull, the
server command) runs ``spr`` in a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hub_fixtures import HUB_TOKEN
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError
from ops_support import home_env, switch_home

from registry.cli import main as _main  # noqa: F401  (registers every command on the group)
from registry.cli.app import run
from registry.hubserver import HubServer

REPO = "team/coach"


def spr(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = run(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def spr_process(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``spr`` in a fresh interpreter (the console script's own entry point)."""
    return subprocess.run(
        [sys.executable, "-c", "from registry.cli.main import main; main()", *argv],
        env=env if env is not None else dict(os.environ), capture_output=True, text=True, check=False, timeout=120,
    )


@pytest.fixture
def published(capsys: pytest.CaptureFixture[str], prompt_tuning_random: Path) -> str:
    code, _out, err = spr(capsys, "publish", str(prompt_tuning_random), "--name", REPO, "--eval", "eval_loss=2.5")
    assert code == 0, err
    return f"{REPO}@1"


def test_wrong_token_is_one_clear_line_and_exit_7(
    hub_server: HubServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], published: str
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_secret_value")
    code, out, err = spr(capsys, "push", published, "--repo", REPO)
    assert code == 7
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "401" in lines[0] and "HF_TOKEN" in lines[0]
    assert "hf_wrong_secret_value" not in err
    code, out, err = spr(capsys, "--json", "push", published, "--repo", REPO)
    assert code == 7 and json.loads(out)["error"] == "HubError" and "hf_wrong_secret_value" not in out + err


def test_push_pull_lock_sync_from_the_command_line(
    hub_server: HubServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], published: str,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    code, out, err = spr(capsys, "push", published, "--repo", REPO)
    assert code == 0, err
    assert re.match(r"pushed team/coach@1 -> team/coach@v1 \(commit [0-9a-f]{12}\) sha256:[0-9a-f]{64}\n", out)
    assert HUB_TOKEN not in out + err
    code, out, err = spr(capsys, "--json", "push", published, "--repo", REPO)
    pushed = json.loads(out)
    assert code == 0 and pushed["committed"] is False and pushed["tag"] == "v1" and pushed["repo_id"] == REPO

    code, out, err = spr(capsys, "lock", published, "-o", str(tmp_path / "adapters.lock"))
    assert code == 0 and "locked 1 adapter(s)" in out

    switch_home(monkeypatch, tmp_path / "deploy")
    code, out, err = spr(capsys, "pull", f"{REPO}@v1", "--to", str(tmp_path / "out"), "--json")
    assert code == 0, err
    pulled = json.loads(out)
    assert pulled["imported"] is True and pulled["commit_sha"] == pushed["commit_sha"] and pulled["source"] == "hub"
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    code, out, err = spr(capsys, "pull", f"{REPO}@1")
    assert code == 0 and out.startswith("already in the catalogue: team/coach@1")

    switch_home(monkeypatch, tmp_path / "deploy2")
    code, out, err = spr(capsys, "sync", str(tmp_path / "adapters.lock"), "--to", str(tmp_path / "srv"), "--frozen")
    assert code == 0, err
    assert "imported team/coach@1" in out and (tmp_path / "srv" / "team" / "coach@1" / "adapter_config.json").is_file()


def test_sync_drift_exits_5_and_names_the_drift(
    hub_server: HubServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], published: str,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    assert spr(capsys, "push", published, "--repo", REPO)[0] == 0
    lock = tmp_path / "adapters.lock"
    assert spr(capsys, "lock", published, "-o", str(lock))[0] == 0
    doc = json.loads(lock.read_text())
    doc["adapters"][0]["commit"] = "f" * 40
    lock.write_text(json.dumps(doc))
    switch_home(monkeypatch, tmp_path / "deploy")
    code, _out, err = spr(capsys, "sync", str(lock))
    assert code == 5
    assert "lockfile drift for team/coach@1" in err and "missing version" in err and len(err.strip().splitlines()) == 1


def test_import_from_the_command_line(
    hub_server: HubServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], prompt_tuning_random: Path
) -> None:
    api = HfApi(endpoint=hub_server.url, token=HUB_TOKEN)
    api.create_repo("someone/plain")
    api.upload_folder(repo_id="someone/plain", folder_path=prompt_tuning_random)
    code, out, err = spr(capsys, "import", "someone/plain", "--as", "local/plain")
    assert code == 0, err
    assert out.startswith("imported local/plain@1") and "lineage UNVERIFIED" in out
    code, out, err = spr(capsys, "show", "local/plain@1", "--json")
    assert json.loads(out)["lineage_verified"] is False


def test_pull_in_a_fresh_process_never_imports_torch_and_a_pinned_repeat_makes_no_request(
    hub_server: HubServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], published: str,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    code, out, err = spr(capsys, "--json", "push", published, "--repo", REPO)
    assert code == 0, err
    sha = json.loads(out)["commit_sha"]
    env = {**os.environ, **home_env(tmp_path / "deploy")}
    env.pop("HF_TOKEN")
    probe = (
        "import sys\n"
        "from registry.cli.app import run\n"
        "from registry.cli import main\n"
        "code = run(sys.argv[1:])\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe, "pull", f"{REPO}@{sha}", "--to", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("NO-TORCH")
    hub_server.clear_log()
    again = spr_process("pull", f"{REPO}@{sha}", env=env)
    assert again.returncode == 0, again.stderr
    assert "already in the catalogue" in again.stdout
    assert hub_server.requests == []


def test_hub_serve_runs_a_server_that_the_client_can_use(tmp_path: Path) -> None:
    env = {**os.environ, "SPR_HOME": str(tmp_path / "home"), "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from registry.cli.main import main; main()", "hub", "serve", "--port", "0",
         "--token", "s3cret-token alice", "--root", str(tmp_path / "root")],
        env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        match = re.search(r"serving a Hub at (http://127\.0\.0\.1:\d+)", line)
        assert match, line
        assert "s3cret-token" not in line
        url = match.group(1)
        HfApi(endpoint=url, token="s3cret-token").create_repo("alice/x")
        with pytest.raises(HfHubHTTPError) as excinfo:
            HfApi(endpoint=url, token="wrong").create_repo("alice/y")
        assert excinfo.value.response.status_code == 401
        assert (tmp_path / "root").is_dir()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_bad_arguments_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = spr(capsys, "pull", "not a repo")
    assert code == 2 and err.startswith("error: invalid")
    code, _out, err = spr(capsys, "push", "x@1", "--repo", "team/coach@v1")
    assert code == 2 and "without a revision" in err
    code, _out, err = spr(capsys, "sync", "/nonexistent.lock")
    assert code == 2 and "cannot read lockfile" in err


def test_sync_of_a_lockfile_naming_a_plain_http_remote_endpoint_is_a_usage_error(
    hub_server: HubServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], published: str,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    code, _out, err = spr(capsys, "push", published, "--repo", REPO)
    assert code == 0, err
    lock = tmp_path / "adapters.lock"
    code, _out, err = spr(capsys, "lock", published, "-o", str(lock))
    assert code == 0, err
    doc = json.loads(lock.read_text())
    doc["adapters"][0]["endpoint"] = "http://hub.example.com"
    lock.write_text(json.dumps(doc))
    switch_home(monkeypatch, tmp_path / "deploy")
    hub_server.clear_log()
    code, out, err = spr(capsys, "sync", str(lock))
    assert code == 2 and out == "" and hub_server.requests == []
    assert err.startswith("error: refusing the plain-http Hub endpoint http://hub.example.com") and HUB_TOKEN not in err
