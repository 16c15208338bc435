"""``spr demo``: a tour of the real workflow, offline, on a fresh SQLite catalogue.

Each step prints the ``spr`` command it runs and runs it for real (in-process, through the same
entry point as the console script), so the tour doubles as a cheat sheet. The models are tiny
ones built from configs with a tokenizer trained on a few sentences; the soft prompts are made
with real PEFT.
"""

from __future__ import annotations

import os
import shlex
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import click

from registry.cli.app import cli
from registry.errors import RegistryError


class Tour:
    """Runs ``spr`` commands, printing each like a shell session."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started = time.perf_counter()

    def section(self, title: str) -> None:
        click.secho(f"\n== {title}", fg="cyan", bold=True)

    def say(self, text: str) -> None:
        click.echo(f"   {text}")

    def spr(self, *argv: str, expect: int = 0) -> int:
        from registry.cli.main import run

        shown = " ".join(shlex.quote(a.replace(str(self.workdir) + "/", "")) for a in argv)
        click.secho(f"$ spr {shown}", fg="green")
        code = run(list(argv))
        if code != expect:
            raise click.ClickException(f"demo step 'spr {shown}' exited {code}, expected {expect}")
        return code

    def timed(self, label: str, work: Callable[[], object]) -> object:
        t0 = time.perf_counter()
        result = work()
        self.say(f"{label} ({time.perf_counter() - t0:.1f} s)")
        return result


@cli.command()
@click.option("--workdir", type=click.Path(path_type=Path), help="Where to build (default: a new temp dir).")
def demo(workdir: Path | None) -> None:
    """A tour of the real workflow on tiny models, offline, in a fresh catalogue."""
    try:
        from registry import toymodels
    except ImportError as exc:  # pragma: no cover - the [ml] extra is missing
        raise click.ClickException(f"spr demo needs the [ml] extra: pip install 'softprompt-registry[ml]' ({exc})")
    workdir = Path(workdir or tempfile.mkdtemp(prefix="spr-demo-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    # A fresh catalogue and blob store for the tour; settings are read at call time.
    os.environ["SPR_HOME"] = str(workdir / "spr-home")
    os.environ.pop("SPR_DATABASE_URL", None)
    os.environ.setdefault("SPR_ACTOR", "demo")
    tour = Tour(workdir)
    click.echo(f"spr demo: working in {workdir}")

    tour.section("1. A tiny base model and two datasets (bloom-shaped, built from a config, offline)")
    data = toymodels.write_demo_datasets(workdir / "data")
    tokenizer = toymodels.train_tokenizer(workdir / "tokenizer")
    base = Path(str(tour.timed("built base model 'tiny-bloom' (hidden 64, 2 layers)", lambda: toymodels.make_base_model(
        workdir / "tiny-bloom", arch="bloom", tokenizer_dir=tokenizer, seed=0, pretrain_steps=30))))
    for key, path in sorted(data.items()):
        tour.say(f"dataset {key}: {path.relative_to(workdir)}")

    tour.section("2. Two soft prompts with real PEFT: RANDOM init (coach) and TEXT init (quotes)")
    coach_train, coach_held = toymodels.coach_split()
    quotes_train, quotes_held = toymodels.quotes_split()
    coach = Path(str(tour.timed("trained coach soft prompt (PROMPT_TUNING, RANDOM, 4 virtual tokens)", lambda: toymodels.make_adapter(
        base, workdir / "adapters" / "coach", "PROMPT_TUNING", init="RANDOM", num_virtual_tokens=4,
        train_steps=20, dataset=coach_train, seed=1))))
    quotes = Path(str(tour.timed("trained quotes soft prompt (PROMPT_TUNING, TEXT init)", lambda: toymodels.make_adapter(
        base, workdir / "adapters" / "quotes", "PROMPT_TUNING", init="TEXT", init_text=toymodels.TEXT_INIT_PROMPT,
        num_virtual_tokens=None, train_steps=20, dataset=quotes_train, seed=2))))
    coach_loss = toymodels.eval_loss(base, coach, coach_held)
    quotes_loss = toymodels.eval_loss(base, quotes, quotes_held)
    tour.say(f"held-out eval loss: coach {coach_loss:.3f}, quotes {quotes_loss:.3f}")

    tour.section("3. Publish both, with base model, dataset digest and eval scores")
    coach_data, quotes_data = str(data["coach_train"]), str(data["quotes_train"])
    tour.spr("publish", str(coach), "--name", "team/coach", "--base-model", str(base), "--dataset", coach_data,
             "--eval", f"eval_loss={coach_loss:.4f}@{data['coach_eval']}", "--description", "motivational coach",
             "--template", "{prompt}")
    tour.spr("publish", str(quotes), "--name", "team/quotes", "--base-model", str(base), "--dataset", quotes_data,
             "--eval", f"eval_loss={quotes_loss:.4f}@{data['quotes_eval']}", "--description", "short quotes")
    tour.say("publishing the same content again is a safe retry:")
    tour.spr("publish", str(coach), "--name", "team/coach", "--base-model", str(base), "--dataset", coach_data,
             "--eval", f"eval_loss={coach_loss:.4f}@{data['coach_eval']}", "--description", "motivational coach",
             "--template", "{prompt}")

    tour.section("4. Continue training the coach prompt: a child version with --parent")
    # Same seed and data order as v1, run to 40 steps: its first 20 steps are exactly v1's run.
    child = Path(str(tour.timed("trained coach v2: v1's run continued to 40 steps", lambda: toymodels.make_adapter(
        base, workdir / "adapters" / "coach-v2", "PROMPT_TUNING", init="RANDOM", num_virtual_tokens=4,
        train_steps=40, dataset=coach_train, seed=1))))
    child_loss = toymodels.eval_loss(base, child, coach_held)
    tour.spr("publish", str(child), "--name", "team/coach", "--base-model", str(base), "--dataset", coach_data,
             "--parent", "team/coach@1", "--eval", f"eval_loss={child_loss:.4f}@{data['coach_eval']}",
             "--template", "{prompt}")
    tour.spr("alias", "set", "team/coach@2", "prod")

    tour.section("5. Find it again: show, list, lineage, audit log")
    tour.spr("show", "team/coach@prod")
    tour.spr("list")
    tour.spr("lineage", "team/coach@prod")
    tour.spr("log")
    tour.say("a ref that does not exist is one clear line and a non-zero exit:")
    tour.spr("show", "team/coach@7", expect=4)

    click.secho(f"\ndone in {time.perf_counter() - tour.started:.1f} s; catalogue and blobs in {workdir / 'spr-home'}",
                fg="cyan")


__all__ = ["demo", "RegistryError"]
