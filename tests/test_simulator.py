"""Loopback tests of `gcluster.testing.GatewaySimulator`, driven by websocket-client.

The simulator runs in this test's own gevent hub, so every client socket is a
gevent socket handed to websocket-client (a blocking socket would freeze the
hub and the simulator with it). Waits always have a timeout; nothing sleeps
hoping the other side is done.
"""

from __future__ import annotations

import http.client
import json
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import gevent
import gevent.socket
import pytest
import websocket

from gcluster.testing import (
    STREAM_INTENTS,
    STREAM_KINDS,
    CloseConnection,
    GatewaySimulator,
    Reconnect,
    event_number,
    payloads,
)

TOKEN = "sim-token"
GUILDS = 1 << 0
TIMEOUT = 5.0


class ServerClosed(Exception):
    """The server sent a close frame."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class Client:
    """A bare gateway client: websocket-client on a gevent socket, one inflater."""

    def __init__(self, ws: websocket.WebSocket, *, compress: bool) -> None:
        self.ws = ws
        self.inflater = zlib.decompressobj() if compress else None
        self.frames: list[bytes] = []

    def recv(self) -> dict[str, Any]:
        """The next gateway message; raises ServerClosed on a close frame."""
        opcode, frame = self.ws.recv_data_frame(True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            data = frame.data
            code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
            raise ServerClosed(code, data[2:].decode())
        if opcode == websocket.ABNF.OPCODE_BINARY:
            assert self.inflater is not None, "binary frame without compression"
            self.frames.append(frame.data)
            assert frame.data.endswith(b"\x00\x00\xff\xff")
            return json.loads(self.inflater.decompress(frame.data))  # type: ignore[no-any-return]
        assert opcode == websocket.ABNF.OPCODE_TEXT
        assert self.inflater is None, "text frame on a compressed connection"
        return json.loads(frame.data)  # type: ignore[no-any-return]

    def recv_dispatches(self, count: int) -> list[dict[str, Any]]:
        messages = [self.recv() for _ in range(count)]
        assert all(m["op"] == 0 for m in messages), messages
        return messages

    def expect_close(self) -> int | None:
        """Read until the server's close frame; its code."""
        while True:
            try:
                self.recv()
            except ServerClosed as closed:
                return closed.code

    def send(self, op: int, d: Any) -> None:
        self.ws.send(json.dumps({"op": op, "d": d}))

    def identify(
        self,
        shard: tuple[int, int] | None = (0, 1),
        *,
        intents: int = GUILDS | STREAM_INTENTS,
        token: str = f"Bot {TOKEN}",
    ) -> None:
        d: dict[str, Any] = {
            "token": token,
            "intents": intents,
            "properties": {"os": "linux", "browser": "test", "device": "test"},
            "large_threshold": 50,
        }
        if shard is not None:
            d["shard"] = list(shard)
        self.send(2, d)

    def resume(self, session_id: str, seq: int | None, *, token: str = TOKEN) -> None:
        self.send(6, {"token": token, "session_id": session_id, "seq": seq})

    def ready(self, shard: tuple[int, int] = (0, 1), **kwargs: Any) -> dict[str, Any]:
        """HELLO, IDENTIFY, READY: the READY message."""
        assert self.recv()["op"] == 10
        self.identify(shard, **kwargs)
        ready = self.recv()
        assert ready["t"] == "READY", ready
        return ready

    def close(self, code: int = 1000) -> None:
        self.ws.close(status=code, timeout=TIMEOUT)

    def drop(self) -> None:
        """End TCP with no close frame."""
        self.ws.abort()  # type: ignore[no-untyped-call]
        self.ws.shutdown()  # type: ignore[no-untyped-call]


def connect(
    sim: GatewaySimulator,
    *,
    base: str | None = None,
    query: str = "v=10&encoding=json",
    compress: bool = False,
) -> Client:
    if compress:
        query += "&compress=zlib-stream"
    sock = gevent.socket.create_connection(("127.0.0.1", sim.port))
    ws = websocket.create_connection(
        f"{base or sim.url}/?{query}", socket=sock, enable_multithread=False
    )
    ws.settimeout(TIMEOUT)
    return Client(ws, compress=compress)


