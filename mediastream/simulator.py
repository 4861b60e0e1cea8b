"""A Twilio stand-in: plays Media Streams calls into a server as Twilio sends them.

`python simulate.py` is its command line. A call is: a WebSocket handshake (signed
with X-Twilio-Signature when given an auth token), then connected, start, media in
20 ms chunks of 160 bytes of mu-law per track, dtmf, mark, stop, and a close. It also
plays Twilio's side of what the server sends back (TwilioSide): on a bidirectional
stream (a `mode` custom parameter, as our TwiML declares it) the audio is played out in
real time, marks are echoed when their audio has played, clear drops what is buffered;
what Twilio would reject is noted with Twilio's error.
"""

import base64
import binascii
import itertools
import json
import math
import os
import statistics
import struct
import time
import uuid
import wave
from array import array
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import gevent
from gevent import socket, ssl
from gevent.lock import Semaphore
from twilio.request_validator import RequestValidator

from mediastream import g711
from mediastream.frames import OPCODE_BINARY, OPCODE_CLOSE, OPCODE_TEXT, unmask
from mediastream.g711 import CHUNK_SAMPLES, CHUNK_SECONDS, SAMPLE_RATE

SILENT_CHUNK = bytes([g711.SILENCE]) * g711.CHUNK_SAMPLES


def new_sid(prefix):
    """A Twilio-style SID: two letters and 32 hex digits."""
    return prefix + uuid.uuid4().hex


class TwilioCall:
    """One stream's messages, shaped and numbered as Twilio's reference documents them."""

    def __init__(self, tracks=("inbound",), parameters=None):
        self.stream_sid = new_sid("MZ")
        self.call_sid = new_sid("CA")
        self.account_sid = new_sid("AC")
        self.tracks = list(tracks)
        self.parameters = parameters or {}
        self.sequence = 0
        self.chunks = dict.fromkeys(self.tracks, 0)

    @property
    def tag(self):
        """How the server's console names this stream."""
        return self.stream_sid[-8:]

    def connected(self):
        return json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})

    def start(self):
        return self._numbered(
            "start",
            {
                "accountSid": self.account_sid,
                "streamSid": self.stream_sid,
                "callSid": self.call_sid,
                "tracks": self.tracks,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": self.parameters,
            },
        )

    def media(self, track="inbound", audio=b"\xff" * CHUNK_SAMPLES):
        self.chunks[track] += 1
        chunk = self.chunks[track]
        return self._numbered(
            "media",
            {
                "track": track,
                "chunk": str(chunk),
                "timestamp": str((chunk - 1) * 20),
                "payload": base64.b64encode(audio).decode(),
            },
        )

    def lose_media(self, track="inbound"):
        """Number a media message that never arrives, as a lost one would be."""
        self.media(track)

    def dtmf(self, digit):
        return self._numbered("dtmf", {"track": "inbound_track", "digit": digit})

    def mark(self, name):
        return self._numbered("mark", {"name": name})

    def stop(self):
        return self._numbered("stop", {"accountSid": self.account_sid, "callSid": self.call_sid})

    def _numbered(self, event, body):
        self.sequence += 1
        return json.dumps(
            {
                "event": event,
                "sequenceNumber": str(self.sequence),
                event: body,
                "streamSid": self.stream_sid,
            }
        )


def encode_frame(payload=b"", opcode=OPCODE_TEXT, fin=True, mask=None, length=None):
    """A client frame (RFC 6455): masked with `mask` (default: random), or unmasked with
    mask=b"". `length` announces a length other than the payload's."""
    mask = os.urandom(4) if mask is None else mask
    length = len(payload) if length is None else length
    mask_bit = 0x80 if mask else 0
    head = bytes([(0x80 if fin else 0) | opcode])
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", length)
    return head + mask + unmask(payload, mask) if mask else head + payload


# Audio -----------------------------------------------------------------------------


def tone(seconds, frequency=440.0):
    """A tone, as 16-bit PCM at 8000 Hz."""
    count = round(seconds * SAMPLE_RATE)
    step = 2 * math.pi * frequency / SAMPLE_RATE
    return struct.pack(f"<{count}h", *(round(8000 * math.sin(step * n)) for n in range(count)))


