"""The pieces of our WebSocket layer that need no socket."""

import os

import pytest

from mediastream.websocket import _unmask_in_python, unmask


@pytest.mark.parametrize("implementation", [unmask, _unmask_in_python])
def test_unmask_matches_rfc_6455_byte_by_byte(implementation):
    mask = b"\x37\xfa\x21\x3d"
    for length in (0, 1, 3, 4, 5, 160, 257, 70_000):
        payload = os.urandom(length)
        expected = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        assert implementation(payload, mask) == expected
