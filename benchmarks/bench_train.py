"""Training throughput (issue 6): ``spr train`` against the notebook recipe, same model, data and settings.

    python benchmarks/bench_train.py [--steps 4] [--repeats 2] [--bench-dir DIR] [--json OUT.json] [--quick]

1. Builds, once, a base model of bloom-560m's shape (hidden 1024, 24 layers, 16 heads, vocab
   250,880; random weights, fp32, about 2.2 GB; the toy byte-level BPE tokenizer, since the real
   BLOOM tokenizer cannot be downloaded here) under ``--bench-dir`` (default ``$SPR_BENCH_DIR``,
   else ``/work/.bench``; the same directory and recipe as ``bench_verify.py``, so the base is
   shared), and 50 examples in a ``prompt`` column (the 40 coach requests and 10 quotes), plus 5
   other examples as a separate held-out file.
2. Runs, each in a fresh process, alternating, ``--repeats`` times each:

   - **recipe**: the tutorials' notebook written directly against ``transformers.Trainer`` + PEFT
     (``PromptTuningConfig(CAUSAL_LM, RANDOM, num_virtual_tokens=4)``, ``TrainingArguments(use_cpu=True,
     auto_find_batch_size=True, learning_rate=3e-3, seed 42)``, ``DataCollatorForLanguageModeling(mlm=False)``,
     ``save_pretrained``), stopped after ``--steps`` optimizer steps of 8 examples;
   - **spr**: ``spr --json train --base-model BASE --dataset DATA --text-column prompt --name bench/coach
     --virtual-tokens 4 --lr 0.003 --batch-size 8 --seed 42 --max-steps N --eval-dataset HELDOUT`` in a
     fresh ``SPR_HOME`` (cold fingerprint cache), which trains on the same 50 examples and also
     evaluates on the held-out file and publishes.

3. Throughput = non-padding input tokens of the trained batches / wall seconds of ``Trainer.train()``
   (the same definition on both sides; spr reports it from its own collator, the recipe's is
   counted by a wrapper around its collator). The ratio spr / recipe is the figure (target >= 0.95),
   from the median of each side; since both sides train the same batches in the same order, the
   median ratio of matched step times (recipe / spr) is printed too, as a check against noise, and
   the same throughput per CPU second of the training process (``time.process_time``), which other
   work sharing the cores disturbs far less than wall time. Lineage overhead = what spr does to record lineage and the recipe
   does not: base-model identity (config, headers, tokenizer digest, embedding fingerprint), dataset
   digests (training file and held-out file), and the publish (hash, store, one transaction). The
   held-out eval pass is reported separately (it computes scores; it is not bookkeeping).

4. Interleaved (``--interleaved ROUNDS``): both trainers in one process, each on its own copy of the
   base, one optimizer step per ``train()`` call (the same seeded first batch every time, so every
   step does the same work), alternating which side goes first. The spr side is built by ``registry.ml.training.make_trainer``, the function ``spr train``
   runs. Neighbouring steps share whatever else the machine is doing, so their throughput ratio
   (round 1, the warm-up, left out) is the most noise-resistant figure here.

The machine has 2 cores that other work may share; runs alternate so drift hits both sides alike.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bloom_base import QUICK_SHAPE, SHAPE, build_bloom_base, log

SEED = 42
BATCH = 8
LR = 3e-3
VIRTUAL_TOKENS = 4



def build_base(bench_dir: Path, quick: bool) -> Path:
    """The bloom-560m-shaped base (built once, then reused; shared with bench_verify.py)."""
    return build_bloom_base(bench_dir, quick)


def write_data(bench_dir: Path) -> tuple[Path, Path]:
    """50 training examples (column ``prompt``, as in the notebook) and 5 held-out ones."""
    from registry.demo import toymodels

    rows = [*toymodels.COACH_PROMPTS, *toymodels.QUOTES[:10]]
    held = toymodels.QUOTES[10:15]
    data = bench_dir / "train-50.jsonl"
    heldout = bench_dir / "heldout-5.jsonl"
    data.write_text("".join(json.dumps({"prompt": r}) + "\n" for r in rows), encoding="utf-8")
    heldout.write_text("".join(json.dumps({"prompt": r}) + "\n" for r in held), encoding="utf-8")
    return data, heldout


# The notebook recipe, run in its own process. It prints one JSON line with its measurements.
RECIPE = r"""
import json, sys, time, tempfile
t_start = time.perf_counter()
from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

