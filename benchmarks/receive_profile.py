"""Where the client's receive path spends its time, under the throughput benchmark's load.

Four zlib-stream shards take blasts from the simulator process while a
profiler watches this process only: py-spy (sampling, from the benchmarks'
virtualenv; ``--native`` adds C frames such as zlib and ujson) or cProfile
(deterministic, in-process; it slows the client and blurs greenlet
switches, so prefer py-spy). Prints self and inclusive time per function,
and writes the raw profile next to the JSON summary in
``benchmarks/results/``.

    python benchmarks/receive_profile.py [--events 200000] [--profiler py-spy|cprofile] [--native]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import pstats
import re
import signal
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _common import RESULTS, VENV, make_cluster, pin_client, start_simulator, write_results
from _stream import blast_run
from gevent import subprocess

SHARDS = 4
PY_SPY = VENV / "bin" / "py-spy"
_LINE = re.compile(r":\d+\)$")


def py_spy(native: bool, raw: Path) -> Callable[[], Callable[[], None]]:
    """A `blast_run` hook that samples this process with py-spy while the blast runs."""

    def start() -> Callable[[], None]:
        command = [
            str(PY_SPY),
            "record",
            "--pid",
            str(os.getpid()),
            "--rate",
            "1000",
            "--format",
            "raw",
            "--output",
            str(raw),
        ]
        # Native frames need the process paused for each sample (slower).
        command.append("--native" if native else "--nonblocking")
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def stop() -> None:
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
            if proc.returncode not in (0, -signal.SIGINT) and not raw.exists():
                raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')}")

        return stop

    return start


def summarize_py_spy(raw: Path, top: int) -> dict[str, Any]:
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [_LINE.sub(")", frame) for frame in stack.split(";")]
        total += count
        self_counts[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count

    def rows(counts: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": f, "share": c / total, "samples": c} for f, c in counts.most_common(top)
        ]

    return {"samples": total, "self": rows(self_counts), "inclusive": rows(inclusive)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="all shards")
    parser.add_argument("--profiler", choices=("py-spy", "cprofile"), default="py-spy")
    parser.add_argument("--native", action="store_true", help="py-spy: C frames too")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    if args.profiler == "py-spy" and not PY_SPY.exists():
        print("no py-spy: python benchmarks/run_all.py --setup", file=sys.stderr)
        return 2
    pin_client()
    RESULTS.mkdir(exist_ok=True)
    per_shard = args.events // SHARDS
    summary: dict[str, Any]
    with start_simulator(shards=SHARDS, max_concurrency=SHARDS, replay_limit=10_000) as sim:
        cluster = make_cluster(sim, range(SHARDS), SHARDS, compression="zlib-stream")
        try:
            # One run unwatched for the figure, one with the cyclic garbage
            # collector off (what it costs), one watched for the profile.
            plain = blast_run(sim, cluster, range(SHARDS), per_shard)
            gc.collect()
            gc.disable()
            try:
                no_gc = blast_run(sim, cluster, range(SHARDS), per_shard)
            finally:
                gc.enable()
            if args.profiler == "py-spy":
                raw = RESULTS / "receive_profile.py-spy.txt"
                watched = blast_run(
                    sim, cluster, range(SHARDS), per_shard, during=py_spy(args.native, raw)
                )
                summary = summarize_py_spy(raw, args.top)
            else:
                profiler = cProfile.Profile()

                def during() -> Callable[[], None]:
                    profiler.enable()
                    return profiler.disable

                watched = blast_run(sim, cluster, range(SHARDS), per_shard, during=during)
                raw = RESULTS / "receive_profile.cprofile"
                profiler.dump_stats(raw)
                summary = summarize_cprofile(profiler, args.top)
        finally:
            cluster.down()

    print(
        f"4 shards zlib-stream: {plain.rate:,.0f} events/s unwatched "
        f"({plain.client_cpu_per_event * 1e6:.2f} us CPU/event), "
        f"{no_gc.rate:,.0f} events/s with gc disabled "
        f"({no_gc.client_cpu_per_event * 1e6:.2f} us CPU/event), "
        f"{watched.rate:,.0f} events/s while profiled ({args.profiler})\n"
    )
    if args.profiler == "py-spy":
        for title, key in (("self time", "self"), ("inclusive time", "inclusive")):
            print(f"{title} ({summary['samples']:,} samples):")
            for row in summary[key]:
                print(f"  {row['share']:6.1%}  {row['function']}")
            print()
    else:
        print(summary["text"])
    path = write_results(
        "receive_profile",
        {
            "settings": vars(args),
            "rate_unwatched": plain.rate,
            "cpu_us_per_event_unwatched": plain.client_cpu_per_event * 1e6,
            "rate_gc_disabled": no_gc.rate,
            "cpu_us_per_event_gc_disabled": no_gc.client_cpu_per_event * 1e6,
            "rate_profiled": watched.rate,
            "raw": str(raw),
            "summary": summary,
        },
    )
    print(f"wrote {path} and {raw}")
    return 0


def summarize_cprofile(profiler: cProfile.Profile, top: int) -> dict[str, Any]:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    rows = []
    for (filename, line, function), (_, calls, tottime, cumtime, _) in sorted(
        stats.stats.items(),  # type: ignore[attr-defined]
        key=lambda item: item[1][2],
        reverse=True,
    )[:top]:
        rows.append(
            {
                "function": f"{function} ({Path(filename).name}:{line})",
                "calls": calls,
                "tottime": tottime,
                "cumtime": cumtime,
            }
        )
    return {"text": out.getvalue(), "self": rows}


if __name__ == "__main__":
    sys.exit(main())
