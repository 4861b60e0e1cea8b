"""A handler: on a stream whose TwiML says mode=agent, the caller talks with a model.

The caller hears AGENT_GREETING, then each thing they say (an utterance of the inbound
track, from the transcript) is answered out loud: the conversation so far goes to the
model (chat.py), each sentence of its answer to the voice (voices.py) as soon as the
model has finished it, and each sentence's audio to the caller as it comes, followed by
a mark, so that the server knows what the caller has heard (dialogue.py).

Who speaks when is decided in turns.py, with no I/O; this handler only feeds it events
and does what it returns. It runs in three contexts, all on the hub's thread, never at
the same moment (none of the state machine's code waits):
- the stream's reading greenlet: start(), media() (speech began, lasted, ended), mark(),
  stop(), and finish() when the connection ends;
- hub callbacks: utterance() and untranscribed(), as the transcript's results come;
- an answer's own greenlet (`_run`): the model's and the voice's requests, each piece
  handed to the state machine as it comes. Cancelling an answer kills its greenlet,
  which closes its connections; anything of it still on its way is dropped (fenced).

- Barge-in: a caller who talks over the answer for BARGE_IN_FRAMES (0.3 s: shorter is a
  cough or a "mhm") stops it: `clear`, the model's stream and the voice cancelled, and
  the history keeps only the words the caller heard.
- One answer to a whole turn: a caller who goes on speaking before any of the answer has
  played (a pause mid-sentence), or just as it began (turns.WENT_ON_SECONDS), cancels it;
  what they say next joins what they said.
- The greeting always plays: a caller who speaks first ("Hello?") hears it when they stop.
- No dead air: words that could not be transcribed get "Sorry, I didn't catch that.";
  a model that fails, or anything else that goes wrong in an answer, gets an apology, with
  one line per stream and kind. The call goes on.
- Each answer's timing, from the end of the caller's speech, is a console line and the
  mediastream_agent_seconds histogram, per stage: end of turn (speech activity saw the
  pause), transcript, first token, first sentence, first audio (voice to voice).
"""

import functools
import logging
import statistics
import time

import gevent

from mediastream import turns
from mediastream.apiclient import ServiceFailed
from mediastream.chat import history_tokens, load_model
from mediastream.console import counted
from mediastream.engines import transcribing
from mediastream.g711 import CHUNK_MS, CHUNK_SECONDS, SAMPLE_RATE
from mediastream.handlers import Handler
from mediastream.messages import cut
from mediastream.metrics import AGENT_INTERRUPTIONS, AGENT_SECONDS
from mediastream.transcript import MIN_FRAMES
from mediastream.voices import load_voice

startup = logging.getLogger("mediastream.startup")

BARGE_IN_FRAMES = MIN_FRAMES  # 0.3 s of the caller's speech over an answer stops it
ERROR_CHARACTERS = 160  # of an unexpected error's message, in its line


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
    startup.info(
        "agent: model %s; voice %s; history up to %d tokens",
        model.name,
        voice.name,
        history_tokens(config),
    )
    return model, voice


class _VoiceFailed(Exception):
    """The voice's ServiceFailed, told apart from the model's."""

    def __init__(self, failure):
        super().__init__(str(failure))
        self.kind = failure.kind