base, data, steps, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
tokenizer = AutoTokenizer.from_pretrained(base)
foundational_model = AutoModelForCausalLM.from_pretrained(base)
generation_config = PromptTuningConfig(
    task_type=TaskType.CAUSAL_LM, prompt_tuning_init=PromptTuningInit.RANDOM,
    num_virtual_tokens=%(vt)d, tokenizer_name_or_path=base,
)
peft_model = get_peft_model(foundational_model, generation_config)
rows = [json.loads(line)["prompt"] for line in open(data, encoding="utf-8")]
train_sample = [tokenizer(r) for r in rows]  # dataset.map(lambda s: tokenizer(s["prompt"]), batched=True)
collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
batch_tokens = []
def counting_collator(features):
    batch = collator(features)
    batch_tokens.append(int(batch["attention_mask"].sum()))
    return batch
training_args = TrainingArguments(
    output_dir=tempfile.mkdtemp(), use_cpu=True, auto_find_batch_size=True, learning_rate=%(lr)r,
    num_train_epochs=6, max_steps=steps, seed=%(seed)d, report_to="none", save_strategy="no",
    per_device_train_batch_size=%(batch)d,
)
step_seconds = []
class StepTimer(TrainerCallback):  # the benchmark's stopwatch, not part of the recipe
    def on_step_begin(self, *a, **k):
        self.t = time.perf_counter()
    def on_step_end(self, *a, **k):
        step_seconds.append(time.perf_counter() - self.t)
trainer = Trainer(model=peft_model, args=training_args, train_dataset=train_sample, data_collator=counting_collator,
                  callbacks=[StepTimer()])
t0, cpu0 = time.perf_counter(), time.process_time()
result = trainer.train()
train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
peft_model.save_pretrained(out)
n = int(result.global_step)
print(json.dumps({"train_s": train_s, "train_cpu_s": train_cpu_s, "tokens": sum(batch_tokens[:n]), "steps": n, "step_seconds": step_seconds,
                  "total_s": time.perf_counter() - t_start}))
