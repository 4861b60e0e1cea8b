"""The one HTTP client of the three tiers (the model, the voice, transcription): requests to
OpenAI-compatible APIs from a greenlet.

The standard library's http.client over gevent's own sockets, done once:
- A greenlet waiting for the next token holds up nothing else, and killing it (the caller
  talked over the agent, or hung up) closes its connection at once.
- Connections are kept alive, a few idle ones per host, so that a turn's model request and
  each sentence's voice request do not pay for a new connection (and, over TLS, a
  handshake). One that the server closed while idle is found before it is used; a request
  on a kept connection that the server drops before answering is sent once more, on a new
  one.
- One TLS context per process: making one reads the system's certificates, 43 ms of CPU
  on the machine of docs/agent.md, which on the hub would stall every call.

Every failure is a ServiceFailed whose `kind` names it (one warning per stream per kind)
and whose message says it for a person, with what the server's body said, cut short.
"""

import functools
import http.client
import socket
import uuid
from urllib.parse import urlsplit

import gevent.select
import gevent.socket
import gevent.ssl
import orjson

from mediastream.messages import cut

CONNECT_TIMEOUT = 3.05  # seconds to connect (an answer's pieces have the caller's timeout)
MESSAGE_CHARACTERS = 160  # of what a failed request's answer says, in the warning
IDLE_PER_HOST = 8  # kept-alive connections waiting for the next request, per host


