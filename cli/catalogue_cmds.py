"""Catalogue commands: publish, show, list, versions, alias, deprecate, eval, export, lineage, log, db."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import click

from registry.cli.app import AppContext, cli, emit, json_option, pass_app
from registry.cli.output import hashing_progress, markup_safe, short_digest, stdout, unescape, when

if TYPE_CHECKING:
    from rich.tree import Tree

    from registry.types import Lineage, VersionInfo, VersionSummary

# Library modules are imported inside each command: `spr --help` and the commands that do not
# touch the catalogue start without loading SQLAlchemy.


@cli.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Adapter name, [namespace/]name.")
@click.option("--base-model", metavar="DIR|REPO[@REV]", help="The base model it was trained on.")
@click.option("--dataset", type=click.Path(path_type=Path), help="Training data (file or directory); its digest is recorded.")
@click.option("--dataset-digest", metavar="sha256:HEX", help="Digest of training data hashed elsewhere.")
@click.option("--eval", "evals", multiple=True, metavar="METRIC=VALUE[@DATASET]", help="An eval score (repeatable).")
@click.option("--parent", metavar="REF", help="The version this one was trained from.")
@click.option("--training-args", type=click.Path(path_type=Path), metavar="FILE.json", help="Training settings.")
@click.option("--template", help="Input format used in training, with {prompt} (\\n, \\t and \\\\ are interpreted).")
@click.option("--description", help="What this soft prompt is for.")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="A tag (repeatable).")
@click.option("--author", help="Who publishes (default: git user.name, else the OS user).")
@json_option
@pass_app
def publish(
    app: AppContext, directory: Path, name: str, base_model: str | None, dataset: Path | None,
    dataset_digest: str | None, evals: tuple[str, ...], parent: str | None, training_args: Path | None,
    template: str | None, description: str | None, tags: tuple[str, ...], author: str | None,
) -> None:
    """Publish the PEFT adapter in DIRECTORY as a new version of NAME."""
    from registry import catalogue
    from registry.cli.inputs import parse_eval, parse_tags, read_training_args

    options = catalogue.PublishOptions(
        base_model=base_model,
        dataset=dataset,
        dataset_digest=dataset_digest,
        evals=[parse_eval(e) for e in evals],
        parent=parent,
        training=read_training_args(training_args) if training_args else {},
        template=unescape(template) if template is not None else None,
        description=description,
        tags=parse_tags(tags),
        author=author,
    )
    total = sum(p.stat().st_size for p in directory.glob("*") if p.is_file()) if directory.is_dir() else 0
    with hashing_progress(total, f"hashing {directory.name}") as progress:
        result = catalogue.publish(directory, name, db=app.db, options=options, progress=progress)

    def render() -> None:
        verb = "published" if result.created else "already published (identical content)"
        click.echo(f"{verb} {result.version.ref} {result.version.digest}")

    emit(app, {"created": result.created, "version": result.version}, render)


@cli.command()
@click.argument("ref")
@json_option
@pass_app
def show(app: AppContext, ref: str) -> None:
    """Show everything recorded about a version."""
    from registry import catalogue

    version = catalogue.get_version(ref, db=app.db)
    emit(app, version, lambda: render_version(version))


def render_version(v: VersionInfo) -> None:
    console = stdout()
    console.print(f"[bold]{v.ref}[/bold]  {v.digest}")
    rows: list[tuple[str, str]] = [
        ("status", v.status + (f" ({v.status_reason})" if v.status_reason else "")),
        ("peft type", f"{v.peft_type} / {v.task_type or '-'}"),
    ]
    if v.num_virtual_tokens is not None:
        rows.append(("virtual tokens", f"{v.num_virtual_tokens} x {v.num_transformer_submodules or 1} submodule(s), token dim {v.token_dim}"))
    if v.init_method:
        rows.append(("init", v.init_method + (f": {v.init_text!r}" if v.init_text else "")))
    if v.template:
        rows.append(("template", repr(v.template)))
    if v.base_model:
        b = v.base_model
        rows.append(("base model", f"{b.name}" + (f"@{b.revision}" if b.revision else "") + f" ({b.source})"))
        detail = ", ".join(
            f"{k} {val}" for k, val in (("arch", b.architecture), ("hidden", b.hidden_size), ("layers", b.num_layers),
                                        ("vocab", b.vocab_size)) if val is not None
        )
        if detail:
            rows.append(("", detail))
        if b.embedding_fingerprint:
            rows.append(("", f"embedding fingerprint {short_digest(b.embedding_fingerprint, 16)}"))
    if v.dataset:
        d = v.dataset
        extra = ", ".join(x for x in (d.format, f"{d.records} records" if d.records is not None else None) if x)
        rows.append(("dataset", f"{d.name or '-'} {d.digest}" + (f" ({extra})" if extra else "")))
    if v.parent_digest:
        rows.append(("parent", f"{v.parent_ref or 'not in this catalogue'} {v.parent_digest}"))
    if not v.lineage_verified:
        rows.append(("lineage", "UNVERIFIED (imported from a plain PEFT repo)"))
    if v.aliases:
        rows.append(("aliases", ", ".join(v.aliases)))
    if v.tags:
        rows.append(("tags", ", ".join(f"{k}={val}" for k, val in sorted(v.tags.items()))))
    if v.description:
        rows.append(("description", v.description))
    if v.training:
        # Scalars only (loss curves and library versions are in --json), wrapped for reading.
        scalars = ", ".join(
            f"{k}={_short_value(val)}" for k, val in sorted(v.training.items())
            if val is not None and not isinstance(val, (list, dict))
        )
        for i, line in enumerate(textwrap.wrap(scalars, 100)):
            rows.append(("training" if i == 0 else "", line))
    rows.append(("created", f"{when(v.created_at)} by {v.created_by}"))
    for key, value in rows:
        console.print(f"  {key:<15} {markup_safe(value)}")
    latest = v.latest_scores()
    if latest:
        console.print("  eval scores (latest per metric and dataset):")
        for (metric, _), s in sorted(latest.items(), key=lambda kv: kv[0][0]):
            on = s.dataset_name or short_digest(s.dataset)
            line = f"    {metric:<14} {s.value:.6g}  on {on}" + (f" [{s.split}]" if s.split else "")
            console.print(markup_safe(line + f"  ({when(s.recorded_at)}, {s.recorded_by})"))
    console.print("  files:")
    for f in v.files:
        console.print(f"    {f.sha256}  {f.size:>10}  {f.path}")
    for h in v.hub_copies:
        console.print(markup_safe(f"  hub: {h.endpoint}/{h.repo_id} @ {h.commit_sha[:12]} (tag {h.tag})"))


def _short_value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    if text.startswith("sha256:"):
        return text[:19] + "…"
    return text


def render_summaries(items: list[VersionSummary]) -> None:
    from rich.table import Table

    if not items:
        click.echo("no versions", err=True)
        return
    table = Table(box=None, pad_edge=False)
    for col in ("ref", "type", "vtok", "base model", "dataset", "aliases", "status", "created"):
        table.add_column(col)
    for s in items:
        table.add_row(
            *(markup_safe(cell) for cell in (
            s.ref, s.peft_type, str(s.num_virtual_tokens or "-"), _short_path(s.base_model),
            _short_path(s.dataset), ",".join(s.aliases), s.status, s.created_at.strftime("%Y-%m-%d %H:%M"),
            ))
        )
    stdout().print(table)


def _short_path(value: str | None, limit: int = 32) -> str:
    if not value:
        return "-"
    return value if len(value) <= limit else "…" + value[-(limit - 1):]


@cli.command(name="list")
@click.option("--base-model", help="Only versions recorded against this base model name.")
@click.option("--peft-type", help="PROMPT_TUNING, P_TUNING, PREFIX_TUNING or LORA.")
@click.option("--dataset", help="A dataset name or sha256: digest.")
@click.option("--all", "include_inactive", is_flag=True, help="Include deprecated versions.")
@click.option("--limit", type=int, default=50, show_default=True)
@json_option
@pass_app
def list_(app: AppContext, base_model: str | None, peft_type: str | None, dataset: str | None,
          include_inactive: bool, limit: int) -> None:
    """List published versions, newest first."""
    from registry import catalogue

    items = catalogue.list_versions(
        db=app.db, base_model=base_model, peft_type=peft_type, dataset=dataset,
        include_inactive=include_inactive, limit=limit,
    )
    emit(app, items, lambda: render_summaries(items))


@cli.command()
@click.argument("name")
@json_option
@pass_app
def versions(app: AppContext, name: str) -> None:
    """List every version of one adapter."""
    from registry import catalogue

    items = catalogue.versions(name, db=app.db)
    emit(app, items, lambda: render_summaries(items))


@cli.group()
def alias() -> None:
    """Move or remove aliases such as 'prod'."""


@alias.command(name="set")
@click.argument("ref")
@click.argument("alias_name", metavar="ALIAS")
@json_option
@pass_app
def alias_set(app: AppContext, ref: str, alias_name: str) -> None:
    """Point ALIAS at the version REF (the move is logged)."""
    from registry import catalogue

    version = catalogue.set_alias(ref, alias_name, db=app.db)
    emit(app, version, lambda: click.echo(f"{version.full_name}@{alias_name} -> {version.number}"))


@alias.command(name="rm")
@click.argument("name")
@click.argument("alias_name", metavar="ALIAS")
@pass_app
def alias_rm(app: AppContext, name: str, alias_name: str) -> None:
    """Remove ALIAS from adapter NAME (logged)."""
    from registry import catalogue

    catalogue.remove_alias(name, alias_name, db=app.db)
    click.echo(f"removed alias {alias_name} from {name}", err=True)


@cli.command()
@click.argument("ref")
@click.option("--reason", required=True, help="Why it must no longer be used.")
@json_option
@pass_app
def deprecate(app: AppContext, ref: str, reason: str) -> None:
    """Mark a version deprecated (still resolvable by number, alias or digest)."""
    from registry import catalogue

    version = catalogue.deprecate(ref, reason, db=app.db)
    emit(app, version, lambda: click.echo(f"deprecated {version.ref}: {reason}"))


class DefaultCommandGroup(click.Group):
    """A group whose first argument, when it names no subcommand, goes to a default subcommand.

    ``spr eval REF --dataset PATH`` runs ``spr eval run REF --dataset PATH``, while
    ``spr eval add REF METRIC=VALUE`` still records a score typed by hand.
    """

    def __init__(self, *args: object, default_command: str, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.default_command = default_command

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


@cli.group(name="eval", cls=DefaultCommandGroup, default_command="run")
def eval_() -> None:
    """Evaluate a version on a dataset and record the scores (spr eval REF --dataset PATH),
    or record scores computed elsewhere (spr eval add REF METRIC=VALUE)."""


@eval_.command(name="add")
@click.argument("ref")
@click.argument("scores", nargs=-1, required=True, metavar="METRIC=VALUE[@DATASET]...")
@click.option("--split", help="The split the scores were computed on.")
@json_option
@pass_app
def eval_add(app: AppContext, ref: str, scores: tuple[str, ...], split: str | None) -> None:
    """Record eval scores for REF (they accumulate over time)."""
    from registry import catalogue
    from registry.cli.inputs import parse_eval

    # Parse every score first: a malformed one records none of them.
    parsed = [parse_eval(text, split=split) for text in scores]
    version = catalogue.add_evals(ref, parsed, db=app.db)
    emit(app, version, lambda: click.echo(f"recorded {len(scores)} score(s) for {version.ref}"))


@cli.command()
@click.argument("ref")
@click.argument("directory", type=click.Path(path_type=Path))
@json_option
@pass_app
def export(app: AppContext, ref: str, directory: Path) -> None:
    """Write REF as a standard PEFT directory, verifying every byte."""
    from registry import catalogue

    path = catalogue.export(ref, directory, db=app.db)
    emit(app, {"ref": ref, "directory": str(path)}, lambda: click.echo(f"exported {ref} to {path}"))


@cli.command()
@click.argument("ref")
@json_option
@pass_app
def lineage(app: AppContext, ref: str) -> None:
    """Parents up to the root, with base model, dataset and eval scores."""
    from registry import catalogue

    result = catalogue.lineage(ref, db=app.db)
    emit(app, result, lambda: render_lineage(result))


def _node_label(v: VersionInfo) -> str:
    parts = [f"[bold]{markup_safe(v.ref)}[/bold] {short_digest(v.digest)} {v.peft_type}"]
    if v.aliases:
        parts.append(markup_safe(f"({', '.join(v.aliases)})"))
    if v.status != "active":
        parts.append(markup_safe(f"[{v.status}]"))
    return " ".join(parts)


def _add(tree: Tree, text: str) -> None:
    tree.add(markup_safe(text))


def _add_facts(tree: Tree, v: VersionInfo) -> None:
    if v.base_model:
        _add(tree, f"base model: {v.base_model.name}" + (f"@{v.base_model.revision}" if v.base_model.revision else ""))
    if v.dataset:
        _add(tree, f"dataset: {v.dataset.name or '-'} {short_digest(v.dataset.digest)}"
                 + (f" ({v.dataset.records} records)" if v.dataset.records is not None else ""))
    if v.init_method:
        _add(tree, f"init: {v.init_method}" + (f" {v.init_text!r}" if v.init_text else ""))
    for s in v.eval_scores:
        _add(tree, f"eval {s.metric}={s.value:.6g}" + (f" on {s.dataset_name or short_digest(s.dataset)}" if (s.dataset or s.dataset_name) else "")
                 + f" ({when(s.recorded_at)}, {s.recorded_by})")
    if not v.lineage_verified:
        tree.add("[yellow]lineage unverified[/yellow]")


def render_lineage(result: Lineage) -> None:
    from rich.tree import Tree

    root = Tree(_node_label(result.version))
    _add_facts(root, result.version)
    node = root
    for ancestor in result.ancestors:
        if ancestor.version is None:
            node.add(f"parent {ancestor.digest} [yellow](not in this catalogue)[/yellow]")
            break
        node = node.add("parent " + _node_label(ancestor.version))
        _add_facts(node, ancestor.version)
    stdout().print(root)


@cli.command()
@click.argument("ref", required=False)
@click.option("--limit", type=int, help="Only the newest N events.")
@json_option
@pass_app
def log(app: AppContext, ref: str | None, limit: int | None) -> None:
    """The audit log (oldest first), optionally only for one adapter or version."""
    from registry import catalogue

    items = catalogue.events(ref, db=app.db, limit=limit)

    def render() -> None:
        for e in items:
            details = " ".join(f"{k}={v}" for k, v in sorted(e.details.items()) if v is not None)
            click.echo(f"{when(e.at)}  {e.actor:<12} {e.action:<12} {e.subject}  {details}")

    emit(app, items, render)


@cli.group(name="db")
def db_group() -> None:
    """Catalogue schema: upgrade and inspect."""


@db_group.command(name="upgrade")
@json_option
@pass_app
def db_upgrade(app: AppContext) -> None:
    """Apply every pending migration to the catalogue."""
    from registry import db

    revision = db.upgrade_url(app.db)
    emit(app, {"revision": revision}, lambda: click.echo(f"catalogue is at schema revision {revision}"))


@db_group.command(name="current")
@json_option
@pass_app
def db_current(app: AppContext) -> None:
    """Show the catalogue's schema revision and the newest this spr knows."""
    from registry import db

    found, head = db.revision_status(app.db)
    emit(app, {"current": found, "head": head},
         lambda: click.echo(f"current {found or 'none (empty)'}; head {head}" + ("" if found == head else "; run 'spr db upgrade'")))
