"""StreamSink, StreamWorker and the command inbox against a real redis-server and the simulator.

The gateway side (clusters and their sinks) runs in the test's hub against a
`GatewaySimulator`; workers run as separate processes, as they would in
production, so one can be killed with SIGKILL.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
import redis
from conftest import collect
from redis.crc import key_slot
from redis_server import (  # noqa: F401 - fixtures
    RedisServer,
    make_redis_server_fixture,
    raw_client,
    redis_server_fixture,
    redis_url_fixture,
    single_only,
)

from gcluster import (
    Cluster,
    Dispatcher,
    Event,
    EventType,
    EventTypeFlags,
    Intents,
    RequestGuildMembers,
    ShardScheme,
    Stage,
    UpdatePresence,
)
from gcluster.backoff import Backoff
from gcluster.errors import InvalidCommand
from gcluster.redis import (
    DEFAULT_STREAM,
    RedisSessionStore,
    StreamSink,
    StreamWorker,
    decode_event,
    default_stream,
    encode_event,
    event_stream_key,
    inbox_key,
    shard_count_key,
)
from gcluster.testing import STREAM_INTENTS, GatewaySimulator, event_number

pytestmark = pytest.mark.extras

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 15.0
DISPATCHES = EventTypeFlags.ALL & ~(
    EventTypeFlags.SHARD_LIFECYCLE | EventTypeFlags.GATEWAY_LIFECYCLE
)
NAMESPACE = "t"
STREAM = "{t}:events"  # the default stream of the namespace


# --- helpers ----------------------------------------------------------------------


def fields_as_redis_returns_them(fields: dict[Any, Any]) -> dict[bytes, bytes]:
    def raw(value: Any) -> bytes:
        return value if isinstance(value, bytes) else str(value).encode()

    return {raw(k): raw(v) for k, v in fields.items()}


def published(client: redis.Redis, key: str = STREAM) -> list[tuple[int, Event]]:
    return [decode_event(fields) for _, fields in client.xrange(key)]


def numbered(items: list[tuple[int, Event]]) -> Counter[tuple[int, int]]:
    counts: Counter[tuple[int, int]] = Counter()
    for shard_id, event in items:
        number = event_number(event.data) if isinstance(event.data, dict) else None
        if number is not None:
            counts[shard_id, number] += 1
    return counts


def expected(shards: range | list[int], first: int, last: int) -> set[tuple[int, int]]:
    return {(s, n) for s in shards for n in range(first, last + 1)}


def start_cluster(sim: GatewaySimulator, scheme: ShardScheme, **options: Any) -> Cluster:
    cluster = Cluster(
        sim.token,
        Intents.GUILDS | STREAM_INTENTS,
        api_base=sim.api_base,
        shard_scheme=scheme,
        **options,
    )
    cluster.up(timeout=TIMEOUT)
    assert cluster.wait_until_ready(TIMEOUT)
    return cluster


class Gateway:
    """A cluster and its sink running in the test's hub."""

    def __init__(self, cluster: Cluster, sink: StreamSink) -> None:
        self.cluster = cluster
        self.sink = sink
        self.greenlet = gevent.spawn(sink.run)

    def stop(self) -> None:
        self.sink.stop(timeout=5)
        self.greenlet.join(timeout=5)
        self.cluster.down()
        self.sink.close()


@pytest.fixture
def gateways() -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []

    def make(sim: GatewaySimulator, scheme: ShardScheme, url: str, **sink_options: Any) -> Gateway:
        cluster = start_cluster(sim, scheme)
        sink_options.setdefault("namespace", NAMESPACE)
        sink = StreamSink(cluster, url, **sink_options)
        assert sink.stream == STREAM == default_stream(NAMESPACE)
        gateway = Gateway(cluster, sink)
        started.append(gateway)
        return gateway

    yield make
    for gateway in started:
        gateway.stop()


