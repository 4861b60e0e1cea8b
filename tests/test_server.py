"""The real server on a loopback port, spoken to with real WebSocket frames."""

import json
import os
import re
import resource
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
import websocket
from conftest import FIXTURES, REPO, play

from mediastream.simulator import TwilioCall, encode_frame, mulaw_chunks, read_wav


def test_whole_call_with_both_tracks_dtmf_mark_and_parameters(server):
    call = TwilioCall(tracks=("inbound", "outbound"), parameters={"caller": "Alice", "topic": "x"})
    ws = server.connect()
    client = f"127.0.0.1:{ws.sock.getsockname()[1]}"
    play(ws, call, media_per_track=25)
    ws.send(call.dtmf("7"))
    ws.send(call.mark("greeting-done"))
    ws.send(call.stop())
    ws.close()
    server.summary(call)
    lines = server.lines(f"[{client}]") + server.lines(f"[{call.tag}]")
    # No line per media message at INFO: the events, and the closing lines.
    seen = [line.split(" ", 1)[1] for line in lines]
    assert seen[:-1] == [
        f"INFO    [{client}] connection opened",
        f"INFO    [{client}] connected: protocol Call 1.0.0",
        f"INFO    [{call.tag}] start: stream {call.stream_sid} from {client} (one-way)",
        f"INFO    [{call.tag}] call {call.call_sid}: tracks inbound+outbound, "
        "audio/x-mulaw 8000 Hz 1 ch",
        f"INFO    [{call.tag}] parameters: caller=Alice, topic=x",
        f"INFO    [{call.tag}] dtmf: digit 7 (inbound_track)",
        f"INFO    [{call.tag}] mark: greeting-done",
        f"INFO    [{call.tag}] stop: call {call.call_sid}",
        f"INFO    [{call.tag}] speech: inbound talk 0.0 s (0%), outbound talk 0.0 s (0%); "
        "overtalk 0.0 s (0 times)",
        f"INFO    [{call.tag}] received: inbound 25 messages (0.5 s), outbound 25 messages (0.5 s)",
        f"INFO    [{call.tag}] gaps: 0 missing chunks, 0 missing sequence numbers; bad messages: 0",
    ]
    # Read in batches (READ_INTERVAL), the stop may come one interval after the start.
    summary = f"INFO    [{call.tag}] summary: stream {call.stream_sid} ended by stop after"
    assert seen[-1] in (f"{summary} 0.0 s", f"{summary} 0.1 s")
    assert max(len(line) for line in lines) <= 120  # a terminal's width, with the time


def test_every_line_about_a_stream_names_it(server):
    call = TwilioCall()
    ws = server.connect()
    client = f"127.0.0.1:{ws.sock.getsockname()[1]}"
    play(ws, call)
    ws.send("not json")
    ws.close()
    server.summary(call)
    lines = server.lines(client) + server.lines(f"[{call.tag}]")
    assert len(lines) == 10  # opened, connected, start (2), bad message, speech, closing (3)
    assert all(f"[{client}]" in line or f"[{call.tag}]" in line for line in lines)


def test_progress_line_every_few_seconds_of_a_call(server):
    call = TwilioCall()
    ws = server.connect()
    play(ws, call, media_per_track=0)
    speech = mulaw_chunks(read_wav(FIXTURES / "call-inbound.wav"), seconds=6)
    started = time.monotonic()
    for n, chunk in enumerate(speech):  # in real time: the line comes every 5 s of the call
        ws.send(call.media(audio=chunk))
        time.sleep(max(0.0, started + (n + 1) * 0.02 - time.monotonic()))
    ws.close()
    server.summary(call)
    (progress,) = server.lines(f"[{call.tag}] media: inbound")
    # About 5 s in: the caller spoke from 0.5 s to 2.7 s, and is silent until 6.5 s.
    assert re.search(r"media: inbound (4\.9|5\.0) s, silent, talk 2\.2 s$", progress)


def test_debug_level_shows_each_media_message(start_server):
    debug_server = start_server(LOG_LEVEL="DEBUG")
    call = TwilioCall()
    ws = debug_server.connect()
    play(ws, call, media_per_track=3)
    ws.close()
    debug_server.summary(call)
    media = debug_server.lines(f"[{call.tag}] media: inbound chunk")
    assert [line.split("media: ")[1] for line in media] == [
        "inbound chunk 1, timestamp 0 ms, 160 bytes",
        "inbound chunk 2, timestamp 20 ms, 160 bytes",
        "inbound chunk 3, timestamp 40 ms, 160 bytes",
    ]