def hum(seconds, pitch):
    """A voice-like hum at `pitch` Hz (a fundamental and its harmonics up to the phone's
    3.4 kHz), as 16-bit PCM at 8000 Hz: a voice-activity detector takes it for speech,
    as it does not a pure tone."""
    harmonics = range(1, int(3400 // pitch) + 1)
    count = round(seconds * SAMPLE_RATE)
    step = 2 * math.pi * pitch / SAMPLE_RATE
    return struct.pack(
        f"<{count}h",
        *(round(3000 * sum(math.sin(k * step * n) / k for k in harmonics)) for n in range(count)),
    )


def read_wav(path, on_convert=None):
    """A PCM WAV file's samples as Twilio's audio: 16-bit, 8000 Hz, mono. Any other rate,
    channel count or sample width is converted (and `on_convert` told how); ValueError
    says what is wrong with a file that is not a PCM WAV."""
    try:
        with wave.open(str(path), "rb") as wav:
            rate, channels, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
            frames = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as problem:
        reason = str(problem) or "it ends before its header does"
        raise ValueError(
            f"{path}: not a PCM WAV file ({reason}); save it as a PCM WAV (16-bit, any rate)"
        ) from None
    if (rate, channels, width) == (SAMPLE_RATE, 1, 2):
        return frames
    samples = _to_rate(_to_mono(_to_16_bit(frames, width), channels), rate)
    if on_convert:
        on_convert(
            f"{path}: {rate} Hz, {channels} channel{'s' * (channels > 1)}, {8 * width}-bit; "
            f"converted to {SAMPLE_RATE} Hz mono 16-bit, as a call carries it"
        )
    return samples.tobytes()


def _to_16_bit(frames, width):
    """Samples of any PCM width (8-bit unsigned, 16, 24 or 32-bit signed) as 16-bit."""
    if width == 1:
        return array("h", ((byte - 128) << 8 for byte in frames))
    top = bytearray(len(frames) // width * 2)  # each sample's two most significant bytes
    top[0::2], top[1::2] = frames[width - 2 :: width], frames[width - 1 :: width]
    return array("h", bytes(top))


def _to_mono(samples, channels):
    if channels == 1:
        return samples
    mixed = zip(*(samples[c::channels] for c in range(channels)), strict=False)
    return array("h", (sum(frame) // channels for frame in mixed))


def _to_rate(samples, rate):
    """Resampled to 8000 Hz: averaged over each output sample's span (so that what the
    phone band cannot carry does not fold back in), then interpolated linearly."""
    if rate == SAMPLE_RATE or not samples:
        return samples
    ratio = rate / SAMPLE_RATE
    if ratio > 1:
        width = int(ratio)
        sums = [0, *itertools.accumulate(samples)]
        samples = [(sums[n + width] - sums[n]) / width for n in range(len(samples) - width + 1)]
    count = int(len(samples) / ratio)
    last = len(samples) - 1
    out = array("h")
    for n in range(count):
        position = n * ratio
        i = min(int(position), last)
        following = samples[min(i + 1, last)]
        out.append(round(samples[i] + (following - samples[i]) * (position - i)))
    return out


def mulaw_chunks(pcm, seconds):
    """`seconds` of 20 ms mu-law chunks from `pcm`, looped; the last one padded."""
    audio = g711.encode(pcm) or bytes([g711.SILENCE])
    count = max(1, round(seconds / CHUNK_SECONDS))
    while len(audio) < count * CHUNK_SAMPLES:
        audio += audio
    chunks = [audio[n * CHUNK_SAMPLES : (n + 1) * CHUNK_SAMPLES] for n in range(count)]
    chunks[-1] = chunks[-1].ljust(CHUNK_SAMPLES, bytes([g711.SILENCE]))
    return chunks


# One call ----------------------------------------------------------------------------


class Refused(Exception):
    """The server answered the handshake with something other than 101."""


@dataclass
class CallResult:
    stream_sid: str
    messages: int = 0
    failure: str | None = None
    ended: str | None = None  # the server ended the stream itself (a normal close)
    heard: bytes = b""  # what the caller heard (mu-law), on a bidirectional stream
    rejections: list = field(default_factory=list)  # what Twilio would have rejected
    latencies: list = field(default_factory=list)  # seconds from a chunk sent to its echo


@dataclass
class Plan:
    """What every call plays."""

    url: str
    tracks: tuple = ("inbound",)
    chunks: dict = field(default_factory=dict)  # track -> list of mu-law chunks
    parameters: dict = field(default_factory=dict)
    digits: str = ""
    marks: tuple = ()
    lose: frozenset = frozenset()  # chunk numbers numbered but not sent, on every track
    realtime: bool = True
    auth_token: str | None = None
    signed_url: str | None = None
    linger: float = 0.0  # on a bidirectional call: how long to hear the server after the stop


def play_call(plan, progress=None):
    """Play one call into the server; return what happened."""
    call = TwilioCall(plan.tracks, plan.parameters)
    result = CallResult(call.stream_sid)
    try:
        sock = connect(plan.url, _handshake_headers(plan))
    except Refused as refusal:
        result.failure = f"refused: HTTP {refusal}{_why_refused(str(refusal), plan.url)}"
        return result
    except ssl.SSLError as error:
        result.failure = (
            f"failed to connect: the TLS handshake failed ({error.reason}): the server takes "
            "plain ws:// on this port (app.py does; TLS comes from a proxy such as ngrok)"
        )
        return result
    except OSError as error:
        result.failure = f"failed to connect: {error.strerror or error}"
        if isinstance(error, ConnectionRefusedError):
            result.failure += f" (is the server running at {urlsplit(plan.url).netloc}?)"
        return result
    writing = Semaphore()  # the call's messages and the echoed marks share the socket

    def send(text):
        with writing:
            sock.sendall(encode_frame(text.encode()))

    twilio = TwilioSide(call, "mode" in plan.parameters, send)
    closed_by_server = gevent.spawn(twilio.run, sock)
    try:
        for message in _messages(call, plan, twilio.sending):
            if closed_by_server.ready():
                # A normal close is the server ending the stream (its agent hung up): on
                # <Connect>, Twilio goes on to the next verb. Anything else is a failure.
                if closed_by_server.value == 1000:
                    seconds = max(call.chunks.values()) * CHUNK_SECONDS
                    result.ended = f"the server ended the stream (1000) after {seconds:.1f} s"
                else:
                    result.failure = f"closed by the server ({closed_by_server.value})"
                break
            if message is None:  # a pause for real-time pacing
                continue
            send(message)
            result.messages += 1
            if progress:
                progress()
        else:
            if twilio.bidirectional:
                gevent.sleep(plan.linger)  # what the server says last, heard out
            with writing:
                sock.sendall(encode_frame(struct.pack("!H", 1000), OPCODE_CLOSE))
            closed_by_server.join(timeout=5)
    except OSError as error:
        result.failure = f"connection lost: {error}"
    finally:
        closed_by_server.kill()
        sock.close()
    result.heard = bytes(twilio.heard)
    result.rejections = twilio.rejections
    result.latencies = twilio.latencies
    return result


def _messages(call, plan, sending):
    """The call's messages in order; None where real-time pacing waits. `sending` is
    told of each inbound chunk as it goes."""
    yield call.connected()
    yield call.start()
    count = len(next(iter(plan.chunks.values())))
    dtmf_at = {
        round((n + 1) * count / (len(plan.digits) + 1)): d for n, d in enumerate(plan.digits)
    }
    started = time.monotonic()
    for n in range(count):
        for track in plan.tracks:
            if n + 1 in plan.lose:
                call.lose_media(track)
            else:
                if track == "inbound":
                    sending(plan.chunks[track][n])
                yield call.media(track, plan.chunks[track][n])
        if n in dtmf_at:
            yield call.dtmf(dtmf_at[n])
        if plan.realtime:
            gevent.sleep(max(0.0, started + (n + 1) * CHUNK_SECONDS - time.monotonic()))
        elif n % 50 == 49:
            gevent.sleep(0)  # let the other calls send too
        yield None
    for name in plan.marks:
        yield call.mark(name)
    yield call.stop()


def _why_refused(status, url):
    """What a refusal of our handshake most likely means, for the report."""
    if status.startswith("404"):
        return f": no WebSocket route at {urlsplit(url).path or '/'} (the server's is /media)"
    if status.startswith("403"):
        return ": the server checks X-Twilio-Signature (give --auth-token, and --signed-url)"
    if status.startswith("503"):
        return ": the server is draining or shutting down, and takes no new calls"
    return ""


def _handshake_headers(plan):
    if not plan.auth_token:
        return {}
    signed_url = plan.signed_url or plan.url
    return {
        "X-Twilio-Signature": RequestValidator(plan.auth_token).compute_signature(signed_url, {})
    }


def connect(url, headers):
    """Open a WebSocket to `url` (ws:// or wss://); raise Refused on a non-101 answer."""
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    sock = socket.create_connection((parts.hostname, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # each message at once
    if secure:
        sock = ssl.create_default_context().wrap_socket(sock, server_hostname=parts.hostname)
    key = base64.b64encode(os.urandom(16)).decode()
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {parts.netloc}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response:
        data = sock.recv(4096)
        if not data:
            sock.close()
            raise OSError("connection closed during the handshake")
        response += data
    status = response.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 1)[-1]
    if not status.startswith("101"):
        sock.close()
        raise Refused(status)
    sock.settimeout(None)
    return sock


def server_frames(sock):
    """(opcode, payload) of each frame the server sends (unmasked, RFC 6455), until the
    connection closes."""
    received = b""
    while True:
        data = sock.recv(65536)
        if not data:
            return
        received += data
        while len(received) >= 2:
            opcode, length, start = received[0] & 0x0F, received[1] & 0x7F, 2
            if length == 126:
                length, start = int.from_bytes(received[2:4], "big"), 4
            elif length == 127:
                length, start = int.from_bytes(received[2:10], "big"), 10
            if len(received) < start + length:
                break
            yield opcode, received[start : start + length]
            received = received[start + length :]


class TwilioSide:
    """Twilio's side of a stream: what it does with what the server sends, as documented.

    On a bidirectional stream the server's audio is buffered and played out in real time,
    50 chunks a second, into `heard` (what the caller hears, silence when nothing is
    buffered); each mark is echoed once the audio queued before it has played; a clear
    drops the buffered audio and echoes the pending marks at once. What Twilio rejects is
    noted with the error it would report: 31950 for a binary frame, 31951 for a message
    that is not JSON, has an unknown event, lacks a field, names another stream or has a
    payload that is not base64, and 31924 for anything sent on a one-way stream."""

    def __init__(self, call, bidirectional, send):
        self.call = call
        self.bidirectional = bidirectional
        self.send = send
        self.buffer = deque()  # mu-law audio of any length, and ("mark", name), in order
        self.marks_due = []  # marks whose audio is playing now: echoed at the next chunk
        self.heard = bytearray()
        self.rejections = []
        self.sent_at = {}  # inbound chunk -> when it was sent, to time its echo
        self.latencies = []

    def sending(self, chunk):
        self.sent_at.setdefault(chunk, time.monotonic())

    def run(self, sock):
        """Take the server's frames until its close frame; return the close code."""
        player = gevent.spawn(self._play) if self.bidirectional else None
        try:
            for opcode, payload in server_frames(sock):
                if opcode == OPCODE_CLOSE:
                    return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self._receive(opcode, payload)
            return "connection closed"
        finally:
            if player:
                player.kill()

    def _receive(self, opcode, payload):
        if opcode == OPCODE_BINARY:
            return self._reject(31950, "a binary frame")
        if opcode != OPCODE_TEXT:
            return None  # ping, pong
        if not self.bidirectional:
            return self._reject(31924, "a message on a one-way stream")
        try:
            message = json.loads(payload)
        except ValueError:
            return self._reject(31951, "not JSON")
        event = message.get("event") if isinstance(message, dict) else None
        if event not in ("media", "mark", "clear"):
            return self._reject(31951, f"unknown event {str(event)[:40]!r}")
        if message.get("streamSid") != self.call.stream_sid:
            return self._reject(31951, f"{event} with a missing or wrong streamSid")
        body = message.get(event, {})
        if event == "media":
            try:
                audio = base64.b64decode(body["payload"], validate=True)
            except (KeyError, TypeError, ValueError, binascii.Error):
                return self._reject(31951, "media without a base64 payload")
            sent = self.sent_at.pop(audio, None)
            if sent is not None:
                self.latencies.append(time.monotonic() - sent)
            self.buffer.append(audio)
        elif event == "mark":
            name = body.get("name") if isinstance(body, dict) else None
            if not isinstance(name, str):
                return self._reject(31951, "mark without a name")
            self.buffer.append(("mark", name))
        else:  # clear: what is buffered is never heard, and its marks come back now
            marks = [item[1] for item in self.buffer if isinstance(item, tuple)]
            self.buffer.clear()
            for name in marks:
                self.send(self.call.mark(name))
        return None

    def _play(self):
        """Play the buffer out in real time; echo marks as their audio has played."""
        started, played = time.monotonic(), 0
        while True:
            self.heard += self._next_chunk()
            played += 1
            gevent.sleep(max(0.0, started + played * CHUNK_SECONDS - time.monotonic()))

    def _next_chunk(self):
        """The next 20 ms of what is buffered, however the server cut its messages (with
        silence where it runs out). A mark is echoed once the audio before it has played:
        at once when nothing is before it, else at the next chunk."""
        for name in self.marks_due:
            self.send(self.call.mark(name))
        self.marks_due = []
        chunk = bytearray()
        while self.buffer:
            item = self.buffer.popleft()
            if isinstance(item, tuple):
                if chunk:
                    self.marks_due.append(item[1])
                else:
                    self.send(self.call.mark(item[1]))
                continue
            if len(chunk) == CHUNK_SAMPLES:
                self.buffer.appendleft(item)
                break
            wanted = CHUNK_SAMPLES - len(chunk)
            chunk += item[:wanted]
            if len(item) > wanted:
                self.buffer.appendleft(item[wanted:])
        return bytes(chunk.ljust(CHUNK_SAMPLES, SILENT_CHUNK[:1]))

    def _reject(self, error, what):
        self.rejections.append(f"Twilio would reject {what} (error {error})")


# Many calls --------------------------------------------------------------------------


@dataclass
class Report:
    results: list
    seconds: float

    @property
    def messages(self):
        return sum(result.messages for result in self.results)

    @property
    def failures(self):
        return [result for result in self.results if result.failure]

    def lines(self):
        calls = len(self.results)
        rate = self.messages / self.seconds if self.seconds else 0.0
        yield (
            f"simulated {calls} call{'' if calls == 1 else 's'} "
            f"({calls - len(self.failures)} completed, {len(self.failures)} failed): "
            f"{self.messages} messages in {self.seconds:.1f} s, {rate:.0f} messages/s"
        )
        for number, result in enumerate(self.results, 1):
            if result.failure or result.ended:
                yield f"  call {number} ({result.stream_sid}): {result.failure or result.ended}"
            for rejection in sorted(set(result.rejections)):
                count = result.rejections.count(rejection)
                yield f"  call {number} ({result.stream_sid}): {rejection}, {count}x"
        latencies = sorted(s for result in self.results for s in result.latencies)
        if latencies:
            median, worst = 1000 * statistics.median(latencies), 1000 * latencies[-1]
            yield (
                f"echo round trip (a chunk sent to its audio back): median {median:.1f} ms, "
                f"worst {worst:.1f} ms, {len(latencies)} chunks"
            )


def run(plan, calls, progress=None):
    """Play `calls` concurrent calls of `plan`; return the report."""
    started = time.monotonic()
    greenlets = [gevent.spawn(play_call, plan, progress) for _ in range(calls)]
    gevent.joinall(greenlets)
    return Report([greenlet.value for greenlet in greenlets], time.monotonic() - started)
