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
from conftest import REPO, ServerProcess

from mediastream.simulator import TwilioCall

GUNICORN = ("-m", "gunicorn", "--workers", "2", "app:create_app()")


@pytest.fixture
def gunicorn(tmp_path):
    running = ServerProcess(
        tmp_path / "console.log",
        command=GUNICORN,
        listening=r"Listening at: http://[\d.]+:(\d+)",
        preexec_fn=os.setsid,  # a process group of its own, as in a terminal
    )
    # Each worker has loaded the app when it says so (about the missing auth token).
    running.wait_for(r"(?s)TWILIO_AUTH_TOKEN is not set.*TWILIO_AUTH_TOKEN is not set")
    yield running
    running.stop()
    assert "Traceback" not in running.log()


def open_call(server, media=5):
    call = TwilioCall(tracks=("inbound", "outbound"))
    ws = server.connect()
    ws.send(call.connected())
    ws.send(call.start())
    for _ in range(media):
        for track in call.tracks:
            ws.send(call.media(track))
    return call, ws


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


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_stopping_gunicorn_summarises_every_open_stream(gunicorn, how):
    open_calls = [open_call(gunicorn) for _ in range(6)]
    for call, _ in open_calls:
        gunicorn.wait_for(rf"\[{call.tag}\] start:")
    time.sleep(0.3)  # the media sent after start is read
    started = time.monotonic()
    if how == "Ctrl-C":  # a terminal sends SIGINT to the whole process group
        os.killpg(gunicorn.process.pid, signal.SIGINT)
        assert gunicorn.process.wait(20) == 0
    else:
        assert gunicorn.stop(signal.SIGTERM, timeout=20) == 0
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
        listening=r"Listening at: http://[\d.]+:(\d+)",
        TMPDIR=str(own_tmp),
    )
    assert [path.name[:20] for path in own_tmp.iterdir()] == ["mediastream-metrics-"]
    port_in_use = subprocess.run(
        [sys.executable, *GUNICORN],
        cwd=REPO,
        env={**os.environ, "HOST": "127.0.0.1", "PORT": str(running.port), "TMPDIR": str(own_tmp)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert port_in_use.returncode != 0 and "Address already in use" in port_in_use.stderr
    assert len(list(own_tmp.iterdir())) == 1  # the running one's only
    assert running.stop() == 0
    assert list(own_tmp.iterdir()) == []
