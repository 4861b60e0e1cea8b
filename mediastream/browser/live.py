"""The live calls page's model: every open stream's panel, and who is watching (no I/O).

The `LiveCalls` handler feeds the board from each stream's events, like any handler; the
page's event stream (pages.py) asks the board what to send to each watcher:
- at once, what happens rarely: a call starts (`call`), a track says something, or the
  agent does (`utterance`: a transcript line; the agent's answers as the caller heard
  them, its tools, a transfer or hang-up, as lines of track "agent"), a call ends
  (`end`, with its summary);
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
from mediastream.console import audio_figures, start_figures, summary_figures
from mediastream.handlers import Handler

UPDATE_SECONDS = 0.25  # a meter moving 4 times a second looks live
ENDED_KEPT = 10  # ended calls the page still shows
LINES_KEPT = 200  # transcript lines a panel keeps for a page opened late
MAX_KEYS = 40  # DTMF digits a panel shows
PENDING_MAX = 500  # events a slow watcher may have waiting before it gets a fresh snapshot
QUIET_DBFS = -60.0  # the bottom of the level meter
QUIET_SECONDS = 15.0  # another server's call that sent nothing for this long is over
MAX_OURS = 10_000  # our calls whose fleet entries may still come back, at most


class Panel:
    """One call as the page shows it: its card, its transcript lines and what they add up
    to. A StreamPanel is one of this process's streams; a RemotePanel, another server's
    call, known from the fleet's Redis entries (fleet.py)."""

    def __init__(self, card):
        self.stream_sid = card["id"]
        self.card = card
        self.lines = deque(maxlen=LINES_KEPT)
        self.utterances = Counter()  # per track, for the summary (lines keep only the last)
        self.sentiment = Counter()  # per track, the sum of the utterances' scores
        self.scored = Counter()  # per track, the utterances with a score
        self.keywords = Counter()
        self.keys = ""  # the caller's DTMF digits so far (the last MAX_KEYS)
        self.summary = None
        self.final = None  # whole(), kept when the call ends

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


class StreamPanel(Panel):
    """One of this process's streams. Its figures are read from the stream's own state
    (stream.py, speech.py) when an update is due, not per message."""

    def __init__(self, stream, event, clock=time.time, server=None):
        start = start_figures(stream, event)
        declared = start.pop("tracks")  # (on the page, "tracks" are each track's figures)
        super().__init__(
            {
                "id": event.stream_sid,
                "tag": stream.name,
                **start,
                "declared_tracks": declared,
                "opened": clock() - stream.duration(),  # when the page's clock says it began
                **({"server": server} if server else {}),
            }
        )
        self.stream = stream

    @property
    def changes(self):
        """Grows whenever the figures may have changed: messages in, good or bad."""
        stream = self.stream
        messages = sum(figures.messages for figures in stream.tracks.values())
        return messages + stream.bad_messages + stream.missing_sequence_numbers + len(self.keys)

    def figures(self):
        """What changes all the time, now."""
        now = audio_figures(self.stream)
        for name, track in now["tracks"].items():
            track["level"] = level(self.stream.tracks[name].last_audio)
        return {"id": self.stream_sid, **now, "keys": self.keys}


class RemotePanel(Panel):
    """Another server's call, from its `start` and `figures` entries (or, for a call that
    was open before this process read the fleet's stream, its figures alone)."""

    def __init__(self, entry, clock=time.time):
        super().__init__(
            {
                "id": entry["stream_sid"],
                "tag": entry["tag"],
                "call_sid": entry.get("call_sid"),
                "client": entry.get("client"),
                "parameters": entry.get("parameters") or {},
                "mode": entry.get("mode"),
                "declared_tracks": entry.get("tracks") or [],
                "opened": entry["at"] - entry.get("duration", 0.0),
                "server": entry["server"],
            }
        )
        self.last = {"duration": 0.0, "tracks": {}, "lost_chunks": 0, "bad_messages": 0}
        self.received = 0  # figures entries taken in: the page's updates follow it
        self.heard_at = clock()
        self.clock = clock

    def took(self, entry):
        """A `figures` entry of its call."""
        self.last = {key: entry[key] for key in self.last}
        self.received += 1
        self.heard_at = self.clock()

    @property
    def changes(self):
        return self.received + len(self.keys)

    def quiet(self):
        return self.clock() - self.heard_at > QUIET_SECONDS

    def last_known(self):
        """The summary's figures of a call whose end never came."""
        return {
            "ended_by": "no news from its server",
            "seconds": self.last["duration"],
            "tracks": {
                name: {
                    "audio_seconds": track["seconds"],
                    "missing_chunks": 0,  # what is known is the call's total, not per track
                    "talk_seconds": track["talk"],
                }
                for name, track in self.last["tracks"].items()
            },
            "bad_messages": self.last["bad_messages"],
        }

    def figures(self):
        tracks = {name: {**track, "level": 0.0} for name, track in self.last["tracks"].items()}
        return {"id": self.stream_sid, **self.last, "tracks": tracks, "keys": self.keys}


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
    """An utterance (its figures(), as the fleet's entries carry it) as a transcript line."""
    return {
        "track": utterance["track"],
        "start": round(utterance["start"], 1),
        "text": utterance["text"],
        "keywords": list(utterance.get("keywords", [])),
        "sentiment": utterance.get("sentiment"),
    }


