"""How many one-track calls one core transcribes in real time, and how late the text is.

    python bench/transcribe.py                  (needs requirements-transcribe.txt)
    python bench/transcribe.py --calls 1 2 3 4  these loads only
    python bench/transcribe.py --url http://127.0.0.1:8000/v1   a transcription server
    python bench/transcribe.py --url instant    the media server's own cost, remote engine

The server is pinned to one core (taskset) with the packaged Whisper tiny.en, or with
TRANSCRIBE set to the URL of an OpenAI-compatible transcription server (start it yourself,
on another core or machine: its CPU is not counted, the media server's is; `instant` is
a stand-in in this process that answers at once, to see the media server's side alone,
as with a transcription tier that keeps up); the calls
(the spoken fixture, 14 s, four sentences, in real time, each call twice over) come from
the other core, their starts spread over the fixture's length as real calls' would be.
For 5, 10, ... concurrent calls (or those given) it prints the utterances transcribed,
skipped (past the backlog) and unfinished, the delay from the end of each utterance's
speech to its console line (median and worst, from the JSON log's figures) and the
server's CPU; it stops at the first load that skips or is late by more than 5 s. It
prints figures; it is no test.
"""

import argparse
import json
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import gevent
from throughput import REPO, Server  # bench/throughput.py

sys.path.insert(0, str(REPO))

from mediastream.engines import packaged_model  # noqa: E402
from mediastream.simulator import Plan, mulaw_chunks, play_call, read_wav  # noqa: E402

FIXTURE = REPO / "tests" / "fixtures" / "sentences.wav"
MODEL = packaged_model()


class Instant(BaseHTTPRequestHandler):
    """A transcription server that answers every request at once."""

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        body = b'{"text": "Hello."}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def instant_server():
    """Instant, on a loopback port in a thread of this process: its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Instant)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/v1"


def one_load(calls, engine):
    server = Server(
        "ours",
        prefix=("taskset", "-c", "0"),
        TRANSCRIBE=engine,
        LOG_FORMAT="json",
        TRANSCRIBE_BACKLOG_SECONDS="60",
    )
    pcm = read_wav(FIXTURE)
    seconds = len(pcm) / 16000
    plan = Plan(url=server.url, chunks={"inbound": mulaw_chunks(pcm, seconds)})

    def caller(delay):
        gevent.sleep(delay)
        play_call(plan)
        play_call(plan)

    try:
        cpu_start, wall_start = server.cpu_seconds(), time.monotonic()
        gevent.joinall([gevent.spawn(caller, n * seconds / calls) for n in range(calls)])
        time.sleep(3)  # the last utterances
        cpu = (server.cpu_seconds() - cpu_start) / (time.monotonic() - wall_start)
    finally:
        server.stop()
    lines = [json.loads(line) for line in server.log.splitlines() if line[:1] == "{"]
    events = [line for line in lines if "figures" in line]
    latencies = [e["figures"]["latency"] for e in events if e["event"] == "utterance"]
    ends = [e["figures"] for e in events if e["event"] == "transcript"]
    skipped = sum(figures["skipped"] + figures["unfinished"] for figures in ends)
    return latencies, skipped, cpu


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, nargs="+", default=range(5, 200, 5))
    parser.add_argument("--url", help="a transcription server's base URL, instead of Whisper here")
    arguments = parser.parse_args()
    engine = instant_server() if arguments.url == "instant" else arguments.url or str(MODEL)
    where = arguments.url or "Whisper tiny.en (int8) in the server"
    print(f"one core, transcripts by {where}, one-track real-time calls of {FIXTURE.name}")
    for calls in arguments.calls:
        latencies, skipped, cpu = one_load(calls, engine)
        worst = max(latencies, default=0.0)
        print(
            f"  {calls:3d} calls: {len(latencies):4d} utterances, {skipped} skipped or unfinished; "
            "delay after "
            f"speech median {statistics.median(latencies or [0]):.2f} s, worst {worst:.2f} s; "
            f"server CPU {100 * cpu:.0f}%"
        )
        if skipped or worst > 5:
            break


if __name__ == "__main__":
    main()
