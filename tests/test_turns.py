"""The agent's turn-taking (mediastream/turns.py), with no I/O: sequences of events in, the
actions out, written as a person would read a call's console."""

import pytest

from mediastream.chat import ToolCall
from mediastream.dialogue import RUNNING, Conversation
from mediastream.tools import END_CALL, tool_from, transfer_tool
from mediastream.turns import (
    APOLOGY,
    GOODBYE,
    NOT_CAUGHT,
    NOT_TRANSFERRED,
    TRANSFERRING,
    AnswerFailed,
    AnswerSent,
    Ask,
    Begin,
    CallEnded,
    Cancel,
    Clear,
    CutIn,
    Filler,
    GreetingWaits,
    HangUp,
    Heard,
    KeyPressed,
    MarkPlayed,
    ModelDone,
    ModelWrote,
    NotHeard,
    Options,
    RunTool,
    Said,
    SendAudio,
    SendMark,
    SentenceSpoken,
    Speak,
    SpeechBegan,
    SpeechEnded,
    SpeechLasted,
    Started,
    Tick,
    Timed,
    ToolDone,
    ToolRan,
    Transfer,
    TransferFailed,
    TurnTaking,
    VoiceAudio,
    Warn,
    WentOn,
)

PROMPT, GREETING = "Be brief.", "Hello! How can I help?"


class Call:
    """A TurnTaking fed events at made-up times; what it did, in words."""

    def __init__(self, history_tokens=10_000, options=None):
        self.turns = TurnTaking(PROMPT, GREETING, history_tokens, options or Options())
        self.answers = []  # each Begin's answer, in order

    def send(self, event):
        return [self._said(action) for action in self.turns.handle(event)]

    def _said(self, action):
        match action:
            case Begin(answer):
                self.answers.append(answer)
                return f"begin {answer.kind}" + (f": {answer.script}" if answer.script else "")
            case Ask(answer):
                return "ask again" + (f": {answer.script}" if answer.script else "")
            case Speak(_, text, remembered):
                return f"speak: {text}" + ("" if remembered else " (not remembered)")
            case Filler(_, text):
                return f"filler: {text}"
            case RunTool(call_id, tool, arguments):
                return f"run {tool.name}({arguments}) as {call_id}"
            case ToolRan(name, _, result, error, _, warn):
                outcome = f"error {error}" if error else f"gave {result}"
                return f"{'warn: ' if warn else ''}{name} {outcome}"
            case HangUp(why):
                return f"hang up ({why})"
            case Transfer(name, destination):
                return f"transfer to {name} ({destination})"
            case SendAudio():
                return "audio"
            case SendMark(name):
                return f"mark {name}"
            case Clear():
                return "clear"
            case Cancel(answer):
                return f"cancel {answer.kind}"
            case Timed(timing):
                return f"turn {timing.number} timed"
            case CutIn(heard, said, _):
                return f"cut in: heard {heard!r} of {said!r}"
            case GreetingWaits():
                return "greeting waits"
            case WentOn(greeting):
                return f"went on ({'greeting' if greeting else 'reply'})"
            case Said(text):
                return f"said: {text}"
            case Warn(service, message):
                return f"warn: {service}: {message}"

    @property
    def answer(self):
        return self.answers[-1]

    def voice(self, at, text, seconds=1.0, answer=None):
        """The voice speaks `text` of the answer (the last begun): its audio, then its end."""
        answer = answer or self.answer
        return self.send(VoiceAudio(answer, at, text, b"\0\0", seconds)) + self.send(
            SentenceSpoken(answer)
        )

    def model(self, at, *pieces, answer=None, calls=()):
        """The model writes `pieces`, then finishes (calling `calls`)."""
        answer = answer or self.answer
        actions = [a for text in pieces for a in self.send(ModelWrote(answer, at, text))]
        return actions + self.send(ModelDone(answer, at, tuple(calls)))

    def caller(self, began, ended, text=None, heard_at=None, end_frame=None):
        """The caller speaks from `began` to `ended` (seconds), for words (0.3 s or more);
        speech activity ends the turn 0.5 s later; `text` comes at `heard_at`."""
        words = ended - began >= 0.3
        actions = self.send(SpeechBegan(began))
        if words:
            actions += self.send(SpeechLasted(began + 0.3, 280))
        frame = end_frame or round(ended / 0.02)
        actions += self.send(SpeechEnded(ended + 0.5, ended, frame, words))
        if text is not None:
            actions += self.send(Heard(heard_at or ended + 0.8, text, frame, 0.8))
        return actions

    def messages(self):
        return self.turns.history.messages[1:]  # after the system prompt


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def greeted(call):
    """The greeting, said and played whole."""
    assert call.send(Started()) == [f"begin greeting: {GREETING}"]
    assert call.voice(0.3, GREETING, seconds=1.5) == ["audio", "mark agent-1"]
    assert call.send(AnswerSent(call.answer)) == []
    assert call.send(MarkPlayed(1.8, "agent-1")) == [f"said: {GREETING}"]