# --- the envelope -------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        Event(EventType.MESSAGE_CREATE, "MESSAGE_CREATE", 3, 42, {"id": "1", "content": "é/ü"}),
        Event(EventType.UNKNOWN, "BRAND_NEW_EVENT", 0, 7, {"x": [1, None, True]}),
        Event(EventType.SHARD_DISCONNECTED, "SHARD_DISCONNECTED", 1, None, {"code": 4000}),
        Event(EventType.GATEWAY_HEARTBEAT, "GATEWAY_HEARTBEAT", 2, None, None),
        Event(EventType.SHARD_PAYLOAD, "SHARD_PAYLOAD", 5, None, b'{"op":0,"t":"X"}'),
    ],
    ids=lambda event: event.name,
)
def test_an_event_comes_back_from_its_envelope_as_it_went_in(event: Event) -> None:
    fields = encode_event(event.shard_id, event)
    assert sorted(fields) == ["d", "s", "shard", "t"]  # one field set: Redis stores it once
    assert decode_event(fields_as_redis_returns_them(fields)) == (event.shard_id, event)


def test_an_entry_that_is_no_envelope_is_refused() -> None:
    with pytest.raises(ValueError, match="not an event envelope") as caught:
        decode_event({b"hello": b"world"})
    assert isinstance(caught.value.__cause__, KeyError)


def test_per_event_streams_share_a_hash_slot() -> None:
    keys = [event_stream_key("bot:events", name) for name in ("MESSAGE_CREATE", "READY")]
    assert keys == ["{bot:events}:MESSAGE_CREATE", "{bot:events}:READY"]
    assert len({key_slot(key.encode()) for key in keys}) == 1
    # A stream name with a hash tag of its own keeps it.
    assert event_stream_key("{bot}:events", "READY") == "{bot}:events:READY"
    inboxes = [inbox_key("bot", shard) for shard in range(8)] + [shard_count_key("bot")]
    assert len({key_slot(key.encode()) for key in inboxes}) == 1


# --- workers in other processes -------------------------------------------------------

WORKER = """
import sys, time
if sys.argv[3] == "patched":
    from gevent import monkey
    monkey.patch_all()
from gcluster import EventType, RequestGuildMembers, UpdatePresence
from gcluster.redis._client import make_client
from gcluster.redis import StreamWorker
from gcluster.testing import event_number

url, name, mode = sys.argv[1], sys.argv[2], sys.argv[3]
worker = StreamWorker(url, "handlers", name, namespace="t",
                      batch=20, block=0.2, claim_idle=1.5)
# A Redis Cluster's or a server's client, whichever the URL names.
log = make_client(url, None, connect_timeout=2, timeout=5).get()
log.rpush("ready", name)
for shard_id, event in worker.events():
    number = event_number(event.data) if isinstance(event.data, dict) else None
    if number is None:
        continue
    if event.kind is EventType.MESSAGE_CREATE and number <= 5:
        # The first message of each shard gets answers through the gateway:
        # by the command's own guild, and by shard id.
        worker.send_command(RequestGuildMembers(
            guild_id=event.data["guild_id"], query="", nonce=f"shard-{shard_id}"))
        worker.command(shard_id, UpdatePresence(status="idle"))
    log.rpush("handled", f"{shard_id}:{number}:{name}")
    if mode == "stall" and number > 250:
        # Handled, never acknowledged: hangs with the rest of its batch in hand.
        time.sleep(60)
"""


def start_worker(url: str, name: str, mode: str) -> subprocess.Popen[bytes]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, url, name, mode],
        env=dict(os.environ, PYTHONPATH=path),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def handled(client: redis.Redis) -> list[tuple[int, int, str]]:
    out = []
    for raw in client.lrange("handled", 0, -1):
        shard, number, name = raw.decode().split(":")
        out.append((int(shard), int(number), name))
    return out


