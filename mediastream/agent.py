"""A handler: on a stream whose TwiML says mode=agent, the caller talks with a model.

The caller hears AGENT_GREETING, then each thing they say (an utterance of the inbound
track, from the transcript) is answered out loud: the conversation so far goes to the
model (chat.py), each sentence of its answer to the voice (voices.py) as soon as the
model has finished it, and each sentence's audio to the caller as it comes, followed by
a mark, so that the server knows what the caller has heard (dialogue.py).

- Barge-in: a caller who talks over the answer for BARGE_IN_FRAMES (0.3 s: shorter is a
  cough or a "mhm") stops it: `clear`, the model's stream and the voice cancelled, and
  the history keeps only the words the caller heard.
- One answer to a whole turn: a caller who goes on speaking before any of the answer has
  played (a pause mid-sentence), or just as it began (WENT_ON_SECONDS), cancels it; what
  they say next joins what they said.
- Each answer's timing, from the end of the caller's speech, is a console line and the
  mediastream_agent_seconds histogram, per stage: end of turn (speech activity saw the
  pause), transcript, first token, first sentence, first audio (voice to voice).
- A model or voice that fails gets one WARNING per stream and kind; after a model's
  failure the caller hears a short apology. The call goes on.
"""

import functools
import logging
import statistics
import time
from dataclasses import dataclass, field

import gevent

from mediastream.apiclient import ServiceFailed
from mediastream.chat import load_model
from mediastream.console import counted
from mediastream.dialogue import Conversation, Playback, Sentences
from mediastream.engines import transcribing
from mediastream.g711 import CHUNK_MS, CHUNK_SECONDS, SAMPLE_RATE
from mediastream.handlers import Handler
from mediastream.metrics import AGENT_INTERRUPTIONS, AGENT_SECONDS
from mediastream.transcript import MIN_FRAMES
from mediastream.voices import load_voice

startup = logging.getLogger("mediastream.startup")

BARGE_IN_FRAMES = MIN_FRAMES  # 0.3 s of the caller's speech over an answer stops it
WENT_ON_SECONDS = 0.25  # a turn begun this soon after an answer's first audio is no reply
APOLOGY = "Sorry, I can't answer that right now."
STAGES = ("end_of_turn", "transcript", "first_token", "first_sentence", "first_audio")


@dataclass
class Turn:
    """One answer's timing: each stage's seconds after the caller stopped speaking."""

    number: int
    speech_end: float  # time.monotonic() when the caller's speech ended
    stages: dict = field(default_factory=dict)

    def reached(self, stage, seconds=None):
        """Note a stage (the first time only), now or `seconds` after the speech end."""
        if seconds is None:
            seconds = time.monotonic() - self.speech_end
        self.stages.setdefault(stage, seconds)

    def line(self):
        stages = ", ".join(
            f"{stage.replace('_', ' ')} {self.stages[stage]:.2f}"
            for stage in STAGES
            if stage in self.stages
        )
        return f"turn {self.number}: voice to voice {self.stages['first_audio']:.2f} s ({stages})"


@functools.cache
def load_agent(config):
    """(model, voice) for mode=agent streams, or (None, why not): said once, at startup."""
    if not config.agent:
        return None, "AGENT is not set"
    missing = []
    if not config.speak:
        missing.append("SPEAK is not set (the agent has no voice)")
    if not transcribing(config):
        missing.append("transcripts are off (set TRANSCRIBE, such as TRANSCRIBE=local)")
    model = load_model(config)
    voice = load_voice(config) if config.speak else None
    if model is None or (config.speak and voice is None):
        missing.append("the embedded model or voice could not be loaded")
    if missing:
        why = "; ".join(missing)
        startup.warning("AGENT=%s, but %s: mode=agent streams get no answer", config.agent, why)
        return None, why
    startup.info("agent: model %s; voice %s", model.name, voice.name)
    return model, voice


