"""A team on S3: every blob command with ``SPR_BLOB_URL=s3://…`` and two machines sharing one bucket.

The S3 server is moto in server mode on 127.0.0.1 (``s3_fixtures``). "Machines" are separate
``SPR_HOME``s (separate local caches) sharing one catalogue (the test's SQLite file, or its
PostgreSQL database in the PostgreSQL half) and one bucket; concurrent ones are subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import huggingface_hub.hf_api  # noqa: F401  (the hub_server fixture patches it)
import pytest
from hub_fixtures import HUB_TOKEN
from ops_support import switch_home, write_small_adapter
from s3_fixtures import *  # noqa: F403  (the s3_server and s3 fixtures)
from s3_fixtures import S3Env

from registry import catalogue, db
from registry.cli import main as _main  # noqa: F401  (registers every command on the group)
from registry.cli.app import run
from registry.hubserver import HubServer
from registry.storage import open_store
from registry.storage.s3 import S3BlobStore

TESTS = Path(__file__).resolve().parent


def spr(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = run(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def team(s3: S3Env, monkeypatch: pytest.MonkeyPatch) -> S3Env:
    """This test's blob store is the bucket (``SPR_BLOB_URL``)."""
    monkeypatch.setenv("SPR_BLOB_URL", s3.url)
    return s3


def weights_sha(directory: Path) -> str:
    import hashlib

    return hashlib.sha256((directory / "adapter_model.safetensors").read_bytes()).hexdigest()


