"""A real S3 server for the tests: moto in server mode on 127.0.0.1, spoken to over HTTP by boto3.

- ``s3_server``: one ``moto.server.ThreadedMotoServer`` per test session (never an in-process
  mock of the client); its endpoint URL.
- ``s3``: per test, a fresh bucket on that server and an environment that reaches it the way a
  user's would (``AWS_ENDPOINT_URL``, credentials in ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
  no profile files, no instance-metadata lookups). ``s3.url`` is ``s3://<bucket>/team``.
- :class:`FaultProxy`: a TCP proxy in front of the server that can go down (a network error
  mid-upload) or cut a response short (a truncated download): real sockets, real failures.
"""

from __future__ import annotations

import itertools
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

__all__ = ["FaultProxy", "S3Env", "aws_env", "make_bucket", "s3", "s3_server"]

_COUNTER = itertools.count(1)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """The endpoint URL of a moto S3 server on 127.0.0.1 (a free port), for the whole session."""
    pytest.importorskip("boto3", reason="the [s3] extra (boto3) is not installed")
    server_mod = pytest.importorskip("moto.server", reason="moto[server] is not installed")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@dataclass
class S3Env:
    endpoint: str
    bucket: str
    url: str
    client: Any  # a plain boto3 client for the test's own checks and tampering

    def keys(self, prefix: str = "") -> list[str]:
        resp = self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for o in resp.get("Contents", [])]


def aws_env(monkeypatch: pytest.MonkeyPatch, endpoint: str, tmp_path: Path) -> None:
    """Point the standard AWS chain at the test server with throw-away credentials."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "spr-test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "spr-test-secret")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def make_bucket(endpoint: str) -> tuple[str, Any]:
    import boto3

    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="spr-test-key", aws_secret_access_key="spr-test-secret",
    )
    bucket = f"spr-test-{next(_COUNTER)}-{threading.get_ident() % 100000}"
    client.create_bucket(Bucket=bucket)
    return bucket, client


@pytest.fixture
def s3(s3_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3Env:
    """A fresh bucket on the session's moto server, and the AWS environment that reaches it."""
    aws_env(monkeypatch, s3_server, tmp_path)
    bucket, client = make_bucket(s3_server)
    return S3Env(endpoint=s3_server, bucket=bucket, url=f"s3://{bucket}/team", client=client)


class FaultProxy:
    """A TCP proxy to ``target`` (``host:port``) that can fail on purpose.

    ``down()`` closes every connection and stops accepting (the client then sees resets and
    refused connections); ``up()`` listens again on the same port. ``cut_responses_after(n)``
    forwards at most ``n`` bytes of each server response stream, then closes the connection.
    """

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host.replace("http://", ""), int(port))
        self.port = 0
        self.cut_after: int | None = None
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.up()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def cut_responses_after(self, n: int | None) -> None:
        self.cut_after = n

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, self.cut_after), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if limit is not None and sent + len(data) > limit:
                    dst.sendall(data[: limit - sent])
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
