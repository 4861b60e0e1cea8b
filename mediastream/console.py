"""How a stream looks on the console: one short line per event, the stream named in each.

Lines start with [name]: the last 8 characters of the streamSid, or the client's address
until the start message arrives. Media gets no line of its own at INFO (50 a second per
track would flood the console), only a progress line every few seconds; DEBUG shows each.
"""

import logging
import sys

log = logging.getLogger("mediastream")

CHUNK_MS = 20  # Twilio sends 20 ms of audio per media message


def configure_logging(level):
    """Send log lines to stdout, with a time, a level and the message."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # gevent-websocket logs each HTTP request at INFO; keep only its warnings.
    logging.getLogger("geventwebsocket").setLevel(logging.WARNING)


def connection_opened(stream):
    log.info("[%s] connection opened", stream.name)


def connected(stream, event):
    log.info("[%s] connected: protocol %s %s", stream.name, event.protocol, event.version)


def started(stream, event):
    parameters = ", ".join(f"{k}={v}" for k, v in event.custom_parameters.items())
    log.info(
        "[%s] start: stream %s, call %s, account %s, tracks %s, %s %d Hz %d ch, parameters: %s",
        stream.name,
        event.stream_sid,
        event.call_sid,
        event.account_sid,
        "+".join(event.tracks) or "none",
        event.encoding,
        event.sample_rate,
        event.channels,
        parameters or "none",
    )


def media(stream, event):
    log.debug(
        "[%s] media: %s chunk %s, timestamp %s ms, %d bytes",
        stream.name,
        event.track,
        event.chunk,
        event.timestamp,
        len(event.audio),
    )


def progress(stream):
    log.info("[%s] media: %s", stream.name, _audio_per_track(stream))


def gap(stream, event, lost_messages, lost_chunks):
    """One warning per hole in the numbering: messages Twilio sent that never arrived."""
    holes = []
    if lost_chunks:
        holes.append(f"{event.track} {_numbers('chunk', lost_chunks)}")
    if lost_messages:
        holes.append(_numbers("sequence number", lost_messages))
    losses = [_count(max(len(lost_chunks), len(lost_messages)), "message")]
    if lost_chunks:
        losses.append(f"{len(lost_chunks) * CHUNK_MS} ms of audio")
    log.warning("[%s] gap: %s missing (%s lost)", stream.name, ", ".join(holes), ", ".join(losses))


def dtmf(stream, event):
    log.info("[%s] dtmf: digit %s (%s)", stream.name, event.digit, event.track)


def mark(stream, event):
    log.info("[%s] mark: %s", stream.name, event.name)


def stopped(stream, event):
    log.info("[%s] stop: call %s", stream.name, event.call_sid or stream.call_sid)


def bad_message(stream, problem):
    log.warning("[%s] bad message ignored: %s", stream.name, problem)


def connection_problem(stream, problem):
    log.warning("[%s] connection problem: %s", stream.name, problem)


def recording_failed(stream, problem):
    log.error("[%s] %s", stream.name, problem)


def summary(stream, ended_by, recorded=()):
    """The one line every stream ends with, however it ended."""
    log.info(
        "[%s] summary: stream %s, ended by %s after %.1f s; %s; gaps: %s, %s; bad messages: %d%s",
        stream.name,
        stream.stream_sid or "never started",
        ended_by,
        stream.duration(),
        _media_per_track(stream),
        _count(stream.missing_chunks, "missing chunk"),
        _count(stream.missing_sequence_numbers, "missing sequence number"),
        stream.bad_messages,
        f"; recorded {', '.join(str(path) for path in recorded)}" if recorded else "",
    )


def _audio_per_track(stream):
    return (
        ", ".join(f"{track} {stream.audio_seconds(track):.1f} s" for track in stream.tracks)
        or "no audio yet"
    )


def _media_per_track(stream):
    return (
        ", ".join(
            f"{track} {_count(figures.messages, 'message')}, {figures.audio_bytes} bytes "
            f"({stream.audio_seconds(track):.1f} s)"
            for track, figures in stream.tracks.items()
        )
        or "no media"
    )


def _numbers(noun, numbers):
    """'chunk 7' or 'chunks 7-9'."""
    if len(numbers) == 1:
        return f"{noun} {numbers[0]}"
    return f"{noun}s {numbers[0]}-{numbers[-1]}"


def _count(count, noun):
    """'1 chunk' or '2 chunks'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"