def test_lost_media_messages_are_counted_and_reported(server):
    call = TwilioCall(tracks=("inbound", "outbound"))
    ws = server.connect()
    play(ws, call, media_per_track=5)
    call.lose_media("inbound")
    call.lose_media("inbound")
    ws.send(call.media("outbound"))
    ws.send(call.media("inbound"))
    ws.send(call.stop())
    ws.close()
    summary = server.summary(call)
    assert "gaps: 2 missing chunks, 2 missing sequence numbers" in summary
    gaps = server.lines(f"[{call.tag}] gap:")
    assert len(gaps) == 2
    # Two messages lost in all: counted once, from their sequence numbers.
    assert gaps[0].endswith("gap: 2 messages lost (sequence numbers 12-13)")
    assert gaps[1].endswith("gap: inbound 40 ms of audio lost (chunks 6-7)")


def test_a_lost_message_on_one_track_is_one_warning(server):
    call = TwilioCall()
    ws = server.connect()
    play(ws, call, media_per_track=3)
    call.lose_media()
    ws.send(call.media())
    ws.close()
    server.summary(call)
    (gap,) = server.lines(f"[{call.tag}] gap:")
    assert gap.endswith(
        "gap: 1 message lost (sequence number 5); inbound 20 ms of audio lost (chunk 4)"
    )


BAD_MESSAGES = [
    ("not json at all", "not JSON"),
    ("[1, 2, 3]", "JSON list instead of an object"),
    ("[" * 60_000, "not JSON (depth limit exceeded"),
    ('{"event": {"name": "media"}}', "unknown event"),
    ('{"streamSid": "MZx"}', "no 'event' field"),
    ('{"event": "dance"}', "unknown event 'dance'"),
    ('{"event": "media", "media": {"track": "inbound"}}', "media without a payload"),
    ('{"event": "media", "media": {"payload": "%%%not-base64"}}', "not valid base64"),
    ('{"event": "media", "media": {"payload": "/w==", "chunk": "x"}}', "chunk is not a number"),
    ('{"event": "start"}', "start event without a 'start' object"),
    ('{"event": "dtmf", "dtmf": {}}', "dtmf without a digit"),
    ('{"event": "mark", "mark": {}}', "mark without a name"),
]


def test_bad_messages_get_one_warning_each_and_the_stream_goes_on(server):
    call = TwilioCall()
    ws = server.connect()
    play(ws, call, media_per_track=2)
    for message, _ in BAD_MESSAGES:
        ws.send(message)
    ws.send_binary(b"\x00\x01\x02")
    ws.send(call.media())
    ws.send(call.dtmf("1"))
    ws.send(call.stop())
    ws.close()

    summary = server.summary(call)
    assert f"bad messages: {len(BAD_MESSAGES) + 1}" in summary
    assert "inbound 3 messages" in summary
    warnings = server.lines(f"WARNING [{call.tag}] bad message ignored:")
    assert len(warnings) == len(BAD_MESSAGES) + 1
    for warning, (_, reason) in zip(warnings, BAD_MESSAGES, strict=False):
        assert reason in warning
    assert "binary frame of 3 bytes" in warnings[-1]
    assert server.lines(f"[{call.tag}] dtmf: digit 1")


