"""S3BlobStore against a real S3 server (moto in server mode on 127.0.0.1, over HTTP).

Requests are counted with botocore's own event hooks on the store's real client (nothing is
mocked): that is how "not uploaded again" and "the second local_path downloads nothing" are shown.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from s3_fixtures import *  # noqa: F403  (the s3_server and s3 fixtures)
from s3_fixtures import FaultProxy, S3Env

from registry.errors import (
    BlobInUseError,
    BlobStoreError,
    DigestMismatchError,
    IntegrityError,
    NotFoundError,
    UsageError,
)
from registry.storage import BlobStore
from registry.storage.s3 import MIB, S3BlobStore, parse_s3_url

pytestmark = pytest.mark.backend_independent


def counted(store: S3BlobStore) -> Counter[str]:
    """Count the API calls the store's client makes, by operation name."""
    calls: Counter[str] = Counter()

    def hook(model: Any, **_: Any) -> None:
        calls[model.name] += 1

    store._client.meta.events.register("before-call.s3", hook)
    return calls


def make(s3: S3Env, **kw: Any) -> S3BlobStore:
    kw.setdefault("part_size", 5 * MIB)
    kw.setdefault("max_concurrency", 3)
    return S3BlobStore(s3.url, **kw)


def write(path: Path, size: int, seed: int = 0) -> tuple[Path, str]:
    data = (hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1))[:size]
    data = bytes(b ^ (i % 251) for i, b in enumerate(data[:4096])) + data[4096:]
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def test_url_parsing() -> None:
    assert parse_s3_url("s3://bucket/a/b/") == ("bucket", "a/b")
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    for bad in ("bucket/x", "s3://B!/x", "s3://bucket/a/../b", "s3://bucket/a//x", "s3://ab"):
        with pytest.raises(UsageError):
            parse_s3_url(bad)


def test_round_trip_small_and_multipart(s3: S3Env, tmp_path: Path) -> None:
    store = make(s3)
    assert isinstance(store, BlobStore)
    calls = counted(store)
    checksums: list[tuple[str, bytes]] = []
    store._client.meta.events.register(
        "before-send.s3", lambda request, **_: checksums.append(
            (request.method, request.headers.get("x-amz-checksum-sha256") or b"")
        ),
    )
    small, small_sha = write(tmp_path / "small", 1000, seed=1)
    large, large_sha = write(tmp_path / "large", 12 * MIB + 123, seed=2)
    assert store.put_file(small) == (small_sha, 1000)
    assert store.put_file(large) == (large_sha, 12 * MIB + 123)
    assert calls["PutObject"] == 1
    assert calls["UploadPart"] == 3  # 5 + 5 + 2 MiB parts
    assert calls["CompleteMultipartUpload"] == 1

    assert sorted(s3.keys("team/sha256/")) == sorted(
        [f"team/sha256/{small_sha[:2]}/{small_sha}", f"team/sha256/{large_sha[:2]}/{large_sha}"]
    )
    # S3's own checksum goes with every write: the whole object's for a single put, each part's for
    # a multipart upload. (moto neither checks nor stores it; AWS S3 and MinIO refuse a mismatch.)
    puts = [c for m, c in checksums if m == "PUT"]
    assert len(puts) == 4 and puts[0] == base64.b64encode(bytes.fromhex(small_sha))
    parts = [large.read_bytes()[i : i + 5 * MIB] for i in range(0, large.stat().st_size, 5 * MIB)]
    assert sorted(puts[1:]) == sorted(base64.b64encode(hashlib.sha256(p).digest()) for p in parts)
    assert store.has(large_sha) and not store.has("0" * 64)
    st = store.stat(large_sha)
    assert st is not None and st.size == 12 * MIB + 123
    assert [b.key for b in store.iter_blobs()] == sorted([small_sha, large_sha], key=lambda s: (s[:2], s))

    with store.open_read(large_sha) as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == large_sha
    store.verify(large_sha)
    out = tmp_path / "out" / "adapter_model.safetensors"
    store.export(large_sha, out)
    assert out.read_bytes() == large.read_bytes()
    assert oct(out.stat().st_mode & 0o777) == "0o644"
    assert store.put_bytes(b"hello") == hashlib.sha256(b"hello").hexdigest()
    store.remove(small_sha)
    assert not store.has(small_sha)
    store.remove(small_sha)  # missing is fine


