"""The client's websocket upgrade without sockets: the request it writes, the answers it takes.

The answers are written out by hand, byte for byte, as a server would send
them; `tests/test_hostile_handshake.py` runs the same upgrade over loopback.
"""

from __future__ import annotations

import base64
import hashlib

import h11
import pytest

from gcluster.handshake import MAX_HEADERS, ClientHandshake, HandshakeError

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def request_of(handshake: ClientHandshake) -> h11.Request:
    """The request as a server reads it (checked by h11's own server side)."""
    server = h11.Connection(h11.SERVER)
    server.receive_data(handshake.request)
    request = server.next_event()
    assert isinstance(request, h11.Request)
    assert isinstance(server.next_event(), h11.EndOfMessage)
    assert server.next_event() is h11.PAUSED  # nothing after the request
    return request


def key_of(handshake: ClientHandshake) -> bytes:
    return dict(request_of(handshake).headers)[b"sec-websocket-key"]


def accept_for(handshake: ClientHandshake) -> bytes:
    return base64.b64encode(hashlib.sha1(key_of(handshake) + GUID).digest())


def answer(*headers: bytes, status: bytes = b"101 Switching Protocols") -> bytes:
    return b"HTTP/1.1 " + status + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"


def upgrade(handshake: ClientHandshake, *extra: bytes) -> bytes:
    """A valid 101 answer to `handshake`, with `extra` headers."""
    return answer(
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Accept: " + accept_for(handshake),
        *extra,
    )


def refused(handshake: ClientHandshake, data: bytes) -> HandshakeError:
    with pytest.raises(HandshakeError) as caught:
        handshake.receive(data)
    return caught.value


# -- the request ---------------------------------------------------------------


def test_the_request_asks_for_a_websocket_upgrade() -> None:
    handshake = ClientHandshake("gateway.discord.gg", "/?v=10&encoding=json")
    request = request_of(handshake)
    assert (request.method, request.target, request.http_version) == (
        b"GET",
        b"/?v=10&encoding=json",
        b"1.1",
    )
    assert request.headers.raw_items() == [
        (b"Host", b"gateway.discord.gg"),
        (b"Upgrade", b"websocket"),
        (b"Connection", b"Upgrade"),
        (b"Sec-WebSocket-Key", key_of(handshake)),
        (b"Sec-WebSocket-Version", b"13"),
        (b"User-Agent", b"gcluster"),
    ]


def test_the_key_is_sixteen_random_bytes_new_for_every_handshake() -> None:
    keys = {key_of(ClientHandshake("h", "/")) for _ in range(20)}
    assert len(keys) == 20
    assert all(len(base64.b64decode(key, validate=True)) == 16 for key in keys)


def test_the_host_may_carry_a_port() -> None:
    request = request_of(ClientHandshake("127.0.0.1:8080", "/"))
    assert dict(request.headers)[b"host"] == b"127.0.0.1:8080"


# -- accepted answers ----------------------------------------------------------


def test_a_valid_upgrade_is_accepted_with_nothing_after_it() -> None:
    handshake = ClientHandshake("h", "/")
    assert handshake.receive(upgrade(handshake)) == b""


def test_the_bytes_after_the_upgrade_are_handed_back() -> None:
    handshake = ClientHandshake("h", "/")
    hello = b'\x81\x0b{"op":10,}' + b"\x82\x01z"
    assert handshake.receive(upgrade(handshake) + hello) == hello


def test_an_answer_read_byte_by_byte() -> None:
    handshake = ClientHandshake("h", "/")
    data = upgrade(handshake)
    for index in range(len(data) - 1):
        assert handshake.receive(data[index : index + 1]) is None
    assert handshake.receive(data[-1:]) == b""


def test_an_interim_answer_before_the_upgrade_is_skipped() -> None:
    handshake = ClientHandshake("h", "/")
    data = answer(status=b"100 Continue") + answer(status=b"102 Processing")
    assert handshake.receive(data) is None
    assert handshake.receive(upgrade(handshake)) == b""


@pytest.mark.parametrize(
    "extra",
    [
        [b"Upgrade: WebSocket", b"Connection: upgrade"],
        [b"Upgrade:   websocket  ", b"Connection: keep-alive, Upgrade"],
        [b"Upgrade: websocket", b"Connection: Upgrade", b"Connection: keep-alive"],
        [b"Upgrade: websocket", b"Connection: Upgrade", b"Sec-WebSocket-Extensions:"],
        [b"Upgrade: websocket", b"Connection: Upgrade", b"Sec-WebSocket-Protocol:  "],
    ],
    ids=["case", "spaces-and-lists", "repeated-header", "empty-extensions", "empty-protocol"],
)
def test_the_upgrade_headers_are_read_as_http_says(extra: list[bytes]) -> None:
    handshake = ClientHandshake("h", "/")
    data = answer(*extra, b"Sec-WebSocket-Accept: " + accept_for(handshake))
    assert handshake.receive(data) == b""


# -- refused 101 answers ---------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ([b"Connection: Upgrade"], "the 101 answer lacks 'Upgrade: websocket'"),
        ([b"Upgrade: h2c", b"Connection: Upgrade"], "the 101 answer lacks 'Upgrade: websocket'"),
        ([b"Upgrade: websocket"], "the 101 answer lacks 'Connection: Upgrade'"),
        (
            [b"Upgrade: websocket", b"Connection: keep-alive, close"],
            "the 101 answer lacks 'Connection: Upgrade'",
        ),
        (
            [b"Upgrade: websocket", b"Connection: Upgraded"],
            "the 101 answer lacks 'Connection: Upgrade'",
        ),
    ],
)
def test_a_101_without_the_upgrade_headers_is_refused(headers: list[bytes], message: str) -> None:
    handshake = ClientHandshake("h", "/")
    error = refused(handshake, answer(*headers, b"Sec-WebSocket-Accept: " + accept_for(handshake)))
    assert (str(error), error.status, error.location) == (message, 101, None)


