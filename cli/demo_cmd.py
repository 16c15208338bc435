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
COACH_PROMPT = "I want to start running."


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
    os.environ.setdefault("SPR_ACTOR", "demo")
    tour = Tour(workdir)
    tour.use_machine(workdir / "publisher")
    click.echo(f"spr demo: working in {workdir}")

    tour.section("1. Tiny base models and two datasets (bloom-shaped, built from configs, offline)")
    data = toymodels.write_demo_datasets(workdir / "data")
    tokenizer = toymodels.train_tokenizer(workdir / "tokenizer")
    base = tour.timed("built 'tiny-bloom' (hidden 64, 2 layers, briefly pretrained on the demo sentences)",
                      lambda: toymodels.make_base_model(workdir / "tiny-bloom", tokenizer_dir=tokenizer,
                                                        seed=0, pretrain_steps=100))
    wide = toymodels.make_base_model(workdir / "tiny-bloom-wide", hidden_size=128, tokenizer_dir=tokenizer, seed=0)
    other = toymodels.make_base_model(workdir / "tiny-bloom-other", tokenizer_dir=tokenizer, seed=7)
    tour.say("also 'tiny-bloom-wide' (hidden 128) and 'tiny-bloom-other' (same config, other weights)")
    for key in ("coach_train", "coach_eval", "quotes_train", "quotes_eval"):
        tour.say(f"dataset {key}: {data[key].relative_to(workdir)}")

    tour.section("2. Train two soft prompts with spr train: every fact recorded by the tool that produced it")
    tour.spr("train", "--base-model", str(base), "--dataset", str(data["coach_train"]),
             "--eval-dataset", str(data["coach_eval"]), "--name", "team/coach", "--virtual-tokens", "4",
             "--init", "random", "--epochs", "3", "--lr", "0.03", "--seed", "1",
             "--description", "motivational coach (RANDOM init)")
    tour.spr("train", "--base-model", str(base), "--dataset", str(data["quotes_train"]),
             "--eval-dataset", str(data["quotes_eval"]), "--name", "team/quotes",
             "--init-text", toymodels.TEXT_INIT_PROMPT, "--epochs", "3", "--lr", "0.03", "--seed", "2",
             "--description", "short quotes (TEXT init)")

    tour.section("3. Continue training the coach prompt: lineage is recorded, not typed")
    tour.spr("train", "--parent", "team/coach@1", "--dataset", str(data["coach_train"]),
             "--eval-dataset", str(data["coach_eval"]), "--name", "team/coach", "--epochs", "3",
             "--lr", "0.03", "--seed", "3")
    tour.spr("alias", "set", "team/coach@2", "prod")
    tour.spr("eval", "team/coach@prod", "--dataset", str(data["coach_eval"]), "--metric", "loss",
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
    tour.say("a verified load that generates (a 64-wide toy: the text is noise, but each soft prompt steers it):")
    tour.spr("generate", "team/coach@prod", "--prompt", COACH_PROMPT, "--max-new-tokens", "12", "--compare-base")

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
        tour.spr("generate", "team/coach@2", "--prompt", COACH_PROMPT, "--max-new-tokens", "12")
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

    tour.say("two verified soft prompts on one copy of the base (loading.load_many, then set_adapter):")
    model = loading.load_many(["team/coach@2", "team/quotes@1"], str(base))
    tokenizer = toymodels.load_tokenizer(base)
    ids = tokenizer(COACH_PROMPT, return_tensors="pt", add_special_tokens=False)["input_ids"]
    for ref in ("team/coach@2", "team/quotes@1"):
        model.set_adapter(loading.adapter_name_for(ref))
        with torch.no_grad():
            out = model.generate(input_ids=ids, max_new_tokens=10, do_sample=False, repetition_penalty=1.5)
        text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        tour.say(f"  {ref:<14} -> {text!r}")


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
