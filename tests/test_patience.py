"""The agent lets a caller who pauses mid-sentence finish (AGENT_PATIENCE): the real
server, the simulator's caller (a hum, which speech activity takes for words), and
tests/openai_stub.py as the transcription server (the texts it is told, a request each:
the early text at the pause first), the model and the voice."""

import re

import pytest
from conftest import agent_call, caller_wav, loud, stand_ins

from mediastream.endings import last_words, unfinished

SPLIT = [(3.0, 4.5), (5.7, 7.0)]  # 1.2 s of pause after "My order number is"


@pytest.mark.parametrize(
    "words, waits",
    [
        ("My order number is.", True),  # (Whisper's full stop after a fragment)
        ("I would like to book a table for.", True),
        ("I would like to book a table for...", True),
        ("Can you send it to", True),
        ("I want to change my", True),
        ("I have been waiting for an hour and", True),
        ("Um.", True),
        ("I am calling about my,", True),
        ("Yes, that's right.", False),
        ("Yes, it is.", False),  # "is" after a pronoun ends a sentence
        ("I think so.", False),
        ("Four five seven two.", False),
        ("I would like to book a table", False),  # may be whole: answered as ever
        ("Can I talk to a person?", False),
        ("", False),
    ],
)
def test_words_that_stop_mid_sentence_are_told_apart(words, waits):
    assert unfinished(words) is waits


def test_the_console_shows_the_last_words():
    assert last_words("I would like to book a table for.") == "... a table for"
    assert last_words("My name is") == "My name is"


def test_a_caller_who_pauses_mid_sentence_gets_one_answer_to_the_whole_turn(
    start_server, fresh_stub, tmp_path
):
    whole = "My order number is four five seven two."
    fresh_stub.control(transcripts=["My order number is", whole], answer="Sure.")
    server = stand_ins(start_server, fresh_stub)
    wav = caller_wav(tmp_path / "caller.wav", SPLIT, 11)
    lines, heard = agent_call(server, tmp_path, wav=wav, linger=1.5)
    assert 'agent: the caller paused mid-sentence ("... order number is"); waiting up to 1.5 s' in (
        lines
    )
    assert not loud(heard, 4.6, 5.7), lines  # nothing of an answer in the pause
    assert loud(heard, 7.6, 9.0)  # the answer, once the turn is over
    (request,) = fresh_stub.chat_requests()  # one answer, to the whole turn
    assert request["messages"][-1] == {"role": "user", "content": whole}
    assert re.search(r"sent back: .*; 0 clears", lines), lines
    assert lines.count("inbound 00:03.0:") == 1  # one utterance, both halves
    assert re.search(r"agent: turn 1: voice to voice 0\.[5-9]\d s", lines), lines


def test_a_complete_turn_is_answered_without_waiting(start_server, fresh_stub, tmp_path):
    fresh_stub.control(transcripts=["Yes, that's right."], answer="Sure.")
    server = stand_ins(start_server, fresh_stub)
    wav = caller_wav(tmp_path / "caller.wav", [(3.0, 4.0)], 8)
    lines, _ = agent_call(server, tmp_path, wav=wav)
    assert "paused mid-sentence" not in lines
    assert re.search(r"agent: turn 1: voice to voice 0\.[5-7]\d s", lines), lines


def test_a_caller_who_does_not_go_on_is_answered_after_the_patience(
    start_server, fresh_stub, tmp_path
):
    fresh_stub.control(transcripts=["My order number is"], answer="Sure.")
    server = stand_ins(start_server, fresh_stub, AGENT_PATIENCE="1")
    wav = caller_wav(tmp_path / "caller.wav", [(3.0, 4.5)], 9)
    lines, heard = agent_call(server, tmp_path, wav=wav)
    assert "waiting up to 1 s for the rest" in lines
    assert not loud(heard, 4.6, 5.9) and loud(heard, 6.1, 7.0)
    (request,) = fresh_stub.chat_requests()
    assert request["messages"][-1] == {"role": "user", "content": "My order number is"}
    assert re.search(r"agent: turn 1: voice to voice 1\.[5-7]\d s", lines), lines


def test_without_patience_the_pause_is_answered_as_ever(start_server, fresh_stub, tmp_path):
    fresh_stub.control(transcripts=["My order number is", "four five seven two."])
    server = stand_ins(start_server, fresh_stub, AGENT_PATIENCE="0")
    wav = caller_wav(tmp_path / "caller.wav", SPLIT, 11)
    lines, heard = agent_call(server, tmp_path, wav=wav, linger=1.5)
    assert "paused mid-sentence" not in lines
    assert loud(heard, 4.6, 5.7)  # an answer into the pause
