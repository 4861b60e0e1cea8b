"""The live calls page's model: every open stream's panel, and who is watching (no I/O).

The `LiveCalls` handler feeds the board from each stream's events, like any handler; the
page's event stream (pages.py) asks the board what to send to each watcher:
- at once, what happens rarely: a call starts (`call`), a track says something
  (`utterance`), a call ends (`end`, with its summary);
- at most every UPDATE_SECONDS, what changes 50 times a second (`update`): per track
  speaking or not, level, talk time, audio seconds; keys pressed, audio lost, bad
  messages. One message
  carries every call that changed, so the rate is bounded per watcher, whatever the
  number of calls (see docs/browser.md for the figures with 100 calls).
"""

import math
import time
from collections import Counter, deque

from mediastream import g711
from mediastream.handlers import Handler

UPDATE_SECONDS = 0.25  # a meter moving 4 times a second looks live
ENDED_KEPT = 10  # ended calls the page still shows
LINES_KEPT = 200  # transcript lines a panel keeps for a page opened late
MAX_KEYS = 40  # DTMF digits a panel shows
PENDING_MAX = 500  # events a slow watcher may have waiting before it gets a fresh snapshot
QUIET_DBFS = -60.0  # the bottom of the level meter


class Panel:
    """One stream as the page shows it. Its figures are read from the stream's own state
    (stream.py, speech.py) when an update is due, not per message."""

    def __init__(self, stream, event, clock=time.time):
        self.stream = stream
        self.stream_sid = event.stream_sid
        self.card = {
            "id": event.stream_sid,
            "tag": stream.name,
            "call_sid": event.call_sid,
            "client": stream.client,
            "parameters": dict(event.custom_parameters),
            "mode": stream.mode,
            "declared_tracks": list(event.tracks),
            "opened": clock() - stream.duration(),  # when the page's clock says it began
        }
        self.lines = deque(maxlen=LINES_KEPT)
        self.utterances = Counter()  # per track, for the summary (lines keep only the last)
        self.sentiment = Counter()  # per track, the sum of the utterances' scores
        self.scored = Counter()  # per track, the utterances with a score
        self.keywords = Counter()
        self.keys = ""  # the caller's DTMF digits so far (the last MAX_KEYS)
        self.last_chunk = {}  # track -> its last Media (the meter's level): LiveCalls sets it
        self.summary = None
        self.final = None  # whole(), kept when the call ends (the stream is let go)

    @property
    def changes(self):
        """Grows whenever the figures may have changed: messages in, good or bad."""
        stream = self.stream
        messages = sum(figures.messages for figures in stream.tracks.values())
        return messages + stream.bad_messages + stream.missing_sequence_numbers + len(self.keys)

    def figures(self):
        """What changes all the time, now."""
        stream = self.stream
        tracks = {}
        for name, figures in stream.tracks.items():
            speech = figures.speech
            chunk = self.last_chunk.get(name)
            tracks[name] = {
                "seconds": round(stream.audio_seconds(name), 1),
                "speaking": bool(speech and speech.speaking),
                "talk": round(speech.talk_seconds, 1) if speech else None,
                "level": level(chunk.audio) if chunk else 0.0,
            }
        return {
            "id": self.stream_sid,
            "duration": round(stream.duration(), 1),
            "tracks": tracks,
            "lost_chunks": stream.missing_chunks,
            "bad_messages": stream.bad_messages,
            "keys": self.keys,
        }

    def whole(self):
        """Everything, for a page that opens now."""
        if self.final:
            return self.final
        return {
            **self.card,
            **self.figures(),
            "lines": list(self.lines),
            "summary": self.summary,
        }


def _meter_position(magnitude):
    """A sample's magnitude on the meter: 0 at QUIET_DBFS or quieter, 1 at full scale."""
    dbfs = 20 * math.log10(magnitude / 32768) if magnitude else QUIET_DBFS
    return round(max(0.0, 1 - dbfs / QUIET_DBFS), 2)


# A mu-law byte's low 7 bits rank its magnitude, loudest at 0: translated to 127 minus
# that, the loudest sample of a chunk is its max(), found in C with no decoding.
_LOUDNESS = bytes(0x7F - (byte & 0x7F) for byte in range(256))
_METER = [_meter_position(abs(g711.decode_byte(0x7F - rank))) for rank in range(128)]


def level(audio):
    """A chunk's peak (mu-law bytes) on a meter: 0 (QUIET_DBFS or quieter) to 1 (full scale)."""
    return _METER[max(audio.translate(_LOUDNESS))] if audio else 0.0


def line(utterance):
    """An utterance as a transcript line on the page."""
    return {
        "track": utterance.track,
        "start": round(utterance.start, 1),
        "text": utterance.text,
        "keywords": list(utterance.keywords),
        "sentiment": utterance.sentiment,
    }


