"""A pulled or synced version tells the truth about where it came from, and has one name.

The publisher (``alice``) publishes ``team/coach`` with eval scores and pushes it to the repo
``alice/coach``; a deploy machine (``bob``) pulls it with ``spr pull`` and another syncs it from a
lockfile. Both must keep the publisher's creation time, author and eval-score times, record the
import as a ``pull`` event by bob, and land the same digest under the same name.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hub_fixtures import HUB_TOKEN
from ops_support import machine_env, switch_home

from registry import catalogue, hub
from registry.cli.inputs import parse_eval
from registry.hubserver import HubServer
from registry.types import VersionInfo

PUBLISHED = "team/coach"
REPO = "alice/coach"


@pytest.fixture
def published(
    hub_server: HubServer, monkeypatch: pytest.MonkeyPatch, prompt_tuning_random: Path
) -> tuple[VersionInfo, hub.PushResult]:
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    monkeypatch.setenv("SPR_ACTOR", "alice")
    ref = catalogue.publish(
        prompt_tuning_random, PUBLISHED, options=catalogue.PublishOptions(evals=[parse_eval("eval_loss=2.5")])
    ).version.ref
    time.sleep(0.05)
    catalogue.add_eval(ref, parse_eval("accuracy=0.75"), actor="carol")  # a later score, by someone else
    pushed = hub.push(ref, REPO, endpoint=hub_server.url)
    time.sleep(0.05)  # every later time differs from the publisher's
    return catalogue.get_version(ref), pushed


def as_deploy(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    switch_home(monkeypatch, home)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("SPR_ACTOR", "bob")


def scores(version: VersionInfo) -> list[tuple[str, float, str, object]]:
    return sorted((s.metric, s.value, s.recorded_by, s.recorded_at) for s in version.eval_scores)


def assert_provenance_kept(local: VersionInfo, original: VersionInfo, pushed: hub.PushResult) -> None:
    assert local.digest == original.digest
    assert local.created_by == "alice" and local.created_at == original.created_at
    assert scores(local) == scores(original)  # recorded_by and recorded_at as the publisher's catalogue has them
    creation = [e for e in catalogue.events(local.ref) if e.details.get("digest") == local.digest and e.action != "alias-set"]
    assert [(e.action, e.actor) for e in creation] == [("pull", "bob")]  # the import is bob's, once
    details = creation[0].details
    assert details["published_by"] == "alice" and details["published_as"] == f"{PUBLISHED}@1"
    assert (details["repo"], details["commit"]) == (REPO, pushed.commit_sha)
    assert creation[0].at > original.created_at
    assert [(c.repo_id, c.commit_sha) for c in local.hub_copies] == [(REPO, pushed.commit_sha)]


def test_pull_keeps_the_publishers_time_author_and_eval_times_and_logs_the_pull_by_the_local_user(
    published: tuple[VersionInfo, hub.PushResult], hub_server: HubServer, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    original, pushed = published
    as_deploy(monkeypatch, tmp_path / "deploy")
    result = hub.pull(f"{REPO}@v1", endpoint=hub_server.url)
    assert result.imported
    assert_provenance_kept(catalogue.get_version(result.ref), original, pushed)
    again = hub.pull(f"{REPO}@v1", endpoint=hub_server.url)  # a repeated pull writes nothing
    assert not again.imported
    assert [e.action for e in catalogue.events(REPO)] == ["pull"]


def test_sync_keeps_provenance_and_lands_under_the_same_name_as_pull(
    published: tuple[VersionInfo, hub.PushResult], hub_server: HubServer, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """One rule for every route: a version from a Hub is named by its repo, with the publisher's number."""
    original, pushed = published
    publisher = machine_env()
    lock = tmp_path / "adapters.lock"
    from_catalogue = hub.lock([f"{PUBLISHED}@1"], lock)  # on the publisher's machine, by catalogue ref
    assert [(e.name, e.version) for e in from_catalogue.entries] == [(REPO, 1)]

    as_deploy(monkeypatch, tmp_path / "pull-machine")
    pulled = hub.pull(f"{REPO}@v1", endpoint=hub_server.url)

    as_deploy(monkeypatch, tmp_path / "sync-machine")
    assert hub.lock([f"{REPO}@v1"], endpoint=hub_server.url) == from_catalogue  # from the Hub alone: the same lock
    synced = hub.sync(lock, frozen=True)
    assert [i.ref for i in synced.items] == [pulled.ref] == [f"{REPO}@1"]
    assert_provenance_kept(catalogue.get_version(synced.items[0].ref), original, pushed)

    switch_home(monkeypatch, publisher)  # the publisher's own catalogue still has only its own name
    assert [v.ref for v in catalogue.list_versions()] == [f"{PUBLISHED}@1"]
