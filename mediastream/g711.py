"""G.711 mu-law, the audio Twilio streams: 8000 Hz, mono, one byte a sample, 20 ms a message.

Twilio's audio constants live here, once. The codec is lookup tables, because audioop
(which did this in C) left the standard library in Python 3.13: bytes.translate decodes,
and numpy indexes the encoding table, 30 times faster than Python does it one sample at
a time (an agent answering 200 calls at once encodes 600 s of voice).
"""

import functools
import struct

import numpy

SAMPLE_RATE = 8000  # samples a second
CHUNK_MS = 20  # audio per media message
CHUNK_SECONDS = CHUNK_MS / 1000
CHUNK_SAMPLES = SAMPLE_RATE * CHUNK_MS // 1000  # 160: also the bytes of mu-law per message
CHUNKS_PER_SECOND = 1000 // CHUNK_MS  # 50 media messages a second per track

BIAS = 0x84
SILENCE = 0xFF  # mu-law's zero


def _encode_14_bits(value):
    """The top 14 bits of a signed 16-bit sample (-8192 to 8191) -> one mu-law byte
    (G.711, as Sun's reference code and audioop compute it)."""
    mask = 0x7F if value < 0 else 0xFF
    magnitude = min(abs(value), 8159) + (BIAS >> 2)
    segment = max(magnitude.bit_length() - 6, 0)  # 0 for 33..63, ... 7 for 4096..8191
    if segment > 7:
        return 0x7F ^ mask  # the loudest code
    return (segment << 4 | (magnitude >> (segment + 1)) & 0x0F) ^ mask


def decode_byte(byte):
    """One mu-law byte -> one signed 16-bit sample."""
    byte = ~byte & 0xFF
    exponent, mantissa = (byte >> 4) & 0x07, byte & 0x0F
    magnitude = ((mantissa << 3) + BIAS) << exponent
    return BIAS - magnitude if byte & 0x80 else magnitude - BIAS


# Every code's sample as 2 little-endian bytes, split in a table of low bytes and one of
# high bytes: bytes.translate() then decodes a chunk in C (the server decodes every chunk).
_DECODE = [struct.pack("<h", decode_byte(byte)) for byte in range(256)]
_LOW_BYTES = bytes(sample[0] for sample in _DECODE)
_HIGH_BYTES = bytes(sample[1] for sample in _DECODE)


@functools.cache
def _encode_table():
    """Every 16-bit sample's code, indexed by the sample's bits read as unsigned (0 to
    32767, then -32768 to -1). Built on first use (talking back, the simulator), from
    the 16384 values of the top 14 bits: each code stands for 4 samples in a row."""
    by_top_bits = bytes(map(_encode_14_bits, range(-8192, 8192)))
    table = bytearray(65536)
    for low_bits in range(4):
        table[low_bits::4] = by_top_bits
    return numpy.frombuffer(bytes(table[32768:] + table[:32768]), numpy.uint8)


def encode(pcm):
    """16-bit little-endian PCM bytes -> mu-law bytes."""
    return _encode_table()[numpy.frombuffer(pcm, "<u2")].tobytes()


def decode(ulaw):
    """mu-law bytes -> 16-bit little-endian PCM bytes."""
    pcm = bytearray(2 * len(ulaw))
    pcm[0::2] = ulaw.translate(_LOW_BYTES)
    pcm[1::2] = ulaw.translate(_HIGH_BYTES)
    return bytes(pcm)
