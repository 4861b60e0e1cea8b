"""Production: health, metrics, Twilio's status callbacks, TwiML from the app, JSON logs."""

import base64
import hashlib
import hmac
import json
import re
import signal
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ElementTree

import pytest
import websocket
from conftest import ServerProcess, play, whole_call

from mediastream.simulator import TwilioCall

TOKEN = "0123456789abcdef0123456789abcdef"


def request(server, path, data=None, headers=None):
    """(status, body, headers) of an HTTP request to the server; a form post with `data`."""
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    try:
        answer = urllib.request.urlopen(
            urllib.request.Request(
                f"http://127.0.0.1:{server.port}{path}", data=body, headers=headers or {}
            ),
            timeout=5,
        )
    except urllib.error.HTTPError as refusal:
        answer = refusal
    return answer.status, answer.read().decode(), answer.headers


def twilio_signature(url, params):
    """X-Twilio-Signature as Twilio documents it: HMAC-SHA1 with the auth token of the URL
    followed by each POST parameter's name and value, sorted by name; base64."""
    text = url + "".join(name + params[name] for name in sorted(params))
    digest = hmac.new(TOKEN.encode(), text.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def a_call(server, media=10, stop=True):
    """A both-tracks call: played whole (and its summary waited for), or left open."""
    call = TwilioCall(tracks=("inbound", "outbound"))
    if stop:
        whole_call(server, call, media_per_track=media)
        return call, None
    ws = server.connect()
    play(ws, call, media_per_track=media)
    return call, ws


# Health ---------------------------------------------------------------------------------


def test_healthz_says_ok_and_counts_open_streams(server):
    call, ws = a_call(server, stop=False)
    server.wait_for(rf"\[{call.tag}\] start:")
    status, body, headers = request(server, "/healthz")
    assert status == 200 and headers["Content-Type"] == "application/json"
    health = json.loads(body)
    assert health["status"] == "ok" and health["open_streams"] >= 1
    assert health["uptime_seconds"] >= 0
    assert call.stream_sid not in body and call.call_sid not in body  # no call data
    ws.close()


def test_healthz_says_503_once_shutdown_begins(start_server):
    slow = start_server(command=("tests/handler_app.py", "Sleepy"), DRAIN_TIMEOUT="1")
    a_call(slow, media=20, stop=False)  # drained for 1 s, then ended: its end takes a while
    assert request(slow, "/healthz")[0] == 200
    slow.process.send_signal(signal.SIGTERM)
    seen = set()
    while slow.process.poll() is None:
        try:
            seen.add(request(slow, "/healthz")[0])
        except OSError:
            break  # the listener has closed
        time.sleep(0.05)
    assert 503 in seen
    assert slow.process.wait(10) == 0


# Metrics --------------------------------------------------------------------------------


def metric(text, name, **labels):
    """The value of a metric in Prometheus' text format (0 when absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = rf"^{name}{{{wanted}}} (\S+)$" if labels else rf"^{name} (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_metrics_count_streams_media_gaps_and_refusals(start_server):
    server = start_server()
    call = TwilioCall(tracks=("inbound", "outbound"))
    ws = server.connect()
    play(ws, call, media_per_track=60)
    call.lose_media("inbound")
    ws.send(call.media("inbound"))
    ws.send("not json")
    ws.send(call.stop())
    ws.close()
    server.summary(call)
    with pytest.raises(websocket.WebSocketBadStatusException):
        server.connect("/elsewhere")
    status, text, headers = request(server, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert metric(text, "mediastream_streams_started_total") == 1
    assert metric(text, "mediastream_streams_ended_total", ended_by="stop") == 1
    assert metric(text, "mediastream_open_streams") == 0
    assert metric(text, "mediastream_media_messages_total", track="inbound") == 61
    assert metric(text, "mediastream_media_messages_total", track="outbound") == 60
    assert metric(text, "mediastream_audio_seconds_total", track="outbound") == 1.2
    assert metric(text, "mediastream_missing_chunks_total", track="inbound") == 1
    assert metric(text, "mediastream_missing_sequence_numbers_total") == 1
    assert metric(text, "mediastream_bad_messages_total") == 1
    assert metric(text, "mediastream_refused_handshakes_total", reason="no route") == 1


def test_metrics_are_for_loopback_or_the_token(start_server):
    open_server = start_server()
    assert request(open_server, "/metrics")[0] == 200
    through_ngrok = {"X-Forwarded-For": "203.0.113.7"}
    status, body, _ = request(open_server, "/metrics", headers=through_ngrok)
    assert status == 403 and "set METRICS_TOKEN" in body

    guarded = start_server(METRICS_TOKEN="s3cret")
    assert request(guarded, "/metrics")[0] == 401
    assert request(guarded, "/metrics", headers={"Authorization": "Bearer wrong"})[0] == 401
    scrape = {"Authorization": "Bearer s3cret", **through_ngrok}
    assert request(guarded, "/metrics", headers=scrape)[0] == 200


def test_metrics_under_gunicorn_add_up_every_workers_streams(start_gunicorn):
    gunicorn = start_gunicorn(LOG_FORMAT="json")
    calls = []
    threads = [
        threading.Thread(target=lambda: calls.append(a_call(gunicorn, media=25))) for _ in range(16)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = [json.loads(line) for line in gunicorn.lines('"event": "summary"')]
    workers = {line["pid"] for line in lines}
    assert len(lines) == 16 and len(workers) == 2  # both workers served calls
    text = request(gunicorn, "/metrics")[1]
    assert metric(text, "mediastream_streams_started_total") == 16
    assert metric(text, "mediastream_media_messages_total", track="inbound") == 16 * 25
    assert metric(text, "mediastream_open_streams") == 0


# Twilio's webhooks ----------------------------------------------------------------------

STATUS = {
    "AccountSid": "AC" + "1" * 32,
    "CallSid": "CA" + "2" * 32,
    "StreamSid": "MZ" + "3" * 24 + "abcd1234",
    "StreamName": "MZ" + "3" * 24 + "abcd1234",
    "Timestamp": "2026-11-25T05:00:00Z",
}


@pytest.fixture(scope="module")
def signed_server(tmp_path_factory):
    running = ServerProcess(
        tmp_path_factory.mktemp("signed") / "console.log",
        TWILIO_AUTH_TOKEN=TOKEN,
        PUBLIC_URL="wss://abc123.ngrok.app",
    )
    yield running
    running.stop()
    assert "Traceback" not in running.log()


def test_status_callbacks_are_logged_with_the_streams_tag(server):
    started = {**STATUS, "StreamEvent": "stream-started"}
    assert request(server, "/status", started)[0] == 204
    server.wait_for(rf"INFO    \[abcd1234\] status: stream-started \(call {STATUS['CallSid']}\)")
    failed = {**STATUS, "StreamEvent": "stream-error", "StreamError": "31920: handshake error"}
    assert request(server, "/status", failed)[0] == 204
    server.wait_for(r"WARNING \[abcd1234\] status: stream-error from Twilio: 31920: handshake")


def test_status_callbacks_must_be_signed_when_the_token_is_set(signed_server):
    stopped = {**STATUS, "StreamEvent": "stream-stopped"}
    assert request(signed_server, "/status", stopped)[0] == 403
    signed_server.wait_for(r"/status refused \(403 Forbidden\): no X-Twilio-Signature")
    wrong = {"X-Twilio-Signature": twilio_signature("https://abc123.ngrok.app/status", STATUS)}
    assert request(signed_server, "/status", stopped, headers=wrong)[0] == 403
    right = {"X-Twilio-Signature": twilio_signature("https://abc123.ngrok.app/status", stopped)}
    assert request(signed_server, "/status", stopped, headers=right)[0] == 204
    signed_server.wait_for(r"\[abcd1234\] status: stream-stopped")


def parse_twiml(body):
    root = ElementTree.fromstring(body)
    stream = root.find("Start/Stream")
    parameters = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    return root, stream, parameters


def test_twiml_streams_to_this_very_server(server):
    through_ngrok = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "abc123.ngrok.app"}
    status, body, headers = request(
        server, "/twiml", {"CallSid": STATUS["CallSid"], "From": "+15550100123"}, through_ngrok
    )
    assert status == 200 and headers["Content-Type"].startswith("text/xml")
    root, stream, parameters = parse_twiml(body)
    assert stream.get("url") == "wss://abc123.ngrok.app/media"
    assert stream.get("track") == "both_tracks"
    assert stream.get("statusCallback") == "https://abc123.ngrok.app/status"
    assert parameters == {"caller": "+15550100123", "topic": "support"}
    # Without DIAL_NUMBER: a short message, then the call stays open to be streamed.
    assert root.find("Say").text and int(root.find("Pause").get("length")) >= 60
    server.wait_for(rf"twiml: call {STATUS['CallSid']} gets <Start><Stream url=")
    _, local, parameters = parse_twiml(request(server, "/twiml")[1])  # a GET, from a browser
    assert local.get("url") == f"ws://127.0.0.1:{server.port}/media"
    assert parameters == {"topic": "support"}  # no caller to name


def test_twiml_dials_the_number_it_is_given(start_server):
    dialling = start_server(DIAL_NUMBER="+15550100000")
    root = parse_twiml(request(dialling, "/twiml", {"From": "+1555"})[1])[0]
    assert root.find("Dial").text == "+15550100000" and root.find("Pause") is None


def test_twiml_requests_must_be_signed_when_the_token_is_set(signed_server):
    form = {"CallSid": STATUS["CallSid"], "From": "+15550100123"}
    assert request(signed_server, "/twiml", form)[0] == 403
    right = {"X-Twilio-Signature": twilio_signature("https://abc123.ngrok.app/twiml", form)}
    status, body, _ = request(signed_server, "/twiml", form, headers=right)
    assert status == 200
    assert parse_twiml(body)[1].get("url") == "wss://abc123.ngrok.app/media"


# JSON logs ------------------------------------------------------------------------------


def test_json_logs_carry_the_same_events_as_fields(start_server):
    server = start_server(LOG_FORMAT="json")
    call, _ = a_call(server, media=30)
    lines = [json.loads(line) for line in server.log().splitlines()]  # every line parses
    ours = [line for line in lines if line.get("stream_sid") == call.stream_sid]
    events = [line["event"] for line in ours]
    assert events[0] == "start" and events[-1] == "summary"
    assert {"stop", "received", "gaps"} <= set(events)
    summary = ours[-1]
    assert summary["call_sid"] == call.call_sid and summary["level"] == "INFO"
    assert summary["stream"] == call.tag and "time" in summary and "pid" in summary
    figures = summary["figures"]
    assert figures["ended_by"] == "stop" and figures["bad_messages"] == 0
    assert figures["tracks"]["inbound"]["messages"] == 30
    assert figures["tracks"]["outbound"]["audio_seconds"] == 0.6
