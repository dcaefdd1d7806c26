"""Property-based tests of everything that reads peer bytes: frames, inflaters, the peek.

Arbitrary and mutated input must never raise anything but the documented
errors, and nothing buffered may grow past the limit. Example counts are kept
small so the suite stays fast.
"""

from __future__ import annotations

import json
import struct
import zlib

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gcluster._token import Token
from gcluster.frames import FrameError, FrameParser, parse_close
from gcluster.inflate import MessageTooLarge, ZlibStreamInflater
from gcluster.peek import peek_dispatch

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIMIT = 4096


def server_frame(payload: bytes, opcode: int, fin: bool = True) -> bytes:
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        return bytes([b0, n]) + payload
    if n < 1 << 16:
        return bytes([b0, 126]) + struct.pack("!H", n) + payload
    return bytes([b0, 127]) + struct.pack("!Q", n) + payload


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in points:
        pieces.append(data[last:point])
        last = point
    pieces.append(data[last:])
    return [p for p in pieces if p]


def feed_all(parser: FrameParser, pieces: list[bytes]) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    for piece in pieces:
        out += parser.feed(piece)
        # Never more buffered than one message and one frame header.
        assert parser.pending <= parser.max_message + 14
    return out


@FAST
@given(st.binary(max_size=2000), st.lists(st.integers(min_value=0), max_size=8))
def test_arbitrary_bytes_only_ever_raise_frame_error(data: bytes, cuts: list[int]) -> None:
    parser = FrameParser(max_message=LIMIT)
    try:
        messages = feed_all(parser, splits(data, cuts))
    except FrameError as err:
        assert err.code in (1002, 1007, 1009)
        return
    for opcode, payload in messages:
        assert opcode in (0x1, 0x2, 0x8, 0x9, 0xA)
        assert len(payload) <= LIMIT
        if opcode == 0x1:
            payload.decode("utf-8")  # text that reached the caller is UTF-8


messages = st.lists(
    st.tuples(
        st.sampled_from([0x1, 0x2]),
        st.text(max_size=300).map(str.encode) | st.binary(max_size=300),
        st.integers(min_value=1, max_value=3),  # fragments
    ),
    max_size=6,
)


@FAST
@given(messages, st.lists(st.integers(min_value=0), max_size=10), st.integers(0, 5))
def test_valid_frames_come_out_whole_however_the_reads_are_cut(
    sent: list[tuple[int, bytes, int]], cuts: list[int], pings: int
) -> None:
    wire = b""
    expected: list[tuple[int, bytes]] = []
    for opcode, payload, parts in sent:
        if opcode == 0x1:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                opcode = 0x2
        size = -(-len(payload) // parts) or 1
        chunks = [payload[i : i + size] for i in range(0, len(payload), size)] or [b""]
        for index, chunk in enumerate(chunks):
            first, last = index == 0, index == len(chunks) - 1
            wire += server_frame(chunk, opcode if first else 0x0, fin=last)
            if pings and not last:
                wire += server_frame(b"ping", 0x9)  # control frames may come between fragments
                expected.append((0x9, b"ping"))
        expected.append((opcode, payload))
    parser = FrameParser(max_message=LIMIT)
    assert feed_all(parser, splits(wire, cuts)) == expected
    assert parser.pending == 0


@FAST
@given(st.binary(max_size=130))
def test_close_payloads_parse_or_raise_frame_error(payload: bytes) -> None:
    try:
        code, reason = parse_close(payload)
    except FrameError:
        return
    assert code is None or 1000 <= code <= 4999
    assert isinstance(reason, str)


def compressed_stream(texts: list[bytes]) -> list[bytes]:
    deflate = zlib.compressobj()
    return [deflate.compress(t) + deflate.flush(zlib.Z_SYNC_FLUSH) for t in texts]


@FAST
@given(st.lists(st.binary(max_size=3000), min_size=1, max_size=5))
def test_zlib_stream_messages_inflate_to_what_was_sent_or_refuse_past_the_limit(
    texts: list[bytes],
) -> None:
    inflater = ZlibStreamInflater(max_size=LIMIT)
    for text, message in zip(texts, compressed_stream(texts), strict=True):
        try:
            out = inflater.feed(message)
        except MessageTooLarge:
            assert len(text) > LIMIT
            return
        assert out == text


@FAST
@given(
    st.lists(st.binary(max_size=300), min_size=1, max_size=4),
    st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=6),
)
def test_mutated_zlib_streams_only_raise_the_documented_errors(
    texts: list[bytes], flips: list[tuple[int, int]]
) -> None:
    stream = bytearray(b"".join(compressed_stream(texts)))
    for position, value in flips:
        stream[position % len(stream)] = value
    inflater = ZlibStreamInflater(max_size=LIMIT)
    try:
        for piece in splits(bytes(stream), [len(stream) // 3, len(stream) // 2]):
            out = inflater.feed(piece)
            assert out is None or len(out) <= LIMIT
            assert inflater.pending <= LIMIT
    except (zlib.error, MessageTooLarge):
        pass


names = st.from_regex(r"[A-Z][A-Z0-9_]{0,30}", fullmatch=True)


@FAST
@given(names, st.integers(min_value=0, max_value=10**18 - 1), st.dictionaries(st.text(), st.text()))
def test_peek_reads_discords_layout(name: str, seq: int, d: dict[str, str]) -> None:
    message = json.dumps({"t": name, "s": seq, "op": 0, "d": d}, separators=(",", ":")).encode()
    assert peek_dispatch(message) == (name, seq)


@FAST
@given(st.binary(max_size=200))
def test_peek_never_raises_and_reads_only_plain_integers(data: bytes) -> None:
    found = peek_dispatch(b'{"t":"' + data) or peek_dispatch(data)
    if found is not None:
        name, seq = found
        assert name.isascii() and 0 <= seq < 10**18


@FAST
@given(st.from_regex(r"[A-Za-z0-9_.\-]{1,40}", fullmatch=True), st.text(max_size=80))
def test_redaction_removes_the_token_and_leaves_other_text_alone(secret: str, text: str) -> None:
    token = Token(secret)
    assume(secret not in text and "Bot" not in secret)
    assert token.redact(text) == text
    leaked = f"{text} reason: {secret} ({secret})"
    redacted = token.redact(leaked)
    assert not token.appears_in(redacted)
    assert redacted.count("<token>") >= 2
