"""What the service mode's guard rails and status records cost Redis, at 1,000 shards.

A gateway process of 1,000 shards writes one state record per shard every 2 s
(`StateBoard.write`), renews a lease with a holder key per shard every
``--lease-ttl``/3 s, and `python -m gcluster status` reads it all back. This
measures each on a redis-server of its own (or a Redis Cluster with
``--cluster``):

    python benchmarks/status_records.py [--shards 1000] [--cluster]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from _common import ROOT, median, percentile, table, write_results
from _redis import start_cluster, start_redis

from gcluster.redis.lease import ShardLease
from gcluster.redis.shardstate import StateBoard

ROUNDS = 30


def timed(func: object, rounds: int = ROUNDS) -> list[float]:
    assert callable(func)
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        func()
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, default=1000)
    parser.add_argument("--cluster", action="store_true", help="a Redis Cluster, not one server")
    options = parser.parse_args()
    redis = start_cluster() if options.cluster else start_redis()
    try:
        url = redis.url
        ids = range(options.shards)
        board = StateBoard(url, namespace="bench", life=10)
        now = time.time()
        record = {
            "holder": "gw-a-4711", "stage": "connected", "sequence": 1_234_567,
            "latency_ms": 41.2, "saved_at": now, "at": now,
        }  # fmt: skip
        records = {shard_id: dict(record) for shard_id in ids}
        writes = timed(lambda: board.write(records))
        lease = ShardLease(url, name="all", namespace="bench", shards=ids, total=len(ids))
        takes = timed(lambda: (lease.acquire(), lease.release()), rounds=10)
        lease.acquire()
        command = [
            sys.executable,
            "-m",
            "gcluster",
            "status",
            "--sink",
            url,
            "--namespace",
            "bench",
        ]
        status = timed(
            lambda: subprocess.run(command, check=True, capture_output=True, cwd=ROOT), 5
        )
        lease.close()
        board.close()
    finally:
        redis.stop()
    rows = [
        ("StateBoard.write, every 2 s", median(writes) * 1000, percentile(writes, 0.9) * 1000),
        ("lease acquire + release", median(takes) * 1000, percentile(takes, 0.9) * 1000),
        ("python -m gcluster status", median(status) * 1000, percentile(status, 0.9) * 1000),
    ]
    kind = "Redis Cluster" if options.cluster else "one redis-server"
    print(f"{options.shards} shards, {kind}")
    print(table(["operation", "median ms", "p90 ms"], rows))
    write_results(
        "status_records",
        {"shards": options.shards, "cluster": options.cluster, "rows": [list(r) for r in rows]},
    )


if __name__ == "__main__":
    main()
