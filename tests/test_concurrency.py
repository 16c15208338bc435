"""Concurrent writers: several processes publish versions of one adapter and move an alias at once.

Runs on this run's backend (SQLite in the default half, PostgreSQL with SPR_TEST_DATABASE=postgresql).
Writers are separate processes using the library, as teams and CI jobs would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from ops_support import WORKER, alias_history_problems, write_small_adapter

from registry import catalogue
from registry import ops as audit

TESTS_DIR = str(Path(__file__).parent)
WRITERS = 4
PER_WRITER = 50


def start_writers(tmp_path: Path, name: str, writers: int, per_writer: int, alias: str | None) -> list[subprocess.Popen[str]]:
    procs = []
    for w in range(writers):
        args = [sys.executable, "-c", WORKER, name, str(1000 * (w + 1)), str(per_writer), str(tmp_path / f"w{w}"), TESTS_DIR]
        if alias:
            args.append(alias)
        procs.append(
            subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    for p in procs:  # every writer has built its adapters and imported everything: start together
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line.strip() == "ready", p.stderr.read() if p.stderr else line
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    return procs


def finish(procs: list[subprocess.Popen[str]], timeout: float = 240) -> list[list[dict]]:
    results = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, f"writer failed (exit {p.returncode}):\n{err[-3000:]}"
        assert "locked" not in err.lower(), err[-3000:]
        results.append([json.loads(line) for line in out.splitlines() if line.startswith("{")])
    return results


@pytest.mark.slow
def test_four_writers_publish_200_versions_and_move_an_alias(tmp_path: Path) -> None:
    name = "team/coach"
    procs = start_writers(tmp_path, name, WRITERS, PER_WRITER, alias="prod")
    results = finish(procs)

    total = WRITERS * PER_WRITER
    published = [r for rs in results for r in rs]
    assert len(published) == total and all(r["created"] for r in published)
    # Each writer saw its own versions in increasing order (a writer's publishes are sequential).
    for rs in results:
        numbers = [r["published"] for r in rs]
        assert numbers == sorted(numbers)

    versions = catalogue.versions(name)
    assert sorted(v.number for v in versions) == list(range(1, total + 1))
    assert {v.digest for v in versions} == {r["digest"] for r in published}
    by_number = {v.number: v.digest for v in versions}
    assert all(by_number[r["published"]] == r["digest"] for r in published)

    events = catalogue.events(name)
    assert sum(1 for e in events if e.action == "publish") == total
    moves = [e for e in events if e.action == "alias-set"]
    assert moves and len(moves) <= total  # a move onto the version the alias already names is no move
    assert alias_history_problems(events, "prod") == []
    assert catalogue.get_version(f"{name}@prod").number == moves[-1].details["to"]
    assert catalogue.verify_event_chain() == []
    report = audit.audit()
    assert report.errors == (), report.errors


def test_racing_first_publish_of_a_new_adapter(tmp_path: Path) -> None:
    """Two writers creating the same adapter at once: one adapter row, versions 1 and 2."""
    procs = start_writers(tmp_path, "fresh/race", 2, 1, alias=None)
    results = finish(procs)
    assert sorted(r["published"] for rs in results for r in rs) == [1, 2]
    assert len(catalogue.versions("fresh/race")) == 2


def test_identical_content_published_concurrently_is_one_version(tmp_path: Path) -> None:
    """Retries are safe: the same adapter published by several threads at once gives one version."""
    adapter = write_small_adapter(tmp_path / "same", 7)
    results: list[object] = []
    errors: list[BaseException] = []

    def publish() -> None:
        try:
            results.append(catalogue.publish(adapter, "same/one"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=publish) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [v.number for v in catalogue.versions("same/one")] == [1]
    assert sum(1 for r in results if r.created) == 1  # type: ignore[attr-defined]
    assert catalogue.verify_event_chain() == []


@pytest.mark.skipif(os.cpu_count() == 1, reason="needs two cores to race")
def test_concurrent_alias_moves_keep_history_consistent(tmp_path: Path) -> None:
    """Threads moving one alias back and forth: every logged move starts where the previous ended."""
    name = "alias/race"
    for seed in range(6):
        catalogue.publish(write_small_adapter(tmp_path / f"a{seed}", seed), name)
    errors: list[BaseException] = []

    def mover(offset: int) -> None:
        try:
            for i in range(15):
                catalogue.set_alias(f"{name}@{(i + offset) % 6 + 1}", "prod")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=mover, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    events = catalogue.events(name)
    assert alias_history_problems(events, "prod") == []
    assert catalogue.verify_event_chain() == []
