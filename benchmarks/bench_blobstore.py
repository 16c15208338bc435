"""Blob store on S3 vs local vs the plain client, on the 199 MB benchmark adapter (issue 15).

Starts a moto S3 server in its own process on 127.0.0.1 (a real HTTP server, like MinIO would
be), then measures, in one run, with the page cache warm and medians over ``--runs``:

- plain boto3 ``upload_file`` / ``download_file`` of the adapter's weights file (the baseline:
  the client's own managed transfer, 8 MiB parts, 10 threads);
- ``S3BlobStore.put_file`` / ``export`` of the same file (hash first, HEAD, multipart upload with
  per-part SHA-256, re-hash on download) and ``LocalBlobStore`` ``put_file`` / ``export``;
- ``spr publish`` / ``spr export`` of the whole adapter through the library (``catalogue.publish``,
  ``catalogue.export``) with ``SPR_BLOB_URL=s3://…`` vs the local store (needs ``open_store`` to
  dispatch on ``SPR_BLOB_URL``; skipped with a note otherwise);
- small publishes per second (61 kB prompt-tuning adapters), S3 vs local.

    python benchmarks/bench_blobstore.py --runs 5

obstore is not measured (not installed here); see the README.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto server did not start")


def median_time(fn: Callable[[], None], runs: int, before: Callable[[], None] | None = None) -> float:
    times = []
    for _ in range(runs):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--megabytes", type=int, default=199)
    parser.add_argument("--small", type=int, default=40, help="small publishes per backend")
    args = parser.parse_args()

    import boto3
    from bench_hub import make_lora

    root = Path(tempfile.mkdtemp(prefix="spr-bench-blobs-"))
    port = free_port()
    server = start_moto(port)
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true", "SPR_ACTOR": "bench",
        "AWS_CONFIG_FILE": str(root / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(root / "none"),
    }
    os.environ.update(env)
    rows: list[tuple[str, float, float]] = []
    try:
        client = boto3.client("s3")
        client.create_bucket(Bucket="bench")
        adapter = make_lora(root / "adapter", args.megabytes)
        weights = adapter / "adapter_model.safetensors"
        size = weights.stat().st_size
        print(f"adapter: {size / 1e6:.1f} MB weights file; moto server at {endpoint}; runs={args.runs}", flush=True)

        from registry.storage import LocalBlobStore
        from registry.storage.s3 import S3BlobStore

        # --- baseline: the plain client -------------------------------------------------------------
        key = "plain/weights"
        plain_up = median_time(lambda: client.upload_file(str(weights), "bench", key), args.runs)
        out = root / "plain-download"
        plain_down = median_time(lambda: client.download_file("bench", key, str(out)), args.runs,
                                 before=lambda: out.unlink(missing_ok=True))

        # --- the stores -----------------------------------------------------------------------------
        os.environ["SPR_HOME"] = str(root / "home-store")
        s3store = S3BlobStore("s3://bench/store")
        sha = None

        def s3_put() -> None:
            nonlocal sha
            sha, _ = s3store.put_file(weights)

        def s3_clear() -> None:
            for obj in client.list_objects_v2(Bucket="bench", Prefix="store/").get("Contents", []):
                client.delete_object(Bucket="bench", Key=obj["Key"])

        store_up = median_time(s3_put, args.runs, before=s3_clear)
        s3_put()
        exported = root / "store-export"
        assert sha is not None
        store_down = median_time(lambda: s3store.export(sha, exported), args.runs,
                                 before=lambda: (exported.unlink(missing_ok=True),
                                                 shutil.rmtree(root / "home-store" / "cache", ignore_errors=True)))
        local = LocalBlobStore(root / "local-blobs")
        local_up = median_time(lambda: local.put_file(weights), args.runs,
                               before=lambda: shutil.rmtree(root / "local-blobs", ignore_errors=True))
        local.put_file(weights)
        local_down = median_time(lambda: local.export(sha, exported), args.runs,
                                 before=lambda: exported.unlink(missing_ok=True))
        rows += [
            ("upload: plain boto3 upload_file", plain_up, plain_up),
            ("upload: S3BlobStore.put_file", store_up, plain_up),
            ("upload: LocalBlobStore.put_file", local_up, plain_up),
            ("download: plain boto3 download_file", plain_down, plain_down),
            ("download: S3BlobStore.export", store_down, plain_down),
            ("download: LocalBlobStore.export", local_down, plain_down),
        ]

        # --- whole commands through the library -----------------------------------------------------
        rows += library_rows(root, adapter, args, plain_up, plain_down, client)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(root, ignore_errors=True)

    print()
    print(f"{'measure':58} {'seconds':>9} {'vs plain client':>16}")
    for label, secs, base in rows:
        if label.startswith("small"):
            print(f"{label:58} {secs:9.1f} {'(versions/s)':>16}")
        else:
            print(f"{label:58} {secs:9.3f} {secs / base:15.2f}x")


def library_rows(
    root: Path, adapter: Path, args: argparse.Namespace, plain_up: float, plain_down: float, client: object
) -> list[tuple[str, float, float]]:
    from ops_support import write_small_adapter

    from registry import catalogue, db
    from registry.storage import open_store

    rows: list[tuple[str, float, float]] = []
    counter = iter(range(1_000_000))

    def fresh_home(kind: str) -> None:
        home = root / f"home-{kind}-{next(counter)}"
        os.environ["SPR_HOME"] = str(home)
        if kind == "s3":
            os.environ["SPR_BLOB_URL"] = f"s3://bench/team-{uuid.uuid4().hex[:8]}"
        else:
            os.environ.pop("SPR_BLOB_URL", None)
        db.dispose_all()

    os.environ["SPR_BLOB_URL"] = "s3://bench/probe"
    if type(open_store()).__name__ != "S3BlobStore":
        os.environ.pop("SPR_BLOB_URL", None)
        print("note: open_store() does not dispatch on SPR_BLOB_URL here; publish/export rows skipped")
        return rows

    for kind in ("s3", "local"):
        pub, exp = big_publish_export(kind, root, adapter, args.runs, fresh_home)
        rows.append((f"spr publish {args.megabytes} MB adapter, {kind} store", pub, plain_up))
        rows.append((f"spr export {args.megabytes} MB adapter, {kind} store", exp, plain_down))

    for kind in ("s3", "local"):
        fresh_home(kind)
        dirs = [write_small_adapter(root / f"small-{kind}-{i}", seed=i, tokens=20, dim=768) for i in range(args.small)]
        t0 = time.perf_counter()
        for i, d in enumerate(dirs):
            catalogue.publish(d, f"bench/small-{i}")
        rate = args.small / (time.perf_counter() - t0)
        rows.append((f"small publishes (20x768 fp32), {kind} store", rate, 1.0))
    return rows


def big_publish_export(
    kind: str, root: Path, adapter: Path, runs: int, fresh_home: Callable[[str], None]
) -> tuple[float, float]:
    from registry import catalogue

    pub = median_time(lambda: catalogue.publish(adapter, "bench/big"), runs, before=lambda: fresh_home(kind))
    dest = root / f"export-{kind}"

    def export() -> None:
        shutil.rmtree(dest, ignore_errors=True)
        catalogue.export("bench/big", dest)

    def uncache() -> None:
        shutil.rmtree(Path(os.environ["SPR_HOME"]) / "cache", ignore_errors=True)

    return pub, median_time(export, runs, before=uncache)


if __name__ == "__main__":
    main()
