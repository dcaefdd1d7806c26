"""One websocket connection to the gateway, on gevent sockets.

This is the only module that touches websocket-client. It opens the TCP (and
TLS) connection with gevent's own socket and ssl modules, so the library works
whether or not the application monkey-patched, and hands the connected socket
to websocket-client for the handshake, sending and close frames. Reading is
done here in large chunks parsed by `frames.FrameParser`: one socket read can
yield many messages.

Errors from websocket-client, ssl and the socket are translated into
`ConnectionFailed` (connecting) and `ConnectionClosed` (afterwards).
"""

from __future__ import annotations

import logging
import ssl as _stdlib_ssl
from typing import Any
from urllib.parse import urlsplit

import gevent
import websocket
from gevent import socket as gsocket
from gevent import ssl as gssl
from gevent.lock import Semaphore

from gcluster.errors import ConnectionFailed
from gcluster.frames import OP_CLOSE, OP_PING, FrameError, FrameParser, parse_close

__all__ = ["Connection", "ConnectionClosed", "default_ssl_context"]

log = logging.getLogger(__name__)

_READ_SIZE = 256 * 1024
# Close frames and the last sends of a dying connection must not hang a shard.
_SEND_TIMEOUT = 10.0


class ConnectionClosed(Exception):
    """The connection is over.

    Attributes:
        code: the close code the peer sent, None when it dropped without one.
        reason: the close frame's reason.
    """

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"connection closed ({code}{': ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


def default_ssl_context() -> Any:
    """A context that verifies certificates (the system's CAs) and host names.

    Built from gevent's SSLContext class: `gevent.ssl.create_default_context()`
    returns the standard library's class unless the application monkey-patched,
    and that one's handshake would block the hub.
    """
    context = gssl.SSLContext(_stdlib_ssl.PROTOCOL_TLS_CLIENT)  # verifies by default
    context.load_default_certs()
    return context


def _wrap(sock: Any, context: Any, hostname: str) -> Any:
    """TLS over a gevent socket with any SSLContext, without blocking the hub."""
    if isinstance(context, gssl.SSLContext):
        return context.wrap_socket(sock, server_hostname=hostname)
    # A standard-library context (e.g. ssl.create_default_context(cafile=...)):
    # gevent's SSLSocket accepts it the way gevent's own SSLContext passes itself.
    return gssl.SSLSocket(sock=sock, server_hostname=hostname, _context=context)


