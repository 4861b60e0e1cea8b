"""The agent's turn-taking, with no I/O: events in, actions out.

`TurnTaking.handle(event)` takes what happened on the call and returns what to do about
it, as a list of actions; agent.py feeds it and does what it says (greenlets, requests,
talkback, the console). Every decision about who speaks is here, in one place, and the
tests drive it with plain sequences of events.

Events: the caller's speech began, lasted long enough to be a barge-in, or ended (speech
activity); their words were transcribed (Heard) or could not be (NotHeard); they pressed
a key; the model wrote a piece of an answer, or finished (maybe calling tools); a tool
returned; the voice made a piece of audio, or finished a sentence; an answer was all
sent, or failed; a mark played; a transfer failed; a tick of the clock (for what waits:
a slow tool, keys, a silent caller); the call ended.

Actions: begin an answer (a greenlet asks the model, or says a fixed line), ask the model
again (after tools), run a tool, speak a sentence (or a filler, while a tool is slow),
send audio or a mark, clear what Twilio has not played, cancel an answer, hang up or
transfer the call; and what the console, metrics and pages show (a turn's timing, a
barge-in, what was said, a tool's run, a warning).

Tools (OpenAI's loop): an answer whose model calls tools gets an assistant message with
its `tool_calls` in the history, then a `tool` message for each call (a placeholder
until the tool returns, so that the history is valid for the API at every moment), then
the model is asked again, up to MAX_TOOL_ROUNDS times. A tool runs to its end even when
the caller cuts in: its side effect may have happened, and its result goes in the history.

An answer is fenced: once it is not current (cancelled, cut off, the call ended), its
model text, audio, marks and failures are dropped here, whatever was already on its way.
Each answer says at most three kinds of things, each its own Piece of a Playback: the
greeting, the model's sentences, and the server's own lines (an apology, "didn't catch
that"). The history (dialogue.Conversation) gets what the caller heard of the greeting
and of the model's sentences: never the server's lines, never what was not heard.
"""

import itertools
from dataclasses import dataclass, field

import orjson

from mediastream.dialogue import Conversation, Playback, Sentences
from mediastream.tools import END_CALL, TRANSFER_CALL, BadArguments

WENT_ON_SECONDS = 0.25  # a turn begun this soon after an answer's first audio is no reply
FILLER_SECONDS = 0.7  # a tool still running this long gets the caller a filler
# A caller whose words have not come this long after their turn ended (the transcription
# is queued behind others' on a busy server) hears the filler: their answer is coming.
WORDS_LATE_SECONDS = 3.5
MAX_TOOL_ROUNDS = 5  # times the model may call tools in one answer
APOLOGY = "Sorry, I can't answer that right now."
NOT_CAUGHT = "Sorry, I didn't catch that."
GOODBYE = "Goodbye!"
TRANSFERRING = "Please hold while I transfer your call."
NOT_TRANSFERRED = "Sorry, I couldn't transfer your call."
STAGES = (
    "end_of_turn",
    "transcript",
    "first_token",
    "tool_called",  # the model's tool calls complete
    "tool_done",  # every tool returned
    "next_token",  # the first token of the model's answer after the tools
    "first_sentence",
    "first_audio",
)


@dataclass(frozen=True)
class Options:
    """How one call's agent behaves beyond talking (config.py's AGENT_* settings)."""

    tools: tuple = ()  # tools.Tool: the model's, and the agent's own (end_call, transfer_call)
    transfer: dict = field(default_factory=dict)  # name -> destination, for transfer_call
    filler: str = "One moment, please."
    tool_timeout: float = 10.0
    digits_timeout: float = 2.0
    idle: float = 0.0  # seconds of silence before idle_prompt (0: never)
    idle_prompt: str = "Are you still there?"


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
    open_rounds: int = 0  # its greenlets making something to say (Begin, Ask), not yet done
    rounds: int = 0  # times its model called tools
    waiting: set = field(default_factory=set)  # its tool calls still running (their ids)
    tools_at: float | None = None  # when its last tools began
    filled: bool = False  # the filler was said while its tools ran
    then: object = None  # HangUp or Transfer, once it has played to its end
    holding: bool = False  # a filler while the caller's words are late: their answer follows it


# Events ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    """The stream started: the greeting is due (or, with `busy`, that line, then the end)."""

    busy: str | None = None


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
    end_frame: int