def test_workers_share_every_event_once_take_over_from_a_killed_one_and_send_commands(
    make_sim: Callable[..., GatewaySimulator],
    gateways: Callable[..., Gateway],
    redis_url: str,
) -> None:
    sim = make_sim(shards=4, max_concurrency=4)
    client = raw_client(redis_url)
    # Two gateway processes' worth: each runs half of the 4 shards.
    first = gateways(sim, ShardScheme.process(0, 2, 4), redis_url)
    second = gateways(sim, ShardScheme.process(1, 2, 4), redis_url)
    workers = {
        "w0": start_worker(redis_url, "w0", "patched"),  # gevent, monkey-patched
        "w1": start_worker(redis_url, "w1", "plain"),  # no monkey-patching
        "w2": start_worker(redis_url, "w2", "stall"),  # hangs on its first phase-2 event
    }
    try:
        assert sim.wait_until(lambda: client.llen("ready") == 3, TIMEOUT)
        assert sim.wait_until(lambda: client.exists(shard_count_key(NAMESPACE)), TIMEOUT)

        # Phase 1: 4 × 250 events, every one handled exactly once, by all three workers.
        for shard_id in range(4):
            sim.send_events(shard_id, 250)
        assert sim.wait_until(lambda: client.llen("handled") >= 1000, TIMEOUT)
        records = handled(client)
        counts = Counter((shard, number) for shard, number, _ in records)
        assert set(counts) == expected(range(4), 1, 250)
        assert max(counts.values()) == 1
        assert {name for _, _, name in records} == {"w0", "w1", "w2"}
        assert client.xpending(STREAM, "handlers")["pending"] == 0

        # Commands came back through the process holding each shard, on the right shard.
        assert sim.wait_until(lambda: len(sim.records.commands) >= 8, TIMEOUT)
        members = {c.data["nonce"]: c.shard_id for c in sim.records.commands if c.op == 8}
        assert members == {f"shard-{shard}": shard for shard in range(4)}
        presences = sorted(c.shard_id for c in sim.records.commands if c.op == 3)
        assert presences == [0, 1, 2, 3]
        assert first.sink.inbox.stats().sent == 4  # shards 0 and 1 only
        assert second.sink.inbox.stats().sent == 4  # shards 2 and 3 only

        # Phase 2: w2 hangs on its first event, holding the rest of its batch; kill it.
        client.delete("handled")
        for shard_id in range(4):
            sim.send_events(shard_id, 250)

        def victim_hangs() -> bool:
            return any(name == "w2" for _, _, name in handled(client))

        assert sim.wait_until(victim_hangs, TIMEOUT)
        workers["w2"].send_signal(signal.SIGKILL)
        workers["w2"].wait(TIMEOUT)
        (last_words,) = [(s, n) for s, n, name in handled(client) if name == "w2"]
        orphans = client.xpending_range(STREAM, "handlers", "-", "+", 100, consumername="w2")
        orphan_events = {
            (shard, event_number(event.data))
            for entry in orphans
            for shard, event in published_entry(client, entry["message_id"])
        }
        assert last_words in orphan_events

        def all_handled() -> bool:
            got = {(shard, number) for shard, number, _ in handled(client)}
            return got >= expected(range(4), 251, 500)

        assert sim.wait_until(all_handled, TIMEOUT)
        assert sim.wait_until(lambda: client.xpending(STREAM, "handlers")["pending"] == 0, TIMEOUT)
        records = handled(client)
        counts = Counter((shard, number) for shard, number, _ in records)
        assert set(counts) == expected(range(4), 251, 500)  # none lost
        # Handled twice: only the event w2 handled and died before acknowledging.
        assert {key for key, n in counts.items() if n > 1} == {last_words}
        # Everything w2 held was claimed and handled by the others.
        survivors = {(shard, number) for shard, number, name in records if name != "w2"}
        assert orphan_events <= survivors
    finally:
        for process in workers.values():
            if process.poll() is None:
                process.kill()
            process.wait(TIMEOUT)
            if process.stderr is not None:
                err = process.stderr.read().decode()
                process.stderr.close()
                assert "Traceback" not in err, err
        client.close()


def published_entry(client: redis.Redis, message_id: Any) -> list[tuple[int, Event]]:
    return [decode_event(fields) for _, fields in client.xrange(STREAM, message_id, message_id)]


# --- Redis going away ------------------------------------------------------------------


def restart_on_same_port(old: RedisServer) -> RedisServer:
    server = RedisServer()
    server.port, server.url = old.port, old.url
    return server.start()


