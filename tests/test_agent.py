"""The agent (mode=agent): the real server, Whisper hearing the simulator's spoken caller,
and OpenAI-compatible chat and speech servers (tests/openai_stub.py, or the embedded
default). What the caller hears comes back through the simulator, as Twilio plays it.

These need requirements-transcribe.txt (the caller is heard by Whisper); the embedded
default needs requirements-agent.txt. CI installs both and runs them.
"""

import json
import re
import signal
import time

import pytest
import requests
from conftest import (
    AGENT_CALL,
    FIXTURES,
    agent_call,
    caller_wav,
    finished,
    later_barge_in,
    loud,
    read_wav,
    requires,
    stand_ins,
    start_simulation,
    write_wav,
)

from mediastream.config import Config, ConfigError

QUESTIONS = json.loads((FIXTURES / "agent-call.json").read_text())["sentences"]
SHORT_ANSWER = "I can help with that."
# An answer is heard within this many seconds of the question's end: Whisper takes 1.5 to
# 2 s a turn on the machines here (how fast it is, bench/agent.py says; these test that).
ANSWERED_BY = 3.5

engine = requires("faster_whisper", "requirements-transcribe.txt")


@pytest.fixture
def agent_server(start_server, openai_stub):
    openai_stub.control(answer=SHORT_ANSWER)
    return start_server(AGENT=openai_stub.url, SPEAK=openai_stub.url, TRANSCRIBE="local")


@engine
@pytest.mark.transcribe
def test_three_turns_one_answer_each_and_a_barge_in_keeps_what_was_heard(
    agent_server, openai_stub, tmp_path
):
    wav, questions = later_barge_in(tmp_path / "call.wav", 1.5)
    lines, heard = agent_call(agent_server, tmp_path, wav=wav)
    assert loud(heard, 0.1, 1.5)  # the greeting
    assert 'agent said: "Hello! How can I help you today?"' in lines
    # (A turn's answer that began as the caller went on is dropped, and that turn's
    # number comes again: "the caller went on with their turn".)
    turns = re.findall(r"agent: turn (\d): voice to voice [\d.]+ s \(end of turn", lines)
    assert set(turns) == {"1", "2", "3"}, lines
    for question in questions[:1] + questions[2:]:  # each answered, out loud
        assert loud(heard, question["end"] + 0.5, question["end"] + ANSWERED_BY)
    # The third turn talked over the second answer: cleared within 0.7 s of its first word.
    barge_in = re.search(
        r"barge-in: the caller talked over the agent; cleared (\d+) ms after their first "
        r'word; they heard (\d+) of (\d+) words: "(.*)"',
        lines,
    )
    assert barge_in and int(barge_in[1]) <= 700, lines
    heard_words, said_words = int(barge_in[2]), int(barge_in[3])
    assert 0 < heard_words < said_words
    assert "mark: agent-" in lines and "cleared before it played" in lines
    assert re.search(r"agent: 3 turns, voice to voice median [\d.]+ s; interrupted 1 time", lines)
    metrics = requests.get(f"http://127.0.0.1:{agent_server.port}/metrics", timeout=5).text
    for stage in ("end_of_turn", "transcript", "first_token", "first_sentence", "first_audio"):
        assert f'mediastream_agent_seconds_count{{stage="{stage}"}} 3.0' in metrics
    assert "mediastream_agent_interruptions_total 1.0" in metrics

    answered = [request["messages"] for request in openai_stub.chat_requests()][-3:]
    # The second turn paused mid-sentence: one answer, to all of it.
    second_turn = answered[1][-1]["content"]
    assert second_turn.count("table") == 1 and "two" in second_turn, answered[1]
    # The third request's history keeps what the caller heard of the second answer.
    assert answered[2][-2] == {"role": "assistant", "content": barge_in[4]}
    full_answer = f"You said: {second_turn.strip().rstrip('.?!')}. {SHORT_ANSWER}"
    assert full_answer.startswith(barge_in[4]) and len(barge_in[4].split()) == heard_words
    assert answered[0][:2] == [
        {"role": "system", "content": Config.agent_prompt},
        {"role": "assistant", "content": Config.agent_greeting},
    ]