@dataclass(frozen=True)
class ModelWrote:
    answer: Answer
    at: float
    text: str


@dataclass(frozen=True)
class ModelDone:
    answer: Answer
    at: float
    calls: tuple = ()  # chat.ToolCall: the tools it called, if any


@dataclass(frozen=True)
class ToolDone:
    """A tool returned: its result (text), or the error the model is told."""

    call_id: str
    at: float
    result: str | None
    error: str | None = None


@dataclass(frozen=True)
class KeyPressed:
    at: float
    digit: str


@dataclass(frozen=True)
class TransferFailed:
    """Twilio's API did not take the transfer (said by control.py)."""


@dataclass(frozen=True)
class Tick:
    """The clock, a few times a second: for what waits (a slow tool, keys, silence)."""

    at: float


@dataclass(frozen=True)
class VoiceAudio:
    answer: Answer
    at: float
    text: str  # the sentence it is of
    pcm: bytes
    seconds: float
    remembered: bool = True  # the model's words (or the greeting), for the history


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
class Ask:
    """Ask the model again for `answer` (its tools have returned), in a greenlet of its
    own after the answer's others; or say its `script`, if it has one now."""

    answer: Answer


@dataclass(frozen=True)
class Speak:
    """(In the answer's greenlet) give `text` to the voice."""

    answer: Answer
    text: str
    remembered: bool = True  # False: a line of the server's, kept out of the history


@dataclass(frozen=True)
class Filler:
    """Say `text` for `answer` in a greenlet of its own, while its tools run."""

    answer: Answer
    text: str


@dataclass(frozen=True)
class RunTool:
    """Run `tool` with `arguments` off the event loop; ToolDone(call_id, ...) when it returns."""

    call_id: str
    tool: object  # tools.Tool
    arguments: dict


@dataclass(frozen=True)
class ToolRan:
    """A tool call and its outcome, for the console, the metrics and the pages."""

    name: str
    arguments: str
    result: str | None
    error: str | None
    seconds: float
    warn: bool  # its first error on this call: a warning


@dataclass(frozen=True)
class HangUp:
    """End the call (through Twilio's API, or by closing the stream)."""

    why: str  # "goodbye" (the model's end_call), "idle", "busy" (AGENT_MAX_CALLS)
    call_id: str | None = None  # the end_call that asked for it


@dataclass(frozen=True)
class Transfer:
    name: str
    destination: str
    call_id: str


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
    voice_to_voice: float | None = None


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
    voice_to_voice: float | None = None


@dataclass(frozen=True)
class Warn:
    service: str
    message: str


FROM_THE_CALLER = (SpeechBegan, SpeechLasted, SpeechEnded, Heard, NotHeard, KeyPressed)


# The machine -------------------------------------------------------------------------