def agent_line(act):
    """What the agent did (agent.Act's figures(), as the fleet's entries carry it) as a
    transcript line of track "agent"."""
    kind = act["kind"]
    if kind == "tool":
        outcome = f"failed: {act['error']}" if act.get("error") else f"gave {act.get('result')}"
        text = f"{act['tool']}({act.get('arguments') or ''}) {outcome}"
    elif kind == "transfer":
        text = f"transferred the call to {act['to']}"
    elif kind == "hang_up":
        text = "ended the call" + (" (nobody spoke)" if act.get("text") == "idle" else "")
    else:
        text = act.get("text", "")
    return {
        "track": "agent",
        "kind": kind,
        "start": round(act["start"], 1),
        "text": text,
        "keywords": [],
        "sentiment": None,
        "voice_to_voice": act.get("voice_to_voice"),
    }


def summary(panel, ended):
    """The end of a call as the page shows it: the console's summary figures (`ended`,
    console.summary_figures, or a fleet `end` entry), and what was said."""
    tracks = {}
    for name, track in ended["tracks"].items():
        scored = panel.scored[name]
        talk = track.get("talk_seconds")
        tracks[name] = {
            "seconds": round(track["audio_seconds"], 1),
            "talk": None if talk is None else round(talk, 1),
            "utterances": panel.utterances[name],
            "sentiment": round(panel.sentiment[name] / scored, 2) if scored else None,
        }
    return {
        "ended_by": ended["ended_by"],
        "duration": round(ended["seconds"], 1),
        "tracks": tracks,
        "lost_chunks": sum(track["missing_chunks"] for track in ended["tracks"].values()),
        "bad_messages": ended["bad_messages"],
        "keywords": dict(panel.keywords),
        "keys": panel.keys,
        "problems": ended.get("problems", {}),
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
    """Every open call's panel and the last ENDED_KEPT ended ones; the open pages.

    Its own calls come from the LiveCalls handler; in a fleet (REDIS_URL), the other
    servers' from the fleet's stream (fleet.py's follower calls heard())."""

    def __init__(self, clock=time.time):
        self.open = {}  # this process's streams: stream SID -> StreamPanel
        self.remote = {}  # other servers' open calls: stream SID -> RemotePanel
        self.ended = deque(maxlen=ENDED_KEPT)
        self.watchers = set()
        self.clock = clock
        self.server = None  # in a fleet, this server's name, shown on its panels
        self.ours = {}  # in a fleet, our streams whose entries may still come back to us
        self.fleet = None  # in a fleet, what follows the others' calls while a page watches

    # -- fed by the LiveCalls handler, and by the fleet's follower

    def started(self, stream, event):
        panel = self.open[event.stream_sid] = StreamPanel(stream, event, self.clock, self.server)
        if self.server:
            self.ours[event.stream_sid] = None
            while len(self.ours) > MAX_OURS:
                del self.ours[next(iter(self.ours))]
        self._tell(panel, "call", panel.whole())
        return panel

    def pressed(self, panel, digit):
        panel.keys = (panel.keys + digit)[-MAX_KEYS:]

    def said(self, panel, utterance):
        """`utterance`: its figures() (transcript.py), as the fleet's entries carry it."""
        entry = line(utterance)
        panel.lines.append(entry)
        track = utterance["track"]
        panel.utterances[track] += 1
        if entry["sentiment"] is not None:
            panel.sentiment[track] += entry["sentiment"]
            panel.scored[track] += 1
        panel.keywords.update(entry["keywords"])
        self._tell(panel, "utterance", {"id": panel.stream_sid, "line": entry})

    def acted(self, panel, act):
        """`act`: what the agent did (agent.Act's figures()), as the fleet's entries carry it."""
        entry = agent_line(act)
        panel.lines.append(entry)
        self._tell(panel, "utterance", {"id": panel.stream_sid, "line": entry})

    def finished(self, panel, ended):
        """`ended`: the summary's figures (console.summary_figures, or a fleet `end` entry)."""
        self.open.pop(panel.stream_sid, None)
        self.remote.pop(panel.stream_sid, None)
        panel.summary = summary(panel, ended)
        panel.final = panel.whole()
        panel.stream = None  # an ended panel keeps its figures, not the stream
        self.ended.appendleft(panel)
        self._tell(panel, "end", panel.final)

    def heard(self, kind, entry):
        """An entry of the fleet's stream: another server's call (or one of ours, back)."""
        stream_sid = entry.get("stream_sid")
        if stream_sid in self.ours:
            if kind == "end":  # its last entry
                del self.ours[stream_sid]
            return
        panel = self.remote.get(stream_sid)
        if kind == "start" or (panel is None and kind == "figures"):
            panel = self.remote[stream_sid] = RemotePanel(entry, self.clock)
            if kind == "figures":  # open before we followed the stream: its figures alone
                panel.took(entry)
            self._tell(panel, "call", panel.whole())
        elif panel is None:
            return  # the rest of a call we never saw start
        elif kind == "figures":
            panel.took(entry)
        elif kind == "dtmf":
            self.pressed(panel, entry["digit"])
        elif kind == "utterance":
            self.said(panel, entry)
        elif kind in ("agent", "tool"):
            self.acted(panel, entry)
        elif kind == "end":
            self.finished(panel, entry)

    def forget_quiet(self):
        """End the other servers' calls that sent nothing for QUIET_SECONDS (their server
        stopped, or Redis did), with what was last known of them."""
        for panel in [each for each in self.remote.values() if each.quiet()]:
            self.finished(panel, panel.last_known())

    def _tell(self, panel, name, body):
        for watcher in self.watchers:
            if watcher.wants(panel.stream_sid):
                watcher.push(name, body)

    # -- asked by the page's event stream

    def watch(self, stream_sid=None, wake=lambda: None):
        """A new watcher and what it sees first: every call it wants, open and ended."""
        watcher = Watcher(stream_sid, wake)
        if self.fleet and not self.watchers:
            self.fleet.start()
        self.watchers.add(watcher)
        return watcher, self.snapshot(watcher)

    def snapshot(self, watcher):
        watcher.behind = False
        watcher.pending.clear()
        panels = [*self.open.values(), *self.remote.values(), *self.ended]
        calls = [panel.whole() for panel in panels if watcher.wants(panel.stream_sid)]
        watcher.sent_changes = {panel.stream_sid: panel.changes for panel in self._open()}
        return {"calls": calls}

    def updates(self, watcher):
        """The figures of the open calls that changed since the watcher last heard."""
        changed = []
        for panel in self._open():
            stream_sid = panel.stream_sid
            if watcher.wants(stream_sid) and watcher.sent_changes.get(stream_sid) != panel.changes:
                watcher.sent_changes[stream_sid] = panel.changes
                changed.append(panel.figures())
        for stream_sid in [sid for sid in watcher.sent_changes if not self._is_open(sid)]:
            del watcher.sent_changes[stream_sid]
        return changed

    def unwatch(self, watcher):
        self.watchers.discard(watcher)
        if self.fleet and not self.watchers:
            self.fleet.stop()

    def _open(self):
        return [*self.open.values(), *self.remote.values()]

    def _is_open(self, stream_sid):
        return stream_sid in self.open or stream_sid in self.remote


BOARD = CallBoard()  # this process's calls (under gunicorn: this worker's)


class LiveCalls(Handler):
    """A handler: puts its stream on the live calls page (/calls, and /phone's panel). It
    has nothing to do per media message: the board reads the stream's figures (and each
    track's last chunk, for the meter) when an update is due."""

    may_block = False

    def __init__(self, config, board=BOARD):
        super().__init__(config)
        self.board = board
        self.panel = None

    def start(self, stream, event):
        self.panel = self.board.started(stream, event)

    def dtmf(self, stream, event):
        if self.panel:
            self.board.pressed(self.panel, event.digit)

    def utterance(self, stream, utterance):
        if self.panel:
            self.board.said(self.panel, utterance.figures())

    def agent(self, stream, act):
        if self.panel:
            self.board.acted(self.panel, act.figures())

    def end(self, stream, ended_by):
        if self.panel:
            self.board.finished(self.panel, summary_figures(stream, ended_by))