def test_existing_blob_is_not_uploaded_again(s3: S3Env, tmp_path: Path) -> None:
    first, other = make(s3), make(s3)  # two machines, one bucket
    path, sha = write(tmp_path / "w", 7 * MIB, seed=3)
    first.put_file(path)
    calls = counted(other)
    assert other.put_file(path) == (sha, 7 * MIB)
    assert other.reuse(sha)
    with open(path, "rb") as fh:
        assert other.put_stream(fh, sha, where="test") == 7 * MIB
    assert calls["PutObject"] == calls["UploadPart"] == calls["CreateMultipartUpload"] == 0
    assert calls["HeadObject"] == 3


def test_conditional_put_loses_a_race_without_overwriting(s3: S3Env, tmp_path: Path) -> None:
    """Another writer stores the same blob between this one's check and its put: If-None-Match: * refuses."""
    store = make(s3)
    data = b"raced bytes"
    sha = hashlib.sha256(data).hexdigest()
    sent_headers: list[dict[str, str]] = []

    def racer(model: Any, params: dict[str, Any], **_: Any) -> None:
        if model.name == "PutObject" and not sent_headers:
            s3.client.put_object(Bucket=s3.bucket, Key=store.key(sha), Body=data)
            sent_headers.append(dict(params.get("headers", {})))

    store._client.meta.events.register("before-call.s3.PutObject", racer)
    before = []

    def seen(request: Any, **_: Any) -> None:
        before.append(request.headers.get("If-None-Match"))

    store._client.meta.events.register("before-send.s3.PutObject", seen)
    assert store.put_bytes(data) == sha
    assert before == [b"*"] or before == ["*"]  # the put was conditional, and the 412 was taken as success
    assert store._conditional
    store.verify(sha)
    # moto enforces the condition, so the branch above really ran:
    with pytest.raises(Exception, match=r"PreconditionFailed|412"):
        s3.client.put_object(Bucket=s3.bucket, Key=store.key(sha), Body=data, IfNoneMatch="*")


@pytest.mark.parametrize("size", [100, 11 * MIB])
def test_bytes_that_do_not_hash_to_the_key_store_nothing(s3: S3Env, tmp_path: Path, size: int) -> None:
    store = make(s3)
    path, sha = write(tmp_path / "x", size, seed=4)
    wrong = "ab" * 32
    with open(path, "rb") as fh, pytest.raises(IntegrityError, match="hashes to sha256:" + sha):
        store.put_stream(fh, wrong, where="a backup")
    assert s3.keys("team/") == []
    assert s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []
    with open(path, "rb") as fh:
        assert store.put_stream(fh, sha, where="a backup") == size  # the retry with the right bytes works


def test_local_path_is_a_verified_cache_and_the_second_call_downloads_nothing(s3: S3Env, tmp_path: Path) -> None:
    publisher = make(s3)
    path, sha = write(tmp_path / "w", 6 * MIB, seed=5)
    publisher.put_file(path)

    store = make(s3, cache_dir=tmp_path / "other-machine-cache")  # a machine that did not publish it
    calls = counted(store)
    cached = store.local_path(sha)
    assert cached == tmp_path / "other-machine-cache" / "sha256" / sha[:2] / sha
    assert cached.read_bytes() == path.read_bytes()
    assert calls["GetObject"] == 1
    assert publisher.cache_path(sha) == Path(os.environ["SPR_HOME"]) / "cache" / "blobs" / "sha256" / sha[:2] / sha
    s3.client.delete_object(Bucket=s3.bucket, Key=store.key(sha))  # the bucket can no longer serve it
    assert store.local_path(sha) == cached
    out = tmp_path / "exported"
    store.export(sha, out)  # export reads the verified cached copy, re-hashing it
    assert out.read_bytes() == path.read_bytes()
    assert calls["GetObject"] == 1
    store.verify(sha)  # the bytes this machine uses: the cached copy, re-hashed
    with pytest.raises(NotFoundError, match="missing from the blob store s3://"):
        store.verify_remote(sha)  # the bucket's bytes (spr audit, spr blobs verify)
    os.chmod(cached, 0o644)
    cached.write_bytes(b"changed on this machine")
    with pytest.raises(DigestMismatchError, match=f"the cached copy {cached} of blob sha256:{sha} was changed"):
        store.verify(sha)


