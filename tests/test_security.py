"""Only Twilio gets in: signed handshakes, size limits, idle connections, memory."""

import base64
import hashlib
import hmac
import os
import socket
import subprocess
import sys
import time

import pytest
import websocket
from conftest import REPO

from mediastream.security import SignatureCheck
from mediastream.simulator import TwilioCall, encode_frame

TOKEN = "12345678901234567890123456789012"
PUBLIC_URL = "wss://abc123.ngrok.app"


def twilio_signature(url, token=TOKEN):
    """X-Twilio-Signature as Twilio documents it: base64(HMAC-SHA1(auth token, URL))."""
    digest = hmac.new(token.encode(), url.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A server that requires signatures, with small limits so abuse is quick to try."""
    from conftest import ServerProcess

    running = ServerProcess(
        tmp_path_factory.mktemp("guarded") / "console.log",
        TWILIO_AUTH_TOKEN=TOKEN,
        PUBLIC_URL=PUBLIC_URL,
        START_TIMEOUT="1",
    )
    yield running
    running.stop()
    assert "Traceback" not in running.log()


def stream_a_call(server, **options):
    call = TwilioCall()
    ws = server.connect(**options)
    ws.send(call.connected())
    ws.send(call.start())
    for _ in range(5):
        ws.send(call.media())
    ws.send(call.stop())
    ws.close()
    return server.summary(call)


def refused(server, **options):
    """Try a handshake; return its HTTP status and the console lines it added."""
    before = len(server.log().splitlines())
    with pytest.raises(websocket.WebSocketBadStatusException) as refusal:
        server.connect(**options)
    server.wait_for("handshake refused")
    time.sleep(0.1)  # anything else it would log comes now
    return refusal.value.status_code, server.log().splitlines()[before:]


@pytest.mark.parametrize(
    "headers, reason",
    [
        ({}, "no X-Twilio-Signature header"),
        ({"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"}, "does not match"),
        ({"X-Twilio-Signature": twilio_signature(PUBLIC_URL + "/other")}, "does not match"),
        ({"X-Twilio-Signature": twilio_signature(PUBLIC_URL + "/media", "x" * 32)}, "not match"),
        ({"X-Twilio-Signature": twilio_signature("wss://evil.example/media")}, "does not match"),
    ],
    ids=["unsigned", "garbage", "other-path", "other-token", "other-host"],
)
def test_handshakes_not_signed_for_this_url_are_refused_with_one_line(guarded, headers, reason):
    status, lines = refused(guarded, header=headers)
    assert status == 403
    assert len(lines) == 1, lines
    assert "WARNING [127.0.0.1:" in lines[0]
    assert "WebSocket handshake refused (403 Forbidden)" in lines[0]
    assert reason in lines[0]
    if reason == "does not match":
        assert f"{PUBLIC_URL}/media (from PUBLIC_URL)" in lines[0]


def test_a_handshake_signed_for_the_public_url_streams(guarded):
    signature = twilio_signature(PUBLIC_URL + "/media")
    summary = stream_a_call(guarded, header={"X-Twilio-Signature": signature})
    assert "ended by stop" in summary
    assert "inbound 5 messages" in summary


def test_the_query_string_is_part_of_the_signed_url(guarded):
    signature = twilio_signature(PUBLIC_URL + "/media?customer=42")
    call = TwilioCall()
    ws = websocket.create_connection(
        guarded.url + "/media?customer=42", header={"X-Twilio-Signature": signature}
    )
    ws.send(call.start())
    ws.close()
    assert "ended by client close" in guarded.summary(call)


def test_without_public_url_the_url_comes_from_the_proxy_headers(start_server):
    running = start_server(TWILIO_AUTH_TOKEN=TOKEN)
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "xyz.ngrok.app"}
    signature = twilio_signature("wss://xyz.ngrok.app/media")
    summary = stream_a_call(running, header={**headers, "X-Twilio-Signature": signature})
    assert "ended by stop" in summary

    wrong = twilio_signature("wss://elsewhere.ngrok.app/media")
    status, lines = refused(running, header={**headers, "X-Twilio-Signature": wrong})
    assert status == 403
    assert (
        "does not match wss://xyz.ngrok.app/media (from the request's Host; set PUBLIC_URL"
        in (lines[0])
    )


def test_without_a_token_anyone_gets_in_after_a_startup_warning(server):
    assert server.lines("WARNING TWILIO_AUTH_TOKEN is not set: handshakes are not checked")
    assert "ended by stop" in stream_a_call(server)


def test_signed_url_from_headers_and_from_public_url():
    environ = {
        "PATH_INFO": "/media",
        "QUERY_STRING": "a=1",
        "HTTP_HOST": "localhost:5000",
        "HTTP_X_FORWARDED_PROTO": "https, http",
        "HTTP_X_FORWARDED_HOST": "abc.ngrok.app",
    }
    assert SignatureCheck(TOKEN).signed_url(environ) == "wss://abc.ngrok.app/media?a=1"
    assert SignatureCheck(TOKEN, PUBLIC_URL).signed_url(environ) == PUBLIC_URL + "/media?a=1"
    direct = {"PATH_INFO": "/media", "HTTP_HOST": "127.0.0.1:5000"}
    assert SignatureCheck(TOKEN).signed_url(direct) == "ws://127.0.0.1:5000/media"


def peak_memory_kib(pid):
    """The process's peak resident memory (VmHWM), as the kernel counts it."""
    with open(f"/proc/{pid}/status") as status:
        peak = next(line for line in status if line.startswith("VmHWM:"))
    return int(peak.split()[1])


def signed(server):
    """A connection with a valid signature, ready for abuse."""
    return server.connect(header={"X-Twilio-Signature": twilio_signature(PUBLIC_URL + "/media")})


def close_code(ws):
    opcode, payload = ws.recv_data(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    return int.from_bytes(payload[:2], "big")


def test_a_header_announcing_one_tebibyte_is_refused_at_no_cost(guarded):
    call = TwilioCall()
    ws = signed(guarded)
    ws.send(call.start())
    ws.sock.sendall(encode_frame(length=1 << 40))
    assert close_code(ws) == 1009
    assert "ended by message too big" in guarded.summary(call)
    assert guarded.lines(
        f"WARNING [{call.tag}] connection problem: message of more than 65536 bytes "
        f"({1 << 40} announced so far); closing with 1009"
    )


def test_a_two_mebibyte_message_is_refused(guarded):
    call = TwilioCall()
    ws = signed(guarded)
    ws.send(call.start())
    try:
        ws.send("x" * (2 << 20))
    except OSError:
        pass  # the server may close before the client has written it all
    assert "ended by message too big" in guarded.summary(call)
    assert guarded.lines(f"[{call.tag}] connection problem: message of more than 65536 bytes")


def test_fragments_adding_up_past_the_limit_are_refused(guarded):
    call = TwilioCall()
    ws = signed(guarded)
    ws.send(call.start())
    piece = b"x" * 30_000
    ws.sock.sendall(encode_frame(piece, opcode=0x1, fin=False))
    ws.sock.sendall(encode_frame(piece, opcode=0x0, fin=False))
    ws.sock.sendall(encode_frame(length=30_000, opcode=0x0, fin=True))  # header only: never read
    assert close_code(ws) == 1009
    assert "ended by message too big" in guarded.summary(call)
    problem = "connection problem: message of more than 65536 bytes (90000 announced"
    assert guarded.lines(f"[{call.tag}] {problem}")


def test_a_connection_that_never_sends_start_is_closed(guarded):
    ws = signed(guarded)
    client = f"127.0.0.1:{ws.sock.getsockname()[1]}"
    started = time.monotonic()
    assert close_code(ws) == 1008
    assert time.monotonic() - started < 5
    summary = guarded.wait_for(rf"\[{client}\] summary: .*").group(0)
    assert "ended by no start message" in summary
    assert guarded.lines(f"[{client}] connection problem: no start message within 1 s")


def test_after_the_abuse_memory_is_small_and_a_signed_call_streams(guarded):
    for _ in range(20):
        ws = signed(guarded)
        ws.sock.sendall(encode_frame(length=1 << 40))
        close_code(ws)
        ws = signed(guarded)
        try:
            ws.send("y" * (2 << 20))
        except OSError:
            pass
    peak_kib = peak_memory_kib(guarded.process.pid)
    print(f"server peak memory after abuse: {peak_kib / 1024:.1f} MiB")
    assert peak_kib < 100 * 1024
    signature = twilio_signature(PUBLIC_URL + "/media")
    assert "inbound 5 messages" in stream_a_call(guarded, header={"X-Twilio-Signature": signature})


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("MAX_MESSAGE_BYTES", "64k", "MAX_MESSAGE_BYTES must be a positive number, not '64k'"),
        ("MAX_MESSAGE_BYTES", "0", "MAX_MESSAGE_BYTES must be a positive number"),
        ("START_TIMEOUT", "soon", "START_TIMEOUT must be a positive number"),
        ("PUBLIC_URL", "https://abc.ngrok.app/media", "PUBLIC_URL must be a scheme and host"),
    ],
)
def test_bad_security_settings_stop_the_server_with_a_clear_message(name, value, message):
    result = subprocess.run(
        [sys.executable, "app.py"],
        cwd=REPO,
        env={**os.environ, name: value},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert f"configuration error: {message}" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_a_connection_that_never_finishes_its_handshake_is_closed(guarded):
    silent = socket.create_connection(("127.0.0.1", guarded.port))
    slow = socket.create_connection(("127.0.0.1", guarded.port))
    slow.sendall(b"GET /media HTTP/1.1\r\nHost: x\r\n")  # and never the rest
    started = time.monotonic()
    for client in (silent, slow):
        client.settimeout(10)
        assert client.recv(1024).startswith(b"HTTP/1.1 408 Request Timeout")
        assert client.recv(1024) == b""  # and closed
    assert time.monotonic() - started < 5
    port = slow.getsockname()[1]
    guarded.wait_for(
        rf"WARNING \[127.0.0.1:{port}\] bad HTTP request: request not received within 1 s"
    )
    # The silent one is what a browser's spare connection looks like: normal, no warning.
    assert f"[127.0.0.1:{silent.getsockname()[1]}]" not in guarded.log()
    assert "Traceback" not in guarded.log()


def test_a_handshake_trickled_a_byte_at_a_time_is_cut_at_the_deadline(guarded):
    handshake = b"GET /media HTTP/1.1\r\nHost: x\r\n" + b"X-Padding: " + b"p" * 100
    clients = [socket.create_connection(("127.0.0.1", guarded.port)) for _ in range(20)]
    started = time.monotonic()
    closed = set()
    for byte in handshake:  # a byte every 0.1 s to each: each byte used to reset a timer
        for n, client in enumerate(clients):
            if n in closed:
                continue
            try:
                client.sendall(bytes([byte]))
            except OSError:
                closed.add(n)
        if len(closed) == len(clients) or time.monotonic() - started > 5:
            break
        time.sleep(0.1)
    for client in clients:
        client.settimeout(5)
        assert client.recv(1024).startswith(b"HTTP/1.1 408")
    assert time.monotonic() - started < 3  # START_TIMEOUT is 1 s, from the first byte