def test_concurrent_calls_keep_their_own_figures(server):
    calls = [TwilioCall(tracks=("inbound", "outbound")) for _ in range(6)]

    def stream(call, count):
        ws = server.connect()
        play(ws, call, media_per_track=count)
        ws.send(call.stop())
        ws.close()

    threads = [
        threading.Thread(target=stream, args=(call, 20 + 10 * n)) for n, call in enumerate(calls)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for n, call in enumerate(calls):
        count = 20 + 10 * n
        summary = server.summary(call)
        assert f"inbound {count} messages (" in summary
        assert f"outbound {count} messages (" in summary
        assert "gaps: 0 missing chunks, 0 missing sequence numbers; bad messages: 0" in summary


def test_a_connection_cut_mid_frame_ends_only_its_own_stream(server):
    cut, other = TwilioCall(), TwilioCall()
    ws_cut, ws_other = server.connect(), server.connect()
    play(ws_cut, cut, media_per_track=2)
    play(ws_other, other, media_per_track=2)
    ws_cut.sock.sendall(encode_frame(cut.media().encode())[:40])
    ws_cut.sock.close()
    summary = server.summary(cut)
    assert "ended by disconnect" in summary
    assert server.lines(f"WARNING [{cut.tag}] connection problem: connection cut in the middle")

    ws_other.send(other.media())
    ws_other.send(other.stop())
    ws_other.close()
    assert "inbound 3 messages" in server.summary(other)


def test_abrupt_disconnect_and_client_close_each_end_with_a_summary(server):
    dropped, closed = TwilioCall(), TwilioCall()
    ws = server.connect()
    play(ws, dropped, media_per_track=3)
    ws.sock.close()
    assert "ended by disconnect after" in server.summary(dropped)
    assert server.lines(f"[{dropped.tag}] connection problem: connection dropped without a close")

    ws = server.connect()
    play(ws, closed, media_per_track=3)
    ws.close(status=1000)
    assert "ended by client close (1000) after" in server.summary(closed)


@pytest.mark.parametrize(
    "raw, problem, code",
    [
        (encode_frame(b'{"event": "x"}', mask=b""), "client frame is not masked", 1002),
        (encode_frame(b"\xff\xfe"), "text message is not valid UTF-8", 1007),
        (encode_frame(b"abc", opcode=0x3), "unknown frame opcode 3", 1002),
        (encode_frame((999).to_bytes(2, "big"), opcode=0x8), "invalid close code 999", 1002),
        (encode_frame((1005).to_bytes(2, "big"), opcode=0x8), "invalid close code 1005", 1002),
        (encode_frame((5000).to_bytes(2, "big"), opcode=0x8), "invalid close code 5000", 1002),
        (encode_frame(b"\x03\xe8\xff", opcode=0x8), "close reason is not valid UTF-8", 1007),
    ],
)
def test_protocol_errors_close_with_their_code_and_a_warning(server, raw, problem, code):
    call = TwilioCall()
    ws = server.connect()
    play(ws, call, media_per_track=1)
    ws.sock.sendall(raw)
    opcode, payload = ws.recv_data(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert int.from_bytes(payload[:2], "big") == code
    assert "ended by" in server.summary(call)
    assert server.lines(f"WARNING [{call.tag}] connection problem: {problem}")


def test_ping_gets_a_pong(server):
    ws = server.connect()
    ws.ping(b"hello")
    opcode, payload = ws.recv_data(control_frame=True)
    assert (opcode, payload) == (websocket.ABNF.OPCODE_PONG, b"hello")
    ws.close()


def test_websocket_to_another_path_is_refused(server):
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        server.connect("/elsewhere")
    assert refused.value.status_code == 404
    assert server.lines("handshake refused (404 Not Found): no WebSocket route")


@pytest.mark.parametrize("path, status", [("/", 200), ("/media", 426)])
def test_a_browser_learns_what_this_server_is_and_where_twilio_connects(server, path, status):
    try:
        answer = urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5)
    except urllib.error.HTTPError as refusal:
        answer = refusal
    assert answer.status == status
    url = f"ws://127.0.0.1:{server.port}/media"
    page = answer.read().decode()
    assert f"Twilio should connect to:\n\n    {url}\n" in page
    assert f"http://127.0.0.1:{server.port}/calls" in page  # the operator's pages
    visit = server.lines(f"HTTP GET {path}")[-1]
    assert visit.endswith(f"this server takes Twilio's WebSocket at {url}")


def test_through_ngrok_the_page_gives_the_wss_url(server):
    through_ngrok = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/",
        headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "abc123.ngrok.app"},
    )
    page = urllib.request.urlopen(through_ngrok, timeout=5).read().decode()
    assert "    wss://abc123.ngrok.app/media\n" in page


def test_tls_sent_to_the_plain_port_is_recognised(server):
    raw = socket.create_connection(("127.0.0.1", server.port))
    port = raw.getsockname()[1]
    with pytest.raises(OSError):  # the server closes: the TLS handshake fails
        ssl.create_default_context().wrap_socket(raw, server_hostname="localhost")
    server.wait_for(rf"WARNING \[127.0.0.1:{port}\] bad HTTP request: this looks like TLS")


