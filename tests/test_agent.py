"""The agent (mode=agent): the real server, Whisper hearing the simulator's spoken caller,
and OpenAI-compatible chat and speech servers (tests/openai_stub.py, or the embedded
default). What the caller hears comes back through the simulator, as Twilio plays it.

These need requirements-transcribe.txt (the caller is heard by Whisper); the embedded
default needs requirements-agent.txt. CI installs both and runs them.
"""

import json
import re
import wave

import pytest
import requests
from conftest import FIXTURES, requires, simulate

from mediastream.config import Config, ConfigError

AGENT_CALL = FIXTURES / "agent-call.wav"  # three turns; the third talks over an answer
QUESTIONS = json.loads((FIXTURES / "agent-call.json").read_text())["sentences"]
SHORT_ANSWER = "I can help with that."

engine = requires("faster_whisper", "requirements-transcribe.txt")


def call(server, tmp_path, seconds=None, linger=1):
    """The agent call played into `server`; its console lines and what the caller heard
    (16-bit PCM at 8 kHz)."""
    heard = tmp_path / f"heard-{len(list(tmp_path.iterdir()))}.wav"
    options = ["--seconds", str(seconds)] if seconds else []
    status, output = simulate(
        server,
        *("--param", "mode=agent", "--wav", str(AGENT_CALL), "--output", str(heard)),
        *("--linger", str(linger), *options),
        timeout=90,
    )
    assert status == 0 and "Twilio would reject" not in output, output
    tag = server.wait_for(r"\[(\w{8})\] summary:")[1]  # each test's server has one call
    lines = "\n".join(server.lines(f"[{tag}]"))
    with wave.open(str(heard)) as wav:
        return lines, wav.readframes(wav.getnframes())


def loud(pcm, start, end):
    """Whether the caller heard anything between `start` and `end` seconds."""
    samples = memoryview(pcm[int(start * 8000) * 2 : int(end * 8000) * 2]).cast("h")
    return max(map(abs, samples), default=0) > 500


@pytest.fixture
def agent_server(start_server, openai_stub):
    openai_stub.control(answer=SHORT_ANSWER)
    return start_server(AGENT=openai_stub.url, SPEAK=openai_stub.url, TRANSCRIBE="local")


@engine
@pytest.mark.transcribe
def test_three_turns_one_answer_each_and_a_barge_in_keeps_what_was_heard(
    agent_server, openai_stub, tmp_path
):
    lines, heard = call(agent_server, tmp_path)
    assert loud(heard, 0.1, 1.5)  # the greeting
    assert 'agent said: "Hello! How can I help you today?"' in lines
    # (A turn's answer that began as the caller went on is dropped, and that turn's
    # number comes again: "the caller went on with their turn".)
    turns = re.findall(r"agent: turn (\d): voice to voice [\d.]+ s \(end of turn", lines)
    assert set(turns) == {"1", "2", "3"}, lines
    for question in QUESTIONS[:1] + QUESTIONS[2:]:  # each answered, out loud
        assert loud(heard, question["end"] + 0.5, question["end"] + 2.0)
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
    lines, heard = call(agent_server, tmp_path, seconds=17.5, linger=2.5)  # two turns
    assert lines.count("WARNING") == 1 and warning in lines, lines
    assert "Traceback" not in agent_server.log()
    assert "summary: stream" in lines
    if "chat" in behaviour:  # the voice still works: an apology, after each turn (the
        # second is cut short by the stop: nothing of an answer outlives the call)
        assert lines.count('agent said: "Sorry, I can\'t answer that right now."') == 1
        assert len(re.findall(r"agent: turn \d: voice to voice", lines)) == 2
        assert loud(heard, QUESTIONS[0]["end"] + 0.5, QUESTIONS[0]["end"] + 2.0)


@engine
@pytest.mark.transcribe
def test_a_model_that_is_not_there_is_said_once(start_server, openai_stub, tmp_path):
    server = start_server(AGENT="http://127.0.0.1:9/v1", SPEAK=openai_stub.url, TRANSCRIBE="local")
    lines, _ = call(server, tmp_path, seconds=9)
    assert "agent: the model failed: connection refused (is 127.0.0.1:9 running?)" in lines


def test_mode_agent_without_an_agent_says_why_and_nobody_answers(start_server, tmp_path):
    server = start_server()
    lines, heard = call(server, tmp_path, seconds=2)
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


# The embedded default: SmolLM2, Piper and Whisper, all in the server ---------------------


@requires("xllamacpp", "requirements-agent.txt")
@pytest.mark.agent
def test_the_embedded_default_greets_and_answers_out_loud(start_server, tmp_path):
    from faster_whisper import WhisperModel

    from mediastream.engines import packaged_model, transcribe

    server = start_server(AGENT="local", SPEAK="local", TRANSCRIBE="local")
    server.wait_for(r"agent: model SmolLM2-135M-Instruct \(Q4_1\), local.*voice Piper", 60)
    lines, heard = call(server, tmp_path, seconds=11)
    whisper = WhisperModel(packaged_model(), device="cpu", compute_type="int8", cpu_threads=2)
    greeting = transcribe(whisper, heard[: int(QUESTIONS[0]["start"] * 8000) * 2])
    assert "help" in greeting.lower(), greeting
    answer_at = int((QUESTIONS[0]["end"] + 0.3) * 8000) * 2
    answer = transcribe(whisper, heard[answer_at:])
    said = re.search(r'agent said: "(.*)"', lines.split("turn 1")[-1])
    assert len(answer.split()) >= 3, (answer, lines)  # words, heard back
    print(f"the embedded model answered: {said[1] if said else lines}\nheard back: {answer}")
    assert re.search(r"agent: turn 1: voice to voice [\d.]+ s", lines)
