"""Transcription on another server: a real OpenAI-compatible one (faster-whisper-server,
serving the packaged tiny.en offline), and what the server does when that one fails."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import FIXTURES, SENTENCES_WER_BOUND, model_directory, requires, simulate

from mediastream.chat import free_port
from mediastream.wer import word_error_rate

pytestmark = [
    pytest.mark.transcribe,
    requires("faster_whisper_server", "requirements-transcription-server.txt"),
]
SENTENCES = json.loads((FIXTURES / "sentences.json").read_text())["sentences"]


class TranscriptionServer:
    """faster-whisper-server on a loopback port, as a user would run it."""

    def __init__(self, log_path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = log_path
        command = [
            os.path.join(os.path.dirname(sys.executable), "faster-whisper-server"),
            model_directory(),
            "--host", "127.0.0.1",
            "--port", str(self.port),
        ]  # fmt: skip
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "HF_HUB_OFFLINE": "1"},
            )
        deadline = time.monotonic() + 30
        while "Uvicorn running" not in log_path.read_text():
            assert self.process.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)

    def requests_in_flight(self):
        """Connections to it that are open now (from /proc/net/tcp: state 01, established)."""
        with open("/proc/net/tcp") as table:
            rows = [line.split() for line in table.readlines()[1:]]
        local = f"0100007F:{self.port:04X}"
        return sum(1 for row in rows if row[1] == local and row[3] == "01")

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)


@pytest.fixture
def transcription_server(tmp_path):
    running = TranscriptionServer(tmp_path / "transcription-server.log")
    yield running
    if running.process.poll() is None:
        running.kill()


def said(server, tag):
    """(start, text) of each utterance line of a stream."""
    lines = server.lines(f"[{tag}] inbound 00:")
    return [re.search(r'00:([\d.]+): "(.*)"$', line).groups() for line in lines]


def test_the_sentences_through_a_real_transcription_server(start_server, transcription_server):
    server = start_server(TRANSCRIBE=transcription_server.url)
    (startup,) = server.lines(f"transcribing each utterance with {transcription_server.url}")
    assert startup.endswith(
        "(model whisper-1), 4 at a time: it answered (HTTP 404)"
    )  # no models list
    status, report = simulate(server, "--wav", str(FIXTURES / "sentences.wav"))
    assert status == 0, report
    tag = server.wait_for(r"\[(\w{8})\] summary: ").group(1)
    heard = said(server, tag)
    assert [float(start) for start, _ in heard] == pytest.approx(
        [s["start"] for s in SENTENCES], abs=0.3
    )
    rate = word_error_rate(
        [(" ".join(s["text"] for s in SENTENCES), " ".join(t for _, t in heard))]
    )
    print(f"word error rate {rate:.0%}: {heard}")
    assert rate < SENTENCES_WER_BOUND
    assert server.lines(f"[{tag}] transcript: 4 utterances transcribed, 0 skipped")


def test_a_transcription_server_that_is_down_or_dies_mid_request(
    start_server, transcription_server
):
    server = start_server(TRANSCRIBE=transcription_server.url)
    # Flat out, the four utterances are cut at once: the server is still on the first when
    # it is killed.
    simulation = subprocess.Popen(
        [sys.executable, "simulate.py", "--url", server.url + "/media", "--fast",
         "--wav", str(FIXTURES / "sentences.wav")],
        cwd=FIXTURES.parent.parent, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while not transcription_server.requests_in_flight():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    transcription_server.kill()
    assert simulation.wait(30) == 0
    tag = server.wait_for(r"\[(\w{8})\] summary: ").group(1)
    warnings = [line.split("] ", 1)[1] for line in server.lines(f"WARNING [{tag}] transcript")]
    assert (
        "transcript: the engine failed: the server closed the connection without an answer; "
        "skipping the utterances it fails on (the call goes on)" in warnings
    )
    assert len(warnings) == len(set(warnings))  # once per kind
    assert server.lines(f"[{tag}] transcript: 0 utterances transcribed, 4 skipped")
    assert server.lines(f"[{tag}] summary: stream")

    # And a server that is not there at all: one line at startup, one per stream.
    later = start_server(TRANSCRIBE=transcription_server.url)
    netloc = transcription_server.url.split("/")[2]
    assert later.lines(f"it did not answer (connection refused (is {netloc} running?))")
    status, _ = simulate(later, "--wav", str(FIXTURES / "sentences.wav"), "--fast")
    assert status == 0
    tag = later.wait_for(r"\[(\w{8})\] summary: ").group(1)
    assert len(later.lines(f"[{tag}] transcript: the engine failed: connection refused")) == 1
    assert later.lines(f"[{tag}] transcript: 0 utterances transcribed, 4 skipped")


class Refusing(BaseHTTPRequestHandler):
    """A stub, for what faster-whisper-server cannot be made to answer: a wrong API key
    (401), a rate limit (429), its own failure (500), and an answer that comes too late;
    each with OpenAI's error shape."""

    answers = {
        "Bearer wrong": (401, "Incorrect API key provided: wrong."),
        "Bearer busy": (429, "Rate limit reached for requests"),
        "Bearer broken": (500, "The server had an error while processing your request."),
    }

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        key = self.headers.get("Authorization", "")
        if key == "Bearer slow":
            time.sleep(2)
        status, message = self.answers.get(key, (200, None))
        body = json.dumps({"error": {"message": message}} if message else {"text": "hello"})
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def stub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


@pytest.mark.parametrize(
    "key, warning",
    [
        ("wrong", "HTTP 401 Unauthorized: Incorrect API key provided: wrong."),
        ("busy", "HTTP 429 Too Many Requests: Rate limit reached for requests"),
        ("broken", "HTTP 500 Internal Server Error: The server had an error while processing"),
        ("slow", "no answer within 1 s"),
    ],
)
def test_each_failure_is_one_warning_and_the_call_goes_on(start_server, stub, key, warning):
    server = start_server(TRANSCRIBE=stub, TRANSCRIBE_API_KEY=key, TRANSCRIBE_TIMEOUT="1")
    status, _ = simulate(server, "--wav", str(FIXTURES / "sentences.wav"), "--fast")
    assert status == 0
    tag = server.wait_for(r"\[(\w{8})\] summary: ", timeout=20).group(1)
    (line,) = server.lines(f"[{tag}] transcript: the engine failed:")
    assert warning in line and "WARNING" in line
    assert server.lines(f"[{tag}] transcript: 0 utterances transcribed, 4 skipped")
    assert f"Bearer {key}" not in server.log() and f"={key}" not in server.log()  # a secret
