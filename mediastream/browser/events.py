"""The pages' event streams: the board's events as Server-Sent Events, and, under gunicorn,
every worker's calls on each page.

`event_stream()` is what `/calls/events` answers: a `snapshot`, then what the board (live.py)
has for the page, as it comes. Under gunicorn each worker is a process with a board of its
own, so each worker also serves its board's event stream on a unix socket in the run's
directory (`share_calls`, from gunicorn.conf.py), and a page's stream follows the other
workers' sockets too: their snapshots arrive as `calls` events (calls to add), and their
other events as they are. In a fleet (REDIS_URL) none of this is done: every board follows
every server's and worker's calls through Redis (fleet.py).
"""

import atexit
import json
import logging
import os
import time
from pathlib import Path

import gevent
from gevent import socket
from gevent.event import Event
from gevent.server import StreamServer

from mediastream.browser.live import BOARD, UPDATE_SECONDS

log = logging.getLogger("mediastream")

KEEPALIVE_SECONDS = 15  # a comment this often keeps proxies (ngrok) from closing a quiet page
PEER_SCAN_SECONDS = 5  # how often a page looks for workers that started after it (a reload)
PEER_SOCKETS = "calls-*.sock"


def event_stream(board, stream_sid, connections, peers=None):
    """One page's Server-Sent Events, as text chunks. Ends when the page goes, or when the
    server drains and its last call has ended (so that a page left open does not hold up a
    deploy). `peers`: the other workers' sockets (Peers), followed too."""
    arrived = Event()
    watcher, first = board.watch(stream_sid, arrived.set)
    followed = peers.follow(watcher) if peers else None
    try:
        yield message("snapshot", first)
        next_update = last_sent = time.monotonic()
        while connections.state == "ok" or board.open:
            arrived.wait(timeout=max(0.0, next_update - time.monotonic()))
            arrived.clear()
            messages = []
            if watcher.behind:
                messages.append(message("snapshot", board.snapshot(watcher)))
                if followed:
                    followed.restart()  # their snapshots, again
            while watcher.pending:
                messages.append(message(*watcher.pending.popleft()))
            now = time.monotonic()
            if now >= next_update:
                next_update = now + UPDATE_SECONDS
                changed = board.updates(watcher)
                if changed:
                    messages.append(message("update", {"calls": changed}))
                if followed:
                    followed.scan()
            if not messages and now - last_sent >= KEEPALIVE_SECONDS:
                messages.append(": still here\n\n")
            if messages:
                last_sent = now
                yield "".join(messages)
    finally:
        board.unwatch(watcher)
        if followed:
            followed.stop()


def message(name, body):
    """One Server-Sent Events message."""
    return f"event: {name}\ndata: {json.dumps(body, separators=(',', ':'))}\n\n"


def parse_message(text):
    """(name, body) of one Server-Sent Events message; (None, None) for a comment."""
    name = data = None
    for line in text.splitlines():
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            data = line[len("data: ") :]
    return (name, json.loads(data)) if name and data else (None, None)


# Under gunicorn ---------------------------------------------------------------------------


def share_calls(app, directory, board=BOARD):
    """In a gunicorn worker: serve this worker's calls to the other workers' pages on a
    unix socket in `directory` (the run's own), and let this worker's pages follow theirs."""
    path = Path(directory) / f"calls-{os.getpid()}.sock"
    connections = app.extensions["connections"]

    def serve_a_peer(peer, _):
        stream_sid = peer.makefile("rb").readline().decode().strip() or None
        events = event_stream(board, stream_sid, connections)
        try:
            for chunk in events:
                peer.sendall(chunk.encode())
        except OSError:
            pass  # the page went, and its worker stopped following
        finally:
            events.close()

    try:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        listener.listen()
    except OSError as error:
        log.warning("the calls page will show this worker's calls only: %s: %s", path, error)
        return
    StreamServer(listener, serve_a_peer).start()
    atexit.register(path.unlink, missing_ok=True)
    app.extensions["calls_peers"] = Peers(directory, path)


class Peers:
    """The other workers' sockets, in the run's directory."""

    def __init__(self, directory, own):
        self.directory = Path(directory)
        self.own = own

    def paths(self):
        return [path for path in self.directory.glob(PEER_SOCKETS) if path != self.own]

    def follow(self, watcher):
        return Followed(self, watcher)


class Followed:
    """One page's followers of the other workers: a greenlet each, pushing their events to
    the page's watcher."""

    def __init__(self, peers, watcher):
        self.peers = peers
        self.watcher = watcher
        self.greenlets = {}  # socket path -> its follower
        self.scanned = 0.0
        self.scan()

    def scan(self):
        """Follow the workers not followed yet (at most every PEER_SCAN_SECONDS)."""
        if time.monotonic() - self.scanned < PEER_SCAN_SECONDS:
            return
        self.scanned = time.monotonic()
        for path in self.peers.paths():
            if path not in self.greenlets:
                self.greenlets[path] = gevent.spawn(self._follow, path)

    def restart(self):
        self.stop()
        self.scanned = 0.0
        self.scan()

    def stop(self):
        gevent.killall(list(self.greenlets.values()))
        self.greenlets.clear()

    def _follow(self, path):
        """Until that worker's stream ends (it stopped), or this page goes."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:
                peer.connect(str(path))
                peer.sendall(f"{self.watcher.stream_sid or ''}\n".encode())
                received = b""
                while chunk := peer.recv(65536):
                    *messages, received = (received + chunk).split(b"\n\n")
                    for text in messages:
                        name, body = parse_message(text.decode())
                        if name:
                            self.watcher.push("calls" if name == "snapshot" else name, body)
        except OSError:
            pass  # a worker that has gone: its socket stays until its file is removed
