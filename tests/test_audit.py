"""``spr audit`` and ``spr gc``: damage is found and named, leftovers are cleaned, nothing else is touched.

Each damage test starts from a catalogue that audits clean (checked by :func:`published`), breaks
one thing the way an intruder or a failing disk would (bypassing the library and, where needed,
the database's append-only triggers), and expects exactly that problem, named, with exit 5.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ops_support import write_small_adapter
from sqlalchemy import text

from registry import catalogue, db
from registry import ops as audit
from registry.cli.main import run
from registry.errors import EXIT_INTEGRITY
from registry.storage.local import TMP_PREFIX, LocalBlobStore

NAME = "team/coach"


@pytest.fixture
def published(tmp_path: Path) -> list[str]:
    """Three versions of one adapter (alias prod on 2) plus one of another; audits clean."""
    refs = []
    for seed in range(3):
        refs.append(catalogue.publish(write_small_adapter(tmp_path / f"a{seed}", seed), NAME).version.ref)
    catalogue.set_alias(f"{NAME}@2", "prod")
    refs.append(catalogue.publish(write_small_adapter(tmp_path / "other", 99), "team/other").version.ref)
    report = audit.audit()
    assert report.problems == (), [p.line() for p in report.problems]
    assert (report.versions, report.files, report.blobs) == (4, 8, 5)  # the four share one adapter_config.json
    return refs


def spr(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = run(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def weights_blob(ref: str) -> str:
    return next(f.sha256 for f in catalogue.get_version(ref).files if f.path == "adapter_model.safetensors")


def raw_sql(*statements: str) -> None:
    """Run SQL behind the library's back (the way someone with database access could)."""
    engine = db.get_engine()
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))


def without_guard(table: str, op: str, statement: str) -> list[str]:
    """SQL that runs ``statement`` with the append-only trigger ``guard_<table>_<op>`` out of the way."""
    trigger = f"guard_{table}_{op}"
    if db.get_engine().dialect.name == "sqlite":
        # Put the trigger back afterwards: a dropped guard is a finding of its own (guard-missing).
        with db.get_engine().connect() as conn:
            create = conn.execute(text("SELECT sql FROM sqlite_master WHERE name = :n"), {"n": trigger}).scalar_one()
        return [f"DROP TRIGGER {trigger}", statement, create]
    return [f"ALTER TABLE {table} DISABLE TRIGGER {trigger}", statement, f"ALTER TABLE {table} ENABLE TRIGGER {trigger}"]


def kinds(report: audit.AuditReport) -> set[str]:
    return {p.kind for p in report.problems}


