"""WebSocket frames -> messages, with no socket: the protocol core (RFC 6455, as a server).

FrameParser takes the bytes of a connection as they arrive and gives what they complete:
whole messages (str for text, bytes for binary), pings to answer, and the connection's
end (a ConnectionEnded: a close frame, a protocol error, a message over the size limit,
invalid UTF-8), each with the close code to answer with. A message over the limit is
refused from its header, before its payload is kept. The gevent layer (websocket.py)
only moves bytes from the socket into it, and its answers back.

Twilio's messages are single, small, masked text frames: those take a fast path.
"""

import struct
from dataclasses import dataclass

try:
    from wsaccel.xormask import XorMaskerSimple
except ImportError:  # no build of wsaccel for this Python: unmask in pure Python
    XorMaskerSimple = None

OPCODE_CONTINUATION, OPCODE_TEXT, OPCODE_BINARY = 0x0, 0x1, 0x2
OPCODE_CLOSE, OPCODE_PING, OPCODE_PONG = 0x8, 0x9, 0xA

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011

MAX_MESSAGE_BYTES = 64 * 1024


class ConnectionEnded(BaseException):
    """The connection cannot go on: `ended_by` for the summary, `problem` for a warning,
    `close_code` to answer with. A BaseException, like gevent.Timeout: a deadline may
    strike inside a handler, and must get past its `except Exception` to end the
    connection."""

    def __init__(self, ended_by, problem=None, close_code=None):
        super().__init__(problem or ended_by)
        self.ended_by = ended_by
        self.problem = problem
        self.close_code = close_code


@dataclass(frozen=True, slots=True)
class Ping:
    """A ping: answer it with a pong of the same payload."""

    payload: bytes


class FrameParser:
    """One connection's frames, from bytes to messages (see the module's docstring)."""

    def __init__(self, max_message_bytes=MAX_MESSAGE_BYTES):
        self.max_message_bytes = max_message_bytes
        self._rest = b""  # the start of a frame not yet complete
        self._opcode = None  # of the fragmented message under way
        self._fragments = []
        self._size = 0

    @property
    def mid_frame(self):
        """True while a frame, or a fragmented message, is incomplete."""
        return bool(self._rest) or self._opcode is not None

    def feed(self, data):
        """Take the next bytes; return the events they complete, in order. A
        ConnectionEnded is always the last; after it, feed no more."""
        buffer = self._rest + data if self._rest else data
        offset, end = 0, len(buffer)
        events = []
        while end - offset >= 2:
            # The common case: a final, masked, small text frame, whole in the buffer.
            first, second = buffer[offset], buffer[offset + 1]
            if (
                first == 0x81
                and 0x80 < second < 0xFF  # masked; a 7- or 16-bit length
                and end - offset >= 8
                and self._opcode is None
            ):
                length, start = second & 0x7F, offset + 6
                if length == 126:
                    length, start = buffer[offset + 2] << 8 | buffer[offset + 3], offset + 8
                if start + length <= end and length <= self.max_message_bytes:
                    payload = unmask(buffer[start : start + length], buffer[start - 4 : start])
                    offset = start + length
                    event = _text(payload)
                    events.append(event)
                    if type(event) is str:
                        continue
                    break
            try:
                header = self._header(buffer, offset, end)
                if header is None:
                    break  # the rest of the header is still on its way
                fin, opcode, length, mask, start = header
                if start + length > end:
                    break  # the payload is still on its way (its size is within the limit)
                payload = unmask(buffer[start : start + length], mask) if length else b""
                offset = start + length
                event = self._frame(fin, opcode, payload)
            except ConnectionEnded as ending:
                event = ending
            if event is not None:
                events.append(event)
                if isinstance(event, ConnectionEnded):
                    break
        self._rest = buffer[offset:]
        return events

    def _header(self, buffer, offset, end):
        """(fin, opcode, payload length, mask, payload start) of the frame at `offset`;
        None if incomplete; ConnectionEnded for a frame that cannot be."""
        first, second = buffer[offset], buffer[offset + 1]
        if first & 0x70:
            raise protocol_error("reserved bits set in a frame header")
        if not second & 0x80:
            raise protocol_error("client frame is not masked")
        fin, opcode, length = first & 0x80, first & 0x0F, second & 0x7F
        if opcode >= OPCODE_CLOSE and (not fin or length > 125):
            raise protocol_error("control frame fragmented or over 125 bytes")
        extra = 2 if length == 126 else 8 if length == 127 else 0
        start = offset + 2 + extra + 4
        if start > end:
            return None
        if extra:
            length = int.from_bytes(buffer[offset + 2 : offset + 2 + extra], "big")
        if opcode < OPCODE_CLOSE and self._size + length > self.max_message_bytes:
            raise ConnectionEnded(  # refused from its header: nothing of it is kept
                "message too big",
                f"message of more than {self.max_message_bytes} bytes "
                f"({self._size + length} announced so far); closing with {CLOSE_TOO_BIG}",
                CLOSE_TOO_BIG,
            )
        return fin, opcode, length, buffer[start - 4 : start], start

    def _frame(self, fin, opcode, payload):
        """What a whole frame makes: a message, a Ping, a ConnectionEnded, or None."""
        if opcode >= OPCODE_CLOSE:
            if opcode == OPCODE_PING:
                return Ping(payload)
            if opcode == OPCODE_CLOSE:
                code = close_code(payload)
                return ConnectionEnded(f"client close ({code})", None, CLOSE_NORMAL)
            if opcode == OPCODE_PONG:
                return None
            return protocol_error(f"unknown control frame opcode {opcode}")
        if opcode == OPCODE_CONTINUATION:
            if self._opcode is None:
                return protocol_error("continuation frame outside a message")
        elif opcode in (OPCODE_TEXT, OPCODE_BINARY):
            if self._opcode is not None:
                return protocol_error("new message inside a fragmented message")
            self._opcode = opcode
        else:
            return protocol_error(f"unknown frame opcode {opcode}")
        self._fragments.append(payload)
        self._size += len(payload)
        if not fin:
            return None
        message = b"".join(self._fragments)
        text = self._opcode == OPCODE_TEXT
        self._opcode, self._fragments, self._size = None, [], 0
        return _text(message) if text else message