class Agent(Handler):
    """A handler: the conversation of a mode=agent stream (see the module's docstring)."""

    may_block = False  # it answers in greenlets of its own; per chunk it only looks

    @classmethod
    def enabled(cls, config):
        load_agent(config)  # said at startup; a mode=agent stream without it is told why
        return True

    def __init__(self, config):
        super().__init__(config)
        self.turn_taking = None  # the state machine, on a mode=agent stream with a model
        self.answering = {}  # answer -> its greenlet
        self.turn = None  # the caller's turn under way, as speech activity saw it
        self.lasted = False  # that turn is long enough to be a barge-in
        self.last_turn = None  # their last finished turn

    # The reading greenlet ----------------------------------------------------------------

    def start(self, stream, event):
        self.active = stream.mode == "agent"
        if not self.active:
            return
        self.model, self.voice = found = load_agent(self.config)
        if self.model is None:
            stream.log.warning("agent: mode=agent, but %s: nobody answers", found[1])
            self.active = False
            return
        self.turn_taking = turns.TurnTaking(
            self.config.agent_prompt, self.config.agent_greeting, history_tokens(self.config)
        )
        self._handle(stream, turns.Started())

    def media(self, stream, chunk):
        """Speech activity's view of the caller, as the state machine's events: their
        speech began, lasted long enough to cut in, ended."""
        if chunk.track != "inbound":
            return
        speech = stream.tracks["inbound"].speech
        if speech is None:
            return
        now = time.monotonic()
        if speech.last_turn is not self.last_turn:
            self.last_turn = start, end = speech.last_turn
            self.turn = None
            ago = (chunk.chunk - end) * CHUNK_SECONDS
            words = end - start >= MIN_FRAMES
            self._handle(stream, turns.SpeechEnded(now, now - ago, end, words))
        turn = speech.turn
        if turn is None:
            return
        spoken = chunk.chunk - 1 - turn[0]  # frames since their speech began
        if turn[0] != self.turn:
            self.turn, self.lasted = turn[0], False
            self._handle(stream, turns.SpeechBegan(now - spoken * CHUNK_SECONDS))
        if not self.lasted and spoken + 1 >= BARGE_IN_FRAMES:
            self.lasted = True
            self._handle(stream, turns.SpeechLasted(now, spoken * CHUNK_MS))

    def mark(self, stream, event):
        if self.turn_taking is not None and event.played:
            self._handle(stream, turns.MarkPlayed(time.monotonic(), event.name))

    def stop(self, stream, event):
        self._call_ended(stream)

    def finish(self, stream):
        self._call_ended(stream)  # (a connection that dropped, without a stop)

    def end(self, stream, ended_by):
        if self.turn_taking is None:
            return
        taking = self.turn_taking
        median = statistics.median(taking.voice_to_voice) if taking.voice_to_voice else 0.0
        dropped = taking.history.dropped
        stream.log.info(
            "agent: %s, voice to voice median %.2f s; interrupted %s%s",
            counted(len(taking.voice_to_voice), "turn"),
            median,
            counted(taking.interruptions, "time"),
            f"; {counted(dropped, 'early turn')} left out of the history" if dropped else "",
            extra={
                "figures": {
                    "turns": len(taking.voice_to_voice),
                    "voice_to_voice_median": round(median, 3),
                    "interruptions": taking.interruptions,
                    "history_turns_dropped": dropped,
                }
            },
        )

    # Hub callbacks: the transcript's results -------------------------------------------

    def utterance(self, stream, utterance):
        if self.turn_taking is not None and utterance.track == "inbound":
            end_frame = round(utterance.end / CHUNK_SECONDS)
            now = time.monotonic()
            self._handle(stream, turns.Heard(now, utterance.text, end_frame, utterance.latency))

    def untranscribed(self, stream, utterance):
        if self.turn_taking is not None and utterance.track == "inbound":
            self._handle(stream, turns.NotHeard(time.monotonic()))

    # An answer's greenlet ----------------------------------------------------------------

    def _run(self, stream, answer):
        """Make one answer: ask the model (or speak its script), a sentence at a time. A
        failure is said once, and the state machine may have the apology spoken."""
        failed = self._attempt(answer, self._make, stream, answer)
        while failed is not None:  # (the apology, and only a voice that works says it)
            failed = self._attempt(answer, self._handle, stream, failed)
        self._handle(stream, turns.AnswerSent(answer))
        self.answering.pop(answer, None)

    def _make(self, stream, answer):
        if answer.script is not None:
            self._speak(stream, answer, answer.script)
            return
        for text in self.model.stream(answer.messages):
            self._handle(stream, turns.ModelWrote(answer, time.monotonic(), text))
        self._handle(stream, turns.ModelDone(answer, time.monotonic()))

    def _attempt(self, answer, work, *args):
        """work(*args) for `answer`: None, or the AnswerFailed that says what failed."""
        try:
            work(*args)
        except _VoiceFailed as failure:
            return turns.AnswerFailed(answer, "the voice", failure.kind, str(failure))
        except ServiceFailed as failure:
            return turns.AnswerFailed(answer, "the model", failure.kind, str(failure))
        except Exception as error:  # a bug, or an answer nobody foresaw: still one line
            message = cut(f"{type(error).__name__}: {error}", ERROR_CHARACTERS)
            return turns.AnswerFailed(answer, "the answer", type(error).__name__, message)
        return None

    def _speak(self, stream, answer, text):
        """One sentence to the caller, as its audio comes, then its mark."""
        try:
            for pcm in self.voice.speak(text):
                if pcm:
                    seconds = len(pcm) / 2 / SAMPLE_RATE
                    event = turns.VoiceAudio(answer, time.monotonic(), text, pcm, seconds)
                    self._handle(stream, event)
        except ServiceFailed as failure:
            raise _VoiceFailed(failure) from None
        self._handle(stream, turns.SentenceSpoken(answer))

    # Doing what the state machine says ------------------------------------------------

    def _handle(self, stream, event):
        self._do(stream, self.turn_taking.handle(event))

    def _call_ended(self, stream):
        if self.turn_taking is not None:
            self._handle(stream, turns.CallEnded())

    def _do(self, stream, actions):
        for action in actions:
            match action:
                case turns.SendAudio(pcm):
                    stream.talkback.audio(pcm=pcm)
                case turns.SendMark(name):
                    stream.talkback.mark(name)
                case turns.Speak(answer, text):  # (only ever from the answer's own greenlet)
                    self._speak(stream, answer, text)
                case turns.Begin(answer):
                    self.answering[answer] = gevent.spawn(self._run, stream, answer)
                case turns.Cancel(answer):
                    greenlet = self.answering.pop(answer, None)
                    if greenlet is not None:
                        greenlet.kill(block=False)  # its requests close as it wakes
                case turns.Clear():
                    stream.talkback.clear()
                case turns.Timed(timing):
                    self._timed(stream, timing)
                case turns.CutIn(heard, said, cleared_ms):
                    self._cut_in(stream, heard, said, cleared_ms)
                case turns.WentOn(greeting):
                    stream.log.info(
                        "agent: the caller went on with their turn as the %s began; cleared, %s",
                        "greeting" if greeting else "answer",
                        "it plays when they stop" if greeting else "their next words join it",
                    )
                case turns.GreetingWaits():
                    stream.log.info(
                        "agent: the caller spoke first; the greeting plays when they stop"
                    )
                case turns.Said(text):
                    stream.log.info('agent said: "%s"', text)
                case turns.Warn(service, message):
                    level = logging.ERROR if service == "the answer" else logging.WARNING
                    stream.log.log(
                        level, "agent: %s failed: %s (the call goes on)", service, message
                    )

    def _timed(self, stream, timing):
        for stage, seconds in timing.stages.items():
            AGENT_SECONDS.labels(stage).observe(seconds)
        stream.log.info(
            "agent: %s",
            timing.line(),
            extra={"figures": {stage: round(s, 3) for stage, s in timing.stages.items()}},
        )

    def _cut_in(self, stream, heard, said, cleared_ms):
        AGENT_INTERRUPTIONS.inc()
        when = f"; cleared {cleared_ms} ms after their first word" if cleared_ms is not None else ""
        stream.log.info(
            'barge-in: the caller talked over the agent%s; they heard %d of %d words: "%s"',
            when,
            len(heard.split()),
            len(said.split()),
            heard,
        )
