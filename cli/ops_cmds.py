"""Operations commands: audit, gc, backup, restore."""

from __future__ import annotations

from pathlib import Path

import click

from registry.cli.app import AppContext, cli, emit, json_option, pass_app
from registry.cli.catalogue_cmds import DefaultCommandGroup
from registry.cli.output import hashing_progress, human_bytes
from registry.errors import EXIT_INTEGRITY
from registry.ops.defaults import DEFAULT_GRACE_SECONDS  # imports nothing: no SQLAlchemy at start-up

MIN_BYTES_FOR_RATE = 64 * 1024 * 1024
MIN_SECONDS_FOR_RATE = 0.2


def hash_rate(n_bytes: int, seconds: float) -> str:
    """`` at 1.23 GB/s`` when the amount and the time are large enough to mean something, else ``""``.

    On a small store the time is mostly opening the database and listing blobs: a rate computed
    from it ("0.00 GB/s" for 11 KB) says nothing about the disk or the hashing.
    """
    if n_bytes < MIN_BYTES_FOR_RATE or seconds < MIN_SECONDS_FOR_RATE:
        return ""
    rate = n_bytes / seconds
    return f" at {rate / 1e9:.2f} GB/s" if rate >= 1e9 else f" at {rate / 1e6:.0f} MB/s"


class _AuditGroup(DefaultCommandGroup):
    """``spr audit [OPTIONS]`` runs the audit (``spr audit run``); ``spr audit checkpoint`` is the other subcommand."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, args or [self.default_command])


@cli.group(name="audit", cls=_AuditGroup, default_command="run")
def audit() -> None:
    """Re-verify the catalogue and every stored byte (spr audit [--checkpoint FILE] [--strict]),
    or write a signed statement of the audit chain's head (spr audit checkpoint)."""


@audit.command(name="run")
@click.option("--strict", is_flag=True, help="Treat warnings (orphan blobs, temp files) as problems too.")
@click.option("--no-rehash", "no_rehash", is_flag=True, help="Check blob presence and size only, without re-hashing.")
@click.option("--checkpoint", "checkpoint", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE",
              help="Prove the catalogue still extends this checkpoint (from 'spr audit checkpoint').")
@click.option("--checkpoint-key", type=click.Path(path_type=Path, dir_okay=False), metavar="KEY.pub",
              help="Require the checkpoint to be signed by this public key.")
@json_option
@pass_app
def audit_run(app: AppContext, strict: bool, no_rehash: bool, checkpoint: Path | None, checkpoint_key: Path | None) -> None:
    """Re-verify the catalogue and every stored byte; one line per problem.

    Checks every blob's sha256, the event chain, foreign keys, each version's manifest digest and
    file list, the append-only triggers, every stored signature, every eval score, alias,
    deprecation, hub copy and signature against the event that recorded it, and with --checkpoint
    that no event up to the checkpoint was deleted (the newest included); lists orphan blobs,
    missing blobs and leftover temp files. --json also reports the chain's head. Exit 0 when
    nothing is damaged (warnings allowed unless --strict), 5 otherwise.
    """
    ctx = click.get_current_context()
    with hashing_progress(_referenced_bytes_hint(app), "auditing blobs") as progress:
        from registry import ops as audits

        report = audits.audit(db=app.db, rehash=not no_rehash, progress=progress, checkpoint=checkpoint,
                              checkpoint_key=checkpoint_key)
    failed = bool(report.errors) or (strict and bool(report.warnings))

    def render() -> None:
        for p in report.problems:
            click.echo(p.line())
        summary = (
            f"audit: {len(report.errors)} error(s), {len(report.warnings)} warning(s); "
            f"{report.versions} versions, {report.files} files, {report.blobs} blobs "
            f"({human_bytes(report.bytes_hashed)} hashed{hash_rate(report.bytes_hashed, report.seconds)}), "
            f"{report.events} events, {report.seconds:.2f} s"
        )
        click.echo(summary, err=True)
        if report.warnings and not report.errors:
            click.echo("warnings are leftovers of interrupted writes; 'spr gc --yes' removes them", err=True)

    data = {
        "ok": not failed,
        "database": report.database,
        "blob_root": report.blob_root,
        "versions": report.versions,
        "files": report.files,
        "blobs": report.blobs,
        "bytes_hashed": report.bytes_hashed,
        "events": report.events,
        "seconds": report.seconds,
        "errors": len(report.errors),
        "warnings": len(report.warnings),
        "problems": report.problems,
        "head": report.head,
    }
    emit(app, data, render)
    if failed:
        ctx.exit(EXIT_INTEGRITY)