def http_get(sim: GatewaySimulator, path: str, **headers: str) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=TIMEOUT)
    # A gevent socket, so the request does not block the simulator's hub.
    conn.sock = gevent.socket.create_connection(("127.0.0.1", sim.port))
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@pytest.fixture
def sim() -> Iterator[GatewaySimulator]:
    with GatewaySimulator(token=TOKEN, heartbeat_interval=12.5) as simulator:
        yield simulator


@pytest.fixture
def client(sim: GatewaySimulator) -> Iterator[Client]:
    c = connect(sim)
    yield c
    c.drop()


# -- REST -----------------------------------------------------------------


def test_gateway_bot_needs_the_bot_token() -> None:
    with GatewaySimulator(
        token=TOKEN, shards=4, recommended_shards=6, max_concurrency=2, session_start_remaining=7
    ) as sim:
        assert sim.api_base == f"http://127.0.0.1:{sim.port}/api/v10"
        for headers in ({}, {"Authorization": "Bot wrong"}, {"Authorization": TOKEN}):
            status, body = http_get(sim, "/api/v10/gateway/bot", **headers)
            assert (status, body) == (401, {"message": "401: Unauthorized", "code": 0})

        status, body = http_get(sim, "/api/v10/gateway/bot", Authorization=f"Bot {TOKEN}")
        assert status == 200
        assert body["url"] == sim.url
        assert body["shards"] == 6
        limit = body["session_start_limit"]
        assert limit["total"] == 1000
        assert limit["remaining"] == 7
        assert limit["max_concurrency"] == 2
        assert 0 < limit["reset_after"] <= 86_400_000

        assert http_get(sim, "/api/v10/gateway") == (200, {"url": sim.url})
        status, body = http_get(sim, "/api/v10/users/@me")
        assert status == 404 and body["code"] == 0
        assert [r.status for r in sim.records.requests] == [401, 401, 401, 200, 200, 404]


# -- connect, identify, heartbeat --------------------------------------------


def test_hello_gives_the_interval_in_ms(sim: GatewaySimulator, client: Client) -> None:
    hello = client.recv()
    assert hello["op"] == 10
    assert hello["d"]["heartbeat_interval"] == 12500
    [connection] = sim.records.connections
    assert connection.path == "/"
    assert connection.query == {"v": "10", "encoding": "json"}
    assert connection.compression is None


def test_identify_gets_ready_with_the_shards_guilds() -> None:
    with GatewaySimulator(token=TOKEN, shards=3, max_concurrency=2) as sim:
        client = connect(sim)
        ready = client.ready((2, 3))
        assert ready["s"] == 1 and ready["op"] == 0
        d = ready["d"]
        assert d["v"] == 10
        assert d["shard"] == [2, 3]
        assert d["resume_gateway_url"] == sim.resume_url
        assert d["user"]["bot"] is True
        assert d["application"]["id"]
        guild_ids = [int(g["id"]) for g in d["guilds"]]
        assert guild_ids == sim.guild_ids(2)
        assert all(g["unavailable"] for g in d["guilds"])
        assert all((gid >> 22) % 3 == 2 for gid in guild_ids)

        session = sim.session(2)
        assert session is not None
        assert session.session_id == d["session_id"]
        assert session.sequence == 1 and session.connected
        assert sim.live_connections(2) == 1 and sim.live_connections(0) == 0
        assert sim.session_start_remaining == 999

        [identify] = sim.records.identifies
        assert (identify.shard_id, identify.total, identify.bucket) == (2, 3, 0)
        assert identify.intents == GUILDS | STREAM_INTENTS
        assert "token" not in identify.data
        assert identify.data["large_threshold"] == 50
        client.close()


def test_heartbeats_are_acked_and_recorded(sim: GatewaySimulator, client: Client) -> None:
    client.recv()  # HELLO
    client.send(1, None)  # allowed before IDENTIFY
    assert client.recv()["op"] == 11
    client.identify()
    client.recv()  # READY
    client.send(1, 1)
    assert client.recv()["op"] == 11
    assert [(h.shard_id, h.sequence) for h in sim.records.heartbeats] == [(None, None), (0, 1)]


# -- close codes ---------------------------------------------------------------


def _bad_token(c: Client) -> None:
    c.identify(token="Bot nope")


def _wrong_total(c: Client) -> None:
    c.identify((0, 2))


