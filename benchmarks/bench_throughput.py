"""Teams and failures (issue 5): publish throughput with concurrent writers, and audit throughput.

    python benchmarks/bench_throughput.py [--versions 200] [--tokens 20] [--dim 768]
        [--audit-mib 1024] [--postgres postgresql://postgres@127.0.0.1:5432/postgres]

1. Publish throughput of small soft prompts (``--tokens`` x ``--dim`` fp32 prompt tuning, 61 kB at
   the defaults) with 1 and 4 concurrent writer processes, on SQLite (a fresh default catalogue)
   and on PostgreSQL (a fresh database on the server; skipped when it does not answer). Each
   writer is a process that has imported spr and built its adapters before the clock starts;
   the figure is versions published / wall seconds from "go" to the last commit.
2. ``spr audit`` throughput (GB/s) over a catalogue whose blobs total ``--audit-mib`` MiB,
   against plain ``hashlib.sha256`` (1 MiB reads, one thread) over the same blob files, both
   with the files in the page cache (each is read once before timing) and in the same run.
   Audit is shown with its default thread pool and with one thread.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WRITER = r"""
import json, sys, time
from pathlib import Path
import numpy as np
from safetensors.numpy import save_file

name, first, count, workdir, tokens, dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
dirs = []
for i in range(count):
    d = workdir / f"a{first + i}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "adapter_config.json").write_text(json.dumps({
        "peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": tokens, "token_dim": dim,
        "num_transformer_submodules": 1, "base_model_name_or_path": "bench/base", "prompt_tuning_init": "RANDOM"}))
    w = np.random.default_rng(first + i).standard_normal((tokens, dim)).astype(np.float32)
    save_file({"prompt_embeddings": w}, str(d / "adapter_model.safetensors"))
    dirs.append(d)
from registry import db
from registry import catalogue
db.get_engine()  # connect and check the schema before the clock starts
print("ready", flush=True)
sys.stdin.readline()
for d in dirs:
    catalogue.publish(d, name)
