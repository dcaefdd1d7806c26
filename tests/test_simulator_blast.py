"""The simulator's benchmark modes: blasts, paced sends, varied traffic, the child process.

A blast is built, compressed and framed before it is written, so these tests
check what benchmarks rely on: the client receives exactly the blasted
dispatches, in order, numbered and sequenced like any others; a RESUME in the
middle of one loses nothing; the bytes on the wire are counted; and the
simulator in a child process behaves like the one in the test's own hub.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable

import gevent
import gevent.socket
import pytest
import websocket
from conftest import TIMEOUT, collect, has_numbers, numbers

from gcluster import Cluster, EventType, Intents, Message, Shard, ShardScheme
from gcluster.events import Event
from gcluster.testing import (
    STREAM_INTENTS,
    CloseConnection,
    DropConnection,
    GatewaySimulator,
    InvalidateSession,
    Reconnect,
    SimulatorProcess,
    StopHeartbeatAcks,
    due_offset,
    event_number,
    gateway,
    traffic,
    wire,
)
from gcluster.testing.payloads import shard_for_guild
from gcluster.testing.process import SimulatorError

MakeSim = Callable[..., GatewaySimulator]
SHARDS = 4
INTENTS = Intents.GUILDS | STREAM_INTENTS


def make_cluster(sim: GatewaySimulator, **options: object) -> Cluster:
    cluster = Cluster(sim.token, INTENTS, api_base=sim.api_base, **options)
    cluster.up(timeout=TIMEOUT)
    assert cluster.wait_until_ready(TIMEOUT)
    return cluster


def live(sim: GatewaySimulator, shard_ids: range) -> Callable[[], bool]:
    def check() -> bool:
        sessions = sim.sessions
        return all(sid in sessions and sessions[sid].connected for sid in shard_ids)

    return check


def sequences(received: list[tuple[int, Event]], shard_id: int) -> list[int]:
    return [e.sequence for sid, e in received if sid == shard_id and e.sequence is not None]


# -- blasts --------------------------------------------------------------------


@pytest.mark.parametrize("compression", [True, False], ids=["zlib-stream", "uncompressed"])
def test_a_cluster_receives_exactly_the_blasted_events_in_order(
    make_sim: MakeSim, compression: bool
) -> None:
    sim = make_sim(shards=SHARDS, max_concurrency=SHARDS)
    cluster = make_cluster(sim, compression=compression)
    try:
        assert sim.wait_until(live(sim, range(SHARDS)), timeout=TIMEOUT)
        blasts = [sim.blast(shard_id, 2_000) for shard_id in range(SHARDS)]
        received = collect(cluster.events(), has_numbers(range(SHARDS), 2_000))
        for shard_id, blast in enumerate(blasts):
            assert numbers(received, shard_id) == list(range(1, 2_001))
            # READY was 1; the blast took the next 2,000 sequence numbers.
            assert sequences(received, shard_id) == list(range(1, 2_002))
            assert (blast.first_s, blast.last_s) == (2, 2_001)
            assert (blast.first_number, blast.last_number) == (1, 2_000)
        kinds = {e.kind for _, e in received if e.sequence is not None and e.sequence > 1}
        assert kinds == {EventType.MESSAGE_CREATE}
        for blast in blasts:
            record = blast.wait(TIMEOUT)
            assert record is not None and record.written == record.events == 2_000
            assert record.started is not None and record.finished >= record.started
            assert record.send_rate > 0 and record.prepare_seconds > 0
            assert record.payload_bytes > 2_000 * 1_000
        assert sorted(r.shard_id for r in sim.records.blasts) == list(range(SHARDS))
        # One record per blast, not one per dispatch: only READY was recorded.
        assert len(sim.records.dispatches) == SHARDS
    finally:
        cluster.down()


def test_blasted_and_sent_events_share_one_numbered_stream(make_sim: MakeSim) -> None:
    sim = make_sim(shards=1)
    shard = Shard(0, 1, sim.token, INTENTS, gateway_url=sim.url)
    shard.start()
    try:
        assert shard.wait_until_ready(TIMEOUT)
        sim.send_events(0, 10)
        sim.blast(0, 100, kinds=["MESSAGE_CREATE", "TYPING_START", "MESSAGE_DELETE"])
        sim.send_events(0, 10)
        received = collect(shard.events(), has_numbers([0], 120))
        assert numbers(received, 0) == list(range(1, 121))
        assert sequences(received, 0) == list(range(1, 122))
        names = [e.name for _, e in received if e.sequence is not None][11:14]
        assert names == ["MESSAGE_CREATE", "TYPING_START", "MESSAGE_DELETE"]
    finally:
        shard.down()


def test_a_resume_in_the_middle_of_a_blast_loses_nothing(make_sim: MakeSim) -> None:
    sim = make_sim(shards=2, max_concurrency=2)
    cluster = make_cluster(sim)
    try:
        assert sim.wait_until(live(sim, range(2)), timeout=TIMEOUT)
        sim.blast(1, 5_000)
        # Close from the client's side after 1,000: whatever the simulator had
        # written beyond that is dropped with the connection, and replayed.
        received = collect(cluster.events(), has_numbers([1], 1_000))
        cluster.send(1, Message.close(4000, "mid-blast"))
        received += collect(cluster.events(), has_numbers([1], 5_000))
        got = numbers(received, 1)
        assert got == list(range(1, 5_001)), (len(got), len(set(got)))
        assert sim.wait_until(lambda: any(r.ok for r in sim.records.resumes), timeout=TIMEOUT)
        (resume,) = sim.records.resumes
        assert resume.ok and resume.shard_id == 1
        assert len(sim.records.identifies) == 2  # no new session
        # A blast after the resume goes on with the same session's numbers.
        assert sim.wait_until(live(sim, range(2)), timeout=TIMEOUT)
        blast = sim.blast(1, 10)
        assert blast.first_s == 5_002 + 1  # READY, 5,000 blasted, RESUMED
        received = collect(cluster.events(), has_numbers([1], 5_010))
        assert numbers(received, 1) == list(range(5_001, 5_011))
    finally:
        cluster.down()


def test_a_server_close_after_a_blast_resumes_from_the_log(make_sim: MakeSim) -> None:
    sim = make_sim(shards=1)
    shard = Shard(0, 1, sim.token, INTENTS, gateway_url=sim.url)
    shard.start()
    try:
        assert shard.wait_until_ready(TIMEOUT)
        sim.blast(0, 300)
        sim.close_shard(0, 4000)
        # Sent while the shard is away: kept in the session with the blast.
        sim.send_events(0, 20)
        received = collect(shard.events(), has_numbers([0], 320))
        assert numbers(received, 0) == list(range(1, 321))
        assert sim.wait_until(lambda: len(sim.records.resumes) == 1, timeout=TIMEOUT)
        assert sim.records.resumes[0].ok
    finally:
        shard.down()


def test_blast_needs_a_live_connection_and_known_kinds(make_sim: MakeSim) -> None:
    sim = make_sim(shards=2)
    with pytest.raises(ValueError, match="no live connection"):
        sim.blast(0, 10)
    with pytest.raises(ValueError):
        sim.blast(2, 10)
    with pytest.raises(ValueError):
        sim.blast(0, 0)
    with pytest.raises(ValueError, match="kinds"):
        sim.blast(0, 10, kinds=["GUILD_CREATE"])
    with pytest.raises(ValueError, match="rate"):
        sim.send_paced([0], 10, rate=0)


# -- bytes on the wire ---------------------------------------------------------


def test_traffic_counts_every_byte_written(make_sim: MakeSim) -> None:
    # Nothing but the blast may be written in the window the counters cover:
    # a heartbeat ACK there would add a message (CI saw 1,001). So heartbeats
    # are left unanswered, and are far enough apart that the unanswered one
    # cannot make the client reconnect before the test ends.
    sim = make_sim(shards=2, max_concurrency=2, heartbeat_interval=60)
    cluster = make_cluster(sim, shard_scheme=ShardScheme.range(range(1), 2), compression=True)
    plain = make_cluster(sim, shard_scheme=ShardScheme.range(range(1, 2), 2), compression=False)
    try:
        assert sim.wait_until(live(sim, range(2)), timeout=TIMEOUT)
        for shard_id in range(2):
            assert sim.apply_fault(shard_id, StopHeartbeatAcks()) == 1
        before = {cid: (t.messages, t.wire_bytes) for cid, t in sim.records.traffic.items()}
        zlib_blast, plain_blast = sim.blast(0, 1_000), sim.blast(1, 1_000)
        collect(cluster.events(), has_numbers([0], 1_000))
        collect(plain.events(), has_numbers([1], 1_000))
        for blast in (zlib_blast, plain_blast):
            record = blast.wait(TIMEOUT)
            assert record is not None
            counted = sim.records.traffic[record.connection_id]
            messages, wire_bytes = before[record.connection_id]
            assert counted.messages - messages == 1_000
            assert counted.wire_bytes - wire_bytes == record.wire_bytes
        zlib_record, plain_record = zlib_blast.record, plain_blast.record
        assert zlib_record is not None and plain_record is not None
        # Same kind of traffic, compressed about as much as Discord's.
        ratio = plain_record.wire_bytes / zlib_record.wire_bytes
        assert 3.0 < ratio < 7.0, ratio
    finally:
        cluster.down()
        plain.down()


def test_zstd_stream_is_refused_with_4002_when_not_served(
    make_sim: MakeSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As without the zstandard package installed.
    monkeypatch.setattr(gateway, "COMPRESSIONS", frozenset({"zlib-stream"}))
    sim = make_sim()
    sock = gevent.socket.create_connection(("127.0.0.1", sim.port))
    ws = websocket.create_connection(
        f"{sim.url}/?v=10&encoding=json&compress=zstd-stream",
        socket=sock,
        enable_multithread=False,
    )
    ws.settimeout(TIMEOUT)
    opcode, frame = ws.recv_data_frame(True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert int.from_bytes(frame.data[:2], "big") == 4002
    ws.close()
    assert "zlib-stream" in wire.COMPRESSIONS


# -- paced sends -----------------------------------------------------------------


def test_paced_dispatches_carry_their_due_time_and_go_out_on_time(make_sim: MakeSim) -> None:
    sim = make_sim(shards=2, max_concurrency=2)
    cluster = make_cluster(sim)
    try:
        assert sim.wait_until(live(sim, range(2)), timeout=TIMEOUT)
        paced = sim.send_paced([0, 1], 400, rate=2_000)
        assert paced.events == 400
        arrivals: list[tuple[int, float, float]] = []

        def until(got: list[tuple[int, Event]]) -> bool:
            sid, event = got[-1]
            offset = due_offset(event.data) if isinstance(event.data, dict) else None
            if offset is not None:
                arrivals.append((sid, offset, time.monotonic()))
            return len(arrivals) == 400

        collect(cluster.events(), until)
        offsets = [offset for _, offset, _ in arrivals]
        # Round-robin over the shards at 2,000/s: one every 0.5 ms, 0.2 s in all.
        assert sorted(offsets) == [i / 2_000 for i in range(400)]
        assert all(arrived >= paced.start + offset for _, offset, arrived in arrivals)
        records = paced.wait(TIMEOUT)
        assert records is not None and [r.written for r in records] == [200, 200]
        # Written at the rate asked for, not all at once.
        assert min(r.started or 0 for r in records) >= paced.start - 0.001
        assert max(r.finished for r in records) - paced.start >= 0.19
    finally:
        cluster.down()


# -- varied traffic ------------------------------------------------------------


def test_varied_traffic_is_deterministic_discord_sized_and_on_its_shard() -> None:
    first = traffic.BodyPool(traffic.VariedStream(3, 16), size=500).take(["MESSAGE_CREATE"], 500)
    again = traffic.BodyPool(traffic.VariedStream(3, 16), size=500).take(["MESSAGE_CREATE"], 500)
    assert first == again
    other = traffic.BodyPool(traffic.VariedStream(3, 16, seed=1), size=500)
    assert other.take(["MESSAGE_CREATE"], 500) != first
    sizes = [len(body.encode()) for _, body in first]
    assert 1_000 < sum(sizes) / len(sizes) < 1_500
    stream = traffic.VariedStream(3, 16)
    for name, data, number in stream.take(range(1, 101), stream.kinds):
        assert event_number(data) == number
        assert shard_for_guild(int(data["guild_id"]), 16) == 3, name
    # zlib-stream over them, one sync flush per message, as the gateway sends it.
    deflate = zlib.compressobj()
    compressed = sum(
        len(deflate.compress(body.encode()) + deflate.flush(zlib.Z_SYNC_FLUSH)) for _, body in first
    )
    assert 3.0 < sum(sizes) / compressed < 6.0


def test_a_pool_hands_out_its_bodies_in_turn() -> None:
    pool = traffic.BodyPool(traffic.VariedStream(0, 1), size=3)
    bodies = [body for _, body in pool.take(["MESSAGE_CREATE"], 7)]
    assert bodies[:3] == bodies[3:6] and bodies[6] == bodies[0]
    assert len(set(bodies[:3])) == 3
    with pytest.raises(ValueError):
        pool.take(["READY"], 1)


# -- a simulator in its own process ----------------------------------------------


def test_a_simulator_process_serves_and_blasts() -> None:
    # No heartbeats during the test, so the message counts are exact.
    options = {"shards": 2, "max_concurrency": 2, "identify_interval": 0, "heartbeat_interval": 1e3}
    with SimulatorProcess(options) as sim:
        cluster = Cluster(sim.token, INTENTS, api_base=sim.api_base)
        try:
            cluster.up(timeout=TIMEOUT)
            assert cluster.wait_until_ready(TIMEOUT)
            assert sim.wait_connected([0, 1], timeout=TIMEOUT)
            queued = sim.blast([0, 1], 500)
            assert [q["events"] for q in queued] == [500, 500]
            assert sim.send_events(0, 5) == list(range(501, 506))
            first, second = has_numbers([0], 505), has_numbers([1], 500)
            # Both see every event: `&` does not short-circuit.
            received = collect(cluster.events(), lambda got: first(got) & second(got))
            assert numbers(received, 0) == list(range(1, 506))
            assert numbers(received, 1) == list(range(1, 501))
            records = sim.wait_blasts(timeout=TIMEOUT)
            assert [r["written"] for r in records] == [500, 500]
            stats = sim.stats()
            assert stats["identifies"] == 2 and stats["cpu_seconds"] > 0
            by_shard = {t["shard_id"]: t for t in sim.traffic()}
            assert by_shard[0]["messages"] == 1 + 1 + 500 + 5  # HELLO, READY, ...
            assert by_shard[0]["compression"] == "zlib-stream"
        finally:
            cluster.down()
    with pytest.raises(Exception, match="exited|gone"):
        sim.stats()


def test_a_simulator_process_applies_faults_by_name() -> None:
    options = {"shards": 1, "identify_interval": 0, "heartbeat_interval": 1e3}
    faults = (
        Reconnect(),
        InvalidateSession(resumable=True),
        CloseConnection(code=1001, reason="test"),
        DropConnection(),
    )
    with SimulatorProcess(options) as sim:
        shard = Shard(0, 1, sim.token, INTENTS, gateway_url=sim.url)
        shard.start()
        try:
            assert shard.wait_until_ready(TIMEOUT)
            received: list[tuple[int, Event]] = []
            for round_, fault in enumerate(faults, 1):
                assert sim.wait_connected([0], timeout=TIMEOUT)
                assert sim.apply_fault(0, fault) == 1
                # Sent while the shard is away (or about to be): replayed on RESUME.
                sim.send_events(0, 10)
                received += collect(shard.events(), has_numbers([0], 10 * round_))
            assert numbers(received, 0) == list(range(1, 41))
            stats = sim.stats()
            assert stats["resumes"] == len(faults) and stats["identifies"] == 1
            with pytest.raises(SimulatorError, match="no fault 'Meteor'"):
                sim.call("apply_fault", {"shard_id": 0, "fault": "Meteor"})
            with pytest.raises(SimulatorError, match="no shard 1"):
                sim.apply_fault(1, Reconnect())
        finally:
            shard.down()
