"""The BlobStore protocol, exercised on its one implementation today, the local directory store.

Everything here goes through the protocol's methods (the few reads of the directory itself check
what a local store promises: read-only blobs, no temp file left behind).
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from pathlib import Path

import pytest

from registry.errors import DigestMismatchError, IntegrityError, NotFoundError
from registry.storage import BlobStat, BlobStore, LocalBlobStore, open_store
from registry.storage.local import TMP_PREFIX

pytestmark = pytest.mark.backend_independent


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read(store: BlobStore, key: str) -> bytes:
    with store.open_read(key) as f:
        return f.read()


def test_open_store_returns_a_local_store_that_implements_the_protocol(tmp_path: Path) -> None:
    default = open_store()
    assert isinstance(default, BlobStore) and isinstance(default, LocalBlobStore)
    assert default.location == str(Path(os.environ["SPR_HOME"]) / "blobs")
    named = open_store(tmp_path / "elsewhere")
    assert named.location == str(tmp_path / "elsewhere")


def test_put_file_stores_the_bytes_under_their_sha256(store: LocalBlobStore, tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)  # more than one hashing chunk
    source = tmp_path / "weights.bin"
    source.write_bytes(data)
    seen: list[int] = []
    key, size = store.put_file(source, seen.append)
    assert key == sha(data) and size == len(data) and sum(seen) == len(data)
    assert store.has(key) and read(store, key) == data
    stat = store.stat(key)
    assert stat is not None and stat.key == key and stat.size == len(data)
    assert not os.access(store.local_path(key), os.W_OK) or os.geteuid() == 0  # installed read-only
    assert list(store.iter_incomplete()) == []  # its temp file was renamed, not left behind
    # Storing the same bytes again is a no-op that returns the same key.
    assert store.put_file(source) == (key, len(data))
    assert [b.key for b in store.iter_blobs()] == [key]


def test_put_bytes_and_put_stream(store: LocalBlobStore) -> None:
    key = store.put_bytes(b"hello")
    assert key == sha(b"hello") and read(store, key) == b"hello"
    data = b"streamed bytes" * 1000
    assert store.put_stream(io.BytesIO(data), sha(data), where="a test") == len(data)
    assert read(store, sha(data)) == data


def test_put_stream_that_does_not_hash_to_its_name_stores_nothing(store: LocalBlobStore) -> None:
    claimed = sha(b"what the sender promised")
    with pytest.raises(IntegrityError) as info:
        store.put_stream(io.BytesIO(b"what arrived"), claimed, where="the wire")
    assert "the wire" in str(info.value) and sha(b"what arrived") in str(info.value)
    assert not store.has(claimed) and store.stat(claimed) is None
    assert list(store.iter_blobs()) == [] and list(store.iter_incomplete()) == []


def test_missing_blobs(store: LocalBlobStore, tmp_path: Path) -> None:
    key = sha(b"never stored")
    assert not store.has(key) and store.stat(key) is None and not store.reuse(key)
    with pytest.raises(NotFoundError):
        store.local_path(key)
    with pytest.raises(NotFoundError), store.open_read(key):
        pass
    with pytest.raises(NotFoundError):
        store.verify(key)
    with pytest.raises(NotFoundError):
        store.export(key, tmp_path / "out")
    store.remove(key)  # missing is fine


def test_local_path_export_and_verify(store: LocalBlobStore, tmp_path: Path) -> None:
    key = store.put_bytes(b"adapter weights")
    assert store.local_path(key).read_bytes() == b"adapter weights"
    store.verify(key)
    destination = tmp_path / "exported" / "adapter_model.safetensors"
    store.export(key, destination)
    assert destination.read_bytes() == b"adapter weights"
    assert [p.name for p in destination.parent.iterdir()] == [destination.name]  # no temp file left


def test_a_corrupted_blob_fails_verify_and_export(store: LocalBlobStore, tmp_path: Path) -> None:
    key = store.put_bytes(b"adapter weights")
    path = store.local_path(key)
    os.chmod(path, 0o644)
    path.write_bytes(b"adapter weightz")  # a flipped byte on disk
    with pytest.raises(DigestMismatchError) as info:
        store.verify(key)
    assert info.value.fields == {"expected": key, "found": sha(b"adapter weightz")}
    destination = tmp_path / "out" / "weights"
    with pytest.raises(DigestMismatchError):
        store.export(key, destination)
    assert not destination.exists() and list(destination.parent.iterdir()) == []
    assert read(store, key) == b"adapter weightz"  # open_read does not verify: it says so


def test_reuse_refreshes_a_blob_for_gc(store: LocalBlobStore) -> None:
    key = store.put_bytes(b"old orphan")
    old = time.time() - 7200
    os.utime(store.local_path(key), (old, old))
    before = store.stat(key)
    assert before is not None and before.mtime < time.time() - 3600
    assert store.reuse(key)
    after = store.stat(key)
    assert after is not None and after.mtime > time.time() - 60


def test_listing_blobs_leftovers_and_strays(store: LocalBlobStore) -> None:
    keys = sorted(store.put_bytes(bytes([i])) for i in range(5))
    base = Path(store.location) / "sha256"
    (base / f"{TMP_PREFIX}killed").write_bytes(b"partial")
    (base / keys[0][:2] / f"{TMP_PREFIX}killed-too").write_bytes(b"partial!")
    (base / "ab").mkdir(exist_ok=True)
    (base / "ab" / "notes.txt").write_text("hello")
    wrong_shard = "00" if keys[1][:2] != "00" else "01"
    (base / wrong_shard).mkdir(exist_ok=True)
    (base / wrong_shard / keys[1]).write_bytes(b"\x01")  # blob-named, but in the wrong shard

    blobs = list(store.iter_blobs())
    assert [b.key for b in blobs] == keys and all(isinstance(b, BlobStat) and b.size == 1 for b in blobs)
    incomplete = sorted(store.iter_incomplete(), key=lambda b: b.key)
    assert sorted(b.key for b in incomplete) == sorted(
        [f"sha256/{TMP_PREFIX}killed", f"sha256/{keys[0][:2]}/{TMP_PREFIX}killed-too"]
    )
    assert {b.size for b in incomplete} == {7, 8}
    assert all((Path(store.location) / b.key).is_file() for b in incomplete)  # keys are relative to location
    assert sorted(b.key for b in store.iter_stray()) == sorted(
        ["sha256/ab/notes.txt", f"sha256/{wrong_shard}/{keys[1]}"]
    )

    for leftover in incomplete:
        store.remove_incomplete(leftover.key)
    assert list(store.iter_incomplete()) == []
    store.remove(keys[2])
    assert [b.key for b in store.iter_blobs()] == keys[:2] + keys[3:]
    assert len(list(store.iter_stray())) == 2  # gc's deletions never touch strays


def test_remove_incomplete_refuses_anything_but_a_leftover_inside_the_store(
    store: LocalBlobStore, tmp_path: Path
) -> None:
    key = store.put_bytes(b"a real blob")
    outside = tmp_path / f"{TMP_PREFIX}outside"
    outside.write_bytes(b"not the store's")
    beside = tmp_path / "blobs" / f"{TMP_PREFIX}beside-the-shards"
    beside.write_bytes(b"not under sha256/")
    for key_given in (
        f"../{TMP_PREFIX}outside",
        f"sha256/../../{TMP_PREFIX}outside",
        str(outside),  # an absolute path
        f"{TMP_PREFIX}beside-the-shards",
        f"sha256/{key[:2]}/{key}",  # a complete blob is not a leftover
        "sha256",
    ):
        store.remove_incomplete(key_given)
    assert outside.exists() and beside.exists() and store.has(key)
    store.remove_incomplete(f"sha256/{TMP_PREFIX}never-existed")  # missing is fine


def test_a_directory_under_a_blobs_name_is_not_a_blob(store: LocalBlobStore) -> None:
    key = sha(b"not a file")
    (Path(store.location) / "sha256" / key[:2] / key).mkdir(parents=True)
    assert not store.has(key) and store.stat(key) is None
    assert list(store.iter_blobs()) == []
    assert [b.key for b in store.iter_stray()] == [f"sha256/{key[:2]}/{key}"]


def test_writing_and_collecting_locks(store: LocalBlobStore) -> None:
    import threading

    order: list[str] = []

    def collect() -> None:
        with store.collecting():
            order.append("gc")

    with store.writing(), store.writing():  # writers share the lock
        worker = threading.Thread(target=collect)
        worker.start()
        worker.join(timeout=0.5)
        assert worker.is_alive() and order == []  # gc waits for the writers
        order.append("writers done")
    worker.join(timeout=10)
    assert order == ["writers done", "gc"]
