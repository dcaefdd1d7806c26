"""The zlib-stream inflater: one decompressor for the life of a connection.

With `compress=zlib-stream` Discord compresses the whole connection as one zlib
stream and flushes it after each message, so a message is complete exactly
when the compressed bytes received so far end in the sync-flush marker
`00 00 ff ff`. A message may arrive split over several websocket frames; the
pieces are buffered until the marker shows up.
"""

from __future__ import annotations

import zlib

__all__ = ["ZLIB_SUFFIX", "ZlibStreamInflater"]

ZLIB_SUFFIX = b"\x00\x00\xff\xff"


class ZlibStreamInflater:
    """Turns compressed frames into whole JSON messages.

    A new inflater is needed for every connection: the zlib dictionary carries
    over between messages of one connection and means nothing on another.
    """

    __slots__ = ("_buffer", "_decompressor", "compressed_bytes", "decompressed_bytes")

    def __init__(self) -> None:
        self._decompressor = zlib.decompressobj()
        # Only used when a message is split over frames; the common case of one
        # frame per message never copies into it.
        self._buffer = bytearray()
        self.compressed_bytes = 0
        self.decompressed_bytes = 0

    def feed(self, data: bytes) -> bytes | None:
        """Add one frame's bytes; return the whole message once it is complete.

        Raises:
            zlib.error: the stream is corrupt; the connection cannot go on.
        """
        self.compressed_bytes += len(data)
        if not data.endswith(ZLIB_SUFFIX):
            self._buffer += data
            return None
        if self._buffer:
            self._buffer += data
            data = bytes(self._buffer)
            self._buffer.clear()
        message = self._decompressor.decompress(data)
        self.decompressed_bytes += len(message)
        return message

    @property
    def pending(self) -> int:
        """Bytes buffered for a message whose end has not arrived yet."""
        return len(self._buffer)
