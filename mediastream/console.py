"""How a stream looks on the console: one short line per event, the stream named in each.

Lines start with [name]: the last 8 characters of the streamSid, or the client's address
until the start message arrives (stream.log adds it). Media gets no line of its own at
INFO (50 a second per track would flood the console), only a progress line every few
seconds, with who is speaking when speech activity is on; DEBUG shows each message.
"""

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

from mediastream import g711
from mediastream.handlers import Handler, every
from mediastream.messages import cut

log = logging.getLogger("mediastream")
startup = logging.getLogger("mediastream.startup")  # said once, shown whatever LOG_LEVEL

LINE = 92  # what fits a 120-column terminal after the time, the level and the tag
PROGRESS_SECONDS = 5.0  # a progress line this often of each call


def configure_logging(level, log_format="console"):
    """Send log lines to stdout: for people, with a time, a level and the message; or, with
    log_format "json", as one JSON object a line for a log pipeline (python-json-logger):
    time, level, pid, message, and for a stream's lines its tag, stream_sid, call_sid,
    event and, on summary and gap lines, figures."""
    handler = logging.StreamHandler(sys.stdout)
    if log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "{levelname}{process}{message}",
                style="{",
                rename_fields={"levelname": "level", "process": "pid"},
                timestamp="time",
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    startup.setLevel(logging.INFO)  # where it listens, what it records: always worth a line
    # gevent-websocket logs each HTTP request at INFO, faster-whisper each utterance:
    # keep only their warnings.
    logging.getLogger("geventwebsocket").setLevel(logging.WARNING)
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)


class Console(Handler):
    """The first handler: each event of the stream as a line, and its summary at the end."""

    may_block = False

    def __init__(self, config):
        super().__init__(config)
        self._progress = None  # the timer of the progress lines
        # A line per media message only at DEBUG: decided once, so that at INFO the console
        # is not called 50 times a second.
        if log.isEnabledFor(logging.DEBUG):
            self.media = self._each_chunk

    def connected(self, stream, event):
        stream.log.info("connected: protocol %s %s", event.protocol, event.version)

    def start(self, stream, event):
        self._progress = every(PROGRESS_SECONDS, self._progress_line, stream)
        direction = f"bidirectional, mode {stream.mode}" if stream.bidirectional else "one-way"
        stream.log.info(
            "start: stream %s from %s (%s)", event.stream_sid, stream.client, cut(direction, 30)
        )
        stream.log.info(
            "call %s: tracks %s, %s %d Hz %d ch",
            event.call_sid,
            "+".join(event.tracks) or "none",
            event.encoding,
            event.sample_rate,
            event.channels,
            extra={"event": "start"},
        )
        if event.custom_parameters:
            parameters = ", ".join(f"{k}={v}" for k, v in event.custom_parameters.items())
            stream.log.info("parameters: %s", cut(parameters, LINE - len("parameters: ")))
        stream.log.debug("account %s", event.account_sid)

    def _each_chunk(self, stream, chunk):
        stream.log.debug(
            "media: %s chunk %s, timestamp %s ms, %d bytes",
            chunk.track,
            chunk.chunk,
            chunk.timestamp,
            len(chunk.audio),
        )

    def _progress_line(self, stream):
        if not any(figures.messages for figures in stream.tracks.values()):
            return
        sent = stream.talkback.seconds_sent if stream.bidirectional else None
        sent = f"; sent back {sent:.1f} s" if sent is not None else ""
        stream.log.info("media: %s%s", _audio_per_track(stream), sent)

    def gap(self, stream, event, lost_messages, lost_chunks):
        """One warning per hole in the numbering: messages Twilio sent that never arrived.

        Messages are counted from sequence numbers only: with two tracks, one lost message
        shows as a sequence hole and, at the next chunk of its track, a chunk hole."""
        holes = []
        if lost_messages:
            holes.append(
                f"{counted(len(lost_messages), 'message')} lost "
                f"({_numbers('sequence number', lost_messages)})"
            )
        if lost_chunks:
            holes.append(
                f"{event.track} {len(lost_chunks) * g711.CHUNK_MS} ms of audio lost "
                f"({_numbers('chunk', lost_chunks)})"
            )
        stream.log.warning(
            "gap: %s",
            "; ".join(holes),
            extra={
                "figures": {
                    "lost_messages": len(lost_messages),
                    "lost_chunks": len(lost_chunks),  # of the track of the media event
                    "track": event.track if lost_chunks else None,
                }
            },
        )

    def dtmf(self, stream, event):
        stream.log.info("dtmf: digit %s (%s)", event.digit, event.track)

    def mark(self, stream, event):
        heard = {True: " played", False: " cleared before it played", None: ""}[event.played]
        stream.log.info("mark: %s%s", cut(event.name, LINE - 32), heard)

    def stop(self, stream, event):
        stream.log.info("stop: call %s", event.call_sid or stream.call_sid)

    def bad_message(self, stream, problem):
        stream.log.warning("bad message ignored: %s", problem)

    def end(self, stream, ended_by):
        """The lines every stream ends with, however it ended; `summary:` is the last."""
        if self._progress:
            self._progress.close()
        stream.log.info("received: %s", _media_per_track(stream))
        if stream.bidirectional:
            talkback = stream.talkback
            stream.log.info(
                "sent back: %.1f s of audio; marks: %d sent, %d played, %d cleared; %s",
                talkback.seconds_sent,
                talkback.marks_sent,
                talkback.marks_played,
                talkback.marks_cleared,
                counted(talkback.clears, "clear"),
            )
        stream.log.info(
            "gaps: %s, %s; bad messages: %d",
            counted(stream.missing_chunks, "missing chunk"),
            counted(stream.missing_sequence_numbers, "missing sequence number"),
            stream.bad_messages,
        )
        for name, problem in stream.handler_problems.items():
            stream.log.warning("handler problem: %s %s", name, problem)
        stream.log.info(
            "summary: stream %s ended by %s after %.1f s",
            stream.stream_sid or "never started,",
            ended_by,
            stream.duration(),
            extra={"figures": summary_figures(stream, ended_by)},
        )


