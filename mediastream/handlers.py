"""The handler interface users implement, and how a stream's events reach its handlers.

A handler follows one stream. Override the methods for the events you need; each gets
the stream's state (`stream`: a MediaStream, with its name, SIDs, tracks and figures, and
`stream.log`, a logger whose lines start with the stream's tag) and the event:

    class KeyLogger(Handler):
        def dtmf(self, stream, event):
            stream.log.info("key %s", event.digit)

    app = create_app(handlers=[*DEFAULT_HANDLERS, KeyLogger])

How events reach handlers:
- In order: each handler sees its stream's events in the order they arrived.
- A handler that may block (the default, for your own) gets them through a queue, in a
  greenlet of its own, so that reading the socket never waits for it. If it falls
  `max_queued` events behind, media for it is dropped (counted, one WARNING line) until it
  catches up; the call and the other handlers go on. Handlers that never wait on I/O and
  return at once (the built-ins) set `may_block = False`: they run on the reading
  greenlet itself, with no queue.
- A method that raises is logged once, with the traceback; that handler gets no more
  events for that stream but its end(). The call and the other handlers go on; the
  summary names the handler.
- utterance(): what a track said, as the transcript (transcript.py) makes it; every
  handler gets it like any other event, in the order of the console's lines; one that
  could not be transcribed comes in its place as untranscribed(). Handlers that pass on
  events of their own (the transcript) send their last ones in finish(), which comes
  before anyone's end().
- end() is called once for every handler, however the stream ended, after all its other
  events: handlers that may block first (the stream waits up to END_WAIT_SECONDS for them
  to work through their queue, then drops what is left), then the others last-first, so
  the console, first in DEFAULT_HANDLERS, writes the summary after everything else.
- Work that needs doing every few seconds of a stream, not on each of its 50 messages a
  second, goes in a timer: `every(seconds, callback, stream)` in start(), closed in end()
  (the console's progress lines and the metrics do so).
"""

import logging
from collections import deque

import gevent
from gevent import GreenletExit
from gevent.event import Event

from mediastream.stream import MediaStream

log = logging.getLogger("mediastream")

END_WAIT_SECONDS = 2.0

EVENTS = (
    "connected",
    "start",
    "media",
    "dtmf",
    "mark",
    "stop",
    "gap",
    "bad_message",
    "utterance",
    "untranscribed",
    "agent",
)


class Handler:
    """One stream's view of the call: override the events you need; each does nothing here.

    A handler class (or any callable taking the Config and returning a Handler) is given
    to create_app(handlers=[...]); it is made once per stream, with the app's Config."""

    #: False only for a handler that never waits on I/O and returns at once: it then runs
    #: on the greenlet that reads the socket, with no queue (see the module's docstring).
    may_block = True
    #: How many events may wait for a handler that may block before its media is dropped
    #: (500 is 10 s of one track's audio).
    max_queued = 500
    #: Set it False (in start(), say) for a stream this handler has nothing to do with:
    #: it then gets no more events for that stream but its end(), at no cost per message.
    active = True

    def __init__(self, config):
        self.config = config

    @classmethod
    def enabled(cls, config):
        """Whether this handler runs at all with `config` (asked once, by create_app)."""
        return True

    def connected(self, stream, event):
        """The connection's first message (messages.Connected); the stream has no SID yet."""

    def start(self, stream, event):
        """The stream's metadata (messages.Start): SIDs, tracks, format, custom parameters."""

    def media(self, stream, chunk):
        """20 ms of one track (messages.Media): chunk.track, chunk.chunk (its number),
        chunk.offset (in samples), chunk.audio (mu-law bytes), chunk.pcm (16-bit PCM)."""

    def dtmf(self, stream, event):
        """A key the caller pressed (messages.Dtmf): event.digit."""

    def mark(self, stream, event):
        """A mark has played, or was cleared (messages.Mark): event.name."""

    def stop(self, stream, event):
        """Twilio stopped the stream (messages.Stop); end() follows."""

    def gap(self, stream, event, lost_messages, lost_chunks):
        """Numbers skipped before `event`: messages (sequence numbers) and chunks of its
        track (ranges, either may be empty) that Twilio sent and that never arrived."""

    def bad_message(self, stream, problem):
        """A message that was not a Twilio event, ignored; `problem` says why."""

    def utterance(self, stream, utterance):
        """What one track said (transcript.Utterance; with TRANSCRIBE set): utterance.track,
        .start and .end (seconds into the call), .text, .latency (seconds from the end of
        the speech to the text), .keywords (those of KEYWORDS it contains) and .sentiment
        (VADER's compound score, -1 to 1), where those handlers run before yours."""

    def untranscribed(self, stream, utterance):
        """An utterance the engine could not transcribe (it failed, or was skipped under
        load), in its place among the utterances: .track, .start, .end as ever, .text
        empty, and .problem, why."""

    def agent(self, stream, act):
        """What the agent did on a mode=agent stream (agent.Act): act.kind is "said" (an
        answer played to its end: .text, .voice_to_voice), "cut" (the caller talked over
        it: .text is what they heard), "tool" (.tool, .arguments, .result or .error,
        .seconds), "hang_up" or "transfer" (.to); act.start is seconds into the call."""

    def finish(self, stream):
        """For a handler that never blocks: the stream has ended; send the last events of
        your own now, before anyone's end() (the transcript does), or stop work that is
        for the caller (the agent cancels its answer)."""

    def end(self, stream, ended_by):
        """Called once, last, however the stream ended: `ended_by` says how ("stop",
        "disconnect", "server shutdown", "client close (1000)", ...)."""


