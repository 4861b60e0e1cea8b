"""`python app.py` with test handlers after the default ones, named on the command line:

python tests/handler_app.py Recorder Sleepy
"""

import sys
from pathlib import Path

import gevent

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import DEFAULT_HANDLERS, main  # noqa: E402
from mediastream.handlers import Handler, every  # noqa: E402
from mediastream.simulator import tone  # noqa: E402


class Recorder(Handler):
    """Logs each event it gets (media only as its chunk number), to check order and end."""

    def start(self, stream, event):
        stream.log.info("Recorder: start")

    def media(self, stream, chunk):
        stream.log.info("Recorder: media %s %d", chunk.track, chunk.chunk)

    def dtmf(self, stream, event):
        stream.log.info("Recorder: dtmf %s", event.digit)

    def mark(self, stream, event):
        stream.log.info("Recorder: mark %s", event.name)

    def stop(self, stream, event):
        stream.log.info("Recorder: stop")

    def end(self, stream, ended_by):
        stream.log.info("Recorder: end, ended by %s", ended_by)


class RecorderInline(Recorder):
    """The same, on the reading greenlet: each line's time is when the server read it."""

    may_block = False


class Sleepy(Recorder):
    """Waits 0.4 s on every media message, as a call to a slow web service would."""

    def media(self, stream, chunk):
        gevent.sleep(0.4)
        super().media(stream, chunk)


class SleepyInline(Handler):
    """Wrongly says it never blocks, then waits 0.4 s on every message."""

    may_block = False

    def connected(self, stream, event):
        gevent.sleep(0.4)

    def media(self, stream, chunk):
        gevent.sleep(0.4)


class Broken(Handler):
    """Raises on the third chunk."""

    def media(self, stream, chunk):
        if chunk.chunk == 3:
            raise ValueError("chunk 3 is cursed")

    def end(self, stream, ended_by):
        stream.log.info("Broken: end, ended by %s", ended_by)


class BrokenInline(Broken):
    """The same, running on the reading greenlet."""

    may_block = False


class Talker(Handler):
    """Says 0.1 s of tone and marks it; at a key, says more, marks it, and clears."""

    def start(self, stream, event):
        stream.talkback.audio(pcm=tone(0.1))
        stream.talkback.mark("greeting")

    def dtmf(self, stream, event):
        stream.talkback.audio(pcm=tone(0.1))
        stream.talkback.mark("second")
        stream.talkback.clear()


class SlowListener(Handler):
    """Takes 0.5 s over each utterance, as a call to a language model would."""

    def utterance(self, stream, utterance):
        gevent.sleep(0.5)
        stream.log.info(
            "SlowListener: %s %.2f %s", utterance.track, utterance.start, utterance.text
        )

    def end(self, stream, ended_by):
        stream.log.info("SlowListener: end")


class BrokenListener(Handler):
    """Raises on the first utterance."""

    may_block = False

    def utterance(self, stream, utterance):
        raise ValueError("no words today")


class BrokenTimer(Handler):
    """Every 0.2 s, a timer whose callback raises at its second tick."""

    may_block = False

    def start(self, stream, event):
        self.ticks = 0
        self.timer = every(0.2, self._tick, stream)

    def _tick(self, stream):
        self.ticks += 1
        if self.ticks == 2:
            raise ValueError("the second tick is cursed")
        stream.log.info("BrokenTimer: tick %d", self.ticks)

    def end(self, stream, ended_by):
        self.timer.close()
        stream.log.info("BrokenTimer: end after %d ticks", self.ticks)


class Unmakeable(Handler):
    def __init__(self, config):
        raise RuntimeError("no")


if __name__ == "__main__":
    main(handlers=[*DEFAULT_HANDLERS, *(globals()[name] for name in sys.argv[1:])])
