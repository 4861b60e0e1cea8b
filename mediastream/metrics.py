"""Prometheus metrics: what the server has done, for a metrics system to scrape at /metrics.

Made with prometheus_client, the standard library for it. Under gunicorn each worker is a
process of its own: gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR, every worker writes
its figures there, and /metrics adds them up across workers.

Only a metrics system may read them: with METRICS_TOKEN set, a request must carry it as
`Authorization: Bearer <token>`; without it, only a request from this machine (loopback)
that no proxy forwarded (ngrok adds X-Forwarded-For) gets them.
"""

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

from mediastream.handlers import Handler, every
from mediastream.security import bearer_matches, from_this_machine

disable_created_metrics()  # a *_created timestamp per series says nothing useful here

OPEN_STREAMS = Gauge(
    "mediastream_open_streams", "WebSocket connections being served", multiprocess_mode="livesum"
)
STREAMS_STARTED = Counter("mediastream_streams_started", "Streams that sent their start")
STREAMS_ENDED = Counter("mediastream_streams_ended", "Streams ended, by how", ["ended_by"])
MEDIA_MESSAGES = Counter("mediastream_media_messages", "Media messages received", ["track"])
AUDIO_SECONDS = Counter("mediastream_audio_seconds", "Seconds of audio received", ["track"])
MISSING_CHUNKS = Counter("mediastream_missing_chunks", "Chunks lost on the way", ["track"])
MISSING_MESSAGES = Counter(
    "mediastream_missing_sequence_numbers", "Messages lost on the way (sequence numbers)"
)
BAD_MESSAGES = Counter("mediastream_bad_messages", "Messages ignored as not Twilio's")
REFUSED_HANDSHAKES = Counter(
    "mediastream_refused_handshakes", "WebSocket handshakes refused, by reason", ["reason"]
)
RECORDING_FAILURES = Counter("mediastream_recording_failures", "Recordings stopped by an error")
AUDIO_SENT_SECONDS = Counter("mediastream_audio_sent_seconds", "Seconds of audio sent back")
TRANSCRIBED = Counter(
    "mediastream_utterances", "Utterances transcribed, or skipped under load", ["outcome"]
)
UNTRANSCRIBED = Counter(
    "mediastream_utterances_untranscribed",
    "Utterances with no text, by kind of stream (an agent's caller, or a transcript nobody "
    "waits for) and why (backlog: skipped under load; or the engine's failure)",
    ["stream", "why"],
)
KEYWORD_HITS = Counter(
    "mediastream_keyword_hits", "Utterances that contained a keyword (KEYWORDS)", ["keyword"]
)

AGENT_SECONDS = Histogram(
    "mediastream_agent_seconds",
    "Seconds from the end of the caller's speech to each stage of the agent's answer",
    ["stage"],  # turns.STAGES: end_of_turn, transcript, first_token, ..., first_audio
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0),
)
AGENT_TOOL_SECONDS = Histogram(
    "mediastream_agent_tool_seconds",
    "Seconds each of the agent's tool calls took, by tool",
    ["tool"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 0.7, 1.0, 2.0, 5.0, 10.0),
)
AGENT_PAUSES = Counter(
    "mediastream_agent_pauses",
    "Callers who paused mid-sentence and were given time (AGENT_PATIENCE): they went on "
    "(one turn), or the time ran out (answered)",
    ["outcome"],  # went_on, waited_out
)
AGENT_CALLS = Gauge(
    "mediastream_agent_calls",
    "Agent calls open (mode=agent streams being answered)",
    multiprocess_mode="livesum",
)
TRANSCRIPTION_BACKLOG = Gauge(
    "mediastream_transcription_backlog_seconds",
    "Seconds of audio waiting for the transcription engine, or being transcribed",
    multiprocess_mode="livesum",
)
AGENT_TURNED_AWAY = Counter(
    "mediastream_agent_turned_away", "Agent calls that heard the busy message (AGENT_MAX_CALLS)"
)
AGENT_INTERRUPTIONS = Counter(
    "mediastream_agent_interruptions", "Answers the caller talked over (barge-in)"
)

EVENTS_DROPPED = Counter(
    "mediastream_events_dropped", "Call events not sent to Redis: it was away too long"
)

FLUSH_SECONDS = 1.0  # how often what a stream has counted of its media reaches the metrics


class Metrics(Handler):
    """A handler: each stream's figures into the metrics. What the stream has counted of
    its media is added to the metrics every FLUSH_SECONDS and at the end (a metric takes a
    lock: not one per message)."""

    may_block = False

    def __init__(self, config):
        super().__init__(config)
        OPEN_STREAMS.inc()
        self.flushed = {}  # track -> (messages, audio bytes) already in the metrics
        self.flushing = None  # the timer

    def start(self, stream, event):
        STREAMS_STARTED.inc()
        self.flushing = every(FLUSH_SECONDS, self._flush, stream)

    def gap(self, stream, event, lost_messages, lost_chunks):
        if lost_messages:
            MISSING_MESSAGES.inc(len(lost_messages))
        if lost_chunks:
            MISSING_CHUNKS.labels(event.track).inc(len(lost_chunks))

    def bad_message(self, stream, problem):
        BAD_MESSAGES.inc()

    def end(self, stream, ended_by):
        if self.flushing:
            self.flushing.close()
        self._flush(stream)
        if stream.talkback is not None and stream.talkback.seconds_sent:
            AUDIO_SENT_SECONDS.inc(stream.talkback.seconds_sent)
        OPEN_STREAMS.dec()
        # "client close (1000)" -> "client close": a label per close code would be too many
        STREAMS_ENDED.labels(ended_by.split(" (")[0]).inc()

    def _flush(self, stream):
        for track, figures in stream.tracks.items():
            messages, audio_bytes = self.flushed.get(track, (0, 0))
            if figures.messages > messages:
                MEDIA_MESSAGES.labels(track).inc(figures.messages - messages)
                seconds = (figures.audio_bytes - audio_bytes) / stream.sample_rate
                AUDIO_SECONDS.labels(track).inc(seconds)
                self.flushed[track] = figures.messages, figures.audio_bytes


def exposition(environ, config):
    """/metrics: (body, status, headers), the metrics or why they are refused."""
    refusal = _refusal(environ, config)
    if refusal:
        return f"{refusal}\n", 401 if config.metrics_token else 403, {"Content-Type": "text/plain"}
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:  # under gunicorn: every worker's figures
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return generate_latest(registry), 200, {"Content-Type": CONTENT_TYPE_LATEST}


def _refusal(environ, config):
    """Why a request may not read the metrics, or None."""
    if config.metrics_token:
        if bearer_matches(environ, config.metrics_token):
            return None
        return "metrics need Authorization: Bearer <METRICS_TOKEN>"
    if from_this_machine(environ):
        return None
    return "metrics are served to this machine only; set METRICS_TOKEN to scrape from elsewhere"
