"""``spr pull`` and ``spr sync`` against hostile Hub servers: bounded downloads, nothing left behind.

A stdlib HTTP proxy in front of the project's Hub server forwards every request, except the ones a
test makes hostile: a file whose body never ends (the manifest says a few KB; the server streams
until the client hangs up or a cap far beyond any limit), or a file served bigger than the limit
for its kind (a 50 MB ``spr_manifest.json``). The real ``huggingface_hub`` client does the
downloading. Each test checks what reached the disk, what the server managed to send, the error,
and that the HF cache holds nothing of the refused revision afterwards.
"""

from __future__ import annotations

import http.client
import os
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hub_fixtures import HUB_TOKEN
from ops_support import switch_home

from registry import catalogue, hub, settings
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
    with pytest.raises(IntegrityError, match="adapter_model.safetensors"):
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