def enabled(factories, config):
    """The handler factories that run with `config` (see Handler.enabled)."""
    return [f for f in factories if not hasattr(f, "enabled") or f.enabled(config)]


def handler_name(handler):
    return type(handler).__name__


class StreamHandlers:
    """One stream's handlers, each made by its factory with `config`: passes each event to
    each handler, isolating their failures."""

    def __init__(self, stream, factories, config):
        self.stream = stream
        stream.handlers = self  # handlers that pass on events call stream.handlers.utterance()
        handlers = [handler for handler in (self._make(f, config) for f in factories) if handler]
        self.lanes = [Lane(self, handler) for handler in handlers if handler.may_block]
        self._inline = [handler for handler in handlers if not handler.may_block]
        self._broken = set()
        self._methods = {}
        self._bind_methods()

    def _make(self, factory, config):
        try:
            return factory(config)
        except Exception:
            name = getattr(factory, "__name__", repr(factory))
            self.stream.log.error(
                "handler %s could not be made; going on without it", name, exc_info=True
            )
            self.stream.handler_problems[name] = "failed in __init__()"
            return None

    def _bind_methods(self):
        """Each event's methods of the working non-blocking handlers, leaving out no-ops."""
        self._methods = {
            name: [
                (handler, getattr(handler, name))
                for handler in self._inline
                if handler not in self._broken
                and handler.active
                and getattr(getattr(handler, name), "__func__", None) is not getattr(Handler, name)
            ]
            for name in EVENTS
        }

    def connected(self, event):
        self._send("connected", event)

    def start(self, event):
        self._send("start", event)
        if not all(handler.active for handler in self._inline):
            self._bind_methods()  # those that stepped aside get no more events

    def media(self, chunk):
        self._send("media", chunk)

    def dtmf(self, event):
        self._send("dtmf", event)

    def mark(self, event):
        self._send("mark", event)

    def stop(self, event):
        self._send("stop", event)

    def gap(self, event, lost_messages, lost_chunks):
        self._send("gap", event, lost_messages, lost_chunks)

    def bad_message(self, problem):
        self._send("bad_message", problem)

    def utterance(self, utterance):
        self._send("utterance", utterance)

    def untranscribed(self, utterance):
        self._send("untranscribed", utterance)

    def agent(self, act):
        self._send("agent", act)

    def _send(self, name, *args):
        for handler, method in self._methods[name]:
            try:
                method(self.stream, *args)
            except Exception:
                self.failed(handler, name)
        for lane in self.lanes:
            lane.put(name, args)

    def end(self, ended_by):
        """End every handler (see the module's docstring for the order)."""
        self.stream.ended()
        for handler in self._inline:
            if handler not in self._broken:
                self.call(handler, "finish")
        for lane in self.lanes:
            lane.put("end", (ended_by,))
        try:
            gevent.joinall([lane.greenlet for lane in self.lanes], timeout=END_WAIT_SECONDS)
        except GreenletExit:
            pass  # the server is shutting down: wait no longer
        for lane in self.lanes:
            lane.finish()
        for handler in reversed(self._inline):
            self.call(handler, "end", ended_by)

    def call(self, handler, name, *args):
        """Call one handler's method; False if it raised (logged, and the handler dropped)."""
        try:
            getattr(handler, name)(self.stream, *args)
        except Exception:
            self.failed(handler, name)
            return False
        return True

    def failed(self, handler, name):
        """Log a handler's exception (with its traceback) once; give it no more events."""
        self.stream.log.error(
            "handler %s failed in %s(); it gets no more events for this stream",
            handler_name(handler),
            name,
            exc_info=True,
        )
        self.stream.handler_problems[handler_name(handler)] = f"failed in {name}()"
        if handler in self._inline:
            self._broken.add(handler)  # its end() is still called
            self._bind_methods()


