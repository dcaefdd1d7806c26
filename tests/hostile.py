"""A gateway that breaks the rules on purpose: raw sockets, scripted per connection.

`GatewaySimulator` reads the gateway's rules the way the client does, so it
cannot show what the client does when a peer breaks them. This server shares
no code with the client or the simulator: it parses the upgrade request and
writes frames byte by byte, and each accepted connection runs a script, a
function of a `Peer`, which can answer the upgrade with anything, send frames
no server may send, and read what the client sent back.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent
from gevent.event import Event as Flag
from gevent.server import StreamServer

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TOKEN = "MTA5ODc2NTQzMjEwOTg3NjU0.GhJkLm.hostile-peer-secret-token-value"


def accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def frame(
    payload: bytes,
    opcode: int = 0x1,
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = None,
    length: int | None = None,
) -> bytes:
    """One server frame, as broken as asked (`length` may lie about the payload)."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | rsv << 4 | opcode
    mask_bit = 0x80 if mask else 0
    if n < 126:
        header = bytes([b0, mask_bit | n])
    elif n < 1 << 16:
        header = bytes([b0, mask_bit | 126]) + struct.pack("!H", n)
    else:
        header = bytes([b0, mask_bit | 127]) + struct.pack("!Q", n)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        header += mask
    return header + payload


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


@dataclass
class ClientFrame:
    opcode: int
    payload: bytes
    at: float

    @property
    def close_code(self) -> int | None:
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass
class Peer:
    """One accepted connection, driven by a script."""

    sock: Any
    index: int
    request: bytes = b""
    frames: list[ClientFrame] = field(default_factory=list)
    opened: float = field(default_factory=time.monotonic)
    closed_at: float | None = None
    _buffer: bytes = b""
    _deflate: Any = None

    # --- the upgrade ----------------------------------------------------------

    def read_request(self, timeout: float = 10.0) -> bytes:
        with gevent.Timeout(timeout):
            while b"\r\n\r\n" not in self._buffer:
                data = self.sock.recv(4096)
                if not data:
                    raise ConnectionError("client went away during the upgrade")
                self._buffer += data
        self.request, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        return self.request

    @property
    def path(self) -> str:
        return self.request.split(b" ", 2)[1].decode()

    def key(self) -> bytes:
        for line in self.request.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                return value.strip()
        raise AssertionError("no Sec-WebSocket-Key in the upgrade request")

    def upgrade(self) -> None:
        """Read the upgrade request and accept it."""
        self.read_request()
        self.accept()

    def accept(self, extra_headers: bytes = b"", then: bytes = b"") -> None:
        """Answer 101 as a good server would, maybe followed at once by `then`."""
        self.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: "
            + accept_key(self.key())
            + b"\r\n"
            + extra_headers
            + b"\r\n"
            + then
        )

    # --- writing --------------------------------------------------------------

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_json(self, message: Any, *, compress: bool = False) -> None:
        payload = json.dumps(message).encode() if not isinstance(message, bytes) else message
        if compress:
            if self._deflate is None:
                self._deflate = zlib.compressobj()
            payload = self._deflate.compress(payload) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
            self.write(frame(payload, 0x2))
        else:
            self.write(frame(payload, 0x1))

    def hello(self, interval_ms: Any = 41250, **options: Any) -> None:
        self.send_json(
            {"op": 10, "d": {"heartbeat_interval": interval_ms}, "s": None, "t": None}, **options
        )

    def dispatch(self, name: str, seq: Any, data: Any = None, **options: Any) -> None:
        self.send_json(
            {"t": name, "s": seq, "op": 0, "d": data if data is not None else {}}, **options
        )

    def ready(
        self, session_id: Any = "hostile-session", resume_url: Any = None, **options: Any
    ) -> None:
        d: dict[str, Any] = {"session_id": session_id, "v": 10, "user": {"id": "1"}}
        if resume_url is not None:
            d["resume_gateway_url"] = resume_url
        self.dispatch("READY", 1, d, **options)

    def close(self, code: int, reason: bytes = b"") -> None:
        self.write(frame(close_payload(code, reason), 0x8))

    # --- reading what the client sent -----------------------------------------

    def read_frame(self, timeout: float = 10.0) -> ClientFrame | None:
        """The next frame the client sent, unmasked; None once it closed the socket."""
        with gevent.Timeout(timeout):
            while True:
                parsed = _parse_client_frame(self._buffer)
                if parsed is not None:
                    found, self._buffer = parsed
                    self.frames.append(found)
                    return found
                data = self.sock.recv(65536)
                if not data:
                    self.closed_at = time.monotonic()
                    return None
                self._buffer += data

    def read_until(
        self, predicate: Callable[[ClientFrame], bool], timeout: float = 10.0
    ) -> ClientFrame | None:
        deadline = time.monotonic() + timeout
        while True:
            got = self.read_frame(max(0.01, deadline - time.monotonic()))
            if got is None or predicate(got):
                return got

    def read_close(self, timeout: float = 10.0) -> ClientFrame | None:
        return self.read_until(lambda f: f.opcode == 0x8, timeout)

    def identify_or_resume(self, timeout: float = 10.0) -> dict[str, Any]:
        got = self.read_until(lambda f: f.opcode == 0x1 and f.json().get("op") in (2, 6), timeout)
        assert got is not None, "the client closed instead of identifying"
        message: dict[str, Any] = got.json()
        return message

    def wait_closed(self, timeout: float = 60.0) -> None:
        """Discard whatever comes until the client closes the socket."""
        with gevent.Timeout(timeout, False):
            while self.sock.recv(65536):
                pass
            self.closed_at = time.monotonic()

    def drain(self) -> None:
        """Read until the client closes the connection (or the test ends it)."""
        try:
            while self.read_frame(timeout=60) is not None:
                pass
        except (OSError, gevent.Timeout):
            pass


