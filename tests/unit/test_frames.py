"""The frame parser's rules, one at a time: limits at their edges, reads cut anywhere.

`FrameError`'s message is the reason of the close frame the client sends when
it fails the connection, so the tests pin it along with the code.
"""

from __future__ import annotations

import struct

import pytest
from hostile import close_payload, frame

from gcluster.frames import (
    CLOSE_INVALID_PAYLOAD,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_PROTOCOL_ERROR,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    FrameParser,
    parse_close,
    valid_close_code,
)

OP_CONTINUATION = 0x0


def feed_in_pieces(parser: FrameParser, data: bytes, *cuts: int) -> list[tuple[int, bytes]]:
    """Feed `data` cut at the given offsets; every message, in order."""
    points = [0, *cuts, len(data)]
    out: list[tuple[int, bytes]] = []
    for start, end in zip(points, points[1:], strict=False):
        out += parser.feed(data[start:end])
    return out


@pytest.mark.parametrize(
    ("code", "valid"),
    [
        (999, False),
        (1000, True),
        (1001, True),
        (1003, True),
        (1004, False),  # reserved
        (1005, False),  # "no code": never on the wire
        (1006, False),  # "no close frame": never on the wire
        (1007, True),
        (1014, True),
        (1015, False),  # "TLS failure": never on the wire
        (2999, False),
        (3000, True),
        (4000, True),
        (4999, True),
        (5000, False),
    ],
)
def test_close_codes_allowed_on_the_wire(code: int, valid: bool) -> None:
    assert valid_close_code(code) is valid


def test_close_payloads() -> None:
    assert parse_close(b"") == (None, "")
    assert parse_close(struct.pack("!H", 1000)) == (1000, "")
    assert parse_close(close_payload(4004, b"Authentication failed.")) == (
        4004,
        "Authentication failed.",
    )
    assert parse_close(close_payload(4000, "é".encode())) == (4000, "é")


@pytest.mark.parametrize(
    ("payload", "code", "message"),
    [
        (b"\x03", CLOSE_PROTOCOL_ERROR, "a close frame with a one-byte payload"),
        (close_payload(1005), CLOSE_PROTOCOL_ERROR, "a close frame with the invalid code 1005"),
        (close_payload(2000), CLOSE_PROTOCOL_ERROR, "a close frame with the invalid code 2000"),
        (close_payload(1000, b"\xff"), CLOSE_INVALID_PAYLOAD, "a close reason that is not UTF-8"),
    ],
)
def test_bad_close_payloads(payload: bytes, code: int, message: str) -> None:
    with pytest.raises(FrameError) as caught:
        parse_close(payload)
    assert (caught.value.code, str(caught.value)) == (code, message)
    # The same payload in a close frame fails the connection the same way.
    with pytest.raises(FrameError) as caught:
        FrameParser().feed(frame(payload, OP_CLOSE))
    assert (caught.value.code, str(caught.value)) == (code, message)


def test_a_close_frame_with_a_code_and_no_reason_is_delivered() -> None:
    assert FrameParser().feed(frame(close_payload(1000), OP_CLOSE)) == [(OP_CLOSE, b"\x03\xe8")]


@pytest.mark.parametrize(
    ("data", "code", "message"),
    [
        (
            frame(b"x", mask=b"\x01\x02\x03\x04"),
            CLOSE_PROTOCOL_ERROR,
            "the server sent a masked frame",
        ),
        (
            frame(b"x", rsv=0b100),
            CLOSE_PROTOCOL_ERROR,
            "reserved bits set without a negotiated extension",
        ),
        (frame(b"x", 0x3), CLOSE_PROTOCOL_ERROR, "unknown opcode 0x3"),
        (frame(b"x", 0xB), CLOSE_PROTOCOL_ERROR, "unknown opcode 0xb"),
        (frame(b"x", OP_PING, fin=False), CLOSE_PROTOCOL_ERROR, "a fragmented control frame"),
        (
            frame(b"x", OP_CONTINUATION),
            CLOSE_PROTOCOL_ERROR,
            "continuation frame without a message to continue",
        ),
        (
            frame(b"a", OP_TEXT, fin=False) + frame(b"b", OP_BINARY),
            CLOSE_PROTOCOL_ERROR,
            "new message before the previous one was finished",
        ),
        (
            frame(b"x" * 126, OP_PING),
            CLOSE_PROTOCOL_ERROR,
            "a control frame longer than 125 bytes",
        ),
        (frame(b"\xff"), CLOSE_INVALID_PAYLOAD, "a text message that is not UTF-8"),
        (
            frame(b"\xc3", fin=False) + frame(b"(", OP_CONTINUATION),
            CLOSE_INVALID_PAYLOAD,
            "a text message that is not UTF-8",
        ),
    ],
)
def test_each_violation_fails_with_its_code_and_reason(
    data: bytes, code: int, message: str
) -> None:
    with pytest.raises(FrameError) as caught:
        FrameParser().feed(data)
    assert (caught.value.code, str(caught.value)) == (code, message)


