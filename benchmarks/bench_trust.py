"""Signing and trust costs (issue 14), measured side by side in one run.

    python benchmarks/bench_trust.py [--mb 200] [--events 100000] [--runs 5]

1. A LoRA adapter of ``--mb`` MB is published into a fresh catalogue (SQLite, temp SPR_HOME).
   Measured, median of ``--runs``: sha256 of its files (the least any pull does: it hashes every
   byte it receives), ``sign_version`` (model-signing bundle from the catalogue's digests) and
   ``trust.check`` (verify the stored bundle, judge it under a policy). Signing and verifying are
   reported as a fraction of the hashing time.
2. ``--events`` events are appended to the chain (bulk, with real chain hashes); measured: the
   checkpoint check alone (``checkpoint.check_extends``), the full chain walk
   (``verify_event_chain``), and both together as ``spr audit --checkpoint`` runs them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def median_time(fn: Callable[[], object], runs: int, clock: Callable[[], float] = time.perf_counter) -> float:
    times = []
    for _ in range(runs):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="spr-bench-trust-"))
    os.environ["SPR_HOME"] = str(tmp / "home")
    os.environ["SPR_ACTOR"] = "bench"

    from bench_hub import make_lora
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from registry import catalogue, trust
    from registry.digest import sha256_file
    from registry.trust import checkpoint, signing

    key = ec.generate_private_key(ec.SECP256R1())
    key_path = tmp / "key.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (tmp / "key.pub").write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    policy = tmp / "policy.toml"
    policy.write_text('[[rule]]\nadapters = "*"\nrequire = true\nkeys = ["key.pub"]\n')

    adapter = make_lora(tmp / "lora", args.mb)
    size = sum(p.stat().st_size for p in adapter.iterdir())
    ref = catalogue.publish(adapter, "bench/lora").version.ref
    version = catalogue.get_version(ref)
    trust.sign(ref, key_path)

    hashing = median_time(lambda: [sha256_file(p) for p in adapter.iterdir()], args.runs)
    signing_s = median_time(lambda: signing.sign_version(version, key_path), args.runs)
    verify_s = median_time(lambda: trust.check(version, policy_path=policy).raise_if_refused(), args.runs)

    # --- a long chain -----------------------------------------------------------------------
    from sqlalchemy import insert, select

    from registry.db import session_scope
    from registry.models import EventRow

    with session_scope(None, write=True) as session:
        prev = session.scalar(select(EventRow.hash).order_by(EventRow.id.desc()).limit(1)) or catalogue.GENESIS_HASH
        at = datetime.now(timezone.utc)
        rows = []
        for i in range(args.events):
            when = at + timedelta(microseconds=i)
            details = json.dumps({"n": i}, sort_keys=True, separators=(",", ":"))
            h = catalogue.event_hash(when, "bench", "export", ref, details, prev)
            rows.append({"at": when, "actor": "bench", "action": "export", "subject": ref, "details_json": details,
                         "prev_hash": prev, "hash": h})
            prev = h
        session.execute(insert(EventRow), rows)
    cp_path = checkpoint.write(checkpoint.create(key=key_path), tmp / "head.json")
    cp = checkpoint.read(cp_path)
    extends = median_time(lambda: checkpoint.check_extends(cp), args.runs)
    chain = median_time(catalogue.verify_event_chain, max(1, args.runs // 2))
    chain_cpu = median_time(catalogue.verify_event_chain, max(1, args.runs // 2), time.process_time)
    assert checkpoint.check_extends(cp) == [] and catalogue.verify_event_chain() == []

    print(f"adapter: {size / 1e6:.0f} MB in {len(version.files)} files; runs: {args.runs} (median)")
    print(f"  sha256 of the files (least work of any pull)   {hashing:8.3f} s")
    print(f"  sign (model-signing bundle from stored digests) {signing_s:8.3f} s  ({100 * signing_s / hashing:.1f}% of hashing)")
    print(f"  verify under a policy (trust.check)             {verify_s:8.3f} s  ({100 * verify_s / hashing:.1f}% of hashing)")
    print(f"chain: {cp.count} events")
    print(f"  checkpoint check (check_extends)                {extends:8.3f} s")
    print(f"  full chain walk (verify_event_chain)            {chain:8.3f} s  (CPU {chain_cpu:.3f} s)")
    print(f"  spr audit --checkpoint's chain work (both)       {extends + chain:8.3f} s")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
