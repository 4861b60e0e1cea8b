"""A stand-in for OpenAI-compatible chat, speech and transcription servers, for the
agent's tests, bench/agent.py and bench/fleet.py: answers at once (or after the delays it
is told), or fails as told.

    python tests/openai_stub.py [--port N] [--tls CERT KEY]   prints "listening on 127.0.0.1:N"

- POST /v1/chat/completions, stream: true: Server-Sent Events, a word a chunk, of the
  answer "You said: <the caller's last words>." and FILLER; each request is kept for
  GET /requests.
- POST /v1/audio/speech: the input as 16-bit PCM at 24 kHz (`pcm`) or a WAV (`wav`):
  WORD_SECONDS of a voice-like hum per word, so that what was heard can be told in words.
- POST /v1/audio/transcriptions: TRANSCRIPT, whatever the audio (bench/fleet.py's
  utterances, without Whisper's CPU), or the texts it is told, one a request.
- POST /control with JSON sets how it behaves from then on: {"chat": {...}, "speech":
  {...}, "transcription": {...}}, each with "delay" (seconds before the first byte),
  "status" (an HTTP error with OpenAI's error body), "garbage" (200 with nonsense);
  chat and speech with "pause" (seconds between pieces) and "break_after" (that many
  pieces, then the connection is dropped); chat with "number" (its text as a number, as
  no server should send it); {"answer": "..."} sets FILLER;
  {"transcripts": [...]} the transcriptions' texts, in turn (then TRANSCRIPT);
  {"tool_calls": [[{"name": ..., "arguments": "..."}, ...], ...]} the tools the next chat
  requests call, a list each, in turn (streamed as OpenAI splits them: id and name first,
  the arguments in pieces; several calls one after the other, by index), with
  {"tool_text": "..."} said before them. A request whose last message is a tool's result
  is answered "Done: <the results>. FILLER".
- GET /requests: every chat request; GET /connections: each request's kind, when it
  began and ended, whether its client hung up before the end ("gone"), and which
  connection it came on (its client's port).
- --tls CERT KEY: HTTPS, with that certificate.
"""

import argparse
import json
import math
import ssl
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


def _event(chunk):
    chunk = {"object": "chat.completion.chunk", **chunk}
    return f"data: {json.dumps(chunk)}\n\n".encode()


def _asked(messages):
    """The last assistant message that called tools."""
    return next(m for m in reversed(messages) if m.get("tool_calls"))


def _tool_chunks(calls):
    """An answer that calls `calls`, as OpenAI streams it."""
    events = [_event({"choices": [{"delta": {"role": "assistant", "content": None}}]})]
    if Stub.tool_text:
        for word in Stub.tool_text.split(" "):
            events.append(_event({"choices": [{"delta": {"content": word + " "}}]}))
    for index, call in enumerate(calls):
        head = {"index": index, "id": f"call_{len(Stub.requests)}_{index}", "type": "function"}
        head["function"] = {"name": call["name"], "arguments": ""}
        events.append(_event({"choices": [{"delta": {"tool_calls": [head]}}]}))
        arguments = call.get("arguments", "{}")
        for start in range(0, len(arguments), 7):
            piece = {"index": index, "function": {"arguments": arguments[start : start + 7]}}
            events.append(_event({"choices": [{"delta": {"tool_calls": [piece]}}]}))
    finish = {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]}
    return [*events, _event(finish), b"data: [DONE]\n\n"]


