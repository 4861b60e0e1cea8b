"""Speech activity: turns from VAD verdicts (no audio), then real speech through the server."""

import json
import re

import pytest
from conftest import FIXTURES, simulate

from mediastream.speech import (
    HANGOVER_FRAMES,
    ONSET_FRAMES,
    VAD_OVERHANG_FRAMES,
    TrackSpeech,
    duration,
    longest_silence,
    overtalk,
    turns,
)

# Turns from verdicts ----------------------------------------------------------------


def track_from(verdicts, start=0):
    """A TrackSpeech fed a string of verdicts ('1' voiced, '0' not) from frame `start`."""
    track = TrackSpeech()
    for frame, verdict in enumerate(verdicts, start):
        track.add(frame, verdict == "1")
    track.finish()
    return track


def voiced(frames):
    """`frames` of speech, as the VAD reports them: its overhang adds voiced frames."""
    return "1" * (frames + VAD_OVERHANG_FRAMES)


def test_a_short_burst_is_not_a_turn_but_a_run_is():
    assert turns(track_from("0" * 10 + "1" * (ONSET_FRAMES - 1) + "0" * 30)) == []
    assert turns(track_from("0" * 10 + voiced(50) + "0" * 30)) == [(10, 60)]


def test_pauses_between_words_stay_inside_a_turn_and_a_longer_one_ends_it():
    word = voiced(20)
    inside = track_from(word + "0" * (HANGOVER_FRAMES - 1) + word)
    assert turns(inside) == [(0, len(word) + HANGOVER_FRAMES - 1 + 20)]
    apart = track_from(word + "0" * HANGOVER_FRAMES + word)
    assert turns(apart) == [(0, 20), (len(word) + HANGOVER_FRAMES, len(word) * 2 + 15)]
    assert apart.talk_seconds == pytest.approx(0.8)


def test_the_figures_while_a_turn_is_under_way():
    track = TrackSpeech()
    for frame in range(100):
        track.add(frame, True)
    assert track.speaking
    assert track.talk_seconds == pytest.approx((100 - VAD_OVERHANG_FRAMES) * 0.02)


def test_lost_frames_count_as_unvoiced_and_late_ones_are_ignored():
    track = TrackSpeech()
    for frame in range(50):
        track.add(frame, True)
    track.add(50 + HANGOVER_FRAMES, True)  # a hole as long as the hangover ends the turn
    assert turns(track) == [(0, 50 - VAD_OVERHANG_FRAMES)]
    track.add(10, False)  # late: already counted
    assert track.frames == 51 + HANGOVER_FRAMES


def test_overtalk_and_the_longest_silence_between_turns():
    a = track_from("0" * 10 + voiced(40) + "0" * 100 + voiced(30) + "0" * 40)
    b = track_from("0" * 40 + voiced(40) + "0" * 100 + voiced(10) + "0" * 40)
    assert turns(a) == [(10, 50), (155, 185)]
    assert turns(b) == [(40, 80), (185, 195)]
    assert overtalk(a, b) == (10, 1)  # frames 40-50
    assert longest_silence([a, b]) == (75, 80)  # frames 80-155: nobody speaks
    assert longest_silence([track_from("0" * 50)]) == (0, None)


# Real speech through the real server --------------------------------------------------


def truth():
    """Talk time per track, overtalk and the longest silence of the spoken fixture."""
    sentences = json.loads((FIXTURES / "calls.json").read_text())["sentences"]
    spans = {
        track: [(s["start"], s["end"]) for s in sentences if s["track"] == track]
        for track in ("inbound", "outbound")
    }
    talk = {track: sum(end - start for start, end in spans[track]) for track in spans}
    both = sum(
        max(0.0, min(a_end, b_end) - max(a_start, b_start))
        for a_start, a_end in spans["inbound"]
        for b_start, b_end in spans["outbound"]
    )
    silence, speech_until = 0.0, None
    for start, end in sorted(spans["inbound"] + spans["outbound"]):
        if speech_until is not None:
            silence = max(silence, start - speech_until)
        speech_until = max(end, speech_until or 0.0)
    return talk, both, silence


def play_fixture(server):
    status, report = simulate(
        server,
        "--tracks",
        "both",
        "--wav",
        f"inbound={FIXTURES / 'call-inbound.wav'}",
        "--wav",
        f"outbound={FIXTURES / 'call-outbound.wav'}",
        "--fast",
    )
    assert status == 0, report


def test_talk_time_overtalk_and_silence_of_a_spoken_call(server):
    play_fixture(server)
    server.wait_for(r"summary: .*")
    lines = "\n".join(server.lines("speech:"))
    figures = re.search(
        r"speech: inbound talk ([\d.]+) s \(\d+%\), outbound talk ([\d.]+) s \(\d+%\); "
        r"overtalk ([\d.]+) s \(1 time\)\n"
        r".*speech: longest silence ([\d.]+) s at 00:0\d\.\d$",
        lines,
    )
    assert figures, lines
    inbound, outbound, both, silence = (float(figure) for figure in figures.groups())
    talk, true_both, true_silence = truth()
    assert inbound == pytest.approx(talk["inbound"], abs=0.3)
    assert outbound == pytest.approx(talk["outbound"], abs=0.3)
    assert both == pytest.approx(true_both, abs=0.3)
    assert silence == pytest.approx(true_silence, abs=0.3)


def test_speech_activity_off(start_server):
    quiet = start_server(SPEECH_ACTIVITY="off")
    play_fixture(quiet)
    quiet.wait_for(r"summary: .*")
    assert not quiet.lines("speech:")


def test_a_time_too_short_for_tenths_is_not_shown_as_none():
    assert [duration(frames) for frames in (0, 1, 2, 3, 45)] == [
        "0.0 s",
        "0.02 s",
        "0.04 s",
        "0.1 s",
        "0.9 s",
    ]


def test_the_simulators_built_in_audio_is_two_sides_taking_turns(start_server):
    server = start_server()
    status, report = simulate(server, "--tracks", "both", "--seconds", "8", "--fast")
    assert status == 0, report
    line = server.wait_for(r"\[(\w{8})\] speech: inbound talk .*").group(0)
    talk = re.search(r"inbound talk ([\d.]+) s .* outbound talk ([\d.]+) s", line).groups()
    assert [float(seconds) for seconds in talk] == pytest.approx([3.0, 3.0], abs=0.2)
    assert "overtalk 0.0 s (0 times)" in line
