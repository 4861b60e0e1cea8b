"""One stream's state and figures: tracks, chunks, gaps. Fed events; never touches a socket."""

import logging
import time
from dataclasses import dataclass, field

from mediastream import g711
from mediastream.messages import BadMessage, Start

log = logging.getLogger("mediastream")


NOTHING_MISSING = range(0)


@dataclass(slots=True)
class Numbering:
    """Numbers that should go up by one each time (sequence numbers, a track's chunks)."""

    last: int = 0
    missing: int = 0

    def advance(self, number):
        """Note the next number; return the range of numbers skipped before it."""
        last = self.last
        if number is None or number <= last:
            return NOTHING_MISSING  # unnumbered, or late: not lost again
        self.last = number
        if number == last + 1:
            return NOTHING_MISSING
        skipped = range(last + 1, number)
        self.missing += len(skipped)
        return skipped


@dataclass(slots=True)
class TrackFigures:
    """What one track (inbound or outbound) has delivered so far."""

    messages: int = 0
    audio_bytes: int = 0
    last_audio: bytes = b""  # its last chunk's mu-law (the live page's level meter)
    chunks: Numbering = field(default_factory=Numbering)
    speech: object = None  # the speech-activity handler's figures for the track, when it runs


class StreamLog(logging.LoggerAdapter):
    """The server's logger, each line starting with the stream's name in brackets, and
    carrying the stream's SIDs and the line's event ("start", "gap", "summary": the words
    before its first colon) as fields, for JSON logs."""

    def __init__(self, stream):
        super().__init__(log)
        self.stream = stream

    def process(self, msg, kwargs):
        stream = self.stream
        kwargs["extra"] = {
            "stream": stream.name,
            "stream_sid": stream.stream_sid,
            "call_sid": stream.call_sid,
            "event": msg.split(":", 1)[0],
            **kwargs.get("extra", {}),
        }
        return f"[{stream.name}] {msg}", kwargs


class MediaStream:
    """The state of one Media Stream, from its connection to its end."""

    def __init__(self, client, clock=time.monotonic):
        self.client = client
        self.stream_sid = None
        self.call_sid = None
        self.sample_rate = g711.SAMPLE_RATE
        self.tracks = {}
        self.sequence_numbers = Numbering()
        self.bad_messages = 0
        self.stopped = False
        self.mode = None  # the TwiML's "mode" parameter: a bidirectional stream has one
        self.talkback = None  # the way back to Twilio (talkback.Talkback), set by the route
        self.control = None  # the call's control (control.CallControl), set by the route
        self.handlers = None  # its handlers (handlers.StreamHandlers), which set it
        self.handler_problems = {}  # handler name -> what went wrong, for the summary
        self.log = StreamLog(self)
        self._clock = clock
        self.opened_at = clock()
        self.ended_at = None  # set by ended(): the call's length is not the handlers' time

    @property
    def name(self):
        """How console lines name the stream: the streamSid's last 8 characters,
        or the client's address until the start message has said which stream it is."""
        return self.stream_sid[-8:] if self.stream_sid else self.client

    def check(self, event):
        """Raise BadMessage for an event of another stream: one connection is one stream."""
        if self.stream_sid is None:
            return
        if isinstance(event, Start):
            raise BadMessage(f"a second start (stream {event.stream_sid}) on this connection")
        if event.stream_sid is not None and event.stream_sid != self.stream_sid:
            raise BadMessage(f"names stream {event.stream_sid}, not this connection's")

    @property
    def bidirectional(self):
        """As the TwiML declared it (Twilio's messages do not say): a `mode` parameter."""
        return self.mode is not None

    def start(self, start):
        self.stream_sid = start.stream_sid
        self.mode = start.custom_parameters.get("mode")
        self.call_sid = start.call_sid
        self.sample_rate = start.sample_rate * start.channels or self.sample_rate
        for track in start.tracks:
            self.tracks.setdefault(track, TrackFigures())

    def check_sequence(self, sequence):
        """Note an event's sequence number; return the range of numbers that went missing."""
        return self.sequence_numbers.advance(sequence)

    def add_media(self, media):
        """Count a media event's audio; return the range of its track's chunks that went missing.

        A chunk Twilio did not number is taken to follow the track's last one."""
        figures = self.tracks.get(media.track)
        if figures is None:
            figures = self.tracks[media.track] = TrackFigures()
        figures.messages += 1
        figures.audio_bytes += len(media.audio)
        figures.last_audio = media.audio
        if media.chunk is None:
            media.chunk = figures.chunks.last + 1
        return figures.chunks.advance(media.chunk)

    def audio_seconds(self, track):
        """Seconds of audio a track has delivered (mu-law: one byte a sample)."""
        return self.tracks[track].audio_bytes / self.sample_rate

    def ended(self):
        """Note that the connection has ended (before the handlers' end() run)."""
        self.ended_at = self._clock()

    def duration(self):
        """Seconds from the connection's opening to its end, or to now while it is open."""
        end = self._clock() if self.ended_at is None else self.ended_at
        return end - self.opened_at

    @property
    def missing_chunks(self):
        return sum(figures.chunks.missing for figures in self.tracks.values())

    @property
    def missing_sequence_numbers(self):
        return self.sequence_numbers.missing
