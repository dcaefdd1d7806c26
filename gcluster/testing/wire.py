"""The server side of one websocket: wsproto framing, transport compression, ordered writes.

Gateway code anywhere in the hub may queue a message, a close or a drop for a
connection at any time, and must never block on a slow client. So each
connection has one writer greenlet that alone writes to the socket, draining
an outbox in order (batching what has piled up into one ``sendall``), and one
reader — the connection's own greenlet — that alone reads. Both drive the same
``wsproto`` connection; neither yields inside a wsproto call, so under gevent
they never interleave within one.

A compressed connection (``zlib-stream`` or ``zstd-stream``) is one stream for
its whole life, so every message is compressed when it is queued: the
compressor then sees messages in outbox order, which is wire order, whether
they go out one by one or as part of a pre-encoded blast.
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

from gcluster.backends import Backend, zstd_backend
from gcluster.errors import ConfigError

from .records import Traffic

__all__ = ["COMPRESSIONS", "BlastFrames", "Ending", "WebSocket", "compressor_for"]

ZLIB_STREAM = "zlib-stream"
ZSTD_STREAM = "zstd-stream"
COMPRESSIONS = frozenset(
    {ZLIB_STREAM, ZSTD_STREAM} if zstd_backend() is not None else {ZLIB_STREAM}
)
"""The ``compress`` query values the simulator serves (zstd-stream needs a zstd library).

