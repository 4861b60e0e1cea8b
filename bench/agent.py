"""The agent's voice to voice: from the end of the caller's speech to the first audio of
the answer, per stage, as the server logs it and as the caller hears it.

    .venv/bin/python bench/agent.py              stand-in model and voice that answer at once
    .venv/bin/python bench/agent.py --tls        the same stand-ins over HTTPS (loopback)
    .venv/bin/python bench/agent.py --local      the embedded default (requirements-agent.txt)
    .venv/bin/python bench/agent.py --app ../old/app.py --tls   another checkout's server
    .venv/bin/python bench/agent.py --tools --calls 6   plain turns and tool turns, in turn

Plays tests/fixtures/agent-call.wav (a question; a request with a pause in the middle;
words spoken over the second answer) into `python app.py` with TRANSCRIBE=local, --calls
times, one call at a time. The server's share is what the stand-ins (tests/openai_stub.py)
leave: they answer instantly. Prints each stage's mean and median over the turns, then
what the caller heard: the first answer audio after each question's end, in what the
simulator played out as Twilio would. With stand-ins, "model and voice" is each turn's
first audio less its transcript: what the requests to the model and the voice cost.

With --tools, every other call's turns are tool turns: the stand-in model calls a tool
that returns at once (order_status, in a module given by AGENT_TOOLS), then answers from
its result; the two kinds of turn are reported side by side, from the same server.
"""

import argparse
import json
import os
import platform
import re
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import wave
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mediastream.turns import STAGES  # noqa: E402

CALL = REPO / "tests" / "fixtures" / "agent-call.wav"
QUESTIONS = json.loads((REPO / "tests" / "fixtures" / "agent-call.json").read_text())["sentences"]
ANSWERED = [0, 2, 3]  # the questions an answer follows (the second is the first half of a turn)
TAG = re.compile(r"\[(\w{8})\]")  # a line's stream
TURN = re.compile(r"agent: turn \d+: voice to voice [\d.]+ s \((.*)\)")
TLS = REPO / "tests" / "fixtures" / "tls"  # a self-signed certificate for 127.0.0.1
TOOLS = '''
def order_status(order_id: str) -> str:
    """Where an order is."""
    return f"Order {order_id} shipped on Monday."
'''
TOOL_CALL = [{"name": "order_status", "arguments": '{"order_id": "4572"}'}]


def start(command, environ, pattern, log, cwd=REPO, cores=None):
    """A server (or stand-in) started, its output to `log`, once a line matches `pattern`:
    (the process, the match). `cores`: pinned to them (taskset's list). (The benches'
    one way to start what they measure.)"""
    pin = ["taskset", "-c", cores] if cores else []
    process = subprocess.Popen([*pin, *command], cwd=cwd, env=environ, stdout=log, stderr=log)
    deadline = time.monotonic() + 120
    while not (found := re.search(pattern, Path(log.name).read_text())):
        if process.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"{command} did not start:\n{Path(log.name).read_text()}")
        time.sleep(0.1)
    return process, found


