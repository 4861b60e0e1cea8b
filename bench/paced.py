"""Real-time capacity: server CPU per media message when calls arrive as Twilio sends them.

    python bench/paced.py                       200 one-track calls into each server
    python bench/paced.py --calls 400 --servers ours --steps   calls per core, in steps

Twilio sends each media message on its own, 20 ms apart per call: every message costs
the server a wake-up, a socket read and a greenlet switch. So here each message is its
own write (TCP_NODELAY), 50 a second per call; and, as callers dial whenever they do, the
calls start at their own moments, in random order over OPENING seconds, so their
schedules (and the server's per-call read timers, which start at a call's `start`) fall
at random points of the 20 ms tick. (Starting every call at once lines those timers up,
so one wake-up serves many calls; sending 20 frames back to back each millisecond hands a
server that reads per message many ready sockets a wake-up. Both flatter someone.)
The server under test is pinned to core 0 and this load generator to core 1; the
server's CPU is read from /proc over the steady part only (every call started, none
ended). For each server it prints CPU microseconds per message, % of a core per 100
calls, and the calls one core carries at 95% busy (CPU per message divides by the
messages actually sent in the window); and how late the generator's own sends ran (past
5 ms at the 99th percentile, it says the figures are not to be trusted). Servers:
ours (the default handlers), ours-no-speech (SPEECH_ACTIVITY=off), ours-recording
(RECORDINGS_DIR set), the tutorial's handler, a minimal websockets consumer, and Node's
ws (when node is on the machine: its package is installed into bench/node on first
use). With --steps, ours is run at 100, 200, ...
calls until the server's core is 95% busy, and says where that was. With --gunicorn,
ours runs under gunicorn with 1 and then 2 workers, unpinned (the load generator shares
the machine): it prints the CPU per message of all workers together, the calls each
worker got, and the calls the machine would carry with every core 95% busy.
It prints figures; it is no test.
"""

import argparse
import heapq
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter

import gevent
from throughput import REPO, Server  # bench/throughput.py

sys.path.insert(0, str(REPO))

from mediastream.simulator import (  # noqa: E402
    Plan,
    TwilioCall,
    connect,
    encode_frame,
    mulaw_chunks,
    play_call,
    tone,
)

SERVER_CORE, LOAD_CORE = 0, 1
TICK = 0.02
SLOT = 0.001  # a send due this far ahead or more is waited for with a sleep; nearer, by
# yielding to the hub until its moment (a sleep's timer has about a millisecond's grain)
DUE = "<due>"  # in each call's start: when its first media is due, for the probe
BUSY = 0.95  # a core this busy is full: what is left absorbs bursts
OPENING = 2.0  # seconds over which the calls start, each at its own moment
CONTESTANTS = [
    "ours",
    "ours-per-message",
    "ours-no-speech",
    "ours-recording",
    "tutorial",
    "websockets",
    "node",
]


def frames_of(calls, seconds):
    """Each call's messages as a client sends them: connected and start as text (the start
    with a DUE placeholder for when its first media is due, which play_paced fills in, for
    the probe), then its media frames, masked. Made before the calls' schedule is set:
    masking 300,000 frames takes seconds."""
    conversations = []
    for _ in range(calls):
        call = TwilioCall(parameters={"due": DUE})
        media = [call.media() for _ in range(round(seconds / TICK))]
        conversations.append(
            [call.connected(), call.start()] + [encode_frame(text.encode()) for text in media]
        )
    return conversations


