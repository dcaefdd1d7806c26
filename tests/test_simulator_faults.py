"""Loopback tests of the simulator's faults and rate rules, driven by websocket-client.

Each fault is applied to a live connection of a bare client (the helpers of
`test_simulator`) and checked from both sides: what the client receives, and
what the simulator recorded and kept of the session. Waits have timeouts;
where a rule is about time passing, the test waits for the clock, not for luck.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Iterator

import pytest
import websocket
from test_simulator import TOKEN, Client, connect, http_get

from gcluster.testing import (
    CloseConnection,
    ExpireSession,
    GarbageFrame,
    GatewaySimulator,
    HugeDispatch,
    RefuseConnections,
    Stall,
    StopHeartbeatAcks,
    UnknownOpcode,
    event_number,
)

INVALID = {"t": None, "s": None, "op": 9, "d": False}


@pytest.fixture
def sim() -> Iterator[GatewaySimulator]:
    with GatewaySimulator(token=TOKEN, heartbeat_interval=12.5) as simulator:
        yield simulator


@pytest.fixture
def client(sim: GatewaySimulator) -> Iterator[Client]:
    c = connect(sim)
    yield c
    c.drop()


def gateway_bot(sim: GatewaySimulator) -> dict[str, int]:
    status, body = http_get(sim, "/api/v10/gateway/bot", Authorization=f"Bot {TOKEN}")
    assert status == 200
    return body["session_start_limit"]  # type: ignore[no-any-return]


def resume_on_new_connection(sim: GatewaySimulator, session_id: str, seq: int) -> Client:
    again = connect(sim, base=sim.resume_url)
    assert again.recv()["op"] == 10
    again.resume(session_id, seq)
    return again


# -- close codes ------------------------------------------------------------------

# 4007, 4009 and the fatal codes end the session; every other code keeps it
# (1000/1001 included when the server sends them).
SESSION_ENDING = {4004, 4007, 4009, 4010, 4011, 4012, 4013, 4014}


@pytest.mark.parametrize("code", [1000, 1001, *range(4000, 4015)])
def test_every_close_code_reaches_the_client_and_ends_or_keeps_the_session(
    sim: GatewaySimulator, client: Client, code: int
) -> None:
    session_id = client.ready()["d"]["session_id"]
    assert sim.apply_fault(0, CloseConnection(code=code, reason="test")) == 1
    assert client.expect_close() == code
    assert sim.wait_until(lambda: sim.records.closes)
    [close] = sim.records.closes
    assert (close.code, close.reason, close.initiator) == (code, "test", "server")

    again = resume_on_new_connection(sim, session_id, 1)
    if code in SESSION_ENDING:
        assert sim.session(0) is None
        assert again.recv() == INVALID
    else:
        assert again.recv()["t"] == "RESUMED"
    again.close()


# -- heartbeats -------------------------------------------------------------------


def test_stop_heartbeat_acks_turns_the_connection_into_a_zombie(
    sim: GatewaySimulator, client: Client
) -> None:
    session_id = client.ready()["d"]["session_id"]
    client.send(1, 1)
    assert client.recv()["op"] == 11
    assert sim.apply_fault(0, StopHeartbeatAcks()) == 1
    client.send(1, 1)
    assert sim.wait_until(lambda: len(sim.records.heartbeats) == 2)
    sim.send_events(0, 1)
    # The next message is the dispatch: no ACK was queued before it.
    assert event_number(client.recv()["d"]) == 1
    assert [h.acked for h in sim.records.heartbeats] == [True, False]
    [fault] = sim.records.faults
    assert (fault.shard_id, fault.fault, fault.connections) == (0, StopHeartbeatAcks(), 1)

    client.close(4000)  # what a client does with a zombie: close and resume
    again = resume_on_new_connection(sim, session_id, 2)
    assert again.recv()["t"] == "RESUMED"
    again.send(1, 3)
    assert again.recv()["op"] == 11  # a new connection is acknowledged again
    assert sim.records.heartbeats[-1].acked
    again.close()


# -- undecodable and unexpected messages --------------------------------------------


def test_garbage_zlib_breaks_the_clients_inflater(sim: GatewaySimulator) -> None:
    client = connect(sim, compress=True)
    client.ready()
    assert sim.apply_fault(0, GarbageFrame()) == 1
    with pytest.raises(zlib.error):
        client.recv()
    assert client.frames[-1].endswith(b"\x00\x00\xff\xff")
    session = sim.session(0)
    assert session is not None and session.sequence == 1  # the session is untouched
    client.close(4000)


def test_garbage_json_on_a_compressed_connection_keeps_the_stream(
    sim: GatewaySimulator,
) -> None:
    client = connect(sim, compress=True)
    client.ready()
    sim.apply_fault(0, GarbageFrame(kind="json"))
    with pytest.raises(ValueError):
        client.recv()  # inflates fine, but is not JSON
    sim.send_events(0, 1)
    assert event_number(client.recv()["d"]) == 1  # the zlib stream goes on
    client.close()


@pytest.mark.parametrize("kind", ["zlib", "json"])
def test_garbage_on_an_uncompressed_connection_is_a_text_frame_that_is_not_json(
    sim: GatewaySimulator, client: Client, kind: str
) -> None:
    client.ready()
    sim.apply_fault(0, GarbageFrame(kind=kind))  # type: ignore[arg-type]
    opcode, frame = client.ws.recv_data_frame(True)
    assert opcode == websocket.ABNF.OPCODE_TEXT
    with pytest.raises(ValueError):
        json.loads(frame.data)


def test_garbage_frame_kind_is_checked() -> None:
    with pytest.raises(ValueError):
        GarbageFrame(kind="xml")  # type: ignore[arg-type]


@pytest.mark.parametrize("op", [99, 42])
def test_unknown_opcode_is_well_formed(sim: GatewaySimulator, client: Client, op: int) -> None:
    client.ready()
    sim.apply_fault(0, UnknownOpcode(op=op))
    assert client.recv() == {"t": None, "s": None, "op": op, "d": None}
    session = sim.session(0)
    assert session is not None and session.sequence == 1  # op 99 is not a dispatch


# -- huge dispatches ------------------------------------------------------------------


def test_a_huge_dispatch_is_numbered_sequenced_and_replayable(sim: GatewaySimulator) -> None:
    client = connect(sim, compress=True)
    session_id = client.ready()["d"]["session_id"]
    sim.send_events(0, 2)
    assert sim.apply_fault(0, HugeDispatch(size_bytes=1_000_000)) == 1
    sim.send_events(0, 1)
    messages = client.recv_dispatches(4)
    assert [event_number(m["d"]) for m in messages] == [1, 2, 3, 4]
    assert [m["s"] for m in messages] == [2, 3, 4, 5]
    huge = messages[2]
    assert huge["t"] == "GUILD_CREATE"
    # About the size asked for, as sent (compact JSON, UTF-8).
    assert 1_000_000 <= len(json.dumps(huge["d"], separators=(",", ":")).encode()) < 1_002_000
    assert int(huge["d"]["id"]) in sim.guild_ids(0)
    assert sim.wait_until(lambda: len(sim.records.dispatches) == 5)
    assert [r.number for r in sim.records.dispatches] == [None, 1, 2, 3, 4]

    client.close(4000)
    again = resume_on_new_connection(sim, session_id, 3)
    replayed = again.recv_dispatches(2)
    assert [(m["t"], m["s"], event_number(m["d"])) for m in replayed] == [
        ("GUILD_CREATE", 4, 3),
        (replayed[1]["t"], 5, 4),
    ]
    assert again.recv()["t"] == "RESUMED"
    again.close()


def test_a_huge_dispatch_defaults_to_eight_megabytes() -> None:
    assert HugeDispatch().size_bytes == 8_000_000
    with pytest.raises(ValueError):
        HugeDispatch(size_bytes=-1)


# -- stalls ---------------------------------------------------------------------------


def test_a_stall_holds_dispatches_and_acks_then_sends_them_in_order(
    sim: GatewaySimulator, client: Client
) -> None:
    client.ready()
    assert sim.wait_until(lambda: len(sim.records.dispatches) == 1)
    started = time.monotonic()
    assert sim.apply_fault(0, Stall(seconds=0.4)) == 1
    sim.send_events(0, 3)
    client.send(1, 1)
    assert sim.wait_until(lambda: sim.records.heartbeats)
    # Nothing reaches the socket while the connection is stalled.
    assert not sim.wait_until(lambda: len(sim.records.dispatches) > 1, timeout=0.2)
    messages = [client.recv() for _ in range(4)]
    assert time.monotonic() - started >= 0.35
    assert [m["op"] for m in messages] == [0, 0, 0, 11]
    assert [event_number(m["d"]) for m in messages[:3]] == [1, 2, 3]
    sim.send_events(0, 1)  # and then the connection is back to normal
    assert event_number(client.recv()["d"]) == 4


def test_dispatches_held_by_a_stall_are_replayed_to_a_client_that_resumes(
    sim: GatewaySimulator,
) -> None:
    first = connect(sim)
    session_id = first.ready()["d"]["session_id"]
    sim.apply_fault(0, Stall(seconds=30.0))  # the resume below cuts it short
    sim.send_events(0, 3)

    second = resume_on_new_connection(sim, session_id, 1)
    replayed = second.recv_dispatches(3)
    assert [event_number(m["d"]) for m in replayed] == [1, 2, 3]
    assert second.recv()["t"] == "RESUMED"
    # The stalled connection is closed as replaced, without waiting out the stall.
    assert first.expect_close() == 1001
    sim.send_events(0, 1)
    assert event_number(second.recv()["d"]) == 4
    second.close()


def test_closing_a_stalled_connection_is_not_delayed(sim: GatewaySimulator) -> None:
    client = connect(sim)
    client.ready()
    sim.apply_fault(0, Stall(seconds=30.0))
    started = time.monotonic()
    sim.close_shard(0, 4000)
    assert client.expect_close() == 4000
    assert time.monotonic() - started < 5.0


# -- refused connections ----------------------------------------------------------------


def test_refused_connections_get_503_and_rest_still_works(sim: GatewaySimulator) -> None:
    assert sim.apply_fault(0, RefuseConnections(count=1)) == 0
    sim.refuse_connections(1)  # counts add up: two refusals
    assert http_get(sim, "/api/v10/gateway") == (200, {"url": sim.url})
    for base in (sim.url, sim.resume_url):
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            connect(sim, base=base)
        assert refused.value.status_code == 503
    client = connect(sim)
    assert client.recv()["op"] == 10

    assert [(r.path, r.status) for r in sim.records.refusals] == [("/", 503), ("/resume/", 503)]
    assert [(f.shard_id, f.fault) for f in sim.records.faults] == [
        (0, RefuseConnections(count=1)),
        (None, RefuseConnections(count=1)),
    ]
    assert len(sim.records.connections) == 1  # refused upgrades never became connections
    client.close()


def test_refusals_can_be_planned_without_a_shard(sim: GatewaySimulator) -> None:
    sim.schedule_fault(None, RefuseConnections(count=1), delay=0)
    assert sim.wait_until(lambda: sim.records.faults)
    with pytest.raises(websocket.WebSocketBadStatusException):
        connect(sim)
    with pytest.raises(ValueError):
        sim.apply_fault(None, Stall(seconds=1))
    with pytest.raises(ValueError):
        sim.schedule_fault(None, RefuseConnections(), after_dispatches=1)


# -- expired sessions --------------------------------------------------------------------


def test_an_expired_session_closes_4000_and_cannot_be_resumed(
    sim: GatewaySimulator, client: Client
) -> None:
    session_id = client.ready()["d"]["session_id"]
    assert sim.apply_fault(0, ExpireSession()) == 1
    assert client.expect_close() == 4000
    assert sim.session(0) is None
    again = resume_on_new_connection(sim, session_id, 1)
    assert again.recv() == INVALID
    assert not sim.records.resumes[-1].ok
    again.close()


def test_an_expired_session_can_drop_the_connection(sim: GatewaySimulator, client: Client) -> None:
    client.ready()
    sim.apply_fault(0, ExpireSession(code=None))
    with pytest.raises((OSError, websocket.WebSocketConnectionClosedException)):
        client.recv()
    assert sim.wait_until(lambda: sim.records.closes)
    assert sim.records.closes[0].dropped
    assert sim.session(0) is None


# -- identify rules and session starts ------------------------------------------------------


def test_identify_faster_than_the_interval_is_invalidated_and_recorded() -> None:
    with GatewaySimulator(token=TOKEN, shards=3, max_concurrency=2, identify_interval=0.5) as sim:
        first = connect(sim)
        first.ready((0, 3))  # bucket 0
        other_bucket = connect(sim)
        other_bucket.ready((1, 3))  # bucket 1 has its own interval
        early = connect(sim)
        assert early.recv()["op"] == 10
        early.identify((2, 3))  # bucket 0 again, too soon
        assert early.recv() == INVALID

        [violation] = sim.records.violations
        assert (violation.kind, violation.shard_id, violation.bucket) == (
            "identify_too_fast",
            2,
            0,
        )
        assert violation.connection_id == sim.records.connections[-1].id
        assert violation.since_previous is not None and 0 <= violation.since_previous < 0.5
        # No session, and no session start spent.
        assert sim.session(2) is None
        assert sim.session_start_remaining == 998
        assert len(sim.records.identifies) == 2

        due = sim.records.identifies[0].time + 0.5
        assert sim.wait_until(lambda: time.monotonic() >= due, timeout=2.0)
        early.identify((2, 3))  # the same connection may try again
        assert early.recv()["t"] == "READY"
        assert sim.session_start_remaining == 997
        assert len(sim.records.violations) == 1
        for c in (first, other_bucket, early):
            c.close()


def test_the_identify_interval_is_five_seconds_by_default(
    sim: GatewaySimulator, client: Client
) -> None:
    client.ready()
    sim.invalidate_session(0, False)
    assert client.recv() == INVALID
    client.identify()
    assert client.recv() == INVALID
    assert [v.kind for v in sim.records.violations] == ["identify_too_fast"]


def test_an_identify_interval_of_zero_disables_the_rule() -> None:
    with GatewaySimulator(token=TOKEN, shards=2, identify_interval=0) as sim:
        clients = [connect(sim), connect(sim)]
        for shard_id, c in enumerate(clients):
            c.ready((shard_id, 2))
        assert sim.records.violations == []
        for c in clients:
            c.close()


def test_session_starts_are_refilled_after_reset_after() -> None:
    with GatewaySimulator(
        token=TOKEN,
        shards=2,
        max_concurrency=2,
        session_start_limit_total=5,
        session_start_remaining=1,
        session_start_reset_after=1.0,
    ) as sim:
        limit = gateway_bot(sim)
        assert (limit["total"], limit["remaining"]) == (5, 1)
        assert 0 < limit["reset_after"] <= 1000
        first = connect(sim)
        first.ready((0, 2))
        assert gateway_bot(sim)["remaining"] == 0
        refused = connect(sim)
        refused.recv()
        refused.identify((1, 2))
        assert refused.expect_close() == 4004
        assert [v.kind for v in sim.records.violations] == ["session_start_limit"]

        assert sim.wait_until(lambda: sim.session_start_remaining == 5, timeout=3.0)
        limit = gateway_bot(sim)
        assert limit["remaining"] == 5
        assert 0 < limit["reset_after"] <= 1000
        assert 0 < sim.session_start_reset_after <= 1.0
        second = connect(sim)
        second.ready((1, 2))
        assert gateway_bot(sim)["remaining"] == 4
        first.close()
        second.close()


# -- the replay log --------------------------------------------------------------------------


def test_a_resume_older_than_the_replay_log_is_invalid() -> None:
    with GatewaySimulator(token=TOKEN, replay_limit=5) as sim:
        first = connect(sim)
        session_id = first.ready()["d"]["session_id"]
        first.close(4000)
        assert sim.wait_until(lambda: sim.live_connections(0) == 0)
        sim.send_events(0, 10)  # s = 2..11; the log keeps s = 7..11

        second = resume_on_new_connection(sim, session_id, 6)
        replayed = second.recv_dispatches(5)
        assert [m["s"] for m in replayed] == [7, 8, 9, 10, 11]
        assert second.recv()["s"] == 12  # RESUMED; now the log keeps 8..12
        second.close(4000)
        assert sim.wait_until(lambda: sim.live_connections(0) == 0)

        third = resume_on_new_connection(sim, session_id, 6)  # s = 7 is gone
        assert third.recv() == INVALID
        resume = sim.records.resumes[-1]
        assert (resume.ok, resume.shard_id, resume.seq, resume.replayed) == (False, 0, 6, 0)
        assert sim.session(0) is None
        third.close()


@pytest.mark.parametrize(
    "options",
    [
        {"identify_interval": -1},
        {"replay_limit": 0},
        {"session_start_reset_after": 0},
    ],
)
def test_bad_options_are_refused(options: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        GatewaySimulator(**options)  # type: ignore[arg-type]
