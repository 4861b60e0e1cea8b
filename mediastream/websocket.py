"""What we do differently from flask-sockets and gevent-websocket, without forking them.

- flask-sockets (2016) adds its routes as plain HTTP rules; today's Werkzeug then refuses
  every WebSocket request with WebsocketMismatch. Our Sockets marks them websocket=True.
- gevent-websocket accepts any handshake before the app sees it; MediaStreamHandler
  refuses a handshake to a path with no WebSocket route (404), or one that fails the
  app's check (403, the signature), before accepting it.
- Connection reads the frames of an accepted WebSocket itself: 64 KiB of the socket at a
  time, with Twilio's small text frames taken straight from that buffer and unmasked in C
  (gevent-websocket does several reads per frame and unmasks byte by byte in Python); it
  refuses a message over the size limit from its header, before reading or allocating it
  (gevent-websocket reads whatever length a header announces), knows how the connection
  ended, reports each protocol error in words, and sends close codes (gevent-websocket's
  close() never sends the code it is given).
"""

import errno
import logging
import resource
import socket
import struct
import time

import flask_sockets
import gevent
from gevent import GreenletExit, pywsgi
from gevent.lock import Semaphore
from gevent.queue import Queue
from geventwebsocket.exceptions import WebSocketError
from geventwebsocket.handler import WebSocketHandler
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.routing import Rule

from mediastream.metrics import REFUSED_HANDSHAKES

try:
    from wsaccel.xormask import XorMaskerSimple
except ImportError:  # no build of wsaccel for this Python: unmask in pure Python
    XorMaskerSimple = None

log = logging.getLogger("mediastream")

MAX_MESSAGE_BYTES = 64 * 1024
IDLE_TIMEOUT = 30.0
READ_SIZE = 64 * 1024
TLS_HANDSHAKE = b"\x16"  # the first byte of a TLS connection: never of an HTTP request
REQUEST_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
)

OPCODE_CONTINUATION, OPCODE_TEXT, OPCODE_BINARY = 0x0, 0x1, 0x2
OPCODE_CLOSE, OPCODE_PING, OPCODE_PONG = 0x8, 0x9, 0xA

REFUSAL_REASONS = {"404": "no route", "403": "signature", "503": "shutting down"}

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011


class Sockets(flask_sockets.Sockets):
    """flask-sockets, with its routes registered as WebSocket routes for today's Werkzeug.

    `check`, if given, is called with each handshake's WSGI environ before it is accepted
    and returns why to refuse it (403), or None. Once `connections` are shutting down,
    handshakes are refused (503)."""

    def __init__(self, app, connections, check=None):
        self.connections = connections
        self.check = check
        super().__init__(app)

    def init_app(self, app):
        app.wsgi_app = SocketMiddleware(app.wsgi_app, app, self)
        app.extensions["sockets"] = self

    def add_url_rule(self, rule, _, f, **options):
        self.url_map.add(Rule(rule, endpoint=f, websocket=True))

    def handshake_refusal(self, environ):
        """Why a WebSocket handshake must be refused before it is accepted, or None."""
        try:
            self.url_map.bind_to_environ(environ).match()
        except NotFound:
            return "404 Not Found", "no WebSocket route at this path"
        if self.connections.shutting_down:
            return "503 Service Unavailable", "the server is shutting down"
        reason = self.check(environ) if self.check else None
        return ("403 Forbidden", reason) if reason else None


class SocketMiddleware(flask_sockets.SocketMiddleware):
    """Runs the WebSocket route a request matches; anything else goes to Flask.

    Unlike flask-sockets' own, a plain HTTP request to a WebSocket route goes to Flask (which
    may have a page at that path) instead of raising a traceback, and errors inside a route
    are not mistaken for a missing route."""

    def __call__(self, environ, start_response):
        try:
            route, values = self.ws.url_map.bind_to_environ(environ).match()
        except HTTPException:  # no WebSocket route here, or not a WebSocket request
            return self.wsgi_app(environ, start_response)
        websocket = environ.get("wsgi.websocket")
        if websocket is None:
            return NotFound("WebSocket route served without gevent-websocket's handler")(
                environ, start_response
            )
        with self.app.app_context(), self.app.request_context(environ):
            route(websocket, **values)
        return []


class MediaStreamServer(pywsgi.WSGIServer):
    """gevent's WSGI server, saying in one line, at most once a second, when it cannot
    accept connections for lack of file descriptors (gevent prints a traceback for each)."""

    _warned_at = -1.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        hub = gevent.get_hub()  # gevent's documented way to keep an exception quiet
        hub.NOT_ERROR = (*hub.NOT_ERROR, AcceptPaused)

    def do_read(self):
        try:
            return super().do_read()
        except OSError as error:
            if error.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            if time.monotonic() - self._warned_at >= 1:
                self._warned_at = time.monotonic()
                limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
                log.warning(
                    "cannot accept connections: %s (the limit is %d: raise it with ulimit -n)",
                    error.strerror,
                    limit,
                )
            raise AcceptPaused from None  # gevent pauses accepting, then tries again