@engine
@pytest.mark.transcribe
@pytest.mark.parametrize(
    "behaviour, warning",
    [
        (
            {"chat": {"status": 401}},
            "agent: the model failed: HTTP 401 Unauthorized: stub says 401 (the call goes on)",
        ),
        (
            {"chat": {"garbage": True}},
            "agent: the model failed: not a chat completion: this is not JSON",
        ),
        ({"speech": {"status": 503}}, "agent: the voice failed: HTTP 503 Service Unavailable"),
    ],
)
def test_a_failing_model_or_voice_is_one_warning_and_the_call_goes_on(
    agent_server, openai_stub, tmp_path, behaviour, warning
):
    openai_stub.control(answer=SHORT_ANSWER, **behaviour)
    lines, heard = agent_call(agent_server, tmp_path, seconds=19, linger=2.5)  # two turns
    assert lines.count("WARNING") == 1 and warning in lines, lines
    assert "Traceback" not in agent_server.log()
    assert "summary: stream" in lines
    if "chat" in behaviour:  # the voice still works: an apology, after each turn (the
        # second is cut short by the stop: nothing of an answer outlives the call)
        assert lines.count('agent said: "Sorry, I can\'t answer that right now."') == 1
        assert len(re.findall(r"agent: turn \d: voice to voice", lines)) == 2
        assert loud(heard, QUESTIONS[0]["end"] + 0.5, QUESTIONS[0]["end"] + ANSWERED_BY)


@engine
@pytest.mark.transcribe
def test_a_model_that_is_not_there_is_said_once(start_server, openai_stub, tmp_path):
    server = start_server(AGENT="http://127.0.0.1:9/v1", SPEAK=openai_stub.url, TRANSCRIBE="local")
    lines, _ = agent_call(server, tmp_path, seconds=9)
    assert "agent: the model failed: connection refused (is 127.0.0.1:9 running?)" in lines


def test_mode_agent_without_an_agent_says_why_and_nobody_answers(start_server, tmp_path):
    server = start_server()
    lines, heard = agent_call(server, tmp_path, seconds=2)
    assert "agent: mode=agent, but AGENT is not set: nobody answers" in lines
    assert not loud(heard, 0, 2)


def test_an_agent_without_transcripts_or_voice_is_said_at_startup(start_server, openai_stub):
    server = start_server(AGENT=openai_stub.url)
    server.wait_for(
        r"AGENT=\S+, but SPEAK is not set \(the agent has no voice\); transcripts are off "
        r"\(set TRANSCRIBE, such as TRANSCRIBE=local\): mode=agent streams get no answer"
    )


@pytest.mark.parametrize(
    "name, value",
    [("AGENT", "openai"), ("AGENT", "ftp://x/v1"), ("SPEAK", "http://?x"), ("SPEAK", "loca")],
)
def test_agent_and_speak_are_local_or_a_url(name, value):
    with pytest.raises(ConfigError, match=f"{name} must be local, or .*base URL like"):
        Config.from_environ({name: value})


def test_the_agent_settings_are_read_and_secrets_never_shown():
    config = Config.from_environ(
        {
            "AGENT": "http://10.0.0.5:8000/v1/",
            "AGENT_MODEL": "llama3",
            "AGENT_API_KEY": "sk-secret",
            "AGENT_PROMPT": "  Be a pirate.  ",
            "SPEAK": "local",
            "SPEAK_API_KEY": "sk-voice",
        }
    )
    assert (config.agent, config.agent_model, config.speak) == (
        "http://10.0.0.5:8000/v1",
        "llama3",
        "local",
    )
    assert config.agent_prompt == "  Be a pirate.  "  # sent exactly as given
    assert "sk-secret" not in repr(config) and "sk-voice" not in repr(config)


# Stand-ins for all three tiers (transcription too): no Whisper, the caller a hum ---------


def user(text):
    return {"role": "user", "content": text}


def test_a_caller_who_says_hello_first_hears_the_greeting_when_they_stop(
    start_server, fresh_stub, tmp_path
):
    # The voice takes 0.4 s: "Hello?" (0.05 to 0.65 s) begins before any of the greeting.
    fresh_stub.control(
        speech={"delay": 0.4}, transcripts=["Hello?", "What time do you open?"], answer="Sure."
    )
    server = stand_ins(start_server, fresh_stub)
    wav = caller_wav(tmp_path / "caller.wav", [(0.05, 0.65), (5.0, 6.5)], 10)
    lines, heard = agent_call(server, tmp_path, wav=wav, linger=1.5)
    assert not loud(heard, 0, 1.2) and loud(heard, 1.6, 3.0), lines  # after their hello
    assert lines.count(f'agent said: "{Config.agent_greeting}"') == 1, lines
    assert "agent: the caller spoke first; the greeting plays when they stop" in lines
    assert re.search(r"agent: 1 turn, voice to voice median [\d.]+ s", lines), lines
    (request,) = fresh_stub.chat_requests()  # the greeting answered "Hello?"; one turn more
    assert request["messages"][1:] == [
        user("Hello?"),
        {"role": "assistant", "content": Config.agent_greeting},
        user("What time do you open?"),
    ]