class Agent(Handler):
    """A handler: the conversation of a mode=agent stream (see the module's docstring)."""

    may_block = False  # it answers in greenlets of its own; per chunk it only looks

    @classmethod
    def enabled(cls, config):
        load_agent(config)  # said at startup; a mode=agent stream without it is told why
        return True

    def __init__(self, config):
        super().__init__(config)
        self.conversation = Conversation(config.agent_prompt)
        self.playback = None  # the answer under way, until it has played or been cut
        self.answering = None  # the greenlet that asks the model and the voice for it
        self.unanswered = False  # the caller's last words lost their answer to a pause
        self.last_turn = None  # the caller's last finished turn, as speech activity saw it
        self.turn_ended = None  # (speech end frame, seconds after it the turn ended)
        self.voice_to_voice = []  # seconds, each answered turn
        self.interruptions = 0
        self.marks = 0
        self.warned = set()
        self.talking = False  # a mode=agent stream, with a model and a voice

    def start(self, stream, event):
        self.active = stream.mode == "agent"
        if not self.active:
            return
        self.model, self.voice = found = load_agent(self.config)
        if self.model is None:
            stream.log.warning("agent: mode=agent, but %s: nobody answers", found[1])
            self.active = False
            return
        self.talking = True
        self._answer(stream, None)  # the greeting

    def media(self, stream, chunk):
        if chunk.track != "inbound":
            return
        speech = stream.tracks["inbound"].speech
        if speech is None:
            return
        if speech.last_turn is not self.last_turn:
            self._caller_paused(stream, chunk, speech.last_turn)
        turn = speech.turn
        if turn is None or self.playback is None:
            return
        if not self.playback.audible:  # they go on: answer the whole turn, later
            self._cancel()
        elif self._began_with_the_answer(chunk, turn):
            self._went_on(stream)
        elif chunk.chunk - turn[0] >= BARGE_IN_FRAMES:
            self._interrupt(stream, cleared_ms=(chunk.chunk - 1 - turn[0]) * CHUNK_MS)

    def utterance(self, stream, utterance):
        if utterance.track != "inbound" or stream.stopped or stream.ended_at is not None:
            return  # (the last utterances come as the stream ends: nobody is listening)
        if self.playback is not None:
            if self.playback.audible:
                self._interrupt(stream)
            else:
                self._cancel()
        if utterance.text:
            self.conversation.caller_said(utterance.text)
        elif not self.unanswered:
            return  # noise, transcribed as nothing
        if stream.tracks["inbound"].speech.turn is not None:
            self.unanswered = True  # they already go on: answer all of it when they stop
            return
        self.unanswered = False
        turn = Turn(len(self.voice_to_voice) + 1, time.monotonic() - utterance.latency)
        if self.turn_ended and self.turn_ended[0] == round(utterance.end / CHUNK_SECONDS):
            turn.reached("end_of_turn", self.turn_ended[1])
        turn.reached("transcript", utterance.latency)
        self._answer(stream, turn)

    def mark(self, stream, event):
        if self.playback is not None and event.played:
            self.playback.played(event.name, time.monotonic())
            self._done_if_played(stream, self.playback)

    def end(self, stream, ended_by):
        if not self.talking:
            return
        if self.answering is not None:
            self.answering.kill(block=False)
        median = statistics.median(self.voice_to_voice) if self.voice_to_voice else 0.0
        stream.log.info(
            "agent: %s, voice to voice median %.2f s; interrupted %s",
            counted(len(self.voice_to_voice), "turn"),
            median,
            counted(self.interruptions, "time"),
            extra={
                "figures": {
                    "turns": len(self.voice_to_voice),
                    "voice_to_voice_median": round(median, 3),
                    "interruptions": self.interruptions,
                }
            },
        )

    # The caller's turns ------------------------------------------------------------

    def _caller_paused(self, stream, chunk, last_turn):
        """Speech activity ended a turn of the caller's: note when (its utterance comes
        later, once transcribed); a short one that cut in before an answer began (a
        cough) brings no utterance, so the answer it cancelled starts again."""
        self.last_turn = last_turn
        start, end = last_turn
        self.turn_ended = end, (chunk.chunk - end) * CHUNK_SECONDS
        if self.unanswered and end - start < MIN_FRAMES and self.playback is None:
            self.unanswered = False
            speech_end = time.monotonic() - self.turn_ended[1]
            self._answer(stream, Turn(len(self.voice_to_voice) + 1, speech_end))

    def _cancel(self):
        """Drop an answer of which nothing has played yet."""
        self.answering.kill(block=False)
        self.answering = self.playback = None
        self.unanswered = True

    def _began_with_the_answer(self, chunk, turn):
        """Whether the caller's turn began as the answer did (too soon to be a reply to
        it: they had paused, and went on) and the answer is to their words."""
        began = time.monotonic() - (chunk.chunk - 1 - turn[0]) * CHUNK_SECONDS
        first_audio = self.playback.pieces[0].sent_at
        answering_them = self.conversation.messages[-1]["role"] == "user"
        return answering_them and began <= first_audio + WENT_ON_SECONDS

    def _went_on(self, stream):
        """The caller went on with their turn as its answer began: stop the answer and
        forget it (one answer to the whole turn comes once they stop)."""
        stream.talkback.clear()
        self._cancel()
        if self.voice_to_voice:
            self.voice_to_voice.pop()  # that turn is not answered yet
        stream.log.info(
            "agent: the caller went on with their turn as the answer began; cleared, "
            "their next words join it"
        )

    def _interrupt(self, stream, cleared_ms=None):
        """Barge-in: stop the answer; the history keeps what the caller heard of it."""
        stream.talkback.clear()
        self.answering.kill(block=False)
        heard = self.playback.heard(time.monotonic())
        self.conversation.answered(heard)
        self.interruptions += 1
        AGENT_INTERRUPTIONS.inc()
        when = f"; cleared {cleared_ms} ms after their first word" if cleared_ms is not None else ""
        said = self.playback.text()
        stream.log.info(
            'barge-in: the caller talked over the agent%s; they heard %d of %d words: "%s"',
            when,
            len(heard.split()),
            len(said.split()),
            heard,
        )
        self.answering = self.playback = None

    # The answer ----------------------------------------------------------------------

    def _answer(self, stream, turn):
        """Answer the conversation so far (or, with no turn, say the greeting)."""
        self.playback = Playback()
        self.answering = gevent.spawn(self._speak_answer, stream, self.playback, turn)

    def _speak_answer(self, stream, playback, turn):
        if turn is None:
            self._say(stream, playback, self.config.agent_greeting, None)
        else:
            try:
                for sentence in self._sentences(turn):
                    if not self._say(stream, playback, sentence, turn):
                        break
            except ServiceFailed as failure:
                self._warn(stream, "the model", failure)
                self._say(stream, playback, APOLOGY, turn)
        playback.complete = True
        self._done_if_played(stream, playback)

    def _sentences(self, turn):
        """The model's answer, a sentence at a time, as it writes it."""
        sentences = Sentences()
        for text in self.model.stream(self.conversation.messages):
            turn.reached("first_token")
            for sentence in sentences.add(text):
                turn.reached("first_sentence")
                yield sentence
        for sentence in sentences.finish():
            turn.reached("first_sentence")
            yield sentence

    def _say(self, stream, playback, text, turn):
        """One sentence to the caller, as its audio comes, then its mark; False if the
        voice failed."""
        began = False
        try:
            for pcm in self.voice.speak(text):
                if not pcm:
                    continue
                if not began:
                    began = True
                    playback.begin_piece(text, time.monotonic())
                    if turn is not None and "first_audio" not in turn.stages:
                        self._first_audio(stream, turn)
                stream.talkback.audio(pcm=pcm)
                playback.add_audio(len(pcm) / 2 / SAMPLE_RATE)
        except ServiceFailed as failure:
            self._warn(stream, "the voice", failure)
            spoke = False
        else:
            spoke = True
        if began:
            self.marks += 1
            mark = f"agent-{self.marks}"
            stream.talkback.mark(mark)
            playback.end_piece(mark)
        return spoke

    def _first_audio(self, stream, turn):
        turn.reached("first_audio")
        self.voice_to_voice.append(turn.stages["first_audio"])
        for stage, seconds in turn.stages.items():
            AGENT_SECONDS.labels(stage).observe(seconds)
        stream.log.info(
            "agent: %s",
            turn.line(),
            extra={"figures": {stage: round(s, 3) for stage, s in turn.stages.items()}},
        )

    def _done_if_played(self, stream, playback):
        """An answer sent whole and played to its end goes into the history whole."""
        if playback is not self.playback or not playback.complete or not playback.all_played:
            return
        said = playback.text()
        self.conversation.answered(said)
        if said:
            stream.log.info('agent said: "%s"', said)
        self.answering = self.playback = None

    def _warn(self, stream, service, failure):
        if (service, failure.kind) not in self.warned:
            self.warned.add((service, failure.kind))
            stream.log.warning("agent: %s failed: %s (the call goes on)", service, failure)