class AcceptPaused(Exception):
    """Accepting failed for lack of file descriptors (said already, not printed)."""


class MediaStreamHandler(WebSocketHandler):
    """gevent-websocket's handler, refusing handshakes the app would not serve, and
    requests (handshakes) not received in full within START_TIMEOUT of their start,
    however slowly a client trickles them."""

    def handle(self):
        # Small messages both ways, each wanted at once: without this, Nagle's algorithm
        # holds each message sent back until the peer acknowledges the last one (a whole
        # 20 ms media tick later, when the ack rides on its next message).
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().handle()

    def handle_one_request(self):
        seconds = self.server.application.config["MEDIASTREAM"].start_timeout
        self._request_deadline = gevent.Timeout.start_new(seconds)
        try:
            return super().handle_one_request()
        except gevent.Timeout as timeout:
            if timeout is not self._request_deadline:
                raise
            self.log_error("request not received within %g s; closed", seconds)
            REFUSED_HANDSHAKES.labels("timeout").inc()
            return "408", REQUEST_TIMEOUT_RESPONSE
        finally:
            self._request_deadline.cancel()

    def read_requestline(self):
        if self.rfile.peek(1)[:1] == TLS_HANDSHAKE:
            self.log_error(
                "this looks like TLS (https:// or wss://) sent to this plain port: use ws:// "
                "locally, or put an ngrok http tunnel in front; closed"
            )
            return ""  # no request: the connection is closed
        return super().read_requestline()

    def read_request(self, raw_requestline):
        request = super().read_request(raw_requestline)
        self._request_deadline.cancel()  # all in: the stream's own deadlines take over
        return request

    def log_error(self, msg, *args):
        # gevent's reports of bad HTTP requests, as one console line like ours.
        peer = ":".join(str(part) for part in self.client_address[:2])
        log.warning("[%s] bad HTTP request: %s", peer, msg % args if args else msg)

    def upgrade_websocket(self):
        if self.environ.get("HTTP_UPGRADE", "").lower() == "websocket":
            refusal = self.application.extensions["sockets"].handshake_refusal(self.environ)
            if refusal:
                return self._refuse(*refusal)
        return super().upgrade_websocket()

    def _refuse(self, status, reason):
        REFUSED_HANDSHAKES.labels(REFUSAL_REASONS[status[:3]]).inc()
        log.warning(
            "[%s] WebSocket handshake refused (%s): %s",
            client_address(self.environ),
            status,
            reason,
        )
        body = f"{reason}\n".encode()
        self.start_response(
            status,
            [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
        )
        return [body]


def client_address(environ):
    """The peer of a request as host:port, for log lines."""
    return f"{environ.get('REMOTE_ADDR', '?')}:{environ.get('REMOTE_PORT', '?')}"


class ConnectionEnded(BaseException):
    """Raised inside Connection when the connection cannot go on. A BaseException, like
    gevent.Timeout: a deadline may strike inside a handler, and must get past its
    `except Exception` to end the connection."""

    def __init__(self, ended_by, problem=None, close_code=None):
        super().__init__(problem or ended_by)
        self.ended_by = ended_by
        self.problem = problem
        self.close_code = close_code


class OpenConnections(set):
    """Every Connection being served, so that a shutdown can end them all at once."""

    shutting_down = False

    def end_all(self, timeout=5):
        """End every open connection now, each with its summary, and wait for them."""
        self.shutting_down = True
        log.info("shutting down: ending %d open streams", len(self))
        gevent.killall([connection.greenlet for connection in self], timeout=timeout)


class Connection:
    """Whole messages from an accepted WebSocket, and how the connection ended.

        with Connection(ws, stream.log) as connection:
            for message in connection.messages():
                ...

    However the block ends (a close frame, a protocol error, a deadline, a dropped socket,
    the server shutting down), and wherever the greenlet was when it happened, the block
    is left quietly: `ended_by` says how (for the summary), a problem gets one warning
    line, and the peer gets the close code that fits."""

    def __init__(self, ws, log, max_message_bytes=MAX_MESSAGE_BYTES, idle_timeout=IDLE_TIMEOUT):
        self.ws = ws
        self.log = log
        self.greenlet = gevent.getcurrent()  # the one serving it, for OpenConnections.end_all
        self.max_message_bytes = max_message_bytes
        self._read_some = ws.handler.rfile.read1  # what has arrived, without waiting for more
        self._buffer = b""
        self._offset = 0
        self._deadlines = []
        self._outbox = None  # text for the peer, and the greenlet that writes it, once used
        self._writing = Semaphore()  # one frame at a time on the socket
        self.ended_by = None
        # A stream that goes silent is ended: each read notes the time (the event loop's,
        # which costs nothing), and a timer looks at it four times per idle_timeout.
        loop = gevent.get_hub().loop
        self._now = loop.now
        self._heard_at = loop.now()
        self.idle_timeout = idle_timeout
        self._idle_check = loop.timer(idle_timeout / 4, idle_timeout / 4)
        self._idle_check.start(self._check_idle)
        log.info("connection opened")

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        self._idle_check.close()
        for deadline in self._deadlines:
            deadline.cancel()
        if isinstance(error, ConnectionEnded):
            self._end(error.ended_by, error.problem, error.close_code)
        elif isinstance(error, GreenletExit):
            self._end("server shutdown", None, CLOSE_GOING_AWAY)
        elif isinstance(error, OSError):
            self._end("disconnect", f"connection lost: {error}", None)
        elif error is not None:  # a bug of ours: say so, and still end the stream properly
            self.log.error("internal error", exc_info=(kind, error, traceback))
            self._end("internal error", None, CLOSE_INTERNAL_ERROR)
        if self._outbox is not None:  # after the close frame, which waits for its frame
            self._writer.kill(block=False)
        return True

    def messages(self):
        """Yield each text message (str) or binary message (bytes) until the end."""
        while True:
            yield self._read_message()

    def deadline(self, seconds, what):
        """End the connection with 1008 unless the returned timer is cancelled in time."""
        timer = gevent.Timeout.start_new(
            seconds,
            ConnectionEnded(
                what,
                f"{what} within {seconds:g} s; closing with {CLOSE_POLICY_VIOLATION}",
                CLOSE_POLICY_VIOLATION,
            ),
        )
        self._deadlines.append(timer)
        return timer

    def _check_idle(self):
        if self._now() - self._heard_at >= self.idle_timeout:
            self._idle_check.stop()
            self.greenlet.kill(
                ConnectionEnded(
                    "idle timeout",
                    f"no message for {self.idle_timeout:g} s; closing with "
                    f"{CLOSE_POLICY_VIOLATION}",
                    CLOSE_POLICY_VIOLATION,
                ),
                block=False,
            )

    def _end(self, ended_by, problem, close_code):
        self.ended_by = ended_by
        if problem:
            self.log.warning("connection problem: %s", problem)
        if close_code is not None:
            self.close(close_code)
        self.ws.closed = True  # nothing more is sent; the handler closes the socket

    def send_text(self, text):
        """Queue a text message for the peer: a greenlet of the connection's writes it,
        so that the reading greenlet never waits on a slow peer."""
        if self._outbox is None:
            self._outbox = Queue()
            self._writer = gevent.spawn(self._write_outbox)
        self._outbox.put(text)

    def _write_outbox(self):
        for text in self._outbox:
            if self.ws.closed:
                return
            try:
                self._write(text, OPCODE_TEXT)  # gevent-websocket encodes text itself
            except (WebSocketError, OSError):
                return  # the peer has gone; the reader finds out and ends the stream

    def _write(self, payload, opcode):
        with self._writing:
            self.ws.send_frame(payload, opcode)

    def close(self, code, reason=""):
        """Send a close frame with `code` (unless the connection is closed already)."""
        if self.ws.closed:
            return
        try:
            self._write(struct.pack("!H", code) + reason.encode(), OPCODE_CLOSE)
        except WebSocketError:
            pass  # the peer has gone already; nothing to tell it

    def _read_message(self):
        # The common case first: Twilio's messages are single, small, masked text frames,
        # and a burst of them is in the buffer already. Anything else: the general way.
        buffer, offset = self._buffer, self._offset
        if len(buffer) - offset >= 8 and buffer[offset] == 0x81 and buffer[offset + 1] > 0x80:
            length = buffer[offset + 1] & 0x7F  # final, masked text frame
            start = offset + 6
            if length == 126:
                length = buffer[offset + 2] << 8 | buffer[offset + 3]
                start = offset + 8
            end = start + length  # (127: a 64-bit length follows; left to the general way)
            if length != 127 and length <= self.max_message_bytes and end <= len(buffer):
                self._offset = end
                return _text(unmask(buffer[start:end], buffer[start - 4 : start]))
        return self._read_any_message()

    def _read_any_message(self):
        """A whole message, however it is framed: fragments, control frames in between."""
        opcode = None
        fragments = []
        size = 0
        while True:
            fin, frame_opcode, length, mask = self._read_header(opcode is None)
            if frame_opcode >= OPCODE_CLOSE:
                self._on_control_frame(frame_opcode, self._read_payload(length, mask))
                continue
            if frame_opcode == OPCODE_CONTINUATION:
                if opcode is None:
                    raise _protocol_error("continuation frame outside a message")
            elif frame_opcode in (OPCODE_TEXT, OPCODE_BINARY):
                if opcode is not None:
                    raise _protocol_error("new message inside a fragmented message")
                opcode = frame_opcode
            else:
                raise _protocol_error(f"unknown frame opcode {frame_opcode}")
            size += length
            if size > self.max_message_bytes:
                raise ConnectionEnded(
                    "message too big",
                    f"message of more than {self.max_message_bytes} bytes "
                    f"({size} announced so far); closing with {CLOSE_TOO_BIG}",
                    CLOSE_TOO_BIG,
                )
            fragments.append(self._read_payload(length, mask))
            if fin:
                break
        payload = b"".join(fragments)
        return payload if opcode == OPCODE_BINARY else _text(payload)

    def _read_header(self, between_messages):
        """The frame header: (fin, opcode, payload length, mask)."""
        head = self._take(2)
        if not head and between_messages:
            raise ConnectionEnded("disconnect", "connection dropped without a close frame")
        _check_complete(head, 2)
        first, second = head
        if first & 0x70:
            raise _protocol_error("reserved bits set in a frame header")
        if not second & 0x80:
            raise _protocol_error("client frame is not masked")
        fin, opcode, length = first & 0x80, first & 0x0F, second & 0x7F
        if opcode >= OPCODE_CLOSE and (not fin or length > 125):
            raise _protocol_error("control frame fragmented or over 125 bytes")
        # The extended length (2 or 8 bytes, if any) and the mask, in one read.
        extra = 2 if length == 126 else 8 if length == 127 else 0
        rest = self._take(extra + 4)
        _check_complete(rest, extra + 4)
        if extra:
            length = int.from_bytes(rest[:extra], "big")
        return fin, opcode, length, rest[extra:]

    def _read_payload(self, length, mask):
        payload = self._take(length)
        _check_complete(payload, length)
        return unmask(payload, mask) if length else b""

    def _take(self, count):
        """The next `count` bytes of the stream (fewer only where it ends).

        The socket is read in large pieces into a buffer, so that a burst of small frames
        costs one read, not several per frame; `count` is at most a header or a payload
        within the size limit, so the buffer never holds more than that plus one piece."""
        start, end = self._offset, self._offset + count
        if end > len(self._buffer):
            buffer = self._buffer[start:]
            while len(buffer) < count:
                piece = self._read_some(max(READ_SIZE, count - len(buffer)))
                self._heard_at = self._now()
                if not piece:
                    break
                buffer += piece
            self._buffer, start, end = buffer, 0, count
        self._offset = min(end, len(self._buffer))
        return self._buffer[start:end]

    def _on_control_frame(self, opcode, payload):
        if opcode == OPCODE_PING:
            self._write(payload, OPCODE_PONG)
        elif opcode == OPCODE_CLOSE:
            code = _close_code(payload)
            self.close(CLOSE_NORMAL)
            raise ConnectionEnded(f"client close ({code})")
        elif opcode != OPCODE_PONG:
            raise _protocol_error(f"unknown control frame opcode {opcode}")


def _close_code(payload):
    """The code of a client's close frame; ConnectionEnded for an invalid one (RFC 6455,
    5.5.1 and 7.4: 1002 for a bad code, 1007 for a reason that is not UTF-8)."""
    if not payload:
        return CLOSE_NORMAL  # no code given
    if len(payload) == 1:
        raise _protocol_error("close frame with a 1-byte payload")
    code = struct.unpack("!H", payload[:2])[0]
    if not (1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999):
        raise _protocol_error(f"invalid close code {code}")
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ConnectionEnded(
            "invalid text",
            f"close reason is not valid UTF-8; closing with {CLOSE_INVALID_DATA}",
            CLOSE_INVALID_DATA,
        ) from None
    return code


def _text(payload):
    """A text message's payload as str; invalid UTF-8 ends the connection (1007)."""
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ConnectionEnded(
            "invalid text",
            f"text message is not valid UTF-8; closing with {CLOSE_INVALID_DATA}",
            CLOSE_INVALID_DATA,
        ) from None


def _check_complete(data, count):
    if len(data) != count:
        raise ConnectionEnded("disconnect", "connection cut in the middle of a frame")


def _protocol_error(problem):
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