def test_words_a_transcription_server_could_not_hear_get_sorry_each_time(
    start_server, fresh_stub, tmp_path
):
    fresh_stub.control(transcription={"status": 500})
    server = stand_ins(start_server, fresh_stub)
    wav = caller_wav(tmp_path / "caller.wav", [(3.0, 4.5), (7.0, 8.5)], 11)
    lines, heard = agent_call(server, tmp_path, wav=wav, linger=1.5)
    assert lines.count('agent said: "Sorry, I didn\'t catch that."') == 2, lines
    assert loud(heard, 5.1, 6.5) and loud(heard, 9.1, 10.5)
    assert lines.count("WARNING") == 1 and "the engine failed: HTTP 500" in lines, lines
    assert fresh_stub.chat_requests() == []


@pytest.mark.parametrize(
    "chat, line",
    [
        (
            {"break_after": 4},  # "You said: Please cancel" and the connection dropped
            "WARNING [{}] agent: the model failed: the answer broke off",
        ),
        (
            {"number": True},  # nothing any server should send: our own code trips on it
            "ERROR   [{}] agent: the answer failed: TypeError: can only concatenate str",
        ),
    ],
)
def test_a_model_that_fails_mid_answer_gets_the_caller_an_apology_kept_out_of_the_history(
    start_server, fresh_stub, tmp_path, chat, line
):
    fresh_stub.control(chat=chat)
    server = stand_ins(start_server, fresh_stub)
    wav = caller_wav(tmp_path / "caller.wav", [(3.0, 4.5), (8.0, 9.5)], 13)
    lines, heard = agent_call(server, tmp_path, wav=wav, linger=1.5)
    tag = re.search(r"\[(\w{8})\] summary", lines)[1]
    assert len(re.findall("WARNING|ERROR", lines)) == 1 and line.format(tag) in lines, lines
    assert lines.count('agent said: "Sorry, I can\'t answer that right now."') == 2, lines
    assert loud(heard, 5.1, 6.5)
    assert "Traceback" not in server.log()
    second = fresh_stub.chat_requests()[1]["messages"]
    assert second[-2:] == [user("Please cancel my order."), user("Please cancel my order.")]


def test_nothing_of_an_answer_outlives_a_call_that_stops(start_server, fresh_stub, tmp_path):
    # A model and a voice that take their time: both are answering when the call stops.
    fresh_stub.control(chat={"pause": 0.1}, speech={"pause": 0.1})
    server = stand_ins(start_server, fresh_stub)
    wav = caller_wav(tmp_path / "caller.wav", [(2.0, 3.0)], 5.5)
    simulation = start_simulation(server, "--param", "mode=agent", "--wav", str(wav))
    server.wait_for(r"\] stop: call", timeout=20)
    stopped = time.time()
    assert finished(simulation)[0] == 0
    assert_all_closed_by(fresh_stub, stopped + 0.5)


def test_nothing_of_an_answer_outlives_a_dropped_connection(start_server, fresh_stub, tmp_path):
    fresh_stub.control(chat={"pause": 0.1}, speech={"pause": 0.1})
    server = stand_ins(start_server, fresh_stub)
    wav = caller_wav(tmp_path / "caller.wav", [(2.0, 3.0)], 30)
    simulation = start_simulation(server, "--param", "mode=agent", "--wav", str(wav))
    deadline = time.monotonic() + 20
    while not any(r["kind"] == "speech" and not r["ended"] for r in answering(fresh_stub)):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    simulation.send_signal(signal.SIGKILL)  # no stop: the connection just goes
    dropped = time.time()
    simulation.wait(5)
    server.wait_for(r"summary: stream .* ended by disconnect", timeout=10)
    assert_all_closed_by(fresh_stub, dropped + 0.5)


def answering(stub):
    """The chat and speech requests after the greeting's."""
    return [r for r in stub.served() if r["kind"] != "transcription"][1:]


def assert_all_closed_by(stub, deadline):
    time.sleep(max(0.0, deadline + 0.5 - time.time()))
    cut = answering(stub)
    assert any(r["kind"] == "chat" for r in cut) and any(r["gone"] for r in cut), cut
    assert all(r["ended"] is not None and r["ended"] <= deadline for r in cut), (deadline, cut)