def _parse_client_frame(data: bytes) -> tuple[ClientFrame, bytes] | None:
    if len(data) < 2:
        return None
    n = data[1] & 0x7F
    pos = 2
    if n == 126:
        if len(data) < 4:
            return None
        (n,) = struct.unpack_from("!H", data, 2)
        pos = 4
    elif n == 127:
        if len(data) < 10:
            return None
        (n,) = struct.unpack_from("!Q", data, 2)
        pos = 10
    assert data[1] & 0x80, "a client frame must be masked (RFC 6455 §5.3)"
    if len(data) < pos + 4 + n:
        return None
    key = data[pos : pos + 4]
    body = data[pos + 4 : pos + 4 + n]
    payload = bytes(b ^ key[i % 4] for i, b in enumerate(body))
    return ClientFrame(data[0] & 0x0F, payload, time.monotonic()), data[pos + 4 + n :]


Script = Callable[[Peer], None]


class HostileGateway:
    """A server on 127.0.0.1 whose connections run `script(peer)`, one per connection.

    `scripts` may be one script for every connection or a list, one per
    connection in order (the last one repeats).
    """

    def __init__(self, scripts: Script | list[Script]) -> None:
        self._scripts = scripts if isinstance(scripts, list) else [scripts]
        self.peers: list[Peer] = []
        self.errors: list[BaseException] = []
        self._changed = Flag()
        self._server = StreamServer(("127.0.0.1", 0), self._handle)

    def start(self) -> HostileGateway:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(timeout=1)

    def __enter__(self) -> HostileGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def _handle(self, sock: Any, address: Any) -> None:
        peer = Peer(sock, len(self.peers))
        self.peers.append(peer)
        self._changed.set()
        script = self._scripts[min(peer.index, len(self._scripts) - 1)]
        try:
            script(peer)
        except (OSError, gevent.Timeout, ConnectionError):
            pass  # the client went away, as it may
        except BaseException as err:  # a broken script must fail the test, not vanish
            self.errors.append(err)
            raise
        finally:
            peer.closed_at = peer.closed_at or time.monotonic()
            self._changed.set()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._changed.clear()
            self._changed.wait(min(remaining, 0.05))
        return True