def test_open_store_dispatches_on_the_url(team: S3Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store()
    assert isinstance(store, S3BlobStore) and store.location == team.url
    assert open_store() is store  # one client per URL and endpoint
    assert isinstance(open_store("s3://other-bucket/p"), S3BlobStore)
    monkeypatch.delenv("SPR_BLOB_URL")
    assert type(open_store()).__name__ == "LocalBlobStore"


def test_publish_export_audit_gc_and_blobs_commands_on_s3(
    team: S3Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    adapter = write_small_adapter(tmp_path / "a", seed=1)
    code, out, err = spr(capsys, "publish", str(adapter), "--name", "team/coach")
    assert code == 0, err
    sha = weights_sha(adapter)
    assert f"team/sha256/{sha[:2]}/{sha}" in team.keys("team/sha256/")
    assert not (Path(os.environ["SPR_HOME"]) / "blobs").exists()  # no bytes on this machine's disk store
    assert team.keys("team/pending/") == []  # the writer's marker is gone after the commit

    code, out, err = spr(capsys, "export", "team/coach@1", str(tmp_path / "out"))
    assert code == 0, err
    assert (tmp_path / "out" / "adapter_model.safetensors").read_bytes() == (adapter / "adapter_model.safetensors").read_bytes()

    assert spr(capsys, "audit")[0] == 0
    assert spr(capsys, "audit", "--no-rehash")[0] == 0
    code, out, _ = spr(capsys, "blobs", "ls", "--json")
    listed = json.loads(out)
    assert code == 0 and listed["location"] == team.url and sha in {b["sha256"] for b in listed["blobs"]}
    assert spr(capsys, "blobs", "verify")[0] == 0

    # An orphan (an abandoned upload of another machine) goes with gc; referenced blobs stay.
    orphan = open_store().put_bytes(b"orphan bytes")
    code, out, err = spr(capsys, "gc", "--yes", "--grace", "0")
    assert code == 0, err
    assert f"removed blob sha256:{orphan}" in out
    assert not open_store().has(orphan) and open_store().has(sha)

    # Tampering behind spr's back: audit (re-hashing from the bucket) and blobs verify say which blob.
    team.client.put_object(Bucket=team.bucket, Key=f"team/sha256/{sha[:2]}/{sha}", Body=b"tampered")
    code, out, err = spr(capsys, "audit")
    assert code == 5 and sha in out
    code, out, err = spr(capsys, "audit", "--no-rehash")
    assert code == 5 and sha in out  # the size no longer matches the catalogue
    code, out, err = spr(capsys, "blobs", "verify", sha)
    assert code == 5 and out.startswith(f"sha256:{sha}: ")


@pytest.mark.sqlite_only
def test_backup_from_a_bucket_and_restore_into_another(
    team: S3Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(2):
        assert spr(capsys, "publish", str(write_small_adapter(tmp_path / f"a{i}", seed=i)), "--name", "team/c")[0] == 0
    archive = tmp_path / "backup.tar"
    code, _out, err = spr(capsys, "backup", str(archive))
    assert code == 0, err
    switch_home(monkeypatch, tmp_path / "restored")
    monkeypatch.setenv("SPR_BLOB_URL", team.url + "-restored")
    code, _out, err = spr(capsys, "restore", str(archive))
    assert code == 0, err
    assert len(team.keys("team-restored/sha256/")) == len(team.keys("team/sha256/"))
    assert spr(capsys, "export", "team/c@2", str(tmp_path / "out"))[0] == 0
    assert spr(capsys, "audit")[0] == 0


def test_push_pull_and_sync_with_s3_blob_stores(
    team: S3Env, hub_server: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    adapter = write_small_adapter(tmp_path / "a", seed=3)
    assert spr(capsys, "publish", str(adapter), "--name", "team/coach")[0] == 0
    code, _out, err = spr(capsys, "push", "team/coach@1", "--repo", "team/coach")
    assert code == 0, err
    assert spr(capsys, "lock", "team/coach@1", "-o", str(tmp_path / "adapters.lock"))[0] == 0

    switch_home(monkeypatch, tmp_path / "deploy")
    monkeypatch.setenv("SPR_BLOB_URL", team.url + "-deploy")
    code, _out, err = spr(capsys, "pull", "team/coach@v1", "--to", str(tmp_path / "pulled"))
    assert code == 0, err
    assert (tmp_path / "pulled" / "adapter_model.safetensors").read_bytes() == (adapter / "adapter_model.safetensors").read_bytes()
    assert f"team-deploy/sha256/{weights_sha(adapter)[:2]}/{weights_sha(adapter)}" in team.keys("team-deploy/")
    assert spr(capsys, "audit")[0] == 0

    switch_home(monkeypatch, tmp_path / "deploy2")
    monkeypatch.setenv("SPR_BLOB_URL", team.url + "-deploy2")
    code, _out, err = spr(capsys, "sync", str(tmp_path / "adapters.lock"), "--to", str(tmp_path / "srv"), "--frozen")
    assert code == 0, err
    assert len(team.keys("team-deploy2/sha256/")) == 2


def test_load_reads_through_the_local_cache(
    team: S3Env, tmp_path: Path, prompt_tuning_random: Path, tiny_bloom: Path
) -> None:
    pytest.importorskip("torch")
    from registry.ml import loading

    catalogue.publish(prompt_tuning_random, "team/coach")
    store = open_store()
    assert isinstance(store, S3BlobStore)
    model = loading.load("team/coach@1", tiny_bloom)
    assert model is not None
    for key in team.keys("team/sha256/"):  # the bucket can no longer serve a byte
        team.client.delete_object(Bucket=team.bucket, Key=key)
    again = loading.load("team/coach@1", tiny_bloom)  # from the verified local cache: no download
    assert again is not None


# ---------------------------------------------------------------------------------------------
# Two machines, one catalogue, one bucket


def machine(tmp_path: Path, name: str, s3: S3Env) -> dict[str, str]:
    """The environment of another machine: its own SPR_HOME (and cache), the shared catalogue and bucket."""
    env = dict(os.environ)
    env["SPR_HOME"] = str(tmp_path / name)
    env["SPR_DATABASE_URL"] = shared_catalogue(tmp_path)
    env["SPR_BLOB_URL"] = s3.url
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return env


def shared_catalogue(tmp_path: Path) -> str:
    url = os.environ.get("SPR_DATABASE_URL")
    if url:  # the PostgreSQL half: the test's own database, shared by both machines
        return url
    path = tmp_path / "shared.sqlite"
    url = f"sqlite:///{path}"
    if not path.exists():
        db.upgrade(db.open_unchecked(url))
    return url


def spr_on(env: dict[str, str], *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from registry.cli.main import main; main()", *argv],
        env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )


PUBLISHER = r"""
import json, sys
from pathlib import Path
from ops_support import write_small_adapter
from registry import catalogue
name, first, count, workdir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
tokens = int(sys.argv[5]) if len(sys.argv) > 5 else 4
dirs = [write_small_adapter(workdir / f"a{first + i}", first + i, tokens=tokens, dim=64 if tokens == 4 else 4096)
        for i in range(count)]
print("ready", flush=True)
sys.stdin.readline()
for d in dirs:
    r = catalogue.publish(d, name)
    print(json.dumps({"number": r.version.number, "created": r.created}), flush=True)
"""


def start_publisher(env: dict[str, str], name: str, first: int, count: int, workdir: Path,
                    tokens: int = 4) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, name, str(first), str(count), str(workdir), str(tokens)],
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_one_machine_publishes_the_other_exports_the_same_bytes(s3: S3Env, tmp_path: Path) -> None:
    alice, bob = machine(tmp_path, "alice", s3), machine(tmp_path, "bob", s3)
    adapter = write_small_adapter(tmp_path / "adapter", seed=42)
    done = spr_on(alice, "publish", str(adapter), "--name", "team/coach")
    assert done.returncode == 0, done.stderr
    done = spr_on(bob, "export", "team/coach@1", str(tmp_path / "bob-out"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "bob-out" / "adapter_model.safetensors").read_bytes() == (
        adapter / "adapter_model.safetensors").read_bytes()
    sha = weights_sha(adapter)
    assert (tmp_path / "bob" / "cache" / "blobs" / "sha256" / sha[:2] / sha).is_file()  # bob's own cache
    assert not (tmp_path / "bob" / "blobs").exists()
    for env in (alice, bob):
        done = spr_on(env, "audit")
        assert done.returncode == 0, done.stdout + done.stderr
    # Publishing the same adapter again from bob uploads nothing and returns the same version.
    before = {o["Key"]: o["LastModified"] for o in s3.client.list_objects_v2(Bucket=s3.bucket)["Contents"]}
    done = spr_on(bob, "--json", "publish", str(adapter), "--name", "team/coach")
    assert done.returncode == 0 and json.loads(done.stdout)["created"] is False
    after = {o["Key"]: o["LastModified"] for o in s3.client.list_objects_v2(Bucket=s3.bucket)["Contents"]}
    assert after == before


def test_concurrent_publishes_from_two_machines(s3: S3Env, tmp_path: Path) -> None:
    alice, bob = machine(tmp_path, "alice", s3), machine(tmp_path, "bob", s3)
    procs = [start_publisher(alice, "team/shared", 0, 6, tmp_path / "wa"),
             start_publisher(bob, "team/shared", 100, 6, tmp_path / "wb")]
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    numbers = sorted(json.loads(line)["number"] for out, _ in outs for line in out.splitlines())
    assert numbers == list(range(1, 13))
    done = spr_on(alice, "--json", "audit")
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["errors"] == 0 and report["versions"] == 12, done.stdout
    assert s3.keys("team/pending/") == []


def test_gc_on_one_machine_while_the_other_publishes_loses_nothing(s3: S3Env, tmp_path: Path) -> None:
    alice, bob = machine(tmp_path, "alice", s3), machine(tmp_path, "bob", s3)
    # Bob re-publishes content whose blobs are already in the bucket as orphans (the worst case:
    # an old blob, unreferenced, that a writer is about to reference), and new content.
    orphans = [write_small_adapter(tmp_path / "wb" / f"a{i}", i) for i in range(0, 20, 2)]
    store = S3BlobStore(s3.url)
    for d in orphans:
        store.put_file(d / "adapter_model.safetensors")
        store.put_file(d / "adapter_config.json")
    publisher = start_publisher(bob, "team/raced", 0, 20, tmp_path / "wb")
    assert publisher.stdin is not None
    publisher.stdin.write("\n")
    publisher.stdin.flush()
    collections = 0
    while publisher.poll() is None:
        done = spr_on(alice, "gc", "--yes", "--grace", "0")  # no grace period: only the markers protect
        assert done.returncode == 0, done.stderr
        collections += 1
    _out, err = publisher.communicate()
    assert publisher.returncode == 0, err
    assert collections >= 1
    done = spr_on(alice, "--json", "audit")
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["errors"] == 0 and report["versions"] == 20, done.stdout
    assert spr_on(bob, "export", "team/raced@20", str(tmp_path / "out")).returncode == 0


def test_kill_9_mid_upload_then_audit_and_rerun(s3: S3Env, tmp_path: Path) -> None:
    alice = machine(tmp_path, "alice", s3)
    # ~33 MB weights: a multipart upload in 8 MiB parts that takes long enough to be caught mid-way.
    proc = start_publisher(alice, "team/big", 0, 1, tmp_path / "w", tokens=2000)
    assert proc.stdin is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    deadline = time.monotonic() + 60
    while not s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads"):
        assert time.monotonic() < deadline and proc.poll() is None, "the upload finished before it could be killed"
        time.sleep(0.01)
    proc.kill()  # SIGKILL: no cleanup code runs
    proc.wait()
    sha = weights_sha(tmp_path / "w" / "a0")
    assert not S3BlobStore(s3.url).has(sha)  # nothing partial under the blob's key
    done = spr_on(alice, "--json", "audit")
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["errors"] == 0 and report["versions"] == 0, done.stdout
    assert spr_on(alice, "list").stdout.strip() == "" or "team/big" not in spr_on(alice, "list").stdout
    done = spr_on(alice, "publish", str(tmp_path / "w" / "a0"), "--name", "team/big")  # the re-run
    assert done.returncode == 0, done.stderr
    done = spr_on(alice, "export", "team/big@1", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert spr_on(alice, "audit").returncode == 0


def test_cli_options_and_one_line_errors(s3: S3Env, tmp_path: Path) -> None:
    env = machine(tmp_path, "carol", s3)
    del env["SPR_BLOB_URL"], env["AWS_ENDPOINT_URL"]
    adapter = write_small_adapter(tmp_path / "a", seed=5)
    done = spr_on(env, "--blob-url", s3.url, "--s3-endpoint", s3.endpoint, "publish", str(adapter), "--name", "t/a")
    assert done.returncode == 0, done.stderr
    done = spr_on(env, "--blob-url", s3.url, "--s3-endpoint", s3.endpoint, "blobs", "ls")
    assert done.returncode == 0 and "2 blob(s)" in done.stderr and s3.url in done.stderr, done.stderr

    def one_line_error(done: subprocess.CompletedProcess[str], code: int, start: str) -> None:
        lines = done.stderr.strip().splitlines()
        assert done.returncode == code and len(lines) == 1 and lines[0].startswith(start), done.stderr
        assert "Traceback" not in done.stderr and "spr-test-secret" not in done.stderr + done.stdout

    other = write_small_adapter(tmp_path / "b", seed=6)
    done = spr_on(env, "--blob-url", "s3://no-such-bucket-x/p", "--s3-endpoint", s3.endpoint,
                  "publish", str(other), "--name", "t/b")
    one_line_error(done, 4, "error: bucket 'no-such-bucket-x' does not exist at ")
    assert "t/b" not in spr_on(env, "list").stdout  # nothing half-committed in the catalogue
    no_keys = {k: v for k, v in env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    done = spr_on(no_keys, "--blob-url", s3.url, "--s3-endpoint", s3.endpoint, "publish", str(other), "--name", "t/b")
    one_line_error(done, 1, f"error: no AWS credentials found for {s3.url}")
    done = spr_on(env, "--blob-url", "s3://B!/x", "blobs", "ls")
    one_line_error(done, 2, "error: blob URL 's3://B!/x' does not name a valid bucket")
    done = spr_on(env, "--blob-url", s3.url, "--s3-endpoint", "http://127.0.0.1:9", "blobs", "ls")
    one_line_error(done, 1, "error: the S3 endpoint http://127.0.0.1:9 failed while listing blobs")
    # the retry, once the cause is fixed, succeeds
    done = spr_on(env, "--blob-url", s3.url, "--s3-endpoint", s3.endpoint, "publish", str(other), "--name", "t/b")
    assert done.returncode == 0, done.stderr


def test_blobs_migrate_moves_a_local_store_up(
    s3: S3Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(3):
        assert spr(capsys, "publish", str(write_small_adapter(tmp_path / f"a{i}", seed=i)), "--name", "team/m")[0] == 0
    code, out, err = spr(capsys, "--json", "blobs", "migrate", "--to", s3.url)
    report = json.loads(out)
    assert code == 0, err
    assert report["copied"] == 4 and report["skipped"] == 0 and report["damaged"] == []  # 3 weights, 1 shared config
    code, out, err = spr(capsys, "blobs", "migrate", "--to", s3.url)  # resumable: nothing left to copy
    assert code == 0 and "copied 0 blob(s)" in err and "4 already there" in err
    monkeypatch.setenv("SPR_BLOB_URL", s3.url)  # the team moves up
    assert spr(capsys, "audit")[0] == 0
    assert spr(capsys, "blobs", "verify")[0] == 0
    code, _out, err = spr(capsys, "export", "team/m@3", str(tmp_path / "out"))
    assert code == 0, err
