"""Serving many soft prompts (issue 13): the engine's mixed batch vs PEFT's ``set_adapter`` loop.

    python benchmarks/bench_serving.py [--sizes 1,2,4,8,16] [--rows 4] [--new-tokens 16]
        [--bench-dir /tmp/spr-bench] [--quick] [--http-clients 32 --http-requests 2]

Base: bloom-560m-shaped (hidden 1024, 24 layers, vocab 250,880, random fp32; see bloom_base.py),
built once under ``--bench-dir``. Soft prompts: prompt tuning, 8/12/16/20 virtual tokens in turn,
written as real PEFT adapter folders and published to a fresh catalogue, then loaded through the
registry's verified load. Requests: ``rows`` coach prompts (different lengths) per soft prompt,
greedy, ``--new-tokens`` new tokens.

For each size N (soft prompts):
- engine: ``SoftPromptEngine.generate`` over all N x rows requests, ONE mixed batch;
- PEFT loop: the same requests through one ``PeftModel`` holding the same N adapters
  (``loading.load_many`` over the same in-memory base), ``set_adapter(name)`` then ``generate`` with
  that adapter's rows as one batch, adapter after adapter (PEFT's own cached generate). The prompts
  share one token length, because PEFT 0.21.2 + transformers 5.25 crash on a left-padded
  prompt-tuning batch on BLOOM; the baseline thus runs its best case, unpadded.
Both run after a warm-up, in the same process, alternating, one after the other: ratios come from
one run. Prints a Markdown table (seconds, tokens/s, ratio) and the peak RSS after the engine
loaded (one base copy plus the soft prompts). With ``--http-clients N``: ``spr serve`` with up to 8
of the soft prompts under N concurrent ``openai`` clients, ``--max-batch 1`` (one request per pass)
vs ``--max-batch N`` (mixed batches): requests/s, p50 and p99 latency.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bloom_base import build_bloom_base, log


def write_soft_prompt(out: Path, base: Path, num_virtual_tokens: int, hidden: int, seed: int) -> Path:
    """A PEFT prompt-tuning folder (adapter_config.json + adapter_model.safetensors), as save_pretrained writes it."""
    import peft
    import torch
    from safetensors.torch import save_file

    config = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens, token_dim=hidden,
                                     num_transformer_submodules=1, num_attention_heads=16, num_layers=24)
    config.base_model_name_or_path = str(base)
    config.inference_mode = True
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out))
    g = torch.Generator().manual_seed(seed)
    save_file({"prompt_embeddings": torch.randn(num_virtual_tokens, hidden, generator=g) * 0.5},
              str(out / "adapter_model.safetensors"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,2,4,8,16")
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--bench-dir", default=os.path.join(tempfile.gettempdir(), "spr-bench"))
    parser.add_argument("--quick", action="store_true", help="a hidden-64 toy base (checks the script, not a figure)")
    parser.add_argument("--http-clients", type=int, default=0,
                        help="also measure spr serve with this many concurrent clients (--max-batch 1 vs N)")
    parser.add_argument("--http-requests", type=int, default=2, help="requests per HTTP client")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    bench = Path(args.bench_dir)
    bench.mkdir(parents=True, exist_ok=True)
    base = build_bloom_base(bench, quick=args.quick)
    hidden = json.loads((base / "config.json").read_text())["hidden_size"]

    home = Path(tempfile.mkdtemp(prefix="spr-bench-serving-"))
    os.environ["SPR_HOME"] = str(home)
    os.environ.pop("SPR_DATABASE_URL", None)
    import torch

    from registry import catalogue
    from registry.catalogue import PublishOptions
    from registry.demo.toymodels import COACH_PROMPTS, QUOTES
    from registry.ml import loading
    from registry.ml.serving import SoftPromptEngine

    torch.set_num_threads(os.cpu_count() or 1)
    n_max = max(sizes)
    refs = []
    t = time.perf_counter()
    for i in range(n_max):
        folder = write_soft_prompt(home / "adapters" / f"sp{i}", base, 8 + 4 * (i % 4), hidden, seed=i)
        refs.append(catalogue.publish(folder, f"bench/sp{i}", options=PublishOptions(base_model=str(base))).version.ref)
    log(f"{n_max} soft prompts published in {time.perf_counter() - t:.1f} s")

    t = time.perf_counter()
    engine = SoftPromptEngine(str(base), refs)
    assert not engine.refused, engine.refused
    rss_engine = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    log(f"engine loaded in {time.perf_counter() - t:.1f} s; peak RSS {rss_engine:.0f} MiB")
    names = [f"sp{i}" for i in range(n_max)]
    t = time.perf_counter()
    peft_model = loading.load_many(refs, engine.model, adapter_names=names)  # same base object, no second copy
    log(f"PEFT model with {n_max} adapters loaded in {time.perf_counter() - t:.1f} s")
    tok = engine.tokenizer
    # PEFT 0.21.2's cached prompt-tuning generate crashes on BLOOM when a batch is left-padded (the
    # ALiBi tensor and the mask disagree by the virtual-token count), so the baseline gets prompts
    # of one token length: no padding inside an adapter's batch, its best case. The engine still
    # pads, across soft prompts of 8 to 20 virtual tokens.
    by_length: dict[int, list[str]] = {}
    for p in COACH_PROMPTS + QUOTES:
        by_length.setdefault(len(tok(p)["input_ids"]), []).append(p)
    length, candidates = max(by_length.items(), key=lambda kv: len(kv[1]))
    if len(candidates) < args.rows:
        raise SystemExit(f"only {len(candidates)} prompts share a token length; use --rows {len(candidates)} or fewer")
    prompts = candidates[: args.rows]
    log(f"{args.rows} prompts of {length} tokens each")

    def run_engine(n: int) -> tuple[float, int]:
        pairs = [(refs[i], p) for i in range(n) for p in prompts]
        t0 = time.perf_counter()
        out = engine.generate(pairs, max_new_tokens=args.new_tokens)
        return time.perf_counter() - t0, sum(len(r.token_ids) for r in out)

    def run_peft(n: int) -> tuple[float, int]:
        tok.padding_side = "left"
        tokens = 0
        t0 = time.perf_counter()
        for i in range(n):
            peft_model.set_adapter(names[i])
            enc = tok(list(prompts), return_tensors="pt", padding=True)
            with torch.no_grad():
                out = peft_model.generate(**enc, max_new_tokens=args.new_tokens, do_sample=False,
                                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
            tokens += int((out[:, enc["input_ids"].shape[1]:] != tok.pad_token_id).sum())
        return time.perf_counter() - t0, tokens

    log("warm-up...")
    run_engine(1)
    run_peft(1)
    rows = []
    for n in sizes:
        e_s, e_tok = run_engine(n)
        p_s, p_tok = run_peft(n)
        rows.append((n, n * args.rows, p_s, e_s, p_tok, e_tok))
        log(f"  {n:>2} soft prompts x {args.rows}: PEFT loop {p_s:.2f} s, engine {e_s:.2f} s, {p_s / e_s:.2f}x")
    print(f"\nbase: {base.name} ({'toy' if args.quick else 'bloom-560m shape'}), greedy, {args.new_tokens} new tokens, "
          f"{os.cpu_count()} CPU threads, torch {torch.__version__}; peak RSS with the engine loaded {rss_engine:.0f} MiB\n")
    print("| soft prompts | rows | PEFT set_adapter loop (s) | engine, one mixed batch (s) | engine tokens/s | speed-up |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n, r, p_s, e_s, _p_tok, e_tok in rows:
        print(f"| {n} | {r} | {p_s:.2f} | {e_s:.2f} | {e_tok / e_s:.1f} | {p_s / e_s:.2f}x |")
    if args.http_clients:
        del engine, peft_model
        os.environ["SPR_HOME"] = str(home)
        http_bench(base, refs[: min(8, n_max)], prompts, clients=args.http_clients, requests_each=args.http_requests,
                   new_tokens=args.new_tokens)


def _measure_server(base: Path, refs: list[str], prompts: list[str], *, max_batch: int, clients: int,
                    requests_each: int, new_tokens: int) -> tuple[float, float, float]:
    """Start ``spr serve --max-batch max_batch``, run the clients; return (requests/s, p50 s, p99 s)."""
    import re
    import statistics
    import subprocess
    import threading

    import openai

    spr = str(Path(sys.executable).with_name("spr"))
    proc = subprocess.Popen([spr, "serve", "--base-model", str(base), *refs, "--port", "0", "--max-batch",
                             str(max_batch), "--max-wait-ms", "5"], stderr=subprocess.PIPE, text=True)
    stderr = proc.stderr
    assert stderr is not None
    url = None
    for line in stderr:
        m = re.search(r"listening on (http://\S+) ", line)
        if m:
            url = m.group(1)
            break
    assert url, "spr serve did not start"
    threading.Thread(target=lambda: [None for _ in stderr], daemon=True).start()
    api = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=3600)
    latencies: list[float] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        for j in range(requests_each):
            t0 = time.perf_counter()
            api.completions.create(model=refs[(k + j) % len(refs)], prompt=prompts[(k + j) % len(prompts)],
                                   max_tokens=new_tokens, temperature=0)
            with lock:
                latencies.append(time.perf_counter() - t0)

    try:
        client(0)  # warm-up
        latencies.clear()
        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    return len(latencies) / wall, statistics.median(latencies), p99


def http_bench(base: Path, refs: list[str], prompts: list[str], *, clients: int, requests_each: int,
               new_tokens: int) -> None:
    """``spr serve`` under ``clients`` concurrent HTTP clients: --max-batch 1 (no mixing) vs --max-batch clients."""
    print(f"\nspr serve, {clients} concurrent clients x {requests_each} requests, {len(refs)} soft prompts, "
          f"{new_tokens} new tokens, greedy\n")
    print("| server | requests/s | p50 latency (s) | p99 latency (s) |")
    print("|---|---:|---:|---:|")
    for max_batch in (1, clients):
        rps, p50, p99 = _measure_server(base, refs, prompts, max_batch=max_batch, clients=clients,
                                        requests_each=requests_each, new_tokens=new_tokens)
        print(f"| --max-batch {max_batch} | {rps:.2f} | {p50:.2f} | {p99:.2f} |")


if __name__ == "__main__":
    main()
