"""Hub performance (issue 4), every figure measured side by side in one run.

    python benchmarks/bench_hub.py [--mb 200] [--versions 100] [--runs 3]

The project's Hub server runs in this process (``lfs_mode="auto"``, so weights travel through
git-LFS; clients have ``HF_HUB_DISABLE_XET=1``); every client runs in a fresh subprocess, so the
server and the client never share an interpreter.

1. Cached pinned pull as a fresh process: ``spr pull NS/NAME@<commit sha>`` after a first pull,
   wall time of the whole process (interpreter start included, median of N), and the number of
   HTTP requests the server received during those runs (must be 0). Measured for a small prompt
   tuning adapter and for the large LoRA adapter.
2. Pulling a LoRA adapter of ``--mb`` MB: ``registry.hub.pull`` (resolve, download, one read of every
   file for sha256 + size + NaN/Inf scan, import into an empty catalogue) against a plain ``huggingface_hub.snapshot_download`` of
   the same repo and tag from the same server into an empty cache, median of ``--runs`` each,
   alternating. Both time the call only (imports and the new catalogue's creation happen before
   the clock starts in both).
3. Pushing ``--versions`` small versions (one commit + one tag each) from a fresh process: versions/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The client reads these once, at import: set them before anything imports huggingface_hub.
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"

TOKEN = "bench-token"


def make_lora(directory: Path, megabytes: int, seed: int = 0) -> Path:
    """A valid LoRA adapter (r=64 on 4096-wide q_proj) whose weights file is about ``megabytes`` MB."""
    import numpy as np
    from safetensors.numpy import save_file

    width, rank = 4096, 64
    per_layer = 2 * width * rank * 4
    layers = max(1, round(megabytes * 1_000_000 / per_layer))
    rng = np.random.default_rng(seed)
    tensors = {}
    for i in range(layers):
        prefix = f"base_model.model.model.layers.{i}.self_attn.q_proj"
        tensors[f"{prefix}.lora_A.weight"] = (rng.standard_normal((rank, width), dtype=np.float32) * 0.01)
        tensors[f"{prefix}.lora_B.weight"] = (rng.standard_normal((width, rank), dtype=np.float32) * 0.01)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.0,
        "target_modules": ["q_proj"], "base_model_name_or_path": "org/big-base", "bias": "none",
        "peft_version": "0.21.2",
    }
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return directory


def make_prompt(directory: Path, seed: int) -> Path:
    """A valid prompt-tuning adapter (4 virtual tokens x 64), different bytes per seed."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({"prompt_embeddings": rng.standard_normal((4, 64), dtype=np.float32)},
              str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": 4, "token_dim": 64,
        "num_transformer_submodules": 1, "num_attention_heads": 4, "num_layers": 2,
        "prompt_tuning_init": "RANDOM", "base_model_name_or_path": "org/tiny-base", "peft_version": "0.21.2",
    }
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return directory


def child(script: str, env: dict[str, str], *args: str) -> tuple[float, str]:
    """Run ``script`` in a fresh interpreter; return (wall seconds, stdout). Raises on failure."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, check=False, timeout=1200)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall, done.stdout


SPR_PULL = """
import sys, time
import huggingface_hub, huggingface_hub.hf_api, huggingface_hub.file_download  # imported before the clock, as below
from registry import catalogue
from registry import hub
catalogue.list_versions()  # create the empty catalogue before the clock
t = time.perf_counter()
result = hub.pull(sys.argv[1], endpoint=sys.argv[2])
print(time.perf_counter() - t, result.imported, result.bytes)
"""

SPR_PULL_PHASES = """
import sys, time
import huggingface_hub, huggingface_hub.hf_api, huggingface_hub.file_download
from registry import catalogue
from registry import hub
from registry.hub import client
catalogue.list_versions()
spent = {"one pass per file: sha256 + size + NaN/Inf scan": 0.0, "import (link into the blob store, header checks, catalogue rows)": 0.0}
def timed(label, fn):
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            spent[label] += time.perf_counter() - t
    return wrapper