""" % {"vt": VIRTUAL_TOKENS, "lr": LR, "seed": SEED, "batch": BATCH}  # noqa: UP031 - the template is Python code full of braces


def run_recipe(base: Path, data: Path, steps: int) -> dict[str, Any]:
    out = tempfile.mkdtemp(prefix="bench-recipe-")
    try:
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", RECIPE, str(base), str(data), str(steps), out],
                              capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(f"recipe failed:\n{proc.stderr[-3000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["process_s"] = wall
        result["tokens_per_s"] = result["tokens"] / result["train_s"]
        result["tokens_per_cpu_s"] = result["tokens"] / result["train_cpu_s"]
        return result
    finally:
        shutil.rmtree(out, ignore_errors=True)


def spr_command() -> list[str]:
    exe = Path(sys.executable).with_name("spr")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "registry.cli.main"]


def run_spr(base: Path, data: Path, heldout: Path, steps: int) -> dict[str, Any]:
    home = tempfile.mkdtemp(prefix="bench-spr-home-")
    try:
        env = dict(os.environ, SPR_HOME=home, SPR_ACTOR="bench")
        env.pop("SPR_DATABASE_URL", None)
        argv = [
            *spr_command(), "--json", "train", "--base-model", str(base), "--dataset", str(data), "--text-column", "prompt",
            "--name", "bench/coach", "--virtual-tokens", str(VIRTUAL_TOKENS), "--lr", str(LR), "--batch-size", str(BATCH),
            "--seed", str(SEED), "--max-steps", str(steps), "--eval-dataset", str(heldout), "--device", "cpu",
        ]
        t = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(f"spr train failed:\n{proc.stderr[-3000:]}")
        doc = json.loads(proc.stdout)
        timings = doc["timings"]
        return {
            "train_s": timings["train"],
            "train_cpu_s": timings["train_cpu"],
            "tokens_per_cpu_s": doc["train_tokens"] / timings["train_cpu"],
            "tokens": doc["train_tokens"],
            "steps": doc["steps"],
            "step_seconds": doc["step_seconds"],
            "tokens_per_s": doc["tokens_per_second"],
            "lineage_s": timings["lineage"],
            "identify_s": timings.get("identify", 0.0),
            "dataset_digest_s": timings.get("dataset", 0.0) + timings.get("heldout", 0.0),
            "publish_s": timings.get("publish", 0.0),
            "eval_s": timings.get("eval", 0.0),
            "load_s": timings.get("load", 0.0),
            "total_s": timings["total"],
            "process_s": wall,
            "published": doc["version"]["name"] + "@" + str(doc["version"]["number"]),
            "eval_loss": next((e["value"] for e in doc["evals"] if e["metric"] == "eval_loss"), None),
        }
    finally:
        shutil.rmtree(home, ignore_errors=True)


INTERLEAVED = r"""
import json, sys, time, tempfile
from pathlib import Path
import torch
from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments
from registry.ml import training

base, data, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
tokenizer = AutoTokenizer.from_pretrained(base)
rows = [json.loads(line)["prompt"] for line in open(data, encoding="utf-8")]

def fresh_peft_model():
    model = AutoModelForCausalLM.from_pretrained(base)
    config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, prompt_tuning_init=PromptTuningInit.RANDOM,
                                num_virtual_tokens=%(vt)d, tokenizer_name_or_path=base)
    return get_peft_model(model, config)

class StepTimer(TrainerCallback):
    def __init__(self):
        self.seconds = []
    def on_step_begin(self, *a, **k):
        self.t = time.perf_counter()
    def on_step_end(self, *a, **k):
        self.seconds.append(time.perf_counter() - self.t)

# The notebook recipe's trainer, one step per train() call.
collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
recipe_tokens = []
def counting_collator(features):
    batch = collator(features)
    recipe_tokens.append(int(batch["attention_mask"].sum()))
    return batch
recipe_timer = StepTimer()
recipe = Trainer(
    model=fresh_peft_model(),
    args=TrainingArguments(output_dir=tempfile.mkdtemp(), use_cpu=True, auto_find_batch_size=True, learning_rate=%(lr)r,
                           max_steps=1, seed=%(seed)d, report_to="none", save_strategy="no", per_device_train_batch_size=%(batch)d,
                           disable_tqdm=True),
    train_dataset=[tokenizer(r) for r in rows], data_collator=counting_collator, callbacks=[recipe_timer],
)
# spr train's trainer, built by the same function spr train uses.
config = training.TrainConfig(dataset=Path(data), base_model=base, lr=%(lr)r, batch_size=%(batch)d, seed=%(seed)d, max_steps=1)
encoded, _ = training.encode_examples([training.Example(r) for r in rows], tokenizer, template=None, max_length=256, seq2seq=False)
spr_timer = StepTimer()
spr, spr_log = training.make_trainer(
    fresh_peft_model(), encoded, config=config, pad_id=tokenizer.pad_token_id, seq2seq=False, device="cpu",
    output_dir=Path(tempfile.mkdtemp()), total_steps=1, callbacks=[spr_timer],
)
out = {"recipe": [], "spr": []}
for i in range(rounds):
    # Each train() call takes the first batch of the same seeded order: the same work every round,
    # on both sides, in alternating order.
    for name in (("recipe", "spr") if i %% 2 == 0 else ("spr", "recipe")):
        trainer, counts, timer = (recipe, recipe_tokens, recipe_timer) if name == "recipe" else (spr, spr_log.batch_tokens, spr_timer)
        before = len(counts)
        with training.quiet():
            trainer.train()
        out[name].append({"seconds": timer.seconds[-1], "tokens": counts[before]})
    print(json.dumps({"round": i, "recipe": out["recipe"][-1], "spr": out["spr"][-1]}), file=sys.stderr, flush=True)
