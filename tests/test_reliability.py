"""Behaviour beyond the happy path: restarts, slow consumers, a blocked hub, saved sessions."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import gevent
import pytest
from conftest import TIMEOUT, collect, has_numbers, numbers

from gcluster import Cluster, EventType, NoOpQueue, Stage
from gcluster.sessions import MemorySessionStore
from gcluster.testing import STREAM_INTENTS, GatewaySimulator

MakeSim = Callable[..., GatewaySimulator]


def make_cluster(sim: GatewaySimulator, **options: object) -> Cluster:
    return Cluster(sim.token, STREAM_INTENTS, api_base=sim.api_base, **options)


def test_restart_resumes_a_connected_shard(make_sim: MakeSim) -> None:
    sim = make_sim(shards=2, max_concurrency=2)
    cluster = make_cluster(sim)
    cluster.up(timeout=TIMEOUT)
    try:
        assert cluster.wait_until_ready(TIMEOUT)
        sim.send_events(1, 20)
        collect(cluster.events(), has_numbers([1], 20))
        cluster.restart(1)
        sim.send_events(1, 20)
        received = collect(cluster.events(), has_numbers([1], 40))
        assert numbers(received, 1) == list(range(21, 41))
        assert sim.wait_until(
            lambda: any(r.ok and r.shard_id == 1 for r in sim.records.resumes), TIMEOUT
        )
        assert len(sim.records.identifies) == 2
    finally:
        cluster.down()


def test_restart_revives_a_fatally_closed_shard(make_sim: MakeSim) -> None:
    sim = make_sim(shards=1)
    # No identify spacing: the second IDENTIFY would otherwise wait 5 s.
    cluster = make_cluster(sim, queue=NoOpQueue())
    cluster.up(timeout=TIMEOUT)
    try:
        assert cluster.wait_until_ready(TIMEOUT)
        sim.close_shard(0, 4014, "Disallowed intent(s).")
        assert sim.wait_until(lambda: cluster.info()[0].stage is Stage.FATALLY_CLOSED, TIMEOUT)
        assert cluster.info()[0].error is not None and cluster.info()[0].error.code == 4014
        cluster.restart(0)
        assert cluster.wait_until_ready(TIMEOUT)
        assert cluster.info()[0].error is None
        assert len(sim.records.identifies) == 2  # a fatal close ends the session
    finally:
        cluster.down()


def test_a_slow_consumer_blocking_the_hub_briefly_causes_no_zombie_and_loses_nothing(
    make_sim: MakeSim,
) -> None:
    interval = 0.4
    sim = make_sim(shards=2, max_concurrency=2, heartbeat_interval=interval)
    cluster = make_cluster(sim)
    cluster.up(timeout=TIMEOUT)
    try:
        assert cluster.wait_until_ready(TIMEOUT)
        for shard_id in range(2):
            sim.send_events(shard_id, 15)
        started = time.monotonic()
        received = []
        for item in cluster.events():
            received.append(item)
            if item[1].sequence is not None and item[1].kind is not EventType.READY:
                # Blocks the whole hub (not gevent-aware) for a quarter interval.
                time.sleep(interval / 4)
            if has_numbers_done(received):
                break
        # The consumer spent several heartbeat intervals falling behind.
        assert time.monotonic() - started > 3 * interval
        for shard_id in range(2):
            assert numbers(received, shard_id) == list(range(1, 16))
        assert not sim.records.resumes and len(sim.records.identifies) == 2
        assert all(c.code is None or c.initiator != "client" for c in sim.records.closes)
        assert all(i.stage is Stage.CONNECTED for i in cluster.info().values())
    finally:
        cluster.down()


def has_numbers_done(received: list) -> bool:  # type: ignore[type-arg]
    return all(len(numbers(received, shard_id)) == 15 for shard_id in range(2))


def test_backlog_is_visible_and_warned_about(
    make_sim: MakeSim, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gcluster.cluster")
    sim = make_sim(shards=1)
    cluster = make_cluster(sim, backlog_warning=100)
    cluster.up(timeout=TIMEOUT)
    try:
        assert cluster.wait_until_ready(TIMEOUT)
        sim.send_events(0, 300)
        assert sim.wait_until(lambda: cluster.backlog >= 300, TIMEOUT)
        assert sim.wait_until(
            lambda: any("falling behind" in r.getMessage() for r in caplog.records), TIMEOUT
        )
        collect(cluster.events(), has_numbers([0], 300))
        assert cluster.backlog < 10
    finally:
        cluster.down()


def test_a_late_heartbeat_is_reported(make_sim: MakeSim, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gcluster.shard")
    interval = 1.0  # the shortest the client accepts
    sim = make_sim(shards=1, heartbeat_interval=interval)
    cluster = make_cluster(sim)
    cluster.up(timeout=TIMEOUT)
    try:
        assert cluster.wait_until_ready(TIMEOUT)
        assert sim.wait_until(lambda: len(sim.records.heartbeats) >= 1, TIMEOUT)
        time.sleep(interval * 1.5)  # blocks the hub: the next heartbeat cannot go out
        assert sim.wait_until(
            lambda: any(
                "heartbeat" in r.getMessage() and "late" in r.getMessage() for r in caplog.records
            ),
            TIMEOUT,
        )
        message = next(r.getMessage() for r in caplog.records if "late" in r.getMessage())
        assert message.startswith("shard 0: heartbeat ") and "hub was blocked" in message
    finally:
        cluster.down()


def test_session_store_keeps_what_was_consumed_so_unhandled_events_come_again(
    make_sim: MakeSim,
) -> None:
    sim = make_sim(shards=1)
    store = MemorySessionStore()
    first = make_cluster(sim, session_store=store)
    first.up(timeout=TIMEOUT)
    sim.send_events(0, 50)
    events = first.events()
    handled = 0
    while handled < 21:
        _, event = next(events)
        if event.sequence is not None and event.kind is not EventType.READY:
            handled += 1
    # Event 20 is finished (the application came back for more); event 21 is
    # being handled when the process stops, and 22..50 were never looked at.
    assert sim.wait_until(lambda: first.info()[0].sequence == 51, TIMEOUT)
    received_sessions = first.down_resumable()
    assert received_sessions[0].sequence == 51  # what the shard had received
    assert store.sessions[0].sequence == 21  # what the application had finished: s of event 20
    assert store.sessions[0].session_id == received_sessions[0].session_id

    second = make_cluster(sim, session_store=store)
    second.up(timeout=TIMEOUT)
    try:
        received = collect(second.events(), has_numbers([0], 50))
        assert numbers(received, 0) == list(range(21, 51))
        assert len(sim.records.identifies) == 1
        assert [r.seq for r in sim.records.resumes if r.ok] == [21]
    finally:
        second.down()
    assert store.sessions == {}  # down() closed with 1000: the session is over


class _AlwaysReadySocket:
    """A socket whose every read returns data at once: a shard that never waits."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def recv(self, size: int) -> bytes:
        if self.position >= len(self.data):
            gevent.sleep(60)  # drained: now it waits like a quiet connection
        chunk = self.data[self.position : self.position + min(size, 16_384)]
        self.position += len(chunk)
        return chunk

    def sendall(self, data: bytes) -> None:
        pass  # what the client sends does not matter here

    def shutdown(self, how: int) -> None:
        pass

    def close(self) -> None:
        pass