def play_paced(urls, conversations, opens, lateness):
    """The calls (call n into urls[n]), each started (connected, start) at its moment
    opens[n] and sending its media from one tick later, each media message its own write at
    its own moment (at 400 calls, one every 50 us: never a burst of the messages due within
    a millisecond, which flatters a server that reads per message), all from this one
    greenlet in the order they are due (a greenlet and a timer per call could not keep 400
    calls' schedules on one core). `lateness` gets how late each media send ran; its length
    is the number of media messages sent so far."""
    connecting = [gevent.spawn(connect, url, {}) for url in urls]
    gevent.joinall(connecting, raise_error=True)
    sockets = [each.value for each in connecting]
    media = len(conversations[0]) - 2
    due = [(opened, call, -1) for call, opened in enumerate(opens)]  # -1: its start
    heapq.heapify(due)
    try:
        wall = time.time() - time.monotonic()  # the probe's clock is the epoch's
        while due:
            at, call, n = heapq.heappop(due)
            while (ahead := at - time.monotonic()) > 0:  # each send at its own moment
                gevent.sleep(ahead - SLOT / 2 if ahead >= SLOT else 0)
            frames, sock = conversations[call], sockets[call]
            if n < 0:
                start = frames[1].replace(DUE, repr(wall + at + TICK))
                sock.sendall(encode_frame(frames[0].encode()) + encode_frame(start.encode()))
            else:
                lateness.append(time.monotonic() - at)
                sock.sendall(frames[n + 2])
            if n + 1 < media:
                heapq.heappush(due, (opens[call] + (n + 2) * TICK, call, n + 1))
    finally:
        for sock in sockets:
            sock.close()


def measure(name, calls, seconds, pinned=True, echo=None, **environ):
    """(CPU seconds per message, how late the sends ran: 99th percentile and worst).
    `echo`: a list that gets the round trips of one more call, bidirectional (mode=echo)."""
    prefix = ("taskset", "-c", str(SERVER_CORE)) if pinned else ()
    server = Server(name, prefix=prefix, **environ)
    lateness = []
    try:
        conversations = frames_of(calls, seconds)
        start = time.monotonic() + 1.0 + calls * 0.002  # every call connected by then
        opens = [start + random.uniform(0, OPENING) for _ in range(calls)]
        callers = [gevent.spawn(play_paced, [server.url] * calls, conversations, opens, lateness)]
        if echo is not None:
            callers.append(gevent.spawn(echo_call, server.url, seconds, echo))
        gevent.sleep(start + OPENING + 1.0 - time.monotonic())  # steady: every call streaming
        cpu_before, sent_before = server.cpu_seconds(), len(lateness)
        gevent.sleep(seconds - OPENING - 2.0)  # (until the first call nears its end)
        cpu = server.cpu_seconds() - cpu_before
        messages = len(lateness) - sent_before  # sent in the window, as they were
        gevent.joinall(callers, raise_error=True)
    finally:
        server.stop()
    measure.console = server.log
    late = sorted(lateness) or [0.0]
    return cpu / messages, late[int(0.99 * (len(late) - 1))], late[-1]


def echo_call(url, seconds, round_trips):
    """A bidirectional call under the same load (the simulator, as Twilio): its echo's
    round trips, from a chunk sent to its audio back."""
    chunks = {"inbound": mulaw_chunks(tone(1.0), seconds)}
    result = play_call(Plan(url=url, chunks=chunks, parameters={"mode": "echo"}))
    round_trips.extend(result.latencies)


def delays(console):
    """Every media message's delay (ms) from the probe's lines in a console."""
    lines = [line for line in console.splitlines() if "probe: " in line]
    return sorted(value for line in lines for value in json.loads(line.split("probe: ")[1]))


def percentiles(values):
    ordered = sorted(values)
    return statistics.median(ordered), ordered[int(0.99 * (len(ordered) - 1))]


def ensure_node_peer():
    """Node's ws into bench/node (once); False when node or npm is not on the machine."""
    if not (shutil.which("node") and shutil.which("npm")):
        return False
    folder = REPO / "bench" / "node"
    if not (folder / "node_modules" / "ws").is_dir():
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(folder)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return True