client._check_fetched = timed("one pass per file: sha256 + size + NaN/Inf scan", client._check_fetched)
catalogue.import_manifest = timed("import (link into the blob store, header checks, catalogue rows)", catalogue.import_manifest)
t = time.perf_counter()
hub.pull(sys.argv[1], endpoint=sys.argv[2])
total = time.perf_counter() - t
spent["download and the rest (resolve, manifest, HTTP)"] = total - sum(spent.values())
for k, v in spent.items():
    print(f"{v:.3f} {k}")
"""

HF_SNAPSHOT = """
import sys, time
import huggingface_hub, huggingface_hub.hf_api, huggingface_hub.file_download
from huggingface_hub import snapshot_download
repo, _, rev = sys.argv[1].partition("@")
t = time.perf_counter()
snapshot_download(repo, revision=rev, endpoint=sys.argv[2], cache_dir=sys.argv[3])
print(time.perf_counter() - t)
"""

SPR_CLI = "from registry.cli.main import main; main()"

PUSH_MANY = """
import sys, time
from registry import hub
refs = sys.argv[3:]
hub.push(refs[0], sys.argv[1], endpoint=sys.argv[2])  # creates the repo; not timed
t = time.perf_counter()
for ref in refs[1:]:
    hub.push(ref, sys.argv[1], endpoint=sys.argv[2])
