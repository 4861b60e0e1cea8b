"""What we do differently from flask-sockets and gevent-websocket, without forking them.

- flask-sockets (2016) adds its routes as plain HTTP rules; today's Werkzeug then refuses
  every WebSocket request with WebsocketMismatch. Our Sockets marks them websocket=True.
- gevent-websocket accepts any handshake before the app sees it; MediaStreamHandler
  refuses a handshake to a path with no WebSocket route (404), or one that fails the
  app's check (403, the signature), before accepting it.
- Connection is the thin gevent pump around frames.FrameParser (the protocol, with no
  socket): it reads up to 64 KiB of the socket at a time and feeds it to the parser
  (gevent-websocket does several reads per frame and unmasks byte by byte in Python), so
  a message over the size limit is refused from its header, before it is read (gevent-
  websocket reads whatever length a header announces); it knows how the connection ended,
  reports each protocol error in words, sends close codes (gevent-websocket's close()
  never sends the code it is given), and writes what is sent back from a greenlet of its
  own, with TCP_NODELAY.
"""

import errno
import logging
import os
import resource
import socket
import struct
import time

import flask_sockets
import gevent
from gevent import GreenletExit, pywsgi
from gevent.event import Event
from gevent.lock import Semaphore
from gevent.queue import Queue
from geventwebsocket.exceptions import WebSocketError
from geventwebsocket.handler import WebSocketHandler
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.routing import Rule

from mediastream.frames import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    MAX_MESSAGE_BYTES,
    OPCODE_CLOSE,
    OPCODE_PONG,
    OPCODE_TEXT,
    ConnectionEnded,
    FrameParser,
    Ping,
)
from mediastream.metrics import REFUSED_HANDSHAKES

log = logging.getLogger("mediastream")

IDLE_TIMEOUT = 30.0
DRAIN_REPORT_SECONDS = 60  # while draining, a line this often says how many streams are left
READ_SIZE = 64 * 1024
TLS_HANDSHAKE = b"\x16"  # the first byte of a TLS connection: never of an HTTP request
REQUEST_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
)

REFUSAL_REASONS = {"404": "no route", "403": "signature"}  # 503: OpenConnections.state


class Sockets(flask_sockets.Sockets):
    """flask-sockets, with its routes registered as WebSocket routes for today's Werkzeug.

    `check`, if given, is called with each handshake's WSGI environ before it is accepted
    and returns why to refuse it (403), or None. Once `connections` are draining or
    shutting down, handshakes are refused (503)."""

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
        if self.connections.state != "ok":
            return "503 Service Unavailable", f"the server is {self.connections.state}"
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

    def close(self):
        """Close the listener, once: a draining gunicorn worker closes it early."""
        if not self.closed:
            super().close()

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
        self._request_begun = False
        try:
            return super().handle_one_request()
        except gevent.Timeout as timeout:
            if timeout is not self._request_deadline:
                raise
            if not self._request_begun:  # a browser's spare connection, never used: normal
                log.debug("[%s] connection closed unused after %g s", self._peer(), seconds)
            else:
                self.log_error("request not received within %g s; closed", seconds)
                REFUSED_HANDSHAKES.labels("timeout").inc()
            return "408", REQUEST_TIMEOUT_RESPONSE
        finally:
            self._request_deadline.cancel()

    def read_requestline(self):
        first = self.rfile.peek(1)[:1]
        self._request_begun = bool(first)
        if first == TLS_HANDSHAKE:
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
        log.warning("[%s] bad HTTP request: %s", self._peer(), msg % args if args else msg)

    def _peer(self):
        return ":".join(str(part) for part in self.client_address[:2])

    def upgrade_websocket(self):
        if self.environ.get("HTTP_UPGRADE", "").lower() == "websocket":
            refusal = self.application.extensions["sockets"].handshake_refusal(self.environ)
            if refusal:
                return self._refuse(*refusal)
        return super().upgrade_websocket()

    def _refuse(self, status, reason):
        connections = self.application.extensions["connections"]
        REFUSED_HANDSHAKES.labels(REFUSAL_REASONS.get(status[:3], connections.state)).inc()
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


