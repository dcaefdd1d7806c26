"""One TCP port that answers REST requests and accepts gateway websockets.

Discord serves REST and the gateway from different hosts; a test wants one
port. Each accepted socket's request is parsed with h11: a plain request gets
a REST answer (and ``Connection: close``), an ``Upgrade: websocket`` request is
handed, bytes and all, to a fresh wsproto server connection that completes the
handshake. With an SSL context every accepted socket first completes a TLS
handshake (gevent's SSL socket), so REST and websockets are both served over
TLS. The server runs as greenlets in the hub of the thread that starts it, on
gevent sockets, and never monkey-patches.
"""

from __future__ import annotations

import http
import logging
import ssl
from collections.abc import Callable
from typing import Any

import gevent.ssl
import h11
import ujson
from gevent.pool import Pool
from gevent.server import StreamServer
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request
from wsproto.utilities import RemoteProtocolError

__all__ = ["Server"]

_RECV_BYTES = 65536
# A request line and headers bigger than this are not a gateway client's.
_MAX_REQUEST_BYTES = 64 * 1024

log = logging.getLogger(__name__)

RestHandler = Callable[[str, str, "str | None"], tuple[int, dict[str, Any]]]
"""``(method, path, authorization) -> (status, body)``."""
WebSocketHandler = Callable[[Any, WSConnection, str, tuple[str, int]], None]
"""``(sock, ws, target, address)``: serves the accepted websocket until it ends."""
UpgradeFilter = Callable[[str, tuple[str, int]], bool]
"""``(target, address) -> accept``: False refuses the upgrade with 503."""


class Server:
    """A gevent `StreamServer` that tells REST requests from websocket upgrades."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        on_rest: RestHandler,
        on_websocket: WebSocketHandler,
        on_request: Callable[[str, str, int], None] | None = None,
        admit: UpgradeFilter | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._on_rest = on_rest
        self._on_websocket = on_websocket
        self._on_request = on_request
        self._admit = admit
        self._ssl_context = ssl_context
        # Every handler greenlet joins this (unbounded) pool, so stop() can end them all.
        self._handlers = Pool()
        self._server = StreamServer((host, port), self._handle, spawn=self._handlers)

    def bind(self) -> int:
        """Bind the listening socket; returns the port (useful with port 0)."""
        self._server.init_socket()
        return int(self._server.server_port)

    def start(self) -> None:
        """Start accepting in the current hub."""
        self._server.start()

    def stop(self, timeout: float) -> None:
        """Stop accepting, give handlers ``timeout`` seconds to finish, then kill them."""
        self._server.close()
        self._handlers.join(timeout=timeout)
        self._handlers.kill(block=True, timeout=1)

    def _handle(self, sock: Any, address: tuple[str, int]) -> None:
        if self._ssl_context is None:
            self._serve(sock, address)
            return
        try:
            # gevent's SSLSocket accepts any ssl.SSLContext and keeps the
            # handshake cooperative; the plain socket is detached into it.
            tls = gevent.ssl.SSLSocket(
                sock=sock,
                server_side=True,
                do_handshake_on_connect=False,
                _context=self._ssl_context,
            )
        except (ssl.SSLError, OSError, ValueError) as err:
            log.debug("TLS setup for %s failed: %s", address, err)
            sock.close()
            return
        try:
            tls.do_handshake()
        except (ssl.SSLError, OSError) as err:
            # A client that does not trust the certificate aborts here.
            log.debug("TLS handshake with %s failed: %s", address, err)
            tls.close()
            return
        try:
            self._serve(tls, address)
        finally:
            tls.close()

    def _serve(self, sock: Any, address: tuple[str, int]) -> None:
        conn = h11.Connection(h11.SERVER)
        raw = bytearray()
        try:
            request = self._read_request(sock, conn, raw)
        except (h11.RemoteProtocolError, OSError):
            return
        if request is None:
            return
        upgrade = dict(request.headers).get(b"upgrade", b"").lower()
        if b"websocket" in upgrade:
            self._upgrade(sock, bytes(raw), address)
        else:
            self._respond(sock, conn, request)

    def _read_request(self, sock: Any, conn: h11.Connection, raw: bytearray) -> Any:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if len(raw) > _MAX_REQUEST_BYTES:
                    return None
                data = sock.recv(_RECV_BYTES)
                if not data:
                    return None
                # Kept verbatim: an upgrade is replayed into wsproto from the start.
                raw += data
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                return event
            else:
                return None

    def _upgrade(self, sock: Any, raw: bytes, address: tuple[str, int]) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        try:
            ws.receive_data(raw)
        except RemoteProtocolError as err:
            # wsproto says how to refuse a bad handshake (e.g. 400).
            if err.event_hint is not None:
                sock.sendall(ws.send(err.event_hint))
            return
        request = next((e for e in ws.events() if isinstance(e, Request)), None)
        if request is None:
            return
        if self._admit is not None and not self._admit(request.target, address):
            body = ujson.dumps({"message": "503: Service Unavailable", "code": 0}).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ]
            reject = RejectConnection(status_code=503, headers=headers, has_body=True)
            sock.sendall(ws.send(reject) + ws.send(RejectData(data=body)))
            return
        # No extensions: Discord compresses with zlib-stream, not permessage-deflate.
        sock.sendall(ws.send(AcceptConnection()))
        self._on_websocket(sock, ws, request.target, address)

    def _respond(self, sock: Any, conn: h11.Connection, request: Any) -> None:
        # GET requests have no body, but drain one if sent so h11 can respond.
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = sock.recv(_RECV_BYTES)
                if not data:
                    return
                conn.receive_data(data)
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                return
        method = request.method.decode("ascii", "replace")
        target = request.target.decode("ascii", "replace")
        path = target.split("?", 1)[0]
        authorization = dict(request.headers).get(b"authorization")
        status, body = self._on_rest(
            method, path, authorization.decode("latin-1") if authorization else None
        )
        if self._on_request is not None:
            self._on_request(method, path, status)
        content = ujson.dumps(body, escape_forward_slashes=False).encode()
        response = h11.Response(
            status_code=status,
            reason=http.HTTPStatus(status).phrase.encode(),
            headers=[
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(content))),
                ("Connection", "close"),
            ],
        )
        sock.sendall(
            conn.send(response) + conn.send(h11.Data(data=content)) + conn.send(h11.EndOfMessage())
        )
