"""``spr ui``: serve the read-only web catalogue (needs the ``[ui]`` extra)."""

from __future__ import annotations

import ipaddress
import os
from typing import Any

import click

from registry.cli.app import AppContext, cli, pass_app
from registry.errors import DependencyMissingError, UsageError


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default).")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on.")
@click.option("--token", envvar="SPR_UI_TOKEN", metavar="TOKEN",
              help="Require this token on every request (login form or 'Authorization: Bearer'); "
                   "default $SPR_UI_TOKEN. Needed to listen beyond loopback.")
@click.option("--cache-seconds", default=2.0, show_default=True, type=click.FloatRange(0, 3600),
              help="Reuse a rendered page this long while nothing in the catalogue changes (0: never).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Server processes (each with its own page cache); more use more cores.")
@pass_app
def ui(app: AppContext, host: str, port: int, token: str | None, cache_seconds: float, workers: int) -> None:
    """Serve a read-only web catalogue: adapters, versions, lineage graphs, eval plots, the audit log.

    Every page has a JSON twin under /api/. Nothing can be changed from it.
    """
    if token is not None and len(token) < 8:
        raise UsageError("--token is too short: use at least 8 characters", hint="for example: --token \"$(openssl rand -hex 16)\"")
    if not _is_loopback(host) and not token:
        raise UsageError(
            f"refusing to serve the catalogue on {host} without a token",
            hint="add --token (or set SPR_UI_TOKEN), or keep the default --host 127.0.0.1",
        )
    try:
        import uvicorn

        from registry.web import create_app
    except ImportError as exc:
        raise DependencyMissingError(
            f"spr ui needs the [ui] extra ({exc.name} is not installed)",
            hint="pip install 'softprompt-registry[ui]'",
        ) from None
    from registry import catalogue

    catalogue.list_versions(db=app.db, limit=1)  # fail now, with the usual message, if the catalogue cannot be opened
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"spr ui: http://{shown}:{port}/  (read-only; Ctrl+C stops it)", err=True)
    options: dict[str, Any] = {"host": host, "port": port, "log_level": "warning", "server_header": False,
                               "proxy_headers": False}
    if workers == 1:
        uvicorn.run(create_app(db=app.db, token=token, cache_seconds=cache_seconds), **options)
        return
    # Worker processes import the app by name and read their settings from the environment.
    os.environ.update({"SPR_UI_DB": app.db or "", "SPR_UI_TOKEN": token or "", "SPR_UI_CACHE_SECONDS": str(cache_seconds)})
    uvicorn.run("registry.web.app:app_from_environment", factory=True, workers=workers, **options)
