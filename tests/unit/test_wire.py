"""Pure tests of the receive path's pieces: frame parsing, zlib-stream, peeking."""

from __future__ import annotations

import struct
import zlib

import pytest
from hostile import frame  # the raw server's frame builder, shared by the tests

from gcluster.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    FrameParser,
    parse_close,
)
from gcluster.inflate import ZlibStreamInflater
from gcluster.peek import peek_dispatch


@pytest.mark.parametrize("size", [0, 5, 125, 126, 65535, 65536, 300_000])
def test_every_length_encoding(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert FrameParser().feed(frame(payload, OP_BINARY)) == [(OP_BINARY, payload)]


def test_many_frames_in_one_read_and_split_across_reads() -> None:
    stream = b"".join(frame(f"message {n}".encode()) for n in range(50))
    parser = FrameParser()
    got = []
    # Feed in awkward chunk sizes so headers and payloads split everywhere.
    for start in range(0, len(stream), 7):
        got += parser.feed(stream[start : start + 7])
    assert got == [(OP_TEXT, f"message {n}".encode()) for n in range(50)]
    assert parser.pending == 0


def test_a_long_frame_split_over_many_reads() -> None:
    # The parser waits for the whole frame (without re-parsing what it holds)
    # and then returns it with whatever followed in the same read.
    big = bytes(range(256)) * 1200
    stream = frame(big, OP_BINARY) + frame(b"after")
    parser = FrameParser()
    reads = [stream[start : start + 4096] for start in range(0, len(stream), 4096)]
    for read in reads[:-1]:
        assert parser.feed(read) == []
    assert parser.pending == len(stream) - len(reads[-1])
    assert parser.feed(reads[-1]) == [(OP_BINARY, big), (OP_TEXT, b"after")]
    assert parser.pending == 0


def test_fragments_join_and_control_frames_pass_between_them() -> None:
    data = frame(b"hel", OP_TEXT, fin=False) + frame(b"ping", OP_PING) + frame(b"lo", 0x0)
    assert FrameParser().feed(data) == [(OP_PING, b"ping"), (OP_TEXT, b"hello")]


def test_the_parser_says_whether_a_read_held_a_control_frame() -> None:
    parser = FrameParser()
    parser.feed(frame(b"data") + frame(b"more", OP_BINARY))
    assert not parser.control_seen
    parser.feed(frame(b"data") + frame(b"ping", OP_PING))
    assert parser.control_seen
    parser.feed(frame(b"data"))
    assert not parser.control_seen


def test_masked_frames_from_the_server_fail_the_connection() -> None:
    # RFC 6455 §5.1: a client closes the connection on a masked frame.
    with pytest.raises(FrameError) as caught:
        FrameParser().feed(frame(b"abcdef", mask=b"\x01\x02\x03\x04"))
    assert caught.value.code == 1002


@pytest.mark.parametrize(
    "data",
    [
        bytes([0x80 | 0x40 | OP_TEXT, 0]),  # RSV1 without permessage-deflate
        bytes([0x80 | 0x3, 0]),  # reserved opcode
        bytes([OP_PING, 0]),  # fragmented control frame
        frame(b"x", 0x0),  # continuation of nothing
        frame(b"a", OP_TEXT, fin=False) + frame(b"b", OP_TEXT),  # new message mid-fragment
    ],
)
def test_framing_violations(data: bytes) -> None:
    with pytest.raises(FrameError):
        FrameParser().feed(data)


def test_oversized_message_refused_before_buffering() -> None:
    with pytest.raises(FrameError):
        FrameParser(max_message=1000).feed(frame(b"x" * 1001, OP_BINARY)[:20])


def test_close_payload() -> None:
    ((opcode, payload),) = FrameParser().feed(
        frame(struct.pack("!H", 4004) + b"bad token", OP_CLOSE)
    )
    assert opcode == OP_CLOSE
    assert parse_close(payload) == (4004, "bad token")
    assert parse_close(b"") == (None, "")


def compressed_stream(messages: list[bytes]) -> list[bytes]:
    compressor = zlib.compressobj()
    return [compressor.compress(m) + compressor.flush(zlib.Z_SYNC_FLUSH) for m in messages]


def test_inflater_decodes_a_stream_of_messages() -> None:
    messages = [b'{"op":%d,"d":"%s"}' % (n, b"x" * n) for n in range(100)]
    inflater = ZlibStreamInflater()
    assert [inflater.feed(chunk) for chunk in compressed_stream(messages)] == messages


def test_inflater_buffers_a_message_split_over_frames() -> None:
    (chunk,) = compressed_stream([b"y" * 10_000 + bytes(range(256)) * 40])
    inflater = ZlibStreamInflater()
    pieces = [chunk[i : i + 100] for i in range(0, len(chunk), 100)]
    results = [inflater.feed(p) for p in pieces]
    assert results[:-1] == [None] * (len(pieces) - 1)
    assert results[-1] == b"y" * 10_000 + bytes(range(256)) * 40
    assert inflater.pending == 0


def test_inflater_rejects_a_corrupt_stream() -> None:
    with pytest.raises(zlib.error):
        ZlibStreamInflater().feed(b"not zlib at all\x00\x00\xff\xff")


@pytest.mark.parametrize("level", [0, 1, 6, 9])
@pytest.mark.parametrize("wbits", [9, 12, 15])
def test_inflater_reads_the_header_of_any_zlib_stream(level: int, wbits: int) -> None:
    messages = [b'{"op":11}', b'{"op":0,"d":"%s"}' % (b"z" * 3000)]
    compressor = zlib.compressobj(level, zlib.DEFLATED, wbits)
    chunks = [compressor.compress(m) + compressor.flush(zlib.Z_SYNC_FLUSH) for m in messages]
    inflater = ZlibStreamInflater()
    assert [inflater.feed(chunk) for chunk in chunks] == messages


def test_inflater_reads_a_header_split_from_its_message() -> None:
    (chunk,) = compressed_stream([b'{"op":11}'])
    inflater = ZlibStreamInflater()
    assert inflater.feed(chunk[:1]) is None
    assert inflater.feed(chunk[1:]) == b'{"op":11}'


@pytest.mark.parametrize(
    "header",
    [b"\x79\x9c", b"\x78\x9d", b"\x88\x98", b"\x78\xbb"],  # method, check, window, FDICT
)
def test_inflater_rejects_a_bad_zlib_header(header: bytes) -> None:
    (chunk,) = compressed_stream([b'{"op":11}'])
    with pytest.raises(zlib.error, match="incorrect header check"):
        ZlibStreamInflater().feed(header + chunk[2:])


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"t":"MESSAGE_CREATE","s":42,"op":0,"d":{"t":"x"}}', ("MESSAGE_CREATE", 42)),
        (b'{"t":"NEW_THING","s":7,"op":0,"d":null}', ("NEW_THING", 7)),
        (b'{"t":null,"s":null,"op":11,"d":null}', None),
        (b'{"op":0,"t":"MESSAGE_CREATE","s":1,"d":{}}', None),  # other layout: decode fully
        (b'{"t":"READY","op":0,"s":1}', None),
        (b'{"t":"MESSAGE_CREATE","s":null,"op":0,"d":{}}', None),
        (b'{"t":"MESSAGE_CREATE","s":1_0,"op":0,"d":{}}', None),
        (b'{"t":"MESSAGE_CREATE","s":+5,"op":0,"d":{}}', None),
        (b'{"t":"MESSAGE_CREATE","s":12', None),
        (b'{"t":"MESSAGE_CREATE","s":,"op":0}', None),
        (b'{"t":"X","s":%d,"op":0,"d":{}}' % (10**18 - 1), ("X", 10**18 - 1)),
        # Longer ones are decoded in full, where the protocol checks the range.
        (b'{"t":"X","s":%d,"op":0,"d":{}}' % (2**63), None),
        # Names that are not plain upper-case ASCII are left to a full decode.
        (b'{"t":"message_create","s":1,"op":0,"d":{}}', None),
        (b'{"t":"\\u0041","s":1,"op":0,"d":{}}', None),
    ],
)
def test_peek(raw: bytes, expected: tuple[str, int] | None) -> None:
    assert peek_dispatch(raw) == expected