def report(name, per_message, late_p99, late_worst):
    per_core = BUSY / (per_message / TICK) if per_message else float("inf")
    # A stall of the shared machine now and then delays a few sends (their messages are
    # still counted as sent); a generator that is late as a rule no longer paces the load.
    trust = "" if late_p99 < 0.005 else "  (the load generator ran late: not to be trusted)"
    print(
        f"  {name:<15} {1e6 * per_message:6.1f} us/message  {100 * per_message / TICK * 100:5.1f}% "
        f"of a core per 100 calls  ~{per_core:6,.0f} calls/core   sends late: p99 "
        f"{1000 * late_p99:.1f} ms, worst {1000 * late_worst:.1f} ms{trust}"
    )


def trade_off(arguments):
    """For ours, the same load again with the probe: what reading in batches costs in delay,
    and a bidirectional call's echo (read per message) beside it."""
    print(
        "ours, the same load and one echo call: from a message's scheduled send to a "
        "handler seeing it, and the echo's round trip (ms)"
    )
    for interval in ("0", "0.1"):
        round_trips = []
        measure("ours-probe", arguments.calls, arguments.seconds, echo=round_trips,
                READ_INTERVAL=interval)  # fmt: skip
        delay, echo = percentiles(delays(measure.console)), percentiles(round_trips)
        print(
            f"  READ_INTERVAL={interval:<4} delay median {delay[0]:6.1f}, p99 {delay[1]:6.1f}; "
            f"echo median {1000 * echo[0]:5.1f}, p99 {1000 * echo[1]:5.1f}"
        )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument(
        "--servers",
        nargs="+",
        default=CONTESTANTS,
        choices=CONTESTANTS,
    )
    parser.add_argument("--steps", action="store_true", help="find ours' calls per core")
    parser.add_argument(
        "--gunicorn", action="store_true", help="ours under gunicorn, 1 and 2 workers"
    )
    arguments = parser.parse_args()
    os.sched_setaffinity(0, {LOAD_CORE})
    print(
        f"{arguments.calls} one-track calls, 50 media messages a second each, for "
        f"{arguments.seconds:g} s; server on core {SERVER_CORE}, load on core {LOAD_CORE}"
    )
    with tempfile.TemporaryDirectory() as recordings:
        for name in arguments.servers:
            if name == "node" and not ensure_node_peer():
                print("  node            skipped: node and npm are not on this machine")
                continue
            if name == "ours-recording":
                figures = measure(
                    "ours", arguments.calls, arguments.seconds, RECORDINGS_DIR=recordings
                )
            else:
                figures = measure(name, arguments.calls, arguments.seconds)
            report(name, *figures)
    if "ours" in arguments.servers:
        trade_off(arguments)
    if arguments.gunicorn:
        os.sched_setaffinity(0, set(range(os.cpu_count())))  # everyone shares the machine
        for workers in (1, 2):
            per_message, *late = measure(
                "gunicorn",
                arguments.calls,
                arguments.seconds,
                pinned=False,
                WEB_CONCURRENCY=str(workers),
            )
            report(f"gunicorn x{workers}", per_message, *late)
            lines = [json.loads(line) for line in measure.console.splitlines() if line[:1] == "{"]
            streams = {(line["pid"], line.get("stream_sid")) for line in lines}
            per_worker = Counter(pid for pid, stream_sid in streams if stream_sid)
            machine = min(workers, os.cpu_count()) * BUSY / (per_message / TICK)
            print(
                f"    calls per worker: {sorted(per_worker.values(), reverse=True)}; with "
                f"{workers} worker(s) on {os.cpu_count()} cores, ~{machine:,.0f} calls at 95% busy"
            )
    if arguments.steps:
        for calls in range(100, 5000, 100):
            per_message, *_ = figures = measure("ours", calls, arguments.seconds)
            report(f"ours x{calls}", *figures)
            if per_message / TICK * calls >= BUSY:
                print(f"  ours: the server's core is {BUSY:.0%} busy at {calls} calls")
                break


if __name__ == "__main__":
    main()
