"""Fan-out: events/s from the shards through StreamSink and Redis to 1, 2 and 4 StreamWorkers.

    python benchmarks/fanout.py [--events 100000] [--workers 1,2,4] [--ack-batch 1]
                                [--patch-workers] [--redis-url URL | --cluster]

The simulator (its own process) blasts the same ~1.2 KB MESSAGE_CREATEs
(`GatewaySimulator.blast`) to 4 shards each time. Beside the fan-out runs,
the same blast read by `cluster.events()` in one process: what a bot that
handles its events in the gateway process sees. In a fan-out run the gateway
process (this one: the shards and a `StreamSink`) publishes to one stream
and `--workers` processes of one consumer group (`StreamWorker`, default
options but the batch) read and acknowledge every event; the run ends when
the group has read and acknowledged all of them. Reported per run:

- events/s end to end (blast released -> last event acknowledged), and the
  sink's own rate (released -> last event published);
- CPU µs per event of each process kind: the gateway, the workers (all),
  Redis (all nodes), the simulator;
- where the time goes, in CPU µs per event: the gateway's hub thread
  (receiving, inflating, decoding, handing events to the sink) and its
  publishing thread (of which encoding the entries; the rest is writing the
  XADD pipeline and reading its replies); in the workers, XREADGROUP (mostly
  parsing the reply), XACK and decoding an entry. Also the events per XADD
  batch and per read, and the wall time of a batch and of one XACK.

Redis: by default a redis-server started here; `--cluster` starts a 6-node
Redis Cluster here (3 masters, 3 replicas, see _redis.py); `--redis-url`
uses a running one, through `redis.cluster.RedisCluster` when it is a cluster
node. The stream key carries a hash tag, so on a cluster one master serves it.
Writes benchmarks/results/fanout[-cluster][-ackN][-patched].json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import gevent
import redis
from _common import (
    ROOT,
    cpu_seconds,
    make_cluster,
    pin_client,
    start_simulator,
    table,
    write_results,
)
from _redis import RedisProcesses, client_for, is_cluster, start_cluster, start_redis
from _stream import blast_run

import gcluster.redis.streams as streams_module
import gcluster.redis.worker as worker_module
from gcluster import Cluster
from gcluster._blocking import call_blocking
from gcluster.redis import StreamSink, StreamWorker
from gcluster.testing import SimulatorProcess

SHARDS = 4
GROUP = "fanout"
WAIT = 600.0


# --- the worker process -----------------------------------------------------------------


class Timed:
    """Wraps a callable; adds up its calls, wall time and the calling thread's CPU time."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func
        self.calls = 0
        self.seconds = 0.0
        self.cpu = 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        started, cpu = time.perf_counter(), time.thread_time()
        try:
            return self.func(*args, **kwargs)
        finally:
            self.cpu += time.thread_time() - cpu
            self.seconds += time.perf_counter() - started
            self.calls += 1


def worker_main(url: str, cluster: bool, stream: str, name: str, ack_batch: int) -> None:
    """One worker process: read the group's events until the benchmark says done."""
    client = client_for(url, cluster, socket_timeout=5, socket_connect_timeout=2)
    worker = StreamWorker(
        None, GROUP, name, stream=stream, batch=200, block=0.1, ack_batch=ack_batch, client=client
    )
    reads = Timed(client.xreadgroup)
    acks = Timed(client.xack)
    decodes = Timed(worker_module.decode_event)
    client.xreadgroup = reads  # type: ignore[method-assign]
    client.xack = acks  # type: ignore[method-assign]
    worker_module.decode_event = decodes  # type: ignore[assignment]
    control = client_for(url, cluster, socket_timeout=5)

    def watch() -> None:
        while not control.exists(f"{stream}:done"):
            time.sleep(0.02)
        worker.stop()

    threading.Thread(target=watch, daemon=True).start()
    control.rpush(f"{stream}:ready", name)
    count = 0
    started = time.process_time()
    for _ in worker.events():
        count += 1
    result = {
        "events": count,
        "cpu_seconds": time.process_time() - started,
        "reads": reads.calls,
        "read_seconds": reads.seconds,
        "read_cpu": reads.cpu,
        "acks": acks.calls,
        "ack_seconds": acks.seconds,
        "ack_cpu": acks.cpu,
        "decode_cpu": decodes.cpu,
    }
    print(json.dumps(result), flush=True)


# --- the gateway process ----------------------------------------------------------------


def redis_cpu(nodes: list[redis.Redis]) -> float:
    total = 0.0
    for node in nodes:
        info = node.info("cpu")
        total += float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    return total


def node_clients(url: str, cluster: bool) -> list[redis.Redis]:
    if not cluster:
        return [redis.Redis.from_url(url)]
    probe = client_for(url, True)
    try:
        return [redis.Redis(host=n.host, port=n.port) for n in probe.get_nodes()]  # type: ignore[union-attr]
    finally:
        probe.close()


