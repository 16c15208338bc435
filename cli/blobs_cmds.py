"""Blob-store commands for operators: ``spr blobs ls``, ``spr blobs verify``, ``spr blobs migrate --to s3://…``."""

from __future__ import annotations

from datetime import datetime, timezone

import click

from registry.cli.app import AppContext, cli, emit, json_option, pass_app
from registry.cli.output import hashing_progress, human_bytes
from registry.errors import EXIT_INTEGRITY


@cli.group()
def blobs() -> None:
    """The blob store ($SPR_BLOB_URL s3://bucket/prefix, else $SPR_BLOB_DIR, else $SPR_HOME/blobs)."""


@blobs.command("ls")
@json_option
@pass_app
def ls(app: AppContext) -> None:
    """List every stored blob: sha256, size, last modified (UTC)."""
    from registry.storage import open_store

    store = open_store()
    items = list(store.iter_blobs())

    def render() -> None:
        for b in items:
            stamp = datetime.fromtimestamp(b.mtime, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            click.echo(f"sha256:{b.key}  {b.size:>12}  {stamp}")
        click.echo(f"{len(items)} blob(s), {human_bytes(sum(b.size for b in items))} in {store.location}", err=True)

    emit(app, {"location": store.location, "blobs": [
        {"sha256": b.key, "size": b.size, "mtime": b.mtime} for b in items
    ]}, render)


@blobs.command("verify")
@click.argument("shas", nargs=-1, metavar="[SHA256]...")
@json_option
@pass_app
def verify(app: AppContext, shas: tuple[str, ...]) -> None:
    """Re-hash stored blobs (all, or the SHA256s given) as the store holds them. Exit 5 on any damage."""
    from registry.digest import parse_digest
    from registry.storage import open_store
    from registry.storage.migrate import verify_blobs

    wanted = [parse_digest(s) for s in shas] if shas else None
    store = open_store()
    with hashing_progress(0, "verifying blobs") as progress:
        report = verify_blobs(store, wanted, progress)

    def render() -> None:
        for line in report.problems:
            click.echo(line)
        click.echo(
            f"verify: {report.checked} blob(s), {human_bytes(report.bytes)} re-hashed in {report.location}; "
            f"{len(report.problems)} problem(s), {report.seconds:.2f} s", err=True,
        )

    emit(app, report, render)
    if report.problems:
        click.get_current_context().exit(EXIT_INTEGRITY)


@blobs.command("migrate")
@click.option("--to", "to", required=True, metavar="URL", help="Target store: s3://bucket/prefix (or a folder).")
@click.option("--from", "from_", metavar="URL", default=None, help="Source store (default: the configured one).")
@json_option
@pass_app
def migrate(app: AppContext, to: str, from_: str | None) -> None:
    """Copy every blob into another store (local -> bucket), verified; re-run to resume.

    Blobs the target already holds are skipped. Afterwards point every member at the bucket
    (SPR_BLOB_URL) and run 'spr audit' there. Exit 5 when a source blob was damaged (not copied).
    """
    from registry.storage import open_store
    from registry.storage.migrate import copy_blobs

    source = open_store(from_)
    target = open_store(to)
    total = sum(b.size for b in source.iter_blobs())
    with hashing_progress(total, f"copying to {target.location}") as progress:
        report = copy_blobs(source, target, progress)

    def render() -> None:
        for sha in report.damaged:
            click.echo(f"damaged sha256:{sha} (not copied; run 'spr audit' on the source)")
        click.echo(
            f"migrate: copied {report.copied} blob(s) ({human_bytes(report.bytes_copied)}), {report.skipped} already "
            f"there, from {report.source} to {report.target} in {report.seconds:.2f} s", err=True,
        )

    emit(app, report, render)
    if report.damaged:
        click.get_current_context().exit(EXIT_INTEGRITY)
