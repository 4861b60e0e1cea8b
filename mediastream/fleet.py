"""A handler: every stream's events on a Redis Stream, so that a fleet's calls meet in one
place (REDIS_URL; unset, nothing here runs).

Every server appends to one Redis Stream (REDIS_STREAM, default `mediastream:events`),
trimmed to about MAXLEN entries. An entry has two fields: `type` (start, figures, dtmf,
utterance, agent, tool, end) and `json`, an object that always names the stream (`stream_sid`, and
`tag`, its last 8 characters, as on the console) and the server it came from (`server`:
SERVER_NAME, by default this host and port). `python -m mediastream.events` follows it.

Redis is never in a call's way: a handler only appends an entry to a queue in memory, and
a thread of the process's own writes the queue to Redis, many entries per round trip. If
Redis is down or slow, entries wait in the queue, at most MAX_QUEUED; past that they are
dropped and counted (mediastream_events_dropped_total). One WARNING says when Redis goes,
one INFO when it is back; the thread reconnects by itself.

While a /calls page watches, its process also follows the stream (Follower), so that the
page shows the other servers' calls as they happen (browser/live.py's CallBoard.heard).
"""

import functools
import logging
import socket
import threading
import time
from collections import deque

import gevent
import orjson
import redis
from gevent.threadpool import ThreadPool

from mediastream.console import audio_figures, start_figures, summary_figures
from mediastream.handlers import Handler, every
from mediastream.metrics import EVENTS_DROPPED
from mediastream.threads import caught

log = logging.getLogger("mediastream")
startup = logging.getLogger("mediastream.startup")

MAXLEN = 1_000_000  # entries kept (about): ~300 MB of Redis, half an hour of 500 calls
MAX_QUEUED = 10_000  # entries waiting for Redis, per process, before they are dropped
BATCH = 500  # entries per round trip
RETRY_SECONDS = 1.0
FIGURES_SECONDS = 1.0  # each open call's figures this often
REPLAY_ENTRIES = 10_000  # read back when a page starts the follower: the calls open now
FOLLOW_BLOCK_MS = 1000  # one read waits this long for new entries


# The entries, with no I/O --------------------------------------------------------------


def envelope(stream_sid, server, fields, clock=time.time):
    """An entry's JSON: what every entry says (which stream, which server, when), and its own."""
    stream = {"stream_sid": stream_sid, "tag": (stream_sid or "")[-8:], "server": server}
    return {**stream, "at": round(clock(), 3), **fields}


# The process's link to Redis -------------------------------------------------------------


class Publisher:
    """Entries queued by the handlers (never waiting), written to Redis by a thread."""

    def __init__(self, url, stream, server):
        self.url = url
        self.stream = stream
        self.server = server
        self.queue = deque()
        self.arrived = threading.Event()
        self.down = False
        self.dropped_while_down = 0
        self.open_streams = {}  # stream SID -> stream: their figures go out once a second
        threading.Thread(target=self._run, name="redis-events", daemon=True).start()
        every(FIGURES_SECONDS, self._publish_figures)

    def publish(self, kind, stream_sid, fields):
        """Queue an entry (from the gevent hub: appends and returns)."""
        if len(self.queue) >= MAX_QUEUED:
            EVENTS_DROPPED.inc()
            self.dropped_while_down += 1
            return
        self.queue.append((kind, orjson.dumps(envelope(stream_sid, self.server, fields))))
        self.arrived.set()

    def _publish_figures(self):
        """Every open stream's figures (every FIGURES_SECONDS, in the event loop: the
        streams are the hub's)."""
        for stream_sid, stream in self.open_streams.items():
            self.publish("figures", stream_sid, audio_figures(stream))

    def _run(self):
        client = redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=3)
        while True:
            self.arrived.wait(timeout=RETRY_SECONDS)
            self.arrived.clear()
            while self.queue:
                batch = [self.queue[n] for n in range(min(len(self.queue), BATCH))]
                try:
                    self._write(client, batch)
                except (redis.RedisError, OSError) as error:
                    self._went(error)
                    time.sleep(RETRY_SECONDS)
                    continue
                for _ in batch:
                    self.queue.popleft()
                self._back()

    def _write(self, client, batch):
        pipeline = client.pipeline(transaction=False)
        for kind, data in batch:
            pipeline.xadd(
                self.stream, {"type": kind, "json": data}, maxlen=MAXLEN, approximate=True
            )
        pipeline.execute()

    def _went(self, error):
        if not self.down:
            self.down = True
            self.dropped_while_down = 0
            log.warning(
                "events: Redis does not answer (%s); events wait, up to %d, then are dropped "
                "(the calls go on)",
                str(error).split("\n")[0][:120],
                MAX_QUEUED,
            )

    def _back(self):
        if self.down:
            self.down = False
            log.info(
                "events: Redis answers again; %d events were dropped while it did not",
                self.dropped_while_down,
            )