def start_workers(
    url: str, cluster: bool, stream: str, count: int, ack_batch: int, patch: bool
) -> list[subprocess.Popen[str]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    script = os.path.abspath(__file__)
    processes = []
    for index in range(count):
        argv = [sys.executable, script, "--worker", url, stream, f"w{index}", str(ack_batch)]
        if cluster:
            argv.append("--cluster-client")
        if patch:
            argv.append("--patch")
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(process.pid, set(range(os.cpu_count() or 1)))
        processes.append(process)
    return processes


def fanout_run(
    sim: SimulatorProcess,
    cluster: Cluster,
    url: str,
    on_cluster: bool,
    workers: int,
    per_shard: int,
    ack_batch: int,
    patch: bool,
) -> dict[str, Any]:
    stream = f"{{fanout}}:events:{workers}:{time.monotonic_ns()}"
    events = per_shard * SHARDS
    control = client_for(url, on_cluster, socket_timeout=5)
    nodes = node_clients(url, on_cluster)
    control.xgroup_create(stream, GROUP, id="0", mkstream=True)
    processes = start_workers(url, on_cluster, stream, workers, ack_batch, patch)
    sink = StreamSink(
        cluster,
        client=client_for(url, on_cluster, socket_timeout=5, socket_connect_timeout=2),
        stream=stream,
        namespace="fanout",
        commands=False,
        maxlen=None,
    )
    # Where the publishing thread's time goes: encoding, and the rest of a batch.
    packer = sink._packer
    encode = Timed(packer.pack if packer is not None else streams_module.encode_event)
    if packer is not None:
        packer.pack = encode  # type: ignore[method-assign]
    else:
        streams_module.encode_event = encode  # type: ignore[assignment]
    send = Timed(sink._send)
    sink._send = send  # type: ignore[method-assign]
    publishing = gevent.spawn(sink.run)
    try:
        deadline = time.monotonic() + 60
        while call_blocking(control.llen, f"{stream}:ready") < workers:
            if time.monotonic() > deadline:
                raise RuntimeError("the workers did not start")
            gevent.sleep(0.05)
        queued = sim.blast(range(SHARDS), per_shard, hold=True)
        sim_before = sim.stats()["cpu_seconds"]
        redis_before = call_blocking(redis_cpu, nodes)
        cpu_before = cpu_seconds()
        started = sim.release()  # the simulator's monotonic clock: same host, same clock
        published_at = None
        with gevent.Timeout(WAIT):
            while True:
                if published_at is None and sink.stats().published >= events:
                    published_at = time.monotonic()
                (info,) = call_blocking(control.xinfo_groups, stream)
                if (
                    published_at is not None
                    and info["pending"] == 0
                    and (info["entries-read"] or 0) >= events
                ):
                    break
                gevent.sleep(0.05)  # a cheap poll: its CPU counts as the gateway's
        finished = time.monotonic()
        gateway_cpu = cpu_seconds() - cpu_before
        redis_used = call_blocking(redis_cpu, nodes) - redis_before
        sim_used = sim.stats()["cpu_seconds"] - sim_before
        stats = sink.stats()
        call_blocking(control.set, f"{stream}:done", 1)
        reports = [json.loads(p.communicate(timeout=60)[0]) for p in processes]
        sim.wait_blasts()
    finally:
        sink.stop()
        publishing.join(timeout=10)
        sink.close()
        for process in processes:
            if process.poll() is None:
                process.kill()
        call_blocking(control.delete, stream)
        control.close()
        if packer is None:
            streams_module.encode_event = encode.func  # type: ignore[assignment]
    received = sum(r["events"] for r in reports)
    # A stray event or two may come besides the blast (e.g. a left-over from the last run).
    assert received >= events, reports
    assert queued
    seconds = finished - started
    worker_cpu = sum(r["cpu_seconds"] for r in reports)
    reads = sum(r["reads"] for r in reports)
    acks = sum(r["acks"] for r in reports)
    return {
        "scenario": f"sink -> {workers} worker{'s' if workers > 1 else ''}",
        "workers": workers,
        "events": events,
        "received": received,
        "seconds": seconds,
        "events_per_s": events / seconds,
        "sink_events_per_s": events / (published_at - started),
        "cpu_us": {
            "gateway": gateway_cpu / events * 1e6,
            "workers": worker_cpu / events * 1e6,
            "redis": redis_used / events * 1e6,
            "simulator": sim_used / events * 1e6,
        },
        "sink": {
            "batches": stats.batches,
            "events_per_batch": stats.published / max(stats.batches, 1),
            "batch_ms": send.seconds / max(send.calls, 1) * 1e3,
            # CPU µs per event: the publishing thread's, and the hub's (the rest).
            "publish_cpu_us": send.cpu / events * 1e6,
            "encode_cpu_us": encode.cpu / events * 1e6,
            "hub_cpu_us": (gateway_cpu - send.cpu) / events * 1e6,
        },
        "worker": {
            "reads": reads,
            "events_per_read": events / max(reads, 1),
            "acks": acks,
            "ack_us": sum(r["ack_seconds"] for r in reports) / max(acks, 1) * 1e6,
            # CPU µs per event, of all workers together.
            "read_cpu_us": sum(r["read_cpu"] for r in reports) / events * 1e6,
            "ack_cpu_us": sum(r["ack_cpu"] for r in reports) / events * 1e6,
            "decode_cpu_us": sum(r["decode_cpu"] for r in reports) / events * 1e6,
        },
    }


def in_process_run(sim: SimulatorProcess, cluster: Cluster, per_shard: int) -> dict[str, Any]:
    run = blast_run(sim, cluster, range(SHARDS), per_shard)
    return {
        "scenario": "cluster.events(), one process",
        "workers": 0,
        "events": run.events,
        "seconds": run.seconds,
        "events_per_s": run.rate,
        "sink_events_per_s": None,
        "cpu_us": {
            "gateway": run.client_cpu_per_event * 1e6,
            "workers": None,
            "redis": None,
            "simulator": run.sim_cpu_seconds / run.events * 1e6,
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="events per run, all shards")
    parser.add_argument("--workers", default="1,2,4", help="worker counts, comma-separated")
    parser.add_argument("--ack-batch", type=int, default=1, help="the workers' ack_batch")
    parser.add_argument(
        "--patch-workers",
        action="store_true",
        help="workers call gevent.monkey.patch_all() first: Redis calls without a thread hop",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--redis-url", help="a running Redis or Redis Cluster node")
    where.add_argument("--cluster", action="store_true", help="start a 6-node Redis Cluster")
    options = parser.parse_args()
    per_shard = options.events // SHARDS
    counts = [int(c) for c in options.workers.split(",")]

    pin_client()
    started: RedisProcesses | None = None
    if options.redis_url:
        url = options.redis_url
    else:
        started = start_cluster() if options.cluster else start_redis()
        url = started.url
    on_cluster = is_cluster(url)
    sim = start_simulator(shards=SHARDS, max_concurrency=SHARDS)
    rows = []
    try:
        cluster = make_cluster(sim, range(SHARDS), SHARDS)
        try:
            rows.append(in_process_run(sim, cluster, per_shard))
            for workers in counts:
                rows.append(
                    fanout_run(
                        sim,
                        cluster,
                        url,
                        on_cluster,
                        workers,
                        per_shard,
                        options.ack_batch,
                        options.patch_workers,
                    )
                )
                print(f"{rows[-1]['scenario']}: done", file=sys.stderr, flush=True)
        finally:
            cluster.down()
    finally:
        sim.stop()
        if started is not None:
            started.stop()

    kind = "Redis Cluster (6 nodes)" if on_cluster else "one redis-server"
    patched = ", workers monkey-patched" if options.patch_workers else ""
    print(
        f"{options.events} events, {SHARDS} shards, {kind}, ack_batch={options.ack_batch}{patched}"
    )
    print(
        table(
            ["scenario", "events/s", "sink ev/s", "gateway µs", "workers µs", "redis µs", "sim µs"],
            [
                [r["scenario"], r["events_per_s"], r["sink_events_per_s"]]
                + [r["cpu_us"][k] for k in ("gateway", "workers", "redis", "simulator")]
                for r in rows
            ],
        )
    )
    print("\nwhere the time goes: CPU µs per event (the gateway's hub thread, its publishing")
    print("thread and the encoding in it; the workers' XREADGROUP, XACK and decoding), and the")
    print("wall time of one XADD batch and of one XACK")
    print(
        table(
            [
                "scenario",
                "hub",
                "publish",
                "encode",
                "ev/batch",
                "batch ms",
                "read",
                "ack",
                "decode",
                "ev/read",
                "XACK µs",
            ],
            [
                [
                    r["scenario"],
                    r["sink"]["hub_cpu_us"],
                    r["sink"]["publish_cpu_us"],
                    r["sink"]["encode_cpu_us"],
                    r["sink"]["events_per_batch"],
                    r["sink"]["batch_ms"],
                    r["worker"]["read_cpu_us"],
                    r["worker"]["ack_cpu_us"],
                    r["worker"]["decode_cpu_us"],
                    r["worker"]["events_per_read"],
                    r["worker"]["ack_us"],
                ]
                for r in rows
                if "sink" in r
            ],
        )  # fmt: skip
    )
    path = write_results(
        "fanout"
        + ("-cluster" if on_cluster else "")
        + (f"-ack{options.ack_batch}" if options.ack_batch != 1 else "")
        + ("-patched" if options.patch_workers else ""),
        {
            "redis": kind,
            "shards": SHARDS,
            "ack_batch": options.ack_batch,
            "patched_workers": options.patch_workers,
            "redis_py": redis.__version__,
            "rows": rows,
        },
    )
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        if "--patch" in sys.argv:
            from gevent import monkey

            monkey.patch_all()
        url_, stream_, name_, ack_ = sys.argv[2:6]
        worker_main(url_, "--cluster-client" in sys.argv, stream_, name_, int(ack_))
        sys.exit(0)
    sys.exit(main())