@pytest.mark.extras
def test_zstd_inflater_decodes_one_message_per_flush() -> None:
    import zstandard

    from gcluster.inflate import ZstdStreamInflater

    compressor = zstandard.ZstdCompressor().compressobj()
    messages = [b'{"op":%d,"d":"%s"}' % (n, b"z" * n) for n in range(50)]
    chunks = [
        compressor.compress(m) + compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        for m in messages
    ]
    inflater = ZstdStreamInflater()
    assert [inflater.feed(chunk) for chunk in chunks] == messages
    with pytest.raises(zlib.error):
        ZstdStreamInflater().feed(b"\x00garbage that is not zstd")


def test_compression_option_values() -> None:
    from gcluster.inflate import ZLIB_STREAM, ZSTD_STREAM, resolve_compression, zstd_available

    assert resolve_compression(True) == resolve_compression("zlib-stream") == ZLIB_STREAM
    assert resolve_compression(False) is None and resolve_compression(None) is None
    assert resolve_compression("best") == (ZSTD_STREAM if zstd_available() else ZLIB_STREAM)
    with pytest.raises(ValueError):
        resolve_compression("deflate")


class _OneReadSocket:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.sent = b""

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def recv(self, size: int) -> bytes:
        data, self.data = self.data, b""
        return data

    def shutdown(self, how: int) -> None:
        pass

    def close(self) -> None:
        pass


def client_frame(data: bytes) -> tuple[int, bytes]:
    """Opcode and unmasked payload of one short frame a client sent (always masked)."""
    assert data[1] & 0x80, "a client frame must be masked"
    n = data[1] & 0x7F
    assert n < 126 and len(data) == 6 + n
    key = data[2:6]
    return data[0] & 0x0F, bytes(b ^ key[i % 4] for i, b in enumerate(data[6:]))


def test_a_ping_among_data_frames_is_answered_and_the_data_delivered() -> None:
    from gcluster.transport import Connection

    sock = _OneReadSocket(frame(b"one") + frame(b"are you there", OP_PING) + frame(b"two"))
    conn = Connection(sock, "ws://x")
    assert conn.receive() == [(OP_TEXT, b"one"), (OP_PING, b"are you there"), (OP_TEXT, b"two")]
    assert client_frame(sock.sent) == (OP_PONG, b"are you there")
