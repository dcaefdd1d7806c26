"""gcluster against discord.py 2.x: events per second to the application, same payloads.

One simulator process (4 shards, zlib-stream) serves both in turn. gcluster's
figure is messages through ``cluster.events()``; discord.py's is messages to
``on_message`` of an AutoShardedClient (run by ``_discordpy_client.py`` in
the benchmarks' own virtualenv, ``benchmarks/.venv-bench``, pinned to the
same core). Both get the same blasts of ~1.2 KB MESSAGE_CREATEs and are timed
the same way: from the simulator's first write to the last message handed
over.

gcluster runs as installed in this process: with the ``fast`` extra (zlib-ng
and orjson), or without it under ``GCLUSTER_BENCH_NO_FAST=1`` (zlib and
ujson; ``run_all.py --no-fast``). discord.py runs twice in the same run: with
the standard library's json, as installed without extras (the ``default``
pairing), and with orjson, as with its ``speed`` extra (``speed``). The
target is checked on like against like: without ``fast`` on ``default``,
with ``fast`` on ``speed``.

    python benchmarks/peers.py [--events 40000] [--repeat 3] [--pairings default,speed]

Set the virtualenv up first with ``python benchmarks/run_all.py --setup``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import _common
from _common import (
    BENCHMARKS,
    VENV_PYTHON,
    make_cluster,
    pin_client,
    start_simulator,
    table,
    write_results,
)
from _stream import blast_run, median_run
from gevent import subprocess

from gcluster import backends
from gcluster.testing import SimulatorProcess

SHARDS = 4
TARGET = 5.0


# name: discord.py's json; gcluster uses what its own extras installed.
PAIRINGS = {"default": "stdlib", "speed": "orjson"}
# Like against like: without gcluster's fast extra, discord.py without its speed extra.
HEADLINE = "speed" if _common.FAST else "default"


def discord_py(
    sim: SimulatorProcess, per_shard: int, repeat: int, json_library: str
) -> dict[str, Any]:
    """Run discord.py's client through ``repeat`` blasts; its figures."""
    events = per_shard * SHARDS
    proc = subprocess.Popen(
        [
            str(VENV_PYTHON),
            str(BENCHMARKS / "_discordpy_client.py"),
            "--api-base",
            sim.api_base,
            "--gateway-url",
            sim.url,
            "--token",
            sim.token,
            "--events",
            str(events),
            "--rounds",
            str(repeat),
            "--json",
            json_library,
        ],
        stdout=subprocess.PIPE,
    )
    if _common.PIN and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(proc.pid, {_common.CLIENT_CPU})

    def next_line(event: str) -> dict[str, Any]:
        for line in proc.stdout:
            message = json.loads(line)
            if message["event"] == event:
                return dict(message)
        raise RuntimeError(f"discord.py exited ({proc.wait()}) before {event!r}")

    try:
        ready = next_line("ready")
        if not sim.wait_connected(range(SHARDS)):
            raise RuntimeError("discord.py's shards are not all connected")
        runs = []
        cpu_mark = ready["cpu"]
        for _ in range(repeat):
            sim.blast(range(SHARDS), per_shard, hold=True)
            sim.release()
            done = next_line("done")
            records = sim.wait_blasts()
            started = min(r["started"] for r in records)
            seconds = done["time"] - started
            cpu = done["cpu"] - cpu_mark
            cpu_mark = done["cpu"]
            runs.append(
                {
                    "events": events,
                    "seconds": seconds,
                    "rate": events / seconds,
                    "cpu_rate": events / cpu,
                    "client_cpu_per_event_us": cpu / events * 1e6,
                    "client_cpu_share": cpu / seconds,
                }
            )
            print(f"  discord.py ({json_library})  {runs[-1]['rate']:>9,.0f} events/s", flush=True)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    middle = sorted(runs, key=lambda run: run["rate"])[len(runs) // 2]
    return {**middle, "version": ready.get("version"), "runs": [r["rate"] for r in runs]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=40_000, help="per run, all shards")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="12,000 events, one run each")
    parser.add_argument("--pairings", default=",".join(PAIRINGS))
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.repeat = 12_000, 1
    if not VENV_PYTHON.exists():
        print("no benchmarks/.venv-bench: python benchmarks/run_all.py --setup", file=sys.stderr)
        return 2
    pin_client()
    per_shard = args.events // SHARDS
    used = backends.in_use()
    libraries = f"{used.zlib_stream}, {used.json}"
    results: dict[str, dict[str, Any]] = {}
    with start_simulator(shards=SHARDS, max_concurrency=SHARDS, login_endpoints=True) as sim:
        for pairing in args.pairings.split(","):
            json_library = PAIRINGS[pairing]
            cluster = make_cluster(sim, range(SHARDS), SHARDS, compression="zlib-stream")
            try:
                runs = []
                for _ in range(args.repeat):
                    runs.append(blast_run(sim, cluster, range(SHARDS), per_shard))
                    print(f"  gcluster ({libraries})  {runs[-1].rate:>9,.0f} events/s", flush=True)
            finally:
                cluster.down()
            ours = median_run(runs)
            theirs = discord_py(sim, per_shard, args.repeat, json_library)
            results[pairing] = {
                "gcluster": {
                    **ours.to_dict(),
                    "decoder": libraries,
                    "runs": [r.rate for r in runs],
                },
                "discord_py": {**theirs, "json": json_library},
                "ratio": ours.rate / theirs["rate"],
                "cpu_ratio": ours.cpu_rate / theirs["cpu_rate"],
            }

    rows = []
    for result in results.values():
        ours, theirs = result["gcluster"], result["discord_py"]
        rows.append(
            (
                f"gcluster ({ours['decoder']})",
                ours["rate"],
                ours["cpu_rate"],
                ours["client_cpu_per_event_us"],
                f"{ours['client_cpu_share']:.0%}",
                "",
            )
        )
        rows.append(
            (
                f"discord.py {theirs['version']} ({theirs['json']})",
                theirs["rate"],
                theirs["cpu_rate"],
                theirs["client_cpu_per_event_us"],
                f"{theirs['client_cpu_share']:.0%}",
                f"{result['ratio']:.2f}x",
            )
        )
    print()
    print(table(["client", "events/s", "per CPU-s", "us CPU/event", "CPU share", "ratio"], rows))
    for pairing, result in results.items():
        met = result["ratio"] >= TARGET
        label = "target" if pairing == HEADLINE else f"{pairing} pairing (not the target)"
        print(
            f"{label}: gcluster >= {TARGET:.0f}x discord.py (4 shards, zlib-stream): "
            f"{result['ratio']:.2f}x wall, {result['cpu_ratio']:.2f}x per CPU second "
            f"({'met' if met else 'MISSED'})"
        )
    headline = results.get(HEADLINE) or next(iter(results.values()))
    path = write_results(
        "peers",
        {
            "settings": {
                "events": args.events,
                "repeat": args.repeat,
                "shards": SHARDS,
                "pairings": list(results),
                "headline": HEADLINE,
            },
            # The default pairing at the top level, as plot.py reads it.
            "gcluster": headline["gcluster"],
            "discord_py": headline["discord_py"],
            "ratio": headline["ratio"],
            "cpu_ratio": headline["cpu_ratio"],
            "pairings": results,
            "targets": {
                "vs_discord_py": {
                    "value": headline["ratio"],
                    "target": TARGET,
                    "met": headline["ratio"] >= TARGET,
                }
            },
        },
    )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
