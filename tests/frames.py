"""Raw WebSocket frames (RFC 6455), built by hand to send what no polite client sends."""

import struct


def frame(payload=b"", opcode=0x1, fin=True, mask=b"\x11\x22\x33\x44", length=None):
    """One client frame; `length` announces a length other than the payload's."""
    length = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | opcode])
    mask_bit = 0x80 if mask else 0
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", length)
    if not mask:
        return head + payload
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return head + mask + masked


def send_raw(ws, data):
    """Write bytes straight onto a websocket-client connection's socket."""
    ws.sock.sendall(data)