def _text_frame(payload: bytes) -> bytes:
    n = len(payload)
    header = bytes([0x81, n]) if n < 126 else bytes([0x81, 126]) + n.to_bytes(2, "big")
    return header + payload


def test_a_shard_whose_socket_always_has_data_still_lets_the_hub_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gcluster import shard as shard_module
    from gcluster.transport import Connection

    messages = [
        b'{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":41250}}',
        b'{"t":"READY","s":1,"op":0,"d":{"session_id":"x","resume_gateway_url":"ws://x"}}',
    ] + [b'{"t":"TYPING_START","s":%d,"op":0,"d":{"n":%d}}' % (n, n) for n in range(2, 200_000)]
    sock = _AlwaysReadySocket(b"".join(_text_frame(m) for m in messages))
    monkeypatch.setattr(
        shard_module.Connection,
        "open",
        classmethod(lambda cls, url, **kw: Connection(sock, url)),
    )
    shard = shard_module.Shard(0, 1, "token", 1, gateway_url="ws://x", compression=False)
    ticks: list[int] = []

    def tick() -> None:
        # Each turn needs the reader to give the hub back once.
        for _ in range(5):
            gevent.sleep(0)
            ticks.append(sock.position)

    shard.start()
    ticker = gevent.spawn(tick)
    try:
        # Without yielding, the reader would keep the hub until the data ran out.
        assert ticker.join(timeout=TIMEOUT) is None and len(ticks) == 5
        assert ticks[-1] < len(sock.data), "the ticker only ran once the reader had nothing left"
        # The iterator got its turns too: events arrived while reading went on.
        for _, event in shard.events():
            if event.sequence == 1000:
                break
        assert sock.position < len(sock.data)
    finally:
        shard.down(timeout=1)
