"""A blocking tool holds up no other call: an echo call's round trip, alone and beside an
agent call whose tool sleeps (time.sleep(2), as a slow database or `requests` would block).

    .venv/bin/python bench/blocking_tool.py [--rounds 2]

One server (`python app.py`) with stand-ins for the model, voice and transcription
(tests/openai_stub.py: the model calls the tool at every turn, then answers); the agent
call plays tests/fixtures/agent-call.wav. Each round plays a 12 s mode=echo call alone,
then the same beside the agent call; the simulator reports the echo's round trip (each
chunk sent to its audio back). It prints figures; it is no test.
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
from agent import start  # noqa: E402 (bench/agent.py, beside this one)

CALL = REPO / "tests" / "fixtures" / "agent-call.wav"
TOOLS = '''
import time


def order_status(order_id: str) -> str:
    """Where an order is."""
    time.sleep(2)  # blocks its thread, as a slow database or requests would
    return f"Order {order_id} shipped on Monday."
'''
TOOL_CALL = [{"name": "order_status", "arguments": '{"order_id": "4572"}'}]
ECHO = re.compile(r"echo round trip .*: median ([\d.]+) ms, worst ([\d.]+) ms, (\d+) chunks")


def simulate(port, *arguments):
    return subprocess.Popen(
        [sys.executable, "simulate.py", "--url", f"ws://127.0.0.1:{port}/media", *arguments],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def echo_figures(process):
    output = process.communicate(timeout=120)[0]
    found = ECHO.search(output)
    if not found:
        sys.exit(f"no echo figures:\n{output}")
    return float(found[1]), float(found[2]), int(found[3])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    arguments = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="blocking-tool-"))
    (work / "slow_tools.py").write_text(TOOLS)
    environ = {**os.environ, "HOST": "127.0.0.1", "PORT": "0"}
    stub, found = start(
        [sys.executable, "tests/openai_stub.py"],
        environ,
        r"listening on (\S+)",
        open(work / "stub.log", "w"),
    )
    base = f"http://{found[1]}"
    url = f"{base}/v1"
    environ.update(
        AGENT=url, SPEAK=url, TRANSCRIBE=url, PYTHONPATH=str(work), AGENT_TOOLS="slow_tools"
    )
    server, found = start(
        [sys.executable, "app.py"],
        environ,
        r"listening on [\d.]+:(\d+)",
        open(work / "console.log", "w"),
    )
    port = found[1]
    echo = ("--param", "mode=echo", "--seconds", "12")
    rows = []
    try:
        for _ in range(arguments.rounds):
            rows.append(("echo alone", *echo_figures(simulate(port, *echo))))
            body = json.dumps({"answer": "Sure.", "tool_calls": [TOOL_CALL] * 8}).encode()
            urllib.request.urlopen(f"{base}/control", body, timeout=5).close()
            agent = simulate(port, "--param", "mode=agent", "--wav", str(CALL))
            time.sleep(2.0)  # the echo call spans the agent call's first tool turns
            rows.append(("echo beside the blocking tool", *echo_figures(simulate(port, *echo))))
            agent.communicate(timeout=120)
    finally:
        server.terminate()
        server.wait(30)
        stub.terminate()
    log = (work / "console.log").read_text()
    tools = re.findall(r"agent: tool order_status\(.*\) gave .* in ([\d.]+) s", log)
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    print(
        f"{cpu[1] if cpu else '?'}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}; the agent's tool calls: {len(tools)}, "
        f"each {', '.join(tools)} s"
    )
    print(f"{'echo call':32} {'median ms':>10} {'worst ms':>9} {'chunks':>7}")
    for name, median, worst, chunks in rows:
        print(f"{name:32} {median:10.1f} {worst:9.1f} {chunks:7d}")
    print(f"console: {work / 'console.log'}")


if __name__ == "__main__":
    main()
