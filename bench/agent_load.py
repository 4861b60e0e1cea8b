"""Agent calls at once: voice to voice (median, 95th percentile) and the server's CPU, for
N = 1, 2, 4, ... concurrent agent calls, until the 95th percentile passes 2 s.

    .venv/bin/python bench/agent_load.py --setup whisper   in-process Whisper (TRANSCRIBE=local)
    .venv/bin/python bench/agent_load.py --setup remote    every tier a stand-in answering at once
    .venv/bin/python bench/agent_load.py --setup remote --steps 200 --profile    where the time goes

Each call asks one question (the spoken test call's first, "What time do you open on
Saturday?", 3 s into it) and hears the answer; the N calls start at their own moments,
at random within OPENING seconds (as callers dial), each message sent at its own moment
by the simulator (mediastream/simulator.py, in this process, pinned to the last core).
Voice to voice is the server's figure for each answer (its turn line: from the end of
the question to the answer's first audio); "first heard" is what each caller heard first
after their question (the answer, or the filler a caller whose words are late hears at
3.5 s), in what the simulator played out as Twilio would. Each call lasts long enough
for the last answer (--seconds). The server's CPU is read
from /proc over the whole step (seconds of CPU per second: 1.0 is one core busy), and so
are the callers' (this process) and the stand-ins': sharing a core, if the two come near
1.0 together, the callers are late and the answers slow, whatever the server does. With
--setup remote the server is pinned to core 0: its own cost per agent call, reading every
message of a bidirectional stream, speech activity, resampling the voice, marks; the
stand-in (tests/openai_stub.py, one process for the three tiers) runs on the other cores,
as the callers do. With --profile the server runs under cProfile (bench/profile.py's
child), and its top functions by their own time are printed at the end. It prints
figures; it is no test.
"""

import argparse
import importlib.util
import json
import os
import platform
import random
import re
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import gevent

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent import start  # noqa: E402 (bench/agent.py, beside this one)

from mediastream.g711 import CHUNK_SECONDS, decode  # noqa: E402
from mediastream.simulator import Plan, mulaw_chunks, play_call, read_wav  # noqa: E402

CALL = REPO / "tests" / "fixtures" / "agent-call.wav"
QUESTION = json.loads((REPO / "tests" / "fixtures" / "agent-call.json").read_text())["sentences"][0]
OPENING = 2.0  # the calls start at random within this many seconds
LIMIT = 2.0  # stop once the 95th percentile passes it


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def voice_to_voice(result):
    """From the end of the question to the first answer audio the caller heard."""
    pcm = memoryview(decode(result.heard)).cast("h")
    first = int(QUESTION["end"] * 8000)
    for n in range(first, len(pcm) - 80, 80):
        if max(map(abs, pcm[n : n + 80])) > 500:
            return n / 8000 - QUESTION["end"]
    return None


TURN = re.compile(r"agent: turn 1: voice to voice ([\d.]+) s")


def percentile(values, share):
    return values[min(len(values) - 1, int(share * len(values)))] if values else float("inf")


def median_p95(values):
    if not values:
        return "none | none"
    return f"{statistics.median(values):.2f} s | {percentile(values, 0.95):.2f} s"