def test_a_101_with_another_handshakes_accept_is_refused() -> None:
    handshake, other = ClientHandshake("h", "/"), ClientHandshake("h", "/")
    error = refused(handshake, upgrade(other))
    assert (str(error), error.status) == ("the 101 answer has a wrong Sec-WebSocket-Accept", 101)


def test_a_101_without_an_accept_is_refused() -> None:
    handshake = ClientHandshake("h", "/")
    error = refused(handshake, answer(b"Upgrade: websocket", b"Connection: Upgrade"))
    assert str(error) == "the 101 answer has a wrong Sec-WebSocket-Accept"


def test_a_101_whose_accept_is_the_key_itself_is_refused() -> None:
    handshake = ClientHandshake("h", "/")
    data = answer(
        b"Upgrade: websocket", b"Connection: Upgrade", b"Sec-WebSocket-Accept: " + key_of(handshake)
    )
    assert str(refused(handshake, data)) == "the 101 answer has a wrong Sec-WebSocket-Accept"


@pytest.mark.parametrize(
    ("header", "name"),
    [
        (b"Sec-WebSocket-Extensions: permessage-deflate", "sec-websocket-extensions"),
        (b"Sec-WebSocket-Protocol: chat", "sec-websocket-protocol"),
    ],
)
def test_a_101_that_picks_what_was_never_offered_is_refused(header: bytes, name: str) -> None:
    handshake = ClientHandshake("h", "/")
    error = refused(handshake, upgrade(handshake, header))
    assert (str(error), error.status) == (f"the 101 answer chose a {name} never offered", 101)


# -- other answers -------------------------------------------------------------


def test_a_refusal_carries_its_status() -> None:
    error = refused(ClientHandshake("h", "/"), answer(status=b"403 Forbidden"))
    assert (str(error), error.status, error.location) == (
        "the upgrade was answered 403 Forbidden",
        403,
        None,
    )


def test_a_refusal_without_a_reason_phrase() -> None:
    error = refused(ClientHandshake("h", "/"), answer(status=b"426 "))
    assert (str(error), error.status) == ("the upgrade was answered 426", 426)


def test_a_long_reason_phrase_is_cut_to_100_characters() -> None:
    error = refused(ClientHandshake("h", "/"), answer(status=b"400 " + b"r" * 300))
    assert str(error) == "the upgrade was answered 400 " + "r" * 100


def test_a_reason_phrase_is_read_as_latin_1() -> None:
    error = refused(ClientHandshake("h", "/"), answer(status=b"500 Erreur \xe9trange"))
    assert str(error) == "the upgrade was answered 500 Erreur \xe9trange"


def test_a_redirect_is_refused_not_followed() -> None:
    data = answer(b"Content-Length: 0", b"Location: http://evil.example/", status=b"301 Moved")
    error = refused(ClientHandshake("h", "/"), data)
    assert (str(error), error.status, error.location) == (
        "the upgrade was answered 301 Moved"
        " (Location: http://evil.example/; redirects are not followed)",
        301,
        "http://evil.example/",
    )


def test_a_long_location_is_cut_to_500_characters() -> None:
    location = b"https://elsewhere.example/" + b"p" * 1000
    error = refused(
        ClientHandshake("h", "/"), answer(b"Location: " + location, status=b"302 Found")
    )
    assert error.location == location[:500].decode()
    assert str(error).endswith(f"(Location: {location[:500].decode()}; redirects are not followed)")


def test_a_location_is_read_as_latin_1() -> None:
    data = answer(b"Location: /caf\xe9", status=b"307 Temporary Redirect")
    assert refused(ClientHandshake("h", "/"), data).location == "/caf\xe9"


def test_the_last_location_header_counts() -> None:
    data = answer(b"Location: /first", b"Location: /second", status=b"302 Found")
    assert refused(ClientHandshake("h", "/"), data).location == "/second"


def test_garbage_is_refused_as_no_http() -> None:
    error = refused(ClientHandshake("h", "/"), b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    assert str(error).startswith("the upgrade was answered with no valid HTTP (")
    assert str(error).endswith(")") and error.status is None and error.location is None


@pytest.mark.parametrize("before", [b"", b"HTTP/1.1 101 Swi", answer(status=b"100 Continue")])
def test_the_connection_closing_before_the_answer_is_refused(before: bytes) -> None:
    handshake = ClientHandshake("h", "/")
    if before:
        assert handshake.receive(before) is None
    error = refused(handshake, b"")
    assert (str(error), error.status) == ("the connection closed during the upgrade", None)


def test_headers_over_the_limit_are_refused() -> None:
    handshake = ClientHandshake("h", "/")
    data = b"HTTP/1.1 101 Switching Protocols\r\nX-Padding: " + b"p" * MAX_HEADERS
    error = refused(handshake, data)
    assert str(error).startswith("the upgrade was answered with no valid HTTP (")
    assert error.status is None


def test_headers_just_under_the_limit_are_read() -> None:
    handshake = ClientHandshake("h", "/")
    data = upgrade(handshake)
    padding = b"X-Padding: " + b"p" * (MAX_HEADERS - len(data) - 20)
    assert handshake.receive(upgrade(handshake, padding)) == b""
