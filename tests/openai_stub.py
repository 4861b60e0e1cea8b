"""A stand-in for OpenAI-compatible chat, speech and transcription servers, for the
agent's tests, bench/agent.py and bench/fleet.py: answers at once (or after the delays it
is told), or fails as told.

    python tests/openai_stub.py [--port N]      prints "listening on 127.0.0.1:N"

- POST /v1/chat/completions, stream: true: Server-Sent Events, a word a chunk, of the
  answer "You said: <the caller's last words>." and FILLER; each request is kept for
  GET /requests.
- POST /v1/audio/speech: the input as 16-bit PCM at 24 kHz (`pcm`) or a WAV (`wav`):
  WORD_SECONDS of a voice-like hum per word, so that what was heard can be told in words.
- POST /v1/audio/transcriptions: TRANSCRIPT, whatever the audio (bench/fleet.py's
  utterances, without Whisper's CPU).
- POST /control with JSON sets how it behaves from then on: {"chat": {...}, "speech":
  {...}}, each with "delay" (seconds before the first byte), "status" (an HTTP error with
  OpenAI's error body), "garbage" (200 with nonsense); {"answer": "..."} sets FILLER.
"""

import argparse
import json
import math
import struct
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TRANSCRIPT = "Please cancel my order."
WORD_SECONDS = 0.3  # of speech per word: 0.25 s of hum, 0.05 s of silence
RATE = 24000
FILLER = (
    "I can help with that. Our team is here every day from nine to five. Is there anything else?"
)


def hum(seconds, pitch=140.0):
    count = int(seconds * RATE)
    harmonics = range(1, int(3400 // pitch) + 1)
    step = 2 * math.pi * pitch / RATE
    return struct.pack(
        f"<{count}h",
        *(round(2500 * sum(math.sin(k * step * n) / k for k in harmonics)) for n in range(count)),
    )


WORD = hum(0.25) + bytes(2 * int(0.05 * RATE))


class Stub:
    behaviour = {"chat": {}, "speech": {}}
    answer = FILLER
    requests = []


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that hung up mid-answer (the agent, cut off by the caller)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_):
        pass

    def do_GET(self):
        if self.path == "/requests":
            self._json(200, Stub.requests)
        else:
            self._json(200, {"data": [{"id": "stub"}]})

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path.endswith("/audio/transcriptions"):
            return self._json(200, {"text": TRANSCRIPT})
        body = json.loads(raw or b"{}")
        if self.path == "/control":
            Stub.behaviour = {"chat": body.get("chat", {}), "speech": body.get("speech", {})}
            Stub.answer = body.get("answer", FILLER)
            return self._json(200, {})
        kind = "chat" if self.path.endswith("/chat/completions") else "speech"
        behaviour = Stub.behaviour[kind]
        if kind == "chat":
            Stub.requests.append(body)
        time.sleep(behaviour.get("delay", 0))
        if "status" in behaviour:
            error = {"message": f"stub says {behaviour['status']}", "type": "stub_error"}
            return self._json(behaviour["status"], {"error": error})
        if behaviour.get("garbage"):
            return self._stream("text/event-stream", [b"data: this is not JSON\n\n"])
        if kind == "chat":
            return self._chat(body)
        return self._speech(body)

    def _chat(self, body):
        said = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
        words = f"You said: {said.strip().rstrip('.?!')}. {Stub.answer}".split(" ")
        events = []
        for n, word in enumerate(words):
            chunk = {"object": "chat.completion.chunk", "choices": [{"delta": {}}]}
            chunk["choices"][0]["delta"]["content"] = word if n == 0 else " " + word
            events.append(f"data: {json.dumps(chunk)}\n\n".encode())
        events.append(b"data: [DONE]\n\n")
        self._stream("text/event-stream", events, pause=Stub.behaviour["chat"].get("pause", 0))

    def _speech(self, body):
        audio = WORD * len(body["input"].split())
        if body.get("response_format") == "wav":
            header = b"RIFF" + struct.pack("<I", 36 + len(audio)) + b"WAVEfmt "
            header += struct.pack("<IHHIIHH", 16, 1, 1, RATE, 2 * RATE, 2, 16)
            audio = header + b"data" + struct.pack("<I", len(audio)) + audio
        pieces = [audio[n : n + 4800] for n in range(0, len(audio), 4800)]
        self._stream("audio/pcm", pieces)

    def _stream(self, content_type, pieces, pause=0):
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for piece in pieces:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
            time.sleep(pause)
        self.wfile.write(b"0\r\n\r\n")

    def _json(self, status, value):
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    port = parser.parse_args().port
    server = Server(("127.0.0.1", port), Handler)
    print(f"listening on 127.0.0.1:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)
