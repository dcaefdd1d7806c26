"""A deploy's planned handoff: the publish gap when the lease holder gets SIGTERM.

    python benchmarks/handoff.py [--handoffs 20] [--shards 4] [--rate 100]
                                 [--redis-url URL] [--logs DIR]

Runs `python -m gcluster run --sink ... --lease` as a holder and a standby
(real processes) against a simulator in this process, feeds every shard a
steady `--rate` events/s with bursts of 200 now and then, and sends the
holder SIGTERM at a random moment `--handoffs` times; after each, the
standby holds the shards and a new standby is started. The gap of a handoff
is the time between the old holder's last stream entry and the new holder's
first, from the entries' IDs (Redis's clock, in ms); the old holder published
everything before releasing its lease and the new one publishes nothing
before its RESUME, so the simulator's RESUME record splits the two. Also
reported, the phases in between (simulator's clock):

- drain: last entry -> the old holder's connections closed (sink stopped,
  sessions saved, shards closed);
- takeover: closed -> the new holder's first websocket connection (lease
  released, the standby woken, SET NX, the cluster's start);
- resume: connection -> RESUME received;
- publish: RESUME -> the first entry (the replay, read and published).

Checks too that no event was lost and that nothing IDENTIFYd after the first
holder. Without `--redis-url` a redis-server is started here. Writes
benchmarks/results/handoff.json.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import sys
import time

import gevent
import redis
from _common import (
    SERVICE_EVENTS,
    SERVICE_INTENTS,
    TIMEOUT,
    Service,
    percentile,
    table,
    wait,
    write_results,
)
from _redis import StreamEntry, start_redis, stream_entries

from gcluster.testing import GatewaySimulator

SLICE = "process:0/1"


def feed(sim: GatewaySimulator, shards: int, rate: float, sent: list[int]) -> None:
    """`rate` events/s per shard, and a burst of 200 per shard about every 3 s."""
    interval = 1 / rate
    while True:
        count = 200 if random.random() < interval / 3 else 1
        for shard_id in range(shards):
            sim.send_events(shard_id, count)
            sent[shard_id] += count
        gevent.sleep(interval)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handoffs", type=int, default=20)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--rate", type=float, default=100.0, help="events/s per shard")
    parser.add_argument("--lease-ttl", type=float, default=15.0)
    parser.add_argument("--redis-url", help="use this Redis (default: start one)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--logs", metavar="DIR", help="write each service's log here")
    options = parser.parse_args()
    random.seed(options.seed)

    started = None if options.redis_url else start_redis()
    url = options.redis_url or (started.url if started else "")
    sim = GatewaySimulator(shards=options.shards, max_concurrency=options.shards).start()
    namespace = f"handoff{os.getpid()}"
    stream = f"{namespace}:events"
    args = [
        "--sink", url, "--namespace", namespace, "--stream", stream,
        "--scheme", SLICE, "--shards", str(options.shards),
        "--lease", "--lease-ttl", str(options.lease_ttl),
        "--api-base", sim.api_base, "--events", SERVICE_EVENTS, "--intents", SERVICE_INTENTS,
    ]  # fmt: skip
    client = redis.Redis.from_url(url)
    clock = time.time() - time.monotonic()  # the simulator's records -> wall clock
    services: list[Service] = []
    sent = [0] * options.shards
    handoffs: list[dict[str, float]] = []
    try:
        holder = Service(args, sim.token)
        services.append(holder)
        holder.wait_for("service: shards ")
        wait(lambda: len(sim.records.identifies) == options.shards, "IDENTIFYs")
        wait(lambda: any("ready" in line for line in holder.lines), "ready", holder)
        feeder = gevent.spawn(feed, sim, options.shards, options.rate, sent)
        for number in range(options.handoffs):
            standby = Service(args, sim.token)
            services.append(standby)
            standby.wait_for("waiting for it")
            gevent.sleep(random.uniform(0.2, 2.0))
            resumes = len(sim.records.resumes)
            closes = len(sim.records.closes)
            connections = len(sim.records.connections)
            signalled = time.time()
            holder.process.send_signal(signal.SIGTERM)
            code = holder.exited(timeout=TIMEOUT)
            if code != 0:
                raise RuntimeError(f"the holder exited {code}:\n{holder.tail()}")
            wait(lambda: len(sim.records.resumes) >= resumes + options.shards, "RESUMEs", standby)  # noqa: B023
            handoffs.append(
                {
                    "sigterm": signalled,
                    "closed": clock + max(c.time for c in sim.records.closes[closes:]),
                    "connected": clock + sim.records.connections[connections].time,
                    "resumed": clock + sim.records.resumes[resumes].time,
                }
            )
            print(f"handoff {number + 1}/{options.handoffs}", file=sys.stderr, flush=True)
            holder = standby
        gevent.sleep(1.0)
        feeder.kill()
        wanted = list(sent)

        def complete() -> bool:
            found[:] = stream_entries(client, stream)
            return all(
                {e.number for e in found if e.shard_id == shard} >= set(range(1, wanted[shard] + 1))
                for shard in range(options.shards)
            )

        found: list[StreamEntry] = []
        wait(complete, "every event in the stream")
    finally:
        if options.logs:
            os.makedirs(options.logs, exist_ok=True)
            for i, service in enumerate(services):
                with open(os.path.join(options.logs, f"service{i}.log"), "w") as out:
                    out.write("\n".join(service.lines) + "\n")
        for service in services:
            service.kill()
        sim.stop()
        if started is not None:
            started.stop()

    rows = []
    for handoff in handoffs:
        at_ms = handoff["resumed"] * 1000
        last_old = max(e.ms for e in found if e.ms < at_ms) / 1000
        first_new = min(e.ms for e in found if e.ms >= at_ms) / 1000
        rows.append(
            {
                "gap_ms": (first_new - last_old) * 1000,
                "sigterm_to_last_ms": (last_old - handoff["sigterm"]) * 1000,
                "drain_ms": (handoff["closed"] - last_old) * 1000,
                "takeover_ms": (handoff["connected"] - handoff["closed"]) * 1000,
                "resume_ms": (handoff["resumed"] - handoff["connected"]) * 1000,
                "publish_ms": (first_new - handoff["resumed"]) * 1000,
            }
        )
    lost = sum(
        len(set(range(1, wanted[shard] + 1)) - {e.number for e in found if e.shard_id == shard})
        for shard in range(options.shards)
    )
    identifies = len(sim.records.identifies)
    columns = ["gap_ms", "drain_ms", "takeover_ms", "resume_ms", "publish_ms"]
    summary = [
        [name, statistics.median(r[name] for r in rows), percentile([r[name] for r in rows], 0.9),
         max(r[name] for r in rows)]
        for name in columns
    ]  # fmt: skip
    print(table(["ms", "p50", "p90", "max"], summary))
    print(
        f"{len(rows)} handoffs, {sum(wanted)} events sent, {lost} lost, "
        f"{len(found) - sum(wanted)} published twice, {identifies} IDENTIFYs "
        f"({options.shards} shards)"
    )
    path = write_results(
        "handoff",
        {
            "shards": options.shards,
            "rate_per_shard": options.rate,
            "lease_ttl": options.lease_ttl,
            "events": sum(wanted),
            "lost": lost,
            "duplicates": len(found) - sum(wanted),
            "identifies": identifies,
            "summary": {
                row[0]: dict(zip(["p50", "p90", "max"], row[1:], strict=True)) for row in summary
            },
            "handoffs": rows,
        },
    )
    print(f"written to {path}")
    return 0 if lost == 0 and identifies == options.shards else 1


if __name__ == "__main__":
    sys.exit(main())
