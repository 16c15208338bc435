"""Push and pull through the real ``huggingface_hub`` client, over HTTP, against the project's Hub server.

No mocks: the publisher side publishes real PEFT adapters into one catalogue, pushes them to a
:class:`registry.hubserver.HubServer`, and a "deploy" side with its own empty ``SPR_HOME`` pulls
them back. Damage is done on the server's stored bytes (``storage.tamper``/``truncate``) and
interruptions with the server's fault injection (a dropped connection is what a killed server
looks like to the client).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hub_fixtures import HUB_TOKEN
from huggingface_hub import HfApi, ModelCard, hf_hub_download
from ops_support import switch_home

from registry import catalogue, hub
from registry.adapters import manifest
from registry.cli.inputs import parse_eval
from registry.errors import (
    AdapterNotFoundError,
    HubError,
    IntegrityError,
    InvalidAdapterError,
    UsageError,
)
from registry.hubserver import HubServer
from registry.storage import LocalBlobStore
from registry.types import BaseModelInfo

REPO = "team/coach"
BASE = BaseModelInfo(name="org/tiny-bloom", revision="a" * 40, hidden_size=64, source="hub")
TEMPLATE = "Human: {prompt}\n\nAssistant: "
COMMIT_ROUTE = ("POST", "/api/{type}/{repo}/commit/{rev}")
TAG_ROUTE = ("POST", "/api/{type}/{repo}/tag/{rev}")


# ---------------------------------------------------------------------------------------------
# helpers


def use_home(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """Switch the registry to another SPR_HOME (catalogue + blob store): read at call time."""
    switch_home(monkeypatch, home)  # in the PostgreSQL half: its own database too


def publish_pair(prompt_tuning_random: Path, prompt_tuning_text: Path, dataset: Path) -> tuple[str, str]:
    """team/coach@1 (with dataset, eval, template, hub base model) and its child team/coach@2."""
    v1 = catalogue.publish(
        prompt_tuning_random,
        REPO,
        options=catalogue.PublishOptions(
            base_model_info=BASE,
            dataset=dataset,
            evals=[parse_eval("eval_loss=2.5"), parse_eval(f"accuracy=0.75@{dataset}")],
            template=TEMPLATE,
            description="motivational coach | v1",
            tags={"team": "search"},
        ),
    ).version
    v2 = catalogue.publish(
        prompt_tuning_text,
        REPO,
        options=catalogue.PublishOptions(base_model_info=BASE, parent=v1.ref, template=TEMPLATE),
    ).version
    return v1.ref, v2.ref


def file_bytes(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def routes(server: HubServer) -> list[tuple[str, str]]:
    return [(r.method, r.route) for r in server.requests]


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    return HUB_TOKEN


@pytest.fixture
def xet_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client as installed by default: Xet enabled (the server answers 'regular' uploads)."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_DISABLE_XET", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)


# ---------------------------------------------------------------------------------------------
# round trip


@pytest.mark.parametrize("mode", ["xet-client-regular-server", "lfs-client-auto-server"])
def test_push_pull_round_trip_into_an_empty_catalogue(
    mode: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, token: str,
    prompt_tuning_random: Path, prompt_tuning_text: Path, demo_datasets: dict[str, Path],
) -> None:
    if mode.startswith("lfs"):
        server: HubServer = request.getfixturevalue("hub_server_lfs")
    else:
        request.getfixturevalue("xet_on")
        server = request.getfixturevalue("hub_server")
    ref1, ref2 = publish_pair(prompt_tuning_random, prompt_tuning_text, demo_datasets["coach_train"])
    pushed1 = hub.push(ref1, REPO, endpoint=server.url)
    pushed2 = hub.push(ref2, REPO, endpoint=server.url)
    assert (pushed1.tag, pushed2.tag) == ("v1", "v2") and pushed1.committed and pushed2.committed
    lfs_used = {("POST", "/{repo}.git/info/lfs/objects/batch"), ("PUT", "/lfs-upload/{oid}")} <= server.routes_seen()
    assert lfs_used == mode.startswith("lfs")

    api = HfApi(endpoint=server.url, token=token)
    tags = {t.name: t.target_commit for t in api.list_repo_refs(REPO).tags}
    assert tags == {"v1": pushed1.commit_sha, "v2": pushed2.commit_sha}
    v1 = catalogue.get_version(ref1)
    assert [(c.repo_id, c.commit_sha, c.tag) for c in v1.hub_copies] == [(REPO, pushed1.commit_sha, "v1")]
    assert any(e.action == "push" and e.details["commit"] == pushed1.commit_sha for e in catalogue.events(ref1))
    # What is on the Hub for v1: the PEFT files (PEFT's own README relocated), the manifest, the card.
    files_v1 = set(api.list_repo_files(REPO, revision="v1"))
    assert files_v1 == {".gitattributes", "README.md", "adapter_config.json", "adapter_model.safetensors",
                        "spr_manifest.json", "spr_original_README.md"}

    # Deploy side: an empty catalogue and blob store.
    use_home(monkeypatch, tmp_path / "deploy")
    monkeypatch.delenv("HF_TOKEN")  # a public repo needs no token
    pulled1 = hub.pull(f"{REPO}@v1", endpoint=server.url, to=tmp_path / "out-v1")
    pulled2 = hub.pull(f"{REPO}@v2", endpoint=server.url)
    assert pulled1.imported and pulled2.imported
    d1, d2 = catalogue.get_version(f"{REPO}@1"), catalogue.get_version(f"{REPO}@2")
    assert (d1.digest, d2.digest) == (pushed1.digest, pushed2.digest)
    assert d1.manifest == v1.manifest
    assert d1.base_model is not None and d1.base_model.name == "org/tiny-bloom"
    assert d1.dataset is not None and d1.dataset.digest == v1.dataset.digest  # type: ignore[union-attr]
    assert d1.template == TEMPLATE and d1.description == "motivational coach | v1" and d1.tags == {"team": "search"}
    assert sorted((s.metric, s.value, s.dataset) for s in d1.eval_scores) == sorted(
        (s.metric, s.value, s.dataset) for s in v1.eval_scores
    )
    assert d1.created_by == v1.created_by and d1.lineage_verified
    assert d2.parent_digest == d1.digest and d2.parent_ref == d1.ref
    assert catalogue.lineage(d2.ref).complete
    assert [(c.repo_id, c.commit_sha) for c in d1.hub_copies] == [(REPO, pushed1.commit_sha)]
    # --to wrote the adapter's own files, byte for byte (PEFT's README included, not the card).
    assert file_bytes(tmp_path / "out-v1") == file_bytes(prompt_tuning_random)
    store = LocalBlobStore()
    assert all(store.has(f.sha256) for f in d1.files + d2.files)


def test_push_message_card_and_manifest_file(
    hub_server: HubServer, token: str, prompt_tuning_random: Path, prompt_tuning_text: Path,
    demo_datasets: dict[str, Path],
) -> None:
    ref1, ref2 = publish_pair(prompt_tuning_random, prompt_tuning_text, demo_datasets["coach_train"])
    hub.push(ref1, REPO, endpoint=hub_server.url)
    pushed = hub.push(ref2, REPO, endpoint=hub_server.url)
    v2 = catalogue.get_version(ref2)
    commit = json.loads((hub_server.root / "repos" / "model" / "team" / "coach" / "commits" / f"{pushed.commit_sha}.json").read_text())
    assert f"spr: team/coach v2 ({v2.digest})" in json.dumps(commit)

    doc = json.loads(Path(hf_hub_download(REPO, "spr_manifest.json", revision="v2", endpoint=hub_server.url)).read_bytes())
    assert doc["digest"] == v2.digest and doc["record"]["number"] == 2 and doc["record"]["name"] == "coach"
    assert manifest.digest_of(doc["manifest"]) == v2.digest

    card = ModelCard.load(hf_hub_download(REPO, "README.md", revision="v1", endpoint=hub_server.url))
    data = card.data.to_dict()
    assert data["library_name"] == "peft"
    assert data["base_model"] == "org/tiny-bloom" and data["base_model_relation"] == "adapter"
    assert data["datasets"] == ["coach_train.jsonl"]
    assert {"peft", "prompt-tuning", "soft-prompt", "team:search"} <= set(data["tags"])
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {"eval_loss": 2.5, "accuracy": 0.75}
    text = card.text
    assert "| Virtual tokens | 4 |" in text and "| Token dim | 64 |" in text and "| Init method | RANDOM |" in text
    assert "Human: {prompt}" in text and "motivational coach &#124; v1" in text
    card2 = ModelCard.load(hf_hub_download(REPO, "README.md", revision="v2", endpoint=hub_server.url))
    assert f"`{catalogue.get_version(ref1).digest}`" in card2.text and "team/coach@1" in card2.text  # lineage
    assert "| Init method | TEXT |" in card2.text
    for path in (hf_hub_download(REPO, f, revision="v2", endpoint=hub_server.url) for f in ("README.md", "spr_manifest.json")):
        assert HUB_TOKEN not in Path(path).read_text()


def test_pushing_the_same_version_again_changes_nothing(
    hub_server: HubServer, token: str, prompt_tuning_random: Path
) -> None:
    ref = catalogue.publish(prompt_tuning_random, REPO).version.ref
    first = hub.push(ref, REPO, endpoint=hub_server.url)
    hub_server.clear_log()
    again = hub.push(ref, REPO, endpoint=hub_server.url)
    assert (again.committed, again.tagged, again.commit_sha) == (False, False, first.commit_sha)
    assert not {COMMIT_ROUTE, TAG_ROUTE, ("POST", "/api/{type}/{repo}/preupload/{rev}")} & set(routes(hub_server))
    assert len(catalogue.get_version(ref).hub_copies) == 1
    assert [e.action for e in catalogue.events(ref)].count("push") == 1


def test_a_tag_holding_another_version_is_never_moved(
    hub_server: HubServer, token: str, prompt_tuning_random: Path, prompt_tuning_text: Path
) -> None:
    a = catalogue.publish(prompt_tuning_random, "local/a").version.ref
    b = catalogue.publish(prompt_tuning_text, "local/b").version.ref
    hub.push(a, REPO, endpoint=hub_server.url)
    with pytest.raises(HubError, match=r"tag v1 of team/coach .* already holds another version"):
        hub.push(b, REPO, endpoint=hub_server.url)
    assert catalogue.get_version(b).hub_copies == ()


def test_next_version_drops_files_the_previous_one_had(
    hub_server: HubServer, token: str, adapter_factory, prompt_tuning_text: Path
) -> None:
    with_tokenizer = adapter_factory("prompt_tuning_random")
    (with_tokenizer / "special_tokens_map.json").write_text('{"eos_token": "</s>"}')
    v1 = catalogue.publish(with_tokenizer, REPO).version.ref
    v2 = catalogue.publish(prompt_tuning_text, REPO).version.ref
    hub.push(v1, REPO, endpoint=hub_server.url)
    hub.push(v2, REPO, endpoint=hub_server.url)
    api = HfApi(endpoint=hub_server.url)
    assert "special_tokens_map.json" in api.list_repo_files(REPO, revision="v1")
    assert "special_tokens_map.json" not in api.list_repo_files(REPO, revision="v2")


def test_push_needs_a_token_and_a_wrong_one_is_refused(
    hub_server: HubServer, monkeypatch: pytest.MonkeyPatch, prompt_tuning_random: Path
) -> None:
    ref = catalogue.publish(prompt_tuning_random, REPO).version.ref
    with pytest.raises(HubError, match="needs a token"):
        hub.push(ref, REPO, endpoint=hub_server.url)
    monkeypatch.setenv("HF_TOKEN", "not-the-token")
    with pytest.raises(HubError) as excinfo:
        hub.push(ref, REPO, endpoint=hub_server.url)
    assert excinfo.value.exit_code == 7 and "401" in str(excinfo.value) and "not-the-token" not in str(excinfo.value)
    assert catalogue.get_version(ref).hub_copies == ()


def test_private_repo_is_invisible_to_anonymous_pull(
    hub_server: HubServer, token: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prompt_tuning_random: Path
) -> None:
    ref = catalogue.publish(prompt_tuning_random, REPO).version.ref
    hub.push(ref, REPO, private=True, endpoint=hub_server.url)
    use_home(monkeypatch, tmp_path / "deploy")
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HubError, match="not found"):
        hub.pull(f"{REPO}@v1", endpoint=hub_server.url)
    with pytest.raises(AdapterNotFoundError):
        catalogue.get_version(REPO)
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    assert hub.pull(f"{REPO}@v1", endpoint=hub_server.url).imported


# ---------------------------------------------------------------------------------------------
# interrupted pushes


def test_push_cut_off_before_the_commit_leaves_the_catalogue_unchanged_and_a_retry_succeeds(
    hub_server_lfs: HubServer, token: str, prompt_tuning_random: Path
) -> None:
    ref = catalogue.publish(prompt_tuning_random, REPO).version.ref
    events_before = len(catalogue.events())
    # The LFS upload lands, then the server dies on the commit (connection dropped, no answer).
    hub_server_lfs.fail(*COMMIT_ROUTE)
    with pytest.raises(HubError, match="cannot reach the Hub"):
        hub.push(ref, REPO, endpoint=hub_server_lfs.url)
    assert ("PUT", "/lfs-upload/{oid}") in routes(hub_server_lfs)
    assert catalogue.get_version(ref).hub_copies == ()
    assert len(catalogue.events()) == events_before
    assert HfApi(endpoint=hub_server_lfs.url).list_repo_refs(REPO).tags == []
    result = hub.push(ref, REPO, endpoint=hub_server_lfs.url)
    assert result.committed and result.tagged
    assert [c.commit_sha for c in catalogue.get_version(ref).hub_copies] == [result.commit_sha]


@pytest.mark.parametrize("server_fixture", ["hub_server", "hub_server_lfs"])
def test_push_cut_off_between_commit_and_tag_is_finished_by_a_retry_without_a_new_commit(
    server_fixture: str, request: pytest.FixtureRequest, token: str, prompt_tuning_random: Path
) -> None:
    hub_server: HubServer = request.getfixturevalue(server_fixture)
    ref = catalogue.publish(prompt_tuning_random, REPO).version.ref
    hub_server.fail(*TAG_ROUTE)
    with pytest.raises(HubError):
        hub.push(ref, REPO, endpoint=hub_server.url)
    api = HfApi(endpoint=hub_server.url)
    head = api.list_repo_refs(REPO).branches[0].target_commit
    assert api.list_repo_refs(REPO).tags == [] and catalogue.get_version(ref).hub_copies == ()
    hub_server.clear_log()
    result = hub.push(ref, REPO, endpoint=hub_server.url)
    assert (result.committed, result.tagged, result.commit_sha) == (False, True, head)
    assert COMMIT_ROUTE not in routes(hub_server)
    assert api.list_repo_refs(REPO).branches[0].target_commit == head


# ---------------------------------------------------------------------------------------------
# pull: pinning, idempotence, integrity


def test_second_pinned_pull_makes_no_http_request(
    hub_server: HubServer, token: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prompt_tuning_random: Path
) -> None:
    ref = catalogue.publish(prompt_tuning_random, REPO).version.ref
    pushed = hub.push(ref, REPO, endpoint=hub_server.url)
    use_home(monkeypatch, tmp_path / "deploy")
    first = hub.pull(f"{REPO}@{pushed.commit_sha}", endpoint=hub_server.url)
    assert first.imported and hub_server.requests
    hub_server.clear_log()
    again = hub.pull(f"{REPO}@{pushed.commit_sha}", endpoint=hub_server.url)
    by_ref = hub.pull(f"{REPO}@1")  # a catalogue ref: its recorded hub copy, pinned to the commit
    assert hub_server.requests == []
    assert not again.imported and not by_ref.imported and by_ref.source == "catalogue"
    assert again.digest == by_ref.digest == first.digest
    assert len(catalogue.versions(REPO)) == 1
    assert [e.action for e in catalogue.events(REPO)].count("pull") == 1
    # A tag is resolved with one request (the refs), and nothing else is fetched again.
    hub.pull(f"{REPO}@v1", endpoint=hub_server.url)
    assert routes(hub_server) == [("GET", "/api/{type}/{repo}/refs")]


@pytest.mark.parametrize("damage", ["changed-byte", "truncated"])
def test_damaged_remote_file_is_refused_and_nothing_is_imported(
    damage: str, hub_server: HubServer, token: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    prompt_tuning_random: Path,
) -> None:
    ref = catalogue.publish(prompt_tuning_random, REPO).version.ref
    hub.push(ref, REPO, endpoint=hub_server.url)
    original = (prompt_tuning_random / "adapter_model.safetensors").read_bytes()
    if damage == "changed-byte":
        hub_server.storage.tamper(REPO, "adapter_model.safetensors", original[:-1] + bytes([original[-1] ^ 1]))
    else:
        hub_server.storage.truncate(REPO, "adapter_model.safetensors")
    use_home(monkeypatch, tmp_path / "deploy")
    with pytest.raises(IntegrityError) as excinfo:
        hub.pull(f"{REPO}@v1", endpoint=hub_server.url, to=tmp_path / "out")
    assert excinfo.value.exit_code == 5
    with pytest.raises(AdapterNotFoundError):
        catalogue.get_version(REPO)
    assert list(LocalBlobStore().iter_blob_paths()) == []
    assert not (tmp_path / "out").exists()
    # The damaged download was evicted from the HF cache: once the server is repaired, a retry works.
    hub_server.storage.tamper(REPO, "adapter_model.safetensors", original)
    assert hub.pull(f"{REPO}@v1", endpoint=hub_server.url).imported


def test_tampered_manifest_is_refused(
    hub_server: HubServer, token: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prompt_tuning_random: Path
) -> None:
    ref = catalogue.publish(prompt_tuning_random, REPO).version.ref
    hub.push(ref, REPO, endpoint=hub_server.url)
    doc = Path(hf_hub_download(REPO, "spr_manifest.json", revision="v1", endpoint=hub_server.url, cache_dir=tmp_path / "c")).read_bytes()
    forged = doc.replace(b'"num_virtual_tokens": 4', b'"num_virtual_tokens": 5')
    assert forged != doc and len(forged) == len(doc)
    hub_server.storage.tamper(REPO, "spr_manifest.json", forged)
    use_home(monkeypatch, tmp_path / "deploy")
    with pytest.raises(IntegrityError, match="hashes to"):
        hub.pull(f"{REPO}@v1", endpoint=hub_server.url)
    with pytest.raises(AdapterNotFoundError):
        catalogue.get_version(REPO)


def test_catalogue_ref_pull_checks_the_hub_copy_holds_the_catalogued_digest(
    hub_server: HubServer, token: str, prompt_tuning_random: Path, prompt_tuning_text: Path
) -> None:
    a = catalogue.publish(prompt_tuning_random, REPO).version
    b = catalogue.publish(prompt_tuning_text, "local/other").version
    pushed_b = hub.push(b.ref, "team/other", endpoint=hub_server.url)
    # Record (wrongly) that a's hub copy is b's commit: the pull must notice the digests differ.
    catalogue.record_hub_copy(a.ref, endpoint=hub_server.url, repo_id="team/other", commit_sha=pushed_b.commit_sha, tag="v1")
    with pytest.raises(IntegrityError, match="holds"):
        hub.pull(a.ref)


def test_hostile_manifest_paths_are_refused(
    hub_server: HubServer, token: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prompt_tuning_random: Path
) -> None:
    version = catalogue.publish(prompt_tuning_random, REPO).version
    manifest = json.loads(json.dumps(version.manifest))
    manifest["files"].append({"path": "../../escape.txt", "sha256": "0" * 64, "size": 1})
    doc = hub.manifest_document(version)
    doc["manifest"], doc["digest"] = manifest, "sha256:" + hashlib.sha256(
        json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()
    api = HfApi(endpoint=hub_server.url, token=token)
    api.create_repo("evil/adapter")
    api.upload_file(path_or_fileobj=json.dumps(doc).encode(), path_in_repo="spr_manifest.json", repo_id="evil/adapter")
    use_home(monkeypatch, tmp_path / "deploy")
    with pytest.raises(InvalidAdapterError, match="unsafe file path"):
        hub.pull("evil/adapter", endpoint=hub_server.url)
    assert not (tmp_path / "escape.txt").exists()


def test_pull_to_dir_is_idempotent_and_never_overwrites_other_files(
    hub_server: HubServer, token: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prompt_tuning_random: Path
) -> None:
    ref = catalogue.publish(prompt_tuning_random, REPO).version.ref
    hub.push(ref, REPO, endpoint=hub_server.url)
    use_home(monkeypatch, tmp_path / "deploy")
    out = tmp_path / "out"
    hub.pull(f"{REPO}@v1", endpoint=hub_server.url, to=out)
    assert hub.pull(f"{REPO}@v1", endpoint=hub_server.url, to=out).to == str(out)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="already holds other files"):
        hub.pull(f"{REPO}@v1", endpoint=hub_server.url, to=other)
    assert (other / "notes.txt").read_text() == "mine"


def test_pull_of_a_repo_without_manifest_points_to_import(hub_server: HubServer, token: str, prompt_tuning_random: Path) -> None:
    api = HfApi(endpoint=hub_server.url, token=token)
    api.create_repo("someone/plain")
    api.upload_folder(repo_id="someone/plain", folder_path=prompt_tuning_random)
    with pytest.raises(HubError, match="spr import someone/plain@"):
        hub.pull("someone/plain", endpoint=hub_server.url)


def test_pull_of_an_unknown_tag_lists_the_tags(hub_server: HubServer, token: str, prompt_tuning_random: Path) -> None:
    ref = catalogue.publish(prompt_tuning_random, REPO).version.ref
    hub.push(ref, REPO, endpoint=hub_server.url)
    with pytest.raises(HubError, match=r"no tag or branch 'v9' \(tags: v1\)"):
        hub.pull(f"{REPO}@v9", endpoint=hub_server.url)


# ---------------------------------------------------------------------------------------------
# import of plain PEFT repos


def test_import_of_a_plain_peft_repo_marks_lineage_unverified(
    hub_server: HubServer, token: str, prompt_tuning_random: Path, tiny_bloom: Path
) -> None:
    api = HfApi(endpoint=hub_server.url, token=token)
    api.create_repo("someone/plain")
    info = api.upload_folder(repo_id="someone/plain", folder_path=prompt_tuning_random)
    result = hub.import_repo("someone/plain", endpoint=hub_server.url)
    assert result.imported and not result.lineage_verified and result.ref == "someone/plain@1"
    version = catalogue.get_version("someone/plain@1")
    assert version.tags["hub.repo"] == "someone/plain" and version.tags["hub.commit"] == info.oid
    assert version.base_model is not None and version.base_model.name == str(tiny_bloom)
    assert [(c.repo_id, c.commit_sha) for c in version.hub_copies] == [("someone/plain", info.oid)]
    assert file_bytes(catalogue.export(version.ref, hub_server.root.parent / "exported")) == file_bytes(prompt_tuning_random)
    again = hub.import_repo(f"someone/plain@{info.oid}", endpoint=hub_server.url)
    assert not again.imported and again.digest == result.digest


def test_import_refuses_pickles_and_non_adapters(hub_server: HubServer, token: str, tmp_path: Path) -> None:
    api = HfApi(endpoint=hub_server.url, token=token)
    api.create_repo("someone/pickled")
    api.upload_file(path_or_fileobj=b'{"peft_type": "LORA"}', path_in_repo="adapter_config.json", repo_id="someone/pickled")
    api.upload_file(path_or_fileobj=b"\x80\x04pickle", path_in_repo="adapter_model.bin", repo_id="someone/pickled")
    with pytest.raises(InvalidAdapterError, match="pickle"):
        hub.import_repo("someone/pickled", endpoint=hub_server.url)
    api.create_repo("someone/model")
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id="someone/model")
    with pytest.raises(InvalidAdapterError, match="not a PEFT adapter repo"):
        hub.import_repo("someone/model", endpoint=hub_server.url)


# ---------------------------------------------------------------------------------------------
# the ecosystem reads what push wrote


def test_peft_and_the_hf_cli_load_a_pushed_adapter(
    hub_server: HubServer, token: str, tmp_path: Path, prompt_tuning_random: Path, tiny_bloom: Path
) -> None:
    ref = catalogue.publish(prompt_tuning_random, REPO).version.ref
    hub.push(ref, REPO, endpoint=hub_server.url)
    env = {**os.environ, "HF_ENDPOINT": hub_server.url, "HF_HOME": str(tmp_path / "hf-sub"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_TOKEN", None)
    hf = Path(sys.executable).parent / "hf"
    done = subprocess.run(
        [str(hf), "download", REPO, "--revision", "v1", "--local-dir", str(tmp_path / "hf-cli")],
        env=env, capture_output=True, text=True, check=False, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    got = file_bytes(tmp_path / "hf-cli")
    assert got["adapter_model.safetensors"] == (prompt_tuning_random / "adapter_model.safetensors").read_bytes()
    assert got["adapter_config.json"] == (prompt_tuning_random / "adapter_config.json").read_bytes()

    script = f"""