class ServiceFailed(Exception):
    """A request that gave no usable answer: `kind` names what happened ("HTTP 429",
    "timeout", "refused", "bad answer", ...), the message says it for a person."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


@functools.cache
def tls_context():
    """The process's TLS context: the system's certificates (or SSL_CERT_FILE's)."""
    return gevent.ssl.create_default_context()


class _Connection(http.client.HTTPConnection):
    def connect(self):
        self.sock = _open(self.host, self.port, self.timeout)


class _TLSConnection(http.client.HTTPSConnection):
    def connect(self):
        sock = _open(self.host, self.port, self.timeout)
        self.sock = tls_context().wrap_socket(sock, server_hostname=self.host)


def _open(host, port, timeout):
    sock = gevent.socket.create_connection((host, port), CONNECT_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(timeout)
    return sock


class Pool:
    """Idle kept-alive connections, per (scheme, host, port)."""

    def __init__(self):
        self.idle = {}

    def take(self, scheme, host, port, timeout):
        """(a connection, whether it was kept from an earlier request)."""
        idle = self.idle.get((scheme, host, port), [])
        while idle:
            connection = idle.pop()
            if _still_open(connection):
                connection.timeout = timeout
                connection.sock.settimeout(timeout)
                return connection, True
            connection.close()
        kind = _TLSConnection if scheme == "https" else _Connection
        return kind(host, port, timeout=timeout), False

    def give_back(self, scheme, connection):
        idle = self.idle.setdefault((scheme, connection.host, connection.port), [])
        if len(idle) < IDLE_PER_HOST:
            idle.append(connection)
        else:
            connection.close()


def _still_open(connection):
    """Whether an idle connection can take a request: nothing to read on it (a server
    that closed it has sent its end)."""
    if connection.sock is None:
        return False
    readable, _, _ = gevent.select.select([connection.sock], [], [], 0)
    return not readable


POOL = Pool()


class Answer:
    """A response being read: `lines()`, `pieces()` or `read()`, then closed (use it in
    `with`); a connection read to its end goes back to the pool."""

    def __init__(self, scheme, connection, response, timeout):
        self.scheme = scheme
        self.connection = connection
        self.response = response
        self.timeout = timeout
        self.content_type = response.getheader("Content-Type", "")

    def __enter__(self):
        return self

    def __exit__(self, *_):
        if self.response.isclosed() and not self.response.will_close:
            POOL.give_back(self.scheme, self.connection)
        else:  # not read to its end (cancelled, failed), or the server closes it
            self.connection.close()

    def lines(self):
        """Each line of the body as it arrives, as text without its line end. (Cut from
        pieces(): http.client's readline takes a chunked body that breaks off for its end.)"""
        rest = b""
        for piece in self.pieces():
            *lines, rest = (rest + piece).split(b"\n")
            for line in lines:
                yield line.decode("utf-8", "replace").rstrip("\r")
        if rest:
            yield rest.decode("utf-8", "replace").rstrip("\r")

    def pieces(self):
        """The body's bytes as they arrive, in pieces of whatever size came."""
        while piece := self._read(self.response.read1):
            yield piece

    def read(self):
        """The whole body."""
        return self._read(self.response.read)

    def _read(self, read):
        try:
            return read()
        except TimeoutError:
            raise ServiceFailed("timeout", f"no answer for {self.timeout:g} s") from None
        except (http.client.HTTPException, OSError) as error:
            raise ServiceFailed("connection lost", f"the answer broke off ({error!r})") from None


def post(url, body, api_key=None, timeout=15.0):
    """POST `body` as JSON to `url`; an Answer once the server says 200, or ServiceFailed."""
    return request("POST", url, orjson.dumps(body), "application/json", api_key, timeout)


def post_form(url, fields, files, api_key=None, timeout=15.0):
    """POST a multipart form (OpenAI's file uploads): `fields` {name: text}, `files`
    {name: (filename, bytes, content type)}."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n')
        parts.append(f"{value}\r\n")
    for name, (filename, content, content_type) in files.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'
        )
        parts.append(content)
        parts.append("\r\n")
    parts.append(f"--{boundary}--\r\n")
    body = b"".join(part if isinstance(part, bytes) else part.encode() for part in parts)
    content_type = f"multipart/form-data; boundary={boundary}"
    return request("POST", url, body, content_type, api_key, timeout)


def request(
    method, url, body=None, content_type=None, api_key=None, timeout=15.0, authorization=None
):
    """Send a request on a kept-alive connection; an Answer once the server says 200 (or
    another 2xx), or ServiceFailed. `api_key` goes as a bearer token; `authorization`, a
    whole Authorization header, instead."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    headers = {}
    if content_type:
        headers["Content-Type"] = content_type
    if api_key or authorization:
        headers["Authorization"] = authorization or f"Bearer {api_key}"
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    while True:
        connection, kept = POOL.take(parts.scheme, parts.hostname, port, timeout)
        try:
            connection.request(method, target, body, headers)
            response = connection.getresponse()
            break
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            connection.close()
            if kept:
                continue  # the server dropped a kept connection before answering: once more
            raise ServiceFailed(
                "connection lost", "the server closed the connection without an answer"
            ) from None
        except BaseException as error:
            connection.close()
            raise _failure(error, parts.netloc, timeout) from None
    if not 200 <= response.status < 300:
        try:
            text = response.read().decode("utf-8", "replace")
        except (http.client.HTTPException, OSError):
            text = ""
        connection.close()
        raise ServiceFailed(
            f"HTTP {response.status}",
            f"HTTP {response.status} {response.reason}: {error_message(text)}",
        )
    return Answer(parts.scheme, connection, response, timeout)


def _failure(error, netloc, timeout):
    """The ServiceFailed for a request that got no answer (anything else goes on up)."""
    if isinstance(error, TimeoutError):
        return ServiceFailed("timeout", f"no answer within {timeout:g} s")
    if isinstance(error, ConnectionRefusedError):
        return ServiceFailed("refused", f"connection refused (is {netloc} running?)")
    if isinstance(error, (http.client.HTTPException, OSError)):
        return ServiceFailed("no connection", cut(repr(error), MESSAGE_CHARACTERS))
    return error


def error_message(body):
    """What a failed response's body says, from OpenAI's error shape or others', cut short."""
    try:
        found = orjson.loads(body)
    except ValueError:
        return cut(body.strip() or "(no body)", MESSAGE_CHARACTERS)
    for key in ("error", "detail", "error", "message"):  # OpenAI's, FastAPI's, and others'
        if isinstance(found, dict) and key in found:
            found = found[key]
    return cut(found, MESSAGE_CHARACTERS)
