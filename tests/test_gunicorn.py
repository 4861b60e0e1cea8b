"""Production: gunicorn with two workers of gevent-websocket's worker class (ours)."""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import websocket
from conftest import (
    GUNICORN,
    GUNICORN_LISTENING,
    REPO,
    PageEvents,
    ServerProcess,
    calls_on_every_worker,
    open_call,
)


@pytest.fixture
def gunicorn(start_gunicorn):
    return start_gunicorn()


def test_two_workers_stream_and_summarise_every_call(gunicorn):
    calls = []

    def stream():
        call, ws = open_call(gunicorn, media=50)
        ws.send(call.stop())
        ws.close()
        calls.append(call)

    threads = [threading.Thread(target=stream) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 8
    for call in calls:
        summary = gunicorn.summary(call)
        assert "ended by stop" in summary
        assert "inbound 50 messages (1.0 s), outbound 50 messages (1.0 s)" in summary
    workers = set(re.findall(r"Booting worker with pid: (\d+)", gunicorn.log()))
    assert len(workers) == 2


def test_handshakes_are_checked_under_gunicorn_too(gunicorn):
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        gunicorn.connect("/elsewhere")
    assert refused.value.status_code == 404


def test_ctrl_c_ends_every_open_stream_under_gunicorn_at_once(gunicorn):
    open_calls = [open_call(gunicorn) for _ in range(6)]
    for call, _ in open_calls:
        gunicorn.wait_for(rf"\[{call.tag}\] start:")
    time.sleep(0.3)  # the media sent after start is read
    started = time.monotonic()
    os.killpg(gunicorn.process.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole group
    assert gunicorn.process.wait(20) == 0
    assert time.monotonic() - started < 10
    assert "SystemExit" not in gunicorn.log()
    for call, _ in open_calls:
        summary = gunicorn.summary(call, timeout=0)
        assert "ended by server shutdown" in summary
        assert "inbound 5 messages" in summary


def test_gunicorn_leaves_no_metrics_directory_behind(tmp_path):
    """Its temporary metrics directory goes when gunicorn stops, and when it cannot start."""
    own_tmp = tmp_path / "tmp"
    own_tmp.mkdir()
    running = ServerProcess(
        tmp_path / "console.log",
        command=GUNICORN,
        listening=GUNICORN_LISTENING,
        TMPDIR=str(own_tmp),
    )

    def metrics_dirs():  # (gunicorn keeps files of its own there too, for a moment)
        return list(own_tmp.glob("mediastream-metrics-*"))

    assert len(metrics_dirs()) == 1
    port_in_use = subprocess.run(
        [sys.executable, *GUNICORN],
        cwd=REPO,
        env={**os.environ, "HOST": "127.0.0.1", "PORT": str(running.port), "TMPDIR": str(own_tmp)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert port_in_use.returncode != 0 and "Address already in use" in port_in_use.stderr
    assert len(metrics_dirs()) == 1  # the running one's only
    assert running.stop() == 0
    assert metrics_dirs() == []


def test_the_calls_page_shows_every_workers_calls(start_gunicorn):
    """Each worker is a process with calls of its own; a page, served by one of them,
    shows them all (browser/events.py: the workers share them over unix sockets)."""
    gunicorn = start_gunicorn(LOG_FORMAT="json")
    open_calls = calls_on_every_worker(gunicorn)
    expected = {call.stream_sid for call, _ in open_calls}
    page = PageEvents(gunicorn)
    page.wait_for(lambda page: page.ids("snapshot", "calls") >= expected)
    page.close()
    assert page.ids("snapshot", "calls") == expected
    for call, ws in open_calls:
        ws.send(call.stop())
        ws.close()
