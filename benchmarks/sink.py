"""StreamSink throughput: events a gateway process publishes to Redis, against none at all.

    python benchmarks/sink.py [--shards 4] [--events 100000] [--batch 500] [--workers 3]

Needs redis-server on PATH (or /usr/bin). The gateway simulator runs in a
process of its own, as Discord would be remote; this process is the gateway
process (shards + sink), and Redis a third. Scenarios:

- no sink: the shards receive the events and a plain loop iterates
  `cluster.events()` — what the gateway process does with no Redis.
- sink, live: the same events, published by a `StreamSink` as they come.
- sink, drain: the events are first left waiting in the cluster's queue
  (as after an outage), then the sink publishes the backlog: its own ceiling.
- workers: `--workers` processes of one consumer group read the drained
  stream and acknowledge each event (then every 50).

Prints a table and writes benchmarks/results/sink.json. "CPU µs/event" is the
gateway process's CPU time (all threads) per event. With two cores or more,
the gateway process is pinned to core 0 and the simulator and Redis to core 1
(the workers are not pinned).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import gevent
import redis

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, ROOT)

from gcluster import Cluster, EventTypeFlags, Intents, ShardScheme  # noqa: E402
from gcluster.redis import StreamSink  # noqa: E402
from gcluster.testing import STREAM_INTENTS  # noqa: E402

DISPATCHES = EventTypeFlags.ALL & ~(
    EventTypeFlags.SHARD_LIFECYCLE | EventTypeFlags.GATEWAY_LIFECYCLE
)
WAIT = 600.0

SIMULATOR = """
import json, sys
import gevent
from gevent.fileobject import FileObjectThread
from gcluster.testing import GatewaySimulator

shards = int(sys.argv[1])
sim = GatewaySimulator(shards=shards, max_concurrency=shards, heartbeat_interval=5.0,
                       identify_interval=0).start()
print(json.dumps({"token": sim.token, "api_base": sim.api_base}), flush=True)
commands = FileObjectThread(sys.stdin)
for line in commands:
    shard, count = (int(x) for x in line.split())
    gevent.spawn(sim.send_events, shard, count)
"""

WORKER = """
import sys, threading, time
import redis
from gcluster.redis import StreamWorker

url, stream, group, name, ack = sys.argv[1:6]
worker = StreamWorker(url, group, name, stream=stream, batch=200, block=0.1,
                      ack_batch=int(ack))
control = redis.Redis.from_url(url)

def watch():
    while not control.exists(f"bench:done:{group}"):
        time.sleep(0.02)
    worker.stop()

threading.Thread(target=watch, daemon=True).start()
control.rpush(f"bench:ready:{group}", name)
count = 0
for _ in worker.events():
    count += 1
print(count, flush=True)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_redis() -> tuple[subprocess.Popen[bytes], str, tempfile.TemporaryDirectory[str]]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    workdir = tempfile.TemporaryDirectory(prefix="gcluster-bench-")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir.name, "--loglevel", "warning"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    pin(process.pid, 1)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    client.close()
    return process, url, workdir


def pin(pid: int, cpu: int | None) -> None:
    """Keep a process on one core (None: any core), when there are two or more."""
    cpus = os.cpu_count() or 1
    if hasattr(os, "sched_setaffinity") and cpus >= 2:
        os.sched_setaffinity(pid, set(range(cpus)) if cpu is None else {cpu})


def python(*args: str, stdin: Any = None, stdout: Any = subprocess.PIPE) -> subprocess.Popen[str]:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    )
    return subprocess.Popen(
        [sys.executable, "-c", *args], stdin=stdin, stdout=stdout, text=True, env=env, cwd=ROOT
    )


