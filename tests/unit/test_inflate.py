"""The inflaters' limits at their edges, their byte counts, and the compression option.

`MessageTooLarge`'s and `zlib.error`'s messages become the reason of the close
frame the shard sends, so the tests pin them.
"""

from __future__ import annotations

import random
import sys
import tracemalloc
import zlib

import pytest

from gcluster.backends import ZSTD_MODULES, Backend, zlib_backend
from gcluster.errors import ConfigError
from gcluster.inflate import (
    ZLIB_STREAM,
    ZLIB_SUFFIX,
    ZSTD_STREAM,
    MessageTooLarge,
    ZlibStreamInflater,
    ZstdStreamInflater,
    inflater_for,
    resolve_compression,
    zstd_available,
)
from gcluster.testing.wire import compressor_for


def zlib_messages(*messages: bytes) -> list[bytes]:
    """Each message as Discord sends it: one zlib stream, flushed after each."""
    compressor = zlib.compressobj()
    return [compressor.compress(m) + compressor.flush(zlib.Z_SYNC_FLUSH) for m in messages]


def noise(size: int, seed: int = 0) -> bytes:
    """Bytes no compressor can shrink."""
    return random.Random(seed).randbytes(size)


# -- zlib-stream ---------------------------------------------------------------


# The standard library's zlib, and zlib-ng (the fast extra) in its place.
@pytest.fixture(params=["zlib", pytest.param("zlib_ng.zlib_ng", marks=pytest.mark.extras)])
def zlib_lib(request: pytest.FixtureRequest) -> Backend:
    backend = zlib_backend(request.param)
    assert backend.module == request.param, f"{request.param} is not installed"
    return backend


def test_zlib_counts_the_bytes_in_and_out(zlib_lib: Backend) -> None:
    messages = [b'{"op":11}', b'{"op":0,"d":"%s"}' % (b"x" * 500), b'{"op":1}']
    chunks = zlib_messages(*messages)
    inflater = ZlibStreamInflater(backend=zlib_lib)
    assert (inflater.compressed_bytes, inflater.decompressed_bytes) == (0, 0)
    # The second message arrives in two frames: both count.
    pieces = [chunks[0], chunks[1][:3], chunks[1][3:], chunks[2]]
    assert [inflater.feed(p) for p in pieces] == [messages[0], None, messages[1], messages[2]]
    assert inflater.compressed_bytes == sum(map(len, chunks))
    assert inflater.decompressed_bytes == sum(map(len, messages))


def test_zlib_delivers_a_message_of_exactly_the_limit(zlib_lib: Backend) -> None:
    message = noise(1000)
    (chunk,) = zlib_messages(message)
    inflater = ZlibStreamInflater(backend=zlib_lib, max_size=1000)
    assert inflater.feed(chunk) == message
    assert inflater.decompressed_bytes == 1000


def test_zlib_refuses_a_message_inflating_one_byte_over_the_limit(zlib_lib: Backend) -> None:
    (chunk,) = zlib_messages(b"a" * 1001)
    with pytest.raises(MessageTooLarge) as caught:
        ZlibStreamInflater(backend=zlib_lib, max_size=1000).feed(chunk)
    assert str(caught.value) == "a message inflating to over 1000 bytes"


