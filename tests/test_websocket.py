"""The pieces of our WebSocket layer that need no socket."""

import os

from mediastream.websocket import unmask


def test_unmask_matches_rfc_6455_byte_by_byte():
    mask = b"\x37\xfa\x21\x3d"
    for length in (0, 1, 3, 4, 5, 160, 257):
        payload = os.urandom(length)
        expected = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        assert unmask(payload, mask) == expected
