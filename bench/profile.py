"""Where our server's time goes on a flat-out run: cProfile's top entries.

    python bench/profile.py [--server tutorial] [--calls 20] [--messages 2000] [--top 15]

Runs `app.py` (or the tutorial's baseline, bench/tutorial_app.py) under cProfile in a
child process, streams the flat-out load of bench/throughput.py into it, and prints the
functions that used the most time of their own. (gevent's hub, where the server waits
for the network, shows up as serve_forever or start; the rest is per-message work.)
"""

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gevent

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import REPO, build_calls, free_port, stream_conversation  # noqa: E402

SCRIPTS = {"ours": "app.py", "tutorial": "bench/tutorial_app.py"}
CHILD = """
import cProfile, pstats, runpy, signal, sys
profile = cProfile.Profile()
def report(*_):
    profile.disable()
    pstats.Stats(profile).sort_stats("tottime").print_stats({top})
    sys.stdout.flush()
    raise SystemExit(0)
signal.signal(signal.SIGUSR1, report)
profile.enable()
runpy.run_path("{script}", run_name="__main__")
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", choices=["ours", "tutorial"], default="ours")
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--top", type=int, default=15)
    arguments = parser.parse_args()
    conversations, total = build_calls(arguments.calls, arguments.messages)
    port = free_port()
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "LOG_LEVEL": "WARNING"}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(top=arguments.top, script=SCRIPTS[arguments.server])],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # the servers' consoles: written, not shown
        text=True,
    )
    time.sleep(2)
    url = f"ws://127.0.0.1:{port}/media"
    started = time.perf_counter()
    gevent.joinall([gevent.spawn(stream_conversation, url, c) for c in conversations])
    print(f"{total / (time.perf_counter() - started):,.0f} messages/s under the profiler")
    child.send_signal(signal.SIGUSR1)
    print(child.communicate(timeout=30)[0])


if __name__ == "__main__":
    main()
