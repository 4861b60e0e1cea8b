"""Requests to OpenAI-compatible HTTP APIs (chat completions, speech) from a greenlet.

The agent's requests stream: a model's tokens, a voice's audio. They run on gevent's own
sockets (the standard library's http.client over gevent.socket and gevent.ssl), so a
greenlet waiting for the next token holds up nothing else, and killing it (the caller
talked over the agent) closes the connection at once. Every failure is a ServiceFailed
whose `kind` names it (one warning per stream per kind) and whose message says it for a
person, with what the server's body said, cut short.
"""

import http.client
import socket
from urllib.parse import urlsplit

import gevent.socket
import gevent.ssl
import orjson

from mediastream.messages import cut

CONNECT_TIMEOUT = 3.05  # seconds to connect (an answer's pieces have the caller's timeout)
MESSAGE_CHARACTERS = 160  # of what a failed request's answer says, in the warning


class ServiceFailed(Exception):
    """A request that gave no usable answer: `kind` names what happened ("HTTP 429",
    "timeout", "refused", "bad answer", ...), the message says it for a person."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


class _Connection(http.client.HTTPConnection):
    def connect(self):
        self.sock = _open(self.host, self.port, self.timeout)


class _TLSConnection(http.client.HTTPSConnection):
    def connect(self):
        sock = _open(self.host, self.port, self.timeout)
        self.sock = gevent.ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)


def _open(host, port, timeout):
    sock = gevent.socket.create_connection((host, port), CONNECT_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(timeout)
    return sock


class Answer:
    """A response being read: `lines()` or `pieces()`, then closed (use it in `with`)."""

    def __init__(self, connection, response, timeout):
        self.connection = connection
        self.response = response
        self.timeout = timeout
        self.content_type = response.getheader("Content-Type", "")

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.connection.close()

    def lines(self):
        """Each line of the body as it arrives, as text without its line end."""
        while line := self._read(self.response.readline):
            yield line.decode("utf-8", "replace").rstrip("\r\n")

    def pieces(self):
        """The body's bytes as they arrive, in pieces of whatever size came."""
        while piece := self._read(self.response.read1):
            yield piece

    def _read(self, read):
        try:
            return read()
        except TimeoutError:
            raise ServiceFailed("timeout", f"no answer for {self.timeout:g} s") from None
        except (http.client.HTTPException, OSError) as error:
            raise ServiceFailed("connection lost", f"the answer broke off ({error!r})") from None


def post(url, body, api_key=None, timeout=15.0):
    """POST `body` as JSON to `url`; an Answer once the server says 200, or ServiceFailed."""
    parts = urlsplit(url)
    kind = _TLSConnection if parts.scheme == "https" else _Connection
    connection = kind(parts.hostname, parts.port, timeout=timeout)
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("POST", target, orjson.dumps(body), headers)
        response = connection.getresponse()
        if response.status != 200:
            text = response.read().decode("utf-8", "replace")
            raise ServiceFailed(
                f"HTTP {response.status}",
                f"HTTP {response.status} {response.reason}: {error_message(text)}",
            )
    except ServiceFailed:
        connection.close()
        raise
    except TimeoutError:
        connection.close()
        raise ServiceFailed("timeout", f"no answer within {timeout:g} s") from None
    except ConnectionRefusedError:
        connection.close()
        raise ServiceFailed("refused", f"connection refused (is {parts.netloc} running?)") from None
    except (http.client.HTTPException, OSError) as error:
        connection.close()
        raise ServiceFailed("no connection", cut(repr(error), MESSAGE_CHARACTERS)) from None
    return Answer(connection, response, timeout)


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