@audit.command(name="checkpoint")
@click.option("--key", "key", type=click.Path(path_type=Path, dir_okay=False), metavar="PRIVATE_KEY.pem",
              help="Sign the checkpoint with this EC key (password from $SPR_SIGN_KEY_PASSWORD).")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE",
              help="Write the checkpoint here (atomically) instead of stdout.")
@json_option
@pass_app
def audit_checkpoint(app: AppContext, key: Path | None, output: Path | None) -> None:
    """Write a (signed) statement of the audit chain's head: event count, head hash, time.

    Keep it outside this catalogue (another system, a Hub repo); 'spr audit --checkpoint FILE'
    later proves the catalogue still extends it, which is the only way to see deleted newest events.
    """
    import os

    from registry.trust import checkpoint as checkpoints

    made = checkpoints.create(key=key, password=os.environ.get("SPR_SIGN_KEY_PASSWORD") or None, db=app.db)
    if output is not None:
        checkpoints.write(made, output)
        signed = f"signed by {made.signed_by[:23]}…" if made.signed_by else "unsigned"
        emit(app, {**made.to_dict(), "file": str(output)},
             lambda: click.echo(f"checkpoint of {made.count} events, head {made.head[:12]}… ({signed}) written to {output}"))
    else:
        click.echo(checkpoints.encode(made), nl=False)


def _referenced_bytes_hint(app: AppContext) -> int:
    # The progress bar needs a total; the store's size is a close upper bound. Bars are drawn
    # only on a terminal, so scripts do not pay for the scan.
    import sys

    from registry.storage import open_store

    if not sys.stderr.isatty():
        return 0
    return sum(blob.size for blob in open_store().iter_blobs())


@cli.command()
@click.option("-y", "--yes", is_flag=True, help="Really remove (default: dry run, list only).")
@click.option(
    "--grace", type=float, default=DEFAULT_GRACE_SECONDS, show_default=True, metavar="SECONDS",
    help="Keep unreferenced files younger than this (a publish in flight has written its blobs but not committed).",
)
@json_option
@pass_app
def gc(app: AppContext, yes: bool, grace: float) -> None:
    """Remove blobs no version references, and leftover temp files (dry run unless --yes)."""
    from registry import ops as audits

    report = audits.gc(db=app.db, dry_run=not yes, grace_seconds=grace)

    def render() -> None:
        verb = "would remove" if report.dry_run else "removed"
        for sha in report.blobs:
            click.echo(f"{verb} blob sha256:{sha}")
        for path in report.temp_files:
            click.echo(f"{verb} temp file {path}")
        msg = f"gc: {verb} {len(report.blobs)} blob(s) and {len(report.temp_files)} temp file(s), {human_bytes(report.bytes)}"
        if report.kept_recent:
            msg += f"; kept {report.kept_recent} younger than {report.grace_seconds:g} s"
        if report.dry_run and (report.blobs or report.temp_files):
            msg += "; run with --yes to remove them"
        click.echo(msg, err=True)

    emit(app, report, render)


@cli.command()
@click.argument("file", type=click.Path(path_type=Path))
@json_option
@pass_app
def backup(app: AppContext, file: Path) -> None:
    """Write a consistent backup of a SQLite catalogue and its blobs to FILE (a tar), while others write.

    For PostgreSQL, use pg_dump and copy the blob directory after the dump (see the README).
    """
    with hashing_progress(_referenced_bytes_hint(app), f"backing up to {file.name}") as progress:
        from registry import ops as audits

        report = audits.backup(file, db=app.db, progress=progress)
    emit(app, report, lambda: click.echo(
        f"backup {report.path}: {report.versions} versions, {report.events} events, {report.blobs} blobs "
        f"({human_bytes(report.bytes)}), schema {report.schema}, {report.seconds:.2f} s"
    ))


@cli.command()
@click.argument("file", type=click.Path(path_type=Path))
@json_option
@pass_app
def restore(app: AppContext, file: Path) -> None:
    """Restore a backup written by 'spr backup' into a new SQLite catalogue (never overwrites one)."""
    size = file.stat().st_size if file.is_file() else 0
    with hashing_progress(size, f"restoring {file.name}") as progress:
        from registry import ops as audits

        report = audits.restore(file, db=app.db, progress=progress)

    def render() -> None:
        click.echo(
            f"restored {report.database}: {report.versions} versions, {report.events} events, "
            f"{report.blobs} blobs ({report.restored_blobs} copied), from a backup of {report.created_at}"
        )
        click.echo("next: 'spr audit' to re-verify every byte", err=True)

    emit(app, report, render)
