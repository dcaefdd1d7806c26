"""Transport decompression: one decompressor for the life of a connection.

With `compress=zlib-stream` Discord compresses the whole connection as one zlib
stream and flushes it after each message, so a message is complete exactly
when the compressed bytes received so far end in the sync-flush marker
`00 00 ff ff`. A message may arrive split over several websocket frames; the
pieces are buffered until the marker shows up.

With `compress=zstd-stream` (needs a zstd library: the `zstd` extra, or the
standard library's `compression.zstd` on Python 3.14+) the connection is one
zstd stream instead, flushed after each message: every websocket message
decompresses to exactly one gateway message. Discord reports about 40% less
traffic than zlib-stream.

Which library inflates is `gcluster.backends`' choice (zlib-ng and the
fastest zstd library installed); the errors of each are translated to
`zlib.error`, so the reader handles every transport and library alike.

Both inflaters are bounded: a message's compressed bytes are buffered only up
to `max_size`, and it is inflated only up to `max_size` bytes (never inflated
whole and measured afterwards), so a decompression bomb costs at most about
twice the limit before `MessageTooLarge` is raised.
"""

from __future__ import annotations

import zlib
from typing import Any, Final, Protocol

from gcluster.backends import Backend, zlib_backend, zstd_backend
from gcluster.errors import ConfigError
from gcluster.frames import DEFAULT_MAX_MESSAGE

__all__ = [
    "ZLIB_SUFFIX",
    "ZSTD_STREAM",
    "ZLIB_STREAM",
    "Inflater",
    "MessageTooLarge",
    "ZlibStreamInflater",
    "ZstdStreamInflater",
    "inflater_for",
    "resolve_compression",
    "zstd_available",
]

ZLIB_SUFFIX = b"\x00\x00\xff\xff"
ZLIB_STREAM: Final = "zlib-stream"
ZSTD_STREAM: Final = "zstd-stream"
# The most a zstd block can regenerate per input byte: 128 KiB from a 4-byte
# RLE block. Bounds what one slice of input can inflate to.
_ZSTD_MAX_RATIO: Final = 32 * 1024


class MessageTooLarge(Exception):
    """A compressed message, or what it inflates to, is over the size limit."""


class Inflater(Protocol):
    compressed_bytes: int
    decompressed_bytes: int

    def feed(self, data: bytes) -> bytes | None: ...


class ZlibStreamInflater:
    """Turns compressed frames into whole JSON messages.

    A new inflater is needed for every connection: the zlib dictionary carries
    over between messages of one connection and means nothing on another.

    Args:
        max_size: the largest message, compressed or inflated, in bytes.
        backend: the zlib implementation (`gcluster.backends.zlib_backend`'s
            choice when None: zlib-ng when installed).
    """

    __slots__ = (
        "_buffer",
        "_decompressor",
        "_error",
        "_header",
        "backend",
        "compressed_bytes",
        "decompressed_bytes",
        "max_size",
    )

    def __init__(self, max_size: int = DEFAULT_MAX_MESSAGE, backend: Backend | None = None) -> None:
        self.max_size = max_size
        self.backend = backend if backend is not None else zlib_backend()
        # Raw deflate after reading the 2-byte zlib header ourselves: a stream
        # that never ends never delivers its adler32 trailer, so zlib would
        # checksum every byte for a check that can never happen.
        self._decompressor: Any = self.backend.namespace.decompressobj(-zlib.MAX_WBITS)
        self._error: type[Exception] = self.backend.namespace.error
        self._header = True
        # Only used when a message is split over frames; the common case of one
        # frame per message never copies into it.
        self._buffer = bytearray()
        self.compressed_bytes = 0
        self.decompressed_bytes = 0

    def feed(self, data: bytes) -> bytes | None:
        """Add one frame's bytes; return the whole message once it is complete.

        Raises:
            zlib.error: the stream is corrupt; the connection cannot go on.
            MessageTooLarge: the message is over `max_size`, compressed or not.
        """
        self.compressed_bytes += len(data)
        if not data.endswith(ZLIB_SUFFIX):
            if len(self._buffer) + len(data) > self.max_size:
                self._buffer.clear()
                raise MessageTooLarge(f"a compressed message over {self.max_size} bytes")
            self._buffer += data
            return None
        if self._buffer:
            self._buffer += data
            data = bytes(self._buffer)
            self._buffer.clear()
        if self._header:
            data = _strip_zlib_header(data)
            self._header = False
        # One byte past the limit tells "exactly the limit" from "over it".
        try:
            message: bytes = self._decompressor.decompress(data, self.max_size + 1)
        except self._error as err:
            if isinstance(err, zlib.error):
                raise
            raise zlib.error(str(err)) from err  # zlib-ng's error class is its own
        if len(message) > self.max_size:
            raise MessageTooLarge(f"a message inflating to over {self.max_size} bytes")
        self.decompressed_bytes += len(message)
        return message

    @property
    def pending(self) -> int:
        """Bytes buffered for a message whose end has not arrived yet."""
        return len(self._buffer)


