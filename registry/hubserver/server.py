"""The HTTP side of the Hub server: a threaded stdlib ``http.server`` carrying :class:`HubApp`.

``HubServer`` owns the storage, the tokens and the listening socket; it runs in a background
thread (``start``/``stop``, or as a context manager) or in the foreground (``serve_forever``, for
``spr hub serve``). It keeps a log of every request (method, path, route pattern, status) for
contract tests, and can be told to fail or drop chosen requests (``fail``) to test interrupted pushes.
File bodies go out with ``sendfile`` from the object store, so a 200 MB download never sits in memory.
"""

from __future__ import annotations

import io
import logging
import re
import socket
import threading
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

from registry.errors import HubError, UsageError
from registry.hubserver.app import LFS_MODES, HubApp, LfsMode, error_response
from registry.hubserver.auth import TokenRegistry
from registry.hubserver.errors import BadRequest, HubServerError
from registry.hubserver.storage import HubStorage
from registry.hubserver.wire import FileBody, Request, Response

logger = logging.getLogger("registry.hubserver")

_DRAIN_LIMIT = 1024 * 1024
_HOST_RE = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?\Z|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?\Z")
_BODY_BUFFER = 1024 * 1024
_POLL_INTERVAL = 0.05  # how quickly stop() is noticed


@dataclass(frozen=True)
class RequestRecord:
    """One request the server answered: ``status`` 0 means the connection was dropped on purpose."""

    method: str
    path: str
    route: str
    status: int


@dataclass
class _Fault:
    method: str
    route: str
    status: int | None
    remaining: int


