"""The Hub-compatible server, driven by the real ``huggingface_hub`` client over HTTP (no mocks).

Raw ``http.client`` requests are used only where the client itself would refuse to send the
request (hostile paths) or hides the detail under test (status codes, headers, byte ranges).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx2  # the client's HTTP library (a dependency of huggingface_hub 2.4)
import huggingface_hub
import pytest
from hub_fixtures import (
    HUB_TOKEN,
    HUB_USER,
    disable_xet,
    isolate_hf_client,
    point_client_at,
)
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    BadRequestError,
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from registry.errors import UsageError
from registry.hubserver import (
    INVALID_CREDENTIALS_MESSAGE,
    HubServer,
    TokenRegistry,
    commitstream,
)

# the Hub server has no catalogue: run once, in the SQLite half.
pytestmark = pytest.mark.backend_independent


@pytest.fixture(autouse=True)
def _isolated_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests here that start their own server still keep the client's cache and tokens in tmp_path."""
    isolate_hf_client(monkeypatch, tmp_path / "hf-home")


SAFETENSORS_HEADER = {"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}


def safetensors_bytes(metadata: dict[str, str] | None = None) -> bytes:
    """A valid one-tensor safetensors file (header padded to 8 bytes, as the format asks)."""
    header: dict[str, Any] = dict(SAFETENSORS_HEADER)
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + struct.pack("<6f", 1, 2, 3, 4, 5, 6)


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def api_for(server: HubServer, token: str | bool | None = HUB_TOKEN) -> HfApi:
    return HfApi(endpoint=server.url, token=token)


def raw(
    server: HubServer,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    token: str | None = HUB_TOKEN,
) -> tuple[int, dict[str, str], bytes]:
    """One request sent verbatim (http.client does not normalise paths), answer fully read."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        all_headers = dict(headers or {})
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        connection.request(method, path, body=body, headers=all_headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def adapter_folder(root: Path) -> Path:
    """A small PEFT-like folder: config, weights, card, a nested file."""
    folder = root / "upload"
    (folder / "extra").mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"peft_type": "PROMPT_TUNING"}')
    (folder / "adapter_model.safetensors").write_bytes(safetensors_bytes())
    (folder / "README.md").write_text("---\nlibrary_name: peft\ntags: [test]\n---\n# card\n")
    (folder / "extra" / "notes.txt").write_text("nested file\n")
    return folder


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------- repos and auth


def test_create_repo_twice_is_409_with_url_and_exist_ok_reads_it(hub_server: HubServer) -> None:
    api = api_for(hub_server)
    url = api.create_repo("team/adapter")
    assert url == f"{hub_server.url}/team/adapter"
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.create_repo("team/adapter")
    assert excinfo.value.response.status_code == 409
    assert api.create_repo("team/adapter", exist_ok=True) == url
    # No organization in the request: the repo goes to the token's user.
    assert api.create_repo("mine").repo_id == f"{HUB_USER}/mine"
    assert api.whoami()["name"] == HUB_USER
    # The new repo holds one commit with .gitattributes, as on the Hub.
    assert api.list_repo_files("team/adapter") == [".gitattributes"]
    api.delete_repo("team/adapter")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("team/adapter")
    assert api.create_repo("team/adapter") == url  # the name is free again


def test_fixture_points_module_level_client_functions_at_the_server(hub_server: HubServer) -> None:
    api_for(hub_server).create_repo("team/visible")
    # No endpoint= anywhere: huggingface_hub's import-time endpoint was redirected by the fixture.
    assert huggingface_hub.model_info("team/visible").id == "team/visible"
    assert os.environ["HF_ENDPOINT"] == hub_server.url


def test_wrong_token_is_a_clear_401_on_reads_and_writes(hub_server: HubServer) -> None:
    api_for(hub_server).create_repo("team/adapter")
    bad = api_for(hub_server, token="not-a-token")
    for call in (
        lambda: bad.model_info("team/adapter"),
        lambda: bad.create_repo("team/other"),
        lambda: hf_hub_download("team/adapter", ".gitattributes", endpoint=hub_server.url, token="not-a-token"),
    ):
        with pytest.raises(HfHubHTTPError) as excinfo:
            call()
        assert excinfo.value.response.status_code == 401
        assert INVALID_CREDENTIALS_MESSAGE in str(excinfo.value)
        assert not isinstance(excinfo.value, RepositoryNotFoundError)


def test_writes_need_a_token(hub_server: HubServer) -> None:
    api_for(hub_server).create_repo("team/adapter")
    anonymous = api_for(hub_server, token=False)
    with pytest.raises(HfHubHTTPError) as excinfo:
        anonymous.create_repo("team/new")
    assert excinfo.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as excinfo:
        anonymous.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="team/adapter")
    assert excinfo.value.response.status_code == 401
    assert api_for(hub_server).list_repo_files("team/adapter") == [".gitattributes"]


def test_private_repo_is_invisible_to_anonymous_callers(hub_server: HubServer, tmp_path: Path) -> None:
    api = api_for(hub_server)
    api.create_repo("team/secret", private=True)
    api.upload_file(path_or_fileobj=b"classified", path_in_repo="a.txt", repo_id="team/secret")
    assert api.model_info("team/secret").private is True
    anonymous = api_for(hub_server, token=False)
    with pytest.raises(RepositoryNotFoundError):
        anonymous.model_info("team/secret")
    with pytest.raises(RepositoryNotFoundError):
        anonymous.list_repo_refs("team/secret")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("team/secret", "a.txt", endpoint=hub_server.url, token=False, cache_dir=tmp_path / "c")
    # A public repo next to it stays readable without a token.
    api.create_repo("team/open")
    assert anonymous.model_info("team/open").private is False


def test_session_server_serves_callers_that_pass_the_endpoint(hub_server_session: HubServer, tmp_path: Path) -> None:
    api = api_for(hub_server_session)
    api.create_repo("session/test-hubserver")
    api.upload_file(path_or_fileobj=b"shared", path_in_repo="s.txt", repo_id="session/test-hubserver")
    path = hf_hub_download("session/test-hubserver", "s.txt", endpoint=hub_server_session.url, cache_dir=tmp_path / "c")
    assert Path(path).read_bytes() == b"shared"


def test_tokens_file_maps_tokens_to_users_and_never_echoes_a_token(tmp_path: Path) -> None:
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("# team tokens\nalpha-secret alice\n\nbeta-secret\n")
    registry = TokenRegistry(["gamma-secret carol"], tokens_file=tokens_file)
    assert registry.user_for("alpha-secret") == "alice"
    assert registry.user_for("beta-secret") == "user"
    assert registry.user_for("gamma-secret") == "carol"
    assert registry.user_for("alpha-secret ") is None and registry.user_for("nope") is None
    assert "secret" not in repr(registry)
    tokens_file.write_text("ok-token bob\ndelta-secret two words\n")
    with pytest.raises(UsageError) as excinfo:
        TokenRegistry(tokens_file=tokens_file)
    assert "line 2" in str(excinfo.value) and "delta-secret" not in str(excinfo.value)
    with pytest.raises(UsageError):
        TokenRegistry(tokens_file=tmp_path / "missing")


# ---------------------------------------------------------------------- uploads in both client modes


def test_xet_client_round_trip_uses_regular_uploads_only(hub_server: HubServer, tmp_path: Path) -> None:
    assert huggingface_hub.constants.HF_HUB_DISABLE_XET is False  # the client's default: Xet on
    api = api_for(hub_server)
    api.create_repo("team/adapter")
    folder = adapter_folder(tmp_path)
    info = api.upload_folder(repo_id="team/adapter", folder_path=folder, commit_message="v1")
    routes = {route for _, route in hub_server.routes_seen()}
    assert not any("lfs" in route or "xet" in route for route in routes)

    model = api.model_info("team/adapter", revision=info.oid, files_metadata=True)
    assert model.sha == info.oid
    expected = folder_files(folder)
    siblings = {s.rfilename: s for s in model.siblings or []}
    assert set(siblings) == set(expected) | {".gitattributes"}
    for name, data in expected.items():
        assert siblings[name].size == len(data)
        assert siblings[name].blob_id == git_blob_sha1(data)
        assert siblings[name].lfs is None
        path = hf_hub_download("team/adapter", name, revision=info.oid, endpoint=hub_server.url, token=HUB_TOKEN)
        assert Path(path).read_bytes() == data


def test_lfs_client_round_trip_goes_through_lfs_batch_put_and_verify(hub_server_lfs: HubServer, tmp_path: Path) -> None:
    assert huggingface_hub.constants.HF_HUB_DISABLE_XET is True
    api = api_for(hub_server_lfs)
    api.create_repo("team/adapter")
    folder = adapter_folder(tmp_path)
    info = api.upload_folder(repo_id="team/adapter", folder_path=folder)
    seen = hub_server_lfs.routes_seen()
    assert ("POST", "/{repo}.git/info/lfs/objects/batch") in seen
    assert ("PUT", "/lfs-upload/{oid}") in seen
    assert ("POST", "/{repo}.git/info/lfs/objects/verify") in seen

    weights = (folder / "adapter_model.safetensors").read_bytes()
    sha256 = hashlib.sha256(weights).hexdigest()
    tree = {f.path: f for f in api.list_repo_tree("team/adapter", recursive=True)}
    assert tree["adapter_model.safetensors"].lfs is not None
    assert tree["adapter_model.safetensors"].lfs.sha256 == sha256
    assert tree["adapter_model.safetensors"].lfs.size == len(weights)
    assert tree["adapter_config.json"].lfs is None  # text stays regular

    path = Path(hf_hub_download("team/adapter", "adapter_model.safetensors", endpoint=hub_server_lfs.url))
    assert path.read_bytes() == weights
    assert path.resolve().name == sha256  # the cache blob is named after X-Linked-Etag

    # Same content again: preupload's oids make the client skip everything, no new commit, no PUT.
    hub_server_lfs.clear_log()
    again = api.upload_folder(repo_id="team/adapter", folder_path=folder)
    assert again.oid == info.oid
    assert ("PUT", "/lfs-upload/{oid}") not in hub_server_lfs.routes_seen()
    assert ("POST", "/api/{type}/{repo}/commit/{rev}") not in hub_server_lfs.routes_seen()


def test_xet_client_meeting_an_lfs_server_fails_without_committing(tmp_path: Path) -> None:
    assert huggingface_hub.constants.HF_HUB_DISABLE_XET is False
    with HubServer(tmp_path / "root", tokens=[HUB_TOKEN], lfs_mode="auto") as server:
        api = api_for(server)
        api.create_repo("team/adapter")
        before = api.model_info("team/adapter").sha
        # hf_xet reports the refused Xet token request as a ConnectionError naming the 400.
        with pytest.raises(ConnectionError, match="400"):
            api.upload_file(path_or_fileobj=safetensors_bytes(), path_in_repo="w.safetensors", repo_id="team/adapter")
        assert ("GET", "/api/{type}/{repo}/xet-write-token/{rev}") in server.routes_seen()
        assert api.model_info("team/adapter").sha == before


def test_readme_with_broken_yaml_is_refused_before_upload(hub_server: HubServer) -> None:
    api = api_for(hub_server)
    api.create_repo("team/adapter")
    with pytest.raises(ValueError, match="Invalid metadata"):
        api.upload_file(path_or_fileobj=b"---\nkey: [unclosed\n---\n", path_in_repo="README.md", repo_id="team/adapter")
    assert api.list_repo_files("team/adapter") == [".gitattributes"]


def test_delete_operations_and_missing_delete(hub_server: HubServer) -> None:
    api = api_for(hub_server)
    api.create_repo("team/adapter")
    api.create_commit(
        "team/adapter",
        operations=[
            CommitOperationAdd("keep.txt", b"keep"),
            CommitOperationAdd("old/a.txt", b"a"),
            CommitOperationAdd("old/deep/b.txt", b"b"),
            CommitOperationAdd("gone.txt", b"gone"),
        ],
        commit_message="add",
    )
    listing = {(type(item).__name__, item.path) for item in api.list_repo_tree("team/adapter", path_in_repo="old")}
    assert listing == {("RepoFile", "old/a.txt"), ("RepoFolder", "old/deep")}
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree("team/adapter", path_in_repo="absent"))
    api.create_commit(
        "team/adapter",
        operations=[CommitOperationDelete("gone.txt"), CommitOperationDelete("old/")],
        commit_message="delete",
    )
    assert api.list_repo_files("team/adapter") == [".gitattributes", "keep.txt"]
    with pytest.raises(EntryNotFoundError):
        api.create_commit("team/adapter", operations=[CommitOperationDelete("nope.txt")], commit_message="x")


def test_large_regular_files_stream_into_the_store(hub_server: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # Lower the in-memory line limit so a 300 kB file takes the streaming path (8 MB in production).
    monkeypatch.setattr(commitstream, "IN_MEMORY_LINE", 64 * 1024)
    streamed: list[int] = []
    stream_file = commitstream._stream_file
    monkeypatch.setattr(commitstream, "_stream_file", lambda *args: streamed.append(1) or stream_file(*args))
    api = api_for(hub_server)
    api.create_repo("team/adapter")
    data = os.urandom(300_000)
    api.upload_file(path_or_fileobj=data, path_in_repo="big.bin", repo_id="team/adapter")
    assert streamed == [1]  # the client's own serialisation took the streaming path
    sibling = {s.rfilename: s for s in api.model_info("team/adapter", files_metadata=True).siblings or []}["big.bin"]
    assert (sibling.size, sibling.blob_id, sibling.lfs) == (len(data), git_blob_sha1(data), None)
    assert Path(hf_hub_download("team/adapter", "big.bin", endpoint=hub_server.url)).read_bytes() == data

    def commit(*lines: bytes) -> int:
        header = json.dumps({"key": "header", "value": {"summary": "raw"}}).encode()
        status, _, _ = raw(hub_server, "POST", "/api/models/team/adapter/commit/main", b"\n".join([header, *lines]))
        return status

    content = base64.b64encode(data).decode()
    # Another key order (not the client's serialisation) is parsed in memory and works as well.
    reordered = {"value": {"path": "other.bin", "encoding": "base64", "content": content}, "key": "file"}
    assert commit(json.dumps(reordered).encode()) == 200
    assert Path(hf_hub_download("team/adapter", "other.bin", endpoint=hub_server.url)).read_bytes() == data
    # Broken base64 inside a streamed line is refused, and the commit does not happen.
    head = api.model_info("team/adapter").sha
    broken = {"key": "file", "value": {"content": content[:-8] + "!!!!!!!!", "path": "bad.bin", "encoding": "base64"}}
    assert commit(json.dumps(broken).encode()) == 400
    unterminated = json.dumps({"key": "file", "value": {"content": content}}).encode()[:200_000]
    assert commit(unterminated) == 400
    assert api.model_info("team/adapter").sha == head


def test_a_file_and_a_folder_cannot_share_a_path(hub_server: HubServer) -> None:
    api = api_for(hub_server)
    api.create_repo("team/adapter")
    api.upload_file(path_or_fileobj=b"x", path_in_repo="a", repo_id="team/adapter")
    with pytest.raises(BadRequestError):
        api.upload_file(path_or_fileobj=b"y", path_in_repo="a/b.txt", repo_id="team/adapter")


def test_stale_parent_commit_is_412_and_concurrent_commits_all_land(hub_server: HubServer) -> None:
    api = api_for(hub_server)
    api.create_repo("team/adapter")
    first = api.model_info("team/adapter").sha
    api.upload_file(path_or_fileobj=b"1", path_in_repo="one.txt", repo_id="team/adapter", parent_commit=first)
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.upload_file(path_or_fileobj=b"2", path_in_repo="two.txt", repo_id="team/adapter", parent_commit=first)
    assert excinfo.value.response.status_code == 412

    errors: list[BaseException] = []

    def push(index: int) -> None:
        try:
            api.upload_file(path_or_fileobj=f"{index}".encode(), path_in_repo=f"c/{index}.txt", repo_id="team/adapter")
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=push, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    files = api.list_repo_files("team/adapter")
    assert {f"c/{i}.txt" for i in range(8)} <= set(files)
    # History is linear: 1 initial + 1 + 8 commits, each the parent of the next.
    chain = []
    commit = hub_server.storage.resolve(_model_key("team/adapter"), "main")
    while commit is not None:
        chain.append(commit.id)
        commit = hub_server.storage.get_commit(_model_key("team/adapter"), commit.parent) if commit.parent else None
    assert len(chain) == 10 and len(set(chain)) == 10


def _model_key(repo_id: str) -> Any:
    from registry.hubserver import RepoKey

    return RepoKey("model", repo_id)


def test_dataset_repos_use_the_datasets_prefix(hub_server: HubServer) -> None:
    api = api_for(hub_server)
    url = api.create_repo("team/data", repo_type="dataset")
    assert url == f"{hub_server.url}/datasets/team/data"
    api.upload_file(path_or_fileobj=b"a,b\n1,2\n", path_in_repo="train.csv", repo_id="team/data", repo_type="dataset")
    path = hf_hub_download("team/data", "train.csv", repo_type="dataset", endpoint=hub_server.url)
    assert Path(path).read_bytes() == b"a,b\n1,2\n"
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("team/data")  # a dataset is not a model


# ---------------------------------------------------------------------- revisions


def test_tags_refs_and_reading_at_tag_sha_and_branch(hub_server: HubServer) -> None:
    api = api_for(hub_server)
    api.create_repo("team/adapter")
    v1 = api.upload_file(path_or_fileobj=b"one", path_in_repo="a.txt", repo_id="team/adapter").oid
    api.create_tag("team/adapter", tag="v1")
    v2 = api.upload_file(path_or_fileobj=b"two", path_in_repo="a.txt", repo_id="team/adapter").oid
    api.create_tag("team/adapter", tag="v2", revision=v2)
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.create_tag("team/adapter", tag="v1", revision=v2)
    assert excinfo.value.response.status_code == 409
    api.create_tag("team/adapter", tag="v1", revision=v2, exist_ok=True)  # no error, tag unmoved

    refs = api.list_repo_refs("team/adapter")
    assert [(b.name, b.ref, b.target_commit) for b in refs.branches] == [("main", "refs/heads/main", v2)]
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1", v1), ("v2", v2)]
    assert refs.converts == []

    assert api.model_info("team/adapter", revision="v1").sha == v1
    assert api.model_info("team/adapter", revision=v1).sha == v1
    assert api.model_info("team/adapter", revision="refs/tags/v1").sha == v1
    assert api.model_info("team/adapter").sha == v2
    def read(rev: str) -> bytes:
        return Path(hf_hub_download("team/adapter", "a.txt", revision=rev, endpoint=hub_server.url)).read_bytes()

    assert (read("v1"), read(v1), read("main")) == (b"one", b"one", b"two")

    api.delete_tag("team/adapter", tag="v1")
    assert [t.name for t in api.list_repo_refs("team/adapter").tags] == ["v2"]
    with pytest.raises(RevisionNotFoundError):
        api.model_info("team/adapter", revision="v1")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("team/adapter", "a.txt", revision="0" * 40, endpoint=hub_server.url)


def test_missing_file_repo_and_revision_map_to_the_clients_errors(hub_server: HubServer) -> None:
    api = api_for(hub_server)
    api.create_repo("team/adapter")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("team/adapter", "missing.bin", endpoint=hub_server.url)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("team/adapter", ".gitattributes", revision="nope", endpoint=hub_server.url)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("team/absent", ".gitattributes", endpoint=hub_server.url)
    with pytest.raises(RevisionNotFoundError):
        api.list_repo_files("team/adapter", revision="nope")
    assert api.file_exists("team/adapter", ".gitattributes")
    assert not api.file_exists("team/adapter", "missing.bin")
    # The 404 names the commit, so the client can cache "absent at this commit".
    status, headers, _ = raw(hub_server, "HEAD", "/team/adapter/resolve/main/missing.bin")
    assert status == 404 and headers["X-Error-Code"] == "EntryNotFound"
    assert headers["X-Repo-Commit"] == api.model_info("team/adapter").sha


# ---------------------------------------------------------------------- downloads


def test_resolve_headers_and_byte_ranges(hub_server_lfs: HubServer) -> None:
    api = api_for(hub_server_lfs)
    api.create_repo("team/adapter")
    data = bytes(range(256)) * 40  # binary: stored as LFS in lfs_mode="auto"
    text = b"plain text file\n"
    sha = api.create_commit(
        "team/adapter",
        operations=[CommitOperationAdd("blob.bin", data), CommitOperationAdd("t.txt", text)],
        commit_message="c",
    ).oid

    status, headers, body = raw(hub_server_lfs, "HEAD", "/team/adapter/resolve/main/blob.bin")
    assert status == 200 and body == b""
    assert headers["X-Repo-Commit"] == sha
    assert headers["X-Linked-Etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert headers["X-Linked-Size"] == headers["Content-Length"] == str(len(data))
    assert "X-Xet-Hash" not in headers and "xet" not in json.dumps(headers).lower()

    status, headers, body = raw(hub_server_lfs, "HEAD", "/team/adapter/resolve/main/t.txt")
    assert headers["ETag"] == f'"{git_blob_sha1(text)}"' and "X-Linked-Etag" not in headers

    url = f"/team/adapter/resolve/{sha}/blob.bin"
    for header, expected_status, expected in [
        ("bytes=0-9", 206, data[:10]),
        ("bytes=100-", 206, data[100:]),
        ("bytes=-5", 206, data[-5:]),
        ("bytes=10000-20000", 206, data[10000:]),
        ("bytes=0-1,5-6", 200, data),  # several ranges: the whole file
    ]:
        status, headers, body = raw(hub_server_lfs, "GET", url, headers={"Range": header})
        assert (status, body) == (expected_status, expected), header
    status, headers, _ = raw(hub_server_lfs, "GET", url, headers={"Range": f"bytes={len(data)}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(data)}"
    status, headers, body = raw(hub_server_lfs, "GET", url, headers={"Range": "bytes=5-9"})
    assert headers["Content-Range"] == f"bytes 5-9/{len(data)}" and headers["Content-Length"] == "5"


def test_get_safetensors_metadata_reads_the_header_with_range_requests(hub_server: HubServer) -> None:
    api = api_for(hub_server)
    api.create_repo("team/base")
    # A header longer than the client's first 100,000-byte range forces its second range request.
    weights = safetensors_bytes({"padding": "x" * 150_000})
    api.upload_file(path_or_fileobj=weights, path_in_repo="model.safetensors", repo_id="team/base")
    hub_server.clear_log()
    metadata = api.get_safetensors_metadata("team/base")
    info = metadata.files_metadata["model.safetensors"]
    assert info.tensors["w"].shape == [2, 3] and info.tensors["w"].dtype == "F32"
    assert info.metadata["padding"] == "x" * 150_000
    gets = [r for r in hub_server.requests if r.method == "GET" and r.path.endswith("/model.safetensors")]
    assert [r.status for r in gets] == [206, 206]


def test_snapshot_download_with_eight_threads(hub_server: HubServer, tmp_path: Path) -> None:
    api = api_for(hub_server)
    api.create_repo("team/many")
    files = {f"shard/{i:02d}.bin": os.urandom(2000 + i) for i in range(24)}
    api.create_commit("team/many", operations=[CommitOperationAdd(p, d) for p, d in files.items()], commit_message="c")
    api.create_tag("team/many", tag="v1")
    snapshot = Path(
        snapshot_download("team/many", revision="v1", endpoint=hub_server.url, max_workers=8, cache_dir=tmp_path / "c")
    )
    assert folder_files(snapshot) == {**files, ".gitattributes": folder_files(snapshot)[".gitattributes"]}
    resolves = [r for r in hub_server.requests if "/resolve/" in r.path]
    assert len(resolves) == 2 * 25 and all(r.status == 200 for r in resolves)


def test_hf_cli_downloads_a_tagged_revision(hub_server: HubServer, tmp_path: Path) -> None:
    api = api_for(hub_server)
    api.create_repo("team/adapter")
    folder = adapter_folder(tmp_path)
    api.upload_folder(repo_id="team/adapter", folder_path=folder)
    api.create_tag("team/adapter", tag="v1")
    api.upload_file(path_or_fileobj=b"later", path_in_repo="adapter_config.json", repo_id="team/adapter")
    target = tmp_path / "downloaded"
    hf = Path(sys.executable).parent / "hf"
    result = subprocess.run(
        [str(hf), "download", "team/adapter", "--revision", "v1", "--local-dir", str(target)],
        env={**os.environ, "HF_ENDPOINT": hub_server.url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    got = {k: v for k, v in folder_files(target).items() if not k.startswith(".cache/")}
    assert got == {**folder_files(folder), ".gitattributes": got[".gitattributes"]}


# ---------------------------------------------------------------------- hostile input


HOSTILE_PATHS = [
    "../evil.txt",
    "/abs.txt",
    "a/../../evil.txt",
    "a\\b.txt",
    "a/./b.txt",
    "a//b.txt",
    "ctrl\x01.txt",
    "nul\x00.txt",
    ".git/config",
    ".cache/huggingface/x",
    "C:/win.txt",
    "",
    "dir/",
]


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_hostile_paths_are_refused_with_400(hub_server: HubServer, path: str) -> None:
    api = api_for(hub_server)
    api.create_repo("team/adapter")
    head = api.model_info("team/adapter").sha
    commit = "\n".join(
        json.dumps(line)
        for line in [
            {"key": "header", "value": {"summary": "evil"}},
            {"key": "file", "value": {"path": path, "content": base64.b64encode(b"x").decode(), "encoding": "base64"}},
        ]
    ).encode()
    status, headers, _ = raw(
        hub_server, "POST", "/api/models/team/adapter/commit/main", commit, {"Content-Type": "application/x-ndjson"}
    )
    assert status == 400, headers
    preupload = json.dumps({"files": [{"path": path, "sample": "", "size": 1}]}).encode()
    status, _, _ = raw(hub_server, "POST", "/api/models/team/adapter/preupload/main", preupload)
    assert status == 400
    assert api.model_info("team/adapter").sha == head
    assert not (hub_server.root.parent / "evil.txt").exists()


def test_hostile_urls_and_names_are_refused(hub_server: HubServer) -> None:
    api = api_for(hub_server)
    api.create_repo("team/adapter")
    for path in [
        "/team/adapter/resolve/main/..%2F..%2Fetc%2Fpasswd",
        "/team/adapter/resolve/main/a/../b",
        "/team/adapter/resolve/main/a%5Cb",
        "/api/models/team/adapter/tree/main/..%2F..",
    ]:
        status, _, _ = raw(hub_server, "GET", path)
        assert status == 400, path
    for name, organization in [("..", "team"), ("a" * 200, "team"), ("ok", "../x"), ("x.git", "team"), ("x", "api")]:
        body = json.dumps({"name": name, "organization": organization}).encode()
        status, _, _ = raw(hub_server, "POST", "/api/repos/create", body)
        assert status == 400, (name, organization)
    lfs = json.dumps({"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": "../" + "a" * 61}})
    commit = (json.dumps({"key": "header", "value": {"summary": "s"}}) + "\n" + lfs).encode()
    status, _, _ = raw(hub_server, "POST", "/api/models/team/adapter/commit/main", commit)
    assert status == 400
    batch = json.dumps({"operation": "upload", "objects": [{"oid": "../../x", "size": 1}]}).encode()
    status, _, _ = raw(hub_server, "POST", "/team/adapter.git/info/lfs/objects/batch", batch)
    assert status == 400
    status, _, _ = raw(hub_server, "PUT", "/lfs-upload/" + "a" * 64 + "?size=1&expires=9999999999&sig=forged", b"x")
    assert status == 403


# ---------------------------------------------------------------------- persistence and test helpers


def test_a_restarted_server_on_the_same_root_sees_everything(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with HubServer(root, tokens=[HUB_TOKEN]) as first:
        api = api_for(first)
        api.create_repo("team/adapter", private=True)
        sha = api.upload_file(path_or_fileobj=b"persisted", path_in_repo="a.txt", repo_id="team/adapter").oid
        api.create_tag("team/adapter", tag="v1")
    with HubServer(root, tokens=[HUB_TOKEN]) as second:
        api = api_for(second)
        assert api.model_info("team/adapter", revision="v1").sha == sha
        assert api.model_info("team/adapter").private is True
        with pytest.raises(RepositoryNotFoundError):
            api_for(second, token=False).model_info("team/adapter")
        path = hf_hub_download("team/adapter", "a.txt", revision="v1", endpoint=second.url, token=HUB_TOKEN,
                               cache_dir=tmp_path / "cache")
        assert Path(path).read_bytes() == b"persisted"
        with pytest.raises(HfHubHTTPError):
            api.create_repo("team/adapter")  # still exists: 409


def test_stopped_server_answers_nothing(tmp_path: Path) -> None:
    server = HubServer(tmp_path / "root", tokens=[HUB_TOKEN]).start()
    api = api_for(server)
    api.create_repo("team/adapter")  # opens a keep-alive connection in the client's pool
    server.stop()
    with pytest.raises(httpx2.ConnectError):
        HfApi(endpoint=server.url, token=HUB_TOKEN).model_info("team/adapter", timeout=2)


def test_serve_forever_runs_in_the_foreground_until_stopped(tmp_path: Path) -> None:
    server = HubServer(tmp_path / "root", tokens=[HUB_TOKEN]).bind()
    thread = threading.Thread(target=server.serve_forever)  # as `spr hub serve` runs it, in its own thread here
    thread.start()
    try:
        assert api_for(server).create_repo("team/adapter") == f"{server.url}/team/adapter"
    finally:
        server.stop()
        thread.join(timeout=5)
    assert not thread.is_alive()
    with pytest.raises(httpx2.ConnectError):
        HfApi(endpoint=server.url, token=HUB_TOKEN).model_info("team/adapter", timeout=2)


def test_tamper_and_truncate_damage_bytes_but_not_metadata(hub_server: HubServer, tmp_path: Path) -> None:
    api = api_for(hub_server)
    api.create_repo("team/adapter")
    original = b"A" * 1000
    api.upload_file(path_or_fileobj=original, path_in_repo="w.bin", repo_id="team/adapter")
    hub_server.storage.tamper("team/adapter", "w.bin", b"B" * 1000)
    sibling = api.model_info("team/adapter", files_metadata=True).siblings[-1]
    assert sibling.rfilename == "w.bin" and sibling.blob_id == git_blob_sha1(original)
    # The client checks sizes, not hashes: a same-size tampered file arrives; catching it is the registry's job.
    tampered = hf_hub_download("team/adapter", "w.bin", endpoint=hub_server.url, cache_dir=tmp_path / "c1")
    assert Path(tampered).read_bytes() == b"B" * 1000
    hub_server.storage.truncate("team/adapter", "w.bin", 10)
    with pytest.raises(OSError, match="Consistency check failed"):
        hf_hub_download("team/adapter", "w.bin", endpoint=hub_server.url, cache_dir=tmp_path / "c2")
    with pytest.raises(LookupError):
        hub_server.storage.tamper("team/adapter", "absent.bin", b"")


def test_injected_failure_drops_the_commit_and_a_retry_succeeds(hub_server: HubServer) -> None:
    api = api_for(hub_server)
    api.create_repo("team/adapter")
    head = api.model_info("team/adapter").sha
    hub_server.fail("POST", "/api/{type}/{repo}/commit/{rev}")
    with pytest.raises(httpx2.RemoteProtocolError):  # "Server disconnected without sending a response"
        api.create_commit("team/adapter", operations=[CommitOperationAdd("a.txt", b"a")], commit_message="c")
    assert api.model_info("team/adapter").sha == head
    assert [r.status for r in hub_server.requests if r.route.endswith("/commit/{rev}")] == [0]
    api.create_commit("team/adapter", operations=[CommitOperationAdd("a.txt", b"a")], commit_message="c")
    assert "a.txt" in api.list_repo_files("team/adapter")

    hub_server.fail("GET", "/api/{type}/{repo}/refs", status=403)
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.list_repo_refs("team/adapter")
    assert excinfo.value.response.status_code == 403


# ---------------------------------------------------------------------- protocol contract

# Every (method, route) the 2.4.x client sends for: create_repo, upload_folder (with a README and a
# .safetensors file), create_tag, then snapshot_download at the tag into an empty cache. A client
# upgrade that changes this set fails here first; update the server and this list together.
PULL_ROUTES = {
    ("GET", "/api/{type}/{repo}/revision/{rev}"),
    ("GET", "/api/{type}/{repo}/tree/{rev}"),
    ("HEAD", "/{repo}/resolve/{rev}/{path}"),
    ("GET", "/{repo}/resolve/{rev}/{path}"),
}
PUSH_ROUTES = {
    ("POST", "/api/repos/create"),
    ("POST", "/api/validate-yaml"),
    ("POST", "/api/{type}/{repo}/preupload/{rev}"),
    ("POST", "/api/{type}/{repo}/commit/{rev}"),
    ("POST", "/api/{type}/{repo}/tag/{rev}"),
}
LFS_ROUTES = {
    ("POST", "/{repo}.git/info/lfs/objects/batch"),
    ("PUT", "/lfs-upload/{oid}"),
    ("POST", "/{repo}.git/info/lfs/objects/verify"),
}


@pytest.mark.parametrize("mode", ["xet-client-regular-server", "lfs-client-auto-server"])
def test_contract_push_and_pull_make_exactly_these_requests(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lfs = mode.startswith("lfs")
    if lfs:
        disable_xet(monkeypatch)
    with HubServer(tmp_path / "root", tokens=[HUB_TOKEN], lfs_mode="auto" if lfs else "regular") as server:
        point_client_at(monkeypatch, server.url)
        api = api_for(server)
        api.create_repo("team/adapter")
        folder = adapter_folder(tmp_path)
        api.upload_folder(repo_id="team/adapter", folder_path=folder)
        api.create_tag("team/adapter", tag="v1")
        snapshot = snapshot_download("team/adapter", revision="v1", endpoint=server.url, cache_dir=tmp_path / "cache")
        assert {k: v for k, v in folder_files(Path(snapshot)).items() if k != ".gitattributes"} == folder_files(folder)
        assert server.routes_seen() == PUSH_ROUTES | PULL_ROUTES | (LFS_ROUTES if lfs else set())
        assert all(r.status in (200, 206) for r in server.requests if r.route != "/api/repos/create")


def test_a_commit_line_longer_than_the_json_limit_is_a_400(hub_server: HubServer) -> None:
    from registry.hubserver import commitstream

    api = api_for(hub_server)
    api.create_repo("team/adapter")
    head = api.model_info("team/adapter").sha
    path = "/api/models/team/adapter/commit/main"

    def header_line(size: int) -> bytes:
        """A header line of exactly ``size`` bytes (newline included): not a file line, so parsed in memory."""
        empty = json.dumps({"key": "header", "value": {"summary": ""}}).encode() + b"\n"
        return json.dumps({"key": "header", "value": {"summary": "s" * (size - len(empty))}}).encode() + b"\n"

    # Over the in-memory line size but within the JSON limit: still accepted (another serialisation works).
    assert commitstream.IN_MEMORY_LINE < 9_000_000 < commitstream.MAX_JSON_LINE
    status, _, _ = raw(hub_server, "POST", path, header_line(9_000_000))
    assert status == 200
    head = api.model_info("team/adapter").sha
    # One line past the limit: refused after reading the limit, not the whole line, and no commit.
    too_long = header_line(commitstream.MAX_JSON_LINE + 1000)
    status, headers, _ = raw(hub_server, "POST", path, too_long)
    assert status == 400, headers
    assert f"longer than {commitstream.MAX_JSON_LINE} bytes" in headers.get("X-Error-Message", ""), headers
    assert api.model_info("team/adapter").sha == head
