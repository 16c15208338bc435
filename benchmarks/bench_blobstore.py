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

    python benchmarks/bench_blobstore.py --runs 5   # rounds: each measures every variant once, interleaved;
                                                     # a ratio is taken within a round, then the median

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
from typing import Any

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


def timed(fn: Callable[[], object], before: Callable[[], object] | None = None) -> float:
    if before is not None:
        before()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="rounds; each round measures every variant once")
    parser.add_argument("--megabytes", type=int, default=199)
    parser.add_argument("--small", type=int, default=40, help="small publishes per backend")
    args = parser.parse_args()

    import boto3
    from bench_hub import make_lora

    root = Path(tempfile.mkdtemp(prefix="spr-bench-blobs-"))
    port = free_port()
    server = start_moto(port)
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update({
        "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true", "SPR_ACTOR": "bench",
        "AWS_CONFIG_FILE": str(root / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(root / "none"),
    })
    try:
        client = boto3.client("s3")
        client.create_bucket(Bucket="bench")
        adapter = make_lora(root / "adapter", args.megabytes)
        weights = adapter / "adapter_model.safetensors"
        print(f"adapter: {weights.stat().st_size / 1e6:.1f} MB weights file; moto server at {endpoint}; "
              f"{args.runs} interleaved rounds; load average {os.getloadavg()[0]:.1f}", flush=True)
        samples = run_rounds(root, adapter, weights, args, client)
        small = small_publishes(root, args)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(root, ignore_errors=True)

    print()
    print(f"{'measure':62} {'median s':>9} {'median ratio':>13}")
    for label, (secs, base) in samples.items():
        ratios = [t / b for t, b in zip(secs, samples[base][0], strict=True)]
        print(f"{label:62} {statistics.median(secs):9.3f} {statistics.median(ratios):12.2f}x")
    for label, rate in small.items():
        print(f"{label:62} {rate:9.1f} versions/s")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


def run_rounds(
    root: Path, adapter: Path, weights: Path, args: argparse.Namespace, client: Any
) -> dict[str, tuple[list[float], str]]:
    from registry import catalogue
    from registry.storage import LocalBlobStore, open_store
    from registry.storage.s3 import S3BlobStore

    up, down = "upload: plain boto3 upload_file", "download: plain boto3 download_file"
    samples: dict[str, tuple[list[float], str]] = {}

    def add(label: str, base: str, seconds: float) -> None:
        samples.setdefault(label, ([], base))[0].append(seconds)

    os.environ["SPR_HOME"] = str(root / "home-store")
    store = S3BlobStore("s3://bench/store")
    local = LocalBlobStore(root / "local-blobs")
    out = root / "download"
    sha = ""
    os.environ["SPR_BLOB_URL"] = "s3://bench/probe"
    dispatch = isinstance(open_store(), S3BlobStore)
    os.environ.pop("SPR_BLOB_URL", None)
    if not dispatch:
        print("note: open_store() does not dispatch on SPR_BLOB_URL here; publish/export rows skipped")

    def clear_store() -> None:
        for obj in client.list_objects_v2(Bucket="bench", Prefix="store/").get("Contents", []):
            client.delete_object(Bucket="bench", Key=obj["Key"])
        shutil.rmtree(root / "home-store" / "cache", ignore_errors=True)

    def put() -> None:
        nonlocal sha
        sha = store.put_file(weights)[0]

    for i in range(args.runs):
        add(up, up, timed(lambda: client.upload_file(str(weights), "bench", "plain/weights")))
        add("upload: S3BlobStore.put_file", up, timed(put, clear_store))
        add("upload: LocalBlobStore.put_file", up,
            timed(lambda: local.put_file(weights), lambda: shutil.rmtree(root / "local-blobs", ignore_errors=True)))
        add(down, down, timed(lambda: client.download_file("bench", "plain/weights", str(out)),
                              lambda: out.unlink(missing_ok=True)))
        add("download: S3BlobStore.export (cache emptied)", down,
            timed(lambda: store.export(sha, out), lambda: (out.unlink(missing_ok=True),
                  shutil.rmtree(root / "home-store" / "cache", ignore_errors=True))))
        add("download: LocalBlobStore.export", down,
            timed(lambda: local.export(sha, out), lambda: out.unlink(missing_ok=True)))
        if not dispatch:
            continue
        for kind in ("s3", "local"):
            home = root / f"home-{kind}-{i}"
            os.environ["SPR_HOME"] = str(home)
            if kind == "s3":
                os.environ["SPR_BLOB_URL"] = f"s3://bench/team-{uuid.uuid4().hex[:8]}"
            else:
                os.environ.pop("SPR_BLOB_URL", None)
            add(f"spr publish {args.megabytes} MB adapter, {kind} store", up,
                timed(lambda: catalogue.publish(adapter, "bench/big")))
            dest = root / f"export-{kind}-{i}"
            add(f"spr export {args.megabytes} MB adapter, {kind} store (cache emptied)", down,
                timed(lambda d=dest: catalogue.export("bench/big", d),
                      lambda h=home: shutil.rmtree(h / "cache", ignore_errors=True)))
            shutil.rmtree(dest, ignore_errors=True)
        os.environ.pop("SPR_BLOB_URL", None)
    return samples


def small_publishes(root: Path, args: argparse.Namespace) -> dict[str, float]:
    from ops_support import write_small_adapter

    from registry import catalogue

    rates: dict[str, float] = {}
    for kind in ("s3", "local"):
        os.environ["SPR_HOME"] = str(root / f"home-small-{kind}")
        if kind == "s3":
            os.environ["SPR_BLOB_URL"] = "s3://bench/small"
        else:
            os.environ.pop("SPR_BLOB_URL", None)
        dirs = [write_small_adapter(root / f"small-{kind}-{i}", seed=i, tokens=20, dim=768) for i in range(args.small)]
        t0 = time.perf_counter()
        for i, d in enumerate(dirs):
            catalogue.publish(d, f"bench/small-{i}")
        rates[f"small publishes (20x768 fp32), {kind} store"] = args.small / (time.perf_counter() - t0)
    return rates


if __name__ == "__main__":
    main()
