"""``spr demo``: a tour of the real workflow, offline, on a fresh SQLite catalogue.

Each step prints the ``spr`` command it runs and runs it for real (in-process, through the same
entry point as the console script), so the tour doubles as a cheat sheet. The models are tiny
ones built from configs with a tokenizer trained on a few sentences; the soft prompts are trained
by ``spr train`` with real PEFT; the Hub is the project's own local server on a free port.
"""

from __future__ import annotations

import os
import secrets
import shlex
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from registry.cli.app import cli

T = TypeVar("T")
# A request both tasks were trained on: a 64-wide toy answers by heart what it memorised; the point
# is that the same input gets each task's answer, chosen by the soft prompt alone.
COACH_PROMPT = "I need help getting up early to run."
PRETRAIN_STEPS = 200
TWO_TASKS_TOKENS = 24


class Tour:
    """Runs ``spr`` commands, printing each like a shell session."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started = time.perf_counter()

    def section(self, title: str) -> None:
        click.secho(f"\n== {title}", fg="cyan", bold=True)

    def say(self, text: str) -> None:
        click.echo(f"   {text}")

    def spr(self, *argv: str, expect: int = 0) -> None:
        from registry.cli.main import run

        shown = " ".join(shlex.quote(a.replace(str(self.workdir) + "/", "")) for a in argv)
        click.secho(f"$ spr {shown}", fg="green")
        code = run(list(argv))
        if code != expect:
            raise click.ClickException(f"demo step 'spr {shown}' exited {code}, expected {expect}")
        if expect:
            click.echo(f"   (exit {code}, as expected)")

    def progress(self, label: str, every: int) -> Callable[[int, int, float | None], None]:
        """A training progress callback that prints every ``every`` steps (and the last)."""

        def report(step: int, total: int, loss: float | None) -> None:
            if step % max(1, every) == 0 or step == total:
                shown = "" if loss is None else f" loss {loss:.3f}"
                self.say(f"  {label}: step {step}/{total}{shown} ({time.perf_counter() - self.started:.0f} s)")

        return report

    def timed(self, label: str, work: Callable[[], T]) -> T:
        t0 = time.perf_counter()
        result = work()
        self.say(f"{label} ({time.perf_counter() - t0:.1f} s)")
        return result

    def use_machine(self, home: Path) -> None:
        """Act as another machine: its own catalogue, blob store and Hub client cache.

        Settings are read at call time, so switching the environment is all it takes.
        """
        os.environ["SPR_HOME"] = str(home / "spr-home")
        os.environ["HF_HOME"] = str(home / "hf-home")


@cli.command()
@click.option("--workdir", type=click.Path(path_type=Path), help="Where to build (default: a new temp dir).")
def demo(workdir: Path | None) -> None:
    """A tour of the real workflow on tiny models, offline, in a fresh catalogue."""
    try:
        from registry.demo import toymodels
    except ImportError as exc:  # pragma: no cover - the [ml] extra is missing
        raise click.ClickException(f"spr demo needs the [ml] extra: pip install 'softprompt-registry[ml]' ({exc})") from None
    workdir = Path(workdir or tempfile.mkdtemp(prefix="spr-demo-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    # Everything the tour writes stays under workdir: catalogues, blobs, the Hub client's cache.
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    os.environ.pop("SPR_DATABASE_URL", None)
    import torch

    # The tour's models are 64 wide: one thread computes them as fast as two, and on a busy
    # machine two spinning threads made each training step several times slower.
    torch.set_num_threads(1)
    os.environ.setdefault("SPR_ACTOR", "demo")
    tour = Tour(workdir)
    tour.use_machine(workdir / "publisher")
    click.echo(f"spr demo: working in {workdir}")

    tour.section("1. A tiny base model and two tasks (bloom-shaped, built from configs, offline)")
    data = toymodels.write_demo_datasets(workdir / "data")
    tokenizer = tour.timed("trained a byte-level BPE tokenizer on the demo sentences",
                           lambda: toymodels.train_tokenizer(workdir / "tokenizer"))
    tour.say(f"pretraining 'tiny-bloom' (hidden 64, 2 layers) for {PRETRAIN_STEPS} steps on "
             f"{len(toymodels.DEMO_PRETRAIN_TEXTS)} short texts, so that it writes words, not byte noise:")
    base = tour.timed("built 'tiny-bloom'", lambda: toymodels.make_base_model(
        workdir / "tiny-bloom", tokenizer_dir=tokenizer, seed=0, init_range=0.02, pretrain_steps=PRETRAIN_STEPS,
        pretrain_texts=toymodels.DEMO_PRETRAIN_TEXTS, pretrain_lr=1e-2, pretrain_batch_size=32,
        progress=tour.progress("pretraining", every=PRETRAIN_STEPS // 4)))
    wide = toymodels.make_base_model(workdir / "tiny-bloom-wide", hidden_size=128, tokenizer_dir=tokenizer, seed=0)
    other = toymodels.make_base_model(workdir / "tiny-bloom-other", tokenizer_dir=tokenizer, seed=7)
    tour.say("also 'tiny-bloom-wide' (hidden 128) and 'tiny-bloom-other' (same config, other random weights)")
    tour.say("two tasks on the same requests: a coach's reply, or a saying")
    for key in ("coach_replies_train", "coach_replies_eval", "quote_replies_train", "quote_replies_eval"):
        tour.say(f"dataset {key}: {data[key].relative_to(workdir)}")

    tour.section("2. Train two soft prompts with spr train: every fact recorded by the tool that produced it")
    tour.spr("train", "--base-model", str(base), "--dataset", str(data["coach_replies_train"]),
             "--eval-dataset", str(data["coach_replies_eval"]), "--name", "team/coach",
             "--init-text", toymodels.TEXT_INIT_PROMPT, "--epochs", "30", "--lr", "0.1", "--seed", "1",
             "--description", "answers like a motivational coach (TEXT init)")
    tour.spr("train", "--base-model", str(base), "--dataset", str(data["quote_replies_train"]),
             "--eval-dataset", str(data["quote_replies_eval"]), "--name", "team/quotes", "--virtual-tokens", "8",
             "--init", "random", "--epochs", "30", "--lr", "0.1", "--seed", "2",
             "--description", "answers with a saying (RANDOM init)")

    tour.section("3. Continue training the coach prompt: lineage is recorded, not typed")
    tour.spr("train", "--parent", "team/coach@1", "--dataset", str(data["coach_replies_train"]),
             "--eval-dataset", str(data["coach_replies_eval"]), "--name", "team/coach", "--epochs", "5",
             "--lr", "0.05", "--seed", "3")
    tour.spr("alias", "set", "team/coach@2", "prod")
    tour.spr("eval", "team/coach@prod", "--dataset", str(data["coach_replies_eval"]), "--metric", "loss",
             "--metric", "perplexity")
    tour.spr("show", "team/coach@prod")
    tour.spr("list")
    tour.spr("lineage", "team/coach@prod")

    tour.section("4. Compatibility before loading: what PEFT alone would do, and what spr does")
    tour.say("PEFT loads the 64-wide soft prompt onto the 128-wide model without complaint:")
    _peft_alone(tour, base, wide)
    tour.spr("verify", "team/coach@prod", "--base-model", str(wide), expect=3)
    tour.say("same width, different weights: PEFT would produce garbage silently; spr refuses:")
    tour.spr("verify", "team/coach@prod", "--base-model", str(other), expect=3)
    tour.spr("verify", "team/coach@prod", "--base-model", str(base))
    tour.say("a verified load that generates, with and without the soft prompt:")
    tour.spr("generate", "team/coach@prod", "--prompt", COACH_PROMPT, "--max-new-tokens", "16", "--repetition-penalty", "1.0", "--compare-base")

    tour.section("5. Share through a Hub: the project's own Hub-compatible server on a free port")
    from registry.hubserver import HubServer

    token = secrets.token_hex(16)  # the demo server's token: given to the client via HF_TOKEN, never printed
    server = HubServer(workdir / "hub", tokens=[f"{token} team"]).start()
    try:
        os.environ["HF_TOKEN"] = token
        endpoint = server.url
        tour.say(f"local Hub at {endpoint}")
        tour.spr("push", "team/coach@prod", "--repo", "team/coach", "--endpoint", endpoint)
        tour.spr("push", "team/quotes@1", "--repo", "team/quotes", "--endpoint", endpoint)
        tour.say("pushing the same version again changes nothing:")
        tour.spr("push", "team/coach@prod", "--repo", "team/coach", "--endpoint", endpoint)
        lockfile = workdir / "adapters.lock"
        tour.spr("lock", "team/coach@prod", "team/quotes@1", "-o", str(lockfile))

        tour.section("6. A deploy script on another machine: an empty catalogue, exactly the locked bytes")
        tour.use_machine(workdir / "deploy")
        del os.environ["HF_TOKEN"]  # deploy scripts read; they need no write token here
        tour.spr("sync", str(lockfile), "--frozen", "--endpoint", endpoint)
        tour.spr("pull", "team/coach@v2", "--endpoint", endpoint)
        tour.spr("show", "team/coach@2")
        tour.spr("lineage", "team/coach@2")
        tour.spr("verify", "team/coach@2", "--base-model", str(base))
        tour.spr("generate", "team/coach@2", "--prompt", COACH_PROMPT, "--max-new-tokens", "16", "--repetition-penalty", "1.0")
        _two_tasks_one_base(tour, base)
        _one_batch(tour, base)
        tour.say("a byte changed on the server reaches a third machine: refused before anything is imported:")
        server.storage.tamper("team/quotes", "adapter_model.safetensors", _flipped(
            server, "team/quotes", "adapter_model.safetensors"))
        tour.use_machine(workdir / "deploy-2")
        tour.spr("pull", "team/quotes@v1", "--endpoint", endpoint, expect=5)
    finally:
        server.stop()
        os.environ.pop("HF_TOKEN", None)

    tour.section("7. Audit: who did what, and is every stored byte still what was recorded?")
    tour.use_machine(workdir / "publisher")
    tour.spr("log", "team/coach")
    tour.spr("audit")
    tour.say("a ref that does not exist is one clear line and a non-zero exit:")
    tour.spr("show", "team/coach@7", expect=4)

    click.secho(f"\ndone in {time.perf_counter() - tour.started:.1f} s; everything is under {workdir}", fg="cyan")
    home = shlex.quote(str(workdir / "publisher" / "spr-home"))
    click.echo(f"see it in a browser (lineage graphs, eval plots, the audit log; needs the [ui] extra):\n"
               f"  SPR_HOME={home} spr ui")


def _peft_alone(tour: Tour, base: Path, wide: Path) -> None:
    """Load the prod soft prompt onto the wide model with plain PEFT and show where it breaks."""
    import warnings

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from registry import catalogue

    exported = catalogue.export("team/coach@prod", tour.workdir / "exported-coach")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(wide), exported)
        tour.say("  PeftModel.from_pretrained(wide_model, adapter): loaded, no error")
        import torch

        try:
            model.generate(input_ids=torch.tensor([[5, 6, 7]]), max_new_tokens=2)
            tour.say("  generate(): ran (unexpected)")
        except RuntimeError as exc:
            tour.say(f"  generate(): RuntimeError: {str(exc).splitlines()[0][:110]}")


def _two_tasks_one_base(tour: Tour, base: Path) -> None:
    """The classic notebook setup, made safe: two verified soft prompts on one copy of the base."""
    import torch

    from registry.demo import toymodels
    from registry.ml import loading

    tour.say(f"two verified soft prompts on one copy of the base (loading.load_many, then set_adapter), "
             f"the same request {COACH_PROMPT!r}:")
    model = loading.load_many(["team/coach@2", "team/quotes@1"], str(base))
    tokenizer = toymodels.load_tokenizer(base)
    ids = tokenizer(COACH_PROMPT, return_tensors="pt", add_special_tokens=False)["input_ids"]

    def greedy() -> str:
        with torch.no_grad():
            # use_cache=False: with transformers 5 and PEFT 0.21, cached greedy decoding of a
            # prompt-tuned bloom drifts from the model's own (teacher-forced) next tokens after a
            # few steps; uncached decoding matches them.
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=TWO_TASKS_TOKENS,
                                 do_sample=False, use_cache=False)
        return str(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))

    for ref in ("team/coach@2", "team/quotes@1"):
        model.set_adapter(loading.adapter_name_for(ref))
        tour.say(f"  {ref:<14} -> {greedy()!r}")
    with model.disable_adapter():
        tour.say(f"  {'(base alone)':<14} -> {greedy()!r}")


def _one_batch(tour: Tour, base: Path) -> None:
    """Both soft prompts answered in ONE forward pass by the serving engine, checked against PEFT."""
    import torch

    from registry.ml import loading
    from registry.ml.serving import SoftPromptEngine

    refs = ["team/coach@2", "team/quotes@1"]
    tour.say("the same two soft prompts answered in ONE batch by the serving engine (what 'spr serve' runs):")
    engine = SoftPromptEngine(str(base), refs)
    results = engine.generate([(ref, COACH_PROMPT) for ref in refs], max_new_tokens=10)
    model = loading.load_many(refs, str(base))
    for ref, result in zip(refs, results, strict=True):
        # PEFT's own single-adapter generate on the same text (uncached: see README "Serving")
        model.set_adapter(loading.adapter_name_for(ref))
        ids = torch.tensor([engine.encode(engine.prompt_text(engine.adapters[ref], COACH_PROMPT))])
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=10,
                                 do_sample=False, use_cache=False, eos_token_id=engine.eos_token_ids[0],
                                 pad_token_id=engine.tokenizer.pad_token_id)
        same = [int(t) for t in out[0, ids.shape[1]:]] == list(result.token_ids)
        tour.say(f"  {ref:<14} -> {result.text!r} (batch of {result.batch_size}; "
                 f"{'same tokens as' if same else 'DIFFERENT from'} PEFT's generate with that adapter alone)")


def _flipped(server: object, repo: str, path: str) -> bytes:
    """The file's current bytes on the server with its last byte flipped (same size)."""
    from huggingface_hub import hf_hub_download

    local = hf_hub_download(repo, path, revision="v1", endpoint=server.url, token=False,  # type: ignore[attr-defined]
                            cache_dir=tempfile.mkdtemp(prefix="spr-demo-scratch-"))
    data = bytearray(Path(local).read_bytes())
    data[-1] ^= 0xFF
    return bytes(data)
