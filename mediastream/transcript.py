"""A handler: what each track says, a console line per utterance, while the call goes on.

Optional: `TRANSCRIBE` names the engine (engines.py): a Whisper model name or directory, to
run in this process (the packages of requirements-transcribe.txt), or the http(s):// base
URL of a server that speaks OpenAI's transcription API. Without it the server runs as
ever; an engine that cannot be had is said in one line at startup.

- Speech activity (speech.py, which must run before this handler) cuts each track into
  utterances: a turn of speech, with a little audio before and after it, and cut every
  MAX_FRAMES so that a monologue is shown in pieces; turns shorter than MIN_FRAMES are
  left out (a cough, a click).
- Each utterance goes to the engine, which works off the socket-reading path, so reading
  sockets never waits for it.
- Each utterance's text becomes an Utterance, which every handler of the stream gets
  (`utterance()`; keywords.py and sentiment.py are two), then its console line
  `[tag] inbound 00:12.4: "Hi, I'm calling about my order."`, per stream in the order the
  utterances ended. With RECORDINGS_DIR set, each stream also gets
  <streamSid>-transcript.jsonl beside its WAVs, a line written as each utterance is
  transcribed, with what the handlers found in it (keywords, sentiment).
- It degrades, never stalls: past TRANSCRIBE_BACKLOG_SECONDS of audio waiting for the
  engine (the whole server's), utterances are skipped; an utterance the engine fails on
  (a transcription server down, slow, refusing) is skipped too. Each is counted, with one
  WARNING per stream and kind, and passed on in its place to every handler's
  untranscribed() (the agent tells its caller it did not catch that); the call streams
  and records as ever."""

import json
import logging
import time
from dataclasses import asdict, dataclass, field

import gevent
from gevent import GreenletExit
from gevent.event import AsyncResult

from mediastream.apiclient import ServiceFailed
from mediastream.console import counted
from mediastream.endings import last_words, unfinished
from mediastream.engines import load_engine, transcribing
from mediastream.g711 import CHUNK_SAMPLES, CHUNK_SECONDS, CHUNKS_PER_SECOND
from mediastream.handlers import Handler
from mediastream.keywords import marked
from mediastream.metrics import AGENT_PAUSES, TRANSCRIBED, UNTRANSCRIBED
from mediastream.recording import create_new
from mediastream.speech import ONSET_FRAMES, clock

PREROLL_FRAMES = 15  # 300 ms before a turn: speech activity starts a turn 60 ms in
TAIL_FRAMES = 10  # 200 ms after it: the end of the last word
MIN_FRAMES = 15  # 300 ms: shorter is not words
MAX_FRAMES = 15 * CHUNKS_PER_SECOND  # a monologue is shown every 15 s
# A call's last words are often said just before it ends ("thanks, bye"): its summary
# waits this long for their text (a slow CPU's Whisper takes 2 s or more an utterance).
LAST_WORDS_SECONDS = 10.0
FRAME_BYTES = 2 * CHUNK_SAMPLES
# Streams whose caller waits for an answer to each utterance (the agent's): their inbound
# utterances are transcribed early, at the first unvoiced frame of a pause (the detector
# says "voiced" VAD_OVERHANG_FRAMES past the speech, so it ended 120 ms before), with the
# audio so far; the text is kept if that pause goes on to end the turn, so it is ready
# about when the turn ends. (On the evaluation set, a tail of 120 ms instead of 200 ms
# changed the word error rate by one word in 32 sentences.)
# On those streams a turn whose early text plainly stops mid-sentence ("my order number
# is ...", endings.py) is held: if the caller goes on within AGENT_PATIENCE, both halves
# are one utterance, transcribed as one piece of audio, and the agent answers it once.
EARLY_MODES = ("agent",)
EARLY_PAUSE_FRAMES = 1

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
    problem: str | None = None  # why it has no text, for untranscribed()

    def figures(self):
        """For the transcript file and the JSON logs: what is known of it, rounded."""
        known = {key: value for key, value in asdict(self).items() if value not in (None, [])}
        return {key: round(v, 3) if isinstance(v, float) else v for key, v in known.items()}