def test_the_greeting_then_a_turn_answered_a_sentence_at_a_time():
    call = Call()
    greeted(call)
    assert call.caller(3.0, 5.0, "What time do you open?") == ["begin reply"]
    reply = call.answer
    assert reply.messages[1:] == [assistant(GREETING), user("What time do you open?")]
    assert call.send(ModelWrote(reply, 5.9, "We open at nine.")) == []  # may go on: "nine.5"
    assert call.send(ModelWrote(reply, 5.95, " Bye")) == ["speak: We open at nine."]
    assert call.voice(6.0, "We open at nine.") == ["turn 1 timed", "audio", "mark agent-2"]
    assert call.model(6.0) == ["speak: Bye"]
    assert call.voice(6.1, "Bye", seconds=0.3) == ["audio", "mark agent-3"]
    assert call.send(AnswerSent(reply)) == []
    assert call.send(MarkPlayed(7.0, "agent-2")) == []
    assert call.send(MarkPlayed(7.3, "agent-3")) == ["said: We open at nine. Bye"]
    assert reply.timing.stages == pytest.approx(
        {"end_of_turn": 0.5, "transcript": 0.8, "first_token": 0.9, "first_sentence": 0.95,
         "first_audio": 1.0}
    )  # fmt: skip
    assert call.messages()[-1] == assistant("We open at nine. Bye")


def test_hello_before_the_greeting_is_answered_by_the_greeting_which_stays_in_the_history():
    call = Call()
    assert call.send(Started()) == [f"begin greeting: {GREETING}"]
    # "Hello?" as the call connects, before the voice has sent anything of the greeting.
    assert call.send(SpeechBegan(0.1)) == ["cancel greeting", "greeting waits"]
    assert call.send(SpeechLasted(0.4, 280)) == []
    assert call.send(SpeechEnded(1.1, 0.6, 30, True)) == [f"begin greeting: {GREETING}"]
    assert call.voice(1.2, GREETING) == ["audio", "mark agent-1"]
    assert call.send(Heard(1.4, "Hello?", 30, 0.8)) == []  # the greeting is its answer
    assert call.send(AnswerSent(call.answer)) == []
    assert call.send(MarkPlayed(2.2, "agent-1")) == [f"said: {GREETING}"]
    assert call.messages() == [user("Hello?"), assistant(GREETING)]
    assert call.caller(4.0, 6.0, "Do you deliver?") == ["begin reply"]
    assert call.answer.messages[1:] == [
        user("Hello?"),
        assistant(GREETING),
        user("Do you deliver?"),
    ]


def test_hello_as_the_greeting_begins_clears_it_and_it_plays_again_when_they_stop():
    call = Call()
    call.send(Started())
    assert call.voice(0.2, GREETING) == ["audio", "mark agent-1"]
    first = call.answer
    assert call.send(SpeechBegan(0.3)) == ["clear", "cancel greeting", "went on (greeting)"]
    # The cancelled greeting's voice, already under way, sends nothing more.
    assert call.voice(0.35, GREETING, answer=first) == []
    assert call.send(AnswerSent(first)) == []
    assert call.send(SpeechEnded(1.3, 0.8, 40, True)) == [f"begin greeting: {GREETING}"]
    assert call.send(Heard(1.5, "Hello?", 40, 0.7)) == []
    assert call.voice(1.4, GREETING) == ["audio", "mark agent-2"]
    call.send(AnswerSent(call.answer))
    assert call.send(MarkPlayed(2.4, "agent-2")) == [f"said: {GREETING}"]
    assert call.messages() == [user("Hello?"), assistant(GREETING)]


