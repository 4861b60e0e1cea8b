"""Real-time capacity: server CPU per media message when calls arrive as Twilio sends them.

    python bench/paced.py                       200 one-track calls into each server
    python bench/paced.py --calls 400 --servers ours --steps   calls per core, in steps

Twilio sends each media message on its own, 20 ms apart per call: every message costs
the server a wake-up, a socket read and a greenlet switch. So here each message is its
own write (TCP_NODELAY), 50 a second per call, the calls' schedules spread over the
20 ms tick. The server under test is pinned to core 0 and this load generator to core 1;
the server's CPU is read from /proc over the steady part only (every call started, none
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
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import gevent
from throughput import REPO, Server  # bench/throughput.py

sys.path.insert(0, str(REPO))

from mediastream.simulator import TwilioCall, connect, encode_frame  # noqa: E402

SERVER_CORE, LOAD_CORE = 0, 1
TICK = 0.02
BUSY = 0.95  # a core this busy is full: what is left absorbs bursts
CONTESTANTS = ["ours", "ours-no-speech", "ours-recording", "tutorial", "websockets", "node"]


def frames_of(calls, seconds):
    """Each call's frames, masked as a client sends them: connected, start, media..."""
    conversations = []
    for _ in range(calls):
        call = TwilioCall()
        texts = [call.connected(), call.start()]
        texts += [call.media() for _ in range(round(seconds / TICK))]
        conversations.append([encode_frame(text.encode()) for text in texts])
    return conversations


def caller(url, frames, first_due, lateness):
    """One call: its media frames on their schedule, each its own write. `lateness` gets
    how late each send ran; its length is the number of media messages sent so far."""
    sock = connect(url, {})
    try:
        sock.sendall(frames[0] + frames[1])
        for n, frame in enumerate(frames[2:]):
            due = first_due + n * TICK
            if due > time.monotonic():
                gevent.sleep(due - time.monotonic())
            lateness.append(time.monotonic() - due)
            sock.sendall(frame)
    finally:
        sock.close()


def measure(name, calls, seconds, pinned=True, **environ):
    """(CPU seconds per message, how late the sends ran: 99th percentile and worst)."""
    conversations = frames_of(calls, seconds)
    prefix = ("taskset", "-c", str(SERVER_CORE)) if pinned else ()
    server = Server(name, prefix=prefix, **environ)
    lateness = []
    try:
        start = time.monotonic() + 1.0  # every call connected by then
        callers = [
            gevent.spawn(caller, server.url, frames, start + TICK * n / calls, lateness)
            for n, frames in enumerate(conversations)
        ]
        gevent.sleep(start + 2.0 - time.monotonic())  # steady: every call streaming
        cpu_before, sent_before = server.cpu_seconds(), len(lateness)
        gevent.sleep(seconds - 3.0)
        cpu = server.cpu_seconds() - cpu_before
        messages = len(lateness) - sent_before  # sent in the window, as they were
        gevent.joinall(callers, raise_error=True)
        measure.console = Path(server.console.name).read_text()
    finally:
        server.stop()
    late = sorted(lateness) or [0.0]
    return cpu / messages, late[int(0.99 * (len(late) - 1))], late[-1]


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
