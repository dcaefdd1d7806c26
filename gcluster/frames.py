"""Websocket frames from the gateway, parsed in bulk, with a client's duties.

A per-frame receive path costs several Python calls and a small socket read per
frame, which caps a shard far below what decompression and JSON decoding
allow. The gateway's frames are simple, so the reader takes whatever one
socket read returned and splits it here into whole messages at once.

Everything here comes from the peer and is checked as RFC 6455 asks of a
client (§5.1-5.5, §7.4): a masked frame, reserved bits, an unknown opcode, a
fragmented or long control frame, a text message that is not UTF-8 and a
close frame with a bad code all fail the connection (`FrameError`, whose
`code` is the close code to send). Nothing buffered grows past `max_message`.
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = [
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_INVALID_PAYLOAD",
    "CLOSE_PROTOCOL_ERROR",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "FrameError",
    "FrameParser",
    "parse_close",
    "valid_close_code",
]

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

_DATA_OPCODES: Final = frozenset({OP_CONTINUATION, OP_TEXT, OP_BINARY})
_CONTROL_OPCODES: Final = frozenset({OP_CLOSE, OP_PING, OP_PONG})
# First bytes of a whole (FIN) text or binary frame without reserved bits:
# nearly every frame the gateway sends.
_WHOLE_TEXT: Final = 0x80 | OP_TEXT
_WHOLE_BINARY: Final = 0x80 | OP_BINARY
_LENGTH_16: Final = struct.Struct("!H")
_LENGTH_64: Final = struct.Struct("!Q")

# GUILD_CREATE for the largest guilds runs to tens of megabytes; anything far
# beyond that is a broken stream, not a message worth buffering. (tungstenite,
# under twilight-gateway, has the same default.)
DEFAULT_MAX_MESSAGE: Final = 64 * 1024 * 1024

# Close codes a client sends when it fails the connection (RFC 6455 §7.4.1).
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_INVALID_PAYLOAD: Final = 1007
CLOSE_MESSAGE_TOO_BIG: Final = 1009


def valid_close_code(code: int) -> bool:
    """Whether `code` may appear in a close frame on the wire (RFC 6455 §7.4).

    1005, 1006 and 1015 stand for "no code" and "no close frame" and must never
    be sent; 1004 and 1016-2999 are reserved; 3000-4999 belong to libraries and
    applications (the gateway's own codes are 4000-4014).
    """
    return 1000 <= code <= 1014 and code not in (1004, 1005, 1006) or 3000 <= code <= 4999


class FrameError(Exception):
    """The bytes break the websocket rules; the connection must be failed.

    Attributes:
        code: the close code to send: 1002 (protocol error), 1007 (text that
            is not UTF-8) or 1009 (a message over the size limit).
    """

    def __init__(self, message: str, code: int = CLOSE_PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


class FrameParser:
    """Splits the bytes of a websocket stream into messages.

    `feed()` returns `(opcode, payload)` for every complete message: text and
    binary messages with their fragments joined, and control frames (close,
    ping, pong) as they come, even between the fragments of a message.
    """

    __slots__ = (
        "_buffer",
        "_fragments",
        "_fragment_opcode",
        "_fragment_size",
        "_needed",
        "control_seen",
        "max_message",
    )

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self._buffer = bytearray()
        self._needed = 0
        self._fragments: list[bytes] = []
        self._fragment_opcode: int | None = None
        self._fragment_size = 0
        self.max_message = max_message
        # Whether the last feed() returned a control frame (close, ping,
        # pong): the caller need not look through the messages otherwise.
        self.control_seen = False

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Add received bytes; return the messages they completed, in order.

        Raises:
            FrameError: reserved bits, an unknown opcode, a fragmented control
                frame or a message over `max_message`.
        """
        self.control_seen = False
        buf = self._buffer
        if buf:
            buf += data
            if len(buf) < self._needed:
                # Still inside a long frame: wait without copying anything.
                return []
            # Slicing bytes makes each payload in one copy (a memoryview slice
            # takes two), so what was left over is joined to the read once.
            view = bytes(buf)
            buf.clear()
        else:
            view = data
        messages: list[tuple[int, bytes]] = []
        end = len(view)
        pos = 0
        needed = 0  # bytes the first incomplete frame needs, once its header is read
        while end - pos >= 2:
            b0 = view[pos]
            b1 = view[pos + 1]
            length = b1 & 0x7F
            header = 2
            if length == 126:
                if end - pos < 4:
                    break
                (length,) = _LENGTH_16.unpack_from(view, pos + 2)
                header = 4
            elif length == 127:
                if end - pos < 10:
                    break
                (length,) = _LENGTH_64.unpack_from(view, pos + 2)
                header = 10
            if b1 & 0x80:
                # §5.1: a client must close on a masked frame from the server.
                raise FrameError("the server sent a masked frame")
            # Checked on the header, before anything is buffered for the frame.
            if length > 125 and b0 & 0x08:
                raise FrameError("a control frame longer than 125 bytes")
            if length + self._fragment_size > self.max_message:
                raise FrameError(
                    f"a message over the limit of {self.max_message} bytes",
                    CLOSE_MESSAGE_TOO_BIG,
                )
            if end - pos < header + length:
                needed = header + length
                break
            start = pos + header
            pos = start + length
            payload = view[start:pos]
            if self._fragment_opcode is None:
                if b0 == _WHOLE_BINARY:
                    messages.append((OP_BINARY, payload))
                    continue
                if b0 == _WHOLE_TEXT:
                    # isascii() is one C pass; JSON from the gateway nearly always is.
                    if not payload.isascii():
                        _check_utf8(payload)
                    messages.append((OP_TEXT, payload))
                    continue
            message = self._frame(b0, payload)
            if message is not None:
                messages.append(message)
                if message[0] in _CONTROL_OPCODES:
                    self.control_seen = True
        if pos < end:
            buf += view[pos:]
        self._needed = needed
        return messages

    def _frame(self, b0: int, payload: bytes) -> tuple[int, bytes] | None:
        if b0 & 0x70:
            raise FrameError("reserved bits set without a negotiated extension")
        fin = b0 & 0x80
        opcode = b0 & 0x0F
        if opcode in _CONTROL_OPCODES:
            if not fin:
                raise FrameError("a fragmented control frame")
            if opcode == OP_CLOSE:
                parse_close(payload)  # a bad close frame fails the connection too
            return opcode, payload
        if opcode not in _DATA_OPCODES:
            raise FrameError(f"unknown opcode {opcode:#x}")
        if opcode == OP_CONTINUATION:
            if self._fragment_opcode is None:
                raise FrameError("continuation frame without a message to continue")
        elif self._fragment_opcode is not None:
            raise FrameError("new message before the previous one was finished")
        else:
            # A whole text or binary frame never gets here (feed() takes it),
            # so this is the first fragment of a message.
            self._fragment_opcode = opcode
        # feed() has checked the sum against max_message on the frame's header.
        self._fragment_size += len(payload)
        self._fragments.append(payload)
        if not fin:
            return None
        whole = b"".join(self._fragments)
        first = self._fragment_opcode
        assert first is not None
        self._fragments.clear()
        self._fragment_opcode = None
        self._fragment_size = 0
        if first == OP_TEXT:
            _check_utf8(whole)
        return first, whole

    @property
    def pending(self) -> int:
        """Bytes of frames not complete yet."""
        return len(self._buffer) + self._fragment_size


def _check_utf8(payload: bytes) -> None:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError as err:
        raise FrameError("a text message that is not UTF-8", CLOSE_INVALID_PAYLOAD) from err


def parse_close(payload: bytes) -> tuple[int | None, str]:
    """The code and reason of a close frame's payload (RFC 6455 §5.5.1).

    Raises:
        FrameError: a one-byte payload, a code no endpoint may send, or a
            reason that is not UTF-8.
    """
    if not payload:
        return None, ""
    if len(payload) == 1:
        raise FrameError("a close frame with a one-byte payload")
    (code,) = _LENGTH_16.unpack_from(payload)
    if not valid_close_code(code):
        raise FrameError(f"a close frame with the invalid code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError as err:
        raise FrameError("a close reason that is not UTF-8", CLOSE_INVALID_PAYLOAD) from err
    return code, reason
