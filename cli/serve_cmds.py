"""``spr serve``: serve many soft prompts from one base model over an OpenAI-compatible HTTP API.

The engine (torch) and the server (starlette, uvicorn) are imported inside the command only.
"""

from __future__ import annotations

import click

from registry.cli.app import AppContext, cli, pass_app


@cli.command()
@click.argument("refs", nargs=-1, required=True, metavar="REF...")
@click.option("--base-model", required=True, metavar="DIR|REPO[@REV]", help="The base model, loaded once.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (only this machine by default).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port (0 picks a free one).")
@click.option("--max-batch", default=8, show_default=True, type=click.IntRange(1, 256), help="Most rows in one batch.")
@click.option("--max-wait-ms", default=10.0, show_default=True, type=click.FloatRange(0, 10_000),
              help="How long the first queued request waits for others to join its batch.")
@click.option("--token", envvar="SPR_SERVE_TOKEN", metavar="TOKEN",
              help="Require 'Authorization: Bearer TOKEN' (also enables POST /admin/reload). Env: SPR_SERVE_TOKEN.")
@click.option("--allow-different-base", is_flag=True, help="Accept identity findings (logged as events).")
@pass_app
def serve(app: AppContext, refs: tuple[str, ...], base_model: str, host: str, port: int, max_batch: int,
          max_wait_ms: float, token: str | None, allow_different_base: bool) -> None:
    """Serve the soft prompts REF... from one copy of a base model (OpenAI-compatible HTTP).

    Each REF (e.g. team/coach@prod, or an adapter directory) is verified like 'spr verify' and
    loaded; a refused one is reported and left out. Routes: POST /v1/completions,
    POST /v1/chat/completions, GET /v1/models, GET /health, GET /metrics, POST /admin/reload
    (re-resolves aliases; needs --token). The request's "model" names the REF.
    """
    from registry.serve.server import serve as run_server

    run_server(base_model, list(refs), host=host, port=port, max_batch=max_batch, max_wait_ms=max_wait_ms,
               token=token, db=app.db, allow_different_base=allow_different_base,
               announce=lambda line: click.echo(line, err=True))