class Utterances:
    """One track's audio, cut into utterances along speech activity's turns (no I/O).

    With `holds`, a turn that has ended is not cut at once: it is `held` until close()
    (the caller may be only pausing); if they speak again first, their new speech joins
    it, and the utterance runs on."""

    def __init__(self, holds=False):
        self.audio = bytearray()  # from frame `first` on
        self.first = 0
        self.cut_at = None  # where the utterance under way starts, when one is
        self.speech_start = None  # where its speech starts
        self.holds = holds
        self.held = None  # (start, end) of its speech, while an ended turn is held

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
            self.held = None  # (they went on after a pause: the same utterance)
            if frame + 1 - self.cut_at >= MAX_FRAMES:  # a monologue: show what it has said
                return self._cut(frame + 1, frame + 1, frame + 1)
            return None
        if self.cut_at is not None and speech.last_turn:  # the turn ended a moment ago
            if self.holds:
                self.held = self.held or (self.speech_start, speech.last_turn[1])
                return None
            return self._end_of(speech.last_turn, frame + 1)
        # Between turns, keep only what a turn seen at the next frame would want (speech
        # activity sees a turn ONSET_FRAMES after its start).
        self._keep_from(frame + 1 - PREROLL_FRAMES - ONSET_FRAMES)
        return None

    def guess(self, speech):
        """The utterance under way, its audio so far, at the first frame of a pause that
        may end it (EARLY_PAUSE_FRAMES): (pcm, start, end); else None."""
        turn = speech.turn
        if self.cut_at is None or turn is None or speech.pause != EARLY_PAUSE_FRAMES:
            return None
        end = turn[1]
        if end - self.speech_start < MIN_FRAMES:
            return None
        return bytes(self.audio[(self.cut_at - self.first) * FRAME_BYTES :]), self.speech_start, end

    def close(self):
        """Cut the held utterance: (pcm, start, end) as add() gives it, or None (a blip)."""
        held, self.held = self.held, None
        return self._end_of(held, held[1] + TAIL_FRAMES)

    def finish(self, speech):
        """At the stream's end: the utterance under way, if any."""
        if self.held:
            return self.close()
        if self.cut_at is None or speech.turn is None:
            return None
        return self._end_of(speech.turn, speech.turn[1] + TAIL_FRAMES)

    def _end_of(self, turn, heard):
        """The utterance that `turn` (start, end) ends; the audio to `heard` is there. A
        blip, shorter than MIN_FRAMES with what it joined, is none."""
        start, end = min(turn[0], self.speech_start), turn[1]
        utterance = self._cut(min(end + TAIL_FRAMES, heard), None, end)
        return utterance if end - start >= MIN_FRAMES else None

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
        return transcribing(config)

    def __init__(self, config):
        super().__init__(config)
        self.engine = load_engine(config)
        self.tracks = {}  # track name -> Utterances
        self.pending = []  # [track, start, end, result, ended at], in the order cut
        self.transcribed = self.skipped = 0
        self.warned = set()  # what this stream has been warned of: "backlog", engine failures
        self.file = None
        self.early = False  # transcribe the caller's utterances early (EARLY_MODES)
        self.guessed = None  # (start, end) of the early one, and its result
        self.patience = round(config.agent_patience / CHUNK_SECONDS)  # in frames
        self.waiting_since = None  # the frame a held turn began to wait for the rest

    def start(self, stream, event):
        self.early = stream.mode in EARLY_MODES
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
        early = self.early and chunk.track == "inbound"
        utterances = self.tracks.get(chunk.track)
        if utterances is None:
            utterances = self.tracks[chunk.track] = Utterances(holds=early)
        finished = utterances.add(chunk.chunk - 1, chunk.pcm, speech)
        if finished:
            pcm, start, end = finished
            self._submit(stream, chunk.track, pcm, start, end, frames_ago=chunk.chunk - end)
        elif early:
            guess = utterances.guess(speech)
            if guess and self.engine.free:  # (a busy engine gets the turn once, at its end)
                pcm, start, end = guess
                self.guessed = (start, end), self.engine.submit(pcm, urgent=True)
            if utterances.held:
                self._hold_or_cut(stream, utterances, chunk.chunk)
            elif self.waiting_since is not None:  # they went on: one turn
                AGENT_PAUSES.labels("went_on").inc()
                self.waiting_since = None

    def _hold_or_cut(self, stream, utterances, frame):
        """The caller's turn has ended, or they are pausing: cut it now, unless its words so
        far stop mid-sentence (the early text says) and the caller has not yet had
        AGENT_PATIENCE to go on. Until the early text comes, wait for it (as ever)."""
        guessed = self.guessed
        if guessed is not None and guessed[0] == utterances.held:
            if not guessed[1].ready():
                return
            text = guessed[1].get()  # (or the exception the engine returned)
            if self.patience and isinstance(text, str) and unfinished(text):
                if self.waiting_since is None:
                    self.waiting_since = frame
                    # (The agent's patience: operators read it as the agent's line.)
                    stream.log.info(
                        'agent: the caller paused mid-sentence ("%s"); waiting up to %g s '
                        "for the rest",
                        last_words(text),
                        self.patience * CHUNK_SECONDS,
                    )
                if frame - self.waiting_since < self.patience:
                    return
                AGENT_PAUSES.labels("waited_out").inc()
        self.waiting_since = None
        finished = utterances.close()
        if finished:
            pcm, start, end = finished
            self._submit(stream, "inbound", pcm, start, end, frames_ago=frame - end)

    def finish(self, stream):
        """The utterances under way when the stream ended, to every handler before end()."""
        for track, utterances in self.tracks.items():
            finished = utterances.finish(stream.tracks[track].speech)
            if finished:
                self._submit(stream, track, *finished, frames_ago=0)
        try:  # the last utterances take a moment; wait a while, not forever
            gevent.wait([entry[3] for entry in self.pending], timeout=LAST_WORDS_SECONDS)
        except GreenletExit:
            pass  # the server is shutting down: wait no longer
        self._pass_on_ready(stream)

    def end(self, stream, ended_by):
        stream.log.info(
            "transcript: %s transcribed, %d skipped%s",
            counted(self.transcribed, "utterance"),
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
        result = self._early_result(track, start, end)
        if result is None:  # (an agent's caller waits for it: never skipped)
            result = self.engine.submit(pcm, urgent=self.early and track == "inbound")
        if result is None:  # the engine is too far behind: skipped, in its place
            result = AsyncResult()
            backlog = f"over {self.engine.backlog_seconds:g} s of audio waiting for the engine"
            result.set(ServiceFailed("backlog", backlog))
        # When the speech ended, `frames_ago` in real time (speech activity ends a turn
        # only after a pause): the latency of its line counts from there.
        ended_at = time.monotonic() - frames_ago * CHUNK_SECONDS
        self.pending.append([track, start, end, result, ended_at])
        result.rawlink(lambda _: self._pass_on_ready(stream))

    def _early_result(self, track, start, end):
        """The early transcription of this very utterance, if there is one."""
        if not self.early or track != "inbound":
            return None
        guessed, self.guessed = self.guessed, None
        return guessed[1] if guessed and guessed[0] == (start, end) else None

    def _failed(self, stream, utterance, problem):
        """An utterance the engine could not transcribe, or that was skipped: counted,
        said once per stream for each kind of failure (an engine that is down fails every
        one), and passed on to the handlers' untranscribed()."""
        self.skipped += 1
        kind = problem.kind if isinstance(problem, ServiceFailed) else type(problem).__name__
        TRANSCRIBED.labels("skipped" if kind == "backlog" else "failed").inc()
        UNTRANSCRIBED.labels("agent" if self.early else "other", kind).inc()
        if kind not in self.warned:
            self.warned.add(kind)
            if kind == "backlog":
                stream.log.warning(
                    "transcript: %s; skipping utterances (the call goes on)", problem
                )
            else:
                stream.log.warning(
                    "transcript: the engine failed: %s; skipping the utterances it fails on "
                    "(the call goes on)",
                    problem,
                )
        utterance.problem = str(problem)
        stream.handlers.untranscribed(utterance)

    def _pass_on_ready(self, stream):
        """The transcribed utterances, in the order they were cut: to every handler (the
        keywords and sentiment handlers fill in theirs), then the console and the file."""
        while self.pending and self.pending[0][3].ready():
            track, start, end, result, ended_at = self.pending.pop(0)
            text = result.get() if result.successful() else result.exception
            utterance = Utterance(
                track,
                start * CHUNK_SECONDS,
                end * CHUNK_SECONDS,
                "" if isinstance(text, BaseException) else text,
                latency=time.monotonic() - ended_at,
            )
            if isinstance(text, BaseException):
                self._failed(stream, utterance, text)
                continue
            self.transcribed += 1
            TRANSCRIBED.labels("transcribed").inc()
            stream.handlers.utterance(utterance)
            figures = utterance.figures()
            stream.log.info(
                '%s %s: "%s"',
                track,
                clock(utterance.start),
                marked(utterance.text, utterance.keywords),
                extra={"event": "utterance", "figures": figures},
            )
            if self.file:
                self.file.write(json.dumps(figures) + "\n")
                self.file.flush()