def test_a_caller_who_pauses_mid_sentence_gets_one_answer_to_the_whole_turn():
    call = Call()
    greeted(call)
    assert call.caller(3.0, 4.5, "I would like to book a table") == ["begin reply"]
    # They go on before any of the answer has played: it is dropped, unheard.
    assert call.caller(5.6, 7.0, "for two people.") == ["cancel reply", "begin reply"]
    assert call.messages()[1:] == [user("I would like to book a table for two people.")]


def test_a_caller_still_speaking_when_their_words_come_is_answered_when_they_stop():
    call = Call()
    greeted(call)
    call.send(SpeechBegan(3.0))
    call.send(SpeechEnded(4.0, 3.5, 175, True))
    call.send(SpeechBegan(4.2))  # they went on
    assert call.send(Heard(4.4, "I would like", 175, 0.9)) == []
    assert call.send(SpeechEnded(6.0, 5.5, 275, True)) == []
    assert call.send(Heard(6.3, "a table.", 275, 0.8)) == ["begin reply"]
    assert call.messages()[1:] == [user("I would like a table.")]


def test_a_cough_that_cut_off_an_answer_before_it_played_brings_it_back():
    call = Call()
    greeted(call)
    call.caller(3.0, 5.0, "What time do you open?")
    assert call.send(SpeechBegan(6.0)) == ["cancel reply"]
    assert call.send(SpeechEnded(6.6, 6.1, 305, False)) == ["begin reply"]  # no words come
    assert call.messages()[1:] == [user("What time do you open?")]


def test_barge_in_keeps_what_the_caller_heard_and_fences_the_rest():
    call = Call()
    greeted(call)
    call.caller(3.0, 5.0, "Tell me about Saturday.")
    reply = call.answer
    call.model(5.9, "You asked about Saturday. ", "We open at nine and close at five.")
    call.voice(6.0, "You asked about Saturday.", seconds=1.2)
    call.voice(6.1, "We open at nine and close at five.", seconds=2.4)
    call.send(MarkPlayed(7.2, "agent-2"))
    assert call.send(SpeechBegan(8.1)) == []  # a second after it began: not a pause
    assert call.send(SpeechLasted(8.4, 280)) == [
        "clear",
        "cancel reply",
        "cut in: heard 'You asked about Saturday. We open at nine' of "
        "'You asked about Saturday. We open at nine and close at five.'",
    ]
    # Already on its way when it was cut: dropped.
    assert call.voice(8.5, "Anything else?", answer=reply) == []
    assert call.send(AnswerSent(reply)) == []
    assert call.send(MarkPlayed(8.5, "agent-3")) == []
    assert call.messages()[-1] == assistant("You asked about Saturday. We open at nine")
    assert call.turns.interruptions == 1


def test_words_that_could_not_be_transcribed_get_a_line_of_the_servers_each_time():
    call = Call()
    greeted(call)
    call.send(SpeechBegan(3.0))
    call.send(SpeechEnded(4.0, 3.5, 175, True))
    assert call.send(NotHeard(4.3, 175)) == [f"begin line: {NOT_CAUGHT}"]
    assert call.voice(4.4, NOT_CAUGHT) == ["audio", "mark agent-2"]
    call.send(AnswerSent(call.answer))
    assert call.send(MarkPlayed(5.5, "agent-2")) == [f"said: {NOT_CAUGHT}"]
    call.send(SpeechBegan(6.0))
    call.send(SpeechEnded(7.0, 6.5, 325, True))
    assert call.send(NotHeard(7.3, 325)) == [f"begin line: {NOT_CAUGHT}"]
    assert call.messages() == [assistant(GREETING)]  # the server's lines are not the model's


def test_a_model_that_fails_mid_answer_says_sorry_apart_from_what_it_said():
    call = Call()
    greeted(call)
    call.caller(3.0, 5.0, "What time do you open?")
    reply = call.answer
    call.send(ModelWrote(reply, 5.9, "We open at nine. "))
    call.send(ModelWrote(reply, 5.9, "On Sun"))
    call.voice(6.0, "We open at nine.")
    failed = AnswerFailed(reply, "the model", "connection lost", "the answer broke off")
    assert call.send(failed) == [
        "warn: the model: the answer broke off",
        f"speak: {APOLOGY} (not remembered)",
    ]
    assert call.voice(6.5, APOLOGY) == ["audio", "mark agent-3"]
    call.send(AnswerSent(reply))
    call.send(MarkPlayed(7.0, "agent-2"))
    assert call.send(MarkPlayed(8.0, "agent-3")) == [f"said: We open at nine. {APOLOGY}"]
    assert call.messages()[-1] == assistant("We open at nine.")
    # The same failure again: the apology, and no second warning.
    call.caller(9.0, 10.0, "Hello?")
    assert call.send(AnswerFailed(call.answer, "the model", "connection lost", "x")) == [
        f"speak: {APOLOGY} (not remembered)"
    ]


