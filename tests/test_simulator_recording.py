"""The simulator plays calls into the real server; the server records them to WAV files."""

import itertools
import math
import random
import re
import socket
import struct
import subprocess
import sys
import time
import wave

import pytest
from conftest import REPO, finished, simulate, start_simulation, write_wav

from mediastream import g711, simulator
from mediastream.config import Config
from mediastream.messages import Media, Start
from mediastream.recording import MAX_SILENCE_CHUNKS, Recording
from mediastream.stream import MediaStream

SAMPLES_PER_CHUNK = 160


def read_wav(path):
    with wave.open(str(path), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (8000, 1, 2)
        return wav.readframes(wav.getnframes())


def noise(chunks, seed=1):
    """Random 16-bit PCM, `chunks` x 20 ms: every sample different, so nothing hides."""
    rng = random.Random(seed)
    count = chunks * SAMPLES_PER_CHUNK
    return struct.pack(f"<{count}h", *(rng.randint(-20000, 20000) for _ in range(count)))


def recorded_files(directory):
    return sorted(path.name for path in directory.iterdir())


def test_a_wav_plays_through_and_is_recorded_sample_for_sample(start_server, tmp_path):
    recordings = tmp_path / "recordings"
    server = start_server(RECORDINGS_DIR=str(recordings))
    sent = noise(chunks=50)
    write_wav(tmp_path / "call.wav", sent)

    status, report = simulate(server, "--wav", str(tmp_path / "call.wav"), "--fast", "--lose", "7")
    assert status == 0, report
    assert "simulated 1 call (1 completed, 0 failed): 52 messages" in report  # 49 media + 3

    (name,) = recorded_files(recordings)
    assert name.startswith("MZ") and name.endswith("-inbound.wav")
    recorded = read_wav(recordings / name)
    # What the server can hear is the sent audio through G.711; chunk 7 was lost: silence.
    expected = bytearray(g711.decode(g711.encode(sent)))
    lost = slice(6 * 2 * SAMPLES_PER_CHUNK, 7 * 2 * SAMPLES_PER_CHUNK)
    expected[lost] = bytes(2 * SAMPLES_PER_CHUNK)
    assert len(recorded) == len(expected) == 50 * 2 * SAMPLES_PER_CHUNK
    assert recorded == bytes(expected)
    assert server.wait_for(r"recorded: .*").group(0) == f"recorded: {recordings / name} (1.0 s)"
    assert server.wait_for(r"gaps: 1 missing chunk, 1 missing sequence number")


def test_concurrent_calls_with_both_tracks_get_a_file_per_track(start_server, tmp_path):
    recordings = tmp_path / "recordings"
    server = start_server(RECORDINGS_DIR=str(recordings))
    status, report = simulate(
        server, "--calls", "4", "--tracks", "both", "--seconds", "1", "--fast"
    )
    assert status == 0, report
    assert "simulated 4 calls (4 completed, 0 failed): 412 messages" in report
    names = recorded_files(recordings)
    assert len(names) == 8
    streams = {name.rsplit("-", 1)[0] for name in names}
    assert len(streams) == 4
    for stream in streams:
        inbound = read_wav(recordings / f"{stream}-inbound.wav")
        outbound = read_wav(recordings / f"{stream}-outbound.wav")
        assert len(inbound) == len(outbound) == 50 * 2 * SAMPLES_PER_CHUNK
        assert inbound != outbound  # the built-in audio differs per track


def test_shutdown_with_a_call_open_leaves_a_file_that_plays(start_server, tmp_path):
    recordings = tmp_path / "recordings"
    server = start_server(RECORDINGS_DIR=str(recordings))
    caller = start_simulation(server, "--seconds", "30")
    try:
        server.wait_for(r"start: stream")
        time.sleep(1.0)
        assert server.stop() == 0
    finally:
        report = finished(caller, timeout=30)[1]
    assert "closed by the server (1001)" in report
    (name,) = recorded_files(recordings)
    with wave.open(str(recordings / name), "rb") as wav:
        frames = wav.getnframes()
    # The header was finalised: it counts every sample in the file, about 1 s of them.
    assert (recordings / name).stat().st_size == 44 + 2 * frames
    assert 4000 <= frames <= 16000
    assert frames % SAMPLES_PER_CHUNK == 0


def media(chunk, audio=b"\x00" * SAMPLES_PER_CHUNK, track="inbound"):
    return Media("MZ1", None, track, chunk, None, audio)


def test_recording_places_each_chunk_on_the_timeline(tmp_path):
    recording = Recording(Config(recordings_dir=str(tmp_path)))
    stream = MediaStream("127.0.0.1:1")
    recording.start(stream, Start("MZ../../escape", None, "CA1", "AC1", [], "", 8000, 1))
    for chunk in (1, 2, 5, 4, 6):  # 3 and 4 lost; 4 arrives late and is dropped
        recording.media(stream, media(chunk, bytes([chunk]) * SAMPLES_PER_CHUNK))
    recording.end(stream, "stop")
    (track,) = recording.tracks.values()
    path = track.path
    assert path.parent == tmp_path and path.name == "MZ______escape-inbound.wav"
    pcm = read_wav(path)
    chunks = [pcm[n : n + 320] for n in range(0, len(pcm), 320)]
    silence = bytes(320)
    assert [chunk == silence for chunk in chunks] == [False, False, True, True, False, False]
    assert chunks[4] == g711.decode(bytes([5]) * SAMPLES_PER_CHUNK)


def test_wild_chunk_numbers_fill_at_most_a_minute_of_silence_per_track(tmp_path):
    recording = Recording(Config(recordings_dir=str(tmp_path)))
    stream = MediaStream("127.0.0.1:1")
    recording.start(stream, Start("MZ1", None, "CA1", "AC1", [], "", 8000, 1))
    for chunk in (1, 10**6, 2 * 10**6, 3 * 10**6):  # three jumps of 5.5 hours each
        recording.media(stream, media(chunk))
    recording.end(stream, "stop")
    (track,) = recording.tracks.values()
    with wave.open(str(track.path)) as wav:
        assert wav.getnframes() == (4 + MAX_SILENCE_CHUNKS) * SAMPLES_PER_CHUNK


def test_without_a_directory_there_is_no_recording():
    assert not Recording.enabled(Config())
    assert Recording.enabled(Config(recordings_dir="recordings"))


def test_simulator_options_reach_the_server(server):
    status, report = simulate(
        server,
        "--tracks",
        "both",
        "--seconds",
        "0.5",
        "--fast",
        "--param",
        "caller=Alice",
        "--param",
        "topic=a=b",
        "--dtmf",
        "9#",
        "--mark",
        "greeting",
    )
    assert status == 0, report
    tag = server.wait_for(r"\[(\w{8})\] parameters: caller=Alice, topic=a=b").group(1)
    server.wait_for(rf"\[{tag}\] summary: .*")
    assert server.lines(f"[{tag}] received: inbound 25 messages (0.5 s), outbound 25 messages")
    assert [line.split("] ")[1] for line in server.lines(f"[{tag}] dtmf")] == [
        "dtmf: digit 9 (inbound_track)",
        "dtmf: digit # (inbound_track)",
    ]
    assert server.lines(f"[{tag}] mark: greeting")


def test_real_time_pacing_takes_real_time_and_fast_does_not(server):
    started = time.monotonic()
    status, report = simulate(server, "--seconds", "1.5", "--calls", "3")
    elapsed = time.monotonic() - started
    assert status == 0, report
    assert "3 calls (3 completed, 0 failed): 234 messages in 1." in report  # 3 x (75 + 3)
    assert elapsed >= 1.5

    status, report = simulate(server, "--seconds", "30", "--fast")
    assert status == 0
    # 30 s of audio: 1500 media + connected, start, stop, sent in well under 30 s.
    seconds = float(re.search(r"1503 messages in ([\d.]+) s", report).group(1))
    assert seconds < 10


def test_refused_and_failed_connections_are_reported_with_their_status(server):
    status, report = simulate(server, "--seconds", "0.1")  # a working one for contrast
    assert status == 0
    result = subprocess.run(
        [sys.executable, "simulate.py", "--url", server.url + "/wrong", "--calls", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "simulated 2 calls (0 completed, 2 failed)" in result.stdout
    refusal = "refused: HTTP 404 Not Found: no WebSocket route at /wrong (the server's is /media)"
    assert result.stdout.count(refusal) == 2


def test_tls_to_the_plain_port_and_no_server_are_said_plainly(server):
    status, report = simulate(server, "--url", f"wss://127.0.0.1:{server.port}/media")
    assert status == 1
    assert "the TLS handshake failed (" in report
    assert "the server takes plain ws:// on this port" in report
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        free = unused.getsockname()[1]
    status, report = simulate(server, "--url", f"ws://127.0.0.1:{free}/media")
    assert status == 1
    assert (
        f"failed to connect: Connection refused (is the server running at 127.0.0.1:{free}?)"
        in report
    )


def test_a_signed_simulation_passes_the_signature_check(start_server):
    token = "f" * 32
    guarded = start_server(TWILIO_AUTH_TOKEN=token, PUBLIC_URL="wss://sim.ngrok.app")
    status, report = simulate(guarded, "--seconds", "0.2", "--fast")
    assert status == 1
    assert "refused: HTTP 403 Forbidden: the server checks X-Twilio-Signature" in report
    status, report = simulate(
        guarded,
        "--seconds",
        "0.2",
        "--fast",
        "--auth-token",
        token,
        "--signed-url",
        "wss://sim.ngrok.app/media",
    )
    assert status == 0, report


def test_a_wav_in_another_format_is_converted_as_a_call_would_carry_it(start_server, tmp_path):
    recordings = tmp_path / "recordings"
    server = start_server(RECORDINGS_DIR=str(recordings))
    cd_tone = [round(8000 * math.sin(2 * math.pi * 440 * n / 44100)) for n in range(44100)]
    stereo = struct.pack(f"<{2 * 44100}h", *(sample for s in cd_tone for sample in (s, s)))
    write_wav(tmp_path / "cd.wav", stereo, rate=44100, channels=2)
    status, report = simulate(server, "--wav", str(tmp_path / "cd.wav"), "--fast")
    assert status == 0, report
    assert "cd.wav: 44100 Hz, 2 channels, 16-bit; converted to 8000 Hz mono 16-bit" in report
    server.wait_for("summary:")
    (name,) = recorded_files(recordings)
    samples = struct.unpack(f"<{8000}h", read_wav(recordings / name))  # 1 s, 50 chunks
    crossings = sum(a < 0 <= b or b < 0 <= a for a, b in itertools.pairwise(samples))
    assert crossings == pytest.approx(2 * 440, abs=4)  # still a 440 Hz tone
    assert max(samples) == pytest.approx(8000, rel=0.1)  # at its level


def test_any_pcm_sample_width_reads_as_16_bit(tmp_path):
    pcm16 = struct.pack("<4h", 0, 256, -256, 32767)
    write_wav(
        tmp_path / "24.wav", b"".join(b"\x7f" + pcm16[n : n + 2] for n in (0, 2, 4, 6)), width=3
    )
    write_wav(tmp_path / "8.wav", bytes([128, 129, 127, 255]), width=1)
    assert simulator.read_wav(tmp_path / "24.wav") == pcm16
    assert struct.unpack("<4h", simulator.read_wav(tmp_path / "8.wav")) == (0, 256, -256, 32512)


def test_a_file_that_is_not_a_pcm_wav_gets_a_clear_error(server, tmp_path):
    (tmp_path / "text.wav").write_text("hello")
    status, report = simulate(server, "--wav", str(tmp_path / "text.wav"))
    assert status != 0 and "not a PCM WAV file (it ends before its header does)" in report
    status, report = simulate(server, "--wav", str(tmp_path / "missing.wav"))
    assert status != 0 and "No such file" in report


def test_output_never_replaces_a_file(tmp_path):
    (tmp_path / "heard-2.wav").write_bytes(b"mine")
    result = subprocess.run(
        [sys.executable, "simulate.py", "--calls", "2", "--output", str(tmp_path / "heard.wav")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert (
        f"--output: {tmp_path / 'heard-2.wav'} exists; remove it or name another" in result.stderr
    )
    assert (tmp_path / "heard-2.wav").read_bytes() == b"mine"


@pytest.mark.parametrize(
    "arguments, error",
    [
        (["--url", "127.0.0.1:5000/media"], "--url must start with ws:// or wss://"),
        (["--lose", "0"], "--lose takes chunk numbers, which start at 1"),
        (["--dtmf", "12x"], "--dtmf takes the keys of a phone: 0123456789*#ABCD"),
        (["--mark", ""], "--mark takes a name"),
        (
            ["--wav", "outbound=x.wav"],
            "--wav outbound=x.wav: the call streams no outbound track (--tracks inbound); "
            "add --tracks outbound or --tracks both",
        ),
        (
            ["--tracks", "outbound", "--wav", "inbound=x.wav"],
            "--wav inbound=x.wav: the call streams no inbound track (--tracks outbound)",
        ),
    ],
)
def test_options_that_cannot_work_are_refused_with_a_reason(arguments, error):
    result = subprocess.run(
        [sys.executable, "simulate.py", *arguments],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert error in result.stderr


def test_g711_matches_the_reference_on_every_sample():
    audioop = pytest.importorskip("audioop")  # the C reference, in Python before 3.13
    every_sample = struct.pack("<65536h", *range(-32768, 32768))
    assert g711.encode(every_sample) == audioop.lin2ulaw(every_sample, 2)
    assert g711.decode(bytes(range(256))) == audioop.ulaw2lin(bytes(range(256)), 2)


def test_g711_known_values():
    assert g711.encode(struct.pack("<4h", 0, -1, 32767, -32768)).hex() == "ff7e8000"
    assert struct.unpack("<3h", g711.decode(bytes([0xFF, 0x80, 0x00]))) == (0, 32124, -32124)
