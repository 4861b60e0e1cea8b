"""How many Media Streams messages a second each server consumes, side by side.

    python bench/throughput.py                      flat out: ours (speech activity on and
                                                    off), the tutorial, websockets
    python bench/throughput.py --mode realtime      paced calls: ours' CPU and memory per call

Flat out: every server gets the same load, N concurrent calls x M media messages, built
before the clock starts and written as fast as the servers read; a call is done when the
server closes it after its stop. Several rounds, the servers taking turns; the best
round of each is reported, with every round shown. It prints figures; it is no test.
"""

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gevent

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mediastream.chat import free_port  # noqa: E402
from mediastream.frames import OPCODE_CLOSE  # noqa: E402
from mediastream.simulator import (  # noqa: E402
    Plan,
    TwilioCall,
    connect,
    encode_frame,
    mulaw_chunks,
    play_call,
    tone,
)

REPO = Path(__file__).resolve().parent.parent
SERVERS = {  # name -> command, and its environment on top of ours
    "ours": ([sys.executable, "app.py"], {}),
    "ours-no-speech": ([sys.executable, "app.py"], {"SPEECH_ACTIVITY": "off"}),
    "ours-per-message": ([sys.executable, "app.py"], {"READ_INTERVAL": "0"}),
    "ours-probe": ([sys.executable, "bench/probe_app.py"], {}),  # bench/paced.py's delays
    "tutorial": ([sys.executable, "bench/tutorial_app.py"], {}),
    "websockets": ([sys.executable, "bench/websockets_app.py"], {}),
    "node": (["node", "bench/node/consumer.js"], {}),  # bench/paced.py installs its ws
    "gunicorn": ([sys.executable, "-m", "gunicorn", "app:create_app()"], {"LOG_FORMAT": "json"}),
}


class Server:
    """A contestant in a child process, its console written to a file as a user's would be."""

    def __init__(self, name, prefix=(), **environ):
        """`prefix`: a command to run the server under (taskset, to pin it to a core)."""
        self.name = name
        self.port = free_port()
        self.console = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log")
        command, settings = SERVERS[name]
        command = [*prefix, *command]
        env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port), **settings, **environ}
        self.process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=self.console, stderr=subprocess.STDOUT
        )
        self.url = f"ws://127.0.0.1:{self.port}/media"
        try:
            self._wait_until_listening()
        except BaseException:
            self.stop()  # a contestant that fails to start is not left running
            raise

    def _wait_until_listening(self):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start: {Path(self.console.name).read_text()}")

    def cpu_seconds(self):
        """User + system CPU time the server has used so far, its worker processes too."""
        pids = [self.process.pid, *self.children()]
        return sum(_cpu_seconds(pid) for pid in pids)

    def children(self):
        """The server's child processes (gunicorn's workers), if any."""
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in path.read_text().split()] if path.exists() else []

    def rss_kib(self):
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))

    def stop(self):
        """Stop it as Ctrl-C does (ours would drain on SIGTERM); what it logged stays in
        `log`."""
        self.process.send_signal(signal.SIGINT)
        self.process.wait(10)
        self.log = Path(self.console.name).read_text()
        self.console.close()


def _cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# Flat out ------------------------------------------------------------------------------


def build_calls(calls, messages):
    """Each call's whole conversation as bytes: connected, start, media..., stop, close."""
    audio = mulaw_chunks(tone(1.0), messages * 0.02)
    conversations = []
    for _ in range(calls):
        call = TwilioCall()
        texts = [call.connected(), call.start()]
        texts += [call.media("inbound", chunk) for chunk in audio]
        texts.append(call.stop())
        frames = [encode_frame(text.encode()) for text in texts]
        frames.append(encode_frame((1000).to_bytes(2, "big"), OPCODE_CLOSE))
        conversations.append(b"".join(frames))
    return conversations, calls * (messages + 3)


def stream_conversation(url, conversation):
    sock = connect(url, {})
    try:
        sock.sendall(conversation)
        while sock.recv(65536):  # until the server closes: it has read every message
            pass
    finally:
        sock.close()


def flat_out_round(server, conversations, total_messages):
    started = time.perf_counter()
    greenlets = [gevent.spawn(stream_conversation, server.url, c) for c in conversations]
    gevent.joinall(greenlets, raise_error=True)
    return total_messages / (time.perf_counter() - started)


def flat_out(arguments):
    print(f"building {arguments.calls} calls x {arguments.messages} media messages ...")
    conversations, total = build_calls(arguments.calls, arguments.messages)
    servers = []
    rates = {name: [] for name in arguments.servers}
    try:
        for name in arguments.servers:
            servers.append(Server(name))
        for round_number in range(1, arguments.rounds + 1):
            for server in servers:
                rate = flat_out_round(server, conversations, total)
                rates[server.name].append(rate)
                print(f"round {round_number}: {server.name:<14} {rate:>9,.0f} messages/s")
    finally:
        for server in servers:
            server.stop()
    print()
    print(
        f"load: {arguments.calls} concurrent calls x {arguments.messages} media messages, "
        f"{arguments.rounds} rounds; best (median) messages/s"
    )
    best = {name: max(values) for name, values in rates.items()}
    for name, values in rates.items():
        print(f"  {name:<14} {best[name]:>9,.0f}  ({statistics.median(values):,.0f})")
    if "tutorial" in best:
        for name in best:
            if name != "tutorial":
                print(f"  {name} / tutorial: {best[name] / best['tutorial']:.1f}x")


# Real time -----------------------------------------------------------------------------


def realtime(arguments):
    server = Server("ours")
    plan = Plan(
        url=server.url,
        chunks={"inbound": mulaw_chunks(tone(1.0), arguments.seconds)},
    )
    try:
        idle_kib = server.rss_kib()
        calls = [gevent.spawn(play_call, plan) for _ in range(arguments.calls)]
        gevent.sleep(2)  # every call connected and streaming
        cpu_start, wall_start = server.cpu_seconds(), time.monotonic()
        gevent.sleep(arguments.seconds - 4)
        cpu = (server.cpu_seconds() - cpu_start) / (time.monotonic() - wall_start)
        streaming_kib = server.rss_kib()
        gevent.joinall(calls)
        failures = [call.value.failure for call in calls if call.value.failure]
    finally:
        server.stop()
    print(
        f"{arguments.calls} real-time calls (one track, 50 messages/s each) for "
        f"{arguments.seconds:g} s; {len(failures)} failed"
    )
    print(
        f"  server CPU: {100 * cpu:.1f}% of a core, "
        f"{100 * cpu * 100 / arguments.calls:.1f}% of a core per 100 calls"
    )
    print(
        f"  server memory: {idle_kib / 1024:.1f} MiB idle, {streaming_kib / 1024:.1f} MiB "
        f"streaming, {(streaming_kib - idle_kib) / arguments.calls:.1f} KiB per open stream"
    )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=["flat-out", "realtime"], default="flat-out")
    parser.add_argument("--calls", type=int, help="concurrent calls (default 50, realtime 200)")
    parser.add_argument("--messages", type=int, default=2000, help="media messages per call")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20, help="realtime: call length")
    parser.add_argument(
        "--servers",
        nargs="+",
        choices=SERVERS,
        default=["ours", "ours-no-speech", "tutorial", "websockets"],
    )
    arguments = parser.parse_args()
    if arguments.mode == "realtime":
        arguments.calls = arguments.calls or 200
        realtime(arguments)
    else:
        arguments.calls = arguments.calls or 50
        flat_out(arguments)


if __name__ == "__main__":
    main()
