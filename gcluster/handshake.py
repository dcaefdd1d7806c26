"""The websocket opening handshake of a client, without sockets (RFC 6455 §4.1).

`ClientHandshake` makes the HTTP upgrade request and reads the answer with
h11, which bounds the size of the headers it will buffer. Anything but a valid
101 Switching Protocols is refused with `HandshakeError`; nothing is followed:
the gateway never redirects, and a redirect followed blindly could take the
token to another host or to plaintext.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable
from typing import Final

import h11

__all__ = ["ClientHandshake", "HandshakeError"]

_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# Discord's upgrade answer is well under 1 KiB; h11 refuses headers over this.
MAX_HEADERS: Final = 16 * 1024


class HandshakeError(Exception):
    """The server did not accept the websocket upgrade.

    Attributes:
        status: the HTTP status it answered with, None when it answered no
            HTTP at all (garbage, or the connection closed mid-headers).
        location: the Location header of a redirect, else None.
    """

    def __init__(self, message: str, status: int | None = None, location: str | None = None):
        super().__init__(message)
        self.status = status
        self.location = location


class ClientHandshake:
    """One upgrade request and the reading of its answer.

    Args:
        host: the Host header ("host" or "host:port").
        target: the request target, path and query ("/?v=10&encoding=json").
    """

    def __init__(self, host: str, target: str) -> None:
        self._key = base64.b64encode(os.urandom(16))
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADERS)
        request = h11.Request(
            method="GET",
            target=target,
            headers=[
                ("Host", host),
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Key", self._key.decode("ascii")),
                ("Sec-WebSocket-Version", "13"),
                ("User-Agent", "gcluster"),
            ],
        )
        self.request: bytes = self._conn.send(request) + self._conn.send(h11.EndOfMessage())

    def receive(self, data: bytes) -> bytes | None:
        """Feed what the socket read (b"" at end of stream).

        Returns:
            None while the answer is incomplete; once the upgrade is accepted,
            the bytes that came after it (the first websocket frames, maybe).

        Raises:
            HandshakeError: any answer but a valid 101, or none at all.
        """
        conn = self._conn
        try:
            conn.receive_data(data)
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    return None
                if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
                    self._check_accept(event.headers)
                    leftover, _closed = conn.trailing_data
                    return bytes(leftover)
                if isinstance(event, h11.InformationalResponse):
                    continue  # 100 Continue and the like come before the answer
                if isinstance(event, h11.Response):
                    raise _rejected(event)
                # h11 reports a stream that ends before the answer as an error
                # (below), so no other event can come before the answer.
                raise HandshakeError(f"unexpected answer to the upgrade: {event!r}")
        except h11.RemoteProtocolError as err:
            if not data:
                raise HandshakeError("the connection closed during the upgrade") from err
            raise HandshakeError(f"the upgrade was answered with no valid HTTP ({err})") from err

    def _check_accept(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        found: dict[bytes, bytes] = {}
        for name, value in headers:  # h11 gives names in lower case
            found[name] = found[name] + b"," + value if name in found else value
        if found.get(b"upgrade", b"").strip().lower() != b"websocket":
            raise HandshakeError("the 101 answer lacks 'Upgrade: websocket'", 101)
        tokens = {t.strip().lower() for t in found.get(b"connection", b"").split(b",")}
        if b"upgrade" not in tokens:
            raise HandshakeError("the 101 answer lacks 'Connection: Upgrade'", 101)
        expected = base64.b64encode(hashlib.sha1(self._key + _GUID).digest())
        if found.get(b"sec-websocket-accept", b"").strip() != expected:
            raise HandshakeError("the 101 answer has a wrong Sec-WebSocket-Accept", 101)
        # Neither was offered, so a server that picks one breaks §4.1.
        for header in (b"sec-websocket-extensions", b"sec-websocket-protocol"):
            if found.get(header, b"").strip():
                raise HandshakeError(f"the 101 answer chose a {header.decode()} never offered", 101)


def _rejected(response: h11.Response) -> HandshakeError:
    reason = response.reason.decode("latin-1")[:100]  # latin-1 decodes any byte
    status = response.status_code
    location = None
    for name, value in response.headers:
        if name == b"location":
            location = value.decode("latin-1")[:500]
    message = f"the upgrade was answered {status} {reason}".rstrip()
    if location is not None:
        message += f" (Location: {location}; redirects are not followed)"
    return HandshakeError(message, status, location)