def caller_heard(path):
    """Seconds from each answered question's end to the first answer audio heard."""
    with wave.open(str(path)) as wav:
        samples = memoryview(wav.readframes(wav.getnframes())).cast("h")
    found = []
    for question in (QUESTIONS[n] for n in ANSWERED):
        first = int(question["end"] * 8000)
        for n in range(first, len(samples) - 80, 80):  # 10 ms steps
            if max(map(abs, samples[n : n + 80])) > 500:
                found.append(n / 8000 - question["end"])
                break
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--local", action="store_true", help="the embedded model and voice")
    parser.add_argument("--calls", type=int, default=3, help="calls, one after another")
    parser.add_argument("--tls", action="store_true", help="the stand-ins over HTTPS")
    parser.add_argument("--app", default=str(REPO / "app.py"), help="the server to measure")
    parser.add_argument("--tools", action="store_true", help="every other call's turns call a tool")
    arguments = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="agent-bench-"))
    environ = {**os.environ, "HOST": "127.0.0.1", "PORT": "0", "TRANSCRIBE": "local"}
    stub = None
    if arguments.local:
        environ.update(AGENT="local", SPEAK="local")
    else:
        tls = ["--tls", str(TLS / "cert.pem"), str(TLS / "key.pem")] if arguments.tls else []
        stub, found = start(
            [sys.executable, "tests/openai_stub.py", *tls],
            environ,
            r"listening on (\S+)",
            open(work / "stub.log", "w"),
        )
        base = f"{'https' if tls else 'http'}://{found[1]}"
        environ.update(AGENT=f"{base}/v1", SPEAK=f"{base}/v1", SSL_CERT_FILE=str(TLS / "cert.pem"))
        trusted = ssl.create_default_context(cafile=TLS / "cert.pem")

        def control(tool_turns):
            """Short answers (more turns heard out); a tool called in each of `tool_turns`."""
            calls = [TOOL_CALL] * tool_turns
            body = json.dumps({"answer": "Sure.", "tool_calls": calls}).encode()
            urllib.request.urlopen(f"{base}/control", body, timeout=5, context=trusted).close()

        control(0)
        if arguments.tools:
            (work / "bench_tools.py").write_text(TOOLS)
            environ.update(PYTHONPATH=str(work), AGENT_TOOLS="bench_tools")
    console = open(work / "console.log", "w")
    server, found = start(
        [sys.executable, arguments.app], environ, r"listening on [\d.]+:(\d+)", console
    )
    heard = {"plain": [], "tool": []}
    kinds = []  # each call's kind of turn
    try:
        for number in range(arguments.calls):
            kind = "tool" if arguments.tools and number % 2 else "plain"
            kinds.append(kind)
            if arguments.tools:
                control(2 * len(QUESTIONS) if kind == "tool" else 0)  # (enough for any turn)
            output = work / f"heard-{number}.wav"
            subprocess.run(
                [sys.executable, "simulate.py", "--url", f"ws://127.0.0.1:{found[1]}/media",
                 "--param", "mode=agent", "--wav", str(CALL), "--output", str(output),
                 "--linger", "1"],
                cwd=REPO, check=True, capture_output=True,
            )  # fmt: skip
            heard[kind] += caller_heard(output)
    finally:
        server.terminate()
        server.wait(30)
        if stub:
            stub.terminate()
    log = (work / "console.log").read_text()
    calls = re.findall(r"\[(\w{8})\] start:", log)
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    kind = "embedded default" if arguments.local else "stand-ins answering at once"
    print(
        f"{kind}{' over HTTPS' if arguments.tls else ''}, {arguments.app}: "
        f"{arguments.calls} calls; {cpu[1] if cpu else '?'}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}"
    )
    for turns in ("plain", "tool"):
        tags = {tag for tag, each in zip(calls, kinds, strict=True) if each == turns}
        if tags:
            lines = [line for line in log.splitlines() if stream_of(line) in tags]
            report(turns, lines, heard[turns])
    for said in re.findall(r'agent said: "(.*)"', log)[:8] if arguments.local else []:
        print(f'  agent said: "{said}"')
    print(f"console: {work / 'console.log'}")


def stream_of(line):
    """The tag of the stream a console line is about, or None."""
    found = TAG.search(line)
    return found and found[1]


def report(kind, lines, heard):
    """One kind of turn's stages (from the server's turn lines) and what the caller heard."""
    stages = {stage: [] for stage in STAGES}
    requests = []  # each turn's first audio less its transcript
    for match in TURN.finditer("\n".join(lines)):
        turn = {}
        for part in match[1].split(", "):
            name, seconds = part.rsplit(" ", 1)
            turn[name.replace(" ", "_")] = float(seconds)
            stages[name.replace(" ", "_")].append(float(seconds))
        requests.append(turn["first_audio"] - turn["transcript"])
    print(f"\n{kind} turns: {len(stages['first_audio'])}")
    print(
        f"{'stage (s after the speech ended)':34} {'mean':>6} {'median':>7} {'min':>6} {'max':>6}"
    )
    rows = [(stage.replace("_", " "), values) for stage, values in stages.items()]
    rows.append(("first audio heard by the caller", heard))
    rows.append(("model and voice", requests))
    for name, values in rows:
        if values:
            print(
                f"{name:34} {statistics.mean(values):6.2f} {statistics.median(values):7.2f} "
                f"{min(values):6.2f} {max(values):6.2f}"
            )


if __name__ == "__main__":
    main()
