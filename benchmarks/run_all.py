"""Run every benchmark, draw the plot, and print the figures against their targets.

    python benchmarks/run_all.py --setup     # once: the benchmarks' virtualenv
    python benchmarks/run_all.py [--quick] [--only throughput,peers] [--no-fast]

``--setup`` makes ``benchmarks/.venv-bench`` with discord.py (for peers.py),
matplotlib (for plot.py) and py-spy (for receive_profile.py); gcluster itself
never imports any of them. Each benchmark runs in its own process with this
interpreter and writes ``benchmarks/results/<name>.json``; the summary goes
to ``benchmarks/results/summary.json``.

``--no-fast`` measures gcluster as installed without the ``fast`` extra:
each benchmark runs with ``GCLUSTER_BENCH_NO_FAST=1``, which hides zlib-ng
and orjson from it (``_common.py``), and writes to ``results/nofast/``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
RESULTS = BENCHMARKS / "results"
VENV = BENCHMARKS / ".venv-bench"
VENV_PYTHON = VENV / "bin" / "python"
# What the virtualenv holds; zstandard stays out so discord.py keeps to zlib-stream.
# orjson: for peers.py's second pairing (discord.py's speed extra uses it).
VENV_PACKAGES = ("discord.py>=2.4,<3", "orjson>=3.9", "matplotlib>=3.7", "py-spy>=0.3.14")
ORDER = (
    "throughput",
    "decoders",
    "filtered",
    "latency",
    "peers",
    "scale",
    "soak",
    "receive_profile",
)
# Arguments for a full run: the soak's default five minutes would be half the run.
FULL_ARGUMENTS: dict[str, tuple[str, ...]] = {"soak": ("--duration", "120")}


def setup() -> None:
    if not VENV_PYTHON.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(VENV_PYTHON), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([str(VENV_PYTHON), "-m", "pip", "install", "-q", *VENV_PACKAGES], check=True)
    subprocess.run(
        [str(VENV_PYTHON), "-m", "pip", "uninstall", "-q", "-y", "zstandard"], check=False
    )
    print(f"ready: {VENV}")


def run(name: str, quick: bool) -> int:
    command = [sys.executable, str(BENCHMARKS / f"{name}.py")]
    if quick and name != "receive_profile":
        command.append("--quick")
    elif not quick:
        command.extend(FULL_ARGUMENTS.get(name, ()))
    print(f"\n=== {name}: {' '.join(command[1:])}  (load {os.getloadavg()[0]:.2f})", flush=True)
    started = time.monotonic()
    code = subprocess.run(command, check=False).returncode
    print(f"=== {name}: exit {code} after {time.monotonic() - started:.0f} s", flush=True)
    return code


def summary(results: Path = RESULTS) -> list[dict[str, object]]:
    rows = []
    for name in ORDER:
        path = results / f"{name}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        for target, value in data.get("targets", {}).items():
            rows.append(
                {
                    "benchmark": name,
                    "target": target,
                    "value": value["value"],
                    "goal": value["target"],
                    "met": value["met"],
                    "command": data.get("command"),
                    "loadavg": data.get("environment", {}).get("loadavg"),
                }
            )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", action="store_true", help="make the virtualenv and stop")
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    parser.add_argument("--only", default=",".join(ORDER))
    parser.add_argument(
        "--no-fast",
        action="store_true",
        help="hide zlib-ng and orjson, as without the fast extra (results/nofast/)",
    )
    args = parser.parse_args(argv)
    if args.setup:
        setup()
        return 0
    results = RESULTS
    if args.no_fast:
        os.environ["GCLUSTER_BENCH_NO_FAST"] = "1"  # inherited by every benchmark
        results = RESULTS / "nofast"
    failed = []
    for name in args.only.split(","):
        if name in ("peers", "receive_profile") and not VENV_PYTHON.exists():
            print(f"=== {name}: skipped, no {VENV} (run with --setup)")
            continue
        if run(name, args.quick) != 0:
            failed.append(name)
    if VENV_PYTHON.exists() and not args.no_fast:
        subprocess.run([str(VENV_PYTHON), str(BENCHMARKS / "plot.py")], check=False)
    rows = summary(results)
    print("\ntarget                                     value      goal   met")
    for row in rows:
        value, goal = float(row["value"]), float(row["goal"])  # type: ignore[arg-type]
        print(f"{row['target']:<40} {value:>8.3f}  {goal:>8.3f}   {'yes' if row['met'] else 'NO'}")
    results.mkdir(parents=True, exist_ok=True)
    (results / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