def test_zlib_refuses_a_bomb_without_inflating_it_whole(zlib_lib: Backend) -> None:
    # 64 MiB of zeros compress to 64 KiB; no more than the limit and a byte
    # may be inflated to find out that it is too large.
    (chunk,) = zlib_messages(bytes(64 * 1024 * 1024))
    inflater = ZlibStreamInflater(backend=zlib_lib, max_size=4096)
    tracemalloc.start()
    try:
        with pytest.raises(MessageTooLarge):
            inflater.feed(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024
    assert inflater.decompressed_bytes == 0  # nothing was delivered


def test_zlib_buffers_compressed_pieces_up_to_the_limit(zlib_lib: Backend) -> None:
    # Noise inflates to itself, so its compressed form is a little longer.
    (chunk,) = zlib_messages(noise(2000))
    head, tail = chunk[:-4], chunk[-4:]
    limit = len(chunk)
    inflater = ZlibStreamInflater(backend=zlib_lib, max_size=limit)
    assert inflater.feed(head[:1000]) is None
    assert inflater.feed(head[1000:]) is None
    assert inflater.pending == len(head)
    # Exactly the limit once the end arrives; the inflated message fits as well.
    assert inflater.feed(tail) == noise(2000)
    assert inflater.pending == 0


def test_zlib_buffers_exactly_the_limit_and_refuses_one_byte_more(zlib_lib: Backend) -> None:
    inflater = ZlibStreamInflater(backend=zlib_lib, max_size=1000)
    assert inflater.feed(b"\x78\x9c" + bytes(500)) is None
    assert inflater.feed(bytes(498)) is None  # no end marker yet
    assert inflater.pending == 1000
    with pytest.raises(MessageTooLarge) as caught:
        inflater.feed(b"\x00")
    assert str(caught.value) == "a compressed message over 1000 bytes"
    assert inflater.pending == 0  # and nothing is kept of it


def test_zlib_checks_the_buffered_size_not_the_piece_alone(zlib_lib: Backend) -> None:
    inflater = ZlibStreamInflater(backend=zlib_lib, max_size=1000)
    assert inflater.feed(bytes(900)) is None
    with pytest.raises(MessageTooLarge):
        inflater.feed(bytes(200))


@pytest.mark.parametrize(
    "header",
    [
        b"\x77\x09",  # method 7, nothing else wrong
        b"\x88\x1c",  # a 64 KiB window, nothing else wrong
        b"\x78\x9d",  # the check bits, nothing else wrong
        b"\x78\x20",  # a preset dictionary, nothing else wrong
    ],
)
def test_each_zlib_header_check_alone_refuses_the_stream(zlib_lib: Backend, header: bytes) -> None:
    (chunk,) = zlib_messages(b'{"op":11}')
    with pytest.raises(zlib.error) as caught:
        ZlibStreamInflater(backend=zlib_lib).feed(header + chunk[2:])
    # zlib's words for a bad header, whichever check failed.
    assert str(caught.value) == "Error -3 while decompressing data: incorrect header check"


def test_zlib_header_is_read_once_per_connection(zlib_lib: Backend) -> None:
    first, second = zlib_messages(b'{"op":11}', b'{"op":1}')
    inflater = ZlibStreamInflater(backend=zlib_lib)
    assert inflater.feed(first) == b'{"op":11}'
    # What follows is raw deflate: read as a header it would be refused.
    assert inflater.feed(second) == b'{"op":1}'


def test_zlib_corruption_is_a_zlib_error_whichever_library(zlib_lib: Backend) -> None:
    # A valid header, then a deflate block of the reserved type 3.
    inflater = ZlibStreamInflater(backend=zlib_lib)
    assert inflater.backend is zlib_lib
    with pytest.raises(zlib.error, match="invalid block type") as caught:
        inflater.feed(b"\x78\x9c\xff\xff" + ZLIB_SUFFIX)
    if zlib_lib.module != "zlib":
        assert isinstance(caught.value.__cause__, zlib_lib.namespace.error)


# -- zstd-stream ---------------------------------------------------------------

needs_zstd = pytest.mark.extras  # the zstd extra; `zstd`: each library in turn (conftest)


def zstd_messages(zstd: Backend, *messages: bytes) -> list[bytes]:
    """Each message as Discord sends it: one zstd stream, flushed after each."""
    compress = compressor_for(ZSTD_STREAM, zstd)
    assert compress is not None
    return [compress(m) for m in messages]


@pytest.mark.parametrize("size", [10, 100, 1000, 100_000])
def test_zstd_messages_inflate_whole(zstd: Backend, size: int) -> None:
    # Noise compresses to more than itself: with zstandard, one slice of input
    # for 10 bytes, two for 100, dozens and thousands after that.
    messages = [noise(size, seed) for seed in range(3)]
    inflater = ZstdStreamInflater(backend=zstd)
    assert inflater.backend is zstd
    assert [inflater.feed(chunk) for chunk in zstd_messages(zstd, *messages)] == messages


def test_zstd_counts_the_bytes_in_and_out(zstd: Backend) -> None:
    messages = [b'{"op":11}', noise(3000), b'{"op":1}']
    chunks = zstd_messages(zstd, *messages)
    inflater = ZstdStreamInflater(backend=zstd)
    assert (inflater.compressed_bytes, inflater.decompressed_bytes) == (0, 0)
    assert [inflater.feed(c) for c in chunks] == messages
    assert inflater.compressed_bytes == sum(map(len, chunks))
    assert inflater.decompressed_bytes == sum(map(len, messages))


def test_zstd_returns_none_for_bytes_that_complete_no_output(zstd: Backend) -> None:
    (chunk,) = zstd_messages(zstd, b'{"op":11}')
    inflater = ZstdStreamInflater(backend=zstd)
    assert inflater.feed(b"") is None
    assert inflater.feed(chunk[:4]) is None  # the frame's magic number alone
    assert inflater.feed(chunk[4:]) == b'{"op":11}'


@pytest.mark.parametrize("size", [100, 3000])
def test_zstd_delivers_a_message_of_exactly_the_limit(zstd: Backend, size: int) -> None:
    message = noise(size)
    (chunk,) = zstd_messages(zstd, message)
    assert ZstdStreamInflater(max_size=size, backend=zstd).feed(chunk) == message


@pytest.mark.parametrize("size", [100, 3000])
def test_zstd_refuses_a_message_one_byte_over_the_limit(zstd: Backend, size: int) -> None:
    (chunk,) = zstd_messages(zstd, noise(size + 1))
    with pytest.raises(MessageTooLarge) as caught:
        ZstdStreamInflater(max_size=size, backend=zstd).feed(chunk)
    assert str(caught.value) == f"a message inflating to over {size} bytes"


def test_zstd_refuses_a_bomb_within_about_twice_the_limit(zstd: Backend) -> None:
    limit = 8 * 1024 * 1024
    (chunk,) = zstd_messages(zstd, bytes(256 * 1024 * 1024))
    inflater = ZstdStreamInflater(max_size=limit, backend=zstd)
    tracemalloc.start()
    try:
        with pytest.raises(MessageTooLarge):
            inflater.feed(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert limit < inflater.decompressed_bytes <= 2 * limit
    # Nothing near the 256 MiB the bomb holds was ever inflated into memory.
    assert peak <= 3 * limit


def test_zstd_corruption_is_reported_as_a_zlib_error(zstd: Backend) -> None:
    with pytest.raises(zlib.error, match=r"^zstd-stream: .") as caught:
        ZstdStreamInflater(backend=zstd).feed(b"\x00 not zstd at all")
    assert isinstance(caught.value.__cause__, zstd.namespace.ZstdError)


def test_zstd_data_after_the_end_of_the_stream_is_a_zlib_error(zstd: Backend) -> None:
    # Discord never ends the frame; a peer that ends it and goes on is broken.
    ended = zstd.namespace.compress(b'{"op":11}')
    inflater = ZstdStreamInflater(backend=zstd)
    assert inflater.feed(ended) == b'{"op":11}'
    with pytest.raises(zlib.error, match=r"^zstd-stream: ."):
        inflater.feed(ended)


def test_zstd_inflater_without_a_zstd_library_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hide_zstd(monkeypatch)
    with pytest.raises(ConfigError) as caught:
        ZstdStreamInflater()
    assert "pip install 'gcluster[zstd]'" in str(caught.value)


# -- the option ----------------------------------------------------------------


def hide_zstd(monkeypatch: pytest.MonkeyPatch, keep: str | None = None) -> None:
    """Every zstd library but `keep` as if not installed."""
    for name, _ in ZSTD_MODULES:
        if name != keep:
            # None in sys.modules makes `import name` raise ImportError.
            monkeypatch.setitem(sys.modules, name, None)


def test_compression_with_a_zstd_library(zstd: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    hide_zstd(monkeypatch, keep=zstd.module)
    assert zstd_available() is True
    assert resolve_compression("best") == ZSTD_STREAM
    assert resolve_compression("zstd-stream") == ZSTD_STREAM
    inflater = inflater_for(ZSTD_STREAM)
    assert isinstance(inflater, ZstdStreamInflater) and inflater.backend.module == zstd.module


def test_compression_without_a_zstd_library(monkeypatch: pytest.MonkeyPatch) -> None:
    hide_zstd(monkeypatch)
    assert zstd_available() is False
    assert resolve_compression("best") == ZLIB_STREAM
    assert resolve_compression(True) == ZLIB_STREAM
    with pytest.raises(ValueError) as caught:
        resolve_compression("zstd-stream")
    assert str(caught.value) == (
        "compression='zstd-stream' needs a zstd library: pip install 'gcluster[zstd]' "
        "(or Python 3.14+, whose compression.zstd is used)"
    )


@pytest.mark.parametrize("value", ["deflate", "ZLIB-STREAM", 1, 0, ""])
def test_compression_refuses_other_values(value: object) -> None:
    with pytest.raises(ValueError) as caught:
        resolve_compression(value)  # type: ignore[arg-type]
    assert str(caught.value) == (
        f"compression must be True, False, 'zlib-stream', 'zstd-stream' or 'best', not {value!r}"
    )


def test_an_inflater_per_compression() -> None:
    assert inflater_for(None) is None
    zlib_inflater = inflater_for(ZLIB_STREAM, max_size=123)
    assert isinstance(zlib_inflater, ZlibStreamInflater) and zlib_inflater.max_size == 123
    assert isinstance(inflater_for(ZLIB_STREAM), ZlibStreamInflater)


@needs_zstd
def test_a_zstd_inflater_for_zstd_stream() -> None:
    inflater = inflater_for(ZSTD_STREAM, max_size=123)
    assert isinstance(inflater, ZstdStreamInflater) and inflater.max_size == 123
