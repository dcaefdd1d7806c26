"""A Redis Cluster master killed while a bot runs: every Redis piece rides the failover.

One cluster of three masters and three replicas (node timeout 1 s, so a
replica takes over about two seconds after its master dies), one bot on it:
the identify queue, the session store, the sink, a worker and a lease, all in
one namespace and so all on one master. That master is killed with SIGKILL
while events flow. What must hold, by the records of the simulator, the
worker and the lease:

- the identify queue fails closed: a shard that must IDENTIFY while the slot
  has no master does not, and identifies once the replica is promoted, with
  no identify rule broken;
- the sink buffers and catches up as soon as the replica is promoted (not
  after its backoff): the worker receives every event the simulator sent (a
  few may come twice, none is missing);
- the worker carries on, reading through the new master;
- the lease is never held by two owners at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import gevent.event
import pytest
from redis_server import RedisClusterNodes, make_redis_cluster_fixture  # noqa: F401 - fixture

from gcluster import Cluster, EventTypeFlags, Intents, ShardScheme
from gcluster.backoff import Backoff
from gcluster.errors import QueueError
from gcluster.redis import RedisQueue, RedisSessionStore, ShardLease, StreamSink, StreamWorker
from gcluster.testing import STREAM_INTENTS, GatewaySimulator, event_number

pytestmark = pytest.mark.extras

TIMEOUT = 30.0
NAMESPACE = "fo"
INTERVAL = 1.0
DISPATCHES = EventTypeFlags.ALL & ~(
    EventTypeFlags.SHARD_LIFECYCLE | EventTypeFlags.GATEWAY_LIFECYCLE
)


class RecordingQueue(RedisQueue):
    """A RedisQueue that records when it granted and when it refused (failed closed)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.granted: list[tuple[float, int]] = []
        self.refused: list[tuple[float, int]] = []

    def request(self, shard_id: int, total: int) -> None:
        try:
            super().request(shard_id, total)
        except QueueError:
            self.refused.append((time.monotonic(), shard_id))
            raise
        self.granted.append((time.monotonic(), shard_id))


class LeaseHistory:
    """Who took and lost a lease, when: two holders at once must never happen."""

    def __init__(self) -> None:
        self.changes: list[tuple[float, str, bool]] = []

    def took(self, owner: str) -> None:
        self.changes.append((time.monotonic(), owner, True))

    def lost(self, owner: str) -> None:
        self.changes.append((time.monotonic(), owner, False))

    def most_holders_at_once(self) -> int:
        holding: set[str] = set()
        most = 0
        for _, owner, took in sorted(self.changes):
            if took:
                holding.add(owner)
            else:
                holding.discard(owner)
            most = max(most, len(holding))
        return most


@pytest.fixture
def started() -> Iterator[list[Callable[[], object]]]:
    """Things to stop after the test, last started first."""
    stops: list[Callable[[], object]] = []
    yield stops
    for stop in reversed(stops):
        stop()


