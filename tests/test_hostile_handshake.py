"""The websocket upgrade against servers that answer it wrongly (tests/hostile.py).

Whatever the answer, `Connection.open` must give `ConnectionFailed` within
its deadline, follow nothing, keep the hub running and leave no socket open.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import gevent
import pytest
from gevent.server import StreamServer
from hostile import TOKEN, HostileGateway, Peer, frame

from gcluster._token import Token
from gcluster.errors import ConnectionFailed
from gcluster.transport import Connection

DEADLINE = 1.0
# Generous: the point is "bounded", not how fast; a loaded machine is slow.
SLACK = 3.0


class Ticker:
    """Counts hub turns while an attempt runs: a blocked hub stops it."""

    def __init__(self) -> None:
        self.ticks = 0
        self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        while True:
            gevent.sleep(0.01)
            self.ticks += 1

    def stop(self) -> int:
        self._greenlet.kill()
        return self.ticks


def attempt(url: str, timeout: float = DEADLINE) -> tuple[ConnectionFailed, float, int]:
    ticker = Ticker()
    started = time.monotonic()
    with pytest.raises(ConnectionFailed) as caught:
        Connection.open(url, timeout=timeout, redact=Token(TOKEN).redact)
    return caught.value, time.monotonic() - started, ticker.stop()


@pytest.fixture
def bystander() -> Iterator[StreamServer]:
    """A server that only counts who connects: where a redirect would lead."""
    server = StreamServer(("127.0.0.1", 0), lambda sock, addr: sock.close())
    server.connections = 0  # type: ignore[attr-defined]

    def count(sock: object, addr: object) -> None:
        server.connections += 1  # type: ignore[attr-defined]

    server.set_handle(count)
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_refused_naming_status_and_location_and_never_followed(
    status: int, bystander: StreamServer
) -> None:
    location = f"ws://127.0.0.1:{bystander.server_port}/elsewhere"

    def redirect(peer: Peer) -> None:
        peer.read_request()
        peer.write(
            f"HTTP/1.1 {status} Moved\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode()
        )
        peer.drain()

    with HostileGateway(redirect) as gateway:
        error, _, _ = attempt(gateway.url)
        assert f" {status} " in str(error) and location in str(error)
        assert "not followed" in str(error)
        assert bystander.connections == 0  # type: ignore[attr-defined]
        assert gateway.wait_for(lambda: gateway.peers[0].closed_at is not None)


def test_a_redirect_location_holding_the_token_is_redacted() -> None:
    def redirect(peer: Peer) -> None:
        peer.read_request()
        peer.write(f"HTTP/1.1 302 Found\r\nLocation: ws://x/?t={TOKEN}\r\n\r\n".encode())
        peer.drain()

    with HostileGateway(redirect) as gateway:
        error, _, _ = attempt(gateway.url)
        assert TOKEN not in str(error) and "<token>" in str(error)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 5\r\n\r\n",
        b"HTTP/1.1 500 Internal Server Error\r\n\r\n",
        b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\r\n",
    ],
    ids=["200", "403", "429", "500", "503"],
)
def test_any_other_status_is_a_connection_failure_naming_it(answer: bytes) -> None:
    def answer_with(peer: Peer) -> None:
        peer.read_request()
        peer.write(answer)
        peer.drain()

    with HostileGateway(answer_with) as gateway:
        error, elapsed, ticks = attempt(gateway.url)
        status = answer.split(b" ")[1].decode()
        assert f"answered {status}" in str(error)
        assert elapsed < DEADLINE + SLACK


@pytest.mark.parametrize(
    "answer",
    [
        b"garbage that is not HTTP\r\n\r\n",
        b"\x00\xff\x00\xff" * 100,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgr",  # then closed mid-headers
        b"",  # closed before a byte
    ],
    ids=["garbage", "binary", "cut-off", "nothing"],
)
def test_garbage_or_a_close_mid_answer_fails_at_once(answer: bytes) -> None:
    def answer_with(peer: Peer) -> None:
        peer.read_request()
        peer.write(answer)
        peer.sock.close()

    with HostileGateway(answer_with) as gateway:
        error, elapsed, _ = attempt(gateway.url, timeout=30)
        assert "failed" in str(error)
        assert elapsed < SLACK  # the close ended it, not the 30 s deadline


@pytest.mark.parametrize("stage", ["accept", "request", "half-headers"])
def test_silence_at_any_stage_ends_within_the_deadline(stage: str) -> None:
    def silent(peer: Peer) -> None:
        if stage != "accept":
            peer.read_request()
        if stage == "half-headers":
            peer.write(b"HTTP/1.1 101 Switching Protocols\r\n")
        peer.wait_closed()

    with HostileGateway(silent) as gateway:
        error, elapsed, ticks = attempt(gateway.url, timeout=0.5)
        assert "timed out" in str(error)
        assert 0.5 <= elapsed < 0.5 + SLACK
        assert ticks > 0, "the hub was blocked during the attempt"
        # The client dropped the socket: the server sees it go.
        assert gateway.wait_for(lambda: gateway.peers[0].closed_at is not None, 5)


def test_endless_headers_are_refused_without_buffering_them() -> None:
    def endless(peer: Peer) -> None:
        peer.read_request()
        peer.write(b"HTTP/1.1 101 Switching Protocols\r\n")
        for _ in range(1000):  # 1 MB of one header line, far past any real answer
            peer.write(b"X-Filler: " + b"a" * 1000 + b"\r\n")

    with HostileGateway(endless) as gateway:
        error, _, _ = attempt(gateway.url, timeout=10)
        assert "no valid HTTP" in str(error)


@pytest.mark.parametrize(
    "headers",
    [
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: d3Jvbmc=\r\n",
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n",
        b"Upgrade: h2c\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n",
        b"Upgrade: websocket\r\nSec-WebSocket-Accept: {accept}\r\n",
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate\r\n",
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
        b"Sec-WebSocket-Protocol: chat\r\n",
    ],
    ids=["wrong-accept", "no-upgrade", "other-upgrade", "no-connection", "extension", "protocol"],
)
def test_a_101_that_breaks_rfc_6455_is_refused(headers: bytes) -> None:
    from hostile import accept_key

    def switch(peer: Peer) -> None:
        peer.read_request()
        peer.write(
            b"HTTP/1.1 101 Switching Protocols\r\n"
            + headers.replace(b"{accept}", accept_key(peer.key()))
            + b"\r\n"
        )
        peer.drain()

    with HostileGateway(switch) as gateway:
        error, _, _ = attempt(gateway.url)
        assert "101 answer" in str(error)


def test_frames_sent_with_the_101_are_not_lost() -> None:
    hello = b'{"op":10,"d":{"heartbeat_interval":41250}}'

    def eager(peer: Peer) -> None:
        peer.read_request()
        peer.accept(then=frame(hello))  # one write: the 101 and the first frame
        peer.drain()

    with HostileGateway(eager) as gateway:
        conn = Connection.open(gateway.url, timeout=DEADLINE)
        try:
            assert conn.receive() == [(0x1, hello)]
        finally:
            conn.abort()


def test_the_upgrade_request_is_a_valid_websocket_request() -> None:
    def check(peer: Peer) -> None:
        peer.upgrade()
        peer.drain()

    with HostileGateway(check) as gateway:
        conn = Connection.open(gateway.url + "/?v=10&encoding=json", timeout=DEADLINE)
        conn.abort()
        request = gateway.peers[0].request.decode()
        lines = request.split("\r\n")
        assert lines[0] == "GET /?v=10&encoding=json HTTP/1.1"
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        assert headers["host"] == f"127.0.0.1:{gateway.port}"
        assert headers["upgrade"].lower() == "websocket"
        assert "upgrade" in headers["connection"].lower()
        assert headers["sec-websocket-version"] == "13"
        assert len(__import__("base64").b64decode(headers["sec-websocket-key"])) == 16
