"""A shard against gateways that break the rules (tests/hostile.py), after the upgrade.

Each test scripts what the server sends, byte by byte, and checks what the
client did about it from what reached the server (close codes, RESUME
payloads, connection times) and from what reached the application.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from conftest import TIMEOUT, collect
from hostile import TOKEN, ClientFrame, HostileGateway, Peer, close_payload, frame

from gcluster import EventType, EventTypeFlags, Stage
from gcluster.events import Event
from gcluster.shard import Shard
from gcluster.transport import Connection, ConnectionClosed

LIMIT = 64 * 1024  # the smallest max_message_size a cluster accepts


def make_shard(gateway: HostileGateway, **options: Any) -> Shard:
    options.setdefault("compression", False)
    options.setdefault("connect_timeout", 2.0)
    return Shard(
        0,
        1,
        TOKEN,
        1,
        gateway_url=gateway.url,
        event_types=EventTypeFlags.ALL,
        rng=lambda: 0.5,
        **options,
    )


@pytest.fixture
def start_shard() -> Iterator[Callable[..., Shard]]:
    """Start shards on a hostile gateway; all are stopped after the test."""
    started: list[Shard] = []

    def start(gateway: HostileGateway, **options: Any) -> Shard:
        shard = make_shard(gateway, **options)
        started.append(shard)
        shard.start()
        return shard

    yield start
    for shard in started:
        shard.down(timeout=1)


def session(peer: Peer, *, interval: Any = 41250, compress: bool = False, **ready: Any) -> dict:
    """The upgrade, HELLO, the client's IDENTIFY or RESUME and READY or RESUMED."""
    peer.read_request()
    peer.accept()
    peer.hello(interval, compress=compress)
    sent = peer.identify_or_resume()
    if sent["op"] == 2:
        peer.ready(compress=compress, **ready)
    else:
        peer.dispatch("RESUMED", None, compress=compress)
    return sent


def dispatched(received: list[tuple[int, Event]]) -> list[int]:
    return [e.sequence for _, e in received if e.name == "MESSAGE_CREATE" and e.sequence]


def has_marker(received: list[tuple[int, Event]]) -> bool:
    return any(isinstance(e.data, dict) and e.data.get("marker") for _, e in received)


# --- RFC 6455: what a client must do about frames no server may send ----------