def _audio_per_track(stream):
    """'inbound 5.0 s, speaking, talk 3.1 s; outbound ...' (speech where it is followed)."""
    return (
        "; ".join(
            f"{track} {stream.audio_seconds(track):.1f} s{_speech(figures.speech)}"
            for track, figures in stream.tracks.items()
        )
        or "no audio yet"
    )


def _speech(speech):
    if speech is None:
        return ""
    return f", {'speaking' if speech.speaking else 'silent'}, talk {speech.talk_seconds:.1f} s"


def audio_figures(stream):
    """A stream's audio now, as data: for the live page and the fleet's `figures` entries."""
    tracks = {}
    for name, track in stream.tracks.items():
        speech = track.speech
        tracks[name] = {
            "seconds": round(stream.audio_seconds(name), 1),
            "speaking": bool(speech and speech.speaking),
            "talk": round(speech.talk_seconds, 1) if speech else None,
        }
    return {
        "duration": round(stream.duration(), 1),
        "tracks": tracks,
        "lost_chunks": stream.missing_chunks,
        "bad_messages": stream.bad_messages,
    }


def start_figures(stream, event):
    """A stream's start, as data: for the live page and the fleet's `start` entries."""
    return {
        "call_sid": event.call_sid,
        "tracks": list(event.tracks),
        "mode": stream.mode,
        "parameters": dict(event.custom_parameters),
        "client": stream.client,
    }


def summary_figures(stream, ended_by):
    """The summary as data, for JSON logs and the fleet's `end` entries."""
    return {
        "ended_by": ended_by,
        "seconds": round(stream.duration(), 3),
        "tracks": {
            track: {
                "messages": figures.messages,
                "audio_seconds": stream.audio_seconds(track),
                "missing_chunks": figures.chunks.missing,
                "talk_seconds": round(figures.speech.talk_seconds, 3) if figures.speech else None,
            }
            for track, figures in stream.tracks.items()
        },
        "missing_sequence_numbers": stream.missing_sequence_numbers,
        "bad_messages": stream.bad_messages,
        "problems": dict(stream.handler_problems),
    }


def _media_per_track(stream):
    return (
        ", ".join(
            f"{track} {counted(figures.messages, 'message')} ({stream.audio_seconds(track):.1f} s)"
            for track, figures in stream.tracks.items()
        )
        or "no media"
    )


def _numbers(noun, numbers):
    """'chunk 7' or 'chunks 7-9'."""
    if len(numbers) == 1:
        return f"{noun} {numbers[0]}"
    return f"{noun}s {numbers[0]}-{numbers[-1]}"


def counted(count, noun):
    """'1 chunk' or '2 chunks'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"