def _id_beyond_total(c: Client) -> None:
    c.identify((1, 1))


def _invalid_intents(c: Client) -> None:
    c.identify(intents=1 << 26)


def _unknown_opcode(c: Client) -> None:
    c.send(99, None)


def _not_json(c: Client) -> None:
    c.ws.send("{not json")


def _command_before_identify(c: Client) -> None:
    c.send(3, {"since": None, "activities": [], "status": "online", "afk": False})


def _identify_twice(c: Client) -> None:
    c.identify()
    assert c.recv()["t"] == "READY"
    c.identify()


@pytest.mark.parametrize(
    ("act", "code"),
    [
        (_bad_token, 4004),
        (_wrong_total, 4010),
        (_id_beyond_total, 4010),
        (_invalid_intents, 4013),
        (_unknown_opcode, 4001),
        (_not_json, 4002),
        (_command_before_identify, 4003),
        (_identify_twice, 4005),
    ],
)
def test_broken_rules_close_with_discords_codes(
    sim: GatewaySimulator, client: Client, act: Any, code: int
) -> None:
    client.recv()  # HELLO
    act(client)
    assert client.expect_close() == code
    assert sim.wait_until(lambda: sim.records.closes)
    [close] = sim.records.closes
    assert (close.code, close.initiator, close.dropped) == (code, "server", False)


def test_disallowed_privileged_intents_close_4014() -> None:
    with GatewaySimulator(token=TOKEN, privileged_intents=1 << 15) as sim:
        allowed = connect(sim)
        allowed.ready(intents=GUILDS | (1 << 15))
        refused = connect(sim)
        refused.recv()
        refused.identify(intents=GUILDS | (1 << 1))
        assert refused.expect_close() == 4014
        allowed.close()


@pytest.mark.parametrize(
    ("query", "code"),
    [("v=9&encoding=json", 4012), ("encoding=json", 4012), ("v=10&encoding=etf", 4002)],
)
def test_bad_connect_urls_are_closed(sim: GatewaySimulator, query: str, code: int) -> None:
    client = connect(sim, query=query)
    assert client.expect_close() == code


def test_payloads_over_the_rate_limit_close_4008(sim: GatewaySimulator, client: Client) -> None:
    client.recv()
    for _ in range(121):
        client.send(1, None)
    assert client.expect_close() == 4008
    assert len(sim.records.heartbeats) == 120
    [violation] = sim.records.violations
    assert (violation.kind, violation.shard_id, violation.bucket) == ("ratelimit", None, None)
    assert violation.connection_id == sim.records.connections[0].id


def test_resume_with_a_sequence_from_the_future_closes_4007(sim: GatewaySimulator) -> None:
    first = connect(sim)
    session_id = first.ready()["d"]["session_id"]
    first.close(4000)
    second = connect(sim)
    second.recv()
    second.resume(session_id, 2)  # only s = 1 (READY) exists
    assert second.expect_close() == 4007
    assert sim.session(0) is None
    assert not sim.records.resumes[-1].ok


def test_identify_needs_a_shard_when_sharded_and_a_session_start_left() -> None:
    with GatewaySimulator(token=TOKEN, shards=2, session_start_remaining=1) as sim:
        unsharded = connect(sim)
        unsharded.recv()
        unsharded.identify(None)
        assert unsharded.expect_close() == 4011

        first = connect(sim)
        first.ready((0, 2))
        assert sim.session_start_remaining == 0
        second = connect(sim)
        second.recv()
        second.identify((1, 2))
        assert second.expect_close() == 4004
        _, body = http_get(sim, "/api/v10/gateway/bot", Authorization=f"Bot {TOKEN}")
        assert body["session_start_limit"]["remaining"] == 0
        [violation] = sim.records.violations
        assert (violation.kind, violation.shard_id, violation.bucket) == (
            "session_start_limit",
            1,
            0,
        )
        first.close()


def test_pings_get_pongs(client: Client) -> None:
    client.recv()
    client.ws.ping(b"are you there")
    opcode, frame = client.ws.recv_data_frame(True)
    assert (opcode, frame.data) == (websocket.ABNF.OPCODE_PONG, b"are you there")


# -- zlib-stream ---------------------------------------------------------------