class OpenConnections(set):
    """Every Connection being served: a drain waits for them to end by themselves, a
    shutdown ends them all at once. Either way, new streams are refused meanwhile."""

    def __init__(self):
        super().__init__()
        self.state = "ok"  # then "draining" (SIGTERM), or "shutting down"
        self._emptied = Event()

    def discard(self, connection):
        super().discard(connection)
        if not self:
            self._emptied.set()

    def drain(self, timeout):
        """Let the open streams end by themselves, up to `timeout` seconds (a line now and
        every DRAIN_REPORT_SECONDS), then end those left. Returns once none is open."""
        self.state = "draining"
        log.info(
            "draining: %d open streams, waiting up to %s for them to end "
            "(SIGTERM again or Ctrl-C ends them now)",
            len(self),
            _seconds(timeout),
        )
        deadline = time.monotonic() + timeout
        while self and self.state == "draining":
            if time.monotonic() >= deadline:
                self.end_all()
                return
            self._emptied.clear()
            if self._emptied.wait(min(DRAIN_REPORT_SECONDS, deadline - time.monotonic())):
                break
            left = deadline - time.monotonic()
            if self and left > 0:
                log.info("draining: %d streams still open, %s left", len(self), _seconds(left))
        if self.state == "draining":
            log.info("drained: every stream has ended")

    def terminate(self, drain_timeout):
        """What SIGTERM does: drain the first time; end every stream now the next."""
        if self.state == "ok":
            self.drain(drain_timeout)
        else:
            self.end_all()

    def end_all(self, timeout=5):
        """End every open connection now, each with its summary, and wait for them."""
        self.state = "shutting down"
        log.info("shutting down: ending %d open streams", len(self))
        gevent.killall([connection.greenlet for connection in self], timeout=timeout)


def _seconds(seconds):
    """A wait, for a person: seconds, or whole minutes past two of them."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


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
        self._read_some = self._first_read
        self.parser = FrameParser(max_message_bytes)
        self._readable = None  # the socket's readiness watcher, once reading it directly
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
        if self._readable is not None:
            self._readable.close()
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
        """Yield each text message (str) or binary message (bytes) until the end: the
        socket's bytes go through the frame parser; pings are answered here."""
        while True:
            data = self._read_some(READ_SIZE)
            self._heard_at = self._now()
            if not data:
                raise ConnectionEnded(
                    "disconnect",
                    "connection cut in the middle of a frame"
                    if self.parser.mid_frame
                    else "connection dropped without a close frame",
                )
            for event in self.parser.feed(data):
                if isinstance(event, (str, bytes)):
                    yield event
                elif isinstance(event, Ping):
                    self._write(event.payload, OPCODE_PONG)
                else:
                    raise event

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

    def end(self, ended_by):
        """End it from anywhere (a handler closing the stream): its reading greenlet
        leaves the block, and the peer gets a normal close."""
        self.greenlet.kill(ConnectionEnded(ended_by, None, CLOSE_NORMAL), block=False)

    def _end(self, ended_by, problem, close_code):
        self.ended_by = ended_by
        if problem:
            self.log.warning("connection problem: %s", problem)
        if close_code is not None:
            self.close(close_code)
        self.ws.closed = True  # nothing more is sent; the handler closes the socket

    def _first_read(self, size):
        """What the handshake's buffered reader holds (a client may send frames right
        behind its request); then the socket itself, with no layers between."""
        data = self.ws.handler.rfile.read1(size)
        self._fd = self.ws.handler.socket.fileno()
        self._readable = gevent.get_hub().loop.io(self._fd, 1)
        self._read_some = self._read_when_readable
        return data

    def read_every(self, interval):
        """From now on, read at most every `interval` seconds, all that has arrived at
        once: one wake-up for several of Twilio's messages instead of one each. (For a
        stream where nothing waits on a message's arriving a moment later: a one-way
        stream, or an agent's, whose turns take tenths of a second.)"""
        if interval and self._readable is not None:
            self._interval = interval
            self._behind = False
            self._read_some = self._read_batch

    def _read_batch(self, size):
        """Let an interval's messages gather, then read them all; if none has come, wait
        for the next as ever, so that a lone message (a stop, a close) is read at once.
        A full read means more is waiting (a client sending faster than real time): the
        next read comes at once."""
        if not self._behind:
            gevent.sleep(self._interval)
        try:
            data = os.read(self._fd, size)
        except BlockingIOError:
            return self._read_when_readable(size)
        self._behind = len(data) == size
        return data

    def _read_when_readable(self, size):
        """Wait until the socket has bytes, then read them: one wake-up and one read per
        message. (A socket's recv() reads first, fails with EAGAIN, then waits, and
        reads again: an exception and a syscall more for each of Twilio's messages.)"""
        gevent.get_hub().wait(self._readable)
        return os.read(self._fd, size)

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
