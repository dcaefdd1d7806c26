"""1,000 shards in one process: start-up time, memory per shard, idle CPU.

The simulator (its own process) serves 1,000 shards with a high
``max_concurrency`` and an identify interval scaled down from Discord's 5 s
(the client's `LocalQueue` spaces IDENTIFYs by the same interval), so start-up
measures the client, not the 5 s rule. Memory is the process's resident set
(``VmRSS``) after every shard is ready, minus what it was before the cluster
was built, per shard. Idle CPU is this process's CPU time over a quiet window
with every shard heartbeating at the simulator's interval (Discord's 41.25 s
unless ``--heartbeat-interval`` says otherwise; the window should span at
least one interval).

    python benchmarks/scale.py [--shards 1000] [--idle-seconds 90] [--heartbeat-interval 41.25]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Sequence

import _common
import gevent
from _common import INTENTS, cpu_seconds, pin_client, rss_kb, start_simulator, write_results

from gcluster import Cluster, LocalQueue, ShardScheme

TARGET_RSS_KB = 150
TARGET_IDLE_CPU = 0.03


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=1000)
    parser.add_argument("--max-concurrency", type=int, default=64)
    parser.add_argument(
        "--identify-interval", type=float, default=0.25, help="seconds (Discord: 5)"
    )
    parser.add_argument(
        "--queue-margin",
        type=float,
        default=1.1,
        help="the client's LocalQueue interval is the simulator's times this",
    )
    parser.add_argument("--heartbeat-interval", type=float, default=41.25)
    parser.add_argument("--idle-seconds", type=float, default=90.0)
    parser.add_argument("--compression", default="zlib-stream")
    parser.add_argument("--quick", action="store_true", help="200 shards, 20 s idle")
    args = parser.parse_args(argv)
    if args.quick:
        args.shards, args.idle_seconds = 200, 20.0
    pin_client()
    _common.raise_file_limit()
    compression = False if args.compression == "none" else args.compression
    with start_simulator(
        shards=args.shards,
        max_concurrency=args.max_concurrency,
        identify_interval=args.identify_interval,
        heartbeat_interval=args.heartbeat_interval,
        guilds_per_shard=1,
        # A 1,000-shard bot gets a bigger daily budget than Discord's default 1,000.
        session_start_limit_total=10 * args.shards,
        session_start_remaining=10 * args.shards,
    ) as sim:
        gc.collect()
        rss_before = rss_kb()
        # A little over the simulator's interval: the queue spaces its grants,
        # the simulator measures arrivals, and an IDENTIFY that arrives early
        # by a microsecond is refused (op 9) and retried seconds later.
        queue = LocalQueue(
            args.max_concurrency, interval=args.identify_interval * args.queue_margin
        )
        cluster = Cluster(
            sim.token,
            INTENTS,
            api_base=sim.api_base,
            shard_scheme=ShardScheme.range(range(args.shards), args.shards),
            queue=queue,
            compression=compression,
        )
        started = time.monotonic()
        cpu_started = cpu_seconds()
        cluster.up(timeout=900)
        up_seconds = time.monotonic() - started
        ready = cluster.wait_until_ready(900)
        ready_seconds = time.monotonic() - started
        startup_cpu = cpu_seconds() - cpu_started
        if not ready:
            raise RuntimeError("not every shard got ready")
        rounds = -(-args.shards // args.max_concurrency)
        floor = (rounds - 1) * args.identify_interval
        print(
            f"{args.shards} shards ready in {ready_seconds:.2f} s "
            f"(identify rule floor {floor:.2f} s; up() returned after {up_seconds:.2f} s)",
            flush=True,
        )
        # Let start-up's garbage go and the last READYs settle before measuring.
        gevent.sleep(2.0)
        gc.collect()
        rss_ready = rss_kb()
        sim_before = sim.stats()
        cpu_before = cpu_seconds()
        idle_started = time.monotonic()
        gevent.sleep(args.idle_seconds)
        idle_wall = time.monotonic() - idle_started
        idle_cpu = cpu_seconds() - cpu_before
        sim_after = sim.stats()
        gc.collect()
        rss_idle = rss_kb()
        info = cluster.info()
        connected = sum(1 for i in info.values() if i.stage.value == "connected")
        heartbeats = sim_after["heartbeats"] - sim_before["heartbeats"]
        acked = sum(i.latency.heartbeats for i in info.values())
        cluster.down()
        violations = sim.stats()["violations"]

    per_shard_kb = (rss_ready - rss_before) / args.shards
    per_shard_idle_kb = (rss_idle - rss_before) / args.shards
    idle_share = idle_cpu / idle_wall
    rows = [
        ("shards", args.shards),
        ("compression", _common.compression_name(compression)),
        (
            "max_concurrency / identify interval",
            f"{args.max_concurrency} / {args.identify_interval} s "
            f"(client queue x{args.queue_margin})",
        ),
        ("start-up: all ready", f"{ready_seconds:.2f} s (rule floor {floor:.2f} s)"),
        ("start-up CPU", f"{startup_cpu:.2f} s"),
        ("RSS before the cluster", f"{rss_before:,} KB"),
        ("RSS all ready", f"{rss_ready:,} KB"),
        ("RSS per shard (ready)", f"{per_shard_kb:.1f} KB"),
        ("RSS per shard (after idle)", f"{per_shard_idle_kb:.1f} KB"),
        ("heartbeat interval", f"{args.heartbeat_interval} s"),
        ("idle window", f"{idle_wall:.1f} s, {heartbeats} heartbeats reached the simulator"),
        ("idle CPU", f"{idle_share:.2%} of one core ({idle_cpu:.2f} CPU s)"),
        ("connected after idle", f"{connected}/{args.shards}"),
        ("identify violations", violations),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")
    targets = {
        "rss_per_shard_kb": {
            "value": per_shard_kb,
            "target": TARGET_RSS_KB,
            "met": per_shard_kb <= TARGET_RSS_KB,
        },
        "idle_cpu_share": {
            "value": idle_share,
            "target": TARGET_IDLE_CPU,
            "met": idle_share <= TARGET_IDLE_CPU,
        },
    }
    print(
        f"target: <= {TARGET_RSS_KB} KB RSS per shard: {per_shard_kb:.1f} KB "
        f"({'met' if targets['rss_per_shard_kb']['met'] else 'MISSED'})"
    )
    print(
        f"target: idle CPU <= {TARGET_IDLE_CPU:.0%} of a core: {idle_share:.2%} "
        f"({'met' if targets['idle_cpu_share']['met'] else 'MISSED'})"
    )
    path = write_results(
        "scale",
        {
            "settings": vars(args),
            "startup_seconds": ready_seconds,
            "up_seconds": up_seconds,
            "identify_floor_seconds": floor,
            "startup_cpu_seconds": startup_cpu,
            "rss_before_kb": rss_before,
            "rss_ready_kb": rss_ready,
            "rss_idle_kb": rss_idle,
            "rss_per_shard_kb": per_shard_kb,
            "rss_per_shard_after_idle_kb": per_shard_idle_kb,
            "idle_seconds": idle_wall,
            "idle_cpu_seconds": idle_cpu,
            "idle_cpu_share": idle_share,
            "heartbeats_in_window": heartbeats,
            "heartbeats_acked_total": acked,
            "connected_after_idle": connected,
            "identify_violations": violations,
            "targets": targets,
        },
    )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