BAD_FRAMES = {
    "masked": (frame(b'{"op":11}', mask=b"\x01\x02\x03\x04"), 1002),
    "reserved bit": (frame(b'{"op":11}', rsv=4), 1002),
    "reserved data opcode": (frame(b"x", 0x3), 1002),
    "reserved control opcode": (frame(b"x", 0xB), 1002),
    "long ping": (frame(b"p" * 126, 0x9), 1002),
    "fragmented ping": (frame(b"p", 0x9, fin=False), 1002),
    "continuation of nothing": (frame(b"x", 0x0), 1002),
    "new message mid-fragment": (frame(b"a", fin=False) + frame(b"b"), 1002),
    "text not UTF-8": (frame(b'{"op":11,"d":"\xff\xfe"}'), 1007),
    "fragmented text not UTF-8": (frame(b"\xe2\x82", fin=False) + frame(b"x", 0x0), 1007),
    "close of one byte": (frame(b"\x03", 0x8), 1002),
    "close 1005": (frame(close_payload(1005), 0x8), 1002),
    "close 1006": (frame(close_payload(1006), 0x8), 1002),
    "close 1015": (frame(close_payload(1015), 0x8), 1002),
    "close 999": (frame(close_payload(999), 0x8), 1002),
    "close 1004": (frame(close_payload(1004), 0x8), 1002),
    "close 2000": (frame(close_payload(2000), 0x8), 1002),
    "close 5000": (frame(close_payload(5000), 0x8), 1002),
    "close reason not UTF-8": (frame(close_payload(4000, b"\xc3\x28"), 0x8), 1007),
    "message over the limit": (frame(b"", 0x2, length=LIMIT + 1), 1009),
    "fragments over the limit": (
        frame(b"a" * (LIMIT // 2), 0x2, fin=False) + frame(b"b" * (LIMIT // 2 + 1), 0x0),
        1009,
    ),
    "2^63-byte frame": (frame(b"", 0x2, length=2**63 - 1), 1009),
}


@pytest.mark.parametrize("name", list(BAD_FRAMES))
def test_a_frame_no_server_may_send_fails_the_connection_with_the_rfc_code(name: str) -> None:
    data, code = BAD_FRAMES[name]
    closes: list[ClientFrame | None] = []

    def send_bad(peer: Peer) -> None:
        peer.upgrade()
        peer.write(data)
        closes.append(peer.read_close())

    with HostileGateway(send_bad) as gateway:
        conn = Connection.open(gateway.url, timeout=2, max_message=LIMIT)
        with pytest.raises(ConnectionClosed) as caught, gevent.Timeout(TIMEOUT):
            while True:
                conn.receive()
        assert caught.value.failed and caught.value.code == code
        assert gateway.wait_for(lambda: bool(closes))
        assert closes[0] is not None and closes[0].close_code == code
        assert conn.closed


@pytest.mark.parametrize(
    ("payload", "echo"),
    [(close_payload(4000, b"try again"), close_payload(4000)), (b"", b"")],
    ids=["with a code", "without one"],
)
def test_a_valid_close_is_echoed_and_reported(payload: bytes, echo: bytes) -> None:
    closes: list[ClientFrame | None] = []

    def close(peer: Peer) -> None:
        peer.upgrade()
        peer.write(frame(b"", 0xA))  # an unsolicited pong is ignored
        peer.write(frame(payload, 0x8))
        closes.append(peer.read_close())

    with HostileGateway(close) as gateway:
        conn = Connection.open(gateway.url, timeout=2)
        with pytest.raises(ConnectionClosed) as caught, gevent.Timeout(TIMEOUT):
            while True:
                conn.receive()
        assert not caught.value.failed
        assert caught.value.code == (4000 if payload else None)
        assert gateway.wait_for(lambda: bool(closes))
        assert closes[0] is not None and closes[0].payload == echo


def test_the_client_never_sends_a_close_code_reserved_by_the_rfc() -> None:
    from gcluster.frames import valid_close_code

    def accept(peer: Peer) -> None:
        peer.upgrade()
        peer.drain()

    with HostileGateway(accept) as gateway:
        conn = Connection.open(gateway.url, timeout=2)
        for code in (999, 1004, 1005, 1006, 1015, 2000, 5000):
            assert not valid_close_code(code)
            with pytest.raises(ValueError):
                conn.close(code)
        conn.close(4000)


# --- values from the gateway --------------------------------------------------


@pytest.mark.parametrize("interval", [0, -41250, "41250", None, True, [1], {"x": 1}], ids=repr)
def test_a_hello_with_an_unusable_heartbeat_interval_means_a_clean_reconnect(
    interval: Any, start_shard: Callable[..., Shard]
) -> None:
    closes: list[ClientFrame | None] = []

    def bad_hello(peer: Peer) -> None:
        peer.upgrade()
        peer.hello(interval)
        closes.append(peer.read_close())

    with HostileGateway(bad_hello) as gateway:
        shard = start_shard(gateway)
        assert gateway.wait_for(lambda: len(closes) >= 2)
        # Nothing but the close: no IDENTIFY, no heartbeat storm.
        assert [f.opcode for f in gateway.peers[0].frames] == [0x8]
        assert closes[0] is not None and closes[0].close_code == 4000
        assert "heartbeat_interval" in (shard.last_failure or "")
        # Failed attempts back off: the second gap is longer than the first.
        assert gateway.wait_for(lambda: len(gateway.peers) >= 3)
        opened = [p.opened for p in gateway.peers[:3]]
        assert opened[2] - opened[1] > opened[1] - opened[0]


def test_a_tiny_heartbeat_interval_does_not_flood_the_send_budget(
    start_shard: Callable[..., Shard],
) -> None:
    beats: list[float] = []
    counted: list[bool] = []

    def tiny(peer: Peer) -> None:
        session(peer, interval=1)  # 1 ms
        # Count the beats of 2.5 s; read_frame raises Timeout at the window's end.
        with gevent.Timeout(2.5, False):
            while True:
                got = peer.read_frame(timeout=5)
                if got is not None and got.opcode == 0x1 and got.json()["op"] == 1:
                    beats.append(got.at)
                    peer.send_json({"op": 11})
        counted.append(True)
        peer.drain()

    with HostileGateway(tiny) as gateway:
        shard = start_shard(gateway)
        assert shard.wait_until_ready(TIMEOUT)
        assert gateway.wait_for(lambda: bool(counted))
        # Held to one beat a second at most (2,500 at the asked-for 1 ms).
        assert 2 <= len(beats) <= 4


def test_sequences_are_checked_and_a_replayed_dispatch_is_delivered_once(
    start_shard: Callable[..., Shard],
) -> None:
    resumes: list[dict] = []

    def first(peer: Peer) -> None:
        session(peer)
        for s in (2, 3):
            peer.dispatch("MESSAGE_CREATE", s, {"n": s})
        # Replays and values no gateway sends, on both the peeked and the decoded path.
        peer.dispatch("MESSAGE_CREATE", 3, {"n": "again"})
        peer.send_json(b'{"op":0,"s":2,"t":"MESSAGE_CREATE","d":{"n":"old"}}')
        for s in ("4", -1, 1.5, True, 2**70):
            peer.dispatch("MESSAGE_CREATE", s, {"n": "bad"})
        peer.dispatch("MESSAGE_CREATE", 4, {"n": 4})
        peer.dispatch("MESSAGE_CREATE", 5, {"n": 5})
        peer.close(4000)
        peer.drain()

    def second(peer: Peer) -> None:
        resumes.append(session(peer))
        for s in (4, 5, 6):  # the gateway replays from before the resume point
            peer.dispatch("MESSAGE_CREATE", s, {"n": s})
        peer.dispatch("MESSAGE_CREATE", 7, {"marker": True})
        peer.drain()

    with HostileGateway([first, second]) as gateway:
        shard = start_shard(gateway)
        received = collect(shard.events(), has_marker)
        assert dispatched(received) == [2, 3, 4, 5, 6, 7]
        assert resumes[0]["op"] == 6 and resumes[0]["d"]["seq"] == 5
        assert shard.stats.duplicates == 4  # 3 and 2 before, 4 and 5 after
        assert shard.stats.skipped == 5


def test_an_undecodable_message_is_skipped_on_either_path_without_reconnecting(
    start_shard: Callable[..., Shard], caplog: pytest.LogCaptureFixture
) -> None:
    def garbage(peer: Peer) -> None:
        session(peer)
        peer.send_json(b'{"t":"MESSAGE_CREATE","s":2,"op":0,"d":{"broken')  # peeked
        peer.send_json(b'{"op":0,"s":3,"t":"MESSAGE_CREATE","d":{"broken')  # decoded
        peer.send_json(b"not json at all")
        peer.send_json(b"[1, 2, 3]")
        peer.dispatch("MESSAGE_CREATE", 4, {"marker": True})
        peer.drain()

    with HostileGateway(garbage) as gateway:
        shard = start_shard(gateway)
        received = collect(shard.events(), has_marker)
        assert dispatched(received) == [4]
        assert len(gateway.peers) == 1 and shard.stage is Stage.CONNECTED
        assert sum(shard.stats.reconnects.values()) == 0


def test_a_session_id_or_resume_url_that_is_unusable_is_not_adopted(
    start_shard: Callable[..., Shard],
) -> None:
    def odd_ready(peer: Peer) -> None:
        session(peer, session_id=f"echo {TOKEN}", resume_url="http://not-a-websocket")
        peer.dispatch("MESSAGE_CREATE", 2, {"marker": True})
        peer.drain()

    with HostileGateway(odd_ready) as gateway:
        shard = start_shard(gateway)
        collect(shard.events(), has_marker)
        info = shard.info()
        assert info.session_id is None and info.resume_url is None
        assert TOKEN not in repr(info)


# --- the token ----------------------------------------------------------------


def test_a_token_echoed_in_a_close_reason_is_redacted_everywhere(
    start_shard: Callable[..., Shard], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    def echo(peer: Peer) -> None:
        session(peer)
        peer.close(4004, f"bad token {TOKEN}".encode())
        peer.drain()

    with HostileGateway(echo) as gateway:
        shard = start_shard(gateway)
        received = collect(
            shard.events(),
            lambda got: any(e.kind is EventType.SHARD_DISCONNECTED for _, e in got),
        )
        assert shard.wait_until_ready(TIMEOUT) is False  # fatally closed
        texts = [repr(e) for _, e in received] + [r.getMessage() for r in caplog.records]
        texts += [str(shard.error), repr(shard.error), repr(shard.info())]
        assert any("<token>" in t for t in texts)
        assert not [t for t in texts if TOKEN in t]


# --- reconnecting -------------------------------------------------------------


def test_a_dead_resume_url_is_abandoned_for_the_main_gateway(
    start_shard: Callable[..., Shard],
) -> None:
    dead = gevent.socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_url = f"ws://127.0.0.1:{dead.getsockname()[1]}"
    dead.close()  # nothing listens there now: connecting is refused
    resumes: list[dict] = []

    def first(peer: Peer) -> None:
        session(peer, resume_url=dead_url)
        peer.dispatch("MESSAGE_CREATE", 2, {"n": 2})
        peer.close(4000)
        peer.drain()

    def second(peer: Peer) -> None:
        resumes.append(session(peer))
        peer.dispatch("MESSAGE_CREATE", 3, {"marker": True})
        peer.drain()

    with HostileGateway([first, second]) as gateway:
        shard = start_shard(gateway)
        received = collect(shard.events(), has_marker)
        assert dispatched(received) == [2, 3]
        # One attempt at the resume URL, then the RESUME went to the main gateway.
        assert resumes[0]["op"] == 6 and resumes[0]["d"]["seq"] == 2
        assert gateway.peers[1].path.startswith("/?v=10")
        assert shard.info().resume_url is None


def test_reconnects_the_gateway_asks_for_are_not_backed_off(
    start_shard: Callable[..., Shard],
) -> None:
    def reconnect_after_a_while(peer: Peer) -> None:
        session(peer)
        gevent.sleep(1.2)  # the session got going
        peer.send_json({"op": 7, "d": None})
        peer.drain()

    with HostileGateway(reconnect_after_a_while) as gateway:
        shard = start_shard(gateway)
        assert gateway.wait_for(lambda: len(gateway.peers) >= 6, 30)
        gaps = [
            later.opened - (earlier.closed_at or later.opened)
            for earlier, later in zip(gateway.peers, gateway.peers[1:6], strict=False)
        ]
        # Backing off the fifth would take 2-4 s (0.5 s doubling per attempt).
        assert max(gaps) < 1.0, gaps
        assert sum(shard.stats.reconnects.values()) >= 5


def test_a_gateway_that_drops_every_session_at_once_is_backed_off(
    start_shard: Callable[..., Shard],
) -> None:
    def drop_at_once(peer: Peer) -> None:
        session(peer)
        peer.close(4000)
        peer.drain()

    with HostileGateway(drop_at_once) as gateway:
        start_shard(gateway)
        assert gateway.wait_for(lambda: len(gateway.peers) >= 5, 30)
        opened = [p.opened for p in gateway.peers[:5]]
        gaps = [b - a for a, b in zip(opened, opened[1:], strict=False)]
        assert gaps[-1] > 1.0 and gaps[-1] > gaps[0], gaps


# --- size limits --------------------------------------------------------------


def _bomb(size: int) -> Callable[[Any], bytes]:
    def compress(deflate: Any) -> bytes:
        chunk = b"\x00" * (1 << 20)
        out = [deflate.compress(chunk) for _ in range(size >> 20)]
        return b"".join(out) + deflate.flush(zlib.Z_SYNC_FLUSH)

    return compress


def test_a_decompression_bomb_closes_with_1009_and_the_shard_resumes(
    start_shard: Callable[..., Shard], caplog: pytest.LogCaptureFixture
) -> None:
    closes: list[ClientFrame | None] = []
    resumes: list[dict] = []

    def bomb(peer: Peer) -> None:
        session(peer, compress=True)
        peer.dispatch("MESSAGE_CREATE", 2, {"n": 2}, compress=True)
        payload = _bomb(64 << 20)(peer._deflate)  # 64 MB of zeros in ~64 KB
        assert len(payload) < LIMIT
        peer.write(frame(payload, 0x2))
        closes.append(peer.read_close())

    def second(peer: Peer) -> None:
        resumes.append(session(peer, compress=True))
        peer.dispatch("MESSAGE_CREATE", 3, {"marker": True}, compress=True)
        peer.drain()

    with HostileGateway([bomb, second]) as gateway:
        shard = start_shard(gateway, compression=True, max_message_size=LIMIT)
        received = collect(shard.events(), has_marker)
        assert dispatched(received) == [2, 3]
        assert closes[0] is not None and closes[0].close_code == 1009
        assert resumes[0]["op"] == 6 and resumes[0]["d"]["seq"] == 2
        lines = [r.getMessage() for r in caplog.records if "max_message_size" in r.getMessage()]
        assert len(lines) == 1 and "1009" in lines[0]


def test_a_compressed_message_that_never_ends_closes_with_1009(
    start_shard: Callable[..., Shard],
) -> None:
    closes: list[ClientFrame | None] = []

    def endless(peer: Peer) -> None:
        session(peer, compress=True)
        piece = b"\x01" * 8192  # never ends in 00 00 ff ff
        for _ in range(4 * LIMIT // len(piece)):
            peer.write(frame(piece, 0x2))
        closes.append(peer.read_close())

    with HostileGateway(endless) as gateway:
        start_shard(gateway, compression=True, max_message_size=LIMIT)
        assert gateway.wait_for(lambda: bool(closes))
        assert closes[0] is not None and closes[0].close_code == 1009


def test_frames_split_byte_by_byte_still_work(start_shard: Callable[..., Shard]) -> None:
    def trickle(peer: Peer) -> None:
        peer.read_request()
        data = b""
        peer.accept()
        hello = frame(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}}).encode())
        for i in range(len(hello)):
            peer.write(hello[i : i + 1])
        peer.identify_or_resume()
        ready = {"t": "READY", "s": 1, "op": 0, "d": {"session_id": "s"}}
        message = {"t": "MESSAGE_CREATE", "s": 2, "op": 0, "d": {"marker": True}}
        data = frame(json.dumps(ready).encode()) + frame(json.dumps(message).encode())
        for i in range(len(data)):
            peer.write(data[i : i + 1])
        peer.drain()

    with HostileGateway(trickle) as gateway:
        shard = start_shard(gateway)
        assert dispatched(collect(shard.events(), has_marker)) == [2]


def test_up_times_out_naming_each_shards_last_failure() -> None:
    from gcluster import Cluster, ClusterStartError, Intents, ShardScheme

    def forbid(peer: Peer) -> None:
        peer.read_request()
        peer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        peer.wait_closed()

    with HostileGateway(forbid) as gateway:
        cluster = Cluster(
            TOKEN,
            Intents.GUILDS,
            gateway_url=gateway.url,
            shard_scheme=ShardScheme.range(range(0, 2), total=2),
            connect_timeout=1.0,
        )
        try:
            with pytest.raises(ClusterStartError) as caught:
                cluster.up(timeout=1.5)
        finally:
            cluster.down()
        message = str(caught.value)
        for shard_id in (0, 1):
            assert f"shard {shard_id} (" in message
        assert message.count("answered 403 Forbidden") == 2


def test_a_token_echoed_in_a_hello_is_not_logged(
    start_shard: Callable[..., Shard], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    closes: list[ClientFrame | None] = []

    def echo(peer: Peer) -> None:
        peer.upgrade()
        peer.hello(f"interval {TOKEN}")
        closes.append(peer.read_close())

    with HostileGateway(echo) as gateway:
        shard = start_shard(gateway)
        assert gateway.wait_for(lambda: bool(closes))
        texts = [r.getMessage() for r in caplog.records] + [shard.last_failure or ""]
        assert any("heartbeat_interval" in t and "<token>" in t for t in texts)
        assert not [t for t in texts if TOKEN in t]
