"""A planned handoff: the holder's release wakes the standby, which RESUMEs every shard.

The lease tests drive two `ShardLease` objects against a real Redis; the
service test runs the holder and the standbys as real `python -m gcluster
run --lease` processes against the simulator, sends SIGTERM at several
moments and proves from the simulator's records and the stream what a
deploy must keep: no IDENTIFY after the first, every shard RESUMEd, no event
lost. How long the handoff takes is measured by benchmarks/handoff.py, not
asserted here.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import conftest
import gevent
import pytest
import redis
from redis_server import raw_client, redis_server_fixture, redis_url_fixture  # noqa: F401
from test_service import Service
from test_service import services as services  # noqa: F401 - the fixture

from gcluster.redis import ShardLease, decode_event, handoff_key, lease_key
from gcluster.testing import GatewaySimulator, event_number

pytestmark = pytest.mark.extras

TIMEOUT = 30.0
# A wake-up takes a round trip; this only bounds one that never comes.
WOKEN = 15.0
SLICE = "process:0/1"


def blocked_on(client: redis.Redis | redis.RedisCluster, key: str) -> bool:
    """Whether some connection waits in a BLPOP on `key` now (CLIENT LIST's flag `b`).

    On a Redis Cluster the waiter is connected to the master serving the key's
    slot, so that node is asked.
    """
    if isinstance(client, redis.RedisCluster):
        node = client.get_node_from_key(key)
        entries = client.client_list(target_nodes=node)
    else:
        entries = client.client_list()
    return (
        any(entry.get("cmd") == "blpop" and "b" in entry.get("flags", "") for entry in entries)
        and client.llen(key) == 0
    )


def wait_for(predicate: Callable[[], object], timeout: float = TIMEOUT) -> None:
    conftest.wait_for(predicate, timeout)  # with this module's longer TIMEOUT


def test_keys_share_the_namespace_hash_tag() -> None:
    assert lease_key("bot", SLICE) == "{bot}:lease:process:0/1"
    assert handoff_key("bot", SLICE) == "{bot}:handoff:process:0/1"
    # A slice named like another's handoff list cannot collide with it.
    assert lease_key("bot", "x:handoff") != handoff_key("bot", "x")


def test_release_wakes_a_waiting_standby_before_its_next_try(redis_url: str) -> None:
    client = raw_client(redis_url)
    # A long ttl and socket timeout: the standby's next try on its own is 50 s
    # away, so holding the lease within WOKEN seconds means the release woke it.
    holder = ShardLease(redis_url, name=SLICE, namespace="t", ttl=300, timeout=100, owner="old")
    standby = ShardLease(redis_url, name=SLICE, namespace="t", ttl=300, timeout=100, owner="new")
    assert holder.acquire(timeout=1)
    taking = gevent.spawn(standby.acquire)
    try:
        wait_for(lambda: blocked_on(client, standby.handoff_key))
        holder.release()
        assert taking.get(timeout=WOKEN) is True
        assert standby.holder() == "new"
        # The standby took the notification with it: nothing is left to wake another.
        assert client.llen(standby.handoff_key) == 0
    finally:
        taking.kill()
        holder.close()
        standby.close()
        client.close()


def test_a_notification_never_makes_two_holders(redis_url: str) -> None:
    client = raw_client(redis_url)
    holder = ShardLease(redis_url, name=SLICE, namespace="t", ttl=60, owner="holder")
    standby = ShardLease(redis_url, name=SLICE, namespace="t", ttl=60, timeout=1, owner="standby")
    try:
        assert holder.acquire(timeout=1)
        # A stale or forged wake-up while the lease is held: the standby tries,
        # finds it held, and waits on.
        client.rpush(standby.handoff_key, "nobody")
        assert not standby.acquire(timeout=1.5)
        assert client.llen(standby.handoff_key) == 0  # it was woken, and took it
        assert holder.holder() == "holder" and holder.held
    finally:
        holder.close()
        standby.close()
        client.close()


def test_a_standby_that_is_never_woken_takes_an_expired_lease(redis_url: str) -> None:
    client = raw_client(redis_url)
    standby = ShardLease(redis_url, name=SLICE, namespace="t", ttl=0.8, owner="standby")
    try:
        # A holder that died: its key expires, and nobody pushes a wake-up.
        client.set(standby.key, "dead", px=800)
        taking = gevent.spawn(standby.acquire, timeout=TIMEOUT)
        wait_for(lambda: blocked_on(client, standby.handoff_key))  # it waits for a wake-up
        assert taking.get(timeout=TIMEOUT) is True
        assert standby.holder() == "standby"
        assert not client.exists(standby.handoff_key)
    finally:
        standby.close()
        client.close()


def test_releasing_a_lease_taken_by_another_wakes_nobody(redis_url: str) -> None:
    client = raw_client(redis_url)
    mine = ShardLease(redis_url, name=SLICE, namespace="t", ttl=60, owner="me")
    try:
        assert mine.acquire(timeout=1)
        client.set(mine.key, "them")  # expired during a partition and taken
        mine.release()
        assert client.get(mine.key) == b"them"
        assert client.llen(mine.handoff_key) == 0
    finally:
        mine.close()
        client.close()


# --- the service: a deploy's SIGTERM, again and again ----------------------------------


def stream_entries(client: redis.Redis, stream: str) -> list[tuple[int, int, int | None]]:
    """(entry time in ms, shard, event number) of every entry, in stream order."""
    entries = []
    for entry_id, fields in client.xrange(stream):
        shard_id, event = decode_event(fields)
        millis = int(entry_id.split(b"-")[0])
        data: Any = event.data
        entries.append((millis, shard_id, event_number(data) if isinstance(data, dict) else None))
    return entries


def handoff_gaps(entries: list[tuple[int, int, int | None]], resumed_at: list[float]) -> list[int]:
    """Per handoff, ms from the old holder's last stream entry to the new holder's first.

    `resumed_at` holds the wall-clock time of each handoff's first RESUME: the
    old holder published everything before releasing, and the new one
    nothing before resuming.
    """
    gaps = []
    for at in resumed_at:
        at_ms = at * 1000
        before = [ms for ms, _, _ in entries if ms < at_ms]
        after = [ms for ms, _, _ in entries if ms >= at_ms]
        if before and after:
            gaps.append(after[0] - before[-1])
    return gaps


def test_sigterm_hands_the_shards_over_resumed_with_no_event_lost(
    redis_url: str, make_sim: Callable[..., GatewaySimulator], services: list[Service]
) -> None:
    shards = 2
    sim = make_sim(shards=shards, max_concurrency=shards)
    stream = "deploy:events"
    args = (
        "--sink", redis_url,
        "--namespace", "deploy",
        "--stream", stream,
        "--scheme", SLICE,
        "--shards", str(shards),
        "--lease",
        "--api-base", sim.api_base,
        "--events", "MESSAGE_CREATE,MESSAGE_UPDATE,MESSAGE_DELETE,TYPING_START,PRESENCE_UPDATE",
        "--intents", "GUILDS,GUILD_MESSAGES,GUILD_MESSAGE_TYPING,GUILD_PRESENCES",
    )  # fmt: skip
    client = raw_client(redis_url)
    sent = [0] * shards

    def send(count: int) -> None:
        for shard_id in range(shards):
            sim.send_events(shard_id, count)
            sent[shard_id] += count

    def all_published() -> bool:
        numbers = Counter((s, n) for _, s, n in stream_entries(client, stream))
        return all((s, n) in numbers for s in range(shards) for n in range(1, sent[s] + 1))

    def standby() -> Service:
        service = Service(*args, token=sim.token)
        services.append(service)
        service.wait_for_line("waiting for it")  # its first try found the lease held
        return service

    holder = Service(*args, token=sim.token)
    services.append(holder)
    holder.wait_for_line("service: shards 0-1 ready")
    resumed_at: list[float] = []
    # A SIGTERM while a burst is being dispatched, one when idle, one mid-burst again.
    for moment in ("burst", "idle", "burst"):
        waiting = standby()
        resumes = len(sim.records.resumes)
        if moment == "burst":
            published = client.xlen(stream)
            burst = gevent.spawn(send, 300)
            # The holder is publishing the burst: SIGTERM lands in the middle of it.
            wait_for(lambda: client.xlen(stream) > published + 50)  # noqa: B023
        else:
            send(20)
            wait_for(all_published)
        holder.process.send_signal(15)
        assert holder.process.wait(timeout=TIMEOUT) == 0, holder.log
        wait_for(lambda: len(sim.records.resumes) >= resumes + shards)  # noqa: B023
        resumed_at.append(time.time() - time.monotonic() + sim.records.resumes[resumes].time)
        if moment == "burst":
            burst.join(timeout=TIMEOUT)
        send(10)  # the new holder runs: these reach the stream through it
        wait_for(all_published)
        assert "Traceback" not in holder.log
        holder = waiting

    # One IDENTIFY per shard, by the first holder; every later start RESUMEd.
    assert sorted(r.shard_id for r in sim.records.identifies) == list(range(shards))
    resumes = sim.records.resumes
    assert [r.ok for r in resumes] == [True] * (3 * shards)
    assert sorted(r.shard_id for r in resumes) == sorted(list(range(shards)) * 3)
    # Every event reached the stream, in order per shard, with no gap: what a
    # RESUME replays after the old holder's saved sequence can repeat an event
    # it published, never skip one.
    entries = stream_entries(client, stream)
    for shard_id in range(shards):
        numbers = [n for _, s, n in entries if s == shard_id]
        assert set(numbers) == set(range(1, sent[shard_id] + 1))
        firsts = [n for i, n in enumerate(numbers) if n not in numbers[:i]]
        assert firsts == sorted(firsts)
    gaps = handoff_gaps(entries, resumed_at)
    assert len(gaps) == 3
    print(f"handoff gaps (ms, measured, not asserted): {gaps}")
    assert holder.stop() == 0, holder.log
    assert not client.exists(lease_key("deploy", SLICE))
    client.close()
