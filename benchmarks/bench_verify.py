"""Verification speed (issue 3): ``spr verify`` against PEFT's own load path, measured in one run.

    python benchmarks/bench_verify.py [--runs 7] [--peft-runs 1] [--bench-dir DIR] [--json OUT.json]

1. Builds, once, a base model of bloom-560m's shape (hidden 1024, 24 layers, 16 heads, vocab
   250,880; random weights, fp32, about 2.2 GB) and a prompt-tuning adapter for it, under
   ``--bench-dir`` (default ``$SPR_BENCH_DIR``, else ``/work/.bench``), outside the repository.
2. Publishes the adapter into a fresh temporary ``SPR_HOME`` with ``--base-model`` (identity recorded).
3. ``verify`` in-process (``registry.ml.loading.verify(REF, BASE_DIR)``), median of N calls, with the
   fingerprint cache cleared before each call ("uncached": the embedding rows are really read) and
   kept ("cached"). Bytes: the library's own count of bytes read from the base's weight file, and
   this process's ``/proc/self/io`` ``rchar`` (every byte any ``read`` returned) and ``read_bytes``
   (bytes fetched from storage; 0 when the page cache holds them) deltas.
4. ``spr verify REF --base-model BASE_DIR`` as a fresh process (the console script), median of N,
   uncached and cached; plus one probe process that reports its own ``/proc/self/io``.
5. PEFT's own path on the same pair in a fresh process: import torch/transformers/peft, load the
   base, ``PeftModel.from_pretrained``, one ``generate`` of 8 tokens; and the ratio to step 4.

The page cache cannot be dropped here (no privilege), so the base's file is warm in every
measurement, PEFT's included; ``read_bytes`` shows that. Timings are wall-clock seconds.
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

from bloom_base import SHAPE, build_bloom_base, log


def proc_io() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/io").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key.strip()] = int(value)
    return out


def build(bench_dir: Path) -> tuple[Path, Path]:
    """The bloom-560m-shaped base and a prompt-tuning adapter for it (built once, then reused)."""
    base = build_bloom_base(bench_dir)
    adapter = bench_dir / "bloom-560m-shape-prompt"
    if not (adapter / "adapter_model.safetensors").is_file():
        from registry.demo import toymodels

        log("making the prompt-tuning adapter (loads the base once)...")
        toymodels.make_adapter(base, adapter, "PROMPT_TUNING", num_virtual_tokens=20)
    return base, adapter


def median_time(fn: Any, runs: int, before: Any = None) -> tuple[float, list[float]]:
    times = []
    for _ in range(runs):
        if before is not None:
            before()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def spr_command() -> list[str]:
    exe = Path(sys.executable).with_name("spr")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "registry.cli.main"]


PROBE = """
import json, sys
from registry.cli.main import run
code = run(sys.argv[1:])
io = dict((k.strip(), int(v)) for k, v in (l.split(':') for l in open('/proc/self/io').read().splitlines()))
print(json.dumps({"code": code, "torch": "torch" in sys.modules, "rchar": io["rchar"], "read_bytes": io["read_bytes"]}), file=sys.stderr)
"""

PEFT_PATH = """
import sys, time, json
t0 = time.perf_counter()
import torch, transformers, peft
t1 = time.perf_counter()
model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1])
t2 = time.perf_counter()
model = peft.PeftModel.from_pretrained(model, sys.argv[2], is_trainable=False)
t3 = time.perf_counter()
with torch.no_grad():
    out = model.generate(input_ids=torch.tensor([[5, 6, 7, 8]]), max_new_tokens=8, do_sample=False, pad_token_id=0)
