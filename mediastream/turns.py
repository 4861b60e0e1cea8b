"""The agent's turn-taking, with no I/O: events in, actions out.

`TurnTaking.handle(event)` takes what happened on the call and returns what to do about
it, as a list of actions; agent.py feeds it and does what it says (greenlets, requests,
talkback, the console). Every decision about who speaks is here, in one place, and the
tests drive it with plain sequences of events.

Events: the caller's speech began, lasted long enough to be a barge-in, or ended (speech
activity); their words were transcribed (Heard) or could not be (NotHeard); the model
wrote a piece of an answer, or finished; the voice made a piece of audio, or finished a
sentence; an answer was all sent, or failed; a mark played; the call ended.

Actions: begin an answer (a greenlet asks the model, or says a fixed line), speak a
sentence, send audio or a mark, clear what Twilio has not played, cancel an answer; and
what the console and metrics show (a turn's timing, a barge-in, what was said, a warning).

An answer is fenced: once it is not current (cancelled, cut off, the call ended), its
model text, audio, marks and failures are dropped here, whatever was already on its way.
Each answer says at most three kinds of things, each its own Piece of a Playback: the
greeting, the model's sentences, and the server's own lines (an apology, "didn't catch
that"). The history (dialogue.Conversation) gets what the caller heard of the greeting
and of the model's sentences: never the server's lines, never what was not heard.
"""

import itertools
from dataclasses import dataclass, field

from mediastream.dialogue import Conversation, Playback, Sentences

WENT_ON_SECONDS = 0.25  # a turn begun this soon after an answer's first audio is no reply
APOLOGY = "Sorry, I can't answer that right now."
NOT_CAUGHT = "Sorry, I didn't catch that."
STAGES = ("end_of_turn", "transcript", "first_token", "first_sentence", "first_audio")

GREETING, REPLY, LINE = "greeting", "reply", "line"  # what an answer is


@dataclass
class Timing:
    """One reply's timing: each stage's seconds after the caller stopped speaking."""

    number: int
    speech_end: float  # when the caller's speech ended (the clock of the events' `at`)
    stages: dict = field(default_factory=dict)

    def reached(self, stage, at):
        """Note a stage (the first time only), reached at `at`."""
        self.stages.setdefault(stage, at - self.speech_end)

    def line(self):
        stages = ", ".join(
            f"{stage.replace('_', ' ')} {self.stages[stage]:.2f}"
            for stage in STAGES
            if stage in self.stages
        )
        return f"turn {self.number}: voice to voice {self.stages['first_audio']:.2f} s ({stages})"


@dataclass(eq=False)
class Answer:
    """One thing the agent says: the greeting, a reply from the model (`messages` is what
    it is asked), or a fixed line of the server's (`script`)."""

    kind: str
    script: str | None = None
    messages: list | None = None
    timing: Timing | None = None
    playback: Playback = field(default_factory=Playback)
    sentences: Sentences = field(default_factory=Sentences)
    failed: bool = False  # what it says from now on is the server's apology


# Events ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    """The stream started: the greeting is due."""


@dataclass(frozen=True)
class SpeechBegan:
    at: float  # when the caller's speech began


@dataclass(frozen=True)
class SpeechLasted:
    """The caller has spoken long enough (0.3 s) to be cutting in, not coughing."""

    at: float
    cleared_ms: int  # how long after their first word that is


@dataclass(frozen=True)
class SpeechEnded:
    at: float  # when speech activity ended the turn (after its pause)
    speech_end: float  # when the speech itself ended
    end_frame: int  # its last frame: the utterance of this turn ends there
    words: bool  # long enough to be words: an utterance (or NotHeard) will follow


@dataclass(frozen=True)
class Heard:
    at: float
    text: str
    end_frame: int  # where the utterance's speech ended
    latency: float  # seconds from the end of the speech to the text


@dataclass(frozen=True)
class NotHeard:
    """The caller's words could not be transcribed (the transcript said why, once)."""

    at: float


@dataclass(frozen=True)
class ModelWrote:
    answer: Answer
    at: float
    text: str


@dataclass(frozen=True)
class ModelDone:
    answer: Answer
    at: float


@dataclass(frozen=True)
class VoiceAudio:
    answer: Answer
    at: float
    text: str  # the sentence it is of
    pcm: bytes
    seconds: float


@dataclass(frozen=True)
class SentenceSpoken:
    answer: Answer


@dataclass(frozen=True)
class AnswerSent:
    answer: Answer


@dataclass(frozen=True)
class AnswerFailed:
    answer: Answer
    service: str  # "the model", "the voice", "the answer" (anything else)
    kind: str  # what went wrong, one warning per stream per (service, kind)
    message: str


@dataclass(frozen=True)
class MarkPlayed:
    at: float
    name: str