class HubServer:
    """A Hub-compatible server on ``host:port`` (port 0: a free one) storing everything under ``root``.

    ``tokens``: accepted bearer tokens, each ``"TOKEN"`` or ``"TOKEN USERNAME"``; ``tokens_file``:
    the same, one per line. ``lfs_mode``: ``"regular"`` (every upload travels inside the commit;
    works with every client) or ``"auto"`` (large or binary files go through git-LFS, like on the
    Hub; needs clients with ``HF_HUB_DISABLE_XET=1``). Raises :class:`registry.errors.UsageError`
    for a bad option and :class:`registry.errors.HubError` when the address cannot be bound.
    """

    def __init__(
        self,
        root: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        tokens: Iterable[str] = (),
        *,
        tokens_file: Path | None = None,
        lfs_mode: LfsMode = "regular",
    ) -> None:
        if lfs_mode not in LFS_MODES:
            raise UsageError(f"unknown lfs mode {lfs_mode!r}", hint=f"use one of: {', '.join(LFS_MODES)}")
        self.root = Path(root)
        self.storage = HubStorage(self.root)
        self.tokens = TokenRegistry(tokens, tokens_file)
        self.app = HubApp(self.storage, self.tokens, lfs_mode=lfs_mode)
        self.host = host
        self._requested_port = port
        self._httpd: _HTTPServer | None = None
        self._bound_port: int | None = None
        self._thread: threading.Thread | None = None
        self._foreground = False
        self._log: list[RequestRecord] = []
        self._log_lock = threading.Lock()
        self._faults: list[_Fault] = []

    # ------------------------------------------------------------------ lifecycle

    def bind(self) -> HubServer:
        """Open the listening socket (idempotent); after this ``url`` and ``port`` are known."""
        if self._httpd is None:
            try:
                self._httpd = _HTTPServer(self, (self.host, self._requested_port))
            except OSError as exc:
                raise HubError(
                    f"cannot listen on {self.host}:{self._requested_port}: {exc.strerror or exc}",
                    hint="choose another --port, or 0 for a free one",
                ) from exc
            self._bound_port = int(self._httpd.server_address[1])
        return self

    def start(self) -> HubServer:
        """Serve in a background thread; returns self."""
        self.bind()
        if self._thread is None:
            assert self._httpd is not None
            httpd = self._httpd
            self._thread = threading.Thread(
                target=lambda: httpd.serve_forever(poll_interval=_POLL_INTERVAL), name="hubserver", daemon=True
            )
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted (Ctrl-C) or ``stop`` is called from another thread."""
        self.bind()
        assert self._httpd is not None
        self._foreground = True
        try:
            self._httpd.serve_forever(poll_interval=_POLL_INTERVAL)
        finally:
            self._foreground = False
            self._close()

    def stop(self) -> None:
        """Stop serving (background or foreground) and close every open connection.

        A stopped server answers nothing; ``port`` and ``url`` keep their values.
        """
        httpd = self._httpd
        if httpd is None:
            return
        if self._thread is not None or self._foreground:
            httpd.shutdown()  # waits for the serve_forever loop to end
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._close()

    def _close(self) -> None:
        with self._log_lock:
            httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.close_connections()
        httpd.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port last bound (still answered by ``port`` after ``stop``). Raises RuntimeError before ``bind``."""
        if self._bound_port is None:
            raise RuntimeError("the server has no port yet: call bind() or start() first")
        return self._bound_port

    @property
    def url(self) -> str:
        """The endpoint to give the client, e.g. ``http://127.0.0.1:54321`` (no trailing slash)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def lfs_mode(self) -> LfsMode:
        return self.app.lfs_mode

    # ------------------------------------------------------------------ request log and faults

    @property
    def requests(self) -> list[RequestRecord]:
        """A copy of the request log, oldest first."""
        with self._log_lock:
            return list(self._log)

    def routes_seen(self) -> set[tuple[str, str]]:
        """The distinct ``(method, route pattern)`` pairs received since the last ``clear_log``."""
        return {(r.method, r.route) for r in self.requests}

    def clear_log(self) -> None:
        with self._log_lock:
            self._log.clear()

    def fail(self, method: str, route: str, *, status: int | None = None, times: int = 1) -> None:
        """Make the next ``times`` requests matching ``method`` and ``route`` (a pattern, e.g.
        ``"/api/{type}/{repo}/commit/{rev}"``) fail: with ``status`` as an error response, or, with
        no status, by closing the connection without an answer (a server killed mid-request).
        """
        with self._log_lock:
            self._faults.append(_Fault(method.upper(), route, status, times))

    def _take_fault(self, method: str, route: str) -> _Fault | None:
        with self._log_lock:
            for fault in self._faults:
                if fault.method == method and fault.route == route and fault.remaining > 0:
                    fault.remaining -= 1
                    return fault
        return None

    def _record(self, record: RequestRecord) -> None:
        with self._log_lock:
            self._log.append(record)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, hub: HubServer, address: tuple[str, int]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.hub = hub
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, connection: socket.socket, alive: bool) -> None:
        with self._connections_lock:
            if alive:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _BodyReader(io.RawIOBase):
    """The request body: ``Content-Length`` bytes, or a chunked body decoded on the fly."""

    def __init__(self, rfile: io.BufferedIOBase, transfer_encoding: str | None, content_length: str | None) -> None:
        super().__init__()
        self._rfile = rfile
        self._chunked = "chunked" in (transfer_encoding or "").lower()
        self._left = 0  # bytes left in the body (fixed) or in the current chunk (chunked)
        self._done = False
        self.broken = False  # a malformed body: the connection cannot be reused or drained
        if not self._chunked:
            try:
                self._left = int(content_length or 0)
            except ValueError:
                raise BadRequest("invalid Content-Length") from None
            if self._left < 0:
                raise BadRequest("invalid Content-Length")
            self._done = self._left == 0

    @property
    def exhausted(self) -> bool:
        return self._done

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._done:
            return 0
        if self._chunked and self._left == 0:
            line = self._rfile.readline(1024)
            try:
                self._left = int(line.split(b";", 1)[0].strip(), 16)
                if self._left < 0:
                    raise ValueError(line)
            except ValueError:
                # Answer at once and close: reading on to find the next chunk would wait for
                # bytes that never come (until the idle timeout, holding a thread).
                self._done = self.broken = True
                raise BadRequest("malformed chunked body") from None
            if self._left == 0:
                while self._rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                self._done = True
                return 0
        wanted = min(len(buffer), self._left)
        data = self._rfile.read(wanted)
        if not data:  # the client went away mid-body
            self._done = True
            return 0
        buffer[: len(data)] = data
        self._left -= len(data)
        if self._left == 0:
            if self._chunked:
                self._rfile.readline(16)  # CRLF after the chunk
            else:
                self._done = True
        return len(data)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY: headers and body go out in separate writes; with Nagle on, every keep-alive
    # request waited ~40 ms for the client's delayed ACK (a refs call took 42 ms, now under 1 ms).
    disable_nagle_algorithm = True
    server: _HTTPServer
    timeout = 120  # an idle keep-alive connection is closed after this

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def log_message(self, format: str, *args: object) -> None:
        logger.info("%s %s", self.address_string(), format % args)

    def _handle(self) -> None:
        hub = self.server.hub
        split = urlsplit(self.path)
        reader: _BodyReader | None = None
        route_pattern = "?"
        try:
            reader = _BodyReader(self.rfile, self.headers.get("Transfer-Encoding"), self.headers.get("Content-Length"))
            request = Request(
                method=self.command,
                raw_path=split.path,
                query=parse_qs(split.query, keep_blank_values=True),
                headers=self.headers,
                body=io.BufferedReader(reader, buffer_size=_BODY_BUFFER),
                base_url=self._base_url(),
            )
            route = hub.app.route(request)
            route_pattern = route.pattern
            fault = hub._take_fault(self.command, route.pattern)
            if fault is not None and fault.status is None:
                hub._record(RequestRecord(self.command, split.path, route.pattern, 0))
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault is not None:
                error = HubServerError(f"failure injected by the test for {self.command} {route.pattern}")
                response = error_response(error)
                response.status = fault.status or 500
            else:
                response = hub.app.run(route, request)
        except HubServerError as error:
            response = error_response(error)
        except Exception:  # a bug: answer 500 and keep serving
            logger.error("error while answering %s %s\n%s", self.command, split.path, traceback.format_exc())
            response = error_response(HubServerError("internal error in the Hub server (see its log)"))
        if reader is None or not reader.exhausted or reader.broken:
            self._drain(reader)
        hub._record(RequestRecord(self.command, split.path, route_pattern, response.status))
        self._send(response)

    def _drain(self, reader: _BodyReader | None) -> None:
        # Unread body bytes would be taken for the next request on this keep-alive connection.
        if reader is not None and reader.broken:
            self.close_connection = True
            return
        if reader is not None:
            try:
                left = _DRAIN_LIMIT
                while left > 0 and not reader.exhausted:
                    chunk = reader.read(min(left, 65536))
                    if not chunk:
                        break
                    left -= len(chunk)
            except (OSError, HubServerError):
                pass
        if reader is None or not reader.exhausted:
            self.close_connection = True

    def _base_url(self) -> str:
        host = self.headers.get("Host") or ""
        if not _HOST_RE.match(host):
            address = self.server.server_address
            bound_host = address[0].decode() if isinstance(address[0], bytes) else address[0]
            host = f"[{bound_host}]:{address[1]}" if ":" in bound_host else f"{bound_host}:{address[1]}"
        return f"http://{host}"

    def _send(self, response: Response) -> None:
        body = response.body
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        if response.header("Content-Length") is None:
            length = body.length if isinstance(body, FileBody) else len(body)
            self.send_header("Content-Length", str(length))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            return
        try:
            if isinstance(body, FileBody):
                if body.length:
                    with open(body.path, "rb") as handle:
                        self.connection.sendfile(handle, body.offset, body.length)
            elif body:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