def test_a_voice_that_fails_closes_the_turn_and_the_next_words_are_a_turn_of_their_own():
    call = Call()
    greeted(call)
    call.caller(3.0, 5.0, "What time do you open?")
    failed = AnswerFailed(call.answer, "the voice", "HTTP 503", "HTTP 503 Service Unavailable")
    assert call.send(failed) == ["warn: the voice: HTTP 503 Service Unavailable"]
    assert call.send(AnswerSent(call.answer)) == []
    call.caller(8.0, 9.0, "Hello? Are you there?")
    assert call.answer.messages[-2:] == [
        user("What time do you open?"),
        user("Hello? Are you there?"),
    ]


def test_anything_else_that_fails_in_an_answer_is_one_warning_and_the_apology():
    call = Call()
    greeted(call)
    call.caller(3.0, 5.0, "What time do you open?")
    failed = AnswerFailed(call.answer, "the answer", "KeyError", "KeyError: 'x'")
    assert call.send(failed) == [
        "warn: the answer: KeyError: 'x'",
        f"speak: {APOLOGY} (not remembered)",
    ]


def test_nothing_of_an_answer_outlives_the_call():
    call = Call()
    greeted(call)
    call.caller(3.0, 5.0, "What time do you open?")
    reply = call.answer
    assert call.send(CallEnded()) == ["cancel reply"]
    assert call.model(6.0, "We open at nine. ", answer=reply) == []
    assert call.voice(6.0, "We open at nine.", answer=reply) == []
    assert call.caller(7.0, 8.0, "Hello?") == []


@pytest.mark.parametrize(
    "budget, kept",
    [
        (10_000, ["u1", "a1", "u2", "a2", "u3"]),  # all of it fits
        (150, ["u2", "a2", "u3"]),  # the oldest turn goes, whole (to 3/4 of the budget)
        (110, ["u3"]),  # never the last turn
        (1, ["u3"]),  # nor the head
    ],
)
def test_the_history_drops_the_oldest_turns_whole_and_keeps_its_head(budget, kept):
    conversation = Conversation("Be brief.", budget)
    conversation.opened_with("Hello?")
    conversation.answered("Hello! How can I help?", greeting=True)
    for turn in ("1", "2", "3"):
        conversation.caller_said(f"u{turn} " + "word " * 20)
        if turn != "3":
            conversation.answered(f"a{turn} " + "word " * 20)
    sent = conversation.for_model()
    assert [m["content"] for m in sent[:3]] == ["Be brief.", "Hello?", "Hello! How can I help?"]
    assert [m["content"].split()[0] for m in sent[3:]] == kept
    assert conversation.dropped == 3 - len(kept) // 2 - 1


def test_after_a_cut_the_history_grows_again_to_the_budget_before_the_next():
    conversation = Conversation("Be brief.", 100)
    first = []  # the first turn each request carries: it changes only at a cut
    for turn in range(1, 7):
        conversation.caller_said(f"u{turn} " + "word " * 10)  # 17 tokens a message
        first.append(conversation.for_model()[1]["content"].split()[0])
        conversation.answered(f"a{turn} " + "word " * 10)
    assert first == ["u1", "u1", "u1", "u3", "u3", "u5"]
    assert conversation.dropped == 4


# Tools, call control, keys and silence ------------------------------------------------


def order_status(order_id: str) -> str:
    """Where an order is."""


ORDER_STATUS = tool_from(order_status)
DESTINATIONS = {"sales": "+15550100", "support": "sip:h@x.io"}
TOOLS = Options(
    tools=(ORDER_STATUS, END_CALL, transfer_tool(DESTINATIONS)), transfer=DESTINATIONS, idle=8.0
)


def asked(call, at=5.0, text="Where is my order 4572?"):
    """A greeted call whose caller asks `text`: the reply is begun."""
    greeted(call)
    assert call.caller(3.0, at - 0.5, text, heard_at=at) == ["begin reply"]
    return call.answer


def tool_call(name, arguments="{}", call_id="call_1"):
    return ToolCall(call_id, name, arguments)


