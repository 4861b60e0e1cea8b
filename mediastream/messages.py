"""Twilio's Media Streams messages -> typed events, with no sockets involved.

Twilio sends JSON text messages, each with an "event" field: connected, start, media,
dtmf, mark and stop (see Twilio's "Media Streams - WebSocket Messages"). Anything that
is not one of those, well formed, raises BadMessage with a reason a person can read.
Whatever a client sends is bounded here: numbers must fit Twilio's counters, tracks are
the two Twilio defines, and every string is cut to a length a log line can carry.

JSON is decoded with orjson: a third of the stdlib's time, and decoding JSON is the
largest cost per message that is left once frames are read efficiently.
"""

import binascii
from dataclasses import dataclass, field

import orjson

from mediastream import g711

TRACKS = ("inbound", "outbound")
MAX_NUMBER = 2**31 - 1  # sequence numbers, chunks and timestamps (ms: 24 days) fit below
MAX_PARAMETERS = 20
SID_CHARS = 64  # Twilio's SIDs have 34


class BadMessage(ValueError):
    """A message that is not a Twilio Media Streams event; str() says what is wrong."""


@dataclass(slots=True)
class Connected:
    """The first message of every connection; it names the protocol."""

    protocol: str
    version: str
    sequence: int | None = None


@dataclass(slots=True)
class Start:
    """Metadata of the stream: who is calling, which tracks, what audio format."""

    stream_sid: str
    sequence: int | None
    call_sid: str
    account_sid: str
    tracks: list[str]
    encoding: str
    sample_rate: int
    channels: int
    custom_parameters: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Media:
    """One chunk of audio (20 ms, 160 bytes of mu-law at 8000 Hz) of one track.

    `audio` is the raw mu-law; `pcm` the same as 16-bit PCM, decoded once on first use
    and shared by every handler. `chunk` is its number in the track (1, 2, ...; the stream
    numbers one Twilio left unnumbered), so `offset` is where it starts, in samples."""

    stream_sid: str | None
    sequence: int | None
    track: str
    chunk: int | None
    timestamp: int | None
    audio: bytes
    _pcm: bytes | None = None

    @property
    def pcm(self):
        """The audio as 16-bit little-endian PCM, 8000 Hz mono."""
        if self._pcm is None:
            self._pcm = g711.decode(self.audio)
        return self._pcm

    @property
    def offset(self):
        """Where this chunk starts in its track, in samples from the start of the stream."""
        return (self.chunk - 1) * g711.CHUNK_SAMPLES


@dataclass(slots=True)
class Dtmf:
    """A key the caller pressed."""

    stream_sid: str | None
    sequence: int | None
    track: str
    digit: str


@dataclass(slots=True)
class Mark:
    """A mark the server sent (bidirectional streams) has been played, or cleared.

    `played` (set by the stream, see talkback.py): True if the audio before it played,
    False if a clear released it unplayed, None if the server sent no such mark."""

    stream_sid: str | None
    sequence: int | None
    name: str
    played: bool | None = None


@dataclass(slots=True)
class Stop:
    """The stream has stopped; Twilio closes the connection next."""

    stream_sid: str | None
    sequence: int | None
    call_sid: str | None
    account_sid: str | None


def parse_message(text):
    """Turn one Twilio text message into an event, or raise BadMessage."""
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError as problem:
        raise BadMessage(f"not JSON ({problem})") from None
    if not isinstance(message, dict):
        raise BadMessage(f"JSON {type(message).__name__} instead of an object")
    event = message.get("event")
    if event is None:
        raise BadMessage("no 'event' field")
    parse = _PARSERS.get(event) if isinstance(event, str) else None
    if parse is None:
        raise BadMessage(f"unknown event {cut(event, 40)!r}")
    return parse(message)


def _connected(message):
    return Connected(
        protocol=cut(message.get("protocol", ""), 20),
        version=cut(message.get("version", ""), 20),
        sequence=_sequence(message),
    )


