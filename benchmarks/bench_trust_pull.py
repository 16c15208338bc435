"""What signatures add to ``spr pull`` (issue 14: at most 10% on the 199 MB adapter), in one run.

    python benchmarks/bench_trust_pull.py [--mb 200] [--runs 3]

The project's Hub server runs in this process (``lfs_mode="auto"``, client Xet off). One LoRA
adapter of ``--mb`` MB is pushed twice: unsigned to ``bench/plain`` and, after ``spr sign``, to
``bench/signed`` (with ``model.sig``). Each measurement is a fresh ``spr pull REPO@v1`` process
(interpreter start and imports included) into an empty catalogue and HF cache; the signed pull runs
under a trust policy that requires the signer, so it downloads ``model.sig``, imports
model-signing, verifies the bundle, stores it and applies the policy. Alternating, median of
``--runs``; the whole process's wall time, and the time inside ``hub.pull`` alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
TOKEN = "bench-token"

PULL = """
import sys, time
t0 = time.perf_counter()
from registry import hub
t = time.perf_counter()
result = hub.pull(sys.argv[1], endpoint=sys.argv[2])
inside = time.perf_counter() - t
from registry import trust
signed = len(trust.signatures(result.ref))
print(inside, signed, result.bytes)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="spr-bench-trust-pull-"))
    os.environ["SPR_HOME"] = str(work / "publisher")
    os.environ["HF_HOME"] = str(work / "hf-publisher")
    os.environ["HF_TOKEN"] = TOKEN
    from bench_hub import make_lora
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from registry import catalogue, hub, trust
    from registry.hubserver import HubServer

    server = HubServer(work / "hub-root", tokens=[f"{TOKEN} bench"], lfs_mode="auto").start()
    url = server.url
    key = ec.generate_private_key(ec.SECP256R1())
    (work / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (work / "key.pub").write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    policy = work / "policy.toml"
    policy.write_text('[[rule]]\nadapters = "*"\nrequire = true\nkeys = ["key.pub"]\n')

    lora = make_lora(work / "lora", args.mb)
    size = sum(p.stat().st_size for p in lora.iterdir())
    ref = catalogue.publish(lora, "bench/lora").version.ref
    hub.push(ref, "bench/plain", endpoint=url)
    trust.sign(ref, work / "key.pem")
    hub.push(ref, "bench/signed", endpoint=url)

    base_env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "SPR_HOME", "HF_HOME", "SPR_TRUST_POLICY")}
    base_env["HF_ENDPOINT"] = url
    walls: dict[str, list[float]] = {"plain": [], "signed": []}
    inside: dict[str, list[float]] = {"plain": [], "signed": []}
    for run in range(args.runs):
        for which in (("plain", "signed") if run % 2 == 0 else ("signed", "plain")):
            env = dict(base_env, SPR_HOME=str(work / f"deploy-{which}-{run}"), HF_HOME=str(work / f"hf-{which}-{run}"))
            if which == "signed":
                env["SPR_TRUST_POLICY"] = str(policy)
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", PULL, f"bench/{which}@v1", url], env=env,
                                  capture_output=True, text=True, timeout=1200, check=False)
            wall = time.perf_counter() - start
            if done.returncode != 0:
                raise SystemExit(done.stderr[-3000:])
            seconds, signatures, pulled = done.stdout.split()
            assert int(pulled) == size and int(signatures) == (1 if which == "signed" else 0)
            walls[which].append(wall)
            inside[which].append(float(seconds))
    server.stop()
    print(f"{size / 1e6:.0f} MB LoRA adapter; fresh-process pulls into empty catalogues, median of {args.runs}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for label, data in (("whole process", walls), ("inside hub.pull", inside)):
        p, s = statistics.median(data["plain"]), statistics.median(data["signed"])
        print(f"  {label:16} unsigned {p:6.2f} s   signed + policy {s:6.2f} s   overhead {100 * (s - p) / p:+.1f}%"
              f"   runs {[round(x, 2) for x in data['plain']]} / {[round(x, 2) for x in data['signed']]}")


if __name__ == "__main__":
    main()