def test_zlib_stream_uses_one_deflate_stream(sim: GatewaySimulator) -> None:
    client = connect(sim, compress=True)
    client.ready()
    sim.send_events(0, 20)
    events = client.recv_dispatches(20)
    assert [event_number(e["d"]) for e in events] == list(range(1, 21))
    assert sim.records.connections[0].compression == "zlib-stream"
    # Every frame was one whole message ending in the sync-flush marker, and
    # later frames reuse the window of earlier ones (only one inflater works).
    assert len(client.frames) == 22
    assert all(f.endswith(b"\x00\x00\xff\xff") for f in client.frames)
    with pytest.raises(zlib.error):
        zlib.decompressobj().decompress(client.frames[-1])
    client.close()


def test_a_multi_megabyte_guild_create_arrives_whole(sim: GatewaySimulator) -> None:
    client = connect(sim, compress=True)
    client.ready()
    guild = payloads.guild_create(sim.guilds(0)[0], size_bytes=2_000_000)
    sim.dispatch(0, "GUILD_CREATE", guild)
    message = client.recv()
    assert message["t"] == "GUILD_CREATE"
    assert len(json.dumps(message["d"])) >= 2_000_000
    assert int(message["d"]["id"]) == sim.guild_ids(0)[0]
    client.close()


# -- events ----------------------------------------------------------------------


def test_numbered_events_arrive_in_order(sim: GatewaySimulator, client: Client) -> None:
    client.ready()
    assert sim.send_events(0, 10) == list(range(1, 11))
    first = client.recv_dispatches(10)
    assert sim.send_events(0, 4, kinds=["MESSAGE_CREATE"]) == [11, 12, 13, 14]
    second = client.recv_dispatches(4)
    events = first + second

    assert [event_number(e["d"]) for e in events] == list(range(1, 15))
    assert [e["s"] for e in events] == list(range(2, 16))
    assert [e["t"] for e in first[:5]] == list(STREAM_KINDS)
    assert {e["t"] for e in second} == {"MESSAGE_CREATE"}
    guild_ids = set(sim.guild_ids(0))
    assert all(int(e["d"]["guild_id"]) in guild_ids for e in events if "guild_id" in e["d"])
    sizes = [len(json.dumps(e["d"])) for e in events if e["t"] == "MESSAGE_CREATE"]
    assert 900 < sum(sizes) / len(sizes) < 1600

    assert sim.wait_until(lambda: len(sim.records.dispatches) == 15)
    assert [r.number for r in sim.records.dispatches] == [None, *range(1, 15)]
    assert event_number({"no": "number"}) is None


def test_events_for_a_shard_that_never_identified_follow_ready(
    sim: GatewaySimulator, client: Client
) -> None:
    sim.dispatch(0, "CHANNEL_CREATE", {"id": "1", "type": 0})
    sim.send_events(0, 2)
    ready = client.ready()
    assert ready["s"] == 1
    backlog = client.recv_dispatches(3)
    assert [(m["t"], m["s"]) for m in backlog][0] == ("CHANNEL_CREATE", 2)
    assert [event_number(m["d"]) for m in backlog[1:]] == [1, 2]
    assert [m["s"] for m in backlog] == [2, 3, 4]


# -- resume ------------------------------------------------------------------------


def test_resume_replays_exactly_the_missed_dispatches(sim: GatewaySimulator) -> None:
    first = connect(sim)
    session_id = first.ready()["d"]["session_id"]
    sim.send_events(0, 3)
    seen = first.recv_dispatches(3)
    assert seen[-1]["s"] == 4
    first.close(4000)  # any code but 1000/1001 keeps the session
    assert sim.wait_until(lambda: sim.live_connections(0) == 0)

    sim.send_events(0, 5)  # logged in the session while nobody is connected
    info = sim.session(0)
    assert info is not None and info.sequence == 9 and not info.connected

    second = connect(sim, base=sim.resume_url)
    assert second.recv()["op"] == 10
    second.resume(session_id, 4)
    replayed = second.recv_dispatches(5)
    assert [m["s"] for m in replayed] == [5, 6, 7, 8, 9]
    assert [event_number(m["d"]) for m in replayed] == [4, 5, 6, 7, 8]
    resumed = second.recv()
    assert (resumed["t"], resumed["s"]) == ("RESUMED", 10)

    [resume] = sim.records.resumes
    assert (resume.shard_id, resume.session_id, resume.seq, resume.replayed, resume.ok) == (
        0,
        session_id,
        4,
        5,
        True,
    )
    assert sim.records.connections[-1].path == "/resume/"
    sim.send_events(0, 1)  # and the stream goes on in the resumed session
    assert second.recv()["s"] == 11
    second.close()