def summary(panel, ended_by):
    """The end of a call as the page shows it: the console's summary, and what was said."""
    stream = panel.stream
    tracks = {}
    for name, figures in stream.tracks.items():
        speech = figures.speech
        scored = panel.scored[name]
        tracks[name] = {
            "seconds": round(stream.audio_seconds(name), 1),
            "talk": round(speech.talk_seconds, 1) if speech else None,
            "utterances": panel.utterances[name],
            "sentiment": round(panel.sentiment[name] / scored, 2) if scored else None,
        }
    return {
        "ended_by": ended_by,
        "duration": round(stream.duration(), 1),
        "tracks": tracks,
        "lost_chunks": stream.missing_chunks,
        "bad_messages": stream.bad_messages,
        "keywords": dict(panel.keywords),
        "keys": panel.keys,
        "problems": dict(stream.handler_problems),
    }


class Watcher:
    """One open page: the events waiting for it, and what it has been sent of each call.

    `wake` is called when an event is waiting (the page's greenlet sleeps until then)."""

    def __init__(self, stream_sid=None, wake=lambda: None):
        self.stream_sid = stream_sid  # only this call (the softphone's own panel), or all
        self.wake = wake
        self.pending = deque()
        self.sent_changes = {}  # stream SID -> Panel.changes when last sent
        self.behind = False  # it missed events: it gets a fresh snapshot instead

    def wants(self, stream_sid):
        return self.stream_sid is None or self.stream_sid == stream_sid

    def push(self, name, body):
        if self.behind:
            return
        if len(self.pending) >= PENDING_MAX:
            self.pending.clear()
            self.behind = True
        else:
            self.pending.append((name, body))
        self.wake()


class CallBoard:
    """Every open stream's panel and the last ENDED_KEPT ended ones; the open pages."""

    def __init__(self, clock=time.time):
        self.open = {}  # stream SID -> Panel
        self.ended = deque(maxlen=ENDED_KEPT)
        self.watchers = set()
        self.clock = clock

    # -- fed by the LiveCalls handler

    def started(self, stream, event):
        panel = self.open[event.stream_sid] = Panel(stream, event, self.clock)
        self._tell(panel, "call", panel.whole())
        return panel

    def said(self, panel, utterance):
        entry = line(utterance)
        panel.lines.append(entry)
        panel.utterances[utterance.track] += 1
        if utterance.sentiment is not None:
            panel.sentiment[utterance.track] += utterance.sentiment
            panel.scored[utterance.track] += 1
        panel.keywords.update(utterance.keywords)
        self._tell(panel, "utterance", {"id": panel.stream_sid, "line": entry})

    def finished(self, panel, ended_by):
        self.open.pop(panel.stream_sid, None)
        panel.summary = summary(panel, ended_by)
        panel.final = panel.whole()
        panel.stream = None  # an ended panel keeps its figures, not the stream
        panel.last_chunk = None
        self.ended.appendleft(panel)
        self._tell(panel, "end", panel.final)

    def _tell(self, panel, name, body):
        for watcher in self.watchers:
            if watcher.wants(panel.stream_sid):
                watcher.push(name, body)

    # -- asked by the page's event stream

    def watch(self, stream_sid=None, wake=lambda: None):
        """A new watcher and what it sees first: every call it wants, open and ended."""
        watcher = Watcher(stream_sid, wake)
        self.watchers.add(watcher)
        return watcher, self.snapshot(watcher)

    def snapshot(self, watcher):
        watcher.behind = False
        watcher.pending.clear()
        panels = [*self.open.values(), *self.ended]
        calls = [panel.whole() for panel in panels if watcher.wants(panel.stream_sid)]
        watcher.sent_changes = {panel.stream_sid: panel.changes for panel in self.open.values()}
        return {"calls": calls}

    def updates(self, watcher):
        """The figures of the open calls that changed since the watcher last heard."""
        changed = []
        for stream_sid, panel in self.open.items():
            if watcher.wants(stream_sid) and watcher.sent_changes.get(stream_sid) != panel.changes:
                watcher.sent_changes[stream_sid] = panel.changes
                changed.append(panel.figures())
        for stream_sid in [sid for sid in watcher.sent_changes if sid not in self.open]:
            del watcher.sent_changes[stream_sid]
        return changed

    def unwatch(self, watcher):
        self.watchers.discard(watcher)


BOARD = CallBoard()  # this process's calls (under gunicorn: this worker's)


class LiveCalls(Handler):
    """A handler: puts its stream on the live calls page (/calls, and /phone's panel)."""

    may_block = False  # a message costs it one reference kept; figures are read when due

    def __init__(self, config, board=BOARD):
        super().__init__(config)
        self.board = board
        self.panel = None
        self.last_chunk = {}  # track -> its last chunk, the panel's from start on

    def start(self, stream, event):
        self.panel = self.board.started(stream, event)
        self.panel.last_chunk = self.last_chunk

    def media(self, stream, chunk):
        self.last_chunk[chunk.track] = chunk

    def dtmf(self, stream, event):
        if self.panel:
            self.panel.keys = (self.panel.keys + event.digit)[-MAX_KEYS:]

    def utterance(self, stream, utterance):
        if self.panel:
            self.board.said(self.panel, utterance)

    def end(self, stream, ended_by):
        if self.panel:
            self.board.finished(self.panel, ended_by)
