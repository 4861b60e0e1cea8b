"""A handler: what each track says, a console line per utterance, while the call goes on.

Optional: `TRANSCRIBE` names a Whisper model (`tiny.en`: faster-whisper fetches it on first
use) or a local model directory (nothing is fetched), and the packages come from
requirements-transcribe.txt. Without them the server runs as ever; a missing package or
model is said in one line at startup.

- Speech activity (speech.py, which must run before this handler) cuts each track into
  utterances: a turn of speech, with a little audio before and after it, and cut every
  MAX_FRAMES so that a monologue is shown in pieces; turns shorter than MIN_FRAMES are
  left out (a cough, a click).
- Each utterance is upsampled to Whisper's 16 kHz and transcribed with faster-whisper
  (CTranslate2, int8, on the CPU) in a thread pool shared by every stream (CTranslate2
  releases the GIL), so reading sockets never waits for the model.
- Each utterance's text becomes an Utterance, which every handler of the stream gets
  (`utterance()`; keywords.py and sentiment.py are two), then its console line
  `[tag] inbound 00:12.4: "Hi, I'm calling about my order."`, per stream in the order the
  utterances ended. With RECORDINGS_DIR set, each stream also gets
  <streamSid>-transcript.jsonl beside its WAVs, a line written as each utterance is
  transcribed, with what the handlers found in it (keywords, sentiment).
- Under load it degrades, never stalls: past TRANSCRIBE_BACKLOG_SECONDS of audio waiting
  for the model (the whole server's), utterances are skipped, counted, with one WARNING
  per stream; the call streams and records as ever.
"""

import functools
import io
import json
import logging
import os
import time
import wave
from dataclasses import asdict, dataclass, field
from pathlib import Path

import gevent
from gevent import GreenletExit
from gevent.threadpool import ThreadPool

from mediastream.g711 import CHUNK_SAMPLES, CHUNK_SECONDS, CHUNKS_PER_SECOND, SAMPLE_RATE
from mediastream.handlers import END_WAIT_SECONDS, Handler
from mediastream.metrics import TRANSCRIBED
from mediastream.recording import create_new
from mediastream.speech import ONSET_FRAMES, clock

PREROLL_FRAMES = 15  # 300 ms before a turn: speech activity starts a turn 60 ms in
TAIL_FRAMES = 10  # 200 ms after it: the end of the last word
MIN_FRAMES = 15  # 300 ms: shorter is not words
MAX_FRAMES = 15 * CHUNKS_PER_SECOND  # a monologue is shown every 15 s
FRAME_BYTES = 2 * CHUNK_SAMPLES

log = logging.getLogger("mediastream")
startup = logging.getLogger("mediastream.startup")