def server_name(config):
    """SERVER_NAME, or this host and the port it listens on."""
    return config.server_name or f"{socket.gethostname()}:{config.port}"


@functools.cache
def publisher(config):
    """The process's Publisher for REDIS_URL, made once (its thread starts with it)."""
    name = server_name(config)
    startup.info("events: to the Redis Stream %s, as server %s", config.redis_stream, name)
    return Publisher(config.redis_url, config.redis_stream, name)


class FleetEvents(Handler):
    """A handler: the stream's start, figures (once a second), keys, utterances and end, as
    entries on the fleet's Redis Stream (with REDIS_URL set). It has nothing to do per
    media message: the figures are read from the stream once a second (open_streams)."""

    may_block = False  # it only appends to a queue

    @classmethod
    def enabled(cls, config):
        if config.redis_url:
            publisher(config)
        return bool(config.redis_url)

    def __init__(self, config):
        super().__init__(config)
        self.publisher = publisher(config)

    def start(self, stream, event):
        self.publisher.publish("start", stream.stream_sid, start_figures(stream, event))
        self.publisher.open_streams[stream.stream_sid] = stream

    def dtmf(self, stream, event):
        self.publisher.publish("dtmf", stream.stream_sid, {"digit": event.digit})

    def utterance(self, stream, utterance):
        self.publisher.publish("utterance", stream.stream_sid, utterance.figures())

    def agent(self, stream, act):
        kind = "tool" if act.kind == "tool" else "agent"
        self.publisher.publish(kind, stream.stream_sid, act.figures())

    def end(self, stream, ended_by):
        if stream.stream_sid:  # a connection that never started is no call
            self.publisher.open_streams.pop(stream.stream_sid, None)
            self.publisher.publish("end", stream.stream_sid, summary_figures(stream, ended_by))


# The other servers' calls on this server's page ---------------------------------------


@functools.cache
def follow_fleet(config, board):
    """Put the other servers' calls on `board` (this process's /calls) as they happen,
    while a page watches it (the board starts and stops its Follower)."""
    board.server = server_name(config)
    board.fleet = Follower(config.redis_url, config.redis_stream, board)


class Follower:
    """A greenlet that tells the board each entry of the fleet's stream, from its last
    REPLAY_ENTRIES (the calls open now) on; its reads wait in a thread of their own, so
    that the hub never does. It runs only while a page watches: reading every server's
    entries costs a server about 1.5 us per media message at 400 calls."""

    def __init__(self, url, stream, board):
        self.client = redis.Redis.from_url(
            url, socket_timeout=FOLLOW_BLOCK_MS / 1000 + 5, socket_connect_timeout=3
        )
        self.stream = stream
        self.board = board
        self.last = None  # the last entry read; None: none yet
        self.skipped = 0  # entries that were not ours
        self.pool = ThreadPool(1)
        self.greenlet = None

    def start(self):
        """From the stream's last entries on (what was known of the others' calls is old)."""
        self.board.remote.clear()
        self.last = None
        self.greenlet = gevent.spawn(self._run)

    def stop(self):
        self.greenlet.kill(block=False)

    def _run(self):
        while True:
            entries = self.pool.apply(caught, (self._read, (), (redis.RedisError, OSError)))
            if isinstance(entries, Exception):
                # The publisher says it once when Redis goes, for both.
                log.debug("events: the calls page cannot follow Redis: %s", entries)
                gevent.sleep(RETRY_SECONDS)
                continue
            for entry_id, fields in entries:
                self.last = entry_id
                self._tell(entry_id, fields)
            if self.last is None:
                self.last = "0-0"  # an empty stream: whatever comes is new
            self.board.forget_quiet()

    def _read(self):
        """The entries after the last one read; the first time, the stream's last ones."""
        if self.last is None:
            return self.client.xrevrange(self.stream, count=REPLAY_ENTRIES)[::-1]
        replies = self.client.xread({self.stream: self.last}, block=FOLLOW_BLOCK_MS, count=BATCH)
        return [entry for _, entries in replies or [] for entry in entries]

    def _tell(self, entry_id, fields):
        try:
            self.board.heard(fields[b"type"].decode(), orjson.loads(fields[b"json"]))
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            self.skipped += 1
            if self.skipped == 1:  # once: a stranger writing here writes often
                log.warning(
                    "events: entry %s of the fleet's stream is not one of ours (%s: %s); "
                    "it and any others like it are skipped",
                    entry_id.decode(),
                    type(error).__name__,
                    str(error)[:80],
                )