def test_an_object_whose_bytes_do_not_hash_to_its_key(s3: S3Env, tmp_path: Path) -> None:
    path, sha = write(tmp_path / "w", 3000, seed=6)
    make(s3).put_file(path)  # the publisher's cache holds its verified copy; another machine reads the bucket
    store = make(s3, cache_dir=tmp_path / "other-machine-cache")
    s3.client.put_object(Bucket=s3.bucket, Key=store.key(sha), Body=b"tampered" * 100)  # behind spr's back
    with pytest.raises(DigestMismatchError, match=f"blob sha256:{sha} in s3://.* was changed"):
        store.verify(sha)
    dest = tmp_path / "out" / "f"
    with pytest.raises(DigestMismatchError, match="refusing to use it"):
        store.export(sha, dest)
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == []
    with pytest.raises(IntegrityError):
        store.local_path(sha)
    assert not store.cache_path(sha).exists() and list(store.cache_path(sha).parent.iterdir()) == []
    # The fix the message names: remove the damaged object and store the bytes again.
    store.remove(sha)
    store.put_file(path)
    store.verify(sha)
    assert store.local_path(sha).read_bytes() == path.read_bytes()


def test_wrong_bucket(s3: S3Env, tmp_path: Path) -> None:
    store = S3BlobStore("s3://no-such-bucket-here/x")
    path, _ = write(tmp_path / "w", 10)
    with pytest.raises(NotFoundError) as info:
        store.put_file(path)
    assert str(info.value) == (
        f"bucket 'no-such-bucket-here' does not exist at {s3.endpoint}; create it (aws s3 mb) or fix "
        "SPR_BLOB_URL / --blob-url and AWS_ENDPOINT_URL"
    )
    with pytest.raises(NotFoundError, match="does not exist"):
        list(store.iter_blobs())


