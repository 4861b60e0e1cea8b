"""Deploys drop no call: SIGTERM drains (python app.py, gunicorn), Ctrl-C does not wait."""

import json
import re
import signal
import threading
import time
import urllib.request
import wave

import pytest
import websocket
from conftest import finished, play, simulate, start_simulation

from mediastream.simulator import TwilioCall


def health(server):
    """/healthz's status, or None when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=2):
            return 200
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def handshake(server):
    """The HTTP status a new /media handshake gets (101: accepted)."""
    try:
        server.connect().close()
        return 101
    except websocket.WebSocketBadStatusException as refused:
        return refused.status_code
    except OSError:
        return None


def summaries(server):
    return server.lines("summary: ")


def test_sigterm_lets_open_calls_finish_and_refuses_new_ones(start_server, tmp_path):
    server = start_server(RECORDINGS_DIR=str(tmp_path))
    calls = start_simulation(server, "--calls", "3", "--seconds", "4", "--tracks", "both")
    server.wait_for(r"(?s)(start: stream.*){3}")
    time.sleep(0.5)
    server.process.send_signal(signal.SIGTERM)
    server.wait_for(r"draining: 3 open streams, waiting up to 30 min for them to end")
    seen = set()  # (what /healthz said, what a handshake got), until the server is gone
    while server.process.poll() is None:
        answers = health(server), handshake(server)
        if None in answers:  # the listener has closed: only once every call has ended
            assert len(summaries(server)) == 3
            break
        seen.add(answers)
        time.sleep(0.1)
    last_summary = time.monotonic()
    assert server.process.wait(5) == 0
    assert time.monotonic() - last_summary < 1.0  # gone once the last call had ended
    assert seen == {(503, 503)}
    status, report = finished(calls)
    assert status == 0 and "3 completed, 0 failed" in report
    for line in summaries(server):  # (read in batches: the stop may wait one interval)
        assert re.search(r"ended by stop after 4\.[01] s", line)
    assert server.lines("handshake refused (503 Service Unavailable): the server is draining")
    for recording in tmp_path.glob("*.wav"):  # the whole call, both tracks
        with wave.open(str(recording)) as wav:
            assert wav.getnframes() == 4 * 8000


def hold_open(server, count):
    """Calls that stream a little and then stay open, as long calls do."""
    calls = [TwilioCall() for _ in range(count)]
    clients = [server.connect() for _ in calls]
    for call, ws in zip(calls, clients, strict=True):
        play(ws, call, media_per_track=5)
        server.wait_for(rf"\[{call.tag}\] start:")
    return calls, clients


def test_past_drain_timeout_the_open_streams_end_with_1001(start_server):
    server = start_server(DRAIN_TIMEOUT="1")
    calls, clients = hold_open(server, 2)
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(10) == 0
    assert 1.0 <= time.monotonic() - started < 4
    for call in calls:
        assert "ended by server shutdown" in server.summary(call, timeout=0)
    opcode, payload = clients[0].recv_data(control_frame=True)
    assert (opcode, int.from_bytes(payload[:2], "big")) == (websocket.ABNF.OPCODE_CLOSE, 1001)
    assert server.lines("shutting down: ending 2 open streams")


@pytest.mark.parametrize("then", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_a_second_sigterm_during_a_drain_ends_everything_at_once(start_server, then):
    server = start_server()
    calls, _ = hold_open(server, 2)
    server.process.send_signal(signal.SIGTERM)
    server.wait_for("draining: 2 open streams")
    status, report = simulate(server, "--seconds", "0.1")  # a call that comes now
    assert status == 1
    assert "refused: HTTP 503 Service Unavailable: the server is draining or" in report
    started = time.monotonic()
    server.process.send_signal(then)
    assert server.process.wait(10) == 0
    assert time.monotonic() - started < 3
    for call in calls:
        assert "ended by server shutdown" in server.summary(call, timeout=0)


def test_sigterm_with_no_call_open_exits_at_once(start_server):
    server = start_server()
    started = time.monotonic()
    assert server.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 2
    assert server.lines("draining: 0 open streams")


# gunicorn ---------------------------------------------------------------------------


@pytest.fixture
def gunicorn(start_gunicorn):
    return start_gunicorn(LOG_FORMAT="json")  # each line says which worker


def records(server, text=""):
    """The JSON log lines that contain `text`."""
    return [json.loads(line) for line in server.lines(text) if line.startswith("{")]


def worker_of(server, call):
    (start,) = records(server, f"[{call.tag}] start:")
    return start["pid"]


def paced_call(server, seconds, done):
    """A call paced as Twilio sends it, in a thread; its stop after `seconds`."""
    call = TwilioCall()

    def stream():
        ws = server.connect()
        ws.send(call.connected())
        ws.send(call.start())
        for _ in range(round(seconds * 50)):
            ws.send(call.media())
            time.sleep(0.02)
        ws.send(call.stop())
        ws.close()
        done.append(call)

    threading.Thread(target=stream, daemon=True).start()
    server.wait_for(rf"\[{call.tag}\] start:")
    return call


def test_sigterm_to_gunicorn_drains_every_worker(gunicorn):
    done = []
    calls = [paced_call(gunicorn, 3, done) for _ in range(4)]
    gunicorn.process.send_signal(signal.SIGTERM)  # the arbiter only, as systemd does
    assert gunicorn.process.wait(20) == 0
    assert len(done) == 4
    for call in calls:
        (summary,) = records(gunicorn, f"[{call.tag}] summary:")
        assert summary["figures"]["ended_by"] == "stop"
        assert summary["figures"]["tracks"]["inbound"]["messages"] == 150


def test_a_reload_serves_new_calls_on_new_workers_while_old_ones_finish(gunicorn):
    done = []
    old_call = paced_call(gunicorn, 4, done)
    old_worker = worker_of(gunicorn, old_call)
    booted = len(gunicorn.lines("Booting worker"))
    gunicorn.process.send_signal(signal.SIGHUP)
    gunicorn.wait_for(rf"(?s)(Booting worker.*){{{booted + 2}}}")
    gunicorn.wait_for(r"(?s)(TWILIO_AUTH_TOKEN is not set.*){4}")  # the new ones have loaded
    new_call = paced_call(gunicorn, 0.5, done)
    new_workers = set(map(int, re.findall(r"Booting worker with pid: (\d+)", gunicorn.log())[-2:]))
    assert worker_of(gunicorn, new_call) in new_workers
    assert old_worker not in new_workers
    gunicorn.summary(old_call)
    (summary,) = records(gunicorn, f"[{old_call.tag}] summary:")
    assert summary["pid"] == old_worker and summary["figures"]["ended_by"] == "stop"
    assert summary["figures"]["tracks"]["inbound"]["messages"] == 200
    drained = [r["pid"] for r in records(gunicorn, "draining: 1 open streams")]
    assert old_worker in drained
    assert not gunicorn.lines("handshake refused")  # no call turned away on the way