def test_frame_error_defaults_to_a_protocol_error() -> None:
    assert FrameError("x").code == CLOSE_PROTOCOL_ERROR


@pytest.mark.parametrize("opcode", [OP_CLOSE, OP_PING, OP_PONG])
def test_control_frames_may_carry_125_bytes(opcode: int) -> None:
    payload = close_payload(1000, b"r" * 123) if opcode == OP_CLOSE else b"p" * 125
    assert FrameParser().feed(frame(payload, opcode)) == [(opcode, payload)]


def test_a_control_frame_over_125_bytes_is_refused_on_its_header() -> None:
    # 126 bytes announced, none of them sent yet.
    with pytest.raises(FrameError, match="longer than 125"):
        FrameParser().feed(frame(b"p" * 126, OP_PONG)[:4])


def test_long_text_messages_are_not_control_frames() -> None:
    text = "ü".encode() * 200
    assert FrameParser().feed(frame(text)) == [(OP_TEXT, text)]


def test_text_is_checked_as_utf8_whatever_its_characters() -> None:
    parser = FrameParser()
    assert parser.feed(frame("naïve ☃".encode())) == [(OP_TEXT, "naïve ☃".encode())]
    # Bytes that are UTF-8 nowhere, in an otherwise non-ASCII text.
    with pytest.raises(FrameError) as caught:
        FrameParser().feed(frame("é".encode() + b"\xfe"))
    assert caught.value.code == CLOSE_INVALID_PAYLOAD
    # Binary messages are not text: anything goes.
    assert parser.feed(frame(b"\xfe\xff", OP_BINARY)) == [(OP_BINARY, b"\xfe\xff")]


def test_a_fragmented_text_message_is_checked_whole() -> None:
    # "é" cut in half between two fragments is still valid UTF-8.
    data = frame(b"caf\xc3", fin=False) + frame(b"\xa9", OP_CONTINUATION)
    assert FrameParser().feed(data) == [(OP_TEXT, "café".encode())]


def test_a_fragmented_binary_message_is_not_checked_as_text() -> None:
    data = frame(b"\xff", OP_BINARY, fin=False) + frame(b"\xfe", OP_CONTINUATION)
    assert FrameParser().feed(data) == [(OP_BINARY, b"\xff\xfe")]


def test_a_message_of_exactly_the_limit_passes_and_one_byte_more_does_not() -> None:
    parser = FrameParser(max_message=200)
    assert parser.feed(frame(b"m" * 200, OP_BINARY)) == [(OP_BINARY, b"m" * 200)]
    with pytest.raises(FrameError) as caught:
        parser.feed(frame(b"m" * 201, OP_BINARY))
    assert (caught.value.code, str(caught.value)) == (
        CLOSE_MESSAGE_TOO_BIG,
        "a message over the limit of 200 bytes",
    )


def test_fragment_sizes_are_summed_against_the_limit() -> None:
    parser = FrameParser(max_message=10)
    first = frame(b"aaaa", OP_BINARY, fin=False) + frame(b"bbbb", OP_CONTINUATION, fin=False)
    assert parser.feed(first) == []
    assert parser.pending == 8
    # 4 more bytes would make 12: refused on the header, before the payload is read.
    with pytest.raises(FrameError) as caught:
        parser.feed(frame(b"cccc", OP_CONTINUATION)[:2])
    assert (caught.value.code, str(caught.value)) == (
        CLOSE_MESSAGE_TOO_BIG,
        "a message over the limit of 10 bytes",
    )