@pytest.mark.parametrize("fresh_stub", [False, True], ids=["http", "https"], indirect=True)
def test_the_three_tiers_share_kept_alive_connections(start_server, fresh_stub, tmp_path):
    fresh_stub.control(answer="Sure.")
    server = stand_ins(start_server, fresh_stub)
    wav = caller_wav(tmp_path / "caller.wav", [(2.0, 3.0), (6.0, 7.0)], 10)
    lines, heard = agent_call(server, tmp_path, wav=wav, linger=1.5)
    assert re.search(r"agent: 2 turns, voice to voice median [\d.]+ s", lines), lines
    served = fresh_stub.served()
    kinds = [r["kind"] for r in served]
    assert kinds.count("transcription") == 2 and kinds.count("chat") == 2, kinds
    # A model's answer streams while its sentences are spoken: two at once, at most.
    assert len(served) >= 8 and len({r["connection"] for r in served}) <= 3, served


# The embedded default: SmolLM2, Piper and Whisper, all in the server ---------------------


@requires("xllamacpp", "requirements-agent.txt")
@pytest.mark.agent
def test_the_embedded_default_greets_and_answers_out_loud(start_server, tmp_path):
    from faster_whisper import WhisperModel

    from mediastream.engines import packaged_model, transcribe

    server = start_server(AGENT="local", SPEAK="local", TRANSCRIBE="local")
    server.wait_for(r"agent: model SmolLM2-135M-Instruct \(Q4_1\), local.*voice Piper", 60)
    lines, heard = agent_call(server, tmp_path, seconds=11)
    whisper = WhisperModel(packaged_model(), device="cpu", compute_type="int8", cpu_threads=2)
    greeting = transcribe(whisper, heard[: int(QUESTIONS[0]["start"] * 8000) * 2])
    assert "help" in greeting.lower(), greeting
    answer_at = int((QUESTIONS[0]["end"] + 0.3) * 8000) * 2
    answer = transcribe(whisper, heard[answer_at:])
    said = re.search(r'agent said: "(.*)"', lines.split("turn 1")[-1])
    assert len(answer.split()) >= 3, (answer, lines)  # words, heard back
    print(f"the embedded model answered: {said[1] if said else lines}\nheard back: {answer}")
    assert re.search(r"agent: turn 1: voice to voice [\d.]+ s", lines)


@requires("xllamacpp", "requirements-agent.txt")
@pytest.mark.agent
def test_a_forty_turn_call_on_the_embedded_model_is_answered_at_every_turn(start_server, tmp_path):
    """A long call (about five and a half minutes): two questions of the test call, asked
    in turn 40 times, each 6 s after the last ended (time for the answer to begin on two
    cores that run Whisper, the model and the voice: up to 4.3 s here while another
    process took a core). A small AGENT_HISTORY makes the history drop its oldest turns
    many times over; the model must still answer each one."""
    pcm = read_wav(AGENT_CALL)
    asked = [QUESTIONS[0], QUESTIONS[3]]
    pieces, at = [], 4.0  # after the greeting (asked as it plays, the greeting answers it)
    for n in range(40):
        question = asked[n % 2]
        pieces.append(
            (at, pcm[int(question["start"] * 8000) * 2 : int(question["end"] * 8000) * 2])
        )
        at += question["end"] - question["start"] + 6.0
    caller = bytearray(int((at + 1) * 8000) * 2)
    for start, spoken in pieces:
        caller[int(start * 8000) * 2 : int(start * 8000) * 2 + len(spoken)] = spoken
    long_call = write_wav(tmp_path / "long-call.wav", bytes(caller))
    server = start_server(AGENT="local", SPEAK="local", TRANSCRIBE="local", AGENT_HISTORY="300")
    server.wait_for(r"agent: model SmolLM2.*history up to 300 tokens", 60)
    lines, _ = agent_call(server, tmp_path, wav=long_call, linger=3, timeout=at + 60)
    assert "failed" not in lines and "WARNING" not in lines, lines
    turns = [int(n) for n in re.findall(r"agent: turn (\d+): voice to voice", lines)]
    assert turns == list(range(1, 41)), lines
    dropped = re.search(r"agent: 40 turns, .*; (\d+) early turns left out of the history", lines)
    assert dropped and int(dropped[1]) >= 20, lines
