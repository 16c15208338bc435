"""``spr backup`` / ``spr restore``: a consistent copy while others write, restored and re-audited.

SQLite catalogues only (PostgreSQL is backed up with pg_dump + the blob directory; see README).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from ops_support import WORKER, alias_history_problems, switch_home, write_small_adapter

from registry import catalogue
from registry import ops as audit
from registry.cli.main import run
from registry.digest import sha256_file
from registry.errors import IntegrityError, NotFoundError, UsageError
from registry.storage import LocalBlobStore

TESTS_DIR = str(Path(__file__).parent)
NAME = "team/coach"


def publish_some(tmp_path: Path, n: int = 3) -> None:
    for seed in range(n):
        catalogue.publish(write_small_adapter(tmp_path / f"a{seed}", seed), NAME)
    catalogue.set_alias(f"{NAME}@1", "prod")


def restored_catalogue_is_sound() -> audit.AuditReport:
    report = audit.audit()
    assert report.problems == (), [p.line() for p in report.problems]
    return report


@pytest.mark.sqlite_only
def test_backup_and_restore_round_trip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    publish_some(tmp_path)
    before = catalogue.get_version(f"{NAME}@prod")
    events_before = catalogue.events()
    archive = tmp_path / "backup.tar"

    capsys.readouterr()
    assert run(["backup", str(archive), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["versions"] == 3 and info["blobs"] == 4 and info["schema"]
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert names[:2] == ["spr-backup.json", "catalogue.sqlite"]
    assert all(n.startswith("blobs/sha256/") for n in names[2:]) and len(names) == 6

    switch_home(monkeypatch, tmp_path / "restored-home")
    assert run(["restore", str(archive)]) == 0
    out = capsys.readouterr().out
    assert "3 versions" in out
    report = restored_catalogue_is_sound()
    assert report.versions == 3
    after = catalogue.get_version(f"{NAME}@prod")
    assert (after.digest, after.files, after.number) == (before.digest, before.files, before.number)
    assert [e.hash for e in catalogue.events()] == [e.hash for e in events_before]
    exported = catalogue.export(f"{NAME}@2", tmp_path / "out")  # bytes verified on the way out
    assert (exported / "adapter_model.safetensors").is_file()
    # The restored catalogue is a working one.
    assert catalogue.publish(write_small_adapter(tmp_path / "new", 50), NAME).version.number == 4


@pytest.mark.sqlite_only
@pytest.mark.slow
def test_backup_taken_during_concurrent_writes_restores_to_a_catalogue_that_audits_clean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalogue.publish(write_small_adapter(tmp_path / "first", 1), NAME)  # the file exists before writers start
    procs = []
    for w in range(2):
        procs.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, NAME, str(1000 * (w + 1)), "30", str(tmp_path / f"w{w}"), TESTS_DIR, "prod"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()

    backups = []
    deadline = time.monotonic() + 120
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        archive = tmp_path / f"backup-{len(backups)}.tar"
        backups.append((audit.backup(archive), archive))
        time.sleep(0.2)
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
    assert len(backups) >= 2, "the writers finished before a backup could overlap them"
    print(f"{len(backups)} backups at {[b.versions for b, _ in backups]} versions")
    assert any(1 < b.versions < 61 for b, _ in backups), [b.versions for b, _ in backups]

    for i, (info, archive) in enumerate(backups):
        switch_home(monkeypatch, tmp_path / f"restored-{i}")
        restored = audit.restore(archive)
        assert restored.versions == info.versions
        report = restored_catalogue_is_sound()
        assert report.versions == info.versions
        numbers = sorted(v.number for v in catalogue.versions(NAME))
        assert numbers == list(range(1, info.versions + 1))
        assert alias_history_problems(catalogue.events(NAME), "prod") == []


@pytest.mark.sqlite_only
def test_backup_refuses_to_overwrite_and_to_copy_damage(tmp_path: Path) -> None:
    publish_some(tmp_path, 1)
    existing = tmp_path / "exists.tar"
    existing.write_bytes(b"keep me")
    with pytest.raises(UsageError, match="already exists"):
        audit.backup(existing)
    assert existing.read_bytes() == b"keep me"

    sha = next(f.sha256 for f in catalogue.get_version(NAME).files if f.path == "adapter_model.safetensors")
    LocalBlobStore().remove(sha)
    with pytest.raises(IntegrityError, match="spr audit"):
        audit.backup(tmp_path / "b.tar")
    assert not (tmp_path / "b.tar").exists()
    assert not list(tmp_path.glob(".spr-backup-*")), "temp files left behind"


def test_backup_and_restore_refuse_postgresql_with_a_pointer_to_pg_dump(tmp_path: Path) -> None:
    url = "postgresql+psycopg://someone:secret@db.example/catalogue"
    with pytest.raises(UsageError, match="pg_dump") as info:
        audit.backup(tmp_path / "b.tar", db=url)
    assert "secret" not in str(info.value)
    with pytest.raises(UsageError, match="pg_dump"):
        audit.restore(tmp_path / "b.tar", db=url)


@pytest.mark.sqlite_only
def test_restore_never_overwrites_a_catalogue(tmp_path: Path) -> None:
    publish_some(tmp_path, 1)
    archive = tmp_path / "b.tar"
    audit.backup(archive)
    with pytest.raises(UsageError, match="never overwrites"):
        audit.restore(archive)
    with pytest.raises(NotFoundError):
        audit.restore(tmp_path / "missing.tar", db=f"sqlite:///{tmp_path / 'new.sqlite'}")


def _rewrite(archive: Path, out: Path, change) -> Path:  # type: ignore[no-untyped-def]
    """Copy a backup tar, letting ``change(name, data)`` return replacement members (name, data, type)."""
    with tarfile.open(archive) as src, tarfile.open(out, "w") as dst:
        for member in src:
            data = src.extractfile(member).read()  # type: ignore[union-attr]
            for name, new_data, kind in change(member.name, data):
                info = tarfile.TarInfo(name)
                info.size = len(new_data)
                if kind == "symlink":
                    info.type = tarfile.SYMTYPE
                    info.linkname = "/etc/passwd"
                    info.size = 0
                    dst.addfile(info)
                else:
                    dst.addfile(info, io.BytesIO(new_data))
    return out


@pytest.mark.sqlite_only
@pytest.mark.parametrize(
    "damage, message",
    [
        ("blob-bytes", "hashes to"),
        ("traversal", "unexpected member"),
        ("symlink", "not a regular file"),
        ("catalogue-bytes", "sha256 differs"),
        ("not-a-backup", "unknown backup format"),
    ],
)
def test_restore_refuses_a_damaged_or_hostile_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str, message: str
) -> None:
    publish_some(tmp_path, 1)
    archive = tmp_path / "b.tar"
    audit.backup(archive)

    def change(name: str, data: bytes):  # type: ignore[no-untyped-def]
        if damage == "blob-bytes" and name.startswith("blobs/"):
            return [(name, data[:-1] + bytes([data[-1] ^ 1]), "file")]
        if damage == "traversal" and name == "catalogue.sqlite":
            return [(name, data, "file"), ("../../escaped.txt", b"owned", "file")]
        if damage == "symlink" and name == "catalogue.sqlite":
            return [(name, data, "file"), ("blobs/sha256/ab/" + "ab" * 32, b"", "symlink")]
        if damage == "catalogue-bytes" and name == "catalogue.sqlite":
            return [(name, data.replace(b"team", b"TEAM"), "file")]
        if damage == "not-a-backup" and name == "spr-backup.json":
            return [(name, b'{"format": "something else"}', "file")]
        return [(name, data, "file")]

    bad = _rewrite(archive, tmp_path / "bad.tar", change)
    home = tmp_path / "restore-here"
    switch_home(monkeypatch, home)
    with pytest.raises(IntegrityError, match=message):
        audit.restore(bad)
    assert not (home / "catalogue.sqlite").exists()
    assert not (tmp_path / "escaped.txt").exists() and not (home / "escaped.txt").exists()
    store = LocalBlobStore()
    for sha, path in store.iter_blob_paths():  # whatever was installed before the refusal is whole and verified
        assert sha256_file(path)[0] == sha
    assert list(store.iter_temp_files()) == []


@pytest.mark.sqlite_only
@pytest.mark.parametrize("damage", ["gzip-truncated", "gzip-whole", "cut-mid-blob", "cut-at-member-boundary", "cut-in-header"])
def test_restore_refuses_a_compressed_or_truncated_backup_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    import gzip

    publish_some(tmp_path, 2)
    archive = tmp_path / "b.tar"
    audit.backup(archive)
    data = archive.read_bytes()
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
    last_blob = members[-1]
    assert last_blob.name.startswith("blobs/") and last_blob.size > 1024
    if damage == "gzip-truncated":
        bad = gzip.compress(data)[: len(gzip.compress(data)) // 2]
    elif damage == "gzip-whole":
        bad = gzip.compress(data)
    elif damage == "cut-mid-blob":
        bad = data[: last_blob.offset_data + last_blob.size // 2]
    elif damage == "cut-at-member-boundary":
        bad = data[: last_blob.offset]  # tarfile just sees a shorter archive: the blob count must catch it
    else:
        bad = data[: last_blob.offset + 100]  # inside the last member's 512-byte header
    damaged = tmp_path / "damaged.tar"
    damaged.write_bytes(bad)
    home = tmp_path / "restore-here"
    switch_home(monkeypatch, home)
    capsys.readouterr()
    assert run(["restore", str(damaged)]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    expected = "compressed" if damage.startswith("gzip") else "damaged or truncated"
    assert err.startswith("error: ") and expected in err, err
    assert not (home / "catalogue.sqlite").exists()
    assert not list(home.glob("**/*.sqlite")) and not list(home.glob("**/.spr-restore-*"))
    store = LocalBlobStore()
    for sha, path in store.iter_blob_paths():  # whatever was installed before the refusal is whole and verified
        assert sha256_file(path)[0] == sha
    assert list(store.iter_temp_files()) == []
