"""The pieces of our WebSocket layer that need no socket."""

import io
import itertools
import logging
import os
import types

import pytest

from mediastream.simulator import TwilioCall, encode_frame
from mediastream.websocket import (
    OPCODE_BINARY,
    OPCODE_CLOSE,
    OPCODE_CONTINUATION,
    OPCODE_PING,
    OPCODE_PONG,
    Connection,
    _unmask_in_python,
    unmask,
)


@pytest.mark.parametrize("implementation", [unmask, _unmask_in_python])
def test_unmask_matches_rfc_6455_byte_by_byte(implementation):
    mask = b"\x37\xfa\x21\x3d"
    for length in (0, 1, 3, 4, 5, 160, 257, 70_000):
        payload = os.urandom(length)
        expected = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        assert implementation(payload, mask) == expected


class Trickle(io.RawIOBase):
    """A socket that delivers the bytes it was given a few at a time."""

    def __init__(self, data, sizes):
        self.data, self.sizes = memoryview(data), itertools.cycle(sizes)

    def readable(self):
        return True

    def readinto(self, buffer):
        count = min(len(buffer), next(self.sizes), len(self.data))
        buffer[:count], self.data = self.data[:count], self.data[count:]
        return count


class FakeWebSocket:
    """What Connection uses of gevent-websocket's WebSocket: the handler's rfile, send_frame."""

    closed = False

    def __init__(self, data, sizes):
        self.handler = types.SimpleNamespace(rfile=io.BufferedReader(Trickle(data, sizes), 16))
        self.sent = []

    def send_frame(self, payload, opcode):
        self.sent.append((opcode, payload))


def read_all(ws, max_message_bytes):
    """Every message a Connection reads from `ws` until it ends, as the route reads them."""
    received = []
    with Connection(ws, logging.getLogger("test"), max_message_bytes) as connection:
        for message in connection.messages():
            received.append(message)
    return connection, received


@pytest.mark.parametrize("sizes", [[1], [3, 7, 1], [65536]], ids=["bytewise", "uneven", "bulk"])
def test_messages_come_out_whole_however_the_bytes_arrive(sizes):
    call = TwilioCall()
    texts = [call.start()] + [call.media() for _ in range(30)] + ["é" * 200, "x" * 70_000]
    frames = [encode_frame(text.encode()) for text in texts[:-1]]
    frames += [  # a fragmented message with a ping in between, then a binary one
        encode_frame(b"he", fin=False),
        encode_frame(b"!", opcode=OPCODE_PING),
        encode_frame(b"llo", opcode=OPCODE_CONTINUATION),
        encode_frame(b"\x00\x01", opcode=OPCODE_BINARY),
        encode_frame(texts[-1].encode()),  # over the limit: closes the connection
    ]
    ws = FakeWebSocket(b"".join(frames), sizes)
    connection, received = read_all(ws, max_message_bytes=65536)
    assert received == texts[:-1] + ["hello", b"\x00\x01"]
    assert connection.ended_by == "message too big"
    assert ws.sent[0] == (OPCODE_PONG, b"!")
    assert ws.sent[-1] == (OPCODE_CLOSE, (1009).to_bytes(2, "big"))


def test_a_small_limit_applies_to_short_frames_too():
    ws = FakeWebSocket(encode_frame(b"x" * 100), [65536])
    connection, received = read_all(ws, max_message_bytes=99)
    assert received == []
    assert connection.ended_by == "message too big"