print(time.perf_counter() - t, len(refs) - 1)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=200, help="size of the LoRA adapter (MB)")
    parser.add_argument("--versions", type=int, default=100, help="small versions to push")
    parser.add_argument("--runs", type=int, default=3, help="runs per pull measurement")
    parser.add_argument("--cached-runs", type=int, default=7, help="runs of the cached pinned pull")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="spr-bench-hub-"))
    publisher = work / "publisher"
    os.environ["SPR_HOME"] = str(publisher)
    os.environ["HF_HOME"] = str(work / "hf-publisher")
    os.environ["HF_TOKEN"] = TOKEN
    from registry import catalogue, hub
    from registry.hubserver import HubServer

    server = HubServer(work / "hub-root", tokens=[f"{TOKEN} bench"], lfs_mode="auto").start()
    url = server.url
    base_env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "SPR_HOME", "HF_HOME", "HF_ENDPOINT")}
    base_env["HF_ENDPOINT"] = url
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; server {url} (lfs_mode=auto, client Xet off); work {work}")

    # -- the adapters ---------------------------------------------------------------------------
    t = time.perf_counter()
    lora_dir = make_lora(work / "lora", args.mb)
    lora_bytes = sum(p.stat().st_size for p in lora_dir.iterdir())
    small_dir = make_prompt(work / "small", 0)
    t_make = time.perf_counter() - t
    t = time.perf_counter()
    lora_ref = catalogue.publish(lora_dir, "bench/lora").version.ref
    t_publish = time.perf_counter() - t
    small_ref = catalogue.publish(small_dir, "bench/small").version.ref
    t = time.perf_counter()
    lora_push = hub.push(lora_ref, "bench/lora", endpoint=url)
    t_push_lora = time.perf_counter() - t
    small_push = hub.push(small_ref, "bench/small", endpoint=url)
    print(f"made a {lora_bytes / 1e6:.1f} MB LoRA adapter in {t_make:.1f} s, published in {t_publish:.2f} s, "
          f"pushed in {t_push_lora:.2f} s ({lora_bytes / 1e6 / t_push_lora:.0f} MB/s)")

    # -- 2. large pull vs snapshot_download --------------------------------------------------------
    spr_times, hf_times = [], []
    for run in range(args.runs):
        order = ["spr", "hf"] if run % 2 == 0 else ["hf", "spr"]
        for who in order:
            env = dict(base_env, HF_HOME=str(work / f"hf-{who}-{run}"), SPR_HOME=str(work / f"deploy-{run}"))
            if who == "spr":
                _, out = child(SPR_PULL, env, "bench/lora@v1", url)
                seconds, imported, size = out.split()
                assert imported == "True" and int(size) == lora_bytes
                spr_times.append(float(seconds))
            else:
                _, out = child(HF_SNAPSHOT, env, "bench/lora@v1", url, str(work / f"hf-{who}-{run}" / "hub"))
                hf_times.append(float(out.split()[0]))
    spr_med, hf_med = statistics.median(spr_times), statistics.median(hf_times)
    print(f"\n2. pull of the {lora_bytes / 1e6:.0f} MB LoRA adapter into an empty cache and catalogue (median of {args.runs}):")
    print(f"   spr pull (download + one hash/scan pass + import): {spr_med:.2f} s   runs {[round(x, 2) for x in spr_times]}")
    print(f"   huggingface_hub.snapshot_download (same repo/tag):   {hf_med:.2f} s   runs {[round(x, 2) for x in hf_times]}")
    print(f"   ratio spr / snapshot_download: {spr_med / hf_med:.2f}x (target <= 1.5x)")
    # On a loaded machine the medians wander with the load; the fastest runs show the work itself.
    print(f"   ratio of the fastest runs: {min(spr_times) / min(hf_times):.2f}x")
    env = dict(base_env, HF_HOME=str(work / "hf-phases"), SPR_HOME=str(work / "deploy-phases"))
    _, out = child(SPR_PULL_PHASES, env, "bench/lora@v1", url)
    print("   where one more spr pull spends its time:")
    for line in out.strip().splitlines():
        seconds, label = line.split(" ", 1)
        print(f"     {float(seconds):6.2f} s  {label}")

    # -- 1. cached pinned pull as a fresh process ----------------------------------------------------
    print(f"\n1. cached pinned pull, 'spr pull NS/NAME@<sha>' as a fresh process (median of {args.cached_runs}):")
    for label, repo, pushed in (("small prompt-tuning adapter", "bench/small", small_push),
                                (f"{lora_bytes / 1e6:.0f} MB LoRA adapter", "bench/lora", lora_push)):
        env = dict(base_env, HF_HOME=str(work / f"hf-cached-{repo.replace('/', '-')}"),
                   SPR_HOME=str(work / f"deploy-cached-{repo.replace('/', '-')}"))
        target = f"{repo}@{pushed.commit_sha}"
        child(SPR_CLI, env, "pull", target)  # the first pull: downloads, verifies, imports
        os.sync()  # let the first pull's writes reach the disk: measure the cached pull, not write-back
        server.clear_log()
        walls = [child(SPR_CLI, env, "pull", target)[0] for _ in range(args.cached_runs)]
        requests = len(server.requests)
        print(f"   {label}: {statistics.median(walls):.3f} s (min {min(walls):.3f}, max {max(walls):.3f}); "
              f"HTTP requests during these runs: {requests}")
    env = dict(base_env, SPR_HOME=str(work / "empty"), HF_HOME=str(work / "hf-empty"))
    walls = [child("import sys", env)[0] for _ in range(3)]
    print(f"   (for scale: a bare 'python -c \"import sys\"' takes {statistics.median(walls):.3f} s here)")

    # -- 3. push many small versions ------------------------------------------------------------------
    refs = []
    t = time.perf_counter()
    for i in range(args.versions + 1):
        refs.append(catalogue.publish(make_prompt(work / "many" / str(i), 1000 + i), "bench/many").version.ref)
    t_publish_many = time.perf_counter() - t
    env = dict(base_env, SPR_HOME=str(publisher), HF_HOME=str(work / "hf-pusher"), HF_TOKEN=TOKEN)
    server.clear_log()
    _, out = child(PUSH_MANY, env, "bench/many", url, *refs)
    seconds, count = out.split()
    pushed_n = int(count)
    per_version = len(server.requests) / (pushed_n + 1)
    print(f"\n3. pushing {pushed_n} small versions (one commit + tag v{{N}} each, LFS path) from one process:")
    print(f"   {pushed_n / float(seconds):.1f} versions/s ({float(seconds):.2f} s; {per_version:.1f} HTTP requests per version; "
          f"publishing them took {t_publish_many:.1f} s, not counted)")
    server.stop()
    print(f"\n(work directory left at {work}; remove it when done)")


if __name__ == "__main__":
    main()