def _strip_zlib_header(data: bytes) -> bytes:
    """The deflate data after a zlib header (RFC 1950), which is checked as zlib would.

    `data` ends with the 4-byte flush marker, so both header bytes are there.
    """
    if (
        data[0] & 0x0F != 8  # deflate
        or data[0] >> 4 > 7  # window size
        or (data[0] << 8 | data[1]) % 31
        or data[1] & 0x20  # a preset dictionary, which Discord never uses
    ):
        raise zlib.error("Error -3 while decompressing data: incorrect header check")
    return data[2:]


class ZstdStreamInflater:
    """Turns zstd-stream messages into JSON messages; one per connection.

    Args:
        max_size: the largest message inflated, in bytes.
        backend: the zstd library (`gcluster.backends.zstd_backend`'s choice
            when None: the first of compression.zstd, backports.zstd and
            zstandard installed).

    Raises:
        ConfigError: no zstd library is installed.
    """

    __slots__ = (
        "_decompressor",
        "_errors",
        "_sliced",
        "backend",
        "compressed_bytes",
        "decompressed_bytes",
        "max_size",
    )

    def __init__(self, max_size: int = DEFAULT_MAX_MESSAGE, backend: Backend | None = None) -> None:
        chosen = backend if backend is not None else zstd_backend()
        if chosen is None:
            raise ConfigError(_NO_ZSTD)
        self.backend = chosen
        self.max_size = max_size
        zstd = chosen.namespace
        # zstd refuses windows over 128 MiB by default, in every library: that
        # bounds what the decompressor keeps between messages.
        self._decompressor: Any
        if chosen.module == "zstandard":
            # zstandard's decompressobj has no output bound: input goes in slices.
            self._decompressor = zstd.ZstdDecompressor().decompressobj()
            self._sliced = True
        else:
            # compression.zstd and backports.zstd: decompress(data, max_length).
            self._decompressor = zstd.ZstdDecompressor()
            self._sliced = False
        # EOFError: data after the end of the frame, which Discord never ends.
        self._errors: tuple[type[Exception], ...] = (zstd.ZstdError, EOFError)
        self.compressed_bytes = 0
        self.decompressed_bytes = 0

    def feed(self, data: bytes) -> bytes | None:
        """Add one message's bytes; return what they decompress to (None if nothing yet).

        Raises:
            zlib.error: the stream is corrupt (the zstd library's own error,
                translated so the reader handles both transports alike).
            MessageTooLarge: the message inflates to over `max_size` bytes.
        """
        self.compressed_bytes += len(data)
        try:
            if self._sliced:
                return self._feed_sliced(data)
            # One byte past the limit tells "exactly the limit" from "over it";
            # the library stops there, keeping the rest of the input unread.
            message: bytes = self._decompressor.decompress(data, self.max_size + 1)
        except self._errors as err:
            raise zlib.error(f"zstd-stream: {err or type(err).__name__}") from err
        self.decompressed_bytes += len(message)
        if len(message) > self.max_size:
            raise MessageTooLarge(f"a message inflating to over {self.max_size} bytes")
        return message or None

    def _feed_sliced(self, data: bytes) -> bytes | None:
        limit = self.max_size
        # Slices small enough that none can inflate past what is left of the
        # limit; a normal message (under 2 KiB compressed at the default
        # limit) is one slice.
        pieces: list[bytes] = []
        size = 0
        start = 0
        while start < len(data):
            step = max(64, (limit - size) // _ZSTD_MAX_RATIO)
            piece: bytes = self._decompressor.decompress(data[start : start + step])
            start += step
            if piece:
                size += len(piece)
                self.decompressed_bytes += len(piece)
                if size > limit:
                    raise MessageTooLarge(f"a message inflating to over {limit} bytes")
                pieces.append(piece)
        if not pieces:
            return None
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)


_NO_ZSTD: Final = (
    "compression='zstd-stream' needs a zstd library: pip install 'gcluster[zstd]' "
    "(or Python 3.14+, whose compression.zstd is used)"
)


def zstd_available() -> bool:
    """Whether a zstd library is installed (see `gcluster.backends.ZSTD_MODULES`)."""
    return zstd_backend() is not None


def resolve_compression(value: bool | str | None) -> str | None:
    """The `compress` query value for an option: True, "best", a name, or off.

    Raises:
        ConfigError: an unknown name, or zstd-stream with no zstd library installed.
    """
    if value is None or value is False:
        return None
    if value is True or value == ZLIB_STREAM:
        return ZLIB_STREAM
    if value == "best":
        return ZSTD_STREAM if zstd_available() else ZLIB_STREAM
    if value == ZSTD_STREAM:
        if not zstd_available():
            raise ConfigError(_NO_ZSTD)
        return ZSTD_STREAM
    raise ConfigError(
        f"compression must be True, False, 'zlib-stream', 'zstd-stream' or 'best', not {value!r}"
    )


def inflater_for(compression: str | None, max_size: int = DEFAULT_MAX_MESSAGE) -> Inflater | None:
    if compression == ZSTD_STREAM:
        return ZstdStreamInflater(max_size)
    if compression == ZLIB_STREAM:
        return ZlibStreamInflater(max_size)
    return None
