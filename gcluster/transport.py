"""One websocket connection to the gateway, on gevent sockets.

It opens the TCP (and TLS) connection with gevent's own socket and ssl
modules, so the library works whether or not the application monkey-patched,
and does the upgrade itself (`handshake.py`) on that socket: TCP, TLS and the
upgrade share one deadline, and nothing in them can block the hub. Through
an HTTP proxy, the CONNECT that opens the tunnel (`proxy.py`) shares it too,
and TLS runs inside the tunnel, verified against the gateway. Reading is
done here in large chunks parsed by `frames.FrameParser`: one socket read can
yield many messages. This is the only module that touches websocket-client,
which builds (and masks) the frames the client sends.

Errors from ssl and the socket are translated into `ConnectionFailed`
(connecting) and `ConnectionClosed` (afterwards). Every text that came from
the peer passes through the `redact` function the connection was given, so a
gateway echoing the token back cannot put it in an exception or a log line.
"""

from __future__ import annotations

import logging
import ssl as _stdlib_ssl
from collections.abc import Callable
from typing import Any, NoReturn

import gevent
import websocket
from gevent import socket as gsocket
from gevent import ssl as gssl
from gevent.lock import Semaphore

from gcluster._urls import websocket_url
from gcluster.errors import ConnectionFailed
from gcluster.frames import (
    DEFAULT_MAX_MESSAGE,
    OP_CLOSE,
    OP_PING,
    FrameError,
    FrameParser,
    parse_close,
    valid_close_code,
)
from gcluster.handshake import ClientHandshake, HandshakeError
from gcluster.proxy import Proxy, ProxyConnect, ProxyError, resolve_proxy

__all__ = ["Connection", "ConnectionClosed", "default_ssl_context"]

log = logging.getLogger(__name__)

_READ_SIZE = 256 * 1024
_HANDSHAKE_READ_SIZE = 4096
# Close frames and the last sends of a dying connection must not hang a shard.
_SEND_TIMEOUT = 10.0