class Simulator:
    def __init__(self, shards: int) -> None:
        self.shards = shards
        self.process = python(SIMULATOR, str(shards), stdin=subprocess.PIPE)
        pin(self.process.pid, 1)
        assert self.process.stdout is not None
        hello = json.loads(self.process.stdout.readline())
        self.token: str = hello["token"]
        self.api_base: str = hello["api_base"]

    def send(self, events: int) -> None:
        assert self.process.stdin is not None
        for shard in range(self.shards):
            share = events // self.shards + (1 if shard < events % self.shards else 0)
            self.process.stdin.write(f"{shard} {share}\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def cluster_on(sim: Simulator) -> Cluster:
    cluster = Cluster(
        sim.token,
        Intents.GUILDS | STREAM_INTENTS,  # every kind send_events sends
        api_base=sim.api_base,
        shard_scheme=ShardScheme.range(range(sim.shards), sim.shards),
        event_types=DISPATCHES,
    )
    cluster.up(timeout=30)
    assert cluster.wait_until_ready(30), "shards not ready"
    # READY is behind us: from here on every event is one of the stream's.
    with gevent.Timeout(30):
        for _ in range(sim.shards):
            next(iter(cluster.events()))
    return cluster


def cpu() -> float:
    return time.process_time()


def row(name: str, events: int, seconds: float, cpu_seconds: float | None) -> dict[str, Any]:
    return {
        "scenario": name,
        "events": events,
        "seconds": round(seconds, 3),
        "events_per_s": round(events / seconds),
        "cpu_us_per_event": None if cpu_seconds is None else round(cpu_seconds / events * 1e6, 1),
    }


def no_sink(sim: Simulator, events: int) -> dict[str, Any]:
    cluster = cluster_on(sim)
    try:
        started, cpu0 = time.monotonic(), cpu()
        sim.send(events)
        seen = 0
        with gevent.Timeout(WAIT):
            for _ in cluster.events():
                seen += 1
                if seen == events:
                    break
        return row(
            "no sink: gateway -> cluster.events()", events, time.monotonic() - started, cpu() - cpu0
        )
    finally:
        cluster.down()


def wait_published(sink: StreamSink, target: int) -> None:
    with gevent.Timeout(WAIT):
        while sink.stats().published < target:
            gevent.sleep(0.005)


def sink_live(sim: Simulator, url: str, events: int, batch: int) -> dict[str, Any]:
    cluster = cluster_on(sim)
    sink = StreamSink(cluster, url, stream="bench:live", batch=batch, commands=False, maxlen=None)
    running = gevent.spawn(sink.run)
    try:
        started, cpu0 = time.monotonic(), cpu()
        sim.send(events)
        wait_published(sink, events)
        return row(
            f"sink, live: gateway -> Redis (batch {batch})",
            events,
            time.monotonic() - started,
            cpu() - cpu0,
        )
    finally:
        sink.stop()
        running.join()
        cluster.down()
        sink.close()


def sink_drain(sim: Simulator, url: str, events: int, batch: int) -> dict[str, Any]:
    cluster = cluster_on(sim)
    sink = StreamSink(
        cluster,
        url,
        stream="bench:drain",
        batch=batch,
        buffer=max(10_000, batch),
        commands=False,
        maxlen=None,
    )
    try:
        sim.send(events)
        with gevent.Timeout(WAIT):
            while cluster.backlog < events:
                gevent.sleep(0.01)
        started, cpu0 = time.monotonic(), cpu()
        running = gevent.spawn(sink.run)
        wait_published(sink, events)
        result = row(
            f"sink, drain: backlog -> Redis (batch {batch})",
            events,
            time.monotonic() - started,
            cpu() - cpu0,
        )
        sink.stop()
        running.join()
        return result
    finally:
        cluster.down()
        sink.close()


def workers(url: str, count: int, events: int, ack: int) -> dict[str, Any]:
    group = f"bench-ack{ack}"
    client = redis.Redis.from_url(url)
    client.xgroup_create("bench:drain", group, id="0")
    processes = [python(WORKER, url, "bench:drain", group, f"w{i}", str(ack)) for i in range(count)]
    for process in processes:
        pin(process.pid, None)  # not the gateway's core, which they would inherit
    try:
        while client.llen(f"bench:ready:{group}") < count:
            time.sleep(0.01)
        started = time.monotonic()
        # Already reading (XREADGROUP from the group's start): done once all are acked.
        while True:
            (info,) = [g for g in client.xinfo_groups("bench:drain") if g["name"].decode() == group]
            if (
                info["pending"] == 0
                and info["entries-read"] is not None
                and info["entries-read"] >= events
            ):
                break
            time.sleep(0.005)
        seconds = time.monotonic() - started
        client.set(f"bench:done:{group}", 1)
        counts = [int(p.communicate(timeout=30)[0]) for p in processes]
        assert sum(counts) == events, counts
        return row(
            f"{count} workers: Redis -> StreamWorker (ack every {ack})", events, seconds, None
        ) | {"per_worker": counts}
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument(
        "--redis-cluster",
        action="store_true",
        help="publish to a six-node Redis Cluster on loopback (each batch then waits "
        "for a replica); no worker scenarios",
    )
    args = parser.parse_args()

    pin(0, 0)  # this process: the gateway; the simulator and Redis share the other core
    if args.redis_cluster:
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        from redis_nodes import RedisClusterNodes

        nodes = RedisClusterNodes().start()
        url = nodes.url
    else:
        redis_process, url, workdir = start_redis()
    sim = Simulator(args.shards)
    rows = []
    try:
        rows.append(no_sink(sim, args.events))
        rows.append(sink_live(sim, url, args.events, args.batch))
        rows.append(sink_drain(sim, url, args.events, args.batch))
        if args.workers and not args.redis_cluster:
            rows.append(workers(url, args.workers, args.events, 1))
            rows.append(workers(url, args.workers, args.events, 50))
    finally:
        sim.stop()
        if args.redis_cluster:
            nodes.stop()
        else:
            redis_process.terminate()
            redis_process.wait()
            workdir.cleanup()

    print(f"{'scenario':<52}{'events':>9}{'seconds':>9}{'events/s':>10}{'CPU µs/event':>14}")
    for r in rows:
        per_event = "-" if r["cpu_us_per_event"] is None else f"{r['cpu_us_per_event']:.1f}"
        print(
            f"{r['scenario']:<52}{r['events']:>9}{r['seconds']:>9.2f}{r['events_per_s']:>10}{per_event:>14}"
        )
    os.makedirs(RESULTS, exist_ok=True)
    name = "sink-cluster.json" if args.redis_cluster else "sink.json"
    with open(os.path.join(RESULTS, name), "w", encoding="utf-8") as out:
        json.dump(
            {
                "command": "python benchmarks/sink.py " + " ".join(sys.argv[1:]),
                "shards": args.shards,
                "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
                "redis_py": redis.__version__,
                "rows": rows,
            },
            out,
            indent=2,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
