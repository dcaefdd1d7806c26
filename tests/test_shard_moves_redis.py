"""A shard moves between two clusters in the Redis service mode.

Its session moves through a RedisSessionStore (test_shard_moves.py's test),
and its command inbox follows it: the clusters stand for two gateway
processes, each with a CommandInbox, against one simulator and one
redis-server, and the simulator's records show each command reaching the
gateway once, over the shard's connection in the process that ran it.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from conftest import TIMEOUT
from redis_server import (  # noqa: F401
    raw_client,
    redis_server_fixture,
    redis_url_fixture,
    single_only,
)
from test_shard_moves import MakeSim, clusters, move_through_a_store  # noqa: F401

from gcluster import Cluster, LocalQueue, UpdatePresence
from gcluster.redis import CommandInbox, RedisSessionStore, inbox_key
from gcluster.redis.inbox import INBOX_GROUP
from gcluster.testing import GatewaySimulator

pytestmark = pytest.mark.extras


def test_a_shard_moves_through_a_redis_session_store(
    redis_url: str,
    make_sim: MakeSim,
    clusters: Callable[..., Cluster],  # noqa: F811
) -> None:
    stores: list[RedisSessionStore] = []

    def store() -> RedisSessionStore:
        # A store of its own for each cluster, as each process has.
        stores.append(RedisSessionStore(redis_url, namespace="moves"))
        return stores[-1]

    try:
        move_through_a_store(store, make_sim, clusters)
    finally:
        for made in stores:
            made.close()


# --- the command inboxes follow the shard ------------------------------------------------

NAMESPACE = "inbox-moves"


def presence(number: int) -> dict[str, str]:
    """An inbox entry as a worker writes it: a presence numbered by its `since`."""
    payload = UpdatePresence(status="idle", since=number).payload()
    return {"p": json.dumps(payload), "by": "test"}


def sent_through(sim: GatewaySimulator, shard_id: int) -> list[tuple[int, int]]:
    """`(connection id, number)` of every numbered presence the gateway got on the shard."""
    return [
        (c.connection_id, c.data["since"])
        for c in sim.records.commands
        if c.op == 3 and c.shard_id == shard_id
    ]


@contextlib.contextmanager
def serving(cluster: Cluster, redis_url: str, consumer: str, **options: Any) -> Iterator[Any]:
    """A CommandInbox of the cluster, read in a greenlet of its own while the block runs."""
    inbox = CommandInbox(
        cluster, redis_url, namespace=NAMESPACE, consumer=consumer, block=0.2, **options
    )
    reading = gevent.spawn(inbox.run)
    try:
        yield inbox
    finally:
        inbox.stop(timeout=2.0)
        reading.kill()
        inbox.close()


def test_commands_follow_a_shard_to_the_process_that_runs_it_each_sent_once(
    redis_url: str,
    make_sim: MakeSim,
    clusters: Callable[..., Cluster],  # noqa: F811
) -> None:
    sim = make_sim(shards=3, max_concurrency=3)
    client = raw_client(redis_url)
    queue = LocalQueue()
    old = clusters(sim, [0, 1], 3, queue=queue)
    new = clusters(sim, [2], 3, queue=queue)
    old.up(timeout=TIMEOUT)
    new.up(timeout=TIMEOUT)
    shard_1 = inbox_key(NAMESPACE, 1)
    with (
        serving(old, redis_url, "process-a") as old_inbox,
        # No look for left commands during the test: the take-over as the shard
        # arrives must do it all.
        serving(new, redis_url, "process-b", claim_interval=600) as new_inbox,
    ):
        assert sim.wait_until(lambda: old_inbox.shard_ids() == [0, 1], TIMEOUT)
        assert sim.wait_until(lambda: new_inbox.shard_ids() == [2], TIMEOUT)

        # Before: more commands than shard 1's rate limit lets through now. The
        # old process sends what it may; the rest wait in its send lane.
        room = old.info()[1].ratelimit
        assert room is not None
        before = room[0] + 4
        for number in range(1, before + 1):
            client.xadd(shard_1, presence(number))
        assert sim.wait_until(lambda: old_inbox.stats().received == before, TIMEOUT)
        assert sim.wait_until(lambda: old.info()[1].ratelimit[0] == 0, TIMEOUT)  # type: ignore[index]
        assert sim.wait_until(lambda: len(sent_through(sim, 1)) == old_inbox.stats().sent, TIMEOUT)
        by_old = old_inbox.stats().sent
        assert 0 < by_old < before

        # The move. The old process leaves the unsent ones in Redis: not
        # acknowledged, not dropped, not failed.
        session = old.remove_shard(1)
        assert session is not None
        assert sim.wait_until(lambda: old_inbox.shard_ids() == [0], TIMEOUT)
        assert sim.wait_until(lambda: old_inbox.stats().left == before - by_old, TIMEOUT)
        stats = old_inbox.stats()
        assert (stats.sent, stats.expired, stats.failed) == (by_old, 0, 0)
        assert sim.wait_until(
            lambda: client.xpending(shard_1, INBOX_GROUP)["pending"] == before - by_old, TIMEOUT
        )

        # During: the shard runs nowhere; its commands wait in its inbox.
        during = range(before + 1, before + 4)
        for number in during:
            client.xadd(shard_1, presence(number))
        assert client.xpending(shard_1, INBOX_GROUP)["pending"] == before - by_old

        shard = new.add_shard(1, session)
        assert shard.wait_until_ready(TIMEOUT)
        assert sim.wait_until(lambda: new_inbox.shard_ids() == [1, 2], TIMEOUT)

        # After: the new process sends them; the old one still sends shard 0's.
        after = range(before + 4, before + 7)
        for number in after:
            client.xadd(shard_1, presence(number))
        client.xadd(inbox_key(NAMESPACE, 0), presence(1000))
        last = before + 6
        assert sim.wait_until(lambda: len(sent_through(sim, 1)) == last, TIMEOUT)

        assert sim.wait_until(lambda: sent_through(sim, 0) != [], TIMEOUT)
        assert sim.wait_until(
            lambda: client.xpending(shard_1, INBOX_GROUP)["pending"] == 0, TIMEOUT
        )

    # Each command reached the gateway once, over shard 1's connection in the
    # process that ran it then: the old one's IDENTIFYed connection, then the
    # new one's RESUMEd one, in the order the commands were sent.
    (identified,) = [r.connection_id for r in sim.records.identifies if r.shard_id == 1]
    (resumed,) = [r.connection_id for r in sim.records.resumes if r.shard_id == 1 and r.ok]
    through = sent_through(sim, 1)
    assert Counter(number for _, number in through) == Counter(range(1, last + 1))
    assert [n for c, n in through if c == identified] == list(range(1, by_old + 1))
    assert [n for c, n in through if c == resumed] == list(range(by_old + 1, last + 1))
    assert {c for c, _ in sent_through(sim, 0)} == {
        r.connection_id for r in sim.records.identifies if r.shard_id == 0
    }
    stats = new_inbox.stats()
    assert (stats.sent, stats.left, stats.expired, stats.failed) == (last - by_old, 0, 0, 0)
    assert old_inbox.stats().sent == by_old + 1  # and shard 0's
    assert sim.records.violations == []
    client.close()


def test_a_command_for_a_shard_that_runs_nowhere_waits_for_it_until_its_ttl(
    redis_url: str,
    make_sim: MakeSim,
    clusters: Callable[..., Cluster],  # noqa: F811
) -> None:
    sim = make_sim(shards=2, max_concurrency=2)
    client = raw_client(redis_url)
    shard_1 = inbox_key(NAMESPACE, 1)
    cluster = clusters(sim, [0, 1], 2)
    cluster.up(timeout=TIMEOUT)
    ttl = 1.0
    with serving(cluster, redis_url, "process-a", ttl=ttl) as inbox:
        assert sim.wait_until(lambda: inbox.shard_ids() == [0, 1], TIMEOUT)
        session = cluster.remove_shard(1)
        assert sim.wait_until(lambda: inbox.shard_ids() == [0], TIMEOUT)

        # Shard 1 runs nowhere: one command grows older than the ttl there, one does not.
        stale = client.xadd(shard_1, presence(1)).decode()

        def older_than_ttl() -> bool:
            seconds, micros = client.time()
            return seconds * 1000 + micros // 1000 - int(stale.split("-")[0]) > ttl * 1000

        assert sim.wait_until(older_than_ttl, TIMEOUT)
        client.xadd(shard_1, presence(2))
        assert sent_through(sim, 1) == []

        cluster.add_shard(1, session)
        assert sim.wait_until(lambda: inbox.stats().sent == 1, TIMEOUT)
        assert sim.wait_until(lambda: inbox.stats().expired == 1, TIMEOUT)
        assert [number for _, number in sent_through(sim, 1)] == [2]
        assert sim.wait_until(
            lambda: client.xpending(shard_1, INBOX_GROUP)["pending"] == 0, TIMEOUT
        )
    client.close()


@single_only  # a MULTI of XADD and XREADGROUP stands for the other process
def test_a_command_another_process_read_and_left_is_taken_over_within_the_claim_interval(
    redis_url: str,
    make_sim: MakeSim,
    clusters: Callable[..., Cluster],  # noqa: F811
) -> None:
    sim = make_sim(shards=1, max_concurrency=1)
    client = raw_client(redis_url)
    shard_0 = inbox_key(NAMESPACE, 0)
    cluster = clusters(sim, [0], 1)
    cluster.up(timeout=TIMEOUT)
    with serving(cluster, redis_url, "process-b", claim_interval=0.3) as inbox:
        assert sim.wait_until(lambda: inbox.shard_ids() == [0], TIMEOUT)
        client.xadd(shard_0, presence(1))
        assert sim.wait_until(lambda: inbox.stats().sent == 1, TIMEOUT)
        assert sim.wait_until(
            lambda: client.xpending(shard_0, INBOX_GROUP)["pending"] == 0, TIMEOUT
        )
        # Another process read one after this one took the shard's inbox over
        # (it read it just as its shard left, then died or let it be).
        with client.pipeline(transaction=True) as pipe:
            pipe.xadd(shard_0, presence(2))
            pipe.xreadgroup(INBOX_GROUP, "vanished", {shard_0: ">"}, count=1)
            pipe.execute()
        assert client.xpending(shard_0, INBOX_GROUP)["consumers"] == [
            {"name": b"vanished", "pending": 1}
        ]
        assert sim.wait_until(lambda: inbox.stats().sent == 2, TIMEOUT)
        assert sim.wait_until(
            lambda: client.xpending(shard_0, INBOX_GROUP)["pending"] == 0, TIMEOUT
        )
    assert [number for _, number in sent_through(sim, 0)] == [1, 2]
    assert inbox.stats().received == 2
    client.close()