class ConnectionClosed(Exception):
    """The connection is over.

    Attributes:
        code: the close code the peer sent, None when it dropped without one;
            with `failed`, the code this side sent.
        reason: the close frame's reason.
        failed: this side failed the connection because the peer broke the
            websocket rules or sent a message over the size limit.
    """

    def __init__(self, code: int | None, reason: str = "", *, failed: bool = False) -> None:
        super().__init__(f"connection closed ({code}{': ' + reason if reason else ''})")
        self.code = code
        self.reason = reason
        self.failed = failed


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

    def __init__(
        self,
        sock: Any,
        url: str,
        *,
        received: bytes = b"",
        max_message: int = DEFAULT_MAX_MESSAGE,
        redact: Callable[[str], str] = str,
    ) -> None:
        self._sock = sock
        self.url = url
        self._parser = FrameParser(max_message)
        self._redact = redact
        self._send_lock = Semaphore()
        self.closed = False
        self.bytes_received = 0
        # Frames that arrived with the end of the upgrade answer.
        self._received = received
        # A close frame read together with messages before it: those are
        # returned first, the close is raised on the next call.
        self._pending_close: ConnectionClosed | None = None

    @classmethod
    def open(
        cls,
        url: str,
        *,
        timeout: float = 10.0,
        ssl_context: Any = None,
        max_message: int = DEFAULT_MAX_MESSAGE,
        redact: Callable[[str], str] = str,
        proxy: Proxy | str | bool | None = False,
    ) -> Connection:
        """Connect and complete the websocket handshake within `timeout` seconds.

        DNS, TCP, the proxy's CONNECT, TLS and the HTTP upgrade share the one
        deadline.

        Args:
            proxy: a `Proxy` to tunnel through, False to connect directly, or
                None to follow the environment (see `proxy.resolve_proxy`).

        Raises:
            ConnectionFailed: any of them failed or timed out, the proxy
                answered CONNECT with anything but 2xx (its status is in the
                message), or the upgrade was answered with anything but 101 (a
                redirect included: its status and Location are in the message,
                and it is not followed).
        """
        parts = websocket_url(url, secure=False)
        if parts is None or parts.hostname is None:
            raise ConnectionFailed(redact(f"not a websocket URL: {url}"))
        secure = parts.scheme == "wss"
        try:
            port = parts.port or (443 if secure else 80)
        except ValueError:
            # Without the cause, on purpose: it quotes the URL's port text
            # unredacted, and the URL may hold the token.
            raise ConnectionFailed(redact(f"not a websocket URL: {url}")) from None
        try:
            tunnel = resolve_proxy(proxy, url)
        except ValueError as err:  # a bad proxy in the environment; never the credentials
            raise ConnectionFailed(redact(f"connecting to {parts.netloc}: {err}")) from None
        if tunnel is not None:
            # The proxy's password must not show in any message either.
            redact = _both(redact, tunnel.redact)
        where = redact(parts.netloc)
        if tunnel is not None:
            where += f" through the proxy {tunnel.display}"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        sock = None
        try:
            with gevent.Timeout(timeout, ConnectionFailed(f"connecting to {where} timed out")):
                if tunnel is None:
                    sock = gsocket.create_connection((parts.hostname, port))
                else:
                    sock = gsocket.create_connection((tunnel.host, tunnel.port))
                    _open_tunnel(sock, tunnel, parts.hostname, port)
                sock.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
                if secure:
                    context = ssl_context if ssl_context is not None else default_ssl_context()
                    sock = _wrap(sock, context, parts.hostname)
                handshake = ClientHandshake(parts.netloc, target)
                sock.sendall(handshake.request)
                while True:
                    received = handshake.receive(sock.recv(_HANDSHAKE_READ_SIZE))
                    if received is not None:
                        break
        except (HandshakeError, ProxyError) as err:
            _close_quietly(sock)
            # Without the cause, on purpose: its message (a Location the server
            # answered with, say) is only redacted here, in ours.
            raise ConnectionFailed(redact(f"connecting to {where} failed: {err}")) from None
        except (OSError, _stdlib_ssl.SSLError, ValueError) as err:
            _close_quietly(sock)
            raise ConnectionFailed(redact(f"connecting to {where} failed: {err}")) from err
        except BaseException:
            # ConnectionFailed from the timeout, or the greenlet being killed:
            # the socket must not outlive the attempt either way.
            _close_quietly(sock)
            raise
        return cls(sock, url, received=received, max_message=max_message, redact=redact)

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
            if self._received:
                data, self._received = self._received, b""
            else:
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
                self.fail(err.code, str(err))
            if not messages:
                continue
            if not self._parser.control_seen:
                return messages
            for index, (opcode, payload) in enumerate(messages):
                if opcode == OP_CLOSE:
                    code, reason = parse_close(payload)  # checked by the parser already
                    self._answer_close(code)
                    closed = ConnectionClosed(code, self._redact(reason))
                    if index:
                        # Deliver what came before the close; report it next call.
                        self._pending_close = closed
                        return messages[:index]
                    raise closed
                if opcode == OP_PING:
                    self._send_frame(payload, websocket.ABNF.OPCODE_PONG)
            return messages

    def fail(self, code: int, reason: str) -> NoReturn:
        """Fail the connection (RFC 6455 §7.1.7): send a close with `code`, drop it, raise.

        Raises:
            ConnectionClosed: always, with `failed` set.
        """
        self.close(code, reason)
        raise ConnectionClosed(code, reason, failed=True)

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

        Raises:
            ValueError: `code` is one no endpoint may put on the wire (RFC 6455 §7.4).
        """
        if not valid_close_code(code):
            raise ValueError(f"close code {code} may not be sent")
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
        # RFC 6455 §5.5.1: echo the code, then the server ends the TCP connection.
        try:
            reply = code.to_bytes(2, "big") if code is not None else b""
            self._send_frame(reply, websocket.ABNF.OPCODE_CLOSE)
        except ConnectionClosed:
            pass
        self.abort()

    def _send_frame(self, payload: bytes | str, opcode: int) -> None:
        if self.closed:
            raise ConnectionClosed(None, "connection already closed")
        frame = websocket.ABNF.create_frame(payload, opcode).format()
        try:
            with (
                self._send_lock,
                gevent.Timeout(_SEND_TIMEOUT, ConnectionClosed(None, "send timed out")),
            ):
                self._sock.sendall(frame)
        except ConnectionClosed:
            self.abort()
            raise
        except OSError as err:
            self.abort()
            raise ConnectionClosed(None, f"send failed: {err}") from err


def _both(first: Callable[[str], str], second: Callable[[str], str]) -> Callable[[str], str]:
    return lambda text: first(second(text))


def _open_tunnel(sock: Any, proxy: Proxy, host: str, port: int) -> None:
    """CONNECT through `proxy` on `sock` (the caller's deadline bounds it).

    Raises:
        ProxyError: the proxy refused, answered no valid HTTP, or closed.
    """
    connect = ProxyConnect(proxy, host, port)
    sock.sendall(connect.request)
    while not connect.receive(sock.recv(_HANDSHAKE_READ_SIZE)):
        pass


def _close_quietly(sock: Any) -> None:
    if sock is None:
        return
    try:
        sock.close()
    except OSError:
        pass