@dataclass
class Utterance:
    """What one track said, for the handlers' utterance(): times in seconds into the call."""

    track: str
    start: float
    end: float
    text: str
    latency: float  # seconds from the end of the speech to the text
    keywords: list = field(default_factory=list)  # of KEYWORDS, as keywords.Keywords found
    sentiment: float | None = None  # VADER's compound score (-1 to 1), as sentiment.Sentiment

    def figures(self):
        """For the transcript file and the JSON logs: what is known of it, rounded."""
        known = {key: value for key, value in asdict(self).items() if value not in (None, [])}
        return {key: round(v, 3) if isinstance(v, float) else v for key, v in known.items()}


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

        wav = io.BytesIO()
        with wave.open(wav, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(SAMPLE_RATE)
            out.writeframes(pcm)
        wav.seek(0)
        return decode_audio(wav, sampling_rate=16000)
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


class Engine:
    """faster-whisper's model and the threads that run it, shared by every stream."""

    def __init__(self, model, threads, backlog_seconds, decoding=Decoding()):
        self.model = model
        self.pool = ThreadPool(threads)
        self.backlog_seconds = backlog_seconds
        self.decoding = decoding
        self.waiting_seconds = 0.0  # audio submitted and not yet transcribed

    def submit(self, pcm, prompt=None):
        """Transcribe 16-bit PCM at 8 kHz in the pool: an AsyncResult of its text, or None
        when the backlog is full."""
        seconds = len(pcm) / 2 / SAMPLE_RATE
        if self.waiting_seconds + seconds > self.backlog_seconds:
            return None
        self.waiting_seconds += seconds
        result = self.pool.spawn(transcribe, self.model, pcm, self.decoding, prompt)
        result.rawlink(lambda _: self._done(seconds))
        return result

    def _done(self, seconds):
        self.waiting_seconds -= seconds


@functools.cache
def load_engine(model, backlog_seconds):
    """The engine for TRANSCRIBE, loaded once; None (said in one line) when it cannot be."""
    if _looks_like_a_path(model) and not Path(model).expanduser().is_dir():
        startup.warning(
            "TRANSCRIBE=%s: no such directory (give a model directory, or a model name such "
            "as tiny.en): no transcripts",
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
    threads = len(os.sched_getaffinity(0))  # the cores this process may use
    try:
        whisper = WhisperModel(
            model, device="cpu", compute_type="int8", cpu_threads=1, num_workers=threads
        )
    except Exception as error:  # a model that is not there, or cannot be fetched
        reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        startup.warning(
            "TRANSCRIBE=%s: the model cannot be loaded (%s): no transcripts", model, reason
        )
        return None
    startup.info("transcribing each utterance with %s, %d at a time", model, threads)
    return Engine(whisper, threads, backlog_seconds)


def _looks_like_a_path(model):
    """A directory, not a model name: names (tiny.en, or a hub's org/model) look unlike it."""
    return model.startswith(("/", ".", "~")) or model.count("/") > 1


class Utterances:
    """One track's audio, cut into utterances along speech activity's turns (no I/O)."""

    def __init__(self):
        self.audio = bytearray()  # from frame `first` on
        self.first = 0
        self.cut_at = None  # where the utterance under way starts, when one is
        self.speech_start = None  # where its speech starts

    def add(self, frame, pcm, speech):
        """Take a frame (after speech activity has); return a finished utterance as
        (pcm, where its speech starts, where it ends) in frames, or None. The audio has a
        little more on either side."""
        if not self.audio:
            self.first = frame
        self.audio += pcm
        turn = speech.turn
        if turn is not None:
            if self.cut_at is None:  # a turn began
                self.cut_at = max(turn[0] - PREROLL_FRAMES, self.first)
                self.speech_start = turn[0]
            if frame + 1 - self.cut_at >= MAX_FRAMES:  # a monologue: show what it has said
                return self._cut(frame + 1, frame + 1, frame + 1)
            return None
        if self.cut_at is not None and speech.last_turn:  # the turn ended a moment ago
            return self._end_of(speech.last_turn, frame + 1)
        # Between turns, keep only what a turn seen at the next frame would want (speech
        # activity sees a turn ONSET_FRAMES after its start).
        self._keep_from(frame + 1 - PREROLL_FRAMES - ONSET_FRAMES)
        return None

    def finish(self, speech):
        """At the stream's end: the utterance under way, if any."""
        if self.cut_at is None or speech.turn is None:
            return None
        return self._end_of(speech.turn, speech.turn[1] + TAIL_FRAMES)

    def _end_of(self, turn, heard):
        start, end = turn
        utterance = self._cut(min(end + TAIL_FRAMES, heard), None, end)
        return utterance if end - start >= MIN_FRAMES else None  # shorter: a blip

    def _cut(self, end, next_start, speech_end):
        """The utterance from cut_at to `end`; the next one, if any, from `next_start`."""
        utterance = bytes(self._slice(self.cut_at, end)), self.speech_start, speech_end
        self.cut_at = self.speech_start = next_start
        self._keep_from(end)
        return utterance

    def _slice(self, start, end):
        return self.audio[(start - self.first) * FRAME_BYTES : (end - self.first) * FRAME_BYTES]

    def _keep_from(self, frame):
        if frame > self.first:
            del self.audio[: (frame - self.first) * FRAME_BYTES]
            self.first = frame


class Transcript(Handler):
    """A handler: the transcript of each track (with TRANSCRIBE set)."""

    may_block = False  # it only cuts audio and hands it to the pool

    @classmethod
    def enabled(cls, config):
        return bool(config.transcribe) and _engine(config) is not None

    def __init__(self, config):
        super().__init__(config)
        self.engine = _engine(config)
        self.tracks = {}  # track name -> Utterances
        self.pending = []  # [track, start, end, result, ended at], in the order cut
        self.transcribed = self.skipped = 0
        self.warned = False
        self.file = None

    def start(self, stream, event):
        if self.config.recordings_dir:
            try:
                self.file, _ = create_new(
                    self.config.recordings_dir, f"{stream.stream_sid}-transcript", ".jsonl", "w"
                )
            except OSError as error:
                stream.log.error("transcript file not written: %s", error)

    def media(self, stream, chunk):
        speech = stream.tracks[chunk.track].speech
        if speech is None:
            return  # speech activity has not seen this track
        utterances = self.tracks.get(chunk.track)
        if utterances is None:
            utterances = self.tracks[chunk.track] = Utterances()
        finished = utterances.add(chunk.chunk - 1, chunk.pcm, speech)
        if finished:
            pcm, start, end = finished
            self._submit(stream, chunk.track, pcm, start, end, frames_ago=chunk.chunk - end)

    def finish(self, stream):
        """The utterances under way when the stream ended, to every handler before end()."""
        for track, utterances in self.tracks.items():
            finished = utterances.finish(stream.tracks[track].speech)
            if finished:
                self._submit(stream, track, *finished, frames_ago=0)
        try:  # the last utterances take a moment; wait a while, not forever
            gevent.wait([entry[3] for entry in self.pending], timeout=END_WAIT_SECONDS)
        except GreenletExit:
            pass  # the server is shutting down: wait no longer
        self._pass_on_ready(stream)

    def end(self, stream, ended_by):
        stream.log.info(
            "transcript: %d utterances transcribed, %d skipped%s",
            self.transcribed,
            self.skipped,
            f", {len(self.pending)} unfinished" if self.pending else "",
            extra={
                "figures": {
                    "transcribed": self.transcribed,
                    "skipped": self.skipped,
                    "unfinished": len(self.pending),
                }
            },
        )
        if self.file:
            self.file.close()
            self.file = None

    def _submit(self, stream, track, pcm, start, end, frames_ago):
        result = self.engine.submit(pcm)
        if result is None:
            self.skipped += 1
            TRANSCRIBED.labels("skipped").inc()
            if not self.warned:
                self.warned = True
                stream.log.warning(
                    "transcript: over %g s of audio waiting for the engine; skipping "
                    "utterances (the call goes on)",
                    self.engine.backlog_seconds,
                )
            return
        # When the speech ended, `frames_ago` in real time (speech activity ends a turn
        # only after a pause): the latency of its line counts from there.
        ended_at = time.monotonic() - frames_ago * CHUNK_SECONDS
        self.pending.append([track, start, end, result, ended_at])
        result.rawlink(lambda _: self._pass_on_ready(stream))

    def _pass_on_ready(self, stream):
        """The transcribed utterances, in the order they were cut: to every handler (the
        keywords and sentiment handlers fill in theirs), then the console and the file."""
        while self.pending and self.pending[0][3].ready():
            track, start, end, result, ended_at = self.pending.pop(0)
            if not result.successful():
                stream.log.error("transcript: the engine failed: %s", result.exception)
                self.skipped += 1
                continue
            self.transcribed += 1
            TRANSCRIBED.labels("transcribed").inc()
            utterance = Utterance(
                track,
                start * CHUNK_SECONDS,
                end * CHUNK_SECONDS,
                result.get(),
                latency=time.monotonic() - ended_at,
            )
            stream.handlers.utterance(utterance)
            figures = utterance.figures()
            stream.log.info(
                '%s %s: "%s"',
                track,
                clock(utterance.start),
                utterance.text,
                extra={"event": "utterance", "figures": figures},
            )
            if self.file:
                self.file.write(json.dumps(figures) + "\n")
                self.file.flush()


def _engine(config):
    return load_engine(config.transcribe, config.transcribe_backlog_seconds)
