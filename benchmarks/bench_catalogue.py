"""Catalogue performance (issue 2), every figure measured side by side in one run.

    python benchmarks/bench_catalogue.py [--versions 100000] [--small 10000] [--gib 1]

1. ``spr show REF`` and ``spr list --limit 50`` as fresh processes on a catalogue of 10,000
   versions (median of N runs), next to ``python -c "import peft"`` measured in the same run.
2. Publishing a 1 GiB weights file: hashing throughput against plain ``hashlib.sha256`` over the
   same file in the same run, and the publishing process's peak RSS.
3. A catalogue of 100,000 versions: ``show``, ``list --base-model X --limit 50`` and the lineage
   of a depth-50 chain, in-process (median of N calls).

The large catalogues are filled with synthetic versions through the ORM in bulk (going through
``publish`` 100,000 times would only measure the filling); queries then run through the public
API exactly as ``spr`` runs them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent


def fill(home: Path, versions: int, chain: int = 50) -> None:
    """Bulk-insert ``versions`` versions (100 per adapter) plus one lineage chain of depth ``chain``."""
    os.environ["SPR_HOME"] = str(home)
    from sqlalchemy import insert

    from registry import catalogue, db
    from registry.models import AdapterRow, BaseModelRow, DatasetRow, EventRow, FileRow, VersionRow

    engine = db.get_engine()
    now = datetime.now(timezone.utc)
    per_adapter = 100
    n_adapters = max(1, versions // per_adapter)
    with engine.begin() as conn:
        conn.execute(insert(BaseModelRow), [
            {"id": i + 1, "identity_digest": f"sha256:{i:064x}", "name": f"org/base-{i}", "hidden_size": 1024,
             "source": "hub"} for i in range(10)
        ])
        conn.execute(insert(DatasetRow), [
            {"id": i + 1, "digest": f"sha256:{i:064x}", "name": f"data-{i}.jsonl", "format": "jsonl", "records": 50}
            for i in range(100)
        ])
        conn.execute(insert(AdapterRow), [
            {"id": a + 1, "namespace": "team", "name": f"adapter-{a}", "created_at": now} for a in range(n_adapters)
        ])
        vid = 0
        batch: list[dict[str, object]] = []
        files: list[dict[str, object]] = []
        for a in range(n_adapters):
            for n in range(1, per_adapter + 1):
                vid += 1
                digest = "sha256:" + hashlib.sha256(f"{a}/{n}".encode()).hexdigest()
                parent = None
                if a == 0 and 1 < n <= chain + 1:
                    parent = "sha256:" + hashlib.sha256(f"{a}/{n - 1}".encode()).hexdigest()
                batch.append({
                    "id": vid, "adapter_id": a + 1, "number": n, "digest": digest, "manifest": "{}",
                    "peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": 4, "token_dim": 1024,
                    "num_transformer_submodules": 1, "init_method": "RANDOM", "tags_json": "{}",
                    "training_json": "{}", "peft_config_json": "{}", "base_model_id": vid % 10 + 1,
                    "dataset_id": vid % 100 + 1, "parent_digest": parent, "lineage_verified": True,
                    "created_by": "bench", "created_at": now + timedelta(microseconds=vid), "status": "active",
                })
                for path in ("adapter_config.json", "adapter_model.safetensors", "README.md"):
                    files.append({"version_id": vid, "path": path, "sha256": hashlib.sha256(f"{vid}{path}".encode()).hexdigest(), "size": 1000})
                if len(batch) >= 5000:
                    conn.execute(insert(VersionRow), batch)
                    conn.execute(insert(FileRow), files)
                    batch, files = [], []
        if batch:
            conn.execute(insert(VersionRow), batch)
            conn.execute(insert(FileRow), files)
        # One publish event per version, properly chained.
        prev = catalogue.GENESIS_HASH
        events = []
        for v in range(1, vid + 1):
            details = json.dumps({"n": v}, sort_keys=True, separators=(",", ":"))
            at = now + timedelta(microseconds=v)
            h = catalogue.event_hash(at, "bench", "publish", f"team/adapter-{(v - 1) // per_adapter}@{(v - 1) % per_adapter + 1}", details, prev)
            events.append({"at": at, "actor": "bench", "action": "publish",
                           "subject": f"team/adapter-{(v - 1) // per_adapter}@{(v - 1) % per_adapter + 1}",
                           "details_json": details, "prev_hash": prev, "hash": h})
            prev = h
            if len(events) >= 5000:
                conn.execute(insert(EventRow), events)
                events = []
        if events:
            conn.execute(insert(EventRow), events)
    db.dispose_all()


def median_seconds(fn, runs: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fresh_process(argv: list[str], env: dict[str, str]) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=env)


def bench_processes(home: Path, runs: int) -> dict[str, float]:
    env = {**os.environ, "SPR_HOME": str(home)}
    spr = [sys.executable, "-m", "registry.cli.main"]
    fresh_process([*spr, "list", "--limit", "1"], env)  # warm the page cache
    results = {
        "python -c 'import peft'": median_seconds(lambda: fresh_process([sys.executable, "-c", "import peft"], env), runs),
        "spr show team/adapter-7@42": median_seconds(lambda: fresh_process([*spr, "show", "team/adapter-7@42"], env), runs),
        "spr list --limit 50": median_seconds(lambda: fresh_process([*spr, "list", "--limit", "50"], env), runs),
        "python -c pass": median_seconds(lambda: fresh_process([sys.executable, "-c", "pass"], env), runs),
    }
    return results


def bench_in_process(home: Path, runs: int) -> dict[str, float]:
    os.environ["SPR_HOME"] = str(home)
    from registry import catalogue, db

    db.dispose_all()
    catalogue.get_version("team/adapter-1@1")  # open the engine, check the schema once
    return {
        "show team/adapter-777@42": median_seconds(lambda: catalogue.get_version("team/adapter-777@42"), runs),
        "list --base-model org/base-3 --limit 50": median_seconds(
            lambda: catalogue.list_versions(base_model="org/base-3", limit=50), runs),
        "lineage depth 50": median_seconds(lambda: catalogue.lineage("team/adapter-0@51"), runs),
    }


def bench_hashing(workdir: Path, gib: float) -> dict[str, float]:
    """Publish a LoRA adapter whose weights file is ``gib`` GiB; compare with plain hashlib."""
    import numpy as np
    from safetensors.numpy import save_file

    adapter = workdir / "big-adapter"
    adapter.mkdir(exist_ok=True)
    rank = 64
    out_features = int(gib * (1 << 30) / (rank * 4))
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 128,
              "target_modules": ["dense"]}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    big = np.lib.format.open_memmap(workdir / "tmp.npy", mode="w+", dtype=np.float32, shape=(out_features, rank))
    big[:] = 0.5
    save_file({
        "base_model.model.dense.lora_A.weight": np.full((rank, 1024), 0.25, np.float32),
        "base_model.model.dense.lora_B.weight": np.asarray(big),
    }, str(adapter / "adapter_model.safetensors"))
    del big
    (workdir / "tmp.npy").unlink()
    weights = adapter / "adapter_model.safetensors"
    size = weights.stat().st_size

    def plain() -> None:
        h = hashlib.sha256()
        with open(weights, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)

    from registry.digest import sha256_file

    # Interleaved, so both see the same machine load; medians of 5 each.
    plain_times, spr_times = [], []
    for _ in range(5):
        plain_times.append(median_seconds(plain, 1))
        spr_times.append(median_seconds(lambda: sha256_file(weights), 1))
    t_plain, t_spr = statistics.median(plain_times), statistics.median(spr_times)
    env = {**os.environ, "SPR_HOME": str(workdir / "home-big")}
    script = (
        "import sys, time\n"
        "from registry import catalogue\n"
        "t0 = time.perf_counter(); catalogue.publish(sys.argv[1], 'big'); t_pub = time.perf_counter() - t0\n"
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork+exec from the parent.
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "print(t_pub, hwm)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(adapter)], check=True, capture_output=True, text=True, env=env).stdout
    t_pub, rss_kb = out.split()
    return {
        "file GiB": size / (1 << 30),
        "plain hashlib GB/s": size / t_plain / 1e9,
        "spr sha256_file GB/s": size / t_spr / 1e9,
        "ratio spr/plain (hash only)": t_plain / t_spr,
        "publish s (validate + NaN scan + hash-and-copy to store)": float(t_pub),
        "publish peak RSS MB": int(rss_kb) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--versions", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="spr-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)

    small = workdir / "home-10k"
    t0 = time.perf_counter()
    fill(small, args.small)
    print(f"filled {args.small} versions in {time.perf_counter() - t0:.1f} s")
    procs = bench_processes(small, args.runs)
    print(f"\n[1] fresh processes on {args.small} versions (median of {args.runs})")
    for k, v in procs.items():
        print(f"  {k:<32} {v * 1000:8.1f} ms")
    base = procs["python -c 'import peft'"]
    for k in ("spr show team/adapter-7@42", "spr list --limit 50"):
        print(f"  {k:<32} ratio vs import peft: {procs[k] / base:.2f}")

    large = workdir / "home-100k"
    t0 = time.perf_counter()
    fill(large, args.versions)
    print(f"\nfilled {args.versions} versions in {time.perf_counter() - t0:.1f} s")
    inproc = bench_in_process(large, max(args.runs, 21))
    print(f"[3] in-process on {args.versions} versions (median)")
    for k, v in inproc.items():
        print(f"  {k:<42} {v * 1000:8.2f} ms")

    print(f"\n[2] publishing a {args.gib} GiB weights file")
    for k, v in bench_hashing(workdir, args.gib).items():
        print(f"  {k:<58} {v:8.3f}")


if __name__ == "__main__":
    main()
