"""Websocket frames from the gateway, parsed in bulk.

websocket-client does the handshake, sending and closing, but its receive path
costs several Python calls and a small socket read per frame, which caps a
shard far below what decompression and JSON decoding allow. The gateway's
frames are unmasked and simple, so the reader takes whatever one socket read
returned and splits it here into whole messages at once (RFC 6455 §5).
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "FrameError",
    "FrameParser",
    "parse_close",
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
_WHOLE_DATA: Final = frozenset({0x80 | OP_TEXT, 0x80 | OP_BINARY})
_LENGTH_16: Final = struct.Struct("!H")
_LENGTH_64: Final = struct.Struct("!Q")

# GUILD_CREATE for the largest guilds runs to tens of megabytes; anything far
# beyond that is a broken stream, not a message worth buffering.
DEFAULT_MAX_MESSAGE: Final = 256 * 1024 * 1024


class FrameError(Exception):
    """The bytes break the websocket framing rules; the connection must close (1002)."""


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
            masked = b1 & 0x80
            if masked:
                header += 4
            if length > self.max_message:
                raise FrameError(f"frame of {length} bytes is over the limit of {self.max_message}")
            if end - pos < header + length:
                needed = header + length
                break
            start = pos + header
            payload = view[start : start + length]
            if masked:
                payload = _unmask(payload, view[start - 4 : start])
            pos = start + length
            if b0 in _WHOLE_DATA and self._fragment_opcode is None:
                messages.append((b0 & 0x0F, payload))
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
            if not fin or len(payload) > 125:
                raise FrameError("control frames must be whole and at most 125 bytes")
            return opcode, payload
        if opcode not in _DATA_OPCODES:
            raise FrameError(f"unknown opcode {opcode:#x}")
        if opcode == OP_CONTINUATION:
            if self._fragment_opcode is None:
                raise FrameError("continuation frame without a message to continue")
        elif self._fragment_opcode is not None:
            raise FrameError("new message before the previous one was finished")
        elif fin:
            return opcode, payload
        else:
            self._fragment_opcode = opcode
        self._fragment_size += len(payload)
        if self._fragment_size > self.max_message:
            raise FrameError(f"message over the limit of {self.max_message} bytes")
        self._fragments.append(payload)
        if not fin:
            return None
        whole = b"".join(self._fragments)
        first = self._fragment_opcode
        assert first is not None
        self._fragments.clear()
        self._fragment_opcode = None
        self._fragment_size = 0
        return first, whole

    @property
    def pending(self) -> int:
        """Bytes of frames not complete yet."""
        return len(self._buffer) + self._fragment_size


def _unmask(payload: bytes, key: bytes) -> bytes:
    # Servers must not mask, but unmasking costs nothing on the normal path.
    n = len(payload)
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")


def parse_close(payload: bytes) -> tuple[int | None, str]:
    """The code and reason of a close frame's payload (RFC 6455 §5.5.1)."""
    if len(payload) < 2:
        return None, ""
    (code,) = _LENGTH_16.unpack_from(payload)
    return code, payload[2:].decode("utf-8", "replace")
