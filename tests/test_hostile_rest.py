"""GET /gateway/bot against a REST server that breaks the rules, on a raw socket.

The call has one deadline for the whole answer and reads at most
`http.MAX_BODY` bytes of body, never inflating it: a server dripping bytes,
sending megabytes or a compressed bomb gets a `ClusterStartError` that says
so, within the deadline.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator

import gevent
import pytest
from hostile import HostileGateway, Peer

from gcluster import http
from gcluster._token import Token
from gcluster.errors import ClusterStartError

TOKEN = Token("Bot MTA5ODc2NTQzMjEwOTg3NjU0.GhJkLm.rest-hostile-token")
BODY = json.dumps(
    {
        "url": "ws://127.0.0.1:9",
        "shards": 2,
        "session_start_limit": {
            "total": 1000,
            "remaining": 999,
            "reset_after": 1000,
            "max_concurrency": 1,
        },
    }  # fmt: skip
).encode()


def answer(status: str, body: bytes, *headers: bytes) -> bytes:
    head = b"".join(h + b"\r\n" for h in headers)
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n".encode()
        + head
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


@pytest.fixture
def serve() -> Iterator[list[HostileGateway]]:
    started: list[HostileGateway] = []
    yield started
    for server in started:
        server.stop()


def api(server: HostileGateway) -> str:
    return f"http://127.0.0.1:{server.port}/api/v10"


def ask(server: HostileGateway, timeout: float = 1.0) -> http.GatewayBot:
    # The test's own bound: a call that ignored its deadline fails here, not hangs.
    with gevent.Timeout(timeout + 10, AssertionError("GET /gateway/bot outlived its deadline")):
        return http.get_gateway_bot(api(server), TOKEN, timeout=timeout)


def start(serve: list[HostileGateway], script: object) -> HostileGateway:
    server = HostileGateway(script).start()  # type: ignore[arg-type]
    serve.append(server)
    return server


def test_an_answer_dripped_fast_enough_is_taken(serve: list[HostileGateway]) -> None:
    def script(peer: Peer) -> None:
        peer.read_request()
        for byte in answer("200 OK", BODY):
            peer.write(bytes([byte]))

    server = start(serve, script)
    assert ask(server, timeout=10).shards == 2
    request = server.peers[0].request.lower()
    assert b"accept-encoding: identity" in request


@pytest.mark.parametrize("stage", ["status line", "headers", "body"])
def test_a_dripping_server_meets_one_deadline_for_the_whole_answer(
    serve: list[HostileGateway], stage: str
) -> None:
    full = answer("200 OK", BODY)
    given = {"status line": 0, "headers": 30, "body": len(full) - 10}[stage]

    def script(peer: Peer) -> None:
        peer.read_request()
        peer.write(full[:given])
        # A byte every 0.2 s: each read is well within requests' own timeout.
        for byte in full[given:]:
            gevent.sleep(0.2)
            peer.write(bytes([byte]))

    server = start(serve, script)
    with pytest.raises(ClusterStartError, match="gave no whole answer within 1 s"):
        ask(server, timeout=1.0)


def test_a_body_past_the_bound_is_refused_unread(serve: list[HostileGateway]) -> None:
    sent: list[int] = []

    def script(peer: Peer) -> None:
        peer.read_request()
        size = 50 * 1024 * 1024
        peer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
        chunk = b" " * 65536
        for _ in range(size // len(chunk)):
            peer.write(chunk)
            sent.append(len(chunk))

    server = start(serve, script)
    with pytest.raises(ClusterStartError, match=f"a body over {http.MAX_BODY} bytes"):
        ask(server, timeout=10)
    # The client hung up long before the 50 MB were through.
    assert server.wait_for(lambda: server.peers[0].closed_at is not None)
    assert sum(sent) < 10 * 1024 * 1024


def test_a_compressed_bomb_is_not_inflated(serve: list[HostileGateway]) -> None:
    # Valid JSON once inflated (20 MB of it, from about 20 KB): a client that
    # inflated would adopt it; this one reads it as sent, which is not JSON.
    bomb = gzip.compress(BODY + b" " * (20 * 1024 * 1024))

    def script(peer: Peer) -> None:
        peer.read_request()
        peer.write(answer("200 OK", bomb, b"Content-Encoding: gzip"))

    server = start(serve, script)
    with pytest.raises(ClusterStartError, match="gave an unexpected body"):
        ask(server, timeout=10)


def test_a_redirect_is_named_and_not_followed(serve: list[HostileGateway]) -> None:
    bystander = start(serve, lambda peer: peer.read_request())

    def script(peer: Peer) -> None:
        peer.read_request()
        location = f"http://127.0.0.1:{bystander.port}/api/v10/gateway/bot".encode()
        peer.write(answer("307 Temporary Redirect", b"", b"Location: " + location))

    server = start(serve, script)
    with pytest.raises(ClusterStartError, match=r"answered 307 \(Location: .*; not followed\)"):
        ask(server, timeout=10)
    assert bystander.peers == []