def called(call_id, name, arguments="{}"):
    """The assistant message with one tool call, as the history keeps it."""
    function = {"name": name, "arguments": arguments}
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": call_id, "type": "function", "function": function}],
    }


def result(call_id, content):
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def test_a_tool_the_model_calls_runs_and_the_model_is_asked_again_with_its_result():
    call = Call(options=TOOLS)
    reply = asked(call)
    order = tool_call("order_status", '{"order_id": "4572"}')
    assert call.model(5.3, calls=[order]) == ["run order_status({'order_id': '4572'}) as call_1"]
    # Until it returns, the history says it is running: valid for the API at every moment.
    assert call.messages()[-2:] == [
        called("call_1", order.name, order.arguments),
        result("call_1", RUNNING),
    ]
    assert call.send(Tick(5.6)) == []  # 0.3 s: no filler yet
    assert call.send(AnswerSent(reply)) == []  # (its first round: more is coming)
    assert call.send(ToolDone("call_1", 5.65, "Shipped on Monday.")) == [
        "order_status gave Shipped on Monday.",
        "ask again",
    ]
    assert reply.messages[-3:] == [
        user("Where is my order 4572?"),
        called("call_1", order.name, order.arguments),
        result("call_1", "Shipped on Monday."),
    ]
    assert call.model(5.9, "It shipped on Monday.") == ["speak: It shipped on Monday."]
    assert call.voice(6.0, "It shipped on Monday.") == ["turn 1 timed", "audio", "mark agent-2"]
    assert call.send(AnswerSent(reply)) == []
    assert call.send(MarkPlayed(7.0, "agent-2")) == ["said: It shipped on Monday."]
    assert reply.timing.stages == pytest.approx(
        {"transcript": 0.8, "end_of_turn": 0.5, "tool_called": 1.1, "tool_done": 1.45,
         "next_token": 1.7, "first_sentence": 1.7, "first_audio": 1.8}
    )  # fmt: skip
    assert call.messages()[-1] == assistant("It shipped on Monday.")


def test_a_slow_tool_gets_one_filler_that_stays_out_of_the_history():
    call = Call(options=TOOLS)
    reply = asked(call)
    call.model(5.3, calls=[tool_call("order_status", '{"order_id": "1"}')])
    assert call.send(Tick(5.9)) == []
    assert call.send(Tick(6.0)) == ["filler: One moment, please."]
    assert call.send(Tick(6.5)) == []  # once
    assert call.send(VoiceAudio(reply, 6.1, "One moment, please.", b"", 1.0, False)) == [
        "turn 1 timed",
        "audio",
    ]
    call.send(SentenceSpoken(reply))
    call.send(AnswerSent(reply))  # the first round's
    call.send(ToolDone("call_1", 7.0, "Shipped."))
    call.model(7.2, "Shipped.")
    call.voice(7.3, "Shipped.")
    call.send(AnswerSent(reply))
    call.send(MarkPlayed(7.5, "agent-2"))
    assert call.send(MarkPlayed(8.5, "agent-3")) == ["said: One moment, please. Shipped."]
    assert call.messages()[-1] == assistant("Shipped.")


def test_tools_that_cannot_run_give_the_model_an_error_and_one_warning_per_tool():
    call = Call(options=TOOLS)
    asked(call)
    calls = [
        tool_call("order_status", '{"order_id": 45', "call_1"),  # cut short: not JSON
        tool_call("book_table", "{}", "call_2"),
        tool_call("order_status", '{"order_id": 4572}', "call_3"),  # a number, not a string
    ]
    assert call.model(5.3, calls=calls) == [
        """warn: order_status error the arguments are not JSON: '{"order_id": 45'""",
        "warn: book_table error there is no tool named 'book_table'",
        "order_status error order_id must be a string, not 4572",
        "ask again",
    ]
    assert [m["content"] for m in call.answer.messages[-3:]] == [
        """{"error":"the arguments are not JSON: '{\\"order_id\\": 45'"}""",
        """{"error":"there is no tool named 'book_table'"}""",
        '{"error":"order_id must be a string, not 4572"}',
    ]


