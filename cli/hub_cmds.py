"""Hub commands: push, pull, import, lock, sync, and ``hub serve`` (the local Hub-compatible server).

Each command parses its arguments, makes one call into :mod:`registry.hub` (imported inside the
command, so ``spr --help`` does not pay for it) and prints through :func:`emit`. ``spr pull``,
``import``, ``lock`` and ``sync`` are metadata commands: nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path

import click

from registry.cli.app import AppContext, cli, emit, json_option, pass_app

ENDPOINT_HELP = "Hub endpoint (default: $HF_ENDPOINT, else https://huggingface.co)."


def _short(sha: str) -> str:
    return sha[:12]


@cli.command()
@click.argument("ref")
@click.option("--repo", "repo_id", required=True, metavar="NS/NAME", help="The Hub repo to push to (created if missing).")
@click.option("--private", is_flag=True, help="Create the repo private (an existing repo keeps its visibility).")
@click.option("--endpoint", metavar="URL", help=ENDPOINT_HELP)
@json_option
@pass_app
def push(app: AppContext, ref: str, repo_id: str, private: bool, endpoint: str | None) -> None:
    """Push the version REF to a Hub repo: one commit, tagged v{N}, with its manifest and model card.

    The token comes from HF_TOKEN or 'hf auth login'; it is never stored or printed.
    Pushing a version the repo already holds changes nothing.
    """
    from registry import hub

    result = hub.push(ref, repo_id, private=private, endpoint=endpoint, db=app.db)

    def render() -> None:
        if result.committed:
            verb = "pushed"
        elif result.tagged:
            verb = "tagged (an earlier push had committed it)"
        else:
            verb = "already on the Hub"
        click.echo(f"{verb} {result.ref} -> {result.repo_id}@{result.tag} (commit {_short(result.commit_sha)}) {result.digest}")
        click.echo(f"  {result.url}")

    emit(app, result, render)


@cli.command()
@click.argument("target", metavar="NS/NAME[@TAG|@SHA] | REF")
@click.option("--to", "to", type=click.Path(path_type=Path), metavar="DIR", help="Also write the verified files here as a PEFT directory.")
@click.option("--as", "name", metavar="NAME", help="Catalogue name to import under (default: the repo id).")
@click.option("--endpoint", metavar="URL", help=ENDPOINT_HELP)
@json_option
@pass_app
def pull(app: AppContext, target: str, to: Path | None, name: str | None, endpoint: str | None) -> None:
    """Fetch a version from the Hub, verify every byte against its manifest, and catalogue it.

    TARGET is a Hub repo NS/NAME[@TAG|@BRANCH|@SHA] (default main), or a catalogue ref
    (ns/name@N, @sha256:…, or a local alias) whose recorded hub copy is fetched. A commit
    already in the HF cache is answered without any HTTP request.
    """
    from registry import hub

    result = hub.pull(target, to=to, endpoint=endpoint, db=app.db, name=name)

    def render() -> None:
        if result.imported:
            click.echo(
                f"pulled {result.ref} {result.digest} from {result.repo_id}@{_short(result.commit_sha)}"
                f" ({result.files} files, {result.bytes} bytes, every sha256 checked)"
            )
        else:
            click.echo(f"already in the catalogue: {result.ref} {result.digest} ({result.repo_id}@{_short(result.commit_sha)})")
        if result.to:
            click.echo(f"  written to {result.to}")

    emit(app, result, render)


@cli.command("import")
@click.argument("target", metavar="NS/NAME[@REV]")
@click.option("--as", "name", metavar="NAME", help="Catalogue name (default: the repo id).")
@click.option("--description", help="What this adapter is for.")
@click.option("--endpoint", metavar="URL", help=ENDPOINT_HELP)
@json_option
@pass_app
def import_(app: AppContext, target: str, name: str | None, description: str | None, endpoint: str | None) -> None:
    """Catalogue a plain PEFT adapter repo from the Hub (one without an spr manifest).

    Its base model is what adapter_config.json says and its lineage is marked unverified;
    tags record the source repo and commit.
    """
    from registry import hub

    result = hub.import_repo(target, name=name, endpoint=endpoint, db=app.db, description=description)

    def render() -> None:
        verb = "imported" if result.imported else "already catalogued"
        click.echo(f"{verb} {result.ref} {result.digest} from {result.repo_id}@{_short(result.commit_sha)}")
        click.echo(f"  base model (unverified): {result.base_model or 'not stated'}; lineage UNVERIFIED")

    emit(app, result, render)


@cli.command()
@click.argument("refs", nargs=-1, required=True, metavar="REF...")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("adapters.lock"), show_default=True,
              help="Lockfile to write.")
@click.option("--endpoint", metavar="URL", help="Prefer hub copies on this endpoint; also used for Hub repos.")
@json_option
@pass_app
def lock(app: AppContext, refs: tuple[str, ...], output: Path, endpoint: str | None) -> None:
    """Pin versions (catalogue refs with a hub copy, or Hub repos NS/NAME@TAG) in a lockfile."""
    from registry import hub
    from registry.hub import lockfile

    result = hub.lock(list(refs), output, db=app.db, endpoint=endpoint)

    def render() -> None:
        click.echo(f"locked {len(result.entries)} adapter(s) in {output}")
        for e in result.entries:
            click.echo(f"  {e.ref} {e.digest} {e.repo}@{_short(e.commit)}" + (f" ({e.tag})" if e.tag else ""))

    emit(app, {"lockfile": str(output), **lockfile.to_dict(result)}, render)


@cli.command()
@click.argument("lockfile_path", metavar="LOCKFILE", type=click.Path(path_type=Path))
@click.option("--to", "to", type=click.Path(path_type=Path), metavar="DIR",
              help="Also write each adapter to DIR/<namespace>/<name>@<version>.")
@click.option("--frozen", is_flag=True,
              help="Require the Hub and the catalogue to match the lockfile exactly: tags not moved, "
                   "versions under their locked numbers, existing target dirs identical.")
@click.option("--endpoint", metavar="URL", help="Fetch from this endpoint instead of the lockfile's (a mirror).")
@json_option
@pass_app
def sync(app: AppContext, lockfile_path: Path, to: Path | None, frozen: bool, endpoint: str | None) -> None:
    """Fetch exactly the commits LOCKFILE pins, verify every byte, and catalogue them.

    Fails, importing nothing, on any drift: a missing commit or repo, a manifest or byte that
    differs, and with --frozen a moved tag.
    """
    from registry import hub

    result = hub.sync(lockfile_path, to=to, frozen=frozen, db=app.db, endpoint=endpoint)

    def render() -> None:
        click.echo(f"synced {len(result.items)} adapter(s) from {result.lockfile}" + (" (frozen)" if frozen else ""))
        for item in result.items:
            state = "imported" if item.imported else "present"
            click.echo(f"  {state:<8} {item.ref} {item.digest} {item.repo_id}@{_short(item.commit_sha)}"
                       + (f" -> {item.to}" if item.to else ""))

    emit(app, result, render)


@cli.group("hub")
def hub_group() -> None:
    """The local Hub-compatible server (for air-gapped teams, tests and the demo)."""


@hub_group.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=0, type=click.IntRange(0, 65535), show_default=True, help="Port (0: a free one).")
@click.option("--root", type=click.Path(path_type=Path), default=None,
              help="Where repos are stored (default: $SPR_HOME/hub).")
@click.option("--token", "tokens", multiple=True, metavar="TOKEN[ USER]",
              help="An accepted bearer token, optionally with its user name (repeatable).")
@click.option("--tokens-file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Accepted tokens, one 'TOKEN [USER]' per line.")
@click.option("--lfs-mode", type=click.Choice(["regular", "auto"]), default="regular", show_default=True,
              help="regular: every upload inside the commit (works with Xet-enabled clients); "
                   "auto: large/binary files via git-LFS (clients need HF_HUB_DISABLE_XET=1).")
def hub_serve(host: str, port: int, root: Path | None, tokens: tuple[str, ...], tokens_file: Path | None,
              lfs_mode: str) -> None:
    """Run the Hub-compatible server in the foreground until Ctrl-C.

    Point clients at it with HF_ENDPOINT=http://HOST:PORT. Writes need one of the tokens.
    """
    from registry import settings
    from registry.hubserver import HubServer

    server = HubServer(
        root if root is not None else settings.home() / "hub",
        host=host,
        port=port,
        tokens=tokens,
        tokens_file=tokens_file,
        lfs_mode=lfs_mode,  # type: ignore[arg-type]
    ).bind()
    # Tokens are never echoed: only how many there are.
    click.echo(f"serving a Hub at {server.url} (root {server.root}, {len(server.tokens)} token(s), lfs mode {lfs_mode})", err=True)
    click.echo(f"  export HF_ENDPOINT={server.url}", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("stopped", err=True)


@hub_group.command("gc")
@click.option("--root", type=click.Path(path_type=Path), default=None,
              help="The server's root (default: $SPR_HOME/hub).")
@click.option("--grace", type=click.FloatRange(min=0), default=3600.0, show_default=True, metavar="SECONDS",
              help="Keep unreferenced objects younger than this (an LFS upload waiting for its commit).")
@click.option("-y", "--yes", is_flag=True, help="Really remove (default: dry run, list only).")
@json_option
@pass_app
def hub_gc(app: AppContext, root: Path | None, grace: float, yes: bool) -> None:
    """Remove objects of the local Hub server that no commit references.

    Uploads that never became part of a commit (an LFS upload whose commit never came) stay on
    disk until this runs. Safe while the server runs: young objects are kept.
    """
    from registry import settings
    from registry.errors import UsageError
    from registry.hubserver import HubStorage

    directory = root if root is not None else settings.home() / "hub"
    if not (directory / "objects").is_dir():
        raise UsageError(f"{directory} is not a Hub server root (no objects/ folder)",
                         hint="pass the --root that 'spr hub serve' uses")
    report = HubStorage(directory).gc(grace_seconds=grace, remove=yes)
    data = {
        "root": str(directory), "removed": report.removed, "kept_young": report.kept_young,
        "unreferenced": [{"sha256": o.sha256, "size": o.size} for o in report.unreferenced],
        "bytes": report.bytes, "leftovers": [str(p) for p in report.leftovers],
    }

    def render() -> None:
        verb = "removed" if yes else "would remove"
        click.echo(f"{verb} {len(report.unreferenced)} unreferenced object(s), {report.bytes} bytes, "
                   f"and {len(report.leftovers)} upload leftover(s); kept {report.kept_young} younger than {grace:g} s")
        if not yes and (report.unreferenced or report.leftovers):
            click.echo("dry run: pass -y to remove them", err=True)

    emit(app, data, render)
