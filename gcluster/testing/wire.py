"""The server side of one websocket: wsproto framing, zlib-stream, and ordered writes.

Gateway code anywhere in the hub may queue a message, a close or a drop for a
connection at any time, and must never block on a slow client. So each
connection has one writer greenlet that alone writes to the socket, draining
an outbox in order (batching what has piled up into one ``sendall``), and one
reader — the connection's own greenlet — that alone reads. Both drive the same
``wsproto`` connection; neither yields inside a wsproto call, so under gevent
they never interleave within one.
"""

from __future__ import annotations

import socket
import struct
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import gevent
from gevent.event import Event as _Signal
from wsproto import WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.utilities import LocalProtocolError

__all__ = ["Ending", "WebSocket"]

_RECV_BYTES = 65536
# Enough to amortize a syscall, small enough not to build huge joined buffers.
_BATCH_BYTES = 256 * 1024
# How long a closing side waits for the peer's close frame before giving up.
_CLOSE_TIMEOUT = 1.0
# SO_LINGER on, 0 s: close() sends RST, like a connection lost mid-flight.
_LINGER_RESET = struct.pack("ii", 1, 0)


@dataclass(frozen=True, slots=True)
class Ending:
    """How a websocket ended: who closed first, with which code, or that it dropped."""

    code: int | None
    reason: str
    initiator: Literal["client", "server"]
    dropped: bool


@dataclass(frozen=True, slots=True)
class _Close:
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class _CloseReply:
    code: int


@dataclass(frozen=True, slots=True)
class _Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class _Raw:
    """A message sent as is: never compressed, bytes as binary, str as text."""

    data: bytes | str


class _Drop:
    pass


_DROP = _Drop()
_Control = _Close | _CloseReply | _Pong | _Drop