@dataclass(frozen=True)
class CallEnded:
    pass


# Actions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Begin:
    """Start `answer` in a greenlet of its own: ask the model, or speak its script."""

    answer: Answer


@dataclass(frozen=True)
class Speak:
    """(In the answer's greenlet) give `text` to the voice."""

    answer: Answer
    text: str


@dataclass(frozen=True)
class SendAudio:
    pcm: bytes


@dataclass(frozen=True)
class SendMark:
    name: str


@dataclass(frozen=True)
class Clear:
    pass


@dataclass(frozen=True)
class Cancel:
    """Stop `answer`'s greenlet: its requests are closed."""

    answer: Answer


@dataclass(frozen=True)
class Timed:
    """A reply's first audio went out: its timing, for the console and the metrics."""

    timing: Timing


@dataclass(frozen=True)
class CutIn:
    """Barge-in: the caller talked over an answer; they heard `heard` of `said`."""

    heard: str
    said: str
    cleared_ms: int | None


@dataclass(frozen=True)
class WentOn:
    """The caller went on with their turn just as its answer began: cleared, forgotten."""

    greeting: bool


@dataclass(frozen=True)
class GreetingWaits:
    """The caller spoke before any of the greeting played: it plays when they stop."""


@dataclass(frozen=True)
class Said:
    """An answer played to its end."""

    text: str


@dataclass(frozen=True)
class Warn:
    service: str
    message: str


# The machine -------------------------------------------------------------------------