def test_missing_credentials(s3: S3Env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = make(s3)
    path, _ = write(tmp_path / "w", 10)
    with pytest.raises(BlobStoreError) as info:
        store.put_file(path)
    assert "no AWS credentials found for s3://" in str(info.value)
    assert "AWS_ACCESS_KEY_ID" in str(info.value) and "\n" not in str(info.value)
    assert s3.keys() == []


def test_credentials_are_never_in_messages(s3: S3Env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    store = S3BlobStore("s3://no-such-bucket-here/x")
    with pytest.raises(NotFoundError) as info:
        store.has("0" * 64) or list(store.iter_blobs())
    text = json.dumps(info.value.to_dict()) + str(info.value)
    assert "spr-test-secret" not in text and "spr-test-key" not in text


def test_network_error_mid_upload_then_retry(s3: S3Env, tmp_path: Path) -> None:
    proxy = FaultProxy(s3.endpoint)
    store = make(s3, endpoint_url=proxy.endpoint, max_concurrency=1)
    path, sha = write(tmp_path / "w", 16 * MIB, seed=7)
    sent = []

    def progress(n: int) -> None:
        sent.append(n)
        if len(sent) == 2:
            proxy.down()  # the network goes away while parts are being sent

    try:
        with pytest.raises(BlobStoreError) as info:
            store.put_file(path, progress=progress)
        assert f"the S3 endpoint {proxy.endpoint} failed while uploading blob sha256:{sha}" in str(info.value)
        assert "run the command again" in str(info.value)
        assert not S3BlobStore(s3.url).has(sha)  # nothing half-written under the key
        proxy.up()
        left = list(S3BlobStore(s3.url).iter_incomplete())  # the abort could not reach the server either
        assert [b.key.split("?")[0] for b in left] == [f"sha256/{sha[:2]}/{sha}"]
        assert store.put_file(path) == (sha, 16 * MIB)  # the retry succeeds
        store.verify(sha)
        for leftover in left:
            store.remove_incomplete(leftover.key)
        assert list(store.iter_incomplete()) == []
    finally:
        proxy.down()


def test_truncated_download(s3: S3Env, tmp_path: Path) -> None:
    path, sha = write(tmp_path / "w", 2 * MIB, seed=8)
    S3BlobStore(s3.url).put_file(path)
    proxy = FaultProxy(s3.endpoint)
    store = make(s3, endpoint_url=proxy.endpoint, cache_dir=tmp_path / "other-machine-cache")
    proxy.cut_responses_after(300_000)  # headers and the first ~300 kB of the body, then the socket closes
    dest = tmp_path / "out" / "f"
    try:
        with pytest.raises(BlobStoreError, match=r"was cut short|failed while downloading") as info:
            store.export(sha, dest)
        assert "run the command again" in str(info.value)
        assert not dest.parent.exists() or list(dest.parent.iterdir()) == []
        with pytest.raises(BlobStoreError):
            store.local_path(sha)
        assert not store.cache_path(sha).exists()
        proxy.cut_responses_after(None)
        store.export(sha, dest)  # the retry succeeds
        assert dest.read_bytes() == path.read_bytes()
    finally:
        proxy.down()


def test_access_denied(s3: S3Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials that may read but not write: moto's server enforces IAM once told to (reset-auth)."""
    import boto3
    import requests

    iam = boto3.client("iam", endpoint_url=s3.endpoint, region_name="us-east-1",
                       aws_access_key_id="spr-test-key", aws_secret_access_key="spr-test-secret")
    user = f"reader-{s3.bucket}"
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="read-only", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": "*"}],
    }))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    path, sha = write(tmp_path / "w", 100, seed=9)
    S3BlobStore(s3.url).put_file(path)
    other, sha2 = write(tmp_path / "v", 100, seed=19)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    store = make(s3)
    previous = requests.post(f"{s3.endpoint}/moto-api/reset-auth", data=b"0", timeout=10).json()
    try:
        assert store.local_path(sha).read_bytes() == path.read_bytes()  # reading is allowed
        with pytest.raises(BlobStoreError) as info:
            store.put_file(other)
    finally:
        requests.post(f"{s3.endpoint}/moto-api/reset-auth",
                      data=str(previous["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"]).encode(), timeout=10)
    text = str(info.value)
    # (moto answers the HEAD before the upload with 403 already; AWS answers 404 there when the
    # caller may ListBucket, and 403 on the PutObject: either way this one line)
    assert re.match(rf"access denied to {s3.url} while (checking|uploading) blob sha256:{sha2} \(", text), text
    assert "s3:PutObject" in text and key["SecretAccessKey"] not in text and "\n" not in text


def test_incomplete_uploads_and_stale_markers(s3: S3Env, tmp_path: Path) -> None:
    store = make(s3, pending_ttl_seconds=1.0)
    sha = "cd" * 32
    up = s3.client.create_multipart_upload(Bucket=s3.bucket, Key=store.key(sha))["UploadId"]
    s3.client.put_object(Bucket=s3.bucket, Key="team/pending/" + "e" * 32 + ".json", Body=b"{}")
    s3.client.put_object(Bucket=s3.bucket, Key="team/notes.txt", Body=b"not spr's")
    keys = [b.key for b in store.iter_incomplete()]
    assert keys == [f"sha256/cd/{sha}?uploadId={up}"]  # the marker is live for 1 s
    time.sleep(2.1)
    keys = [b.key for b in store.iter_incomplete()]
    assert keys == ["pending/" + "e" * 32 + ".json", f"sha256/cd/{sha}?uploadId={up}"]
    assert [b.key for b in store.iter_stray()] == ["notes.txt"]
    store.remove_incomplete("../notes.txt")  # not a leftover: ignored
    store.remove_incomplete("notes.txt")
    for k in keys:
        store.remove_incomplete(k)
    assert list(store.iter_incomplete()) == []
    assert s3.keys("team/") == ["team/notes.txt"]