class WebSocket:
    """One accepted websocket on a gevent socket.

    Args:
        sock: the connected gevent socket.
        ws: a wsproto server connection that has accepted the handshake.
        compress: whether every message goes out as zlib-stream binary.
        on_written: called with the receipts of messages once their bytes were
            handed to the socket.
    """

    def __init__(
        self,
        sock: Any,
        ws: WSConnection,
        *,
        compress: bool,
        on_written: Callable[[list[Any]], None],
    ) -> None:
        self._sock = sock
        self._ws = ws
        # One compressor for the connection's lifetime: zlib-stream is a single
        # deflate stream the client inflates with one decompressor.
        self._deflate = zlib.compressobj() if compress else None
        self._on_written = on_written
        self._outbox: deque[tuple[str, Any] | _Raw | _Control] = deque()
        # While set and in the future, the writer holds the outbox (a stall).
        self._stalled_until: float | None = None
        self._wakeup = _Signal()
        self._peer_closed = _Signal()
        self._ending: Ending | None = None
        self._writer = gevent.spawn(self._write_loop)

    @property
    def closing(self) -> bool:
        """True once either side started closing or the connection dropped."""
        return self._ending is not None

    @property
    def compressed(self) -> bool:
        """Whether messages go out as one zlib stream."""
        return self._deflate is not None

    def send(self, text: str, receipt: Any = None) -> None:
        """Queue one JSON message; ``receipt`` goes to ``on_written`` once it is written."""
        self._outbox.append((text, receipt))
        self._wakeup.set()

    def send_raw(self, data: bytes | str) -> None:
        """Queue one message exactly as given, bypassing the zlib stream.

        Bytes go out as a binary message, str as a text message. Used to
        send what a client must fail to decode.
        """
        self._outbox.append(_Raw(data))
        self._wakeup.set()

    def stall(self, seconds: float) -> None:
        """Hold everything queued, now and for ``seconds``, then send it in order.

        A close or drop from either side ends the stall early; a longer
        stall already under way is not shortened.
        """
        until = time.monotonic() + seconds
        if self._stalled_until is None or until > self._stalled_until:
            self._stalled_until = until
        self._wakeup.set()

    def close(self, code: int, reason: str = "") -> None:
        """Queue a close frame after the messages queued so far."""
        if self._ending is None:
            self._ending = Ending(code, reason, "server", dropped=False)
        self._queue(_Close(code, reason))

    def drop(self) -> None:
        """Queue an abort: after the messages queued so far, reset TCP with no close frame."""
        if self._ending is None:
            self._ending = Ending(None, "", "server", dropped=True)
        self._queue(_DROP)

    def receive(self, on_message: Callable[[str | bytes], None]) -> Ending:
        """Read until the connection ends, passing each complete message to ``on_message``.

        Runs in the calling greenlet. Messages that arrive after a close was
        started are not passed on.

        Returns:
            How the connection ended.
        """
        ws = self._ws
        parts: list[Any] = []
        try:
            while True:
                # Events first: frames that came with the handshake bytes are
                # already buffered in wsproto before the first recv.
                for event in ws.events():
                    if isinstance(event, TextMessage | BytesMessage):
                        parts.append(event.data)
                        if not event.message_finished:
                            continue
                        if len(parts) == 1:
                            message = parts[0]
                        elif isinstance(parts[0], str):
                            message = "".join(parts)
                        else:
                            message = b"".join(parts)
                        parts.clear()
                        if self._ending is None:
                            on_message(message)
                    elif isinstance(event, CloseConnection):
                        self._on_close_frame(event)
                        return self._finish_reading()
                    elif isinstance(event, Ping):
                        self._queue(_Pong(event.payload))
                data = self._sock.recv(_RECV_BYTES)
                if not data:
                    break
                ws.receive_data(data)
        except (OSError, LocalProtocolError):
            pass  # Reset by the peer, or closed by the writer after a close/drop.
        return self._finish_reading()

    def finish(self) -> None:
        """Let the writer send what it must (a close reply), then release the socket."""
        ending = self._ending
        if ending is None or (ending.dropped and ending.initiator == "client"):
            # Nothing more can reach a client that is gone.
            self._writer.kill(block=False)
        elif not self._writer.join(timeout=_CLOSE_TIMEOUT):
            self._writer.kill(block=False)
        self._close_socket()

    def kill(self) -> None:
        """Stop writing at once and release the socket (the simulator is stopping)."""
        self._writer.kill(block=False)
        self._close_socket()

    def _on_close_frame(self, event: CloseConnection) -> None:
        if self._ws.state is ConnectionState.REMOTE_CLOSING:
            # The client closed first: record its code and echo it, as RFC 6455 asks.
            if self._ending is None:
                # int(): wsproto hands out its CloseReason enum for known codes.
                code = int(event.code)
                self._ending = Ending(code, event.reason or "", "client", dropped=False)
            self._queue(_CloseReply(event.code))
        elif self._ws.state is ConnectionState.OPEN:
            # wsproto reports a protocol violation by the client as a close
            # event without changing state; close with its code.
            self.close(int(event.code), event.reason or "")

    def _finish_reading(self) -> Ending:
        self._peer_closed.set()
        if self._ending is None:
            # EOF or a reset with no close frame from either side: the client dropped.
            self._ending = Ending(None, "", "client", dropped=True)
        return self._ending

    def _queue(self, control: _Control) -> None:
        if not isinstance(control, _Pong):
            # The connection is ending: what was held goes out (or is
            # skipped, once a close frame was sent) without further delay.
            self._stalled_until = None
        self._outbox.append(control)
        self._wakeup.set()

    def _stall_left(self) -> float | None:
        """Seconds the writer must still hold the outbox, or None."""
        until = self._stalled_until
        if until is None:
            return None
        left = until - time.monotonic()
        if left <= 0:
            self._stalled_until = None
            return None
        return left

    def _frame(self, text: str) -> bytes:
        if self._deflate is not None:
            deflate = self._deflate
            data = deflate.compress(text.encode()) + deflate.flush(zlib.Z_SYNC_FLUSH)
            return self._ws.send(BytesMessage(data=data))
        return self._ws.send(TextMessage(data=text))

    def _frame_raw(self, data: bytes | str) -> bytes:
        if isinstance(data, bytes):
            return self._ws.send(BytesMessage(data=data))
        return self._ws.send(TextMessage(data=data))

    def _write_loop(self) -> None:
        outbox = self._outbox
        try:
            while True:
                while True:
                    stall = self._stall_left()
                    if outbox and stall is None:
                        break
                    self._wakeup.clear()
                    self._wakeup.wait(stall)
                chunks: list[bytes] = []
                receipts: list[Any] = []
                size = 0
                while outbox and size < _BATCH_BYTES:
                    item = outbox.popleft()
                    if isinstance(item, tuple):
                        # Once either side sent a close frame, no data may follow it.
                        if self._ws.state is not ConnectionState.OPEN:
                            continue
                        frame = self._frame(item[0])
                        chunks.append(frame)
                        size += len(frame)
                        if item[1] is not None:
                            receipts.append(item[1])
                        continue
                    if isinstance(item, _Raw):
                        if self._ws.state is not ConnectionState.OPEN:
                            continue
                        frame = self._frame_raw(item.data)
                        chunks.append(frame)
                        size += len(frame)
                        continue
                    self._flush(chunks, receipts)
                    chunks, receipts, size = [], [], 0
                    if not self._control(item):
                        return
                self._flush(chunks, receipts)
        except (OSError, LocalProtocolError):
            # The peer is gone or the connection is already closed; the reader
            # notices and reports how it ended.
            self._close_socket()

    def _flush(self, chunks: list[bytes], receipts: list[Any]) -> None:
        if chunks:
            self._sock.sendall(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if receipts:
            self._on_written(receipts)

    def _control(self, item: _Control) -> bool:
        """Carry out a control item; False when the connection is done for writing."""
        ws = self._ws
        if isinstance(item, _Pong):
            if ws.state is ConnectionState.OPEN:
                self._sock.sendall(ws.send(Pong(payload=item.payload)))
            return True
        if isinstance(item, _CloseReply):
            if ws.state is ConnectionState.REMOTE_CLOSING:
                self._sock.sendall(ws.send(CloseConnection(code=item.code)))
            self._close_socket()
            return False
        if isinstance(item, _Close):
            if ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
                # In REMOTE_CLOSING the client's close crossed ours; ours is
                # then also the reply it waits for.
                answer_due = ws.state is ConnectionState.OPEN
                self._sock.sendall(ws.send(CloseConnection(code=item.code, reason=item.reason)))
                if answer_due:
                    # Give the client the chance to answer, as it should,
                    # before closing TCP; the reader sees the answer.
                    self._peer_closed.wait(_CLOSE_TIMEOUT)
            self._close_socket()
            return False
        self._reset_socket()
        return False

    def _reset_socket(self) -> None:
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass
        self._close_socket()

    def _close_socket(self) -> None:
        self._peer_closed.set()
        self._sock.close()
