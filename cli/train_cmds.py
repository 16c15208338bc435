"""Training commands: ``spr train``, ``spr eval REF --dataset PATH`` and ``spr generate``.

Each parses its options, makes one library call (:mod:`registry.ml.training`,
:mod:`registry.ml.evaluation`) and prints. torch is imported by those calls, never when this module
is imported: ``spr list`` must start without it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from registry.cli.app import AppContext, cli, emit, json_option, pass_app
from registry.cli.catalogue_cmds import eval_
from registry.cli.output import stderr, unescape
from registry.ml import defaults as D  # torch-free: the library's defaults, read here, never repeated

METHOD_CHOICES = tuple(D.METHODS)
INIT_CHOICES = tuple(D.INITS)
METRIC_CHOICES = tuple(D.METRICS)
PLAIN_PROGRESS_EVERY_S = 5.0  # without a terminal, a progress line at most this often


@contextmanager
def training_progress(enabled: bool) -> Iterator[Callable[[int, int, float | None], None] | None]:
    """A progress bar on stderr (a terminal), else a plain line now and then; data stays on stdout."""
    if not enabled:
        yield None
        return
    console = stderr()
    if console.is_terminal:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        with Progress(
            TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
        ) as bar:
            task = bar.add_task("train", total=None, loss="-")

            def update(step: int, total: int, loss: float | None) -> None:
                bar.update(task, completed=step, total=total or None, loss=f"{loss:.4f}" if loss is not None else "-")

            yield update
        return
    last = [0.0, -1]

    def line(step: int, total: int, loss: float | None) -> None:
        now = time.monotonic()
        if step == last[1]:
            return
        if step == 1 or step == total or now - last[0] >= PLAIN_PROGRESS_EVERY_S:
            last[0], last[1] = now, step
            shown = f" loss {loss:.4f}" if loss is not None else ""
            click.echo(f"step {step}/{total}{shown}", err=True)

    yield line


@cli.command()
@click.option("--base-model", metavar="DIR|REPO[@REV]", help="The base model (default with --parent: the parent's, if a local directory).")
@click.option("--dataset", type=click.Path(path_type=Path), required=True,
              help="Training data: JSONL/JSON/CSV/TXT/Parquet with a 'text' column or 'prompt'/'completion' columns, or a datasets save_to_disk directory.")
@click.option("--name", help="Publish as this adapter name, [namespace/]name (required unless --no-publish).")
@click.option("--method", type=click.Choice(METHOD_CHOICES), help=f"PEFT method (default {D.DEFAULT_METHOD}; with --parent, the parent's).")
@click.option("--virtual-tokens", type=int, help=f"Number of virtual tokens (default {D.DEFAULT_VIRTUAL_TOKENS}; with --init text, the init text's token count).")
@click.option("--init", "init", type=click.Choice(INIT_CHOICES), help="Prompt-tuning init (default random; text when --init-text is given).")
@click.option("--init-text", help="Text the soft prompt starts from (--init text).")
@click.option("--epochs", type=float, default=D.DEFAULT_EPOCHS, show_default=True)
@click.option("--lr", type=float, default=D.DEFAULT_LR, show_default=True, help="Learning rate.")
@click.option("--batch-size", type=int, default=D.DEFAULT_BATCH_SIZE, show_default=True)
@click.option("--max-length", type=int, default=D.DEFAULT_MAX_LENGTH, show_default=True, help="Tokens per example (longer ones are truncated).")
@click.option("--seed", type=int, default=D.DEFAULT_SEED, show_default=True)
@click.option("--max-steps", type=int, help="Stop after this many optimizer steps (overrides --epochs).")
@click.option("--eval-split", type=float, help=f"Fraction of the records held out for evaluation (default {D.DEFAULT_EVAL_SPLIT}).")
@click.option("--eval-dataset", type=click.Path(path_type=Path), help="Evaluate on this dataset instead of a held-out split.")
@click.option("--text-column", metavar="COLUMN", help="The column holding the text (default 'text').")
@click.option("--parent", metavar="REF", help="Continue from this published version's weights (recorded as the parent).")
@click.option("--template", help="Input format with {prompt}, e.g. 'Human: {prompt}\\n\\nAssistant: ' (\\n, \\t and \\\\ are interpreted). Recorded, and applied by spr eval and spr generate.")
@click.option("--lora-r", type=int, default=D.DEFAULT_LORA_R, show_default=True, help="LoRA rank (--method lora).")
@click.option("--lora-alpha", type=int, help="LoRA alpha (default 2 x r).")
@click.option("--lora-target", "lora_targets", multiple=True, metavar="MODULE", help="LoRA target module (repeatable; default: PEFT's choice).")
@click.option("--device", type=click.Choice(D.DEVICES), default=D.DEFAULT_DEVICE, show_default=True)
@click.option("--allow-different-base", is_flag=True, help="Accept a --parent recorded on another base model (logged).")
@click.option("--write-heldout", type=click.Path(path_type=Path), metavar="FILE.jsonl",
              help="Also write the held-out records (canonical JSONL: its digest is the one recorded), for spr eval.")
@click.option("--publish/--no-publish", default=True, help="--no-publish writes the adapter directory to --output only.")
@click.option("--output", type=click.Path(path_type=Path), help="Also write the adapter directory here (required with --no-publish).")
@click.option("--description", help="What this soft prompt is for.")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="A tag (repeatable).")
@click.option("--author", help="Who publishes (default: git user.name, else the OS user).")
@json_option
@pass_app
def train(
    app: AppContext, base_model: str | None, dataset: Path, name: str | None, method: str | None,
    virtual_tokens: int | None, init: str | None, init_text: str | None, epochs: float, lr: float,
    batch_size: int, max_length: int, seed: int, max_steps: int | None, eval_split: float | None,
    eval_dataset: Path | None, text_column: str | None, parent: str | None, template: str | None,
    lora_r: int, lora_alpha: int | None, lora_targets: tuple[str, ...], device: str,
    allow_different_base: bool, write_heldout: Path | None, publish: bool, output: Path | None,
    description: str | None, tags: tuple[str, ...], author: str | None,
) -> None:
    """Train a soft prompt with transformers.Trainer + PEFT and publish it with its lineage.

    Recorded automatically: the base model's identity, the dataset's digest, the full PEFT config,
    the training settings and seed, library versions, device, loss curve, held-out eval loss and
    perplexity (tied to the held-out data's digest), the template and the parent. Ctrl-C stops
    training and publishes nothing (exit 130).
    """
    from registry.cli.inputs import parse_tags
    from registry.errors import UsageError
    from registry.ml import training

    if publish and not name:
        raise UsageError("--name is required to publish", hint="pass --name team/coach, or --no-publish --output DIR")
    if not publish and output is None:
        raise UsageError("--no-publish needs --output DIR", hint="the adapter directory is written there")
    config = training.TrainConfig(
        dataset=dataset, base_model=base_model, method=method, virtual_tokens=virtual_tokens, init=init,
        init_text=init_text, epochs=epochs, lr=lr, batch_size=batch_size, max_length=max_length, seed=seed,
        max_steps=max_steps, eval_split=eval_split, eval_dataset=eval_dataset, text_column=text_column,
        parent=parent, template=unescape(template) if template is not None else None, lora_r=lora_r,
        lora_alpha=lora_alpha, lora_target_modules=lora_targets, device=device,
        allow_different_base=allow_different_base,
    )
    parsed_tags = parse_tags(tags)
    with training_progress(True) as progress:
        if publish:
            assert name is not None
            result = training.train_and_publish(
                config, name, db=app.db, output_dir=output, description=description, tags=parsed_tags,
                author=author, progress=progress,
            )
        else:
            assert output is not None
            result = training.train(config, output, db=app.db, progress=progress)
    heldout_info = training.write_examples_jsonl(result.heldout, write_heldout) if write_heldout and result.heldout else None
    data = {
        "created": result.published.created if result.published else None,
        "version": result.published.version if result.published else None,
        "output": str(result.adapter_dir) if result.adapter_dir else None,
        "steps": result.steps,
        "train_tokens": result.train_tokens,
        "tokens_per_second": result.tokens_per_second,
        "eval_loss_before": result.eval_loss_before,
        "evals": [
            {"metric": e.metric, "value": e.value, "dataset": e.dataset.digest if e.dataset else None, "split": e.split}
            for e in result.evals
        ],
        "heldout_file": str(write_heldout) if heldout_info else None,
        "training": result.training,
        "timings": result.timings,
        "step_seconds": result.step_seconds,
    }

    def render() -> None:
        def note(text: str) -> None:
            click.echo(text, err=True)

        note(
            f"trained {result.steps} step(s) in {result.timings.get('train', 0):.1f} s "
            f"({result.tokens_per_second:,.0f} tokens/s) on {result.training['device']}"
        )
        for e in result.evals:
            before = ""
            if e.metric == "eval_loss" and result.eval_loss_before is not None:
                before = f" (untrained: {result.eval_loss_before:.4f})"
            where = f" on {e.dataset_name or '-'}" + (f" [{e.split}]" if e.split else "")
            note(f"{e.metric} {e.value:.4f}{before}{where}")
        if heldout_info:
            note(f"held-out records written to {write_heldout} ({heldout_info.digest})")
        if result.adapter_dir:
            note(f"adapter written to {result.adapter_dir}")
        if result.published:
            verb = "published" if result.published.created else "already published (identical content)"
            click.echo(f"{verb} {result.published.version.ref} {result.published.version.digest}")

    emit(app, data, render)


@eval_.command(name="run")
@click.argument("ref")
@click.option("--dataset", type=click.Path(path_type=Path), required=True, help="Eval data (as for spr train); its digest is recorded.")
@click.option("--base-model", metavar="DIR|REPO[@REV]", help="Base model (default: the recorded one, if a local directory that exists).")
@click.option("--metric", "metrics", multiple=True, type=click.Choice(METRIC_CHOICES),
              help="Metric (repeatable). Default: loss and perplexity, plus exact-match and rouge-l for prompt/completion data.")
@click.option("--split", help="The split name recorded with the scores (e.g. test).")
@click.option("--text-column", metavar="COLUMN", help="The column holding the text (default 'text').")
@click.option("--batch-size", type=int, default=D.DEFAULT_EVAL_BATCH_SIZE, show_default=True)
@click.option("--max-length", type=int, help="Tokens per example (default: what training used).")
@click.option("--max-new-tokens", type=int, default=D.DEFAULT_EVAL_NEW_TOKENS, show_default=True, help="Generation length for exact-match / rouge-l.")
@click.option("--device", type=click.Choice(D.DEVICES), default=D.DEFAULT_DEVICE, show_default=True)
@click.option("--allow-different-base", is_flag=True, help="Accept a base model other than the recorded one (logged).")
@click.option("--no-record", is_flag=True, help="Compute and print only; record nothing.")
@json_option
@pass_app
def eval_run(
    app: AppContext, ref: str, dataset: Path, base_model: str | None, metrics: tuple[str, ...], split: str | None,
    text_column: str | None, batch_size: int, max_length: int | None, max_new_tokens: int, device: str,
    allow_different_base: bool, no_record: bool,
) -> None:
    """Verify, load and score REF on a dataset; record each score with the dataset's digest."""
    from registry.ml import evaluation

    report = evaluation.evaluate(
        ref, dataset, base_model=base_model, metrics=metrics or None, split=split, text_column=text_column, db=app.db,
        allow_different_base=allow_different_base, batch_size=batch_size, max_length=max_length,
        max_new_tokens=max_new_tokens, device=device, record=not no_record,
    )
    data = {
        "ref": report.ref, "digest": report.digest, "base_model": report.base_model, "dataset": report.dataset,
        "split": report.split, "template": report.template, "scores": report.scores, "examples": report.examples,
        "target_tokens": report.target_tokens, "recorded": report.recorded, "samples": report.samples,
    }

    def render() -> None:
        on = f"{report.dataset.name} {report.dataset.digest}" + (f" [{report.split}]" if report.split else "")
        click.echo(f"{report.ref} on {on} ({report.examples} records)")
        for metric, value in report.scores.items():
            click.echo(f"  {metric:<12} {value:.6g}")
        for s in report.samples:
            click.echo(f"  prompt {s.prompt!r}\n    expected {s.reference!r}\n    got      {s.prediction!r}", err=True)
        click.echo("recorded" if report.recorded else "not recorded (--no-record)", err=True)

    emit(app, data, render)


@cli.command()
@click.argument("ref")
@click.option("--prompt", required=True, help="The input (the recorded template is applied to it).")
@click.option("--base-model", metavar="DIR|REPO[@REV]", help="Base model (default: the recorded one, if a local directory that exists).")
@click.option("--max-new-tokens", type=int, default=D.DEFAULT_GENERATE_NEW_TOKENS, show_default=True)
@click.option("--repetition-penalty", type=float, default=D.TUTORIAL_REPETITION_PENALTY, show_default=True, help="As in the tutorials' generate().")
@click.option("--compare-base", is_flag=True, help="Also print the bare base model's output on the same input.")
@click.option("--no-template", is_flag=True, help="Do not apply the recorded template.")
@click.option("--device", type=click.Choice(D.DEVICES), default=D.DEFAULT_DEVICE, show_default=True)
@click.option("--allow-different-base", is_flag=True, help="Accept a base model other than the recorded one (logged).")
@json_option
@pass_app
def generate(
    app: AppContext, ref: str, prompt: str, base_model: str | None, max_new_tokens: int, repetition_penalty: float,
    compare_base: bool, no_template: bool, device: str, allow_different_base: bool,
) -> None:
    """Verify and load REF, then generate from PROMPT with its recorded template."""
    from registry.ml import evaluation

    result = evaluation.generate(
        ref, prompt, base_model=base_model, max_new_tokens=max_new_tokens, compare_base=compare_base,
        use_template=not no_template, repetition_penalty=repetition_penalty, db=app.db,
        allow_different_base=allow_different_base, device=device,
    )

    def render() -> None:
        if result.template and result.template != "{prompt}":
            click.echo(f"input (template {result.template!r}): {result.formatted!r}", err=True)
        if result.base_output is None:
            click.echo(result.output)
            return
        click.echo(f"[{result.ref}] {result.output}")
        click.echo(f"[base model] {result.base_output}")

    emit(app, result, render)


__all__ = ["eval_run", "generate", "train"]