def test_clean_catalogue_audits_clean(published: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = spr(capsys, "audit")
    assert code == 0
    assert out == ""
    assert "0 error(s), 0 warning(s); 4 versions" in err
    code, out, _ = spr(capsys, "audit", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["ok"] is True and doc["problems"] == [] and doc["versions"] == 4
    assert doc["bytes_hashed"] > 0


def test_audit_of_an_empty_catalogue(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = spr(capsys, "audit")
    assert code == 0 and out == "" and "0 versions" in err


def test_flipped_byte_in_a_blob_is_reported(published: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    sha = weights_blob(published[1])
    path = LocalBlobStore().path(sha)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))

    code, out, _ = spr(capsys, "audit")
    assert code == EXIT_INTEGRITY
    lines = out.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error blob-corrupt sha256:{sha}:")
    assert f"{NAME}@2:adapter_model.safetensors" in lines[0]
    # Presence-and-size mode does not re-hash, so a same-size flip passes it: that is its contract.
    assert audit.audit(rehash=False).errors == ()


def test_deleted_blob_is_reported(published: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    sha = weights_blob(published[0])
    LocalBlobStore().remove(sha)
    code, out, _ = spr(capsys, "audit", "--json")
    assert code == EXIT_INTEGRITY
    doc = json.loads(out)
    assert doc["ok"] is False and doc["errors"] == 1
    (problem,) = doc["problems"]
    assert problem["kind"] == "blob-missing" and problem["subject"] == f"sha256:{sha}"
    assert f"{NAME}@1" in problem["message"]
    assert audit.audit(rehash=False).errors[0].kind == "blob-missing"


def test_edited_event_row_is_reported(published: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    raw_sql(*without_guard("event", "update", "UPDATE event SET actor = 'mallory' WHERE id = 2"))
    code, out, _ = spr(capsys, "audit")
    assert code == EXIT_INTEGRITY
    lines = out.splitlines()
    assert any(line.startswith("error event-chain event 2") and "edited" in line for line in lines), lines


def test_deleted_event_row_is_reported(published: list[str]) -> None:
    raw_sql(*without_guard("event", "delete", "DELETE FROM event WHERE id = 3"))
    report = audit.audit()
    assert kinds(report) == {"event-chain"}
    assert any("event 4" in p.subject and "deleted" in p.message for p in report.errors)


def test_edited_manifest_is_reported(published: list[str]) -> None:
    raw_sql(*without_guard(
        "version", "update", "UPDATE version SET manifest = replace(manifest, 'tiny-bloom', 'tiny-blooM') WHERE number = 3"
    ))
    report = audit.audit()
    assert kinds(report) == {"manifest-digest"}
    assert report.errors[0].subject == f"{NAME}@3"


def test_file_row_that_disagrees_with_the_manifest_is_reported(published: list[str]) -> None:
    sha = weights_blob(published[0])
    raw_sql(*without_guard("file", "delete", f"DELETE FROM file WHERE sha256 = '{sha}'"))
    report = audit.audit()
    assert "manifest-files" in kinds(report)
    assert any(p.subject == f"{NAME}@1" and "adapter_model.safetensors" in p.message for p in report.errors)
    # The blob lost its only reference: it is now an orphan (a warning, not an error).
    assert any(p.kind == "orphan-blob" and p.subject == f"sha256:{sha}" for p in report.warnings)


def test_row_pointing_at_a_missing_row_is_reported(published: list[str]) -> None:
    sha = weights_blob(published[0])
    insert = f"INSERT INTO file (version_id, path, sha256, size) VALUES (9999, 'x.json', '{sha}', 1)"
    engine = db.get_engine()
    if engine.dialect.name == "sqlite":
        # A plain sqlite3 connection does not enforce foreign keys (spr's connections all do).
        con = sqlite3.connect(engine.url.database)
        con.execute(insert)
        con.commit()
        con.close()
    else:
        raw_sql("SET LOCAL session_replication_role = replica", insert)
    report = audit.audit()
    assert "foreign-key" in kinds(report)
    assert any(p.kind == "foreign-key" and p.subject.startswith("file row") for p in report.errors)


def test_alias_pointing_at_another_adapters_version_is_reported(published: list[str]) -> None:
    other_id = "(SELECT v.id FROM version v JOIN adapter a ON a.id = v.adapter_id WHERE a.name = 'other')"
    raw_sql(f"UPDATE alias SET version_id = {other_id} WHERE alias = 'prod'")
    report = audit.audit()
    assert kinds(report) == {"alias-adapter", "row-edited"}  # and the alias no longer matches its alias-set event


def test_leftovers_are_warnings_and_strict_fails_on_them(
    published: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    store = LocalBlobStore()
    orphan = store.put_bytes(b"written by a publish that was killed before its commit")
    (store.root / "sha256" / f"{TMP_PREFIX}killed").write_bytes(b"partial")
    code, out, err = spr(capsys, "audit")
    assert code == 0
    assert sorted(line.split()[1] for line in out.splitlines()) == ["orphan-blob", "temp-file"]
    assert f"sha256:{orphan}" in out
    assert "spr gc" in err
    code, _, _ = spr(capsys, "audit", "--strict")
    assert code == EXIT_INTEGRITY


def test_stray_file_in_the_store_is_a_warning(published: list[str]) -> None:
    shard = LocalBlobStore().root / "sha256" / "ab"
    shard.mkdir(parents=True, exist_ok=True)
    (shard / "notes.txt").write_text("hello")
    report = audit.audit()
    assert [p.kind for p in report.problems] == ["stray-file"]


# ---------------------------------------------------------------------------------------------
# gc


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_gc_is_a_dry_run_by_default_and_removes_only_unreferenced_files(
    published: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    store = LocalBlobStore()
    referenced = {sha for sha, _ in store.iter_blob_paths()}
    orphan = store.put_bytes(b"orphan")
    temp = store.root / "sha256" / f"{TMP_PREFIX}partial"
    temp.write_bytes(b"partial")
    age(store.path(orphan), 7200)
    age(temp, 7200)

    code, out, err = spr(capsys, "gc")
    assert code == 0
    assert f"would remove blob sha256:{orphan}" in out and "would remove temp file" in out
    assert "--yes" in err
    assert store.has(orphan) and temp.exists()

    code, out, _ = spr(capsys, "gc", "--yes", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["blobs"] == [orphan] and doc["dry_run"] is False and len(doc["temp_files"]) == 1
    assert not store.has(orphan) and not temp.exists()
    assert {sha for sha, _ in store.iter_blob_paths()} == referenced
    assert audit.audit().problems == ()


def test_gc_keeps_recent_leftovers_unless_grace_is_zero(published: list[str]) -> None:
    store = LocalBlobStore()
    orphan = store.put_bytes(b"a publish in flight wrote this a moment ago")
    report = audit.gc(dry_run=False)
    assert report.blobs == () and report.kept_recent == 1 and store.has(orphan)
    report = audit.gc(dry_run=False, grace_seconds=0)
    assert report.blobs == (orphan,) and not store.has(orphan)


def test_republishing_content_of_an_old_orphan_protects_it_from_gc(tmp_path: Path) -> None:
    """A publish that reuses an old unreferenced blob refreshes it, so gc's grace period covers it."""
    adapter = write_small_adapter(tmp_path / "a", 5)
    store = LocalBlobStore()
    sha, _ = store.put_file(adapter / "adapter_model.safetensors")  # as a killed publish would leave it
    age(store.path(sha), 7200)
    assert audit.gc(dry_run=True).blobs == (sha,)
    store.put_file(adapter / "adapter_model.safetensors")  # the next publish's store step
    assert audit.gc(dry_run=False).blobs == ()
    catalogue.publish(adapter, "x/y")
    assert audit.audit().problems == ()


def test_gc_refuses_a_negative_grace(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = spr(capsys, "gc", "--grace", "-1")
    assert code != 0 and "grace" in err


def test_audit_as_a_process_exits_5_on_damage(published: list[str]) -> None:
    LocalBlobStore().remove(weights_blob(published[2]))
    proc = subprocess.run(
        [sys.executable, "-m", "registry.cli.main", "audit"], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == EXIT_INTEGRITY, proc.stderr
    assert proc.stdout.startswith("error blob-missing sha256:")
    assert "1 error(s)" in proc.stderr


def test_gc_waits_for_a_publish_between_storing_blobs_and_committing() -> None:
    # A publish holds the store's lock (shared) from its first blob to its commit; gc takes it
    # exclusively, so it cannot delete a blob that is about to be referenced.
    import threading

    from registry.storage import LocalBlobStore

    store = LocalBlobStore()
    sha = store.put_bytes(b"an orphan old enough for any grace period")
    old = time.time() - 7200
    os.utime(store.path(sha), (old, old))
    result: dict[str, object] = {}
    with store.writing():
        worker = threading.Thread(target=lambda: result.setdefault("report", audit.gc(dry_run=False, grace_seconds=0)))
        worker.start()
        worker.join(timeout=1.0)
        assert worker.is_alive(), "gc ran while a publish held the store"
        assert store.has(sha)
    worker.join(timeout=30)
    report = result["report"]
    assert sha in report.blobs and not store.has(sha)  # type: ignore[attr-defined]