def test_a_tool_that_raises_or_times_out_is_an_error_for_the_model():
    call = Call(options=TOOLS)
    asked(call)
    call.model(5.3, calls=[tool_call("order_status", '{"order_id": "1"}')])
    assert call.send(ToolDone("call_1", 5.4, None, "RuntimeError: db down")) == [
        "warn: order_status error RuntimeError: db down",
        "ask again",
    ]
    call.model(5.5, calls=[tool_call("order_status", '{"order_id": "2"}', "call_2")])
    call.send(Tick(5.6 + 0.7))  # (the filler)
    assert call.send(Tick(15.6)) == [
        "order_status error it took longer than 10 s",  # (warned once already)
        "ask again",
    ]
    assert call.send(ToolDone("call_2", 16.0, "Shipped.")) == []  # too late: the model was told
    assert call.messages()[-1] == result("call_2", '{"error":"it took longer than 10 s"}')


def test_barge_in_while_a_tool_runs_keeps_its_call_and_result_and_drops_its_answer():
    call = Call(options=TOOLS)
    reply = asked(call)
    order = tool_call("order_status", '{"order_id": "4572"}')
    assert call.model(5.3, "Let me check.", calls=[order]) == [
        "speak: Let me check.",
        "run order_status({'order_id': '4572'}) as call_1",
    ]
    call.voice(5.4, "Let me check.")
    call.send(AnswerSent(reply))
    call.send(MarkPlayed(6.4, "agent-2"))
    # The caller talks over the answer (here its filler would come) while the tool runs.
    assert call.caller(6.5, 7.5, "Actually, never mind.") == [
        "clear",
        "cancel reply",
        "cut in: heard 'Let me check.' of 'Let me check.'",  # (its whole first piece played)
        "begin reply",
    ]
    new_reply = call.answer
    assert new_reply.messages[-4:] == [
        called("call_1", order.name, order.arguments),
        result("call_1", RUNNING),
        assistant("Let me check."),
        user("Actually, never mind."),
    ]
    # The tool finishes: its result goes in the history; nothing is asked for the old answer.
    assert call.send(ToolDone("call_1", 8.5, "Shipped on Monday.")) == [
        "order_status gave Shipped on Monday."
    ]
    assert call.messages()[-3] == result("call_1", "Shipped on Monday.")
    assert call.answer is new_reply


def test_tool_rounds_end_with_the_apology_after_five():
    call = Call(options=TOOLS)
    reply = asked(call)
    for n in range(5):
        call.model(5.3 + n, calls=[tool_call("order_status", '{"order_id": "1"}', f"call_{n}")])
        assert call.send(ToolDone(f"call_{n}", 5.4 + n, "Shipped.")) == [
            "order_status gave Shipped.",
            "ask again",
        ]
    assert call.model(11.0, calls=[tool_call("order_status", '{"order_id": "1"}', "call_9")]) == [
        "warn: the model: it called tools 5 times in one answer; giving up",
        f"speak: {APOLOGY} (not remembered)",
    ]
    assert reply.failed


def test_end_call_with_goodbye_hangs_up_once_the_goodbye_has_played():
    call = Call(options=TOOLS)
    reply = asked(call, text="That's all, thanks. Bye!")
    assert call.model(5.3, "Goodbye!", calls=[tool_call("end_call")]) == [
        "speak: Goodbye!",
        "end_call gave The call ends once the caller has heard you.",
    ]
    call.voice(5.4, "Goodbye!")
    assert call.send(AnswerSent(reply)) == []
    assert call.send(MarkPlayed(6.4, "agent-2")) == ["said: Goodbye!", "hang up (goodbye)"]
    assert call.caller(6.5, 7.0, "Wait!") == []  # the call is ending: nothing more is said


def test_end_call_alone_says_goodbye_for_the_model():
    call = Call(options=TOOLS)
    reply = asked(call, text="Bye!")
    assert call.model(5.3, calls=[tool_call("end_call")]) == [
        "end_call gave The call ends once the caller has heard you.",
        f"ask again: {GOODBYE}",
    ]
    call.voice(5.4, GOODBYE)
    call.send(AnswerSent(reply))  # the model's round
    assert call.send(AnswerSent(reply)) == []  # the goodbye's: sent, not yet played
    assert call.send(MarkPlayed(6.0, "agent-2")) == [f"said: {GOODBYE}", "hang up (goodbye)"]
    assert call.messages()[-1]["role"] == "tool"  # the server's line is not the model's