import torch, safetensors.torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
base = AutoModelForCausalLM.from_pretrained({str(tiny_bloom)!r})
model = PeftModel.from_pretrained(base, {REPO!r}, revision="v1")
loaded = model.get_prompt_embedding_to_save("default")
expected = safetensors.torch.load_file({str(prompt_tuning_random / "adapter_model.safetensors")!r})["prompt_embeddings"]
assert torch.equal(loaded, expected), "different tensors"
print("same tensors", tuple(loaded.shape))
"""
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "same tensors (4, 64)" in done.stdout


# ---------------------------------------------------------------------------------------------
# the token goes only to the configured endpoint


def test_pull_of_a_catalogue_ref_sends_no_token_to_a_recorded_endpoint_that_is_not_configured(
    hub_server: HubServer, token: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prompt_tuning_random: Path
) -> None:
    """``spr pull REF`` through a hub copy recorded on server B while the configured endpoint is A.

    B accepts the user's token; what B's own TokenRegistry is presented over HTTP is recorded by
    wrapping its ``user_for`` (the server's check of every ``Authorization`` header). The repo on
    B is private, so a pull that sent the token would succeed: it must fail as not found, with no
    token presented. With ``--endpoint B`` (the user's choice) the token goes and the pull works,
    which shows the recording sees a token when one is sent.
    """
    other = HubServer(tmp_path / "hub-b", tokens=[f"{HUB_TOKEN} tester"]).start()
    try:
        ref = catalogue.publish(prompt_tuning_random, REPO).version.ref
        hub.push(ref, REPO, private=True, endpoint=other.url)  # records the hub copy on B
        assert [c.endpoint for c in catalogue.get_version(ref).hub_copies] == [other.url]
        presented: list[str] = []
        real = other.tokens.user_for
        monkeypatch.setattr(other.tokens, "user_for", lambda t: presented.append(t) or real(t))
        other.clear_log()
        with pytest.raises(HubError, match="not found") as excinfo:
            hub.pull(ref)
        assert "sent no token" in (excinfo.value.hint or "")
        assert other.requests and presented == [] and hub_server.requests == []
        assert hub.pull(ref, endpoint=other.url).digest == catalogue.get_version(ref).digest
        assert presented and set(presented) == {HUB_TOKEN}
    finally:
        other.stop()


def test_the_token_is_allowed_only_for_the_configured_endpoint(hub_server: HubServer, token: str) -> None:
    port = hub_server.port
    assert hub.HubClient().token_allowed and hub.HubClient().endpoint == hub_server.url
    # The configured endpoint, however the record spells it (case, default port, trailing slash).
    same = hub.HubClient(recorded=f"HTTP://127.0.0.1:{port}/")
    assert same.token_allowed and same._token == HUB_TOKEN
    # Any other endpoint: anonymous (token=False is what HfApi/hf_hub_download get).
    for other in (f"http://localhost:{port}", "https://mirror.example.com", f"http://[::1]:{port}"):
        client = hub.HubClient(recorded=other)
        assert not client.token_allowed and client._token is False and client.api.token is False
    # An explicit --endpoint is the user's choice: it gets the token, plain http included.
    explicit = hub.HubClient("http://192.0.2.7:8080")
    assert explicit.token_allowed and explicit._token == HUB_TOKEN
    # A recorded endpoint that is plain http and not loopback, or not a plain URL, is refused.
    for bad in ("http://192.0.2.7:8080", "http://hub.example.com", "ftp://127.0.0.1", "https://user:pw@hub.example.com"):
        with pytest.raises(UsageError):
            hub.HubClient(recorded=bad)
    # --endpoint overrides a recorded endpoint (a mirror) and is trusted.
    assert hub.HubClient(hub_server.url, recorded="http://192.0.2.7:8080").token_allowed


# ---------------------------------------------------------------------------------------------
# text from a Hub is bounded to the catalogue's column sizes


def forged_hub_manifest(version, change_manifest=None, change_record=None) -> bytes:  # type: ignore[no-untyped-def]
    """``spr_manifest.json`` for ``version`` after ``change_*``, with a digest that matches the change."""
    doc = hub.manifest_document(version)
    doc = json.loads(json.dumps(doc))
    if change_manifest:
        change_manifest(doc["manifest"])
    if change_record:
        change_record(doc["record"])
    doc["digest"] = manifest.digest_of(doc["manifest"])
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("section", "key", "limit"),
    [
        ("peft", "task_type", 32),
        ("peft", "init_method", 32),
        ("peft", "peft_version", 100),
        ("peft", "tokenizer", 1000),
        ("base_model", "name", 1000),
        ("base_model", "revision", 200),
        ("base_model", "source", 20),
        ("dataset", "format", 20),
        ("dataset", "name", 1000),
    ],
)
def test_over_long_manifest_text_is_refused_naming_the_field(
    section: str, key: str, limit: int, prompt_tuning_random: Path
) -> None:
    version = catalogue.publish(
        prompt_tuning_random, REPO, options=catalogue.PublishOptions(base_model_info=BASE)
    ).version

    def change(size: int):  # type: ignore[no-untyped-def]
        def apply(m: dict) -> None:  # type: ignore[type-arg]
            if section == "dataset":
                m["dataset"] = {"digest": "sha256:" + "0" * 64, "name": "d", "format": "jsonl"}
            m[section][key] = "x" * size
        return apply

    at_limit = forged_hub_manifest(version, change(limit))
    assert hub.parse_hub_manifest(at_limit, repo_id=REPO, commit_sha="0" * 40, where="w").manifest[section][key] == "x" * limit
    with pytest.raises(InvalidAdapterError, match=rf"malformed manifest: {section}\.{key} is {limit + 1} characters"):
        hub.parse_hub_manifest(forged_hub_manifest(version, change(limit + 1)), repo_id=REPO, commit_sha="0" * 40, where="w")


def test_over_long_eval_split_in_a_hub_record_is_refused(prompt_tuning_random: Path) -> None:
    version = catalogue.publish(
        prompt_tuning_random, REPO, options=catalogue.PublishOptions(evals=[parse_eval("eval_loss=2.5")])
    ).version

    def split(size: int):  # type: ignore[no-untyped-def]
        return lambda r: r["eval_scores"][0].update(split="s" * size)

    ok = hub.parse_hub_manifest(forged_hub_manifest(version, change_record=split(100)), repo_id=REPO, commit_sha="0" * 40, where="w")
    assert ok.record.evals[0].split == "s" * 100
    with pytest.raises(InvalidAdapterError, match="malformed split"):
        hub.parse_hub_manifest(forged_hub_manifest(version, change_record=split(101)), repo_id=REPO, commit_sha="0" * 40, where="w")


def test_client_errors_never_carry_the_token(hub_server: HubServer, token: str) -> None:
    """A server (or the client) echoing the token: every message the Hub module makes is redacted.

    Real ``huggingface_hub`` exceptions are raised inside :meth:`HubClient.call`: an HTTP error
    whose server message puts the token just where the 200-character cut falls (redacting after
    cutting would leave half of it), and an unexpected exception whose text carries it.
    """
    import httpx2
    from huggingface_hub.utils import hf_raise_for_status

    client = hub.HubClient()
    assert client._token == token
    request = httpx2.Request("GET", f"{hub_server.url}/api/models/{REPO}")
    echoed = httpx2.Response(500, request=request, json={"error": "x" * 195 + token + " was sent"})
    with pytest.raises(HubError) as excinfo, client.call("reading", REPO):
        hf_raise_for_status(echoed)
    text = f"{excinfo.value} {excinfo.value.hint} {excinfo.value.fields}"
    assert token[:5] not in text and "answered 500" in text
    with pytest.raises(HubError) as unexpected, client.call("reading", REPO):
        raise RuntimeError(f"header Authorization: Bearer {token}")
    assert token not in str(unexpected.value) and "<token>" in str(unexpected.value)