def test_fragments_that_reach_the_limit_exactly_are_one_message() -> None:
    parser = FrameParser(max_message=10)
    data = (
        frame(b"aaaa", OP_BINARY, fin=False)
        + frame(b"bbbb", OP_CONTINUATION, fin=False)
        + frame(b"cc", OP_CONTINUATION)
    )
    assert parser.feed(data) == [(OP_BINARY, b"aaaabbbbcc")]
    assert parser.pending == 0
    # The count starts again for the next message.
    assert parser.feed(frame(b"d" * 10, OP_TEXT)) == [(OP_TEXT, b"d" * 10)]


def test_pending_counts_buffered_bytes_and_fragments() -> None:
    parser = FrameParser()
    assert parser.pending == 0
    parser.feed(frame(b"abc", OP_TEXT, fin=False) + frame(b"long payload")[:5])
    assert parser.pending == 3 + 5


@pytest.mark.parametrize("size", [126, 300, 65535, 65536, 70000])
@pytest.mark.parametrize("cut", [1, 2, 3, 4, 5, 9, 10, 11])
def test_a_read_may_end_anywhere_in_an_extended_length_header(size: int, cut: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    data = frame(payload, OP_BINARY) + frame(b"next")
    parser = FrameParser()
    assert parser.feed(data[:cut]) == []
    assert parser.pending == cut
    assert parser.feed(data[cut:]) == [(OP_BINARY, payload), (OP_TEXT, b"next")]
    assert parser.pending == 0


@pytest.mark.parametrize("size", [300, 70000])
@pytest.mark.parametrize("cut", [1, 2, 3, 4, 5, 9, 10, 11])
def test_a_header_cut_after_a_whole_frame_waits_for_the_rest(size: int, cut: int) -> None:
    first = frame(b"first")
    data = first + frame(b"L" * size, OP_BINARY)
    parser = FrameParser()
    assert parser.feed(data[: len(first) + cut]) == [(OP_TEXT, b"first")]
    assert parser.pending == cut
    assert parser.feed(data[len(first) + cut :]) == [(OP_BINARY, b"L" * size)]


@pytest.mark.parametrize(
    "header",
    [bytes([0x82, 126, 0, 0]), bytes([0x82, 127]) + bytes(8)],
    ids=["16-bit", "64-bit"],
)
def test_an_extended_length_need_not_be_minimal(header: bytes) -> None:
    # RFC 6455 §5.2 asks the sender for the shortest encoding; a receiver that
    # reads the length as given loses nothing by accepting a longer one.
    assert FrameParser().feed(header) == [(OP_BINARY, b"")]
    assert FrameParser().feed(header + frame(b"x")) == [(OP_BINARY, b""), (OP_TEXT, b"x")]


def test_a_long_frame_completed_byte_by_byte() -> None:
    data = frame(b"z" * 300, OP_BINARY)
    parser = FrameParser()
    for index in range(len(data) - 1):
        assert parser.feed(data[index : index + 1]) == []
        assert parser.pending == index + 1
    assert parser.feed(data[-1:]) == [(OP_BINARY, b"z" * 300)]


def test_control_seen_describes_the_last_feed_only() -> None:
    parser = FrameParser()
    assert parser.control_seen is False
    parser.feed(frame(b"data"))
    assert parser.control_seen is False
    parser.feed(frame(b"", OP_PONG))
    assert parser.control_seen is True
    parser.feed(frame(b"da"))
    assert parser.control_seen is False
    # A control frame between fragments counts; the fragments alone do not.
    parser.feed(frame(b"x", fin=False) + frame(b"", OP_PING))
    assert parser.control_seen is True
    parser.feed(frame(b"y", OP_CONTINUATION))
    assert parser.control_seen is False
    parser.feed(frame(close_payload(1000), OP_CLOSE))
    assert parser.control_seen is True
    parser.feed(b"")
    assert parser.control_seen is False


def test_messages_come_out_in_order_across_fragments_and_reads() -> None:
    stream = (
        frame(b"one", OP_TEXT)
        + frame(b"t", OP_BINARY, fin=False)
        + frame(b"", OP_PING)
        + frame(b"w", OP_CONTINUATION, fin=False)
        + frame(b"o", OP_CONTINUATION)
        + frame(b"three", OP_TEXT)
    )
    expected = [(OP_TEXT, b"one"), (OP_PING, b""), (OP_BINARY, b"two"), (OP_TEXT, b"three")]
    for cut in range(1, len(stream)):
        assert feed_in_pieces(FrameParser(), stream, cut) == expected