print("done", time.time(), flush=True)
"""


def publish_throughput(env: dict[str, str], writers: int, versions: int, tokens: int, dim: int, workdir: Path) -> float:
    per = versions // writers
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, "bench/throughput", str(100_000 * (w + 1)), str(per), str(workdir / f"w{w}"),
             str(tokens), str(dim)],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for w in range(writers)
    ]
    for p in procs:
        line = p.stdout.readline()  # type: ignore[union-attr]
        if line.strip() != "ready":
            raise SystemExit(f"writer failed to start: {p.stderr.read()}")  # type: ignore[union-attr]
    start = time.time()
    for p in procs:
        p.stdin.write("go\n")  # type: ignore[union-attr]
        p.stdin.flush()  # type: ignore[union-attr]
    ends = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        if p.returncode != 0:
            raise SystemExit(f"writer failed: {err[-2000:]}")
        ends.append(float(out.split()[-1]))
    return per * writers / (max(ends) - start)


def postgres_database(admin: str) -> tuple[str, str] | None:
    try:
        import psycopg

        conn = psycopg.connect(admin, autocommit=True, connect_timeout=3)
    except Exception as exc:
        print(f"PostgreSQL skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    name = f"spr_bench_{os.getpid()}_{int(time.time() * 1000) % 10**6}"
    conn.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    from sqlalchemy.engine import make_url

    url = make_url(admin.replace("postgresql://", "postgresql+psycopg://", 1)).set(database=name)
    return name, url.render_as_string(hide_password=False)


def drop_postgres_database(admin: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_publish(args: argparse.Namespace, root: Path) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    runs: list[tuple[str, int, dict[str, str]]] = []
    base_env = {k: v for k, v in os.environ.items() if k != "SPR_DATABASE_URL"}
    base_env["SPR_ACTOR"] = "bench"
    for writers in (1, 4):
        runs.append(("sqlite", writers, {**base_env, "SPR_HOME": str(root / f"sqlite-{writers}")}))
    pg_names = []
    for writers in (1, 4):
        made = postgres_database(args.postgres)
        if made is None:
            break
        name, url = made
        pg_names.append(name)
        from registry import db

        db.upgrade(db.open_unchecked(url))
        db.dispose_all()
        runs.append(("postgresql", writers, {**base_env, "SPR_HOME": str(root / f"pg-{writers}"), "SPR_DATABASE_URL": url}))
    try:
        for backend, writers, env in runs:
            rate = publish_throughput(env, writers, args.versions, args.tokens, args.dim, root / f"work-{backend}-{writers}")
            rows.append({"backend": backend, "writers": writers, "versions": args.versions // writers * writers,
                         "versions_per_s": round(rate, 1)})
            print(f"publish  {backend:<10} {writers} writer(s): {rate:7.1f} versions/s", flush=True)
    finally:
        for name in pg_names:
            drop_postgres_database(args.postgres, name)
    return rows


def run_audit(args: argparse.Namespace, root: Path) -> dict[str, object]:
    import numpy as np
    from safetensors.numpy import save_file

    home = root / "audit-home"
    os.environ["SPR_HOME"] = str(home)
    os.environ.pop("SPR_DATABASE_URL", None)
    from registry import catalogue
    from registry import ops as audit

    per_blob_mib = 64
    count = max(1, args.audit_mib // per_blob_mib)
    side = int((per_blob_mib * 2**20 / 4) ** 0.5)  # a square fp32 prompt_embeddings of ~64 MiB
    for i in range(count):
        d = root / "audit-src" / f"a{i}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "adapter_config.json").write_text(json.dumps({
            "peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": side, "token_dim": side,
            "num_transformer_submodules": 1, "base_model_name_or_path": "bench/base"}))
        w = np.random.default_rng(i).standard_normal((side, side), dtype=np.float32)
        save_file({"prompt_embeddings": w}, str(d / "adapter_model.safetensors"))
        catalogue.publish(d, "bench/audit")
        for f in d.iterdir():
            f.unlink()
    from registry.storage import LocalBlobStore

    blobs = [path for _, path in LocalBlobStore().iter_blobs()]
    total = sum(p.stat().st_size for p in blobs)
    for p in blobs:  # warm the page cache so both sides read from memory
        with open(p, "rb") as f:
            while f.read(1 << 24):
                pass

    def plain() -> float:
        t = time.perf_counter()
        for p in blobs:
            h = hashlib.sha256()
            with open(p, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        return time.perf_counter() - t

    def audited(workers: int | None) -> float:
        t = time.perf_counter()
        report = audit.audit(workers=workers)
        elapsed = time.perf_counter() - t
        assert report.problems == (), [p.line() for p in report.problems]
        assert report.bytes_hashed == total
        return elapsed

    # Interleave and keep the best of three, so neither side pays for a cold start.
    t_plain = min(plain() for _ in range(3))
    t_audit = min(audited(None) for _ in range(3))
    t_audit1 = min(audited(1) for _ in range(3))
    result = {
        "bytes": total, "blobs": len(blobs),
        "hashlib_gb_s": round(total / t_plain / 1e9, 3),
        "audit_gb_s": round(total / t_audit / 1e9, 3),
        "audit_1_thread_gb_s": round(total / t_audit1 / 1e9, 3),
        "ratio": round(t_plain / t_audit, 2),
        "ratio_1_thread": round(t_plain / t_audit1, 2),
    }
    print(
        f"audit    {total / 1e9:.2f} GB in {len(blobs)} blobs: hashlib.sha256 {result['hashlib_gb_s']} GB/s, "
        f"spr audit {result['audit_gb_s']} GB/s ({result['ratio']}x), "
        f"spr audit --1 thread {result['audit_1_thread_gb_s']} GB/s ({result['ratio_1_thread']}x)",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", type=int, default=200, help="versions per measurement (split among writers)")
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--audit-mib", type=int, default=1024)
    parser.add_argument("--postgres", default=os.environ.get("SPR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--json", action="store_true", help="print the figures as JSON at the end")
    args = parser.parse_args()
    print(f"cpus {os.cpu_count()}; python {sys.version.split()[0]}", flush=True)
    with tempfile.TemporaryDirectory(prefix="spr-bench-") as tmp:
        root = Path(tmp)
        publish = run_publish(args, root)
        audit_figures = run_audit(args, root)
    if args.json:
        print(json.dumps({"publish": publish, "audit": audit_figures}, indent=2))


if __name__ == "__main__":
    main()
