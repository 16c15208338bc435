"""The ASGI app of ``spr ui``: a read-only web catalogue over the catalogue's query functions.

Every HTML page at ``PATH`` has a JSON twin at ``/api/PATH`` (same query parameters, the CLI's
``--json`` shapes). There is no write endpoint: the only non-GET route is the login form, which
sets a cookie and touches nothing else.

Security, in one place (:class:`Guard`): with a token, every request needs a bearer header or the
session cookie the login form sets (an HMAC of the token, never the token itself); every
response carries a Content-Security-Policy without inline script or style, ``nosniff``, no
framing and no referrer. Templates autoescape; SVG is escaped in ``svg.py``; refs in URLs go
through the CLI's own parser, so a malformed ref is a 404 page, never a 500.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry import catalogue
from registry.errors import NotFoundError, RegistryError, UsageError
from registry.web.views import Views

STATIC = Path(__file__).parent / "static"
COOKIE = "spr_ui_session"
MAX_LOGIN_BODY = 4096
log = logging.getLogger("registry.web")

SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
     b"frame-ancestors 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


def session_value(token: str) -> str:
    """What the session cookie holds: derived from the token, so the cookie never carries it."""
    return hmac.new(token.encode("utf-8"), b"spr-ui-session-v1", hashlib.sha256).hexdigest()


class Guard:
    """ASGI middleware: security headers on every response; the token check when one is set."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token
        self.cookie = session_value(token) if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in dict(SECURITY_HEADERS)]
                message = {**message, "headers": headers + SECURITY_HEADERS}
            await send(message)

        path: str = scope.get("path", "")
        if self.token and not (path in ("/login", "/favicon.ico") or path.startswith("/static/")) and not self._allowed(scope):
            response: Response
            if path.startswith("/api/") or path == "/api":
                response = JSONResponse({"error": "Unauthorized", "message": "this catalogue needs a token",
                                         "hint": "send 'Authorization: Bearer TOKEN'"}, status_code=401,
                                        headers={"www-authenticate": "Bearer"})
            else:
                target = path + ("?" + scope["query_string"].decode("latin-1") if scope.get("query_string") else "")
                response = RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)
            await response(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def _allowed(self, scope: Scope) -> bool:
        assert self.token is not None and self.cookie is not None
        headers = dict(scope.get("headers", []))
        auth = headers.get(b"authorization", b"").decode("latin-1")
        if auth[:7].lower() == "bearer " and hmac.compare_digest(auth[7:].strip().encode(), self.token.encode()):
            return True
        for part in headers.get(b"cookie", b"").decode("latin-1").split(";"):
            key, _, value = part.strip().partition("=")
            if key == COOKIE and hmac.compare_digest(value.encode(), self.cookie.encode()):
                return True
        return False


class PageCache:
    """Rendered pages for a few seconds, keyed on the URL and the catalogue's newest event.

    Every catalogue write appends an event in its own transaction, so any change makes every
    cached page miss at once; the short lifetime bounds how long a change made around the
    catalogue (a row edited by hand: what ``spr audit`` exists to catch) can stay unseen.
    Identical requests from many clients (the first page of the list, a popular lineage) then cost
    one query instead of a render. Audit runs (``?check=1``) are never cached.
    """

    MAX_ENTRIES = 256
    MAX_BODY = 1 << 20
    STRIPES = 64

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._lock = threading.Lock()
        self._pages: OrderedDict[tuple[Any, ...], tuple[float, int, int, str, bytes]] = OrderedDict()
        # When a popular page expires, one thread renders it while the others asking for it wait
        # (instead of all rendering it at once); striped, so the locks stay bounded.
        self._render_locks = [threading.Lock() for _ in range(self.STRIPES)]

    def render_lock(self, key: tuple[Any, ...]) -> threading.Lock:
        return self._render_locks[hash(key) % self.STRIPES]

    def get(self, key: tuple[Any, ...], marker: int) -> Response | None:
        with self._lock:
            entry = self._pages.get(key)
            if entry is None:
                return None
            expires, seen, status, content_type, body = entry
            if seen != marker or expires < time.monotonic():
                del self._pages[key]
                return None
            self._pages.move_to_end(key)
        return Response(body, status_code=status, headers={"content-type": content_type})

    def put(self, key: tuple[Any, ...], marker: int, response: Response) -> None:
        body = bytes(response.body)
        if response.status_code != 200 or len(body) > self.MAX_BODY:
            return
        with self._lock:
            self._pages[key] = (time.monotonic() + self.seconds, marker, response.status_code,
                                response.headers.get("content-type", "text/html; charset=utf-8"), body)
            self._pages.move_to_end(key)
            while len(self._pages) > self.MAX_ENTRIES:
                self._pages.popitem(last=False)


def create_app(*, db: str | None = None, token: str | None = None, cache_seconds: float = 2.0) -> ASGIApp:
    """The web catalogue for the catalogue at ``db`` (default: the configured one).

    ``token``: when set, every request needs it (bearer header, or the cookie set by ``/login``).
    ``cache_seconds``: how long a rendered page may be reused while the catalogue's event log has
    not moved (0 turns the cache off); see :class:`PageCache`.
    """
    views = Views(db, auth=bool(token))
    cache = PageCache(cache_seconds) if cache_seconds > 0 else None

    def page(handler: Any, as_json: bool) -> Any:
        def endpoint(request: Request) -> Response:
            if cache is None or request.query_params.get("check"):
                response: Response = handler(request, as_json)
                return response
            key = (as_json, request.url.path, request.url.query)
            marker = catalogue.change_marker(db=db)
            hit = cache.get(key, marker)
            if hit is not None:
                return hit
            with cache.render_lock(key):
                hit = cache.get(key, marker)  # rendered by another request while this one waited
                if hit is not None:
                    return hit
                response = handler(request, as_json)
                cache.put(key, marker, response)
                return response

        return endpoint

    pages = [
        ("/", views.adapters),
        ("/versions", views.versions_list),
        ("/a/{namespace}/{name}", views.adapter),
        ("/a/{namespace}/{name}/evals", views.evals),
        ("/v/{namespace}/{ref}", views.version),
        ("/v/{namespace}/{ref}/lineage", views.lineage),
        ("/audit", views.audit),
    ]
    routes: list[Any] = [Route(path, page(handler, False), methods=["GET", "HEAD"]) for path, handler in pages]
    routes.append(Route("/v/{namespace}/{ref}/lineage.svg", page(views.lineage_svg, False), methods=["GET", "HEAD"]))
    routes.append(Route("/api", lambda r: RedirectResponse("/api/", status_code=307), methods=["GET", "HEAD"]))
    routes += [Route("/api" + path, page(handler, True), methods=["GET", "HEAD"]) for path, handler in pages]
    routes.append(Route("/login", _login(views, token), methods=["GET", "POST"]))
    routes.append(Route("/logout", _logout, methods=["GET"]))
    routes.append(Mount("/static", app=StaticFiles(directory=STATIC), name="static"))

    def error_page(request: Request, status: int, title: str, message: str) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": title, "message": message}, status_code=status)
        return views.page(request, "error.html", status_code=status, title=title, message=message, json_url=None)

    def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        titles = {404: "Not found", 405: "Method not allowed", 400: "Bad request"}
        detail = exc.detail if exc.status_code != 404 or exc.detail != "Not Found" else "no page at this address"
        return error_page(request, exc.status_code, titles.get(exc.status_code, "Error"), str(detail))

    def on_registry(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RegistryError)
        if isinstance(exc, NotFoundError):
            return error_page(request, 404, "Not found", str(exc))
        if isinstance(exc, UsageError):
            return error_page(request, 400, "Bad request", str(exc))
        log.warning("catalogue error on %s: %s", request.url.path, exc)
        return error_page(request, 503, "Catalogue unavailable", str(exc))

    def on_crash(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s", request.url.path)
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": "Internal error", "message": "see the server log"}, status_code=500)
        return HTMLResponse("<!doctype html><title>Internal error</title><h1>Internal error</h1>"
                            "<p>See the server log.</p>", status_code=500)

    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: on_http, RegistryError: on_registry, Exception: on_crash},
    )
    return Guard(app, token)