# ---------------------------------------------------------------------------------------------
# gc across machines: pending markers


def markers(s3: S3Env) -> list[dict[str, Any]]:
    out = []
    for key in s3.keys("team/pending/"):
        out.append(json.loads(s3.client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()))
    return out


def test_a_writer_names_its_blobs_in_a_pending_marker_until_it_leaves(s3: S3Env, tmp_path: Path) -> None:
    store = make(s3)
    path, sha = write(tmp_path / "w", 6 * MIB, seed=10)
    with store.writing():
        assert markers(s3) == []  # created with the first blob, not before
        store.put_file(path)
        (marker,) = markers(s3)
        assert marker["shas"] == [sha]
        assert marker["uploads"][0].startswith(f"sha256/{sha[:2]}/{sha}?uploadId=")
    assert markers(s3) == []


def test_gc_on_another_machine_keeps_what_a_live_marker_names(s3: S3Env, tmp_path: Path) -> None:
    writer, collector = make(s3), make(s3, cache_dir=tmp_path / "other-cache")
    path, sha = write(tmp_path / "w", 5000, seed=11)
    writer.put_file(path)  # an orphan from an earlier, abandoned publish
    with writer.writing():
        assert writer.reuse(sha)  # about to reference it in a catalogue row
        with collector.collecting():
            assert [b.key for b in collector.iter_blobs()] == [sha]
            with pytest.raises(BlobInUseError):
                collector.remove(sha)  # gc decided it is unreferenced; the marker says otherwise
        assert writer.has(sha)
    with collector.collecting():
        list(collector.iter_blobs())
        collector.remove(sha)  # the writer is gone (and committed nothing here): now it may go
    assert not writer.has(sha)


def test_gc_keeps_a_blob_rewritten_after_it_was_listed(s3: S3Env, tmp_path: Path) -> None:
    store, collector = make(s3), make(s3)
    data = b"x" * 100
    sha = store.put_bytes(data)
    with collector.collecting():
        list(collector.iter_blobs())
        time.sleep(1.1)  # LastModified has one-second resolution
        s3.client.put_object(Bucket=s3.bucket, Key=store.key(sha), Body=data)  # stored again meanwhile
        with pytest.raises(BlobInUseError):
            collector.remove(sha)
    assert store.has(sha)


def test_the_heartbeat_keeps_a_long_writer_live(s3: S3Env, tmp_path: Path) -> None:
    writer = make(s3, heartbeat_seconds=0.5, pending_ttl_seconds=2.0)
    collector = make(s3, pending_ttl_seconds=2.0)
    sha = writer.put_bytes(b"long publish")
    with writer.writing():
        writer.reuse(sha)
        time.sleep(4.5)  # longer than the ttl: only the heartbeat keeps the marker fresh
        assert list(collector.iter_incomplete()) == []
        with collector.collecting(), pytest.raises(BlobInUseError):
            collector.remove(sha)
        assert writer.has(sha)


KILLED_WRITER = """
import sys, time
from pathlib import Path
from registry.storage.s3 import S3BlobStore
store = S3BlobStore(sys.argv[1], heartbeat_seconds=0.5)
with store.writing():
    store.put_file(Path(sys.argv[2]))
    print("stored", flush=True)
    time.sleep(60)
"""


