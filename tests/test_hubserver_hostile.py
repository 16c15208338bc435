"""The Hub server against hostile clients (issue 12, item 3): each test failed before its fix.

- a non-boolean ``private`` created a PUBLIC repo;
- deeply nested JSON in a body or a commit line was a 500 with a RecursionError in the log;
- a malformed chunked body was answered only after the 120 s idle timeout, holding a thread;
- a refused commit left what it had streamed on disk, so refused commits could fill the disk;
  ``spr hub gc`` removes objects that no commit references.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from pathlib import Path

import pytest
from hub_fixtures import HUB_TOKEN
from huggingface_hub import HfApi
from huggingface_hub.errors import RepositoryNotFoundError
from test_hubserver import raw

from registry.cli.main import run
from registry.hubserver import HubServer

pytestmark = pytest.mark.backend_independent


def _objects(server: HubServer) -> set[str]:
    return {p.name for p in (Path(server.root) / "objects" / "sha256").glob("*/*")}


@pytest.mark.parametrize("value", ["true", 1, "yes", [], {}])
def test_private_must_be_a_boolean(hub_server: HubServer, value: object) -> None:
    status, _, body = raw(hub_server, "POST", "/api/repos/create", json.dumps({"name": "leak", "private": value}).encode(),
                          {"Content-Type": "application/json"})
    assert status == 400, body
    assert b"'private' must be true or false" in body
    with pytest.raises(RepositoryNotFoundError):  # nothing was created, public or private
        HfApi(endpoint=hub_server.url, token=HUB_TOKEN).model_info("user/leak")


def test_visibility_must_be_public_or_private(hub_server: HubServer) -> None:
    status, _, body = raw(hub_server, "POST", "/api/repos/create", json.dumps({"name": "x", "visibility": "hidden"}).encode(),
                          {"Content-Type": "application/json"})
    assert status == 400 and b"'visibility'" in body


def test_private_true_still_makes_a_private_repo(hub_server: HubServer) -> None:
    status, _, _ = raw(hub_server, "POST", "/api/repos/create", json.dumps({"name": "secret", "private": True}).encode(),
                       {"Content-Type": "application/json"})
    assert status == 200
    with pytest.raises(RepositoryNotFoundError):  # anonymous callers do not see it
        HfApi(endpoint=hub_server.url, token=False).model_info(HfApi(endpoint=hub_server.url, token=HUB_TOKEN).whoami()["name"] + "/secret")


def test_deeply_nested_json_is_a_400_not_a_500(hub_server: HubServer, caplog: pytest.LogCaptureFixture) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    status, _, body = raw(hub_server, "POST", "/api/repos/create", deep, {"Content-Type": "application/json"})
    assert status == 400 and b"nests JSON too deeply" in body
    HfApi(endpoint=hub_server.url, token=HUB_TOKEN).create_repo("team/deep")
    line = b'{"key": "header", "value": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    status, _, body = raw(hub_server, "POST", "/api/models/team/deep/commit/main", line, {"Content-Type": "application/x-ndjson"})
    assert status == 400 and b"nests JSON too deeply" in body
    assert "RecursionError" not in caplog.text and "internal error" not in caplog.text


def test_malformed_chunked_body_is_answered_at_once_and_closed(hub_server: HubServer) -> None:
    request = (
        b"POST /api/repos/create HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Authorization: Bearer {HUB_TOKEN}\r\n".encode()
        + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"this is not a chunk size\r\n"
    )
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", hub_server.port), timeout=10) as sock:
        sock.sendall(request)  # and then nothing more, as a broken client would
        answer = b""
        while chunk := sock.recv(65536):  # the server closes the connection after answering
            answer += chunk
    assert time.monotonic() - started < 5
    assert answer.startswith(b"HTTP/1.1 400")
    assert b"malformed chunked body" in answer
    assert b"Connection: close" in answer


def _commit_payload(*lines: dict[str, object]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def test_a_refused_commit_leaves_nothing_on_disk(hub_server: HubServer) -> None:
    HfApi(endpoint=hub_server.url, token=HUB_TOKEN).create_repo("team/fill")
    before = _objects(hub_server)
    content = os.urandom(3 * 1024 * 1024)  # long enough to be streamed into the store, not parsed in memory
    payload = _commit_payload(
        {"key": "header", "value": {"summary": "x"}},
        # A file line with content but no path: stored while streamed, then refused.
        {"key": "file", "value": {"content": base64.b64encode(content).decode(), "encoding": "base64"}},
    )
    status, _, body = raw(hub_server, "POST", "/api/models/team/fill/commit/main", payload, {"Content-Type": "application/x-ndjson"})
    assert status == 400, body
    small = _commit_payload(
        {"key": "header", "value": {"summary": "x"}},
        {"key": "file", "value": {"path": "ok.txt", "content": base64.b64encode(b"small but refused").decode()}},
        {"key": "deletedFile", "value": {"path": "no/such/file"}},  # refuses the whole commit
    )
    status, _, body = raw(hub_server, "POST", "/api/models/team/fill/commit/main", small, {"Content-Type": "application/x-ndjson"})
    assert status == 404, body
    assert _objects(hub_server) == before
    assert list((Path(hub_server.root) / "tmp").iterdir()) == []


def test_a_refused_commit_keeps_objects_that_a_commit_references(hub_server: HubServer) -> None:
    api = HfApi(endpoint=hub_server.url, token=HUB_TOKEN)
    api.create_repo("team/shared")
    api.upload_file(path_or_fileobj=b"shared bytes", path_in_repo="a.txt", repo_id="team/shared")
    kept = _objects(hub_server)
    same = _commit_payload(
        {"key": "header", "value": {"summary": "x"}},
        {"key": "file", "value": {"path": "b.txt", "content": base64.b64encode(b"shared bytes").decode()}},
        {"key": "deletedFile", "value": {"path": "no/such/file"}},
    )
    status, _, _ = raw(hub_server, "POST", "/api/models/team/shared/commit/main", same, {"Content-Type": "application/x-ndjson"})
    assert status == 404
    assert _objects(hub_server) == kept
    assert api.hf_hub_download("team/shared", "a.txt") and Path(api.hf_hub_download("team/shared", "a.txt")).read_bytes() == b"shared bytes"


def test_hub_gc_removes_only_unreferenced_old_objects(hub_server: HubServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    api = HfApi(endpoint=hub_server.url, token=HUB_TOKEN)
    api.create_repo("team/gc")
    api.upload_file(path_or_fileobj=b"referenced", path_in_repo="a.txt", repo_id="team/gc")
    referenced = _objects(hub_server)
    # An upload that never became a commit (as a git-LFS upload without its commit leaves).
    orphan = hub_server.storage.put_bytes(b"uploaded, never committed")
    hub_server.storage.release([orphan], discard=False)
    old = time.time() - 7200
    os.utime(hub_server.storage.object_path(orphan.sha256), (old, old))
    young = hub_server.storage.put_bytes(b"an upload whose commit is on its way")
    hub_server.storage.release([young], discard=False)

    root = str(hub_server.root)
    assert run(["--json", "hub", "gc", "--root", root]) == 0  # dry run
    report = json.loads(capsys.readouterr().out)
    assert [o["sha256"] for o in report["unreferenced"]] == [orphan.sha256] and report["removed"] is False
    assert report["kept_young"] == 1
    assert orphan.sha256 in _objects(hub_server)

    assert run(["hub", "gc", "--root", root, "-y"]) == 0
    assert "removed 1 unreferenced object(s)" in capsys.readouterr().out
    assert _objects(hub_server) == referenced | {young.sha256}
    assert Path(api.hf_hub_download("team/gc", "a.txt")).read_bytes() == b"referenced"


def test_hub_gc_refuses_a_folder_that_is_not_a_server_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["hub", "gc", "--root", str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert "is not a Hub server root" in err and "Traceback" not in err