class Connection:
    """A connected gateway websocket.

    One greenlet reads (`receive`); any number may `send`, serialised by a lock
    so two payloads never interleave on the wire.
    """

    def __init__(self, ws: websocket.WebSocket, sock: Any, url: str) -> None:
        self._ws = ws
        self._sock = sock
        self.url = url
        self._parser = FrameParser()
        self._send_lock = Semaphore()
        self.closed = False
        self.bytes_received = 0
        # A close frame read together with messages before it: those are
        # returned first, the close is raised on the next call.
        self._pending_close: ConnectionClosed | None = None

    @classmethod
    def open(cls, url: str, *, timeout: float = 10.0, ssl_context: Any = None) -> Connection:
        """Connect and complete the websocket handshake within `timeout` seconds.

        Raises:
            ConnectionFailed: DNS, TCP, TLS or the handshake failed or timed out.
        """
        parts = urlsplit(url)
        secure = parts.scheme == "wss"
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ConnectionFailed(f"not a websocket URL: {url}")
        port = parts.port or (443 if secure else 80)
        sock = None
        try:
            with gevent.Timeout(
                timeout, ConnectionFailed(f"connecting to {parts.netloc} timed out")
            ):
                sock = gsocket.create_connection((parts.hostname, port))
                sock.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
                if secure:
                    context = ssl_context if ssl_context is not None else default_ssl_context()
                    sock = _wrap(sock, context, parts.hostname)
                ws = websocket.WebSocket(enable_multithread=False, skip_utf8_validation=True)
                ws.connect(url, socket=sock, suppress_origin=True)  # type: ignore[no-untyped-call]
                sock.settimeout(None)
        except (OSError, _stdlib_ssl.SSLError, websocket.WebSocketException, ValueError) as err:
            _close_quietly(sock)
            raise ConnectionFailed(f"connecting to {parts.netloc} failed: {err}") from err
        except BaseException:
            # ConnectionFailed from the timeout, or the greenlet being killed:
            # the socket must not outlive the attempt either way.
            _close_quietly(sock)
            raise
        return cls(ws, sock, url)

    def receive(self) -> list[tuple[int, bytes]]:
        """Wait for the next socket read and return the messages it completed.

        Pings are answered here. A close frame is answered and reported as
        `ConnectionClosed` after any messages that arrived before it.

        Raises:
            ConnectionClosed: the peer closed or the socket failed.
        """
        if self._pending_close is not None:
            raise self._pending_close
        while True:
            try:
                data = self._sock.recv(_READ_SIZE)
            except OSError as err:
                self.closed = True
                raise ConnectionClosed(None, f"socket error: {err}") from err
            if not data:
                self.closed = True
                raise ConnectionClosed(None, "connection dropped")
            self.bytes_received += len(data)
            try:
                messages = self._parser.feed(data)
            except FrameError as err:
                self.abort()
                raise ConnectionClosed(None, f"bad websocket frame: {err}") from err
            if not messages:
                continue
            if not self._parser.control_seen:
                return messages
            for index, (opcode, payload) in enumerate(messages):
                if opcode == OP_CLOSE:
                    code, reason = parse_close(payload)
                    self._answer_close(code)
                    if index:
                        # Deliver what came before the close; report it next call.
                        self._pending_close = ConnectionClosed(code, reason)
                        return messages[:index]
                    raise ConnectionClosed(code, reason)
                if opcode == OP_PING:
                    self._send_frame(payload, websocket.ABNF.OPCODE_PONG)
            return messages

    def send(self, payload: bytes | str) -> None:
        """Send one text message.

        Raises:
            ConnectionClosed: the connection is gone or the send timed out.
        """
        self._send_frame(payload, websocket.ABNF.OPCODE_TEXT)

    def send_binary(self, payload: bytes) -> None:
        self._send_frame(payload, websocket.ABNF.OPCODE_BINARY)

    def close(self, code: int, reason: str = "") -> None:
        """Send a close frame and end the connection without waiting for the reply.

        The reader is woken by the shut-down socket; the gateway has what it
        needs (the code) once the frame is out.
        """
        if not self.closed:
            try:
                frame = code.to_bytes(2, "big") + reason.encode()[:123]
                self._send_frame(frame, websocket.ABNF.OPCODE_CLOSE)
            except ConnectionClosed:
                pass
        self.abort()

    def abort(self) -> None:
        """Drop the connection at once; a blocked `receive` raises ConnectionClosed."""
        self.closed = True
        try:
            self._sock.shutdown(gsocket.SHUT_RDWR)
        except OSError:
            pass  # already shut down or never fully connected
        _close_quietly(self._sock)

    def _answer_close(self, code: int | None) -> None:
        # RFC 6455: echo the close, then the server ends the TCP connection.
        try:
            reply = code.to_bytes(2, "big") if code is not None else b""
            self._send_frame(reply, websocket.ABNF.OPCODE_CLOSE)
        except ConnectionClosed:
            pass
        self.abort()

    def _send_frame(self, payload: bytes | str, opcode: int) -> None:
        if self.closed:
            raise ConnectionClosed(None, "connection already closed")
        try:
            with (
                self._send_lock,
                gevent.Timeout(_SEND_TIMEOUT, ConnectionClosed(None, "send timed out")),
            ):
                self._ws.send(payload, opcode)
        except ConnectionClosed:
            self.abort()
            raise
        except (OSError, websocket.WebSocketException) as err:
            self.abort()
            raise ConnectionClosed(None, f"send failed: {err}") from err


def _close_quietly(sock: Any) -> None:
    if sock is None:
        return
    try:
        sock.close()
    except OSError:
        pass
