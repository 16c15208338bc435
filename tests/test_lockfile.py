"""Lockfiles: the format (stable bytes, strict reading) and ``sync`` against a real Hub server.

Drift is made on the server itself: a tag moved with the real client, bytes changed in the
server's storage, a lockfile naming a commit the repo never had or a digest it never served.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_fixtures import HUB_TOKEN, HUB_USER
from huggingface_hub import HfApi
from ops_support import machine_env, switch_home

from registry import catalogue, hub
from registry.errors import (
    AdapterNotFoundError,
    LockfileDriftError,
    NotFoundError,
    UsageError,
)
from registry.hub import lockfile
from registry.hubserver import HubServer
from registry.storage import LocalBlobStore

REPO = "team/coach"


@pytest.fixture
def pushed(
    hub_server: HubServer, monkeypatch: pytest.MonkeyPatch, prompt_tuning_random: Path, prompt_tuning_text: Path
) -> dict[str, hub.PushResult]:
    """team/coach@1 and @2 pushed as v1 and v2, plus local/other@1 in team/other."""
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    v1 = catalogue.publish(prompt_tuning_random, REPO).version.ref
    v2 = catalogue.publish(prompt_tuning_text, REPO).version.ref
    other = catalogue.publish(prompt_tuning_text, "local/other").version.ref
    return {
        "v1": hub.push(v1, REPO, endpoint=hub_server.url),
        "v2": hub.push(v2, REPO, endpoint=hub_server.url),
        "other": hub.push(other, "team/other", endpoint=hub_server.url),
    }


def deploy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str = "deploy") -> Path:
    home = tmp_path / name
    switch_home(monkeypatch, home)
    return home


def edit(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------
# format


def test_lock_writes_stable_sorted_json_with_every_file(
    pushed: dict[str, hub.PushResult], hub_server: HubServer, tmp_path: Path
) -> None:
    out = tmp_path / "adapters.lock"
    lock = hub.lock(["team/coach@2", "local/other", "team/coach@1"], out)
    data = out.read_bytes()
    assert data == lockfile.dumps(lock) and data.endswith(b"\n")
    doc = json.loads(data)
    assert list(doc) == sorted(doc) and doc["lockfile_version"] == 1
    # Named by the repo they are fetched from (local/other was pushed to team/other): the one rule of
    # every Hub route, so sync lands each version where 'spr pull team/other@v1' would.
    assert [(a["name"], a["version"]) for a in doc["adapters"]] == [("team/coach", 1), ("team/coach", 2), ("team/other", 1)]
    entry = doc["adapters"][0]
    v1 = catalogue.get_version("team/coach@1")
    assert entry == {
        "name": "team/coach",
        "version": 1,
        "digest": v1.digest,
        "repo": REPO,
        "endpoint": hub_server.url,
        "commit": pushed["v1"].commit_sha,
        "tag": "v1",
        "files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in sorted(v1.files, key=lambda f: f.path)],
    }
    hub.lock(["team/coach@1", "team/coach@2", "local/other@1"], tmp_path / "again.lock")
    assert (tmp_path / "again.lock").read_bytes() == data  # same versions, same bytes
    assert lockfile.loads(data) == lockfile.read(out)


def test_lock_from_the_hub_alone_matches_the_catalogue_lock(
    pushed: dict[str, hub.PushResult], hub_server: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from_catalogue = hub.lock(["team/coach@2"])
    deploy(monkeypatch, tmp_path)  # a catalogue that has never heard of team/coach
    from_hub = hub.lock(["team/coach@v2"], endpoint=hub_server.url)
    assert from_hub == from_catalogue


def test_lock_refuses_a_version_that_was_never_pushed(tmp_path: Path, prompt_tuning_random: Path) -> None:
    catalogue.publish(prompt_tuning_random, "local/unpushed")
    with pytest.raises(NotFoundError, match="never pushed"):  # a local condition: not a Hub error
        hub.lock(["local/unpushed@1"], tmp_path / "a.lock")
    assert not (tmp_path / "a.lock").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(lockfile_version=2), "unsupported lockfile_version"),
        (lambda d: d["adapters"][0].update(commit="v1"), "40-hex"),
        (lambda d: d["adapters"][0]["files"][0].update(path="../../etc/passwd"), "unsafe file path"),
        (lambda d: d["adapters"][0].update(digest="sha256:xyz"), "digest"),
        (lambda d: d["adapters"].append(dict(d["adapters"][0])), "listed twice"),
        (lambda d: d["adapters"][0].update(name="a/b/c"), "invalid adapter name"),
        (lambda d: d["adapters"][0].update(endpoint="file:///etc"), "http"),
    ],
)
def test_malformed_lockfiles_are_refused(
    change, message: str, pushed: dict[str, hub.PushResult], tmp_path: Path
) -> None:
    path = tmp_path / "a.lock"
    hub.lock(["team/coach@1"], path)
    edit(path, change)
    with pytest.raises(UsageError, match=message):
        lockfile.read(path)
    with pytest.raises(UsageError):
        lockfile.loads(b'{"lockfile_version": 1, "adapters": [{"version": NaN}]}')


# ---------------------------------------------------------------------------------------------
# sync


def test_sync_into_an_empty_catalogue_is_verified_and_idempotent(
    pushed: dict[str, hub.PushResult], hub_server: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    prompt_tuning_random: Path,
) -> None:
    path = tmp_path / "adapters.lock"
    hub.lock(["team/coach@1", "team/coach@2"], path)
    deploy(monkeypatch, tmp_path)
    monkeypatch.delenv("HF_TOKEN")
    result = hub.sync(path, to=tmp_path / "srv", frozen=True)
    assert [(i.ref, i.imported) for i in result.items] == [("team/coach@1", True), ("team/coach@2", True)]
    target = tmp_path / "srv" / "team" / "coach@1"
    assert {p.name: p.read_bytes() for p in target.iterdir()} == {p.name: p.read_bytes() for p in prompt_tuning_random.iterdir()}
    assert catalogue.get_version("team/coach@1").digest == pushed["v1"].digest
    hub_server.clear_log()
    again = hub.sync(path, to=tmp_path / "srv")
    assert [i.imported for i in again.items] == [False, False]
    assert hub_server.requests == []  # pinned commits already in the HF cache: no request at all


def test_moved_tag_is_drift_under_frozen_and_ignored_otherwise(
    pushed: dict[str, hub.PushResult], hub_server: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "adapters.lock"
    hub.lock(["team/coach@1"], path)
    api = HfApi(endpoint=hub_server.url, token=HUB_TOKEN)
    api.delete_tag(REPO, tag="v1")
    api.create_tag(REPO, tag="v1", revision=pushed["v2"].commit_sha)
    deploy(monkeypatch, tmp_path)
    with pytest.raises(LockfileDriftError, match=f"tag v1 moved from {pushed['v1'].commit_sha} to {pushed['v2'].commit_sha}"):
        hub.sync(path, frozen=True)
    with pytest.raises(AdapterNotFoundError):
        catalogue.get_version(REPO)
    # Without --frozen the tag is never resolved: the locked commit is fetched and still verifies.
    result = hub.sync(path)
    assert result.items[0].digest == pushed["v1"].digest and result.items[0].commit_sha == pushed["v1"].commit_sha


def test_changed_byte_is_drift_and_nothing_is_imported(
    pushed: dict[str, hub.PushResult], hub_server: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    prompt_tuning_text: Path,
) -> None:
    path = tmp_path / "adapters.lock"
    hub.lock(["team/coach@1", "team/coach@2"], path)
    weights = (prompt_tuning_text / "adapter_model.safetensors").read_bytes()
    hub_server.storage.tamper(REPO, "adapter_model.safetensors", weights[:-1] + bytes([weights[-1] ^ 0x40]), revision="v2")
    deploy(monkeypatch, tmp_path)
    with pytest.raises(LockfileDriftError, match=r"team/coach@2 .*changed bytes: .*adapter_model.safetensors") as excinfo:
        hub.sync(path, to=tmp_path / "srv")
    assert excinfo.value.exit_code == 5
    # team/coach@1 verified fine, but sync is all or nothing: nothing was imported or written.
    with pytest.raises(AdapterNotFoundError):
        catalogue.get_version(REPO)
    assert list(LocalBlobStore().iter_blob_paths()) == [] and not (tmp_path / "srv").exists()


def test_missing_commit_and_missing_repo_are_drift(
    pushed: dict[str, hub.PushResult], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "adapters.lock"
    hub.lock(["team/coach@1"], path)
    edit(path, lambda d: d["adapters"][0].update(commit="0" * 40))
    deploy(monkeypatch, tmp_path)
    with pytest.raises(LockfileDriftError, match=f"missing version: commit {'0' * 40} no longer exists"):
        hub.sync(path)
    edit(path, lambda d: d["adapters"][0].update(repo="team/gone", commit=pushed["v1"].commit_sha))
    with pytest.raises(LockfileDriftError, match="missing version: the repo is gone"):
        hub.sync(path)


def test_different_manifest_digest_and_edited_file_list_are_drift(
    pushed: dict[str, hub.PushResult], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publisher = machine_env()
    path = tmp_path / "adapters.lock"
    hub.lock(["team/coach@1"], path)
    # The lock names v2's commit under v1's digest: what the Hub serves there is another version.
    edit(path, lambda d: d["adapters"][0].update(commit=pushed["v2"].commit_sha))
    deploy(monkeypatch, tmp_path)
    with pytest.raises(LockfileDriftError, match=f"manifest digest differs: the Hub has {pushed['v2'].digest}"):
        hub.sync(path)
    switch_home(monkeypatch, publisher)  # back to the publisher to lock again
    hub.lock(["team/coach@1"], path)
    edit(path, lambda d: d["adapters"][0]["files"][0].update(size=d["adapters"][0]["files"][0]["size"] + 1))
    deploy(monkeypatch, tmp_path)
    with pytest.raises(LockfileDriftError, match="file list differs"):
        hub.sync(path)


def test_frozen_refuses_to_import_under_another_number(
    pushed: dict[str, hub.PushResult], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prompt_tuning_text: Path,
    lora: Path,
) -> None:
    path = tmp_path / "adapters.lock"
    hub.lock(["team/coach@1"], path)
    deploy(monkeypatch, tmp_path)
    catalogue.publish(lora, REPO)  # this catalogue's team/coach@1 is something else
    with pytest.raises(LockfileDriftError, match="this catalogue's team/coach@1 is another version"):
        hub.sync(path, frozen=True)
    result = hub.sync(path)  # without --frozen it lands under the next free number
    assert result.items[0].ref == "team/coach@2" and result.items[0].digest == pushed["v1"].digest


def test_frozen_refuses_a_target_directory_holding_other_files(
    pushed: dict[str, hub.PushResult], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "adapters.lock"
    hub.lock(["team/coach@1"], path)
    deploy(monkeypatch, tmp_path)
    target = tmp_path / "srv" / "team" / "coach@1"
    target.mkdir(parents=True)
    (target / "adapter_config.json").write_text("{}")
    with pytest.raises(LockfileDriftError, match="holds other files"):
        hub.sync(path, to=tmp_path / "srv", frozen=True)
    with pytest.raises(AdapterNotFoundError):
        catalogue.get_version(REPO)


def test_sync_checks_every_target_directory_before_importing_anything(
    pushed: dict[str, hub.PushResult], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --frozen too: a conflicting directory for entry 2 fails before entry 1 is imported or written."""
    path = tmp_path / "adapters.lock"
    hub.lock(["team/coach@1", "team/coach@2"], path)
    deploy(monkeypatch, tmp_path)
    target = tmp_path / "srv" / "team" / "coach@2"
    target.mkdir(parents=True)
    (target / "adapter_config.json").write_text("{}")
    with pytest.raises(UsageError, match=r"coach@2 already holds other files than team/coach@2"):
        hub.sync(path, to=tmp_path / "srv")
    with pytest.raises(AdapterNotFoundError):
        catalogue.get_version(REPO)
    assert list(LocalBlobStore().iter_blob_paths()) == [] and not (tmp_path / "srv" / "team" / "coach@1").exists()
    assert (target / "adapter_config.json").read_text() == "{}"
    target.joinpath("adapter_config.json").unlink()  # an empty directory is fine
    assert [i.ref for i in hub.sync(path, to=tmp_path / "srv").items] == ["team/coach@1", "team/coach@2"]