class TurnTaking:
    """One call's turn-taking (see the module's docstring)."""

    def __init__(self, prompt, greeting, history_tokens):
        self.greeting = greeting
        self.history = Conversation(prompt, history_tokens)
        self.answer = None  # the current answer: being made, or playing
        self.greeting_due = True  # not yet heard, not yet begun
        self.opening = 0  # the caller's turns before the greeting: its words come later
        self.speaking = None  # when the caller's turn under way began, or None
        self.unanswered = False  # the caller's last words have no answer heard: more join them
        self.last_turn = None  # (end frame, speech end, end of turn seconds)
        self.ended = False
        self.voice_to_voice = []  # seconds, each reply
        self.interruptions = 0
        self.warned = set()
        self._marks = itertools.count(1)

    def handle(self, event):
        """The actions for `event` (a list, maybe empty)."""
        if self.ended:
            return []
        method = getattr(self, f"_{type(event).__name__}")
        return method(event)

    # The caller ------------------------------------------------------------------------

    def _Started(self, event):
        return self._begin(Answer(GREETING, script=self.greeting))

    def _SpeechBegan(self, event):
        self.speaking = event.at
        answer = self.answer
        if answer is None:
            return []
        if not answer.playback.audible:  # they go on before hearing any of it
            return self._drop() + ([GreetingWaits()] if answer.kind == GREETING else [])
        first_audio = answer.playback.pieces[0].sent_at
        if answer.kind != LINE and event.at <= first_audio + WENT_ON_SECONDS:
            return [Clear(), *self._drop(), WentOn(answer.kind == GREETING)]
        return []  # a barge-in, if it lasts

    def _SpeechLasted(self, event):
        if self.answer is None or not self.answer.playback.audible:
            return []
        return self._cut_in(event.at, event.cleared_ms)

    def _SpeechEnded(self, event):
        self.speaking = None
        self.last_turn = event.end_frame, event.speech_end, event.at - event.speech_end
        if self.answer is not None:
            return []
        if self.greeting_due:  # they spoke first: the greeting answers them
            self.opening += event.words
            return self._begin(Answer(GREETING, script=self.greeting))
        if self.unanswered and not event.words:  # a cough cut off the answer: it comes again
            timing = Timing(len(self.voice_to_voice) + 1, event.speech_end)
            timing.reached("end_of_turn", event.at)
            return self._reply(timing)
        return []

    def _Heard(self, event):
        if self.opening:  # words said before the greeting, which answers them
            self.opening -= 1
            if event.text:
                self.history.opened_with(event.text)
            return []
        actions = self._supersede(event.at)
        if event.text:
            self.history.caller_said(event.text, joins=self.unanswered)
            self.unanswered = True
        elif not self.unanswered:
            return actions  # noise, transcribed as nothing
        if self.speaking is not None:
            return actions  # they already go on: answer all of it when they stop
        timing = Timing(len(self.voice_to_voice) + 1, event.at - event.latency)
        if self.last_turn and self.last_turn[0] == event.end_frame:
            timing.stages["end_of_turn"] = self.last_turn[2]
        timing.reached("transcript", event.at)
        return actions + self._reply(timing)

    def _NotHeard(self, event):
        if self.opening:
            self.opening -= 1
            return []
        if self.speaking is not None or self.answer is not None:
            return []  # they go on, or are being answered: what comes next is answered
        if self.unanswered:  # what they said before it is answered
            return self._reply(Timing(len(self.voice_to_voice) + 1, event.at))
        return self._begin(Answer(LINE, script=NOT_CAUGHT))

    def _MarkPlayed(self, event):
        if self.answer is None:
            return []
        self.answer.playback.played(event.name, event.at)
        return self._done_if_played()

    def _CallEnded(self, event):
        self.ended = True
        return [Cancel(self.answer)] if self.answer is not None else []

    # The answer ------------------------------------------------------------------------

    def _ModelWrote(self, event):
        answer = event.answer
        if answer is not self.answer:
            return []
        answer.timing.reached("first_token", event.at)
        sentences = answer.sentences.add(event.text)
        if sentences:
            answer.timing.reached("first_sentence", event.at)
        return [Speak(answer, sentence) for sentence in sentences]

    def _ModelDone(self, event):
        answer = event.answer
        if answer is not self.answer:
            return []
        sentences = answer.sentences.finish()
        if sentences:
            answer.timing.reached("first_sentence", event.at)
        return [Speak(answer, sentence) for sentence in sentences]

    def _VoiceAudio(self, event):
        answer = event.answer
        if answer is not self.answer:
            return []  # cancelled while the voice was speaking: not sent
        playback = answer.playback
        actions = []
        if not playback.open:
            remembered = answer.kind != LINE and not answer.failed
            playback.begin_piece(event.text, event.at, remembered)
            timing = answer.timing
            if timing is not None and "first_audio" not in timing.stages:
                timing.reached("first_audio", event.at)
                self.voice_to_voice.append(timing.stages["first_audio"])
                actions.append(Timed(timing))
        playback.add_audio(event.seconds)
        return [*actions, SendAudio(event.pcm)]

    def _SentenceSpoken(self, event):
        if event.answer is not self.answer or not event.answer.playback.open:
            return []
        name = f"agent-{next(self._marks)}"
        event.answer.playback.end_piece(name)
        return [SendMark(name)]

    def _AnswerSent(self, event):
        if event.answer is not self.answer:
            return []
        event.answer.playback.complete = True
        return self._done_if_played()

    def _AnswerFailed(self, event):
        answer = event.answer
        if answer is not self.answer:
            return []
        actions = self._SentenceSpoken(SentenceSpoken(answer))  # what was sent of it plays
        if (event.service, event.kind) not in self.warned:
            self.warned.add((event.service, event.kind))
            actions.append(Warn(event.service, event.message))
        if event.service != "the voice" and not answer.failed:
            answer.failed = True
            actions.append(Speak(answer, APOLOGY))  # (a voice that failed can't say it)
        self.unanswered = False  # that turn is over: their next words are a turn of their own
        return actions

    # Helpers ---------------------------------------------------------------------------

    def _begin(self, answer):
        self.answer = answer
        if answer.kind == GREETING:
            self.greeting_due = False
        return [Begin(answer)]

    def _reply(self, timing):
        messages = self.history.for_model()
        return self._begin(Answer(REPLY, messages=messages, timing=timing))

    def _drop(self):
        """Cancel the current answer, none of which was heard: a greeting is due again;
        a reply's words join the caller's next ones."""
        answer, self.answer = self.answer, None
        if answer.kind == GREETING:
            self.greeting_due = True
        elif answer.kind == REPLY:
            self.unanswered = True
            if answer.timing and "first_audio" in answer.timing.stages:
                self.voice_to_voice.pop()  # that turn is not answered yet
        return [Cancel(answer)]

    def _cut_in(self, at, cleared_ms):
        """Barge-in: stop the answer; the history keeps what the caller heard of it."""
        answer, self.answer = self.answer, None
        playback = answer.playback
        self.history.answered(playback.heard(at, remembered=True), answer.kind == GREETING)
        self.interruptions += 1
        self.unanswered = False
        return [Clear(), Cancel(answer), CutIn(playback.heard(at), playback.text(), cleared_ms)]

    def _supersede(self, at):
        """New words from the caller stop the answer under way (one begun after the turn
        they end: the greeting, a line of the server's)."""
        if self.answer is None:
            return []
        if self.answer.playback.audible:
            return self._cut_in(at, None)
        return self._drop()

    def _done_if_played(self):
        """An answer sent whole and played to its end goes into the history."""
        answer = self.answer
        playback = answer.playback
        if not playback.complete or not playback.all_played:
            return []
        self.answer = None
        self.history.answered(playback.text(remembered=True), answer.kind == GREETING)
        if answer.kind == REPLY:
            self.unanswered = False
        return [Said(playback.text())] if playback.pieces else []
