"""How late after `claim_idle` a worker claims the events of a worker that died holding them.

A worker process reads a batch of events and is killed (-9); a second worker
of the group starts at a random moment before they become claimable, so its
claim passes run at any phase, as in production. The events become
claimable `claim_idle` seconds after their delivery; printed is how long
after that the second worker has claimed them all (median and max over the
rounds, and the worst case as a share of `claim_idle`). On a redis-server of
its own:

    python benchmarks/claim_latency.py [--claim-idle 8] [--rounds 8]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time

import gevent
import gevent.event
import redis
from _common import ROOT, median
from _redis import start_redis

from gcluster.redis import StreamWorker

EVENTS = 5
VICTIM = """
import sys
import time
from gcluster.redis import StreamWorker

worker = StreamWorker(sys.argv[1], "bench", "victim", namespace="claim", batch=100)
for _ in worker.events():
    print("holding", flush=True)
    time.sleep(3600)
"""


def one_round(url: str, claim_idle: float) -> float:
    """Seconds from when the events became claimable to when the last was claimed."""
    client = redis.Redis.from_url(url)
    client.flushall()
    client.set("{claim}:shards", 1)
    for number in range(1, EVENTS + 1):
        client.xadd("{claim}:events", {"shard": "0", "t": "MESSAGE_CREATE", "s": number, "d": "{}"})
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    victim = subprocess.Popen(
        [sys.executable, "-c", VICTIM, url], stdout=subprocess.PIPE, env=env, text=True
    )
    assert victim.stdout is not None
    victim.stdout.readline()  # it holds the batch (all EVENTS, read at once)
    delivered = time.monotonic()
    victim.kill()
    victim.wait()
    # The surviving worker's claim passes run at a phase of their own: it
    # started at any moment before the events become claimable.
    gevent.sleep(random.uniform(0, claim_idle * 0.9))
    survivor = StreamWorker(url, "bench", "survivor", namespace="claim", claim_idle=claim_idle)
    claimed = gevent.event.AsyncResult()

    def consume() -> None:
        handled = 0
        for _ in survivor.events():
            handled += 1
            if handled == EVENTS:
                claimed.set(time.monotonic())
                return

    reading = gevent.spawn(consume)
    late = claimed.get(timeout=claim_idle * 3) - delivered - claim_idle
    reading.join()
    stats = survivor.stats()
    survivor.close()
    client.close()
    assert stats.claimed == EVENTS, stats
    return late


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--claim-idle", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=8)
    options = parser.parse_args()
    server = start_redis()
    try:
        times = [one_round(server.url, options.claim_idle) for _ in range(options.rounds)]
    finally:
        server.stop()
    worst = (options.claim_idle + max(times)) / options.claim_idle
    print(
        f"claim_idle {options.claim_idle:g} s: a killed worker's events claimed "
        f"{median(times):.2f} s after they became claimable (median of {len(times)}), "
        f"{max(times):.2f} s at most: within {worst:.3f} x claim_idle of their delivery"
    )


if __name__ == "__main__":
    main()