def test_redis_down_buffers_then_stops_reading_while_shards_heartbeat_and_catches_up(
    make_sim: Callable[..., GatewaySimulator],
    make_redis_server: Callable[[], RedisServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gcluster.redis")
    server = make_redis_server()
    sim = make_sim(shards=2, max_concurrency=2, heartbeat_interval=0.25)
    cluster = start_cluster(sim, ShardScheme.range(range(2), 2))
    sink = StreamSink(
        cluster,
        server.url,
        stream=STREAM,
        batch=10,
        buffer=50,
        commands=False,
        connect_timeout=0.5,
        timeout=1.0,
        retry=Backoff(base=0.05, cap=0.25),
    )
    running = gevent.spawn(sink.run)
    client = redis.Redis.from_url(server.url, socket_connect_timeout=0.5)
    revived: RedisServer | None = None
    try:
        for shard_id in range(2):
            sim.send_events(shard_id, 20)
        assert sim.wait_until(
            lambda: set(numbered(published(client))) == expected(range(2), 1, 20), TIMEOUT
        )

        server.stop()
        down_at = time.monotonic()
        for shard_id in range(2):
            sim.send_events(shard_id, 100)
        # The sink fills its buffer, then leaves the rest in the cluster's queue.
        assert sim.wait_until(lambda: sink.stats().paused and sink.stats().failures > 0, TIMEOUT)
        assert sim.wait_until(lambda: cluster.backlog >= 100, TIMEOUT)
        stats = sink.stats()
        assert stats.buffered == 50 and stats.outages == 1 and stats.failures >= 1

        # Meanwhile every shard keeps heartbeating on its healthy connection.
        def heartbeats_since_outage(shard_id: int) -> int:
            return sum(
                1 for h in sim.records.heartbeats if h.shard_id == shard_id and h.time > down_at
            )

        assert sim.wait_until(
            lambda: all(heartbeats_since_outage(s) >= 3 for s in range(2)), TIMEOUT
        )
        assert all(info.stage is Stage.CONNECTED for info in cluster.info().values())
        assert not any(c.time > down_at for c in sim.records.closes)
        assert "no longer reading events" in caplog.text

        revived = restart_on_same_port(server)
        # Redis came back empty (no persistence): what it holds now is the outage's events.
        assert sim.wait_until(
            lambda: set(numbered(published(client))) >= expected(range(2), 21, 120), TIMEOUT
        )
        assert max(numbered(published(client)).values()) == 1
        stats = sink.stats()
        assert not stats.paused and stats.buffered == 0 and stats.pauses >= 1
        # The buffer refilled and paused the reader again and again as Redis took
        # the backlog: that is said once (every 10 s at most), not once per pause.
        assert stats.pauses >= 3
        assert caplog.text.count("no longer reading events") < stats.pauses
        assert stats.outage_seconds > 0 and stats.published == stats.read
        assert "answers again" in caplog.text
        assert "reading events again" in caplog.text
    finally:
        sink.stop(timeout=2)
        running.join(timeout=5)
        cluster.down()
        sink.close()
        client.close()
        if revived is not None:
            revived.stop()


def test_sessions_are_saved_only_past_published_events_so_a_new_process_resumes_before_the_rest(
    make_sim: Callable[..., GatewaySimulator],
    make_redis_server: Callable[[], RedisServer],
    redis_url: str,
) -> None:
    # Sessions in one Redis, events in another that goes away with events buffered.
    events_redis = make_redis_server()
    sim = make_sim(shards=1)
    store = RedisSessionStore(redis_url, namespace=NAMESPACE)
    scheme = ShardScheme.range(range(1), 1)
    cluster = start_cluster(sim, scheme, session_store=store, event_types=DISPATCHES)
    sink = StreamSink(cluster, events_redis.url, stream=STREAM, commands=False, timeout=1.0)
    running = gevent.spawn(sink.run)
    sim.send_events(0, 20)
    assert sim.wait_until(lambda: sink.stats().published == 21, TIMEOUT)  # READY + 20
    events_redis.stop()
    sim.send_events(0, 30)
    assert sim.wait_until(lambda: sink.stats().buffered == 30, TIMEOUT)
    # The process goes down with 30 events read and not published.
    sessions = cluster.down_resumable()
    assert sink.stop(timeout=0.5) is False
    running.join(timeout=5)
    sink.close()
    assert sessions[0].sequence == 51
    assert store.load([0])[0].sequence == 21  # what Redis took, not what was read

    # The next process resumes from there: the 30 events come again and are published.
    revived = restart_on_same_port(events_redis)
    try:
        cluster = start_cluster(sim, scheme, session_store=store, event_types=DISPATCHES)
        sink = StreamSink(cluster, revived.url, stream=STREAM, commands=False)
        running = gevent.spawn(sink.run)
        client = redis.Redis.from_url(revived.url)
        assert sim.wait_until(
            lambda: set(numbered(published(client))) >= expected([0], 21, 50), TIMEOUT
        )
        (resume,) = sim.records.resumes
        assert resume.ok and resume.seq == 21 and resume.replayed == 30
        sink.stop(timeout=2)
        running.join(timeout=5)
        cluster.down()
        sink.close()
        client.close()
    finally:
        revived.stop()
        store.close()


def test_a_worker_rides_out_a_redis_restart(
    make_redis_server: Callable[[], RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gcluster.redis")
    server = make_redis_server()
    client = redis.Redis.from_url(server.url)

    def publish(numbers: range) -> None:
        for n in numbers:
            event = Event(EventType.MESSAGE_CREATE, "MESSAGE_CREATE", 0, n, {"n": n})
            client.xadd(STREAM, encode_event(0, event))

    worker = StreamWorker(server.url, "g", "w", stream=STREAM, block=0.2, timeout=1.0)
    got: list[int] = []
    revived: RedisServer | None = None
    try:
        publish(range(1, 6))
        with gevent.Timeout(TIMEOUT):
            for _, event in worker.events():
                got.append(event.sequence or 0)
                if len(got) == 5:
                    server.stop()  # gone while the worker is between events
                    revived = restart_on_same_port(server)  # empty: no persistence
                    publish(range(6, 9))
                if len(got) == 8:
                    break
        assert got == list(range(1, 9))
        assert "group 'g' is gone from Redis; creating it again" in caplog.text
    finally:
        worker.close()
        client.close()
        if revived is not None:
            revived.stop()


def test_stop_reports_events_it_could_not_publish(
    make_sim: Callable[..., GatewaySimulator], caplog: pytest.LogCaptureFixture
) -> None:
    sim = make_sim(shards=1)
    cluster = start_cluster(sim, ShardScheme.range(range(1), 1))
    # Nothing listens there.
    sink = StreamSink(
        cluster,
        f"redis://127.0.0.1:{_closed_port()}/0",
        commands=False,
        connect_timeout=0.2,
        timeout=0.5,
    )
    running = gevent.spawn(sink.run)
    try:
        sim.send_events(0, 5)
        assert sim.wait_until(lambda: sink.stats().buffered >= 5, TIMEOUT)
        assert sink.stop(timeout=0.3) is False
        running.join(timeout=5)
        assert running.dead
        assert "were not published to Redis" in caplog.text
        # No session store here: nothing will bring them back, and the line says so.
        assert "without a session store they are lost" in caplog.text
    finally:
        cluster.down()
        sink.close()


def _closed_port() -> int:
    from redis_server import free_port

    return free_port()


class SubclassedClient(redis.Redis):
    """Not a plain `redis.Redis`: the sink uses redis-py's own pipeline for it."""


def test_the_hand_packed_pipeline_stores_what_redis_py_would(
    make_sim: Callable[..., GatewaySimulator], make_redis_server: Callable[[], RedisServer]
) -> None:
    # Only a single server's client is packed by hand.
    redis_url = make_redis_server().url
    sim = make_sim(shards=1)
    cluster = start_cluster(sim, ShardScheme.range(range(1), 1), event_types=DISPATCHES)
    plain = raw_client(redis_url)
    generic = SubclassedClient.from_url(redis_url)
    sinks = [
        StreamSink(cluster, client=client, stream=stream, commands=False, maxlen=5)
        for client, stream in ((plain, "packed"), (generic, "pipelined"))
    ]
    try:
        sim.send_events(0, 20)
        received = [item for _, item in zip(range(21), cluster.events(), strict=False)]
        for sink in sinks:
            sink._send(sink._client, received)  # noqa: SLF001 - both paths, same events
        packed, pipelined = (plain.xrange(key) for key in ("packed", "pipelined"))
        assert [fields for _, fields in packed] == [fields for _, fields in pipelined]
        assert [decode_event(fields) for _, fields in packed] == received[-len(packed) :]
        assert 5 <= len(packed) < 21  # MAXLEN ~ trims whole nodes
    finally:
        cluster.down()
        plain.close()
        generic.close()


def test_a_key_of_the_wrong_type_is_reported_and_retried_until_fixed(
    make_sim: Callable[..., GatewaySimulator],
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = raw_client(redis_url)
    client.set(STREAM, "not a stream")
    sim = make_sim(shards=1)
    cluster = start_cluster(sim, ShardScheme.range(range(1), 1), event_types=DISPATCHES)
    sink = StreamSink(
        cluster, redis_url, stream=STREAM, commands=False, retry=Backoff(base=0.05, cap=0.1)
    )
    running = gevent.spawn(sink.run)
    try:
        sim.send_events(0, 10)
        assert sim.wait_until(lambda: sink.stats().failures >= 2, TIMEOUT)
        assert "WRONGTYPE" in (sink.stats().last_error or "")
        assert "WRONGTYPE" in caplog.text
        client.delete(STREAM)
        assert sim.wait_until(lambda: client.exists(STREAM) and sink.stats().buffered == 0, TIMEOUT)
        assert set(numbered(published(client))) == expected([0], 1, 10)
    finally:
        sink.stop(timeout=2)
        running.join(timeout=5)
        cluster.down()
        sink.close()
        client.close()


def test_events_left_in_the_old_default_stream_are_pointed_out(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = raw_client(redis_url)
    old = Event(EventType.MESSAGE_CREATE, "MESSAGE_CREATE", 0, 1, {"n": 1})
    new = Event(EventType.MESSAGE_CREATE, "MESSAGE_CREATE", 0, 2, {"n": 2})
    client.xadd(DEFAULT_STREAM, encode_event(0, old))  # published by gcluster 0.1
    client.xadd(STREAM, encode_event(0, new))  # and by 0.2
    worker = StreamWorker(redis_url, "g", "w", namespace=NAMESPACE, block=0.2)
    try:
        assert worker.stream == STREAM
        # The new default stream is read; the log says where the old events wait.
        assert collect(worker.events(), lambda got: len(got) == 1) == [(0, new)]
    finally:
        worker.close()
        client.close()
    assert "'gcluster:events' holds 1 events" in caplog.text


# --- one stream per event name -------------------------------------------------------------


def test_workers_read_only_the_event_streams_they_ask_for(
    make_sim: Callable[..., GatewaySimulator],
    gateways: Callable[..., Gateway],
    redis_url: str,
) -> None:
    sim = make_sim(shards=2, max_concurrency=2)
    gateways(sim, ShardScheme.range(range(2), 2), redis_url, per_event_streams=True)
    worker = StreamWorker(
        redis_url,
        "typing",
        "only",
        stream=STREAM,
        event_types=EventTypeFlags.MESSAGE_CREATE | EventTypeFlags.TYPING_START,
        block=0.2,
    )
    try:
        for shard_id in range(2):
            sim.send_events(shard_id, 10)  # 2 of each of 5 kinds per shard
        got = collect(worker.events(), lambda got: len(got) == 8, timeout=TIMEOUT)
        assert Counter(event.kind for _, event in got) == {
            EventType.MESSAGE_CREATE: 4,
            EventType.TYPING_START: 4,
        }
        assert worker.keys == [
            "{t}:events:MESSAGE_CREATE",
            "{t}:events:TYPING_START",
        ]
        client = raw_client(redis_url)
        assert client.xlen("{t}:events:MESSAGE_UPDATE") == 4
        assert not client.exists(STREAM)
        client.close()
    finally:
        worker.close()


def test_a_dispatcher_runs_handlers_over_a_stream_worker(
    make_sim: Callable[..., GatewaySimulator],
    gateways: Callable[..., Gateway],
    redis_url: str,
) -> None:
    sim = make_sim(shards=2, max_concurrency=2)
    gateways(sim, ShardScheme.range(range(2), 2), redis_url)
    worker = StreamWorker(redis_url, "dispatched", "d1", stream=STREAM, block=0.2)
    dispatcher = Dispatcher(worker, pool_size=4, ordering="channel")
    seen: list[tuple[int, int | None]] = []

    @dispatcher.on(EventType.MESSAGE_CREATE, EventType.MESSAGE_UPDATE)
    def on_message(shard_id: int, event: Event) -> None:
        gevent.sleep(0.01)  # a handler waiting on I/O
        seen.append((shard_id, event_number(event.data)))

    running = gevent.spawn(dispatcher.run)
    try:
        for shard_id in range(2):
            sim.send_events(shard_id, 10)
        assert sim.wait_until(lambda: len(seen) == 8, TIMEOUT)
        assert sorted(seen) == sorted((s, n) for s in range(2) for n in (1, 2, 6, 7))
        assert dispatcher.stop(timeout=5)
        running.join(timeout=5)
        assert running.dead and dispatcher.stats().calls_failed == 0
    finally:
        worker.close()


# --- commands -------------------------------------------------------------------------------


def test_commands_are_checked_by_the_worker_and_stale_ones_dropped_by_the_gateway(
    make_sim: Callable[..., GatewaySimulator],
    gateways: Callable[..., Gateway],
    redis_url: str,
) -> None:
    sim = make_sim(shards=2, max_concurrency=2)
    gateway = gateways(sim, ShardScheme.range(range(2), 2), redis_url)
    client = raw_client(redis_url)
    worker = StreamWorker(redis_url, "cmd", "sender", namespace=NAMESPACE, stream=STREAM)
    try:
        assert sim.wait_until(lambda: client.exists(shard_count_key(NAMESPACE)), TIMEOUT)
        with pytest.raises(InvalidCommand):
            worker.send_command(RequestGuildMembers(guild_id=1, query="x", limit=500))
        with pytest.raises(ValueError, match="exactly one"):
            worker.send_command(UpdatePresence(status="idle"))
        with pytest.raises(ValueError, match="no shard 7"):
            with StreamWorker(redis_url, "cmd", total=2) as other:
                other.command(7, UpdatePresence())

        # A command two minutes old (by the Redis clock) is not sent late.
        now_ms = int(client.time()[0] * 1000)
        payload = b'{"op":3,"d":{"since":null,"activities":[],"status":"dnd","afk":false}}'
        client.xadd(
            inbox_key(NAMESPACE, 1), {"p": payload, "by": "old"}, id=f"{now_ms - 120_000}-0"
        )
        guild = sim.guild_ids(1)[0]
        worker.send_command(RequestGuildMembers(guild_id=guild, user_ids=[1], nonce="fresh"))
        assert sim.wait_until(lambda: len(sim.records.commands) >= 1, TIMEOUT)
        assert sim.wait_until(lambda: gateway.sink.inbox.stats().expired == 1, TIMEOUT)
        (command,) = sim.records.commands
        assert command.shard_id == 1 and command.data["nonce"] == "fresh"
        inbox = gateway.sink.inbox
        assert inbox is not None
        stats = inbox.stats()
        assert (stats.received, stats.sent, stats.expired, stats.failed) == (2, 1, 1, 0)

        # Entry ids are per stream: two inboxes may hold the same one at once.
        now_ms = int(client.time()[0] * 1000) + 1000
        for shard_id in range(2):
            same = UpdatePresence(status="idle", since=shard_id)
            fields = {"p": json.dumps(same.payload()), "by": "twin"}
            client.xadd(inbox_key(NAMESPACE, shard_id), fields, id=f"{now_ms}-0")
        assert sim.wait_until(lambda: len(sim.records.commands) == 3, TIMEOUT)
        twins = sorted((c.shard_id, c.data["since"]) for c in sim.records.commands if c.op == 3)
        assert twins == [(0, 0), (1, 1)]
    finally:
        worker.close()
        client.close()


# --- the example ------------------------------------------------------------------------------


# The example's service on a Redis Cluster is what test_service.py proves.
@single_only
def test_the_workers_example_runs_a_service_and_two_workers(redis_url: str) -> None:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "workers.py"), "--simulate", "--redis", redis_url],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=path),
        cwd=ROOT,
    )
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr}"
    # 2 shards × 10 events: 4 messages, each answered by a member chunk through the gateway.
    assert len(re.findall(r"^\[w[12]\] shard [01]: message from \w+$", out, re.M)) == 4
    assert len(re.findall(r"^\[w[12]\] shard [01]: member chunk \(1 members\)$", out, re.M)) == 4
    assert re.search(r"^summary: 4 messages and 4 member chunks handled by 2 workers ", out, re.M)
    assert out.rstrip().endswith("gateway service exited 0")
