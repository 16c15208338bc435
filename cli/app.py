"""The click group, its shared options and the one place where errors are formatted.

Commands live in the modules beside this one, one module per area; each command parses its
arguments, makes one library call and prints the result through :func:`emit`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from registry import errors
from registry.types import json_default


@dataclasses.dataclass
class AppContext:
    """What every command can read from ``click.get_current_context().obj``."""

    db: str | None = None
    json: bool = False
    debug: bool = False


pass_app = click.make_pass_decorator(AppContext, ensure=True)


def emit(app: AppContext, data: Any, render: Callable[[], None]) -> None:
    """Print ``data`` as JSON under ``--json``; otherwise call ``render`` to print it for people."""
    if app.json:
        click.echo(json.dumps(data, default=json_default, indent=2, sort_keys=True))
    else:
        render()


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--json`` accepted after the subcommand too (``spr show x --json``)."""

    def callback(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            ctx.ensure_object(AppContext).json = True

    return click.option(
        "--json", "json_", is_flag=True, expose_value=False, callback=callback,
        is_eager=True, help="Print machine-readable JSON to stdout.",
    )(func)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--db", "db", metavar="URL", envvar=None, help="Catalogue URL (default: $SPR_DATABASE_URL, else a SQLite file in $SPR_HOME).")
@click.option("--blob-url", "blob_url", metavar="URL", default=None,
              help="Blob store: s3://bucket/prefix (default: $SPR_BLOB_URL, else $SPR_BLOB_DIR or $SPR_HOME/blobs).")
@click.option("--s3-endpoint", "s3_endpoint", metavar="URL", default=None,
              help="S3-compatible endpoint, e.g. MinIO (default: $AWS_ENDPOINT_URL; AWS itself when unset).")
@click.option("--json", "json_", is_flag=True, help="Print machine-readable JSON to stdout.")
@click.option("--debug", is_flag=True, help="Show a traceback on errors.")
@click.version_option(package_name="softprompt-registry", prog_name="spr")
@click.pass_context
def cli(
    ctx: click.Context, db: str | None, blob_url: str | None, s3_endpoint: str | None, json_: bool, debug: bool
) -> None:
    """spr: a registry for trained soft prompts (PEFT prompt tuning, p-tuning, prefix tuning, LoRA)."""
    # The blob store is opened deep inside library calls, from the settings: these two options
    # are settings for this process (read at call time like every other).
    if blob_url:
        os.environ["SPR_BLOB_URL"] = blob_url
    if s3_endpoint:
        os.environ["AWS_ENDPOINT_URL_S3"] = s3_endpoint
    app = ctx.ensure_object(AppContext)
    app.db = db
    app.json = app.json or json_
    app.debug = debug


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and turn registry errors into one line on stderr and an exit code."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    as_json = "--json" in (argv if argv is not None else sys.argv[1:])
    try:
        # In non-standalone mode click returns the code of ``ctx.exit(n)`` instead of raising it
        # (``spr verify`` exits 3 after printing its report); commands otherwise return None.
        code = cli.main(args=argv, prog_name="spr", standalone_mode=False)
        if isinstance(code, int) and not isinstance(code, bool) and code:
            return code
    except errors.RegistryError as exc:
        if debug:
            raise
        if as_json:
            click.echo(json.dumps(exc.to_dict(), default=json_default, sort_keys=True))
        click.secho(f"error: {exc}", fg="red", err=True)
        return exc.exit_code
    except OSError as exc:
        # The environment refused (permissions, a full disk, a vanished path): one line, not a
        # traceback. Anything else unexpected is a bug and keeps its traceback.
        if debug:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        message = f"{exc.strerror or exc}{where}"
        if as_json:
            click.echo(json.dumps({"error": type(exc).__name__, "message": message, "exit_code": errors.EXIT_ERROR}))
        click.secho(f"error: {message}; check the path, its permissions and free space (--debug shows where)",
                    fg="red", err=True)
        return errors.EXIT_ERROR
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return errors.EXIT_INTERRUPTED
    except KeyboardInterrupt:
        click.echo("interrupted; nothing was written", err=True)
        return errors.EXIT_INTERRUPTED
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    return 0