class TurnTaking:
    """One call's turn-taking (see the module's docstring)."""

    def __init__(self, prompt, greeting, history_tokens, options=Options()):
        self.greeting = greeting
        self.options = options
        self.tools = {tool.name: tool for tool in options.tools}
        self.history = Conversation(prompt, history_tokens)
        self.answer = None  # the current answer: being made, or playing
        self.greeting_due = True  # not yet heard, not yet begun
        self.opening = 0  # the caller's turns before the greeting: its words come later
        self.speaking = None  # when the caller's turn under way began, or None
        self.unanswered = False  # the caller's last words have no answer heard: more join them
        self.last_turn = None  # (end frame, speech end, end of turn seconds)
        self.words_due = -1  # the end frame of the caller's last turn long enough for words
        self.words_due_at = None  # when that turn ended
        self.late_told = -1  # the words_due the caller was told are coming (the filler)
        self.heard_through = -1  # the end frame of the last words (or NotHeard) that came
        self.running = {}  # tool call id -> (its answer, the ToolCall, when it began)
        self.digits = ""  # keys pressed, not yet given to the model
        self.digits_at = None  # when the last was pressed
        self.quiet_since = None  # when the call last went quiet (nobody speaking)
        self.idle_asked = False  # the caller was asked whether they are still there
        self.leaving = None  # the HangUp or Transfer under way: nothing more is said
        self.ended = False
        self.voice_to_voice = []  # seconds, each reply
        self.interruptions = 0
        self.warned = set()
        self._marks = itertools.count(1)

    @property
    def schemas(self):
        """The tools as the chat completions API takes them."""
        return [tool.schema() for tool in self.options.tools]

    def handle(self, event):
        """The actions for `event` (a list, maybe empty)."""
        if self.ended or (self.leaving is not None and isinstance(event, FROM_THE_CALLER)):
            return []  # (a call being ended or transferred hears nothing more)
        method = getattr(self, f"_{type(event).__name__}")
        return method(event)

    # The caller ------------------------------------------------------------------------

    def _Started(self, event):
        if event.busy:  # every agent is busy: the caller hears so, and the call ends
            self.greeting_due = False
            return self._begin(Answer(LINE, script=event.busy, then=HangUp("busy")))
        return self._begin(Answer(GREETING, script=self.greeting))

    def _SpeechBegan(self, event):
        self.speaking = event.at
        self._heard_from_caller(event.at)
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
        self.quiet_since = event.at
        self.last_turn = event.end_frame, event.speech_end, event.at - event.speech_end
        if event.words:
            self.words_due, self.words_due_at = event.end_frame, event.at
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
        self.heard_through = max(self.heard_through, event.end_frame)
        timing = Timing(len(self.voice_to_voice) + 1, event.at - event.latency)
        if self.last_turn and self.last_turn[0] == event.end_frame:
            timing.stages["end_of_turn"] = self.last_turn[2]
        timing.reached("transcript", event.at)
        return self._caller_said(event.text, event.at, timing)

    def _NotHeard(self, event):
        if self.opening:
            self.opening -= 1
            return []
        self.heard_through = max(self.heard_through, event.end_frame)
        if self.speaking is not None or self.answer is not None:
            return []  # they go on, or are being answered: what comes next is answered
        if self.unanswered:  # what they said before it is answered
            return self._reply(Timing(len(self.voice_to_voice) + 1, event.at))
        return self._begin(Answer(LINE, script=NOT_CAUGHT))

    def _KeyPressed(self, event):
        """A key stops the answer as speech does; the keys go to the model together when
        `#` is pressed or none has come for options.digits_timeout."""
        self._heard_from_caller(event.at)
        self.quiet_since = event.at
        actions = self._supersede(event.at)
        self.digits += event.digit
        self.digits_at = event.at
        if event.digit == "#":
            actions += self._keys_done(event.at)
        return actions

    def _MarkPlayed(self, event):
        self.quiet_since = event.at
        if self.answer is None:
            return []
        self.answer.playback.played(event.name, event.at)
        return self._done_if_played()

    def _Tick(self, event):
        at = event.at
        actions = []
        for call_id, (_, _, began) in list(self.running.items()):
            if at - began >= self.options.tool_timeout:
                error = f"it took longer than {self.options.tool_timeout:g} s"
                actions += self._ToolDone(ToolDone(call_id, at, None, error))
        answer = self.answer
        if (
            answer
            and answer.waiting
            and not answer.filled
            and at - answer.tools_at >= FILLER_SECONDS
        ):
            answer.filled = True
            actions.append(Filler(answer, self.options.filler))
        if self.digits and at - self.digits_at >= self.options.digits_timeout:
            actions += self._keys_done(at)
        if self._words_late(at):
            self.late_told = self.words_due
            filler = Answer(LINE, script=self.options.filler, holding=True)
            actions += self._begin(filler)
        if self.quiet_since is None:
            self.quiet_since = at
        if self._idle_for(self.options.idle, at):
            if self.idle_asked:
                self.leaving = HangUp("idle")
                actions.append(self.leaving)
            else:
                self.idle_asked = True
                actions += self._begin(Answer(LINE, script=self.options.idle_prompt))
        return actions

    def _CallEnded(self, event):
        self.ended = True
        return [Cancel(self.answer)] if self.answer is not None else []

    # The answer ------------------------------------------------------------------------

    def _ModelWrote(self, event):
        answer = event.answer
        if answer is not self.answer:
            return []
        answer.timing.reached("next_token" if answer.rounds else "first_token", event.at)
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
        actions = [Speak(answer, sentence) for sentence in sentences]
        if event.calls:
            actions += self._call_tools(answer, event.calls, event.at)
        return actions

    def _ToolDone(self, event):
        """A tool's result goes in the history whether or not its answer is still current
        (its side effect happened); only the current answer goes on to ask again."""
        running = self.running.pop(event.call_id, None)
        if running is None:
            return []  # it had timed out: the model was told so
        answer, call, began = running
        actions = self._tool_outcome(call, event.at - began, event.result, event.error)
        answer.waiting.discard(call.id)
        if answer is self.answer and not answer.waiting:
            actions += self._tools_done(answer, event.at)
        return actions

    def _VoiceAudio(self, event):
        answer = event.answer
        if answer is not self.answer:
            return []  # cancelled while the voice was speaking: not sent
        playback = answer.playback
        actions = []
        if not playback.open:
            playback.begin_piece(event.text, event.at, self._remembered(answer, event))
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
        answer = event.answer
        answer.open_rounds -= 1
        if answer is not self.answer or answer.open_rounds or answer.waiting:
            return []  # (more is coming: tools are running, or the model is asked again)
        answer.playback.complete = True
        return self._done_if_played()

    def _AnswerFailed(self, event):
        answer = event.answer
        if answer is not self.answer:
            return []
        actions = self._SentenceSpoken(SentenceSpoken(answer))  # what was sent of it plays
        actions += self._warn_once((event.service, event.kind), event.service, event.message)
        if event.service != "the voice" and not answer.failed:
            answer.failed = True
            actions.append(Speak(answer, APOLOGY, remembered=False))  # (a voice that
            # failed can't say it)
        self.unanswered = False  # that turn is over: their next words are a turn of their own
        return actions

    def _TransferFailed(self, event):
        transfer, self.leaving = self.leaving, None
        if isinstance(transfer, Transfer):
            self.history.tool_result(transfer.call_id, _error("the transfer failed"))
        return self._begin(Answer(LINE, script=NOT_TRANSFERRED))

    # Helpers ---------------------------------------------------------------------------

    def _begin(self, answer):
        self.answer = answer
        answer.open_rounds += 1
        if answer.kind == GREETING:
            self.greeting_due = False
        return [Begin(answer)]

    def _reply(self, timing):
        messages = self.history.for_model()
        return self._begin(Answer(REPLY, messages=messages, timing=timing))

    def _caller_said(self, text, at, timing):
        """The caller's words (or keys): they stop what is being said, join their words
        not yet answered, and are answered once they have stopped speaking."""
        actions = self._supersede(at)
        if text:
            self.history.caller_said(text, joins=self.unanswered)
            self.unanswered = True
        elif not self.unanswered:
            return actions  # noise, transcribed as nothing
        if self.speaking is not None:
            return actions  # they already go on: answer all of it when they stop
        return actions + self._reply(timing)

    def _keys_done(self, at):
        keys, self.digits = self.digits, ""
        timing = Timing(len(self.voice_to_voice) + 1, self.digits_at)
        timing.reached("end_of_turn", at)
        return self._caller_said(f"(the caller pressed {' '.join(keys)})", at, timing)

    def _heard_from_caller(self, at):
        self.quiet_since = at
        self.idle_asked = False

    def _words_late(self, at):
        """Whether the caller's words are late (the engine is busy), not yet told so."""
        return (
            self.words_due > self.heard_through
            and self.late_told < self.words_due
            and self.answer is None
            and self.speaking is None
            and at - self.words_due_at >= WORDS_LATE_SECONDS
        )

    def _idle_for(self, seconds, at):
        """Whether nobody has spoken for `seconds`: no answer, no caller's turn, nothing
        waited for (words, keys, a tool), nothing under way."""
        return bool(
            seconds
            and self.answer is None
            and self.speaking is None
            and self.words_due <= self.heard_through  # (no words on their way)
            and not self.digits
            and self.leaving is None
            and at - self.quiet_since >= seconds
        )

    def _call_tools(self, answer, calls, at):
        """The model called tools: into the history; each run (or, for the agent's own
        and for calls that cannot run, answered at once)."""
        answer.rounds += 1
        if answer.rounds > MAX_TOOL_ROUNDS:
            message = f"it called tools {MAX_TOOL_ROUNDS} times in one answer; giving up"
            return self._AnswerFailed(AnswerFailed(answer, "the model", "tool rounds", message))
        answer.timing.reached("tool_called", at)
        answer.tools_at = at
        answer.filled = False
        self.history.called([call.message() for call in calls])
        actions = []
        for call in calls:
            actions += self._start_tool(answer, call, at)
        if not answer.waiting:
            actions += self._tools_done(answer, at)
        return actions

    def _start_tool(self, answer, call, at):
        tool = self.tools.get(call.name)
        if tool is None:
            return self._tool_outcome(call, 0.0, None, f"there is no tool named {call.name!r}")
        try:
            arguments = tool.arguments(call.arguments)
        except BadArguments as problem:
            return self._tool_outcome(call, 0.0, None, str(problem))
        if tool is END_CALL:
            answer.then = HangUp("goodbye", call.id)
            return self._tool_outcome(call, 0.0, "The call ends once the caller has heard you.")
        if tool.name == TRANSFER_CALL:
            name = arguments.get("to") or next(iter(self.options.transfer))
            answer.then = Transfer(name, self.options.transfer[name], call.id)
            return self._tool_outcome(call, 0.0, f"Transferring the call to {name}.")
        self.running[call.id] = answer, call, at
        answer.waiting.add(call.id)
        return [RunTool(call.id, tool, arguments)]

    def _tool_outcome(self, call, seconds, result, error=None):
        """A tool call's result (or error) into the history, and for the console."""
        self.history.tool_result(call.id, _error(error) if error else result)
        warn = bool(error) and (call.name, "tool") not in self.warned
        if warn:
            self.warned.add((call.name, "tool"))
        return [ToolRan(call.name, call.arguments, result, error, seconds, warn)]

    def _tools_done(self, answer, at):
        """Every tool of this round returned: ask the model again, or, when the call is to
        end or be transferred, say the last line (the model's, if it said one)."""
        answer.timing.reached("tool_done", at)
        if answer.then is not None:
            if "first_sentence" in answer.timing.stages:
                return []  # the model said its last words with the call
            answer.script = GOODBYE if isinstance(answer.then, HangUp) else TRANSFERRING
        else:
            answer.messages = self.history.for_model()
        answer.open_rounds += 1
        return [Ask(answer)]

    @staticmethod
    def _remembered(answer, audio):
        """Whether a piece goes in the history: the greeting, and the model's words; not
        the server's lines (a LINE, the apology, a reply's fixed last line, the filler)."""
        if answer.kind == GREETING:
            return True
        return (
            answer.kind == REPLY
            and answer.script is None
            and not answer.failed
            and audio.remembered
        )

    def _warn_once(self, key, service, message):
        if key in self.warned:
            return []
        self.warned.add(key)
        return [Warn(service, message)]

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
        self._not_leaving(answer)
        return [Cancel(answer)]

    def _cut_in(self, at, cleared_ms):
        """Barge-in: stop the answer; the history keeps what the caller heard of it."""
        answer, self.answer = self.answer, None
        playback = answer.playback
        self.history.answered(playback.heard(at, remembered=True), answer.kind == GREETING)
        self.interruptions += 1
        self.unanswered = False
        self._not_leaving(answer)
        heard, said = playback.heard(at), playback.text()
        return [Clear(), Cancel(answer), CutIn(heard, said, cleared_ms, _seconds(answer))]

    def _not_leaving(self, answer):
        """An answer that was to end or transfer the call was cut off: the caller has more
        to say, and the model is told the call goes on."""
        if answer.then is not None and answer.then.call_id is not None:
            self.history.tool_result(
                answer.then.call_id, _error("not done: the caller spoke first; the call goes on")
            )

    def _supersede(self, at):
        """New words from the caller stop the answer under way (one begun after the turn
        they end: the greeting, a line of the server's); a filler that told them their
        answer is coming plays on, and the answer follows it."""
        if self.answer is None:
            return []
        if self.answer.holding:
            answer, self.answer = self.answer, None
            return [] if answer.playback.audible else [Cancel(answer)]
        if self.answer.playback.audible:
            return self._cut_in(at, None)
        return self._drop()

    def _done_if_played(self):
        """An answer sent whole and played to its end goes into the history; then the
        call ends or is transferred, if the answer was to do that."""
        answer = self.answer
        playback = answer.playback
        if not playback.complete or not playback.all_played:
            return []
        self.answer = None
        self.history.answered(playback.text(remembered=True), answer.kind == GREETING)
        if answer.kind == REPLY:
            self.unanswered = False
        actions = [Said(playback.text(), _seconds(answer))] if playback.pieces else []
        if answer.then is not None:
            self.leaving = answer.then
            actions.append(answer.then)
        return actions


def _seconds(answer):
    """An answer's voice to voice, if it is a reply that was heard."""
    return answer.timing.stages.get("first_audio") if answer.timing else None


def _error(message):
    """A failed tool call's result, as the model is told it."""
    return orjson.dumps({"error": message}).decode()