def test_a_caller_who_talks_over_the_goodbye_keeps_the_call():
    call = Call(options=TOOLS)
    reply = asked(call, text="Bye!")
    call.model(5.3, "Goodbye!", calls=[tool_call("end_call")])
    call.voice(5.4, "Goodbye!", seconds=2.0)
    call.send(AnswerSent(reply))
    assert call.caller(6.0, 7.0, "Oh wait, one more thing.")[-1] == "begin reply"
    ended = '{"error":"not done: the caller spoke first; the call goes on"}'
    assert result("call_1", ended) in call.answer.messages


def test_transfer_says_a_line_then_transfers_and_a_failure_is_told_to_the_caller():
    call = Call(options=TOOLS)
    reply = asked(call, text="I want a person.")
    assert call.model(5.3, calls=[tool_call("transfer_call", '{"to": "support"}')]) == [
        "transfer_call gave Transferring the call to support.",
        f"ask again: {TRANSFERRING}",
    ]
    call.voice(5.4, TRANSFERRING)
    call.send(AnswerSent(reply))
    call.send(AnswerSent(reply))
    assert call.send(MarkPlayed(7.0, "agent-2")) == [
        f"said: {TRANSFERRING}",
        "transfer to support (sip:h@x.io)",
    ]
    assert call.send(TransferFailed()) == [f"begin line: {NOT_TRANSFERRED}"]
    assert call.messages()[-1] == result("call_1", '{"error":"the transfer failed"}')


def test_keys_go_to_the_model_together_and_a_key_stops_an_answer():
    call = Call(options=TOOLS)
    greeted(call)
    assert call.send(KeyPressed(3.0, "4")) == []
    assert call.send(KeyPressed(3.5, "5")) == []
    assert call.send(Tick(5.4)) == []
    assert call.send(KeyPressed(5.45, "#")) == ["begin reply"]  # "#" ends them at once
    assert call.messages()[-1] == user("(the caller pressed 4 5 #)")
    reply = call.answer
    call.model(5.6, "Thanks.")
    call.voice(5.7, "Thanks.", seconds=3.0)
    assert call.send(KeyPressed(6.0, "1")) == [
        "clear",
        "cancel reply",
        "cut in: heard '' of 'Thanks.'",
    ]
    assert call.send(Tick(7.9)) == []
    assert call.send(Tick(8.0)) == ["begin reply"]  # 2 s after the last key
    assert call.messages()[-1] == user("(the caller pressed 1)")
    assert reply is not call.answer


def test_a_silent_caller_is_asked_once_then_the_call_ends():
    call = Call(options=TOOLS)
    greeted(call)  # its mark came back at 1.8 s
    assert call.send(Tick(9.7)) == []
    assert call.send(Tick(9.8)) == ["begin line: Are you still there?"]
    call.voice(9.9, "Are you still there?")
    call.send(AnswerSent(call.answer))
    assert call.send(MarkPlayed(11.0, "agent-2")) == ["said: Are you still there?"]
    assert call.send(Tick(18.9)) == []
    assert call.send(Tick(19.0)) == ["hang up (idle)"]
    assert call.send(Tick(30.0)) == []


def test_a_caller_who_answers_the_idle_prompt_resets_it():
    call = Call(options=TOOLS)
    greeted(call)
    call.send(Tick(9.8))
    call.voice(9.9, "Are you still there?")
    call.send(AnswerSent(call.answer))
    call.send(MarkPlayed(11.0, "agent-2"))
    assert call.caller(12.0, 13.0, "Yes.") == ["begin reply"]
    call.model(14.0, "Good.")
    call.voice(14.1, "Good.")
    call.send(AnswerSent(call.answer))
    call.send(MarkPlayed(15.0, "agent-3"))
    assert call.send(Tick(23.0)) == ["begin line: Are you still there?"]  # asked again, anew


def test_a_caller_whose_words_are_late_hears_the_filler_then_the_answer():
    call = Call(options=TOOLS)
    greeted(call)
    call.send(SpeechBegan(3.0))
    call.send(SpeechEnded(5.0, 4.5, 225, True))
    assert call.send(Tick(8.4)) == []  # (a transcription takes a while: no filler yet)
    assert call.send(Tick(8.5)) == ["begin line: One moment, please."]
    assert call.voice(8.6, "One moment, please.") == ["audio", "mark agent-2"]
    assert call.send(Tick(9.0)) == []  # once
    # The words come while the filler plays: it plays on, and the answer follows it.
    assert call.send(Heard(9.2, "Where is my order?", 225, 4.7)) == ["begin reply"]
    assert call.messages()[-1] == user("Where is my order?")
    assert call.turns.interruptions == 0
