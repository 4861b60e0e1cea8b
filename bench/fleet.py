"""The fleet on Redis (REDIS_URL): what it costs a server, what it asks of Redis, and how
soon another server's page shows what was said.

    python bench/fleet.py                       500 calls over two servers; 400 paced
    python bench/fleet.py --calls 200 --paced-calls 200 --rounds 1

1. What REDIS_URL adds to a server's CPU per media message: bench/paced.py's load (one-track
   calls paced as Twilio sends them, the server pinned to core 0, the load to core 1) into
   ours without and with REDIS_URL, in turn, --rounds times, side by side.
2. A fleet: --calls paced calls, every other one into each of two servers (alpha and
   bravo, with REDIS_URL, each pinned to a core of its own), one page following bravo's
   /calls/events, and a speaking call into alpha every --every seconds, its utterances
   transcribed by tests/openai_stub.py (at once, so that what is measured is the fleet's
   path, not Whisper). It prints the
   entries a second Redis took and the CPU and memory it used for them, and the delay from
   each utterance's entry leaving alpha (its `at`) to its line arriving on bravo's page.

Debian's redis-server is started here with no persistence (tests/conftest.py's). It prints
figures; it is no test.
"""

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import gevent
from paced import LOAD_CORE, TICK, frames_of, measure, play_paced
from throughput import REPO, Server, _cpu_seconds

sys.path.insert(0, str(REPO))

from mediastream.simulator import Plan, mulaw_chunks, play_call, read_wav  # noqa: E402
from tests.conftest import OpenAIStub, PageEvents, RedisServer  # noqa: E402

SPEECH = REPO / "tests" / "fixtures" / "sentences.wav"
STREAM = "mediastream:events"


def machine():
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    return (
        f"{cpu[1] if cpu else '?'}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {time.strftime('%Y-%m-%d')}"
    )


def cpu_per_message(arguments, redis):
    """Ours without and with REDIS_URL, in turn."""
    print(
        f"CPU per media message, {arguments.paced_calls} paced one-track calls, "
        f"{arguments.seconds:g} s, server on core 0 (us; each round, then the median):"
    )
    settings = {"without REDIS_URL": {}, "with REDIS_URL": {"REDIS_URL": redis.url}}
    rounds = {name: [] for name in settings}
    for _ in range(arguments.rounds):
        for name, environ in settings.items():
            per_message, late_p99, _ = measure(
                "ours", arguments.paced_calls, arguments.seconds, **environ
            )
            flag = "" if late_p99 < 0.005 else "?"  # the load generator ran late
            rounds[name].append((1e6 * per_message, flag))
    for name, figures in rounds.items():
        each = ", ".join(f"{value:.1f}{flag}" for value, flag in figures)
        print(f"  {name:<18} {each}   median {statistics.median(v for v, _ in figures):.1f}")


def speaker(url, chunks, started):
    """One call that says the fixture's first sentences into alpha."""
    started.append(time.time())
    play_call(Plan(url=url, chunks={"inbound": chunks}))


def fleet(arguments, redis, stub):
    """--calls paced calls over two servers, a page on bravo, speakers into alpha."""
    alpha = Server("ours", ("taskset", "-c", "0"), REDIS_URL=redis.url, SERVER_NAME="alpha",
                   TRANSCRIBE=stub.url)  # fmt: skip
    bravo = Server("ours", ("taskset", "-c", "1"), REDIS_URL=redis.url, SERVER_NAME="bravo")
    page = PageEvents(bravo)
    client = redis.client()
    speech = mulaw_chunks(read_wav(SPEECH), 4.0)  # a sentence or two, then its pause
    try:
        calls = arguments.calls
        conversations = frames_of(calls, arguments.seconds)
        start = time.monotonic() + 1.0 + calls * 0.002
        dues = [start + TICK * n / calls for n in range(calls)]
        urls = [(alpha, bravo)[n % 2].url for n in range(calls)]  # every other call
        lateness = []
        callers = [gevent.spawn(play_paced, urls, conversations, dues, lateness)]
        gevent.sleep(start + 2.0 - time.monotonic())  # steady: every call streaming
        window = arguments.seconds - 3.0
        before = (client.xlen(STREAM), _cpu_seconds(redis.process.pid), time.monotonic())
        speakers, started = [], []
        while time.monotonic() < before[2] + window - 4.0:
            speakers.append(gevent.spawn(speaker, alpha.url, speech, started))
            gevent.sleep(arguments.every)
        gevent.sleep(before[2] + window - time.monotonic())
        after = (client.xlen(STREAM), _cpu_seconds(redis.process.pid), time.monotonic())
        gevent.joinall(callers + speakers, raise_error=True)
        time.sleep(1.0)  # the last lines reach the page
    finally:
        page.close()
        alpha.stop()
        bravo.stop()
    entries, cpu, seconds = (b - a for a, b in zip(before, after, strict=True))
    memory = client.info("memory")["used_memory"] - client.info("memory")["used_memory_startup"]
    print(
        f"A fleet: {arguments.calls} paced one-track calls over two servers (speech activity "
        f"on), {len(started)} speaking calls into alpha, bravo's /calls page followed:"
    )
    print(
        f"  Redis took {entries / seconds:,.0f} entries a second ({entries:,} in {seconds:.1f} s), "
        f"using {100 * cpu / seconds:.1f}% of a core ({cpu:.2f} s of CPU); "
        f"{client.xlen(STREAM):,} entries in {memory / 1e6:.1f} MB"
    )
    delays = utterance_delays(client, page.events)
    if delays:
        ordered = sorted(delays)
        print(
            f"  an utterance on alpha to its line on bravo's page, {len(ordered)} utterances: "
            f"median {statistics.median(ordered):.1f} ms, p99 "
            f"{ordered[int(0.99 * (len(ordered) - 1))]:.1f} ms, worst {ordered[-1]:.1f} ms"
        )
    late = sorted(lateness)[int(0.99 * (len(lateness) - 1))]
    print(f"  the load generator's sends: p99 {1000 * late:.1f} ms late")


def utterance_delays(client, events):
    """ms from each utterance entry's `at` (alpha's clock, this machine's) to its page line."""
    sent = {}
    for _, fields in client.xrange(STREAM):
        if fields[b"type"] == b"utterance":
            entry = json.loads(fields[b"json"])
            sent[(entry["stream_sid"], round(entry["start"], 1))] = entry["at"]
    return [
        1000 * (arrived - sent[key])
        for arrived, name, body in events
        if name == "utterance" and (key := (body["id"], body["line"]["start"])) in sent
    ]


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=500, help="the fleet's calls, both servers")
    parser.add_argument("--paced-calls", type=int, default=400, help="part 1's calls")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3, help="part 1's rounds")
    parser.add_argument("--every", type=float, default=1.0, help="seconds between speakers")
    arguments = parser.parse_args()
    print(machine())
    redis = RedisServer(Path(os.environ.get("TMPDIR", "/tmp")))
    stub = OpenAIStub()
    try:
        os.sched_setaffinity(0, {LOAD_CORE})
        if arguments.rounds:
            cpu_per_message(arguments, redis)
        os.sched_setaffinity(0, set(range(os.cpu_count())))
        fleet(arguments, redis, stub)
    finally:
        stub.stop()
        redis.stop()


if __name__ == "__main__":
    main()
