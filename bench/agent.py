"""The agent's voice to voice: from the end of the caller's speech to the first audio of
the answer, per stage, as the server logs it and as the caller hears it.

    .venv/bin/python bench/agent.py              stand-in model and voice that answer at once
    .venv/bin/python bench/agent.py --local      the embedded default (requirements-agent.txt)

Plays tests/fixtures/agent-call.wav (a question; a request with a pause in the middle;
words spoken over the second answer) into `python app.py` with TRANSCRIBE=local, --calls
times, one call at a time. The server's share is what the stand-ins (tests/openai_stub.py)
leave: they answer instantly. Prints each stage's mean and median over the turns, then
what the caller heard: the first answer audio after each question's end, in what the
simulator played out as Twilio would.
"""

import argparse
import json
import os
import platform
import re
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

from mediastream.agent import STAGES  # noqa: E402

CALL = REPO / "tests" / "fixtures" / "agent-call.wav"
QUESTIONS = json.loads((REPO / "tests" / "fixtures" / "agent-call.json").read_text())["sentences"]
ANSWERED = [0, 2, 3]  # the questions an answer follows (the second is the first half of a turn)
TURN = re.compile(r"agent: turn \d+: voice to voice [\d.]+ s \((.*)\)")


def start(command, environ, pattern, log):
    process = subprocess.Popen(command, cwd=REPO, env=environ, stdout=log, stderr=log)
    deadline = time.monotonic() + 120
    while not re.search(pattern, Path(log.name).read_text()):
        if process.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"{command[1]} did not start:\n{Path(log.name).read_text()}")
        time.sleep(0.1)
    return process, re.search(pattern, Path(log.name).read_text())


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
    arguments = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="agent-bench-"))
    environ = {**os.environ, "HOST": "127.0.0.1", "PORT": "0", "TRANSCRIBE": "local"}
    stub = None
    if arguments.local:
        environ.update(AGENT="local", SPEAK="local")
    else:
        stub, found = start(
            [sys.executable, "tests/openai_stub.py"],
            environ,
            r"listening on (\S+)",
            open(work / "stub.log", "w"),
        )
        url = f"http://{found[1]}/v1"
        environ.update(AGENT=url, SPEAK=url)
        answer = json.dumps({"answer": "Sure."}).encode()  # short answers: more turns heard out
        urllib.request.urlopen(f"http://{found[1]}/control", answer, timeout=5).close()
    console = open(work / "console.log", "w")
    server, found = start(
        [sys.executable, "app.py"], environ, r"listening on [\d.]+:(\d+)", console
    )
    heard = []
    try:
        for number in range(arguments.calls):
            output = work / f"heard-{number}.wav"
            subprocess.run(
                [sys.executable, "simulate.py", "--url", f"ws://127.0.0.1:{found[1]}/media",
                 "--param", "mode=agent", "--wav", str(CALL), "--output", str(output),
                 "--linger", "1"],
                cwd=REPO, check=True, capture_output=True,
            )  # fmt: skip
            heard += caller_heard(output)
    finally:
        server.terminate()
        server.wait(30)
        if stub:
            stub.terminate()
    log = (work / "console.log").read_text()
    stages = {stage: [] for stage in STAGES}
    for match in TURN.finditer(log):
        for part in match[1].split(", "):
            name, seconds = part.rsplit(" ", 1)
            stages[name.replace(" ", "_")].append(float(seconds))
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    print(
        f"{'embedded default' if arguments.local else 'stand-ins answering at once'}: "
        f"{arguments.calls} calls, {len(stages['first_audio'])} turns; {cpu[1] if cpu else '?'}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}"
    )
    print(
        f"{'stage (s after the speech ended)':34} {'mean':>6} {'median':>7} {'min':>6} {'max':>6}"
    )
    rows = [(stage.replace("_", " "), values) for stage, values in stages.items()]
    rows.append(("first audio heard by the caller", heard))
    for name, values in rows:
        if values:
            print(
                f"{name:34} {statistics.mean(values):6.2f} {statistics.median(values):7.2f} "
                f"{min(values):6.2f} {max(values):6.2f}"
            )
    for said in re.findall(r'agent said: "(.*)"', log)[:8] if arguments.local else []:
        print(f'  agent said: "{said}"')
    print(f"console: {work / 'console.log'}")


if __name__ == "__main__":
    main()