t4 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "load_base": t2 - t1, "peft_from_pretrained": t3 - t2, "generate": t4 - t3,
                  "total_in_process": t4 - t0}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--peft-runs", type=int, default=1)
    parser.add_argument("--bench-dir", type=Path, default=Path(os.environ.get("SPR_BENCH_DIR", "/work/.bench")))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    args.bench_dir.mkdir(parents=True, exist_ok=True)
    base, adapter = build(args.bench_dir)
    weights = base / "model.safetensors"

    home = Path(tempfile.mkdtemp(prefix="spr-bench-verify-"))
    os.environ["SPR_HOME"] = str(home)
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    cache = home / "cache"
    results: dict[str, Any] = {"base": str(base), "base_bytes": weights.stat().st_size, "shape": SHAPE, "runs": args.runs}
    try:
        from registry import catalogue
        from registry.ml import loading

        ref = catalogue.publish(adapter, "bench/prompt", options=catalogue.PublishOptions(base_model=str(base))).version.ref
        clear = lambda: shutil.rmtree(cache, ignore_errors=True)  # noqa: E731

        # -- in-process ------------------------------------------------------------------------
        report = loading.verify(ref, base)
        assert report.compatible, report.lines()
        clear()
        io0 = proc_io()
        report = loading.verify(ref, base)
        io1 = proc_io()
        results["inprocess_bytes_read_from_base_weights"] = report.bytes_read
        results["inprocess_rchar"] = io1["rchar"] - io0["rchar"]
        results["inprocess_read_bytes"] = io1["read_bytes"] - io0["read_bytes"]
        med, times = median_time(lambda: loading.verify(ref, base), args.runs, before=clear)
        results["inprocess_uncached_s"] = med
        results["inprocess_uncached_all_s"] = times
        med, times = median_time(lambda: loading.verify(ref, base), args.runs)
        results["inprocess_cached_s"] = med
        results["inprocess_cached_all_s"] = times
        cached_report = loading.verify(ref, base)
        results["inprocess_cached_bytes_read_from_base_weights"] = cached_report.bytes_read
        med, _ = median_time(lambda: loading.verify(adapter, base), args.runs, before=clear)
        results["inprocess_directory_uncached_s"] = med

        # -- fresh process ---------------------------------------------------------------------
        cmd = [*spr_command(), "verify", ref, "--base-model", str(base)]
        env = dict(os.environ)

        def spr_verify() -> None:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"spr verify failed ({proc.returncode}): {proc.stdout}{proc.stderr}")

        spr_verify()  # warm the interpreter's files in the page cache
        med, times = median_time(spr_verify, args.runs, before=clear)
        results["process_uncached_s"] = med
        results["process_uncached_all_s"] = times
        med, times = median_time(spr_verify, args.runs)
        results["process_cached_s"] = med
        results["process_cached_all_s"] = times
        clear()
        probe = subprocess.run([sys.executable, "-c", PROBE, "--json", "verify", ref, "--base-model", str(base)],
                               env=env, capture_output=True, text=True)
        probe_doc = json.loads(probe.stderr.strip().splitlines()[-1])
        report_doc = json.loads(probe.stdout)
        results["process_imported_torch"] = probe_doc["torch"]
        results["process_rchar"] = probe_doc["rchar"]
        results["process_read_bytes"] = probe_doc["read_bytes"]
        results["process_bytes_read_from_base_weights"] = report_doc["bytes_read"]

        # -- PEFT's own path -------------------------------------------------------------------
        peft_runs = []
        for _ in range(args.peft_runs):
            t = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", PEFT_PATH, str(base), str(adapter)], env=env,
                                  capture_output=True, text=True)
            wall = time.perf_counter() - t
            if proc.returncode != 0:
                raise SystemExit(f"PEFT path failed: {proc.stderr[-2000:]}")
            doc = json.loads(proc.stdout.strip().splitlines()[-1])
            doc["process_wall"] = wall
            peft_runs.append(doc)
        results["peft_path"] = peft_runs
        peft_wall = statistics.median(r["process_wall"] for r in peft_runs)
        results["peft_path_process_s"] = peft_wall
        results["ratio_peft_process_over_spr_verify_process_uncached"] = peft_wall / results["process_uncached_s"]
        results["ratio_peft_in_process_over_verify_in_process_uncached"] = (
            statistics.median(r["total_in_process"] for r in peft_runs) / results["inprocess_uncached_s"]
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)

    print(f"base: {base} ({results['base_bytes'] / 1e9:.2f} GB, bloom-560m shape)")
    print(f"verify in-process, fingerprint uncached: {results['inprocess_uncached_s'] * 1e3:.1f} ms (median of {args.runs})")
    print(f"verify in-process, fingerprint cached:   {results['inprocess_cached_s'] * 1e3:.1f} ms")
    print(f"verify in-process, adapter directory:    {results['inprocess_directory_uncached_s'] * 1e3:.1f} ms")
    print(f"  bytes read from the base weight file:  {results['inprocess_bytes_read_from_base_weights']:,} "
          f"(cached: {results['inprocess_cached_bytes_read_from_base_weights']:,}); "
          f"rchar {results['inprocess_rchar']:,}, read_bytes {results['inprocess_read_bytes']:,}")
    print(f"spr verify (fresh process), uncached:    {results['process_uncached_s'] * 1e3:.0f} ms (median of {args.runs})")
    print(f"spr verify (fresh process), cached:      {results['process_cached_s'] * 1e3:.0f} ms")
    print(f"  process: torch imported={results['process_imported_torch']}, rchar {results['process_rchar']:,}, "
          f"read_bytes {results['process_read_bytes']:,}, base weights {results['process_bytes_read_from_base_weights']:,} bytes")
    p = results["peft_path"][0]
    print(f"PEFT path (fresh process): {results['peft_path_process_s']:.2f} s "
          f"(import {p['import']:.2f}, load base {p['load_base']:.2f}, PeftModel.from_pretrained {p['peft_from_pretrained']:.2f}, "
          f"generate {p['generate']:.2f})")
    print(f"ratio PEFT path / spr verify (processes): {results['ratio_peft_process_over_spr_verify_process_uncached']:.0f}x; "
          f"in-process: {results['ratio_peft_in_process_over_verify_in_process_uncached']:.0f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
