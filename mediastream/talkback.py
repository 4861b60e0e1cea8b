"""The way back to Twilio, on a bidirectional stream: audio, marks and clear.

Only `<Connect><Stream>` streams are bidirectional, and nothing in Twilio's messages says
which a stream is: the TwiML declares it with a custom parameter, `mode` (see
twiml/connect-stream.xml). On any other stream, sending is refused here, with one line,
and nothing reaches the socket (Twilio would reject it: error 31924).

A handler sends through `stream.talkback`:

    stream.talkback.audio(pcm=...)      # 16-bit PCM at 8 kHz, or mulaw=...; any length
    stream.talkback.mark("prompt-end")  # echoed by Twilio once the audio before it played
    stream.talkback.clear()             # Twilio drops the audio it has not played yet
    stream.talkback.pending_marks       # marks sent and not yet echoed, oldest first

Built on it: Echo (mode=echo), and Prompt (mode=prompt), which plays a greeting and stops
it when the caller talks over it.

Audio is encoded to mu-law, cut into Twilio's 20 ms chunks, base64'd and sent as `media`
messages with the stream's SID. Messages are queued for the connection's writer, so
sending never holds up the reading of the socket. When Twilio echoes a mark, the mark
event that handlers get says whether its audio was played, or released unplayed by a
clear (Twilio echoes those too, at once: they were not heard).
"""

import base64
import functools
import wave
from pathlib import Path

import orjson

from mediastream import g711
from mediastream.handlers import Handler


class Talkback:
    """What a stream sends back to Twilio, and the marks Twilio has yet to echo."""

    def __init__(self, stream, send_text):
        self.stream = stream
        self._send_text = send_text  # queues a text message for the connection's writer
        self.pending_marks = []  # sent, not yet echoed, oldest first
        self._released = set()  # pending marks a clear released: their echo is no playing
        self.seconds_sent = 0.0
        self.marks_sent = self.marks_played = self.marks_cleared = self.clears = 0
        self._refused = False

    def audio(self, pcm=None, mulaw=None):
        """Send audio to the caller: 16-bit little-endian PCM at 8 kHz, or mu-law bytes
        (no file header). False, with one line, if the stream is not bidirectional."""
        if not self._allowed("audio"):
            return False
        ulaw = g711.encode(pcm) if mulaw is None else mulaw
        for start in range(0, len(ulaw), g711.CHUNK_SAMPLES):
            payload = base64.b64encode(ulaw[start : start + g711.CHUNK_SAMPLES]).decode()
            self._send({"event": "media", "media": {"payload": payload}})
        self.seconds_sent += len(ulaw) / g711.SAMPLE_RATE
        return True

    def mark(self, name):
        """Ask Twilio to say when the audio sent so far has played: a mark event named
        `name` comes back then."""
        if not self._allowed("a mark"):
            return False
        self._send({"event": "mark", "mark": {"name": name}})
        self.pending_marks.append(name)
        self.marks_sent += 1
        return True

    def clear(self):
        """Ask Twilio to drop the audio it has not played yet; the pending marks come
        back at once, unplayed."""
        if not self._allowed("clear"):
            return False
        self._send({"event": "clear"})
        self._released.update(self.pending_marks)
        self.clears += 1
        return True

    def echoed(self, name):
        """Twilio echoed mark `name`: True if its audio played, False if a clear released
        it, None if it is no mark of ours."""
        if name not in self.pending_marks:
            return None
        self.pending_marks.remove(name)
        if name in self._released:
            self._released.discard(name)
            self.marks_cleared += 1
            return False
        self.marks_played += 1
        return True

    def _send(self, message):
        message["streamSid"] = self.stream.stream_sid
        self._send_text(orjson.dumps(message).decode())

    def _allowed(self, what):
        if self.stream.bidirectional:
            return True
        if not self._refused:
            self._refused = True
            self.stream.log.warning(
                "not sent: %s on a one-way stream (Twilio would reject it: error 31924); "
                'a <Connect><Stream> with <Parameter name="mode"> is bidirectional',
                what,
            )
        return False


class Echo(Handler):
    """A handler: on a stream whose TwiML says mode=echo, the caller hears themself, each
    chunk sent back as it arrives (the delay is the round trip): the simplest proof that
    both directions work, and a latency test."""

    may_block = False

    def start(self, stream, event):
        self.active = stream.mode == "echo"

    def media(self, stream, chunk):
        if chunk.track == "inbound":
            stream.talkback.audio(mulaw=chunk.audio)


class Prompt(Handler):
    """A handler: on a stream whose TwiML says mode=prompt, the caller hears a greeting
    (greeting.wav), marked at its end; if they talk over it (speech activity sees them
    start a turn while it plays), it is cleared: barge-in, so that a caller never has to
    listen to a bot's buffered audio for seconds."""

    may_block = False
    MARK = "prompt-end"

    def __init__(self, config):
        super().__init__(config)
        self.playing = False
        self.started = 0  # the inbound frame the prompt started at

    def start(self, stream, event):
        self.active = stream.mode == "prompt"
        if self.active:
            sent = stream.talkback.audio(mulaw=greeting_mulaw())
            self.playing = sent and stream.talkback.mark(self.MARK)

    def media(self, stream, chunk):
        if not self.playing or chunk.track != "inbound":
            return
        if not self.started:
            self.started = chunk.chunk
        speech = stream.tracks["inbound"].speech
        if speech is not None and speech.turn is not None:  # the caller talks over it
            stream.talkback.clear()
            self.playing = False
            began = speech.turn[0] + 1  # the chunk their speech began with
            stream.log.info(
                "barge-in: the caller spoke %.2f s into the prompt; cleared %d ms later",
                (began - self.started) * g711.CHUNK_SECONDS,
                (chunk.chunk - began) * g711.CHUNK_MS,
            )

    def mark(self, stream, event):
        if event.name == self.MARK:
            self.playing = False


@functools.cache
def greeting_mulaw():
    """The prompt's audio as Twilio takes it (mu-law, 8000 Hz, mono): encoded once."""
    with wave.open(str(Path(__file__).with_name("greeting.wav"))) as wav:
        return g711.encode(wav.readframes(wav.getnframes()))
