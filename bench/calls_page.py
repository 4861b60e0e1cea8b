"""The live calls page under load: 100 open calls, as smooth for the page as for the server?

    python bench/calls_page.py                  100 paced one-track calls, 20 s, 3 rounds
    python bench/calls_page.py --calls 50 --seconds 30 --repeat 1

The same paced calls (bench/paced.py's: one track, 50 messages a second each) into four
servers in turn: ours without the LiveCalls handler; ours with it and nobody watching; ours
with its /calls/events read by a plain client (what a page costs the server); ours with
/calls open in Chromium (Debian's, driven by Playwright, in a process of its own).
The server is pinned to core 0; the calls and the browser share core 1. It prints each
one's server CPU per media message (the median of --repeat rounds, taken in turn so that
the machine's drift hits each alike), and what the page saw over the steady part of the
last round: Server-Sent Events messages and kilobytes a second, the gaps between `update`
messages (median and worst), the frames the page drew a second, and its long tasks (50 ms
or more of script or layout at a time). It prints figures; it is no test.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time

import gevent
from gevent import socket
from paced import LOAD_CORE, SERVER_CORE, TICK, frames_of, play_paced
from throughput import SERVERS, Server

CHROMIUM = "/usr/bin/chromium"  # Debian's (apt-get install chromium)
# What the LiveCalls handler costs when nobody watches: the same server without it.
WITHOUT_LIVE_CALLS = "app.main([h for h in app.DEFAULT_HANDLERS if h.__name__ != 'LiveCalls'])"
SERVERS["ours-without-live-calls"] = (
    [sys.executable, "-c", f"import app; {WITHOUT_LIVE_CALLS}"],
    {},
)

# Installed on the page before its own script: counts what the event stream brings,
# frames drawn and long tasks.
PAGE_PROBE = """
window.probe = {events: 0, bytes: 0, updates: [], frames: 0, longTasks: [], calls: 0};
const Native = window.EventSource;
window.EventSource = function (url) {
  const source = new Native(url);
  for (const name of ["snapshot", "call", "update", "utterance", "end"]) {
    source.addEventListener(name, (message) => {
      probe.events += 1;
      probe.bytes += message.data.length;
      if (name === "update") probe.updates.push(performance.now());
    });
  }
  return source;
};
new PerformanceObserver((list) => {
  for (const task of list.getEntries()) probe.longTasks.push(task.duration);
}).observe({type: "longtask"});
const frame = () => { probe.frames += 1; requestAnimationFrame(frame); };
requestAnimationFrame(frame);
"""


def watch(url, seconds, at):
    """In the browser's process: open the page, then measure from `at` (the epoch's
    seconds: the server's steady part) for `seconds` s."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.add_init_script(PAGE_PROBE)
        page.goto(url)
        time.sleep(max(0.0, at - time.time()))
        before = page.evaluate(
            "({...probe, updates: probe.updates.length, longTasks: probe.longTasks.length})"
        )
        time.sleep(seconds)
        after = page.evaluate("probe")
        calls = page.locator("#open article").count()
        browser.close()
    updates = after["updates"][before["updates"] :]
    gaps = [later - earlier for earlier, later in zip(updates, updates[1:], strict=False)]
    print(
        json.dumps(
            {
                "calls_shown": calls,
                "events_per_second": (after["events"] - before["events"]) / seconds,
                "kb_per_second": (after["bytes"] - before["bytes"]) / seconds / 1000,
                "update_gap_median_ms": statistics.median(gaps) if gaps else None,
                "update_gap_worst_ms": max(gaps) if gaps else None,
                "frames_per_second": (after["frames"] - before["frames"]) / seconds,
                "long_tasks": after["longTasks"][before["longTasks"] :],
            }
        )
    )


def read_events(port):
    """A plain client of the page's event stream: what serving a page costs the server,
    without a browser drawing on the machine."""
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(b"GET /calls/events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        while client.recv(65536):
            pass


def run(server_name, calls, seconds, watcher):
    """One run: (server CPU seconds per media message, what the page saw or None).
    `watcher`: None, "events" (read_events) or "page" (Chromium)."""
    server = Server(server_name, prefix=("taskset", "-c", str(SERVER_CORE)))
    lateness = []
    try:
        conversations = frames_of(calls, seconds)
        start = time.monotonic() + 1.0 + calls * 0.002
        dues = [start + TICK * n / calls for n in range(calls)]
        callers = [gevent.spawn(play_paced, [server.url] * calls, conversations, dues, lateness)]
        window = seconds - 6.0  # steady: every call started, none ended
        page = None
        if watcher == "events":
            reader = gevent.spawn(read_events, server.port)
        if watcher == "page":
            url = server.url.replace("ws://", "http://").replace("/media", "/calls")
            page = subprocess.Popen(
                ["taskset", "-c", str(LOAD_CORE), sys.executable, __file__, "--watch", url]
                + [
                    "--seconds",
                    str(window),
                    "--at",
                    str(time.time() + start + 2.0 - time.monotonic()),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
        gevent.sleep(start + 2.0 - time.monotonic())
        cpu_before, sent_before = server.cpu_seconds(), len(lateness)
        gevent.sleep(window)
        cpu = server.cpu_seconds() - cpu_before
        messages = len(lateness) - sent_before
        seen = json.loads(page.communicate(timeout=60)[0]) if page else None
        gevent.joinall(callers, raise_error=True)
    finally:
        server.stop()
        if watcher == "events":
            reader.kill()
    return cpu / messages, seen


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each (median shown)")
    parser.add_argument("--watch", help=argparse.SUPPRESS)  # the browser's own process
    parser.add_argument("--at", type=float, default=0.0, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.watch:
        return watch(arguments.watch, arguments.seconds, arguments.at)
    runs = [
        ("ours-without-live-calls", None, "without the LiveCalls handler"),
        ("ours", None, "nobody watching"),
        ("ours", "events", "/calls/events read by a plain client"),
        ("ours", "page", "/calls open in Chromium"),
    ]
    figures = {label: [] for _, _, label in runs}
    for _ in range(arguments.repeat):
        for server_name, watcher, label in runs:
            per_message, seen = run(server_name, arguments.calls, arguments.seconds, watcher)
            figures[label].append(per_message * 1e6)
    for label, per_message in figures.items():
        spread = (
            f" ({min(per_message):.1f} to {max(per_message):.1f})" if len(per_message) > 1 else ""
        )
        median = statistics.median(per_message)
        print(f"{arguments.calls} calls, {label}: server {median:.1f} µs a message{spread}")
    tasks = seen.pop("long_tasks")  # the page, in the last run
    print(f"the page, with {arguments.calls} calls (last run):")
    for name, value in seen.items():
        print(f"  {name}: {value:.1f}" if isinstance(value, float) else f"  {name}: {value}")
    print(f"  long tasks: {len(tasks)}" + (f", worst {max(tasks):.0f} ms" if tasks else ""))


if __name__ == "__main__":
    sys.exit(main())