Without one (the ``zstd`` extra, or Python 3.14's ``compression.zstd``) zstd-stream
is refused with 4002, as by a gateway that does not offer it."""

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


class BlastFrames:
    """Pre-encoded websocket frames queued as one outbox item (see `WebSocket.send_blast`).

    Attributes:
        chunks: the frames, joined into chunks of about 256 KB (one message
            per chunk when paced).
        messages: how many messages each chunk ends (a message never spans two).
        payload_bytes: the messages' size before compression, per chunk.
        due: for a paced blast, when to write each chunk, in seconds after
            the start given to `release`; None writes as fast as the socket takes.
        written: messages written so far; less than the total when the
            connection closed first.
        started, finished: ``time.monotonic()`` of the first write and after
            the last one (None until then).
        late_max: for a paced blast, the most a chunk went out after it was due.
        sent_at: for a paced blast, ``time.monotonic()`` as each chunk (each
            message) was handed to the socket.
        done: set when the writer is through with it, written or not.
    """

    __slots__ = (
        "_released",
        "chunks",
        "done",
        "due",
        "finished",
        "late_max",
        "messages",
        "payload_bytes",
        "sent_at",
        "start_at",
        "started",
        "wire_bytes",
        "written",
    )

    def __init__(self, due: list[float] | None = None, *, hold: bool = False) -> None:
        self.chunks: list[bytes] = []
        self.messages: list[int] = []
        self.payload_bytes: list[int] = []
        self.due = due
        self.wire_bytes = 0
        self.written = 0
        self.started: float | None = None
        self.finished: float | None = None
        self.late_max = 0.0
        self.sent_at: list[float] = []
        self.start_at: float | None = None
        self._released = _Signal()
        self.done = _Signal()
        if due is None and not hold:
            self._released.set()

    @property
    def total(self) -> int:
        """How many messages it holds."""
        return sum(self.messages)

    def release(self, start_at: float) -> None:
        """Let a held or paced blast start (a paced one writes chunk ``i`` at
        ``start_at + due[i]``)."""
        self.start_at = start_at
        self._released.set()

    def wait_released(self) -> None:
        self._released.wait()


_Message = tuple[bytes | str, Any, int]
"""A queued message: payload (compressed bytes, or text), receipt, size before compression."""

Compressor = Callable[[bytes], bytes]
"""One message in, the compressed bytes that complete it out (flushed)."""


def compressor_for(compression: str | None, zstd: Backend | None = None) -> Compressor | None:
    """A new compressor for one connection, or None for none (or an unknown name).

    ``zlib-stream``: one deflate stream, sync-flushed after every message (the
    client knows a message is complete by its ``00 00 ff ff`` tail).
    ``zstd-stream``: one zstd stream, block-flushed after every message (each
    websocket message decompresses to exactly one gateway message), made by
    ``zstd`` (``gcluster.backends.zstd_backend()``'s choice when None).
    """
    if compression == ZLIB_STREAM:
        deflate = zlib.compressobj()
        sync = zlib.Z_SYNC_FLUSH

        def compress_zlib(data: bytes) -> bytes:
            return deflate.compress(data) + deflate.flush(sync)

        return compress_zlib
    if compression == ZSTD_STREAM:
        zstd = zstd if zstd is not None else zstd_backend()
        if zstd is not None:
            return _zstd_compressor(zstd)
    return None


def _zstd_compressor(zstd: Backend) -> Compressor:
    library = zstd.namespace
    if zstd.module == "zstandard":
        stream = library.ZstdCompressor().compressobj()
        block = library.COMPRESSOBJ_FLUSH_BLOCK

        def compress_zstandard(data: bytes) -> bytes:
            compressed: bytes = stream.compress(data) + stream.flush(block)
            return compressed

        return compress_zstandard
    # compression.zstd and backports.zstd (PEP 784's API).
    compress = library.ZstdCompressor().compress
    flush_block = library.ZstdCompressor.FLUSH_BLOCK

    def compress_zstd(data: bytes) -> bytes:
        compressed: bytes = compress(data, flush_block)
        return compressed

    return compress_zstd


class WebSocket:
    """One accepted websocket on a gevent socket.

    Args:
        sock: the connected gevent socket.
        ws: a wsproto server connection that has accepted the handshake.
        compression: ``"zlib-stream"`` or ``"zstd-stream"``: every message goes
            out as binary in that stream; None (or a name the simulator does
            not serve) for text messages.
        on_written: called with the receipts of messages once their bytes were
            handed to the socket.
        traffic: counters to add what is written to (a fresh one if None).
    """

    def __init__(
        self,
        sock: Any,
        ws: WSConnection,
        *,
        compression: str | None = None,
        on_written: Callable[[list[Any]], None],
        traffic: Traffic | None = None,
    ) -> None:
        self._sock = sock
        self._ws = ws
        # One compressor for the connection's lifetime: the client decompresses
        # the connection as one stream with one decompressor.
        self._compress = compressor_for(compression)
        self._on_written = on_written
        self.traffic = traffic if traffic is not None else Traffic(connection_id=0)
        # Messages are (payload, receipt, size before compression); payload is
        # the compressed bytes on a compressed connection, else the text.
        self._outbox: deque[_Message | _Raw | BlastFrames | _Control] = deque()
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
        """Whether messages go out as one compressed stream (zlib or zstd)."""
        return self._compress is not None

    def send(self, text: str, receipt: Any = None) -> None:
        """Queue one JSON message; ``receipt`` goes to ``on_written`` once it is written."""
        data = text.encode()
        compress = self._compress
        if compress is not None:
            self._outbox.append((compress(data), receipt, len(data)))
        else:
            self._outbox.append((text, receipt, len(data)))
        self._wakeup.set()

    def send_blast(
        self, texts: list[str], due: list[float] | None = None, *, hold: bool = False
    ) -> BlastFrames:
        """Encode, compress and frame ``texts`` now; queue them to be written in bulk.

        What costs CPU happens here, before anything is written: the writer
        later only hands chunks of about 256 KB to the socket, so the client,
        not the simulator, sets the pace. The messages follow whatever was
        queued before and precede whatever is queued after, in the
        connection's one compression stream. The writer stops at the first
        chunk it finds the connection closing (see `BlastFrames.written`).

        Args:
            texts: the messages.
            due: pace them instead: message ``i`` is written ``due[i]``
                seconds after the start given to `BlastFrames.release`, and
                nothing is written before that call. What is queued after a
                paced blast (heartbeat ACKs too) waits until it is over.
            hold: write nothing (of it, or of what is queued after it) until
                `BlastFrames.release`.

        Raises:
            LocalProtocolError: the websocket is no longer open.
        """
        if due is not None and len(due) != len(texts):
            raise ConfigError("due must give one time per message")
        blast = BlastFrames(due, hold=hold)
        # Paced messages are written one at a time, each when it is due.
        batch_bytes = 0 if due is not None else _BATCH_BYTES
        compress = self._compress
        ws = self._ws
        parts: list[bytes] = []
        size = messages = payload = 0
        for text in texts:
            data = text.encode()
            payload += len(data)
            if compress is not None:
                frame = ws.send(BytesMessage(data=compress(data)))
            else:
                frame = ws.send(TextMessage(data=text))
            parts.append(frame)
            size += len(frame)
            messages += 1
            if size >= batch_bytes:
                blast.chunks.append(b"".join(parts))
                blast.messages.append(messages)
                blast.payload_bytes.append(payload)
                blast.wire_bytes += size
                parts, size, messages, payload = [], 0, 0, 0
        if parts:
            blast.chunks.append(b"".join(parts))
            blast.messages.append(messages)
            blast.payload_bytes.append(payload)
            blast.wire_bytes += size
        self._outbox.append(blast)
        self._wakeup.set()
        return blast

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
        # Blasts never written are over too: whoever waits for one must not hang.
        for item in self._outbox:
            if isinstance(item, BlastFrames) and not item.done.is_set():
                item.finished = time.monotonic()
                item.done.set()

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

    def _frame(self, payload: bytes | str) -> bytes:
        if isinstance(payload, bytes):
            return self._ws.send(BytesMessage(data=payload))
        return self._ws.send(TextMessage(data=payload))

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
                size = messages = payload = 0
                while outbox and size < _BATCH_BYTES:
                    item = outbox.popleft()
                    if isinstance(item, tuple):
                        # Once either side sent a close frame, no data may follow it.
                        if self._ws.state is not ConnectionState.OPEN:
                            continue
                        frame = self._frame(item[0])
                        chunks.append(frame)
                        size += len(frame)
                        messages += 1
                        payload += item[2]
                        if item[1] is not None:
                            receipts.append(item[1])
                        continue
                    if isinstance(item, _Raw):
                        if self._ws.state is not ConnectionState.OPEN:
                            continue
                        frame = self._frame_raw(item.data)
                        chunks.append(frame)
                        size += len(frame)
                        messages += 1
                        continue
                    self._flush(chunks, receipts, messages, payload)
                    chunks, receipts, size, messages, payload = [], [], 0, 0, 0
                    if isinstance(item, BlastFrames):
                        self._write_blast(item)
                    elif not self._control(item):
                        return
                self._flush(chunks, receipts, messages, payload)
        except (OSError, LocalProtocolError):
            # The peer is gone or the connection is already closed; the reader
            # notices and reports how it ended.
            self._close_socket()

    def _flush(self, chunks: list[bytes], receipts: list[Any], messages: int, payload: int) -> None:
        if chunks:
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self._sock.sendall(data)
            traffic = self.traffic
            traffic.wire_bytes += len(data)
            traffic.messages += messages
            traffic.payload_bytes += payload
        if receipts:
            self._on_written(receipts)

    def _write_blast(self, blast: BlastFrames) -> None:
        traffic = self.traffic
        sendall = self._sock.sendall
        try:
            blast.wait_released()
            due = blast.due
            start_at = blast.start_at
            for index, (chunk, messages, payload) in enumerate(
                zip(blast.chunks, blast.messages, blast.payload_bytes, strict=True)
            ):
                if due is not None and start_at is not None:
                    blast.late_max = max(blast.late_max, _wait_until(start_at + due[index]))
                # A close from either side ends the blast: nothing may follow a close frame.
                if self._ws.state is not ConnectionState.OPEN:
                    break
                if blast.started is None:
                    blast.started = time.monotonic()
                if due is not None:
                    blast.sent_at.append(time.monotonic())
                sendall(chunk)
                blast.written += messages
                traffic.wire_bytes += len(chunk)
                traffic.messages += messages
                traffic.payload_bytes += payload
        finally:
            blast.finished = time.monotonic()
            # The frames are not needed any more; a big blast holds a lot of memory.
            blast.chunks = []
            blast.done.set()

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


def _wait_until(deadline: float) -> float:
    """Wait cooperatively until ``deadline``; return how late it is then (>= 0).

    gevent's timers tick in milliseconds, so the last stretch is spent
    yielding to the hub in a loop: paced messages go out within microseconds
    of when they are due, at the cost of keeping the simulator's core busy.
    """
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return -left
        if left > 0.002:
            gevent.sleep(left - 0.0015)
        else:
            gevent.sleep(0)
