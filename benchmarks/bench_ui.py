"""Web catalogue performance (issue 16): time to first byte of `spr ui` pages under load.

    python benchmarks/bench_ui.py [--versions 100000] [--clients 16] [--requests 480] [--workers 1 2]

Fills a catalogue of ``--versions`` versions (1,000 adapters of 100 versions, one eval score per
version, a ``prod`` alias per adapter, a depth-50 lineage chain on ``team/adapter-0``) in bulk, the
way ``bench_catalogue.py`` does; starts ``spr ui`` as its own process (one uvicorn worker, as a user
runs it, then ``--workers 2``), each with its page cache off and on; then ``--clients`` threads,
each with a keep-alive connection, request one kind of page
``--requests`` times in all, and the time from sending a request to reading its status line and
headers (time to first byte) is recorded. Pages: the adapter list (first page, and a page deep in
the list with a filter), a version page (random adapter and version), and the depth-50 lineage page.
In the same run, ``spr show --json`` as a fresh process is timed (median of ``--runs``) as the
baseline the issue asks for: a page of the running UI against what a terminal user waits for.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_catalogue import fill, fresh_process, median_seconds  # noqa: E402


def add_evals_and_aliases(home: Path) -> None:
    """One eval score per version and a ``prod`` alias on each adapter's version 50."""
    os.environ["SPR_HOME"] = str(home)
    from sqlalchemy import func, insert, select

    from registry import db
    from registry.models import AliasRow, EvalScoreRow, VersionRow

    engine = db.get_engine()
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        ids = conn.execute(select(VersionRow.id, VersionRow.adapter_id, VersionRow.number)).all()
        batch = []
        for vid, _aid, number in ids:
            batch.append({"version_id": vid, "metric": "accuracy", "value": 0.5 + number / 400,
                          "dataset_digest": "sha256:" + "e" * 64, "dataset_name": "heldout.jsonl",
                          "split": "test", "recorded_by": "bench", "recorded_at": now})
            if len(batch) >= 5000:
                conn.execute(insert(EvalScoreRow), batch)
                batch = []
        if batch:
            conn.execute(insert(EvalScoreRow), batch)
        n_adapters = conn.scalar(select(func.max(VersionRow.adapter_id))) or 0
        conn.execute(insert(AliasRow), [
            {"adapter_id": a, "alias": "prod", "version_id": (a - 1) * 100 + 50, "updated_at": now}
            for a in range(1, n_adapters + 1)
        ])
    db.dispose_all()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_ui(home: Path, port: int, cache_seconds: float, workers: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SPR_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "registry.cli.main", "ui", "--port", str(port),
                             "--cache-seconds", str(cache_seconds), "--workers", str(workers)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("spr ui did not start: " + (proc.stderr.read().decode() if proc.stderr else "")) from None
            time.sleep(0.2)


def load(port: int, paths: Callable[[random.Random], str], clients: int, requests: int) -> list[float]:
    """``requests`` GETs over ``clients`` keep-alive connections; returns each time to first byte."""
    times: list[float] = []
    lock = threading.Lock()
    per_client = [requests // clients + (1 if i < requests % clients else 0) for i in range(clients)]
    errors: list[str] = []

    def client(i: int, n: int) -> None:
        rng = random.Random(i)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        for _ in range(n):
            path = paths(rng)
            t0 = time.perf_counter()
            conn.request("GET", path)
            response = conn.getresponse()  # returns once the status line and headers are read
            ttfb = time.perf_counter() - t0
            body = response.read()
            if response.status != 200 or not body:
                errors.append(f"{path}: {response.status}")
            mine.append(ttfb)
        conn.close()
        with lock:
            times.extend(mine)

    threads = [threading.Thread(target=client, args=(i, n)) for i, n in enumerate(per_client)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests, e.g. {errors[0]}")
    return times


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--versions", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=480, help="requests per page kind")
    parser.add_argument("--runs", type=int, default=7, help="fresh `spr show` processes to time")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="spr ui --workers values to measure")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="spr-bench-ui-"))
    home = workdir / "home"
    t0 = time.perf_counter()
    fill(home, args.versions)
    add_evals_and_aliases(home)
    n_adapters = max(1, args.versions // 100)
    print(f"filled {args.versions} versions ({n_adapters} adapters, evals, aliases) in {time.perf_counter() - t0:.1f} s")

    env = {**os.environ, "SPR_HOME": str(home)}
    spr = [sys.executable, "-m", "registry.cli.main"]
    fresh_process([*spr, "show", "--json", "team/adapter-7@42"], env)  # warm the OS file cache
    show = median_seconds(lambda: fresh_process([*spr, "show", "--json", "team/adapter-7@42"], env), args.runs)

    for workers in args.workers:
        for cache_seconds in (0.0, 2.0):
            run_pages(home, n_adapters, args, cache_seconds, workers)
    print(f"\nbaseline, same run: `spr show --json team/adapter-7@42` as a fresh process, median of {args.runs}: "
          f"{show * 1000:.1f} ms")


def run_pages(home: Path, n_adapters: int, args: argparse.Namespace, cache_seconds: float, workers: int) -> None:
    port = free_port()
    proc = start_ui(home, port, cache_seconds, workers)
    try:
        kinds: dict[str, Callable[[random.Random], str]] = {
            "adapter list, first page": lambda rng: "/",
            "adapter list, filtered, deep page": lambda rng: f"/?method=prompt-tuning&offset={rng.randrange(0, max(1, n_adapters - 50))}",
            "version page": lambda rng: f"/v/team/adapter-{rng.randrange(n_adapters)}@{rng.randrange(1, 101)}",
            "lineage page, depth 50": lambda rng: "/v/team/adapter-0@51/lineage",
            "version JSON (/api/v/...)": lambda rng: f"/api/v/team/adapter-{rng.randrange(n_adapters)}@{rng.randrange(1, 101)}",
        }
        for paths in kinds.values():  # warm-up: engine, templates, page cache
            load(port, paths, 2, 8)
        cache = f"page cache {cache_seconds:g} s" if cache_seconds else "page cache off (--cache-seconds 0)"
        print(f"\n--workers {workers}, {cache}; {args.clients} concurrent clients, {args.requests} requests per page kind, time to first byte:")
        print(f"  {'page':<36} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}")
        for name, paths in kinds.items():
            t0 = time.perf_counter()
            times = load(port, paths, args.clients, args.requests)
            wall = time.perf_counter() - t0
            print(f"  {name:<36} {pct(times, 0.5) * 1000:8.1f} {pct(times, 0.99) * 1000:8.1f} {len(times) / wall:8.1f}")
        # One request alone, for the "under 1 s" of the depth-50 lineage page.
        alone = load(port, kinds["lineage page, depth 50"], 1, 20)
        print(f"\n  depth-50 lineage page, one client: median {statistics.median(alone) * 1000:.1f} ms")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