print(json.dumps(out))
""" % {"vt": VIRTUAL_TOKENS, "lr": LR, "seed": SEED, "batch": BATCH}  # noqa: UP031 - the template is Python code full of braces


def run_interleaved(base: Path, data: Path, rounds: int) -> dict[str, Any]:
    """Both trainers in one process on two copies of the base, one step each, alternating."""
    proc = subprocess.Popen([sys.executable, "-c", INTERLEAVED, str(base), str(data), str(rounds)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith('{"round"'):
            r = json.loads(line)
            log(f"  round {r['round'] + 1}/{rounds}: recipe {r['recipe']['seconds']:.2f} s ({r['recipe']['tokens']} tokens), "
                f"spr {r['spr']['seconds']:.2f} s ({r['spr']['tokens']} tokens)")
    stdout = proc.stdout.read() if proc.stdout else ""
    if proc.wait() != 0:
        raise RuntimeError("interleaved run failed")
    steps = json.loads(stdout.strip().splitlines()[-1])
    # Skip round 1 (each trainer's first step pays one-time warm-up); compare per-round throughput.
    ratios = [(s["tokens"] / s["seconds"]) / (r["tokens"] / r["seconds"]) for r, s in zip(steps["recipe"][1:], steps["spr"][1:], strict=True)]
    return {"rounds": steps, "ratios": ratios, "median_ratio": statistics.median(ratios) if ratios else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per run (8 examples each)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side (alternating)")
    parser.add_argument("--bench-dir", type=Path, default=Path(os.environ.get("SPR_BENCH_DIR", "/work/.bench")))
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--quick", action="store_true", help="a hidden-64 model instead of bloom-560m's shape (smoke test)")
    parser.add_argument("--interleaved", type=int, default=7, metavar="ROUNDS",
                        help="also run both trainers in one process, one step each, alternating, for ROUNDS rounds (0: skip)")
    args = parser.parse_args()
    args.bench_dir.mkdir(parents=True, exist_ok=True)
    base = build_base(args.bench_dir, args.quick)
    data, heldout = write_data(args.bench_dir)
    runs: dict[str, list[dict[str, Any]]] = {"recipe": [], "spr": []}
    for i in range(args.repeats):
        for side in (("recipe", "spr") if i % 2 == 0 else ("spr", "recipe")):
            log(f"run {i + 1}/{args.repeats}: {side} ({args.steps} steps)...")
            r = run_recipe(base, data, args.steps) if side == "recipe" else run_spr(base, data, heldout, args.steps)
            log(f"  {r['tokens']} tokens in {r['train_s']:.2f} s of training: {r['tokens_per_s']:.1f} tokens/s"
                + (f"; lineage {r['lineage_s']:.3f} s" if side == "spr" else ""))
            runs[side].append(r)

    interleaved = None
    if args.interleaved:
        log(f"interleaved: both trainers in one process, {args.interleaved} rounds of one step each...")
        interleaved = run_interleaved(base, data, args.interleaved)

    def med(side: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[side])

    summary = {
        "shape": QUICK_SHAPE if args.quick else SHAPE,
        "examples": 50,
        "batch_size": BATCH,
        "steps": args.steps,
        "repeats": args.repeats,
        "recipe_tokens_per_s": med("recipe", "tokens_per_s"),
        "spr_tokens_per_s": med("spr", "tokens_per_s"),
        "ratio": med("spr", "tokens_per_s") / med("recipe", "tokens_per_s"),
        "recipe_tokens_per_cpu_s": med("recipe", "tokens_per_cpu_s"),
        "spr_tokens_per_cpu_s": med("spr", "tokens_per_cpu_s"),
        # CPU seconds of the training process are far less exposed than wall seconds to other work
        # sharing the 2 cores (time slicing stretches wall time, not the CPU time the work takes).
        "cpu_ratio": med("spr", "tokens_per_cpu_s") / med("recipe", "tokens_per_cpu_s"),
        # Both sides train the same batches in the same order (same seed), so step i of one is
        # step i of the other: the median of recipe/spr time for matched steps is less exposed
        # to which run happened to share the CPU with other work.
        "matched_step_ratio": statistics.median(
            r["step_seconds"][i] / s["step_seconds"][i]
            for r in runs["recipe"] for s in runs["spr"] for i in range(min(len(r["step_seconds"]), len(s["step_seconds"])))
        ),
        # spr's held-out "before" pass warms the model up ahead of step 1; the recipe's step 1 pays
        # that warm-up. Leaving step 1 out compares the steady state.
        "matched_step_ratio_after_first": statistics.median(
            r["step_seconds"][i] / s["step_seconds"][i]
            for r in runs["recipe"] for s in runs["spr"] for i in range(1, min(len(r["step_seconds"]), len(s["step_seconds"])))
        ) if args.steps > 1 else None,
        "recipe_s_per_step": med("recipe", "train_s") / args.steps,
        "spr_s_per_step": med("spr", "train_s") / args.steps,
        "lineage_overhead_s": med("spr", "lineage_s"),
        "identify_s": med("spr", "identify_s"),
        "dataset_digest_s": med("spr", "dataset_digest_s"),
        "publish_s": med("spr", "publish_s"),
        "heldout_eval_s": med("spr", "eval_s"),
        "recipe_process_s": med("recipe", "process_s"),
        "spr_process_s": med("spr", "process_s"),
        "runs": runs,
        "interleaved": interleaved,
    }
    print(f"bloom-560m shape: {summary['shape']}, 50 examples, batch {BATCH}, {args.steps} steps, {args.repeats} run(s) each")
    print(f"  notebook recipe  {summary['recipe_tokens_per_s']:8.1f} tokens/s  ({summary['recipe_s_per_step']:.2f} s/step)")
    print(f"  spr train        {summary['spr_tokens_per_s']:8.1f} tokens/s  ({summary['spr_s_per_step']:.2f} s/step)")
    print(f"  per CPU second   recipe {summary['recipe_tokens_per_cpu_s']:.1f}, spr {summary['spr_tokens_per_cpu_s']:.1f} tokens; "
          f"ratio {summary['cpu_ratio']:.3f}")
    print(f"  ratio spr/recipe {summary['ratio']:.3f}  (target >= 0.95); matched steps, recipe time / spr time: "
          f"{summary['matched_step_ratio']:.3f} (steps 2+: {summary['matched_step_ratio_after_first'] or float('nan'):.3f})")
    for side in ("recipe", "spr"):
        for r in runs[side]:
            print(f"    {side:<6} steps (s): " + ", ".join(f"{t:.2f}" for t in r["step_seconds"]))
    if interleaved and interleaved["median_ratio"] is not None:
        print(f"  interleaved      spr/recipe tokens/s per matched step, median of {len(interleaved['ratios'])}: "
              f"{interleaved['median_ratio']:.3f}  (" + ", ".join(f"{r:.2f}" for r in interleaved["ratios"]) + ")")
    print(f"  lineage overhead {summary['lineage_overhead_s']:.3f} s  (identify {summary['identify_s']:.3f}, "
          f"dataset digests {summary['dataset_digest_s']:.3f}, publish {summary['publish_s']:.3f}; target < 1 s)")
    print(f"  held-out eval    {summary['heldout_eval_s']:.2f} s (5 examples, before and after)")
    print(f"  whole process    recipe {summary['recipe_process_s']:.1f} s, spr {summary['spr_process_s']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
