"""The agent's turn-taking (mediastream/turns.py), with no I/O: sequences of events in, the
actions out, written as a person would read a call's console."""

import pytest

from mediastream.dialogue import Conversation
from mediastream.turns import (
    APOLOGY,
    NOT_CAUGHT,
    AnswerFailed,
    AnswerSent,
    Begin,
    CallEnded,
    Cancel,
    Clear,
    CutIn,
    GreetingWaits,
    Heard,
    MarkPlayed,
    ModelDone,
    ModelWrote,
    NotHeard,
    Said,
    SendAudio,
    SendMark,
    SentenceSpoken,
    Speak,
    SpeechBegan,
    SpeechEnded,
    SpeechLasted,
    Started,
    Timed,
    TurnTaking,
    VoiceAudio,
    Warn,
    WentOn,
)

PROMPT, GREETING = "Be brief.", "Hello! How can I help?"


class Call:
    """A TurnTaking fed events at made-up times; what it did, in words."""

    def __init__(self, history_tokens=10_000):
        self.turns = TurnTaking(PROMPT, GREETING, history_tokens)
        self.answers = []  # each Begin's answer, in order

    def send(self, event):
        return [self._said(action) for action in self.turns.handle(event)]

    def _said(self, action):
        match action:
            case Begin(answer):
                self.answers.append(answer)
                return f"begin {answer.kind}" + (f": {answer.script}" if answer.script else "")
            case Speak(_, text):
                return f"speak: {text}"
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

    def model(self, at, *pieces, answer=None):
        """The model writes `pieces`, then finishes."""
        answer = answer or self.answer
        actions = [a for text in pieces for a in self.send(ModelWrote(answer, at, text))]
        return actions + self.send(ModelDone(answer, at))

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
    assert call.send(NotHeard(4.3)) == [f"begin line: {NOT_CAUGHT}"]
    assert call.voice(4.4, NOT_CAUGHT) == ["audio", "mark agent-2"]
    call.send(AnswerSent(call.answer))
    assert call.send(MarkPlayed(5.5, "agent-2")) == [f"said: {NOT_CAUGHT}"]
    call.send(SpeechBegan(6.0))
    call.send(SpeechEnded(7.0, 6.5, 325, True))
    assert call.send(NotHeard(7.3)) == [f"begin line: {NOT_CAUGHT}"]
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
        f"speak: {APOLOGY}",
    ]
    assert call.voice(6.5, APOLOGY) == ["audio", "mark agent-3"]
    call.send(AnswerSent(reply))
    call.send(MarkPlayed(7.0, "agent-2"))
    assert call.send(MarkPlayed(8.0, "agent-3")) == [f"said: We open at nine. {APOLOGY}"]
    assert call.messages()[-1] == assistant("We open at nine.")
    # The same failure again: the apology, and no second warning.
    call.caller(9.0, 10.0, "Hello?")
    assert call.send(AnswerFailed(call.answer, "the model", "connection lost", "x")) == [
        f"speak: {APOLOGY}"
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
    assert call.send(failed) == ["warn: the answer: KeyError: 'x'", f"speak: {APOLOGY}"]


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