# ---------------------------------------------------------------------------------------------
# the token goes only to the configured endpoint


@pytest.fixture
def other_hub(tmp_path: Path) -> Iterator[HubServer]:
    """A second server ("B"), not the configured endpoint, that would accept the user's token."""
    server = HubServer(tmp_path / "hub-b", tokens=[f"{HUB_TOKEN} {HUB_USER}"]).start()
    try:
        yield server
    finally:
        server.stop()


def record_tokens(monkeypatch: pytest.MonkeyPatch, server: HubServer) -> list[str]:
    """Every bearer token ``server`` is presented, as its own TokenRegistry sees it.

    The server checks each request's ``Authorization: Bearer`` value with ``tokens.user_for``
    (:meth:`registry.hubserver.app.HubApp._caller`); wrapping that one method of the real
    server's registry records what actually arrived over HTTP, while the client is untouched.
    """
    seen: list[str] = []
    real = server.tokens.user_for

    def user_for(token: str) -> str | None:
        seen.append(token)
        return real(token)

    monkeypatch.setattr(server.tokens, "user_for", user_for)
    return seen


def test_sync_never_sends_the_token_to_an_endpoint_the_lockfile_names(
    hub_server: HubServer, other_hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    prompt_tuning_random: Path, prompt_tuning_text: Path,
) -> None:
    """The configured endpoint is server A (HF_ENDPOINT); the lockfile names server B.

    B is started accepting the user's token, so a leak would go unnoticed by the client: what B's
    own token registry is presented is recorded (see :func:`record_tokens`). A public repo on B
    syncs anonymously with no token presented; a private one is invisible (which it would not be
    with the token); the same lockfile with ``--endpoint B`` (the user's explicit choice) does
    present the token and succeeds, which shows the recording can see a token when one is sent.
    """
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    public = catalogue.publish(prompt_tuning_random, REPO).version.ref
    private = catalogue.publish(prompt_tuning_text, "team/secret").version.ref
    hub.push(public, REPO, endpoint=other_hub.url)
    hub.push(private, "team/secret", private=True, endpoint=other_hub.url)
    public_lock, private_lock = tmp_path / "public.lock", tmp_path / "private.lock"
    hub.lock([public], public_lock, endpoint=other_hub.url)
    hub.lock([private], private_lock, endpoint=other_hub.url)
    assert lockfile.read(public_lock).entries[0].endpoint == other_hub.url != hub_server.url
    deploy(monkeypatch, tmp_path)
    presented = record_tokens(monkeypatch, other_hub)
    hub_server.clear_log()
    other_hub.clear_log()

    result = hub.sync(public_lock)
    assert result.items[0].imported and other_hub.requests  # fetched from B ...
    assert presented == [] and hub_server.requests == []  # ... anonymously, and nothing went to A

    with pytest.raises(LockfileDriftError, match="missing version: the repo is gone") as excinfo:
        hub.sync(private_lock)
    assert "sent no token" in (excinfo.value.hint or "") and HUB_TOKEN not in str(excinfo.value.hint)
    assert presented == []
    with pytest.raises(AdapterNotFoundError):
        catalogue.get_version("team/secret")

    assert hub.sync(private_lock, endpoint=other_hub.url).items[0].imported
    assert presented and set(presented) == {HUB_TOKEN}


def test_sync_refuses_a_plain_http_endpoint_that_is_not_loopback(
    pushed: dict[str, hub.PushResult], hub_server: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "adapters.lock"
    hub.lock(["team/coach@1"], path)
    edit(path, lambda d: d["adapters"][0].update(endpoint="http://192.0.2.7:8080"))  # TEST-NET-1: never routed
    deploy(monkeypatch, tmp_path)
    hub_server.clear_log()
    with pytest.raises(UsageError, match=r"refusing the plain-http Hub endpoint http://192\.0\.2\.7:8080"):
        hub.sync(path)
    assert hub_server.requests == []
    # The user's own choice is not second-guessed: --endpoint A (a mirror) syncs the same lockfile.
    assert hub.sync(path, endpoint=hub_server.url).items[0].digest == pushed["v1"].digest