def test_resume_of_an_unknown_session_is_invalid(sim: GatewaySimulator, client: Client) -> None:
    client.recv()
    client.resume("0" * 32, 3)
    invalid = client.recv()
    assert (invalid["op"], invalid["d"]) == (9, False)
    [resume] = sim.records.resumes
    assert not resume.ok and resume.shard_id is None
    # The connection may identify after a failed resume.
    client.identify()
    assert client.recv()["t"] == "READY"


def test_closing_with_1000_ends_the_session(sim: GatewaySimulator) -> None:
    first = connect(sim)
    session_id = first.ready()["d"]["session_id"]
    first.close(1000)
    assert sim.wait_until(lambda: sim.records.closes)
    assert sim.records.closes[0].code == 1000
    assert sim.records.closes[0].initiator == "client"
    assert sim.session(0) is None

    second = connect(sim)
    second.recv()
    second.resume(session_id, 1)
    assert second.recv() == {"t": None, "s": None, "op": 9, "d": False}
    second.close()


def test_resume_with_a_bad_token_closes_4004(sim: GatewaySimulator) -> None:
    first = connect(sim)
    session_id = first.ready()["d"]["session_id"]
    second = connect(sim)
    second.recv()
    second.resume(session_id, 1, token="wrong")
    assert second.expect_close() == 4004
    first.close()


def test_a_dropped_client_keeps_its_session(sim: GatewaySimulator, client: Client) -> None:
    client.ready()
    client.drop()
    assert sim.wait_until(lambda: sim.records.closes)
    [close] = sim.records.closes
    assert (close.code, close.dropped, close.initiator, close.shard_id) == (None, True, "client", 0)
    session = sim.session(0)
    assert session is not None and not session.connected


# -- commands ----------------------------------------------------------------------


def test_commands_are_recorded_and_members_are_chunked(
    sim: GatewaySimulator, client: Client
) -> None:
    client.ready()
    guild_id = sim.guild_ids(0)[0]
    presence: dict[str, Any] = {"since": None, "activities": [], "status": "idle", "afk": False}
    client.send(3, presence)
    client.send(4, {"guild_id": str(guild_id), "channel_id": None, "self_mute": False})
    client.send(31, {"guild_ids": [str(guild_id)]})
    client.send(8, {"guild_id": str(guild_id), "query": "", "limit": 5, "nonce": "n-1"})
    chunk = client.recv()
    assert chunk["t"] == "GUILD_MEMBERS_CHUNK" and chunk["s"] == 2
    assert chunk["d"]["nonce"] == "n-1"
    assert chunk["d"]["guild_id"] == str(guild_id)
    assert len(chunk["d"]["members"]) == 5
    assert [c.op for c in sim.records.commands] == [3, 4, 31, 8]
    assert sim.records.commands[0].data == presence
    assert all(c.shard_id == 0 for c in sim.records.commands)


# -- server-side controls ------------------------------------------------------------


def test_close_shard_sends_the_code_and_keeps_the_session(
    sim: GatewaySimulator, client: Client
) -> None:
    session_id = client.ready()["d"]["session_id"]
    sim.send_events(0, 2)
    assert sim.close_shard(0, 4000, "test") == 1
    sim.send_events(0, 1)  # after the close: kept for the resume, not sent
    assert len(client.recv_dispatches(2)) == 2
    assert client.expect_close() == 4000
    assert sim.wait_until(lambda: sim.records.closes)
    close = sim.records.closes[0]
    assert (close.code, close.reason, close.initiator) == (4000, "test", "server")

    again = connect(sim, base=sim.resume_url)
    again.recv()
    again.resume(session_id, 3)
    assert event_number(again.recv()["d"]) == 3
    assert again.recv()["t"] == "RESUMED"
    again.close()