def step(plan, calls):
    """N calls, each starting at its own moment; their results."""

    def later(delay):
        gevent.sleep(delay)
        return play_call(plan)

    greenlets = [gevent.spawn(later, random.uniform(0, OPENING)) for _ in range(calls)]
    gevent.joinall(greenlets)
    return [greenlet.value for greenlet in greenlets]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", choices=("whisper", "remote"), required=True)
    parser.add_argument("--steps", default="", help="N at each step (default 1, 2, 4, ...)")
    parser.add_argument("--profile", action="store_true", help="the server under cProfile")
    parser.add_argument("--seconds", type=float, default=12.0, help="each call's length")
    arguments = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores - 1})  # the callers: the last core
    work = Path(tempfile.mkdtemp(prefix="agent-load-"))
    environ = {**os.environ, "HOST": "127.0.0.1", "PORT": "0", "IDLE_TIMEOUT": "120"}
    stub, found = start(
        [sys.executable, "tests/openai_stub.py"],
        environ,
        r"listening on (\S+)",
        open(work / "stub.log", "w"),
        cores=",".join(map(str, range(1, cores))) if cores > 1 else None,
    )
    base = f"http://{found[1]}"
    urllib.request.urlopen(f"{base}/control", json.dumps({"answer": "Sure."}).encode()).close()
    environ.update(AGENT=f"{base}/v1", SPEAK=f"{base}/v1")
    environ["TRANSCRIBE"] = "local" if arguments.setup == "whisper" else f"{base}/v1"
    if arguments.setup == "remote":
        environ["TRANSCRIBE_CONCURRENCY"] = "64"  # the stand-in answers at once: no queue
    command = [sys.executable, "app.py"]
    if arguments.profile:
        spec = importlib.util.spec_from_file_location(
            "bench_profile", REPO / "bench" / "profile.py"
        )
        profile = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(profile)
        command = [sys.executable, "-c", profile.CHILD.format(top=25, script="app.py")]
    server, found = start(
        command,
        environ,
        r"listening on [\d.]+:(\d+)",
        open(work / "console.log", "w"),
        cores="0" if arguments.setup == "remote" else None,
    )
    seconds = arguments.seconds
    pcm = read_wav(str(CALL))[: int(QUESTION["end"] * 8000 + 2400) * 2]  # the question
    pcm += bytes(int(seconds * 8000) * 2 - len(pcm))  # then silence
    plan = Plan(
        url=f"ws://127.0.0.1:{found[1]}/media",
        chunks={"inbound": mulaw_chunks(pcm, seconds)},
        parameters={"mode": "agent"},
        linger=1.0,
    )
    steps = [int(n) for n in arguments.steps.split(",")] if arguments.steps else None
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    print(
        f"{arguments.setup}: {cpu[1] if cpu else '?'}, {cores} cores, Python "
        f"{platform.python_version()}, {time.strftime('%Y-%m-%d')}; server "
        f"{'pinned to core 0' if arguments.setup == 'remote' else 'on every core'}"
    )
    print(
        "| calls at once | answered | voice to voice median | p95 | first heard median | p95 "
        "| server CPU (cores) | callers' CPU | stand-ins' CPU |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    console = work / "console.log"
    calls = 1
    try:
        while True:
            began, cpu_began = time.monotonic(), cpu_seconds(server.pid)
            callers_began, stub_began = cpu_seconds(os.getpid()), cpu_seconds(stub.pid)
            before = len(console.read_text())
            results = step(plan, calls)
            took = time.monotonic() - began
            busy = (cpu_seconds(server.pid) - cpu_began) / took
            callers = (cpu_seconds(os.getpid()) - callers_began) / took
            stand_ins = (cpu_seconds(stub.pid) - stub_began) / took
            time.sleep(1)  # the summaries
            turns = TURN.findall(console.read_text()[before:])
            answered = sorted(map(float, turns))
            heard = sorted(v for v in map(voice_to_voice, results) if v is not None)
            failed = sum(1 for r in results if r.failure)
            print(
                f"| {calls} | {len(answered)} of {calls}"
                f"{f' ({failed} failed)' if failed else ''} | {median_p95(answered)} "
                f"| {median_p95(heard)} | {busy:.2f} | {callers:.2f} | {stand_ins:.2f} |",
                flush=True,
            )
            p95 = percentile(answered, 0.95)
            if steps:
                steps = [n for n in steps if n > calls]
                if not steps:
                    break
                calls = steps[0]
            elif p95 > LIMIT or len(answered) < calls:
                break
            else:
                calls *= 2
            time.sleep(2)  # the last calls' ends
    finally:
        if arguments.profile:
            os.kill(server.pid, signal.SIGUSR1)
            time.sleep(3)
        server.terminate()
        server.wait(30)
        stub.terminate()
    if arguments.profile:
        log = (work / "console.log").read_text()
        print(log[log.index("function calls") :][:6000])
    print(f"console: {work / 'console.log'}; chunk {CHUNK_SECONDS * 1000:.0f} ms")


if __name__ == "__main__":
    main()
