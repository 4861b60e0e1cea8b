"""A handler: every stream's events on a Redis Stream, so that a fleet's calls meet in one
place (REDIS_URL; unset, nothing here runs).

Every server appends to one Redis Stream (REDIS_STREAM, default `mediastream:events`),
trimmed to about MAXLEN entries. An entry has two fields: `type` (start, figures, dtmf,
utterance, end) and `json`, an object that always names the stream (`stream_sid`, and
`tag`, its last 8 characters, as on the console) and the server it came from (`server`:
SERVER_NAME, by default this host and port). `python -m mediastream.events` follows it.

Redis is never in a call's way: a handler only appends an entry to a queue in memory, and
a thread of the process's own writes the queue to Redis, many entries per round trip. If
Redis is down or slow, entries wait in the queue, at most MAX_QUEUED; past that they are
dropped and counted (mediastream_events_dropped_total). One WARNING says when Redis goes,
one INFO when it is back; the thread reconnects by itself.
"""

import functools
import logging
import socket
import threading
import time
from collections import deque

import orjson
import redis

from mediastream.console import summary_figures
from mediastream.handlers import Handler
from mediastream.metrics import EVENTS_DROPPED

log = logging.getLogger("mediastream")
startup = logging.getLogger("mediastream.startup")

MAXLEN = 1_000_000  # entries kept (about): ~300 MB of Redis, half an hour of 500 calls
MAX_QUEUED = 10_000  # entries waiting for Redis, per process, before they are dropped
BATCH = 500  # entries per round trip
RETRY_SECONDS = 1.0
FIGURES_SECONDS = 1.0  # a call's figures at most this often


# The entries, with no I/O --------------------------------------------------------------


def start_entry(stream, event):
    return {
        "call_sid": event.call_sid,
        "tracks": list(event.tracks),
        "mode": stream.mode,
        "parameters": event.custom_parameters,
        "client": stream.client,
    }


def figures_entry(stream):
    """What the page shows of an open call: audio and talk per track, now."""
    tracks = {}
    for name, figures in stream.tracks.items():
        speech = figures.speech
        tracks[name] = {
            "seconds": round(stream.audio_seconds(name), 2),
            "speaking": bool(speech and speech.speaking),
            "talk": round(speech.talk_seconds, 2) if speech else None,
        }
    return {"seconds": round(stream.duration(), 2), "tracks": tracks}


def utterance_entry(utterance):
    return utterance.figures()


def end_entry(stream, ended_by):
    return summary_figures(stream, ended_by)


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
        threading.Thread(target=self._run, name="redis-events", daemon=True).start()

    def publish(self, kind, stream_sid, fields):
        """Queue an entry (from the gevent hub: appends and returns)."""
        if len(self.queue) >= MAX_QUEUED:
            EVENTS_DROPPED.inc()
            self.dropped_while_down += 1
            return
        entry = {"stream_sid": stream_sid, "tag": (stream_sid or "")[-8:], "server": self.server}
        entry["at"] = round(time.time(), 3)
        self.queue.append((kind, orjson.dumps({**entry, **fields})))
        self.arrived.set()

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
    """A handler: the stream's start, figures (at most once a second), keys, utterances
    and end, as entries on the fleet's Redis Stream (with REDIS_URL set)."""

    may_block = False  # it only appends to a queue

    @classmethod
    def enabled(cls, config):
        if config.redis_url:
            publisher(config)
        return bool(config.redis_url)

    def __init__(self, config):
        super().__init__(config)
        self.publisher = publisher(config)
        self.next_figures = 0.0

    def start(self, stream, event):
        self.publisher.publish("start", stream.stream_sid, start_entry(stream, event))

    def media(self, stream, chunk):
        now = time.monotonic()
        if now >= self.next_figures:
            self.next_figures = now + FIGURES_SECONDS
            self.publisher.publish("figures", stream.stream_sid, figures_entry(stream))

    def dtmf(self, stream, event):
        self.publisher.publish("dtmf", stream.stream_sid, {"digit": event.digit})

    def utterance(self, stream, utterance):
        self.publisher.publish("utterance", stream.stream_sid, utterance_entry(utterance))

    def end(self, stream, ended_by):
        if stream.stream_sid:  # a connection that never started is no call
            self.publisher.publish("end", stream.stream_sid, end_entry(stream, ended_by))