def test_a_killed_master_fails_over_with_no_event_lost_no_identify_too_soon_and_one_lease_holder(
    make_redis_cluster: Callable[..., RedisClusterNodes],
    make_sim: Callable[..., GatewaySimulator],
    started: list[Callable[[], object]],
) -> None:
    nodes = make_redis_cluster(cluster_node_timeout=1000)
    # Any node's URL will do: a replica of another master's.
    url = nodes.other_url(f"{{{NAMESPACE}}}")
    sim = make_sim(shards=2, max_concurrency=2, identify_interval=INTERVAL)

    queue = RecordingQueue(url, namespace=NAMESPACE, interval=INTERVAL)
    store = RedisSessionStore(url, namespace=NAMESPACE)
    started += [queue.close, store.close]
    cluster = Cluster(
        sim.token,
        Intents.GUILDS | STREAM_INTENTS,
        api_base=sim.api_base,
        shard_scheme=ShardScheme.range(range(2), 2),
        queue=queue,
        session_store=store,
        event_types=DISPATCHES,
    )
    started.append(cluster.down)
    cluster.up(timeout=TIMEOUT)
    assert cluster.wait_until_ready(TIMEOUT)
    # A backoff longer than every wait of this test (at least 60 s between
    # two attempts): catching up proves the sink noticed the promotion itself.
    sink = StreamSink(cluster, url, namespace=NAMESPACE, retry=Backoff(base=120.0, cap=120.0))
    publishing = gevent.spawn(sink.run)
    started += [sink.close, lambda: publishing.join(5), lambda: sink.stop(timeout=5)]

    received: list[tuple[int, int]] = []
    worker = StreamWorker(url, "handlers", "w1", namespace=NAMESPACE, block=0.2, timeout=1.0)

    def work() -> None:
        for shard_id, event in worker.events():
            number = event_number(event.data) if isinstance(event.data, dict) else None
            if number is not None:
                received.append((shard_id, number))

    working = gevent.spawn(work)
    started += [worker.close, lambda: working.join(5), worker.stop]

    history = LeaseHistory()
    holder = ShardLease(url, name="all", namespace=NAMESPACE, ttl=5.0, owner="holder")
    standby = ShardLease(url, name="all", namespace=NAMESPACE, ttl=5.0, owner="standby")
    holder.on_lost = lambda: history.lost("holder")
    standby.on_lost = lambda: history.lost("standby")
    started += [holder.close, standby.close]
    assert holder.acquire(timeout=5)
    history.took("holder")

    def stand_by() -> None:
        if standby.acquire():
            history.took("standby")

    standing_by = gevent.spawn(stand_by)
    started.append(standing_by.kill)

    sent: set[tuple[int, int]] = set()
    sending = gevent.event.Event()
    sending.set()

    def send_on_shard_1() -> None:
        while sending.is_set():
            sent.update((1, n) for n in sim.send_events(1, 20))
            gevent.sleep(0.02)

    sent.update((0, n) for n in sim.send_events(0, 50))
    sender = gevent.spawn(send_on_shard_1)
    started.append(sender.kill)
    assert sim.wait_until(lambda: set(received) >= {(0, n) for n in range(1, 51)}, TIMEOUT)

    master = nodes.master_of(f"{{{NAMESPACE}}}")
    identifies_before = len(sim.records.identifies)
    master.kill()
    killed_at = time.monotonic()
    # The session timed out: shard 0 must IDENTIFY, and the queue's slot has no master.
    sim.close_shard(0, 4009)

    assert sim.wait_until(lambda: nodes.master_of(f"{{{NAMESPACE}}}") is not master, TIMEOUT)
    assert sim.wait_until(lambda: len(sim.records.identifies) > identifies_before, TIMEOUT)
    assert cluster.wait_until_ready(TIMEOUT)
    sent.update((0, n) for n in sim.send_events(0, 50))
    assert sim.wait_until(lambda: sink.stats().published > 0 and len(sent) > 1500, TIMEOUT)
    sending.clear()
    sender.join(TIMEOUT)

    # Every event the simulator sent reached the worker, through the new master.
    assert sim.wait_until(lambda: set(received) >= sent, TIMEOUT), sorted(sent - set(received))[:10]
    stats = sink.stats()
    assert stats.outages >= 1 and stats.failures >= 1  # it saw the master die ...
    assert stats.buffered == 0 and stats.published == stats.read  # ... and caught up
    assert worker.stats().failures >= 1  # the worker saw it too, and carried on

    # The queue refused shard 0 while the slot had no master, then let it identify once.
    refusals = [t for t, shard in queue.refused if shard == 0 and t > killed_at]
    grants = [t for t, shard in queue.granted if shard == 0 and t > killed_at]
    assert refusals and grants and min(grants) > max(refusals)
    new_identifies = sim.records.identifies[identifies_before:]
    assert [record.shard_id for record in new_identifies] == [0]
    assert sim.records.violations == []

    # One holder at a time, all along.
    assert history.most_holders_at_once() == 1
    assert holder.held or any(owner == "holder" and not took for _, owner, took in history.changes)
