"""Crash safety: ``spr publish`` and ``spr alias set`` killed with SIGKILL at random moments.

Most trials fork a writer from a "zygote" process that has already imported spr (so each trial
costs a fork, not an interpreter start: the suite stays fast), and the writer runs the real CLI
entry point (``registry.cli.main.run``) in a loop: publish a new adapter, move ``prod``, repeat,
until it is killed 0-300 ms after it starts. Two zygotes run side by side, so kills also land
while another writer holds the database. A few trials kill the real ``spr`` console script.

Afterwards: ``spr audit`` finds no damage (only leftovers: orphan blobs and temp files, which are
warnings), every blob in the store, referenced or not, hashes to its name (no partial blob is
visible), version numbers have no gaps, the alias history is consistent, re-running each killed
publish succeeds, and ``spr gc`` leaves a store that audits without a single warning.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ops_support import alias_history_problems, write_small_adapter

from registry import catalogue
from registry import ops as audit
from registry.cli.main import run
from registry.digest import sha256_file
from registry.storage import LocalBlobStore

TESTS_DIR = str(Path(__file__).parent)
NAME = "crash/coach"
FORK_TRIALS = 50
SPR_TRIALS = 4

ZYGOTE = r"""
import json, os, signal, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from ops_support import write_small_adapter
from registry.cli.main import run
import registry.catalogue  # the CLI imports it lazily; a writer killed mid-publish has it loaded
if os.environ.get("SPR_DATABASE_URL", "").startswith("postgresql"):
    import psycopg  # what a long-running spr process has loaded before it writes
    from sqlalchemy.dialects.postgresql import psycopg as _dialect

workdir, name = Path(sys.argv[2]), sys.argv[3]
print("ready", flush=True)
for line in sys.stdin:
    trial, delay_ms = line.split()
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        out = os.open(os.devnull, os.O_WRONLY)
        os.dup2(out, 1)
        os.dup2(out, 2)
        i = 0
        while True:
            # The adapter appears whole or not at all: a kill while writing it is not a publish.
            d = workdir / f"t{trial}-{i:04d}"
            os.rename(write_small_adapter(workdir / f".tmp-{d.name}", int(trial) * 10000 + i), d)
            for argv in (["publish", str(d), "--name", name], ["alias", "set", name if i % 2 else f"{name}@1", "prod"]):
                code = run(argv)
                if code:
                    with open(workdir / f"failed-{trial}", "a") as f:
                        f.write(f"{argv} exited {code}\n")
            i += 1
    time.sleep(float(delay_ms) / 1000)
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    print(json.dumps({"trial": int(trial), "killed": killed}), flush=True)
"""


def start_zygote(workdir: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", ZYGOTE, TESTS_DIR, str(workdir), NAME],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", (proc.stderr.read() if proc.stderr else "") + line
    return proc


def last_adapter_of_each_trial(workdir: Path) -> list[Path]:
    last: dict[str, Path] = {}
    for d in sorted(workdir.glob("t*-*")):
        last[d.name.split("-")[0]] = d  # sorted: the highest index (the one in flight) wins
    return list(last.values())


@pytest.mark.slow
def test_sigkill_during_publish_and_alias_moves_leaves_a_consistent_catalogue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed = int(os.environ.get("SPR_CRASH_SEED", time.time_ns() % 2**32))
    rng = random.Random(seed)
    seed_note = f"(SPR_CRASH_SEED={seed} replays the delays)"
    workdir = tmp_path / "adapters"
    workdir.mkdir()
    # A first version exists so that 'alias set NAME@1' always resolves. Its duration (catalogue
    # creation included) scales the kill delays, so that on a loaded machine the kills still land
    # across publishes instead of all before the first one completes.
    t0 = time.perf_counter()
    assert run(["publish", str(write_small_adapter(workdir / "t0-0000", 0)), "--name", NAME]) == 0
    max_delay_ms = max(300.0, 3000 * (time.perf_counter() - t0))

    started = time.perf_counter()
    zygotes = [start_zygote(workdir), start_zygote(workdir)]
    results = []
    try:
        trial = 1
        while trial <= FORK_TRIALS:
            batch = []
            for z in zygotes:
                if trial > FORK_TRIALS:
                    break
                assert z.stdin is not None
                z.stdin.write(f"{trial} {rng.uniform(0, max_delay_ms):.1f}\n")
                z.stdin.flush()
                batch.append(z)
                trial += 1
            for z in batch:
                assert z.stdout is not None
                line = z.stdout.readline()
                assert line, z.stderr.read() if z.stderr else "zygote died"
                results.append(json.loads(line))
    finally:
        for z in zygotes:
            z.stdin.close()  # type: ignore[union-attr]
            z.wait(timeout=30)
    fork_seconds = time.perf_counter() - started

    # The real console script, killed at a random moment of its life (start-up included).
    spr = shutil.which("spr") or str(Path(sys.executable).parent / "spr")
    for k in range(SPR_TRIALS):
        d = write_small_adapter(workdir / f"s{k}-0000", 900_000 + k)
        proc = subprocess.Popen([spr, "publish", str(d), "--name", NAME], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.2, 0.8))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    assert len(results) == FORK_TRIALS
    assert sum(r["killed"] for r in results) == FORK_TRIALS, f"a writer ended on its own {seed_note}"
    failures = sorted(workdir.glob("failed-*"))
    assert not failures, [f.read_text() for f in failures]

    # 1. Audit: no damage. Leftovers of the kills are warnings only.
    capsys.readouterr()
    code = run(["audit", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["errors"] == 0, [p for p in report["problems"] if p["severity"] == "error"]
    assert {p["kind"] for p in report["problems"]} <= {"orphan-blob", "temp-file"}

    # 2. No partial blob under a real name, referenced or not.
    for sha, path in LocalBlobStore().iter_blob_paths():
        assert sha256_file(path)[0] == sha, f"blob {sha} holds partial or wrong bytes {seed_note}"

    # 3. Numbers have no gaps; every publish event has its version and vice versa.
    numbers = sorted(v.number for v in catalogue.versions(NAME))
    assert numbers == list(range(1, len(numbers) + 1))
    assert len(numbers) > 5, f"the writers hardly published: the kills did not land in publishes {seed_note}"
    events = catalogue.events(NAME)
    assert sum(1 for e in events if e.action == "publish") == len(numbers)
    assert alias_history_problems(events, "prod") == [], seed_note

    # 4. Re-running every killed command succeeds.
    for d in last_adapter_of_each_trial(workdir):
        assert run(["publish", str(d), "--name", NAME]) == 0, d
    assert run(["alias", "set", NAME, "prod"]) == 0
    published = {v.digest for v in catalogue.versions(NAME)}
    assert len(published) >= len(numbers)

    # 5. gc removes every leftover; the catalogue then audits without a single warning.
    assert run(["gc", "--yes", "--grace", "0"]) == 0
    final = audit.audit()
    assert final.problems == (), [p.line() for p in final.problems]
    assert catalogue.verify_event_chain() == []
    print(f"{FORK_TRIALS} fork trials in {fork_seconds:.1f} s; {len(numbers)} versions survived the kills")
