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
  pause), transcript, first token, first sentence, first audio (voice to voice); with
  tools, when the calls were complete, when the tools returned, the next first token.
- Tools (tools.py): each runs in a thread of TOOL_THREADS, so that a blocking one holds
  up no call; a slow one gets the caller AGENT_FILLER; end_call and transfer_call act on
  the call through stream.control (control.py) once the last words have played.
- Keys: the caller's digits go to the model as words ("(the caller pressed 4 5 7 2 #)").
- What the agent did (an answer said or cut, a tool, a hang-up, a transfer) goes to every
  handler as agent(stream, act): the console, the live pages and the fleet show it.
"""

import functools
import logging
import statistics
import time
from dataclasses import asdict, dataclass

import gevent
from gevent.threadpool import ThreadPool

from mediastream import tools, turns
from mediastream.apiclient import ServiceFailed
from mediastream.chat import ToolCall, history_tokens, load_model
from mediastream.console import counted
from mediastream.engines import transcribing
from mediastream.g711 import CHUNK_MS, CHUNK_SECONDS, SAMPLE_RATE
from mediastream.handlers import Handler, every
from mediastream.messages import cut
from mediastream.metrics import (
    AGENT_CALLS,
    AGENT_INTERRUPTIONS,
    AGENT_SECONDS,
    AGENT_TOOL_SECONDS,
    AGENT_TURNED_AWAY,
)
from mediastream.transcript import MIN_FRAMES
from mediastream.voices import load_voice

startup = logging.getLogger("mediastream.startup")

BARGE_IN_FRAMES = MIN_FRAMES  # 0.3 s of the caller's speech over an answer stops it
ERROR_CHARACTERS = 160  # of an unexpected error's message, in its line
TICK_SECONDS = 0.1  # how often the state machine looks at what waits (a filler is due at 0.7 s)
TOOL_THREADS = 16  # tools running at once in this process (more wait for a thread)
SHOWN_CHARACTERS = 80  # of a tool's arguments and result, in its console line


@dataclass(frozen=True)
class Act:
    """What the agent did, as handlers get it: agent(stream, act). `kind` is "said" (an
    answer played to its end), "cut" (the caller talked over it: `text` is what they
    heard), "tool" (a tool call: `tool`, `arguments`, `result` or `error`, `seconds`),
    "hang_up" (`text` says why) or "transfer" (`to`, the destination's name); `start` is
    seconds into the call; `voice_to_voice`, of the turn an answer replied to."""

    kind: str
    start: float
    text: str = ""
    voice_to_voice: float | None = None
    tool: str | None = None
    arguments: str | None = None
    result: str | None = None
    error: str | None = None
    seconds: float | None = None
    to: str | None = None

    def figures(self):
        """Its fields that are set, as JSON carries them (the fleet's `agent` entries)."""
        return {name: value for name, value in asdict(self).items() if value is not None}


@functools.cache
def offered_tools(config):
    """The tools offered on agent streams, or ConfigError (a bad AGENT_TOOLS): yours, then
    end_call, then transfer_call when AGENT_TRANSFER is set and Twilio's API can be used;
    none to the embedded model, which cannot call them. Said once, at startup."""
    offered = [*tools.load_tools(config.agent_tools, config.tools), tools.END_CALL]
    if config.agent == "local":
        if config.agent_tools or config.tools:
            startup.warning(
                "AGENT=local: the embedded model cannot call tools; yours are not offered "
                "(point AGENT at a real model)"
            )
        return ()
    if config.agent_transfer:
        if config.twilio_account_sid and config.auth_token:
            offered.append(tools.transfer_tool(dict(config.agent_transfer)))
        else:
            startup.warning(
                "AGENT_TRANSFER is set, but transfer_call is not offered: it needs Twilio's "
                "API (TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN)"
            )
    return tuple(offered)


OPEN_CALLS = set()  # this process's agent calls being answered (their stream SIDs)


def busy(config):
    """Why a new agent call would be turned away (AGENT_MAX_CALLS reached), or None."""
    limit = config.agent_max_calls
    if limit and len(OPEN_CALLS) >= limit:
        return f"{counted(len(OPEN_CALLS), 'agent call')} open, AGENT_MAX_CALLS={limit}"
    return None


@functools.cache
def tool_threads():
    return ThreadPool(TOOL_THREADS)


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
    offered = offered_tools(config)  # (a bad AGENT_TOOLS stops the server here)
    model = load_model(config)
    voice = load_voice(config) if config.speak else None
    if model is None or (config.speak and voice is None):
        missing.append("the embedded model or voice could not be loaded")
    if missing:
        why = "; ".join(missing)
        startup.warning("AGENT=%s, but %s: mode=agent streams get no answer", config.agent, why)
        return None, why
    startup.info(
        "agent: model %s; voice %s; history up to %d tokens; tools: %s",
        model.name,
        voice.name,
        history_tokens(config),
        ", ".join(tool.name for tool in offered) or "none",
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
        self.answering = {}  # answer -> its greenlets (a round each, a filler), in order
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
        config = self.config
        options = turns.Options(
            tools=offered_tools(config),
            transfer=dict(config.agent_transfer),
            filler=config.agent_filler,
            tool_timeout=config.agent_tool_timeout,
            digits_timeout=config.agent_digits_timeout,
            idle=config.agent_idle,
            idle_prompt=config.agent_idle_prompt,
        )
        self.turn_taking = turns.TurnTaking(
            config.agent_prompt, config.agent_greeting, history_tokens(config), options
        )
        self.call = tools.Call(
            stream.call_sid, stream.stream_sid, stream.name, dict(event.custom_parameters)
        )
        self.clock = every(TICK_SECONDS, self._tick, stream)
        why = busy(config)
        if why:
            AGENT_TURNED_AWAY.inc()
            stream.log.warning(
                'agent: all agents are busy (%s): the caller hears "%s" and the call ends',
                why,
                config.agent_busy_message,
            )
            self._handle(stream, turns.Started(busy=config.agent_busy_message))
            return
        OPEN_CALLS.add(stream.stream_sid)
        AGENT_CALLS.inc()
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

    def dtmf(self, stream, event):
        if self.turn_taking is not None:
            self._handle(stream, turns.KeyPressed(time.monotonic(), event.digit))

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
        how = _how_it_ended(taking.leaving, self.config)
        stream.log.info(
            "agent: %s, voice to voice median %.2f s; interrupted %s%s%s",
            counted(len(taking.voice_to_voice), "turn"),
            median,
            counted(taking.interruptions, "time"),
            f"; {counted(dropped, 'early turn')} left out of the history" if dropped else "",
            f"; {how}" if how else "",
            extra={
                "figures": {
                    "turns": len(taking.voice_to_voice),
                    "voice_to_voice_median": round(median, 3),
                    "interruptions": taking.interruptions,
                    "history_turns_dropped": dropped,
                    "ended": how,
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
            end_frame = round(utterance.end / CHUNK_SECONDS)
            self._handle(stream, turns.NotHeard(time.monotonic(), end_frame))

    # An answer's greenlet ----------------------------------------------------------------

    def _run(self, stream, answer):
        """Make one round of an answer: ask the model (or speak its script), a sentence at
        a time. A failure is said once, and the state machine may have the apology spoken."""
        failed = self._attempt(answer, self._make, stream, answer)
        while failed is not None:  # (the apology, and only a voice that works says it)
            failed = self._attempt(answer, self._handle, stream, failed)
        self._handle(stream, turns.AnswerSent(answer))

    def _make(self, stream, answer):
        if answer.script is not None:  # the greeting, or a line of the server's
            self._speak(stream, answer, answer.script)
            return
        calls = []
        for piece in self.model.stream(answer.messages, self.turn_taking.schemas):
            if isinstance(piece, ToolCall):
                calls.append(piece)
            else:
                self._handle(stream, turns.ModelWrote(answer, time.monotonic(), piece))
        self._handle(stream, turns.ModelDone(answer, time.monotonic(), tuple(calls)))

    def _filler(self, stream, answer, text):
        failed = self._attempt(answer, self._speak, stream, answer, text, False)
        if failed is not None:
            self._handle(stream, failed)

    def _spawn(self, answer, work, *args):
        """Run work(*args) for `answer` in a greenlet of its own, once the answer's earlier
        ones are done (what it says comes after what they say)."""
        earlier = self.answering.setdefault(answer, [])
        greenlet = gevent.spawn(self._after, list(earlier), work, *args)
        earlier.append(greenlet)
        greenlet.link(lambda done: earlier.remove(done) if done in earlier else None)

    @staticmethod
    def _after(earlier, work, *args):
        gevent.joinall(earlier)
        work(*args)

    def _run_tool(self, stream, call_id, tool, arguments):
        """A tool in a thread of the pool; its ToolDone comes back on the hub."""
        work = tool_threads().spawn(_outcome, tool, arguments, self.call)
        work.rawlink(
            lambda done: self._handle(
                stream, turns.ToolDone(call_id, time.monotonic(), *done.get())
            )
        )

    def _tick(self, stream):
        self._handle(stream, turns.Tick(time.monotonic()))

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

    def _speak(self, stream, answer, text, remembered=True):
        """One sentence to the caller, as its audio comes, then its mark."""
        try:
            for pcm in self.voice.speak(text):
                if pcm:
                    seconds = len(pcm) / 2 / SAMPLE_RATE
                    event = turns.VoiceAudio(
                        answer, time.monotonic(), text, pcm, seconds, remembered
                    )
                    self._handle(stream, event)
        except ServiceFailed as failure:
            raise _VoiceFailed(failure) from None
        self._handle(stream, turns.SentenceSpoken(answer))

    # Doing what the state machine says ------------------------------------------------

    def _handle(self, stream, event):
        self._do(stream, self.turn_taking.handle(event))

    def _call_ended(self, stream):
        if self.turn_taking is not None:
            if stream.stream_sid in OPEN_CALLS:
                OPEN_CALLS.discard(stream.stream_sid)
                AGENT_CALLS.dec()
            self.clock.close()
            self._handle(stream, turns.CallEnded())

    def _do(self, stream, actions):
        for action in actions:
            match action:
                case turns.SendAudio(pcm):
                    stream.talkback.audio(pcm=pcm)
                case turns.SendMark(name):
                    stream.talkback.mark(name)
                case turns.Speak(answer, text, remembered):  # (from the answer's greenlet)
                    self._speak(stream, answer, text, remembered)
                case turns.Begin(answer) | turns.Ask(answer):
                    self._spawn(answer, self._run, stream, answer)
                case turns.Filler(answer, text):
                    self._spawn(answer, self._filler, stream, answer, text)
                case turns.RunTool(call_id, tool, arguments):
                    self._run_tool(stream, call_id, tool, arguments)
                case turns.Cancel(answer):
                    for greenlet in self.answering.pop(answer, []):
                        greenlet.kill(block=False)  # its requests close as it wakes
                case turns.Clear():
                    stream.talkback.clear()
                case turns.Timed(timing):
                    self._timed(stream, timing)
                case turns.CutIn(heard, said, cleared_ms, seconds):
                    self._cut_in(stream, heard, said, cleared_ms)
                    self._acted(stream, "cut", text=heard, voice_to_voice=seconds)
                case turns.ToolRan():
                    self._tool_ran(stream, action)
                case turns.HangUp(why):
                    self._acted(stream, "hang_up", text=why)
                    gevent.spawn(self._hang_up, stream, why)
                case turns.Transfer(name, destination):
                    self._acted(stream, "transfer", to=name)
                    gevent.spawn(self._transfer, stream, name, destination)
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
                case turns.Said(text, seconds):
                    stream.log.info('agent said: "%s"', text)
                    self._acted(stream, "said", text=text, voice_to_voice=seconds)
                case turns.Warn(service, message):
                    level = logging.ERROR if service == "the answer" else logging.WARNING
                    stream.log.log(
                        level, "agent: %s failed: %s (the call goes on)", service, message
                    )

    def _acted(self, stream, kind, **fields):
        """Tell every handler what the agent did (the pages and the fleet show it)."""
        inbound = stream.tracks.get("inbound")
        start = stream.audio_seconds("inbound") if inbound else stream.duration()
        stream.handlers.agent(Act(kind, round(start, 2), **fields))

    def _tool_ran(self, stream, ran):
        AGENT_TOOL_SECONDS.labels(ran.name).observe(ran.seconds)
        arguments = cut(ran.arguments or "{}", SHOWN_CHARACTERS)
        if ran.error is None:
            stream.log.info(
                'agent: tool %s(%s) gave "%s" in %.2f s',
                ran.name,
                arguments,
                cut(ran.result, SHOWN_CHARACTERS),
                ran.seconds,
            )
        else:
            stream.log.log(
                logging.WARNING if ran.warn else logging.INFO,
                "agent: tool %s(%s) failed: %s (the model is told; the call goes on)",
                ran.name,
                arguments,
                ran.error,
            )
        self._acted(
            stream,
            "tool",
            tool=ran.name,
            arguments=ran.arguments,
            result=ran.result,
            error=ran.error,
            seconds=round(ran.seconds, 3),
        )

    def _hang_up(self, stream, why):
        reasons = {
            "goodbye": "the conversation is over",
            "idle": f"nobody spoke for {self.config.agent_idle:g} s, twice",
            "busy": "all agents are busy",
        }
        stream.log.info("agent: ending the call (%s)", reasons[why])
        if not stream.control.hang_up():
            stream.control.close()  # (Twilio's API failed: on <Connect>, this ends the call)

    def _transfer(self, stream, name, destination):
        stream.log.info("agent: transferring the call to %s (%s)", name, destination)
        if not stream.control.transfer(destination):
            self._handle(stream, turns.TransferFailed())

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


def _outcome(tool, arguments, call):
    """(result, None) or (None, the error), for a tool in a pool's thread: whatever the
    function raises is the model's to hear, not a traceback."""
    try:
        return tool.run(arguments, call), None
    except Exception as error:
        return None, cut(f"{type(error).__name__}: {error}", ERROR_CHARACTERS)


def _how_it_ended(leaving, config):
    """For the summary: how the agent ended the call, if it did."""
    match leaving:
        case turns.Transfer(name):
            return f"transferred to {name}"
        case turns.HangUp("idle"):
            return f"hung up after {config.agent_idle:g} s of silence, twice"
        case turns.HangUp("busy"):
            return "turned away: all agents busy"
        case turns.HangUp():
            return "ended the call"
    return None