def test_a_killed_writers_marker_goes_stale_and_gc_then_cleans_up(s3: S3Env, tmp_path: Path) -> None:
    import subprocess
    import sys

    path, sha = write(tmp_path / "w", 2000, seed=12)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, s3.url, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "stored"
        collector = make(s3, pending_ttl_seconds=2.0)
        with collector.collecting():
            list(collector.iter_blobs())
            with pytest.raises(BlobInUseError):
                collector.remove(sha)
        assert collector.has(sha)  # the writer is alive
    finally:
        proc.kill()  # kill -9: no cleanup runs
        proc.wait()
    assert len(markers(s3)) == 1
    time.sleep(3.1)  # the heartbeat stopped: after the ttl the marker is stale
    (stale,) = list(collector.iter_incomplete())
    assert stale.key.startswith("pending/")
    with collector.collecting():
        list(collector.iter_blobs())
        collector.remove(sha)
        collector.remove_incomplete(stale.key)
    assert not collector.has(sha) and markers(s3) == []


def test_a_blob_lost_to_a_race_is_reported_on_leaving_and_a_rerun_restores_it(s3: S3Env, tmp_path: Path) -> None:
    store = make(s3)
    path, sha = write(tmp_path / "w", 3000, seed=13)
    store.put_file(path)
    with pytest.raises(IntegrityError) as info, store.writing():
        assert store.reuse(sha)
        # The one window left: a gc elsewhere read the markers just before this writer named the
        # blob, and deletes it just after this writer found it.
        s3.client.delete_object(Bucket=s3.bucket, Key=store.key(sha))
    assert str(info.value).startswith(f"blob sha256:{sha} was removed from {s3.url} while this command was recording")
    assert "run the same command again" in str(info.value)
    assert markers(s3) == []
    with store.writing():  # the re-run
        assert not store.reuse(sha)
        store.put_file(path)
    store.verify(sha)


# ---------------------------------------------------------------------------------------------
# migrate and verify (the library side of 'spr blobs migrate' / 'spr blobs verify')


def test_copy_a_local_store_into_a_bucket_verified_and_resumable(s3: S3Env, tmp_path: Path) -> None:
    from registry.storage import LocalBlobStore
    from registry.storage.migrate import copy_blobs, verify_blobs

    local = LocalBlobStore(tmp_path / "blobs")
    shas = [local.put_bytes(f"blob {i}".encode() * 1000) for i in range(5)]
    big, big_sha = write(tmp_path / "big", 6 * MIB, seed=20)
    local.put_file(big)
    bucket = make(s3)
    # An interrupted earlier run: two blobs already copied.
    for sha in shas[:2]:
        with local.open_read(sha) as fh:
            bucket.put_stream(fh, sha, where="test")
    report = copy_blobs(local, bucket)
    assert (report.copied, report.skipped, report.damaged) == (4, 2, ())
    assert sorted(b.key for b in bucket.iter_blobs()) == sorted([*shas, big_sha])
    again = copy_blobs(local, bucket)
    assert (again.copied, again.skipped) == (0, 6)
    assert verify_blobs(bucket).problems == ()

    # A damaged source blob is reported and not copied; the rest still is.
    damaged = local.put_bytes(b"will be damaged")
    os.chmod(local.path(damaged), 0o644)
    local.path(damaged).write_bytes(b"damaged!")
    fresh_bucket = S3BlobStore(s3.url + "-2")  # another prefix of the same bucket
    report = copy_blobs(local, fresh_bucket)
    assert report.damaged == (damaged,) and report.copied == 6
    assert not fresh_bucket.has(damaged)

    s3.client.put_object(Bucket=s3.bucket, Key=bucket.key(shas[0]), Body=b"tampered")
    found = verify_blobs(bucket)
    assert found.checked == 5 and len(found.problems) == 1 and found.problems[0].startswith(f"sha256:{shas[0]}: ")
    missing = verify_blobs(bucket, ["0" * 64])
    assert missing.problems == (f"sha256:{'0' * 64}: missing from {s3.url}",)
