"""``spr verify``: check an adapter against a base model before any weight is loaded.

Exit codes: 0 compatible (warnings allowed), 3 incompatible, 1 other errors (an unreadable adapter
or base model, an unreachable Hub), 4 an unknown reference.
"""

from __future__ import annotations

import click

from registry.cli.app import AppContext, cli, emit, json_option, pass_app
from registry.errors import EXIT_INCOMPATIBLE


@cli.command()
@click.argument("target", metavar="REF|DIR")
@click.option(
    "--base-model", required=True, metavar="DIR|REPO[@REV]",
    help="The base model to check against: a local directory, or a Hub repo at a branch, tag or commit.",
)
@click.option(
    "--allow-different-base", is_flag=True,
    help="Accept identity findings (another base of the same shape); the override is logged as an event.",
)
@click.option("--author", help="Who accepts an override (default: git user.name, else the OS user).")
@json_option
@pass_app
@click.pass_context
def verify(
    ctx: click.Context, app: AppContext, target: str, base_model: str, allow_different_base: bool, author: str | None
) -> None:
    """Check that the adapter REF (a catalogue reference) or DIR (an adapter directory) fits a base model.

    Reads only config files, safetensors headers and a sampled slice of the base's input
    embeddings; never imports torch. A catalogued version also has every stored file re-hashed.
    Prints one line per finding: its code, what was expected, what was found and what to do.
    A directory holding adapter_config.json wins over a reference spelled the same way.

    \b
    Exit status: 0 compatible (warnings allowed), 3 incompatible, 1 other errors, 4 unknown REF.
    """
    from registry import verification

    report = verification.verify(
        target, base_model, db=app.db, allow_different_base=allow_different_base, actor=author, via="spr verify"
    )

    def render() -> None:
        lines = report.lines()
        click.secho(lines[0], fg="green" if report.compatible else "red", bold=not report.compatible)
        for line in lines[1:]:
            click.echo(line)

    emit(app, report.to_dict(), render)
    if not report.compatible:
        counts = f"{len(report.errors)} error(s), {len(report.identity)} identity finding(s)"
        click.secho(
            f"error: {report.subject} is incompatible with {report.base_model.name} ({counts})"
            + ("; pass --allow-different-base to accept a different base on purpose (logged)" if not report.errors else ""),
            fg="red",
            err=True,
        )
        ctx.exit(EXIT_INCOMPATIBLE)