def test_close_shard_with_4009_ends_the_session(sim: GatewaySimulator, client: Client) -> None:
    client.ready()
    sim.close_shard(0, 4009)
    assert client.expect_close() == 4009
    assert sim.session(0) is None


def test_reconnect_shard_sends_op_7(sim: GatewaySimulator, client: Client) -> None:
    client.ready()
    assert sim.reconnect_shard(0) == 1
    assert client.recv() == {"t": None, "s": None, "op": 7, "d": None}
    assert sim.session(0) is not None


def test_invalidate_session() -> None:
    # No identify interval: the second IDENTIFY follows the first at once.
    with GatewaySimulator(token=TOKEN, identify_interval=0) as sim:
        client = connect(sim)
        client.ready()
        sim.invalidate_session(0, True)
        assert client.recv()["d"] is True
        assert sim.session(0) is not None
        sim.invalidate_session(0, False)
        assert client.recv() == {"t": None, "s": None, "op": 9, "d": False}
        assert sim.session(0) is None
        client.identify()  # allowed again on the same connection
        assert client.recv()["t"] == "READY"
        client.close()


def test_drop_shard_resets_tcp(sim: GatewaySimulator, client: Client) -> None:
    client.ready()
    assert sim.drop_shard(0) == 1
    with pytest.raises((OSError, websocket.WebSocketConnectionClosedException)):
        client.recv()
    assert sim.wait_until(lambda: sim.records.closes)
    [close] = sim.records.closes
    assert (close.code, close.dropped, close.initiator) == (None, True, "server")
    assert sim.session(0) is not None
    assert sim.live_connections(0) == 0


def test_request_heartbeat_sends_op_1(sim: GatewaySimulator, client: Client) -> None:
    client.ready()
    sim.request_heartbeat(0)
    assert client.recv()["op"] == 1
    client.send(1, 1)
    assert client.recv()["op"] == 11
    assert [f.fault.__class__.__name__ for f in sim.records.faults] == ["RequestHeartbeat"]


def test_controls_on_a_shard_without_connections_do_nothing(sim: GatewaySimulator) -> None:
    assert sim.close_shard(0, 4000) == 0
    with pytest.raises(ValueError):
        sim.close_shard(1, 4000)


def test_fault_plans_after_dispatches_and_after_a_delay(
    sim: GatewaySimulator, client: Client
) -> None:
    client.ready()
    sim.schedule_fault(0, CloseConnection(code=4000), after_dispatches=3)
    sim.send_events(0, 5)
    assert [event_number(m["d"]) for m in client.recv_dispatches(3)] == [1, 2, 3]
    assert client.expect_close() == 4000
    session = sim.session(0)
    assert session is not None and session.sequence == 6  # READY + 5 events

    other = connect(sim, base=sim.resume_url)
    other.recv()
    other.resume(session.session_id, 4)
    assert len(other.recv_dispatches(2)) == 2
    assert other.recv()["t"] == "RESUMED"
    sim.schedule_fault(0, Reconnect(), delay=0.05)
    assert other.recv()["op"] == 7
    other.close()


# -- the simulator itself ---------------------------------------------------------------


def test_wait_until_times_out_with_false(sim: GatewaySimulator) -> None:
    started = gevent.get_hub().loop.now()
    assert sim.wait_until(lambda: False, timeout=0.1) is False
    assert gevent.get_hub().loop.now() - started < 1.0


def test_stop_is_idempotent_and_the_token_stays_secret() -> None:
    sim = GatewaySimulator(token="very-secret").start()
    assert "very-secret" not in repr(sim)
    assert "very-secret" not in repr(sim._config)
    client = connect(sim)
    client.recv()
    reader = gevent.spawn(client.expect_close)
    sim.stop()
    sim.stop()
    assert reader.get(timeout=TIMEOUT) == 1001


def test_snowflakes_and_guild_fixtures_map_to_their_shard() -> None:
    for total in (1, 7, 16):
        for shard_id in range(total):
            for guild in payloads.guild_fixtures(shard_id, total, 3):
                assert payloads.shard_for_guild(guild.id, total) == shard_id
    ids = payloads.Snowflakes()
    first, second = ids.next(), ids.next()
    assert second > first
    assert payloads.snowflake(payloads.DISCORD_EPOCH_MS) == 1 << 17
