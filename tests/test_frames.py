"""The WebSocket protocol core: bytes in, messages out, no socket (mediastream/frames.py)."""

import os

import pytest

from mediastream.frames import (
    OPCODE_BINARY,
    OPCODE_CLOSE,
    OPCODE_CONTINUATION,
    OPCODE_PING,
    OPCODE_PONG,
    ConnectionEnded,
    FrameParser,
    Ping,
    _unmask_in_python,
    unmask,
)
from mediastream.simulator import TwilioCall, encode_frame


@pytest.mark.parametrize("implementation", [unmask, _unmask_in_python])
def test_unmask_matches_rfc_6455_byte_by_byte(implementation):
    mask = b"\x37\xfa\x21\x3d"
    for length in (0, 1, 3, 4, 5, 160, 257, 70_000):
        payload = os.urandom(length)
        expected = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        assert implementation(payload, mask) == expected


def feed_in_pieces(data, sizes, max_message_bytes=65536):
    """Every event a parser gives for `data` fed in pieces of `sizes` (cycled)."""
    parser, events, offset, n = FrameParser(max_message_bytes), [], 0, 0
    while offset < len(data):
        size = sizes[n % len(sizes)]
        events += parser.feed(data[offset : offset + size])
        offset, n = offset + size, n + 1
    return parser, events


@pytest.mark.parametrize("sizes", [[1], [3, 7, 1], [65536]], ids=["bytewise", "uneven", "bulk"])
def test_messages_come_out_whole_however_the_bytes_arrive(sizes):
    call = TwilioCall()
    texts = [call.start()] + [call.media() for _ in range(30)] + ["é" * 200, "x" * 60_000]
    frames = [encode_frame(text.encode()) for text in texts]
    frames += [  # a fragmented message with a ping and a pong in between, then a binary one
        encode_frame(b"he", fin=False),
        encode_frame(b"!", opcode=OPCODE_PING),
        encode_frame(b"", opcode=OPCODE_PONG),
        encode_frame(b"llo", opcode=OPCODE_CONTINUATION),
        encode_frame(b"\x00\x01", opcode=OPCODE_BINARY),
        encode_frame((1000).to_bytes(2, "big"), opcode=OPCODE_CLOSE),
    ]
    parser, events = feed_in_pieces(b"".join(frames), sizes)
    *messages, ping, hello, binary, end = events
    assert messages == texts
    assert (ping, hello, binary) == (Ping(b"!"), "hello", b"\x00\x01")
    assert isinstance(end, ConnectionEnded)
    assert (end.ended_by, end.close_code) == ("client close (1000)", 1000)
    assert not parser.mid_frame


def test_a_message_over_the_limit_is_refused_from_its_header():
    parser = FrameParser(max_message_bytes=99)
    (end,) = parser.feed(encode_frame(length=1 << 40)[:14])  # a header, no payload at all
    assert (end.ended_by, end.close_code) == ("message too big", 1009)
    (end,) = FrameParser(99).feed(encode_frame(b"x" * 100))  # the fast path's frames too
    assert end.ended_by == "message too big"
    fragments = encode_frame(b"x" * 60, fin=False) + encode_frame(
        b"x" * 60, opcode=OPCODE_CONTINUATION
    )
    (end,) = FrameParser(99).feed(fragments)
    assert "(120 announced so far)" in end.problem


@pytest.mark.parametrize(
    "frame, problem, code",
    [
        (encode_frame(b"{}", mask=b""), "client frame is not masked", 1002),
        (encode_frame(b"\xff\xfe"), "text message is not valid UTF-8", 1007),
        (encode_frame(b"abc", opcode=0x3), "unknown frame opcode 3", 1002),
        (encode_frame(b"x", opcode=OPCODE_CONTINUATION), "continuation frame outside", 1002),
        (encode_frame(b"x" * 126, opcode=OPCODE_PING), "control frame fragmented or over", 1002),
        (encode_frame((999).to_bytes(2, "big"), opcode=OPCODE_CLOSE), "invalid close code", 1002),
        (encode_frame(b"\x03\xe8\xff", opcode=OPCODE_CLOSE), "close reason is not valid", 1007),
        (bytes([0xC1]) + encode_frame(b"x")[1:], "reserved bits set", 1002),
    ],
)
def test_what_breaks_the_protocol_ends_the_connection_after_what_came_before(frame, problem, code):
    before = encode_frame(b'{"event": "connected"}')
    parser = FrameParser()
    message, end = parser.feed(before + frame + encode_frame(b"never read"))
    assert message == '{"event": "connected"}'
    assert isinstance(end, ConnectionEnded) and problem in end.problem
    assert end.close_code == code


def test_the_parser_knows_when_it_is_mid_frame():
    parser = FrameParser()
    frame = encode_frame(TwilioCall().media().encode())
    assert parser.feed(frame[:10]) == [] and parser.mid_frame
    assert len(parser.feed(frame[10:])) == 1 and not parser.mid_frame
    assert parser.feed(encode_frame(b"a", fin=False)) == [] and parser.mid_frame


def test_twilio_sized_messages_take_the_fast_path(monkeypatch):
    """A media message (about 250 bytes: a 16-bit length) never reaches the general way."""
    parser = FrameParser()
    monkeypatch.setattr(parser, "_header", None)  # the general way would fail
    texts = [TwilioCall().media() for _ in range(3)]
    assert all(126 <= len(text) < 1 << 16 for text in texts)
    assert parser.feed(b"".join(encode_frame(text.encode()) for text in texts)) == texts