def test_shutdown_summarises_open_streams_and_exits_cleanly(start_server):
    running = start_server()
    calls = [TwilioCall(), TwilioCall(tracks=("inbound", "outbound"))]
    sockets = []
    for call in calls:
        ws = running.connect()
        play(ws, call, media_per_track=4)
        sockets.append(ws)
    for call in calls:
        running.wait_for(rf"\[{call.tag}\] start:")
    time.sleep(0.2)  # let the server read the media sent after start

    started = time.monotonic()
    assert running.stop(signal.SIGINT) == 0  # Ctrl-C: no drain
    assert time.monotonic() - started < 5
    for call in calls:
        summary = running.summary(call, timeout=0)
        assert "ended by server shutdown" in summary
        assert "inbound 4 messages" in summary
    # The clients were told the server is going away.
    opcode, payload = sockets[0].recv_data(control_frame=True)
    assert (opcode, int.from_bytes(payload[:2], "big")) == (websocket.ABNF.OPCODE_CLOSE, 1001)


def start_failing(**environ):
    """Run `python app.py` expecting it to stop at startup; return its stderr."""
    result = subprocess.run(
        [sys.executable, "app.py"],
        cwd=REPO,
        env={**os.environ, "HOST": "127.0.0.1", **environ},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    return result.stderr


def test_a_bad_setting_stops_the_server_with_a_clear_message(tmp_path):
    assert "configuration error: PORT must be a number" in start_failing(PORT="fifty")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert (
        f"configuration error: RECORDINGS_DIR '{blocker}/recordings' is not a directory this "
        "server can write to (Not a directory)"
    ) in start_failing(RECORDINGS_DIR=str(blocker / "recordings"))


def test_a_port_in_use_or_an_unknown_host_is_one_line(server):
    assert start_failing(PORT=str(server.port)).strip() == (
        f"cannot listen on 127.0.0.1:{server.port}: Address already in use"
    )
    unknown = start_failing(HOST="no-such-host.invalid").strip()
    assert unknown.startswith("cannot listen on no-such-host.invalid:5000: ")
    assert "(" not in unknown  # the reason alone, e.g. "Name or service not known"


def test_startup_lines_show_whatever_the_log_level(start_server, tmp_path):
    quiet = start_server(LOG_LEVEL="WARNING", RECORDINGS_DIR=str(tmp_path / "new" / "dir"))
    assert quiet.port > 0  # the chosen port is on the console
    assert quiet.lines(f"INFO    recording every stream's tracks to {tmp_path}/new/dir")
    assert (tmp_path / "new" / "dir").is_dir()


def test_connected_message_before_start_names_the_client(server):
    ws = server.connect()
    client = f"127.0.0.1:{ws.sock.getsockname()[1]}"
    ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
    ws.close()
    server.wait_for(rf"\[{client}\] summary: stream never started")
    assert server.lines(f"[{client}] connected: protocol Call 1.0.0")


def test_a_stream_that_goes_silent_is_ended(start_server):
    running = start_server(IDLE_TIMEOUT="1")
    call = TwilioCall()
    ws = running.connect()
    play(ws, call, media_per_track=3)  # and then nothing
    started = time.monotonic()
    opcode, payload = ws.recv_data(control_frame=True)
    assert (opcode, int.from_bytes(payload[:2], "big")) == (websocket.ABNF.OPCODE_CLOSE, 1008)
    assert 0.9 < time.monotonic() - started < 2
    assert "ended by idle timeout" in running.summary(call)
    assert running.lines(f"[{call.tag}] connection problem: no message for 1 s; closing with 1008")


def test_running_out_of_file_descriptors_is_one_warning_a_second(start_server):
    def few_files():
        resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))

    running = start_server(preexec_fn=few_files)
    clients = [socket.create_connection(("127.0.0.1", running.port)) for _ in range(60)]
    started = time.monotonic()
    time.sleep(2.5)
    warnings = running.lines("cannot accept connections: Too many open files")
    assert 1 <= len(warnings) <= time.monotonic() - started + 1
    assert "(the limit is 40: raise it with ulimit -n)" in warnings[0]
    for client in clients:
        client.close()
    call = TwilioCall()  # once descriptors are free again, calls get in
    ws = running.connect()
    play(ws, call)
    ws.send(call.stop())
    ws.close()
    assert "ended by stop" in running.summary(call)


def test_frames_sent_with_the_handshake_in_one_write_are_read(server):
    call = TwilioCall()
    handshake = (
        b"GET /media HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    frames = [call.connected(), call.start(), *(call.media() for _ in range(5)), call.stop()]
    client = socket.create_connection(("127.0.0.1", server.port))
    client.sendall(handshake + b"".join(encode_frame(frame.encode()) for frame in frames))
    client.settimeout(5)
    assert client.recv(1024).startswith(b"HTTP/1.1 101")
    client.close()
    assert "received: inbound 5 messages" in server.summary(call)
