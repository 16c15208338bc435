"""Cold start of the metadata commands, before and after a change, measured side by side.

    python benchmarks/bench_cold_start.py --before /path/to/other/checkout [--runs 15] [--versions 10000]

Each checkout needs its own virtual environment in ``<checkout>/.venv`` with the project installed
editable (``pip install -e .``). One catalogue of ``--versions`` synthetic versions (filled by
``bench_catalogue.fill``) and one real tiny adapter and base serve both sides. Every command runs as
a fresh process, alternating before/after so both see the same machine load; the figure is the
median. Also reported: whether torch was imported (it must not be) and ``python -c pass``.
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

HERE = Path(__file__).resolve().parent
AFTER = HERE.parent


def run_once(python: Path, argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([str(python), "-m", "registry.cli.main", *argv], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t0


def imports_torch(python: Path, argv: list[str], env: dict[str, str]) -> bool:
    probe = "import sys; from registry.cli.main import run; run(sys.argv[1:]); print('torch' in sys.modules)"
    out = subprocess.run([str(python), "-c", probe, *argv], capture_output=True, text=True, env=env).stdout
    return out.strip().endswith("True")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", type=Path, required=True, help="the other checkout (with its own .venv)")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--versions", type=int, default=10_000)
    args = parser.parse_args()
    sides = {"before": args.before.resolve() / ".venv" / "bin" / "python", "after": AFTER / ".venv" / "bin" / "python"}
    work = Path(tempfile.mkdtemp(prefix="bench-cold-"))
    home = work / "home"
    sys.path.insert(0, str(HERE))
    from bench_catalogue import fill

    fill(home, args.versions)
    # A real adapter and base for verify (tiny: the figure is start-up, not reading).
    subprocess.run([str(sides["after"]), "-c", (
        "import sys; from pathlib import Path; from registry.demo import toymodels as t; w = Path(sys.argv[1]);"
        "tok = t.train_tokenizer(w / 'tok'); base = t.make_base_model(w / 'base', 'bloom', tokenizer_dir=tok);"
        "t.make_adapter(base, w / 'adapter', 'PROMPT_TUNING')"), str(work)], check=True)
    env = {**os.environ, "SPR_HOME": str(home)}
    commands = {
        "spr show team/adapter-7@42": ["show", "team/adapter-7@42"],
        "spr list --limit 50": ["list", "--limit", "50"],
        "spr verify DIR --base-model DIR": ["verify", str(work / "adapter"), "--base-model", str(work / "base")],
    }
    for python in sides.values():  # warm the page cache and the fingerprint cache
        for argv in commands.values():
            run_once(python, argv, env)
    results: dict[str, dict[str, float]] = {}
    for label, argv in commands.items():
        times: dict[str, list[float]] = {"before": [], "after": []}
        for i in range(args.runs):
            order = ["before", "after"] if i % 2 == 0 else ["after", "before"]
            for side in order:
                times[side].append(run_once(sides[side], argv, env))
        results[label] = {side: statistics.median(t) for side, t in times.items()}
        results[label]["after/before"] = results[label]["after"] / results[label]["before"]
        results[label]["torch imported (after)"] = float(imports_torch(sides["after"], argv, env))
    pass_times = [run_once_plain(sides["after"]) for _ in range(args.runs)]
    results["python -c pass"] = {"after": statistics.median(pass_times)}
    print(json.dumps(results, indent=2))


def run_once_plain(python: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([str(python), "-c", "pass"], check=True)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