def _start(message):
    start = _section(message, "start")
    media_format = start.get("mediaFormat")
    if not isinstance(media_format, dict):
        media_format = {}
    parameters = start.get("customParameters")
    if not isinstance(parameters, dict):
        parameters = {}
    stream_sid = message.get("streamSid") or start.get("streamSid")
    if not isinstance(stream_sid, str) or not stream_sid:
        raise BadMessage("start without a streamSid")
    tracks = start.get("tracks")
    return Start(
        stream_sid=cut(stream_sid, SID_CHARS),
        sequence=_sequence(message),
        call_sid=cut(start.get("callSid", ""), SID_CHARS),
        account_sid=cut(start.get("accountSid", ""), SID_CHARS),
        tracks=[_track(track) for track in tracks] if isinstance(tracks, list) else [],
        encoding=cut(media_format.get("encoding", "audio/x-mulaw"), 40),
        sample_rate=_count(media_format.get("sampleRate", 8000), "sampleRate"),
        channels=_count(media_format.get("channels", 1), "channels"),
        custom_parameters={
            cut(name, 40): cut(value, 100)
            for name, value in list(parameters.items())[:MAX_PARAMETERS]
        },
    )


def _media(message):
    media = _section(message, "media")
    payload = media.get("payload")
    if not isinstance(payload, str) or not payload:
        raise BadMessage("media without a payload")
    try:
        audio = binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError):
        raise BadMessage("media payload is not valid base64") from None
    return Media(
        _stream_sid(message),
        _sequence(message),
        _track(media.get("track", "inbound")),
        _count(media.get("chunk"), "chunk"),
        _count(media.get("timestamp"), "timestamp"),
        audio,
    )


def _dtmf(message):
    dtmf = _section(message, "dtmf")
    digit = dtmf.get("digit")
    if not isinstance(digit, str) or not digit:
        raise BadMessage("dtmf without a digit")
    return Dtmf(
        stream_sid=_stream_sid(message),
        sequence=_sequence(message),
        track=cut(dtmf.get("track", "inbound_track"), 20),
        digit=cut(digit, 4),
    )


def _mark(message):
    mark = _section(message, "mark")
    name = mark.get("name")
    if not isinstance(name, str):
        raise BadMessage("mark without a name")
    return Mark(stream_sid=_stream_sid(message), sequence=_sequence(message), name=cut(name, 100))


def _stop(message):
    stop = message.get("stop")
    stop = stop if isinstance(stop, dict) else {}
    return Stop(
        stream_sid=_stream_sid(message),
        sequence=_sequence(message),
        call_sid=cut(stop["callSid"], SID_CHARS) if stop.get("callSid") else None,
        account_sid=cut(stop["accountSid"], SID_CHARS) if stop.get("accountSid") else None,
    )


_PARSERS = {
    "connected": _connected,
    "start": _start,
    "media": _media,
    "dtmf": _dtmf,
    "mark": _mark,
    "stop": _stop,
}


def _section(message, name):
    """The object under `name` that every event but connected and stop must carry."""
    section = message.get(name)
    if not isinstance(section, dict):
        raise BadMessage(f"{name} event without a '{name}' object")
    return section


def _stream_sid(message):
    stream_sid = message.get("streamSid")
    return cut(stream_sid, SID_CHARS) if isinstance(stream_sid, str) else None


def _track(name):
    if name not in TRACKS:
        raise BadMessage(f"unknown track {cut(name, 40)!r} (Twilio's are inbound, outbound)")
    return name


def cut(value, limit):
    """A client's value as text of at most `limit` characters (the cut marked with …)."""
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _sequence(message):
    return _count(message.get("sequenceNumber"), "sequenceNumber")


def _count(value, name):
    """A counter, which Twilio sends as a decimal string ("42"); None where it sends none."""
    if type(value) is str and len(value) < 10 and value.isdecimal():  # Twilio's, at once
        return int(value)
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = -1
    if number < 0:
        raise BadMessage(f"{name} is not a number: {cut(value, 40)!r}")
    if number > MAX_NUMBER:
        raise BadMessage(f"{name} out of range: {cut(value, 40)}")
    return number