class Stub:
    behaviour = {"chat": {}, "speech": {}, "transcription": {}}
    answer = FILLER
    transcripts = []
    tool_calls = []
    tool_text = ""
    requests = []
    served = []  # {"kind", "began", "ended", "gone", "connection"} a request


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # 200 agent calls answered at once open as many connections: with socketserver's
    # backlog of 5 the kernel drops their SYNs, and each retry costs a whole second.
    request_queue_size = 1024

    def handle_error(self, request, client_address):
        pass  # a client that hung up mid-answer (the agent, cut off by the caller)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # as servers that stream do (uvicorn, vLLM): no 40 ms waits

    def log_message(self, *_):
        pass

    def do_GET(self):
        if self.path == "/requests":
            self._json(200, Stub.requests)
        elif self.path == "/connections":
            self._json(200, Stub.served)
        else:
            self._json(200, {"data": [{"id": "stub"}]})

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/control":
            body = json.loads(raw or b"{}")
            Stub.behaviour = {kind: body.get(kind, {}) for kind in Stub.behaviour}
            Stub.answer = body.get("answer", FILLER)
            Stub.transcripts = body.get("transcripts", [])
            Stub.tool_calls = body.get("tool_calls", [])
            Stub.tool_text = body.get("tool_text", "")
            return self._json(200, {})
        if self.path.endswith("/audio/transcriptions"):
            kind, body = "transcription", {}
        else:
            kind = "chat" if self.path.endswith("/chat/completions") else "speech"
            body = json.loads(raw or b"{}")
        behaviour = Stub.behaviour[kind]
        if kind == "chat":
            Stub.requests.append(body)
        served = {"kind": kind, "began": time.time(), "ended": None, "gone": False}
        served["connection"] = self.client_address[1]  # its client's port: one a connection
        Stub.served.append(served)
        try:
            self._answer(kind, behaviour, body)
        except OSError:
            served["gone"] = True  # the client hung up before the end
        served["ended"] = time.time()

    def _answer(self, kind, behaviour, body):
        time.sleep(behaviour.get("delay", 0))
        if "status" in behaviour:
            error = {"message": f"stub says {behaviour['status']}", "type": "stub_error"}
            return self._json(behaviour["status"], {"error": error})
        if behaviour.get("garbage"):
            return self._stream("text/event-stream", [b"data: this is not JSON\n\n"])
        if kind == "transcription":
            text = Stub.transcripts.pop(0) if Stub.transcripts else TRANSCRIPT
            return self._json(200, {"text": text})
        if kind == "chat":
            return self._chat(body)
        return self._speech(body)

    def _chat(self, body):
        messages = body["messages"]
        if messages[-1]["role"] == "tool":
            results = [m["content"] for m in messages[messages.index(_asked(messages)) + 1 :]]
            text = f"Done: {'; '.join(r.rstrip('.') for r in results)}. {Stub.answer}"
        elif Stub.tool_calls and body.get("tools"):
            return self._stream("text/event-stream", _tool_chunks(Stub.tool_calls.pop(0)))
        else:
            said = next(m["content"] for m in reversed(messages) if m["role"] == "user")
            text = f"You said: {said.strip().rstrip('.?!')}. {Stub.answer}"
        events = []
        for n, word in enumerate(text.split(" ")):
            delta = {"content": word if n == 0 else " " + word}
            if Stub.behaviour["chat"].get("number"):
                delta["content"] = n
            events.append(_event({"choices": [{"delta": delta}]}))
        events.append(b"data: [DONE]\n\n")
        self._stream("text/event-stream", events, Stub.behaviour["chat"])

    def _speech(self, body):
        audio = WORD * len(body["input"].split())
        if body.get("response_format") == "wav":
            header = b"RIFF" + struct.pack("<I", 36 + len(audio)) + b"WAVEfmt "
            header += struct.pack("<IHHIIHH", 16, 1, 1, RATE, 2 * RATE, 2, 16)
            audio = header + b"data" + struct.pack("<I", len(audio)) + audio
        pieces = [audio[n : n + 4800] for n in range(0, len(audio), 4800)]
        self._stream("audio/pcm", pieces, Stub.behaviour["speech"])

    def _stream(self, content_type, pieces, behaviour=None):
        behaviour = behaviour or {}
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for n, piece in enumerate(pieces):
            if n == behaviour.get("break_after"):
                self.close_connection = True
                self.connection.shutdown(2)  # dropped mid-answer, as a crashing server would
                return
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
            time.sleep(behaviour.get("pause", 0))
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
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    arguments = parser.parse_args()
    server = Server(("127.0.0.1", arguments.port), Handler)
    if arguments.tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*arguments.tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"listening on 127.0.0.1:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)
