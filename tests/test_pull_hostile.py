"""``spr pull`` and ``spr sync`` against hostile Hub servers: bounded downloads, nothing left behind,
and every downloaded byte read once (sha256, size and the NaN/Inf scan in one pass).

A stdlib HTTP proxy in front of the project's Hub server forwards every request, except the ones a
test makes hostile: a file whose body never ends (the manifest says a few KB; the server streams
until the client hangs up or a cap far beyond any limit), or a file served bigger than the limit
for its kind (a 50 MB ``spr_manifest.json``). The real ``huggingface_hub`` client does the
downloading. Each test checks what reached the disk, what the server managed to send, the error,
and that the HF cache holds nothing of the refused revision afterwards.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import struct
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from adapter_files import write_prompt_adapter
from hub_fixtures import HUB_TOKEN
from ops_support import switch_home
from safetensors.numpy import save_file

from registry import catalogue, hub, settings
from registry.adapters import manifest as manifests
from registry.adapters.tensorfile import StreamScan, count_non_finite, read_header
from registry.errors import AdapterNotFoundError, IntegrityError, InvalidAdapterError, LockfileDriftError
from registry.hub.format import MANIFEST_FILENAME, MAX_HUB_MANIFEST_BYTES
from registry.hubserver import HubServer
from registry.storage import LocalBlobStore

REPO = "team/coach"
ENDLESS_CAP = 200 * 1024 * 1024  # the hostile server gives up after this much; the client must stop long before
_RESOLVE = re.compile(r"^/(?:api/models/)?[^/]+/[^/]+/resolve/[^/]+/(?P<file>.+)$")


class HostileProxy:
    """Forwards to ``upstream``; ``endless`` files stream forever, ``replace`` files serve other bytes."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.endless: set[str] = set()
        self.replace: dict[str, bytes] = {}
        self.sent: dict[str, int] = {}  # file -> body bytes written to the client
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                proxy.handle(self, "HEAD")

            def do_GET(self) -> None:
                proxy.handle(self, "GET")

            def do_POST(self) -> None:
                proxy.handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def forward(self, handler: BaseHTTPRequestHandler, method: str) -> tuple[int, list[tuple[str, str]], bytes]:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("host", "connection")}
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            conn.request(method, handler.path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            return response.status, response.getheaders(), data
        finally:
            conn.close()

    def handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        match = _RESOLVE.match(handler.path.split("?")[0])
        name = match.group("file") if match else None
        if name in self.replace and method in ("HEAD", "GET"):
            status, headers, _ = self.forward(handler, "HEAD")
            payload = self.replace[name]
            self._start(handler, status, headers, {"Content-Length": str(len(payload))})
            if method == "GET":
                self._write(handler, name, payload)
            return
        if name in self.endless and method == "GET":
            status, headers, _ = self.forward(handler, "HEAD")  # the honest metadata: ETag, commit, size
            self._start(handler, status, headers, {"Transfer-Encoding": "chunked", "Connection": "close"})
            block = b"\0" * (1 << 20)
            chunk = b"%x\r\n" % len(block) + block + b"\r\n"
            try:
                while self.sent.get(name, 0) < ENDLESS_CAP:
                    handler.wfile.write(chunk)
                    self.sent[name] = self.sent.get(name, 0) + len(block)
                handler.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass  # the client hung up: what a bounded download does
            handler.close_connection = True
            return
        status, headers, data = self.forward(handler, method)
        self._start(handler, status, headers, {} if method == "HEAD" else {"Content-Length": str(len(data))})
        if method != "HEAD":
            handler.wfile.write(data)

    @staticmethod
    def _start(handler: BaseHTTPRequestHandler, status: int, headers: list[tuple[str, str]], extra: dict[str, str]) -> None:
        handler.send_response(status)
        drop = {"transfer-encoding", "connection", "date", "server", *(k.lower() for k in extra)}
        for key, value in headers:
            if key.lower() not in drop:
                handler.send_header(key, value)
        for key, value in extra.items():
            handler.send_header(key, value)
        handler.end_headers()

    def _write(self, handler: BaseHTTPRequestHandler, name: str, payload: bytes) -> None:
        view = memoryview(payload)
        try:
            for start in range(0, len(view), 1 << 20):
                handler.wfile.write(view[start : start + (1 << 20)])
                self.sent[name] = self.sent.get(name, 0) + len(view[start : start + (1 << 20)])
        except OSError:
            handler.close_connection = True


class DiskWatcher:
    """Samples the total size of the files under a folder while a pull runs; keeps the peak."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for folder, _dirs, files in os.walk(self.root):
                for f in files:
                    try:
                        total += os.lstat(os.path.join(folder, f)).st_size
                    except OSError:
                        pass
            self.peak = max(self.peak, total)
            time.sleep(0.005)

    def __enter__(self) -> DiskWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def pushed(hub_server: HubServer, monkeypatch: pytest.MonkeyPatch, prompt_tuning_random: Path,
           prompt_tuning_text: Path, tmp_path: Path) -> Iterator[tuple[HostileProxy, dict[str, hub.PushResult]]]:
    """team/coach@1 and @2 pushed as v1 and v2; then a deploy machine (empty catalogue, no token)."""
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    v1 = catalogue.publish(prompt_tuning_random, REPO).version.ref
    v2 = catalogue.publish(prompt_tuning_text, REPO).version.ref
    results = {"v1": hub.push(v1, REPO, endpoint=hub_server.url), "v2": hub.push(v2, REPO, endpoint=hub_server.url)}
    switch_home(monkeypatch, tmp_path / "deploy")
    monkeypatch.delenv("HF_TOKEN")
    proxy = HostileProxy(hub_server.url)
    try:
        yield proxy, results
    finally:
        proxy.stop()


def revision_files(commit_sha: str) -> list[str]:
    """Every file the HF cache holds for ``REPO`` at ``commit_sha``: its snapshot and the blobs it points to."""
    folder = settings.hf_hub_cache() / ("models--" + REPO.replace("/", "--"))
    snapshot = folder / "snapshots" / commit_sha
    found = [p.as_posix() for p in snapshot.rglob("*")] if snapshot.exists() else []
    return found


def cache_bytes() -> int:
    """Bytes the HF cache holds for ``REPO`` (its CACHEDIR.TAG aside)."""
    root = settings.hf_hub_cache() / ("models--" + REPO.replace("/", "--"))
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _, files in os.walk(root) for f in files) if root.exists() else 0


def test_endless_body_is_cut_at_the_manifest_size_and_the_revision_leaves_the_cache(
    pushed: tuple[HostileProxy, dict[str, hub.PushResult]],
) -> None:
    proxy, results = pushed
    proxy.endless.add("adapter_model.safetensors")
    commit = results["v1"].commit_sha
    with DiskWatcher(settings.hf_hub_cache().parent) as watcher, \
            pytest.raises(IntegrityError, match=r"'adapter_model.safetensors' .*is larger than the manifest says \((\d+) bytes\)") as excinfo:
        hub.pull(f"{REPO}@{commit}", endpoint=proxy.url)
    size = int(re.search(r"says \((\d+) bytes\)", excinfo.value.message).group(1))  # type: ignore[union-attr]
    assert "truncated" not in excinfo.value.message
    # The client stopped reading: at most one 10 MB chunk past the limit, plus what sat in socket buffers.
    assert proxy.sent["adapter_model.safetensors"] < 32 * 1024 * 1024, proxy.sent
    # And nothing beyond the manifest's sizes ever reached the disk (manifest + config + the capped file).
    assert watcher.peak < 1_000_000 + size, watcher.peak
    # The refused revision left nothing in the HF cache (the manifest and config it had downloaded included).
    assert revision_files(commit) == []
    assert cache_bytes() == 0
    with pytest.raises(AdapterNotFoundError):
        catalogue.get_version(REPO)
    assert list(LocalBlobStore().iter_blob_paths()) == []


def test_oversized_manifest_is_refused_before_it_is_read_and_leaves_nothing(
    pushed: tuple[HostileProxy, dict[str, hub.PushResult]],
) -> None:
    proxy, results = pushed
    proxy.replace[MANIFEST_FILENAME] = b" " * (50 * 1000 * 1000)  # a 50 MB manifest, announced honestly
    commit = results["v1"].commit_sha
    with DiskWatcher(settings.hf_hub_cache().parent) as watcher, \
            pytest.raises(InvalidAdapterError, match=f"{MANIFEST_FILENAME} .*is larger than {MAX_HUB_MANIFEST_BYTES} bytes"):
        hub.pull(f"{REPO}@{commit}", endpoint=proxy.url)
    assert watcher.peak < 1_000_000, watcher.peak
    assert revision_files(commit) == [] and cache_bytes() == 0
    # An endless manifest (announced small) is cut at the manifest limit, not read to the end.
    proxy.replace.clear()
    proxy.endless.add(MANIFEST_FILENAME)
    with pytest.raises(InvalidAdapterError, match="is larger than"):
        hub.pull(f"{REPO}@{commit}", endpoint=proxy.url)
    assert proxy.sent[MANIFEST_FILENAME] < MAX_HUB_MANIFEST_BYTES + 32 * 1024 * 1024
    assert revision_files(commit) == [] and cache_bytes() == 0


def test_refused_pull_removes_only_its_own_revision_from_the_cache(
    pushed: tuple[HostileProxy, dict[str, hub.PushResult]], hub_server: HubServer, prompt_tuning_text: Path,
) -> None:
    proxy, results = pushed
    hub.pull(f"{REPO}@v1", endpoint=proxy.url)
    kept = revision_files(results["v1"].commit_sha)
    assert kept
    weights = (prompt_tuning_text / "adapter_model.safetensors").read_bytes()
    hub_server.storage.tamper(REPO, "adapter_model.safetensors", weights[:-1] + bytes([weights[-1] ^ 0x40]), revision="v2")
    with pytest.raises(IntegrityError, match=r"adapter_model\.safetensors"):
        hub.pull(f"{REPO}@v2", endpoint=proxy.url)
    assert revision_files(results["v2"].commit_sha) == []
    assert revision_files(results["v1"].commit_sha) == kept
    assert all(Path(p).resolve().is_file() for p in kept)  # v1's blobs are still there
    # A retry after the publisher fixes the copy downloads again (nothing stale was kept).
    hub_server.storage.tamper(REPO, "adapter_model.safetensors", weights, revision="v2")
    assert hub.pull(f"{REPO}@v2", endpoint=proxy.url).imported


def test_refused_sync_leaves_nothing_of_its_revisions_in_the_cache(
    pushed: tuple[HostileProxy, dict[str, hub.PushResult]], tmp_path: Path,
) -> None:
    proxy, results = pushed
    lock = tmp_path / "adapters.lock"
    hub.lock([f"{REPO}@v1", f"{REPO}@v2"], lock, endpoint=proxy.url)  # reads (and caches) both manifests
    commits = [results["v1"].commit_sha, results["v2"].commit_sha]
    before = {c: revision_files(c) for c in commits}
    assert all(len(files) == 1 and files[0].endswith(MANIFEST_FILENAME) for files in before.values())
    proxy.endless.add("adapter_model.safetensors")
    with pytest.raises(LockfileDriftError, match="larger than the manifest says"):
        hub.sync(lock, endpoint=proxy.url)
    # What lock had cached stays; everything the refused sync downloaded (configs, weights) is gone.
    assert {c: revision_files(c) for c in commits} == before
    with pytest.raises(AdapterNotFoundError):
        catalogue.get_version(REPO)
    assert proxy.sent["adapter_model.safetensors"] < 32 * 1024 * 1024


# ---------------------------------------------------------------------------------------------
# one read per byte: hash, size and the NaN/Inf scan in a single pass


def test_a_hub_version_with_non_finite_weights_is_refused_by_the_one_pass(
    pushed: tuple[HostileProxy, dict[str, hub.PushResult]], hub_server: HubServer, prompt_tuning_random: Path,
) -> None:
    """A consistent hostile commit: NaN weights, and a manifest whose digest and sha256 match them."""
    proxy, results = pushed
    weights = bytearray((prompt_tuning_random / "adapter_model.safetensors").read_bytes())
    data_start = 8 + struct.unpack("<Q", bytes(weights[:8]))[0]
    weights[data_start + 4 : data_start + 8] = struct.pack("<f", float("nan"))
    original = Path(hf_hub_download_bytes(hub_server, results["v1"].commit_sha))
    doc = json.loads(original.read_bytes())
    for entry in doc["manifest"]["files"]:
        if entry["path"] == "adapter_model.safetensors":
            entry["sha256"] = hashlib.sha256(weights).hexdigest()
    doc["digest"] = manifests.digest_of(doc["manifest"])
    forged = (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
    assert len(forged) == original.stat().st_size  # the server keeps the recorded sizes
    hub_server.storage.tamper(REPO, MANIFEST_FILENAME, forged, revision="v1")
    hub_server.storage.tamper(REPO, "adapter_model.safetensors", bytes(weights), revision="v1")
    with pytest.raises(InvalidAdapterError, match=r"tensor 'prompt_embeddings' holds 1 non-finite values"):
        hub.pull(f"{REPO}@v1", endpoint=proxy.url)
    with pytest.raises(AdapterNotFoundError):
        catalogue.get_version(REPO)
    assert list(LocalBlobStore().iter_blob_paths()) == []
    assert revision_files(results["v1"].commit_sha) == []


def hf_hub_download_bytes(server: HubServer, commit_sha: str) -> str:
    """The pushed ``spr_manifest.json`` of ``REPO`` at ``commit_sha``, downloaded outside the test's cache."""
    from huggingface_hub import hf_hub_download

    return hf_hub_download(REPO, MANIFEST_FILENAME, revision=commit_sha, endpoint=server.url, token=False,
                           cache_dir=str(settings.home() / "other-hf-cache"))


def test_a_pull_reads_each_byte_of_a_cached_download_once(
    hub_server: HubServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """Bytes read by the process (Linux ``/proc/self/io`` rchar) while pulling a 16 MB adapter from the HF cache."""
    io_file = Path("/proc/self/io")
    if not io_file.exists():
        pytest.skip("needs Linux /proc/self/io")
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    big = write_prompt_adapter(tmp_path / "big", rows=4096, dim=1024)  # 4096 x 1024 float32: 16 MiB
    size = (big / "adapter_model.safetensors").stat().st_size
    ref = catalogue.publish(big, "team/big").version.ref
    commit = hub.push(ref, "team/big", endpoint=hub_server.url).commit_sha
    switch_home(monkeypatch, tmp_path / "first")
    hub.pull(f"team/big@{commit}", endpoint=hub_server.url)  # downloads into the HF cache
    switch_home(monkeypatch, tmp_path / "second")  # an empty catalogue and store; the HF cache is warm
    catalogue.list_versions()  # create the catalogue before counting

    def rchar() -> int:
        return int(re.search(r"^rchar: (\d+)$", io_file.read_text(), re.M).group(1))  # type: ignore[union-attr]

    hub_server.clear_log()
    before = rchar()
    result = hub.pull(f"team/big@{commit}", endpoint=hub_server.url)
    read = rchar() - before
    assert result.imported and hub_server.requests == []
    # One pass: sha256, size and the NaN scan of the weights together (it was three: 48 MiB).
    assert size <= read < 1.3 * size, (read, size)
    assert LocalBlobStore().has(next(f.sha256 for f in result.version.files if f.path == "adapter_model.safetensors"))


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_stream_scan_matches_the_file_scan_whatever_the_chunk_boundaries(tmp_path: Path, dtype: str) -> None:
    rng = np.random.default_rng(1)
    values = rng.standard_normal((37, 11)).astype(np.float32)
    values[0, 0], values[5, 3], values[36, 10] = np.nan, np.inf, -np.inf
    other = rng.standard_normal((3, 5)).astype(np.float32)
    other[2, 4] = np.nan
    if dtype == "F32":
        tensors = {"a": values, "b": other}
    elif dtype == "F16":
        tensors = {"a": values.astype(np.float16), "b": other.astype(np.float16)}
    else:  # bfloat16 as its raw bits: the top half of each float32
        tensors = {"a": (values.view(np.uint32) >> 16).astype(np.uint16), "b": (other.view(np.uint32) >> 16).astype(np.uint16)}
    path = tmp_path / "w.safetensors"
    save_file(tensors, str(path))
    if dtype == "BF16":  # safetensors.numpy has no bfloat16: relabel the U16 tensors
        raw = path.read_bytes()
        n = struct.unpack("<Q", raw[:8])[0]
        doc = json.loads(raw[8 : 8 + n])
        for key, entry in doc.items():
            if key != "__metadata__":
                entry["dtype"] = "BF16"
        header = json.dumps(doc).encode()
        header += b" " * (-len(header) % 8)
        path.write_bytes(struct.pack("<Q", len(header)) + header + raw[8 + n :])
    header_info = read_header(path)
    expected = {name: count_non_finite(path, info) for name, info in header_info.tensors.items()}
    assert expected == {"a": 3, "b": 1}
    data = path.read_bytes()
    for chunk in (1, 3, 7, 64, 1 << 20):
        scan = StreamScan(len(data), "w")
        for start in range(0, len(data), chunk):
            scan.feed(memoryview(data)[start : start + chunk])
        assert scan.complete and scan.bad == expected, chunk
    short = StreamScan(len(data), "w")
    short.feed(data[: len(data) - 2])
    assert not short.complete