def app_from_environment() -> ASGIApp:
    """The app for each worker process of ``spr ui --workers N`` (uvicorn imports it by name):
    the catalogue URL, token and cache lifetime come from ``SPR_UI_DB``, ``SPR_UI_TOKEN`` and
    ``SPR_UI_CACHE_SECONDS``, which ``spr ui`` sets before starting the workers."""
    return create_app(
        db=os.environ.get("SPR_UI_DB") or None,
        token=os.environ.get("SPR_UI_TOKEN") or None,
        cache_seconds=float(os.environ.get("SPR_UI_CACHE_SECONDS") or 2.0),
    )


def _login(views: Views, token: str | None) -> Any:
    async def login(request: Request) -> Response:
        next_url = _safe_next(request.query_params.get("next", "/"))
        if token is None:
            return RedirectResponse(next_url, status_code=303)
        error = None
        if request.method == "POST":
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_LOGIN_BODY:
                    return PlainTextResponse("login form too large", status_code=413)
            form = parse_qs(body.decode("utf-8", "replace"), max_num_fields=4)
            given = (form.get("token") or [""])[0]
            next_url = _safe_next((form.get("next") or [next_url])[0])
            if hmac.compare_digest(given.encode(), token.encode()):
                response = RedirectResponse(next_url, status_code=303)
                response.set_cookie(COOKIE, session_value(token), httponly=True, samesite="strict",
                                    secure=request.url.scheme == "https", path="/")
                return response
            error = "wrong token"
        return views.page(request, "login.html", status_code=401 if error else 200, next_url=next_url,
                          error=error, json_url=None)

    return login


def _logout(request: Request) -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


def _safe_next(value: str) -> str:
    """Only a path on this site: never ``//host`` or ``https://…`` (no open redirect)."""
    if not value.startswith("/") or value.startswith("//") or "\\" in value or any(ord(c) < 32 for c in value):
        return "/"
    return quote(value, safe="/?&=%@:+,;-._~")
