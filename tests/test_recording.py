"""Recordings that nothing can lose or overwrite, and input that cannot make them grow."""

import os
import resource
import signal
import time
import wave

import pytest
from conftest import play, whole_call

from mediastream import g711
from mediastream.messages import BadMessage, parse_message
from mediastream.simulator import TwilioCall, mulaw_chunks, tone

CHUNK_BYTES = 320  # 20 ms of 16-bit PCM


def frames_of(path):
    with wave.open(str(path)) as wav:
        return wav.readframes(wav.getnframes())


@pytest.fixture
def recorder(start_server, tmp_path):
    """Start a server recording to tmp_path/recordings; return it and the directory."""

    def start(**options):
        directory = tmp_path / "recordings"
        return start_server(RECORDINGS_DIR=str(directory), **options), directory

    return start


def test_a_sigkill_mid_call_leaves_files_that_play_to_within_half_a_second(recorder):
    server, directory = recorder()
    call = TwilioCall(tracks=("inbound", "outbound"))
    audio = mulaw_chunks(tone(1.0), 10)
    ws = server.connect()
    play(ws, call, media_per_track=0)
    started = time.monotonic()
    sent = 0
    while sent < 160:  # 3.2 s of both tracks, at Twilio's pace
        for track in call.tracks:
            ws.send(call.media(track, audio[sent]))
        sent += 1
        time.sleep(max(0.0, started + sent * 0.02 - time.monotonic()))
    time.sleep(0.1)  # what was sent has arrived
    server.stop(signal.SIGKILL)
    for track in call.tracks:
        recorded = frames_of(directory / f"{call.stream_sid}-{track}.wav")
        assert len(recorded) % CHUNK_BYTES == 0
        chunks = len(recorded) // CHUNK_BYTES
        assert sent - 25 <= chunks <= sent  # at most half a second lost
        assert recorded == g711.decode(b"".join(audio[:chunks]))  # and what is there is exact


def test_a_reused_or_colliding_stream_sid_never_replaces_a_recording(recorder):
    server, directory = recorder()
    first, again, long_one, colliding = TwilioCall(), TwilioCall(), TwilioCall(), TwilioCall()
    again.stream_sid = first.stream_sid
    long_one.stream_sid = "MZ" + "a" * 70
    colliding.stream_sid = "MZ" + "a" * 70 + "b"  # the same first 64 characters
    for call, count in ((first, 100), (again, 5), (long_one, 7), (colliding, 9)):
        ws = server.connect()
        play(ws, call, media_per_track=count)
        ws.send(call.stop())
        ws.close()
        server.wait_for(rf"received: inbound {count} messages")
    assert len(frames_of(directory / f"{first.stream_sid}-inbound.wav")) == 100 * CHUNK_BYTES
    assert len(frames_of(directory / f"{first.stream_sid}-inbound-2.wav")) == 5 * CHUNK_BYTES
    stem = "MZ" + "a" * 61 + "_"  # cut to 64 characters, the cut marked
    assert len(frames_of(directory / f"{stem}-inbound.wav")) == 7 * CHUNK_BYTES
    assert len(frames_of(directory / f"{stem}-inbound-2.wav")) == 9 * CHUNK_BYTES
    (warning, _) = server.lines("exists already")
    assert warning.endswith(
        f"recording: {first.stream_sid}-inbound.wav exists already; "
        f"writing {first.stream_sid}-inbound-2.wav instead"
    )


def test_one_connection_is_one_stream(recorder):
    server, directory = recorder()
    call, intruder = TwilioCall(), TwilioCall()
    ws = server.connect()
    play(ws, call, media_per_track=5)
    ws.send(intruder.start())
    for _ in range(4):
        ws.send(intruder.media())
        ws.send(call.media())
    ws.send(call.stop())
    ws.close()
    summary = server.summary(call)
    assert "inbound 9 messages" in summary and "bad messages: 5" in summary
    assert server.lines(
        f"[{call.tag}] bad message ignored: a second start (stream {intruder.stream_sid})"
    )
    assert len(server.lines(f"names stream {intruder.stream_sid}, not this connection's")) == 4
    assert os.listdir(directory) == [f"{call.stream_sid}-inbound.wav"]
    assert len(frames_of(directory / f"{call.stream_sid}-inbound.wav")) == 9 * CHUNK_BYTES


def test_tracks_are_the_two_twilio_defines(recorder):
    server, directory = recorder()
    call = TwilioCall()
    ws = server.connect()
    play(ws, call, media_per_track=1)
    for n in range(300):
        ws.send(call.media().replace('"track": "inbound"', f'"track": "x{n}"'))
    ws.send(call.stop())
    ws.close()
    assert "bad messages: 300" in server.summary(call)
    assert server.lines(
        "bad message ignored: unknown track 'x299' (Twilio's are inbound, outbound)"
    )
    assert os.listdir(directory) == [f"{call.stream_sid}-inbound.wav"]


@pytest.mark.parametrize(
    "field, value",
    [("sequenceNumber", 10**20), ("chunk", 10**20), ("timestamp", 2**31), ("chunk", "9" * 5000)],
)
def test_numbers_of_any_size_are_bad_messages(server, field, value):
    call = TwilioCall()
    message = call.media().replace(f'"{field}": "', f'"{field}": "{value}", "x": "')
    with pytest.raises(BadMessage):
        parse_message(message)
    ws = server.connect()
    play(ws, call, media_per_track=2)
    ws.send(message)
    ws.send(call.media())
    ws.send(call.stop())
    ws.close()
    summary = server.summary(call)
    assert "ended by stop" in summary and "bad messages: 1" in summary


def test_a_huge_jump_in_numbers_is_a_gap_not_a_crash(server):
    call = TwilioCall()
    ws = server.connect()
    play(ws, call, media_per_track=2)
    call.chunks["inbound"] = 10**7  # 55 hours on
    call.sequence = 2**31 - 10
    ws.send(call.media())
    ws.send(call.stop())
    ws.close()
    assert "ended by stop" in server.summary(call)


def test_every_field_is_cut_to_a_readable_length(server):
    many = TwilioCall(parameters={f"p{n}": "v" for n in range(4500)})
    long_sid = TwilioCall()
    long_sid.stream_sid = "MZ" + "x" * 30_000  # (twice in start: under the 64 KiB limit)
    for call, mark in ((many, "m" * 60_000), (long_sid, "greeting")):
        ws = server.connect()
        play(ws, call, media_per_track=2)
        ws.send(call.mark(mark))
        ws.send(call.stop())
        ws.close()
        server.wait_for(rf"summary: stream {call.stream_sid[:30]}")
    assert max(len(line) for line in server.log().splitlines()) < 1000


@pytest.mark.parametrize(
    "limit, expected",
    [(20_000, "INCOMPLETE: good to 1.0 s"), (4_000, "removed: nothing could be written")],
)
def test_a_full_disk_is_reported_and_leaves_only_files_that_play(recorder, limit, expected):
    def small_files():  # a file-size limit stands in for a full disk (writes fail: EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    server, directory = recorder(preexec_fn=small_files)
    call = TwilioCall()
    summary = whole_call(server, call, media_per_track=200)
    assert "inbound 200 messages" in summary  # the call went on
    (error,) = server.lines("ERROR")
    assert "recording stopped, the call goes on: [Errno 27] File too large" in error
    path = directory / f"{call.stream_sid}-inbound.wav"
    assert server.lines(f"recorded: {path} {expected}")
    if "removed" in expected:
        assert not path.exists()
    else:
        assert len(frames_of(path)) == 50 * CHUNK_BYTES