def every(seconds, callback, *args):
    """Call callback(*args) every `seconds` from now, in the event loop, until the returned
    timer is closed (timer.close()). The callback must return at once (no I/O to wait on).
    One that raises is treated as a handler's method that raised: logged once, with its
    traceback (on the stream's log when its first argument is the stream, named in the
    summary's handler problems), and not called again."""
    timer = gevent.get_hub().loop.timer(seconds, seconds)
    timer.start(_tick, timer, seconds, callback, args)
    return timer


def _tick(timer, seconds, callback, args):
    try:
        callback(*args)
    except Exception:
        timer.close()
        owner = getattr(callback, "__self__", None)
        name = type(owner).__name__ if owner is not None else callback.__qualname__
        stream = args[0] if args and isinstance(args[0], MediaStream) else None
        (stream.log if stream else log).error(
            "handler %s failed in its timer (%s every %g s); it is not called again",
            name,
            callback.__name__,
            seconds,
            exc_info=True,
        )
        if stream is not None:
            stream.handler_problems[name] = f"failed in its timer ({callback.__name__})"


class Lane:
    """The queue and greenlet of one handler that may block: its events, in order."""

    def __init__(self, handlers, handler):
        self.handlers = handlers
        self.handler = handler
        self.queue = deque()
        self.dropped = 0
        self.failed = False
        self.busy_in = None  # the method it is in, if any
        self._arrived = Event()
        self.greenlet = gevent.spawn(self._run)

    def put(self, name, args):
        if name != "end" and (self.failed or not self.handler.active):
            return  # it gets nothing more, but its end() always
        if name == "media" and len(self.queue) >= self.handler.max_queued:
            self._drop()
            return
        self.queue.append((name, args))
        self._arrived.set()

    def _drop(self):
        if not self.dropped:
            self.handlers.stream.log.warning(
                "handler %s is %d events behind: dropping media for it until it catches up",
                handler_name(self.handler),
                len(self.queue),
            )
        self.dropped += 1

    def _run(self):
        while True:
            while not self.queue:
                self._arrived.clear()
                self._arrived.wait()
            name, args = self.queue.popleft()
            self.busy_in = name
            worked = self.handlers.call(self.handler, name, *args)
            self.busy_in = None
            if name == "end":
                return
            if not worked:
                self.failed = True
                self.queue = deque(event for event in self.queue if event[0] == "end")

    def finish(self):
        """At the end of the stream: note what was dropped; give up on a queue still long."""
        if not self.greenlet.dead:
            left = [event for event in self.queue if event[0] != "end"]
            self.dropped += len(left)
            self.queue = deque(event for event in self.queue if event[0] == "end")
            self.handlers.stream.log.warning(
                "handler %s still in %s() %g s after the stream ended; the summary does "
                "not wait for it (%d queued events dropped)",
                handler_name(self.handler),
                self.busy_in,
                END_WAIT_SECONDS,
                len(left),
            )
        if self.dropped:
            self.handlers.stream.handler_problems.setdefault(
                handler_name(self.handler), f"{self.dropped} events dropped (fell behind)"
            )