def _text(payload):
    """A text message's payload as str; invalid UTF-8 ends the connection (1007)."""
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return ConnectionEnded(
            "invalid text",
            f"text message is not valid UTF-8; closing with {CLOSE_INVALID_DATA}",
            CLOSE_INVALID_DATA,
        )


def close_code(payload):
    """The code of a client's close frame (1000 when it gives none); ConnectionEnded for
    an invalid one (RFC 6455, 5.5.1 and 7.4: 1002 for a bad code, 1007 for a reason that
    is not UTF-8)."""
    if not payload:
        return CLOSE_NORMAL
    if len(payload) == 1:
        raise protocol_error("close frame with a 1-byte payload")
    code = struct.unpack("!H", payload[:2])[0]
    if not (1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999):
        raise protocol_error(f"invalid close code {code}")
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ConnectionEnded(
            "invalid text",
            f"close reason is not valid UTF-8; closing with {CLOSE_INVALID_DATA}",
            CLOSE_INVALID_DATA,
        ) from None
    return code


def protocol_error(problem):
    return ConnectionEnded(
        "protocol error",
        f"{problem}; closing with {CLOSE_PROTOCOL_ERROR}",
        CLOSE_PROTOCOL_ERROR,
    )


def _unmask_in_python(payload, mask):
    """XOR a client frame's payload with its 4-byte mask (RFC 6455, 5.3)."""
    length = len(payload)
    key = (mask * (length // 4 + 1))[:length]
    masked = int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")
    return masked.to_bytes(length, "little")


def _unmask_with_wsaccel(payload, mask):
    """The same, in C: wsaccel is gevent-websocket's own optional accelerator."""
    return XorMaskerSimple(mask).process(payload)


unmask = _unmask_with_wsaccel if XorMaskerSimple else _unmask_in_python
