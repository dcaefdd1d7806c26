"""A Redis Cluster master killed under a running bot: what the application sees, and for how long.

    python benchmarks/failover.py [--runs 3] [--rate 2000] [--node-timeout 1000] [--no-probe]

Each run starts a Redis Cluster on loopback (three masters, three replicas,
``cluster-node-timeout`` `--node-timeout` ms), an embedded gateway
simulator with two shards, and a bot on them: `RedisQueue`,
`RedisSessionStore`, a `StreamSink` (its default backoff, 0.1 s doubling to
5 s) and a `StreamWorker`, all in one namespace, so on one master. Events
flow at `--rate` per second; after 2 s the master serving the namespace is
killed with SIGKILL and shard 0 is made to IDENTIFY again (its session
timed out). Measured, from the kill:

- promoted: when the surviving nodes first name a new master for the slot
  (Redis Cluster's own failover; polled every 20 ms);
- sink outage: `SinkStats.outage_seconds` (first failed batch to first
  published one), and when the first batch went through after the kill;
- noticed after: that moment minus the promotion: what the library adds;
- buffered: the most events the sink held at once;
- worker gap: the longest time the worker received nothing;
- identify: when shard 0 identified again (the queue refused it until then);
- lost / twice: events the simulator sent that the worker never received /
  received twice; unreplicated: events no replica confirmed in time.

``--no-probe`` turns off the probing that ends a backoff once the slot is
served again (the sink and worker then sleep out their backoff, as before
0.2) for comparison. Prints a table and writes benchmarks/results/failover.json.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _common import ROOT, write_results  # also puts the checkout on sys.path

sys.path.insert(0, str(ROOT / "tests"))

import gevent  # noqa: E402
import gevent.event  # noqa: E402
from redis_nodes import RedisClusterNodes  # noqa: E402

from gcluster import Cluster, EventTypeFlags, Intents, ShardScheme  # noqa: E402
from gcluster.errors import QueueError  # noqa: E402
from gcluster.redis import (  # noqa: E402
    RedisQueue,
    RedisSessionStore,
    StreamSink,
    StreamWorker,
)
from gcluster.testing import STREAM_INTENTS, GatewaySimulator, event_number  # noqa: E402

NAMESPACE = "bench"
DISPATCHES = EventTypeFlags.ALL & ~(
    EventTypeFlags.SHARD_LIFECYCLE | EventTypeFlags.GATEWAY_LIFECYCLE
)
TIMEOUT = 60.0


class RecordingQueue(RedisQueue):
    """Counts the identifies the queue refused (it failed closed) and granted."""

    refused = 0
    granted_at: list[float]

    def request(self, shard_id: int, total: int) -> None:
        try:
            super().request(shard_id, total)
        except QueueError:
            self.refused += 1
            raise
        self.granted_at.append(time.monotonic())


def one_run(rate: int, node_timeout: int) -> dict[str, Any]:
    nodes = RedisClusterNodes(cluster_node_timeout=node_timeout).start()
    sim = GatewaySimulator(
        shards=2, max_concurrency=2, identify_interval=1.0, heartbeat_interval=5.0
    ).start()
    stops: list[Any] = [nodes.stop, sim.stop]
    try:
        url = nodes.other_url(f"{{{NAMESPACE}}}")
        queue = RecordingQueue(url, namespace=NAMESPACE, interval=1.0)
        queue.granted_at = []
        store = RedisSessionStore(url, namespace=NAMESPACE)
        cluster = Cluster(
            sim.token,
            Intents.GUILDS | STREAM_INTENTS,
            api_base=sim.api_base,
            shard_scheme=ShardScheme.range(range(2), 2),
            queue=queue,
            session_store=store,
            event_types=DISPATCHES,
        )
        stops += [queue.close, store.close, cluster.down]
        cluster.up(timeout=TIMEOUT)
        if not cluster.wait_until_ready(TIMEOUT):
            raise RuntimeError("the cluster did not get ready")
        sink = StreamSink(cluster, url, namespace=NAMESPACE)
        publishing = gevent.spawn(sink.run)
        stops += [sink.close, lambda: sink.stop(timeout=10)]

        received: dict[tuple[int, int], int] = {}
        arrivals: list[float] = []
        worker = StreamWorker(url, "bench", "w1", namespace=NAMESPACE, block=0.2, timeout=1.0)

        def work() -> None:
            for shard_id, event in worker.events():
                number = event_number(event.data) if isinstance(event.data, dict) else None
                if number is not None:
                    key = (shard_id, number)
                    received[key] = received.get(key, 0) + 1
                    arrivals.append(time.monotonic())

        working = gevent.spawn(work)
        stops += [worker.close, worker.stop]

        sent: set[tuple[int, int]] = set()
        sending = gevent.event.Event()
        sending.set()
        per_tick = max(1, rate // 100 // 2)

        def send() -> None:
            while sending.is_set():
                for shard_id in (0, 1):
                    sent.update((shard_id, n) for n in sim.send_events(shard_id, per_tick))
                gevent.sleep(0.01)

        sender = gevent.spawn(send)
        most_buffered = 0
        first_batch_after: list[float] = []
        failures_at_kill = 1 << 62

        def sample() -> None:
            # The first batch published after a failure that followed the kill.
            nonlocal most_buffered
            previous = sink.stats()
            while True:
                stats = sink.stats()
                most_buffered = max(most_buffered, stats.buffered)
                if (
                    not first_batch_after
                    and stats.failures > failures_at_kill
                    and stats.published > previous.published
                ):
                    first_batch_after.append(time.monotonic())
                previous = stats
                gevent.sleep(0.005)

        sampler = gevent.spawn(sample)
        stops += [sampler.kill, sender.kill, working.kill, publishing.kill]
        gevent.sleep(2.0)

        master = nodes.master_of(f"{{{NAMESPACE}}}")
        identifies_before = len(sim.records.identifies)
        failures_at_kill = sink.stats().failures
        master.kill()
        killed_at = time.monotonic()
        sim.close_shard(0, 4009)
        promoted_at = None
        deadline = killed_at + TIMEOUT
        while promoted_at is None and time.monotonic() < deadline:
            try:
                if nodes.master_of(f"{{{NAMESPACE}}}") is not master:
                    promoted_at = time.monotonic()
            except Exception:  # noqa: BLE001 - the nodes are between masters
                pass
            gevent.sleep(0.02)
        if promoted_at is None:
            raise RuntimeError("no replica was promoted")
        gevent.sleep(3.0)
        sending.clear()
        sender.join(10)
        deadline = time.monotonic() + TIMEOUT
        while not set(received) >= sent and time.monotonic() < deadline:
            gevent.sleep(0.05)
        stats = sink.stats()
        identified = [r.time for r in sim.records.identifies[identifies_before:] if r.shard_id == 0]
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
        recovered = first_batch_after[0] if first_batch_after else float("nan")
        return {
            "promoted_s": promoted_at - killed_at,
            "sink_outage_s": stats.outage_seconds,
            "sink_recovered_s": recovered - killed_at,
            "noticed_after_promotion_s": recovered - promoted_at,
            "buffered_max": most_buffered,
            "worker_gap_s": max(gaps) if gaps else float("nan"),
            "identified_s": (identified[0] - killed_at) if identified else float("nan"),
            "identify_refusals": queue.refused,
            "identify_violations": len(sim.records.violations),
            "sent": len(sent),
            "lost": len(sent - set(received)),
            "twice": sum(1 for key, n in received.items() if n > 1),
            "unreplicated": stats.unreplicated,
        }
    finally:
        for stop in reversed(stops):
            try:
                stop()
            except Exception as err:  # noqa: BLE001 - cleaning up after a run
                print(f"cleanup: {err!r}", file=sys.stderr)


COLUMNS = [
    ("promoted_s", "promoted", "{:.2f} s"),
    ("sink_outage_s", "sink outage", "{:.2f} s"),
    ("sink_recovered_s", "sink back", "{:.2f} s"),
    ("noticed_after_promotion_s", "noticed after", "{:.2f} s"),
    ("buffered_max", "buffered", "{:d}"),
    ("worker_gap_s", "worker gap", "{:.2f} s"),
    ("identified_s", "identify", "{:.2f} s"),
    ("identify_violations", "violations", "{:d}"),
    ("sent", "sent", "{:d}"),
    ("lost", "lost", "{:d}"),
    ("twice", "twice", "{:d}"),
    ("unreplicated", "unrepl.", "{:d}"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=int, default=2000, help="events per second, both shards")
    parser.add_argument("--node-timeout", type=int, default=1000, help="cluster-node-timeout, ms")
    parser.add_argument(
        "--no-probe", action="store_true", help="sleep out backoffs (the library before 0.2)"
    )
    args = parser.parse_args()
    # The outage is the point: the log of each piece saying so would bury the table.
    logging.basicConfig(level=logging.CRITICAL)
    if args.no_probe:
        from gcluster.redis import _client

        _client.unreachable = lambda err: False  # type: ignore[assignment]
    runs = []
    for index in range(args.runs):
        run = one_run(args.rate, args.node_timeout)
        runs.append(run)
        print(
            f"run {index + 1}: "
            + ", ".join(f"{label} {fmt.format(run[key])}" for key, label, fmt in COLUMNS),
            flush=True,
        )
    summary = {key: statistics.median(run[key] for run in runs) for key, _, _ in COLUMNS}
    print(
        "median: "
        + ", ".join(
            f"{label} {fmt.format(type(runs[0][key])(summary[key]))}" for key, label, fmt in COLUMNS
        )
    )
    path = write_results(
        "failover-no-probe" if args.no_probe else "failover",
        {"runs": runs, "median": summary, "options": vars(args)},
    )
    print(f"wrote {Path(path).relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
