"""Talking back on a bidirectional stream: audio, marks, clear, echo; refused on one-way."""

import base64
import json

import pytest
import websocket
from conftest import play

from mediastream import g711
from mediastream.simulator import TwilioCall, tone


@pytest.fixture(scope="module")
def talker(tmp_path_factory):
    """The server with a test handler that talks back (tests/handler_app.py Talker)."""
    from conftest import ServerProcess

    running = ServerProcess(
        tmp_path_factory.mktemp("talker") / "console.log",
        command=("tests/handler_app.py", "Talker"),
    )
    yield running
    running.stop()
    assert "Traceback" not in running.log()


def received(ws, count):
    """The next `count` messages the server sends, decoded."""
    ws.settimeout(5)
    return [json.loads(ws.recv()) for _ in range(count)]


def test_audio_marks_and_clear_reach_twilio_and_marks_say_if_they_played(talker):
    call = TwilioCall(parameters={"mode": "talker"})
    ws = talker.connect()
    play(ws, call, media_per_track=2)
    greeting = received(ws, 6)  # 0.1 s: five 20 ms chunks, then the mark
    assert [message["event"] for message in greeting] == ["media"] * 5 + ["mark"]
    assert {message["streamSid"] for message in greeting} == {call.stream_sid}
    audio = b"".join(base64.b64decode(m["media"]["payload"]) for m in greeting[:5])
    assert audio == g711.encode(tone(0.1))
    assert greeting[5]["mark"] == {"name": "greeting"}
    ws.send(call.mark("greeting"))  # Twilio: played
    ws.send(call.dtmf("1"))
    second = received(ws, 7)
    assert [message["event"] for message in second] == ["media"] * 5 + ["mark", "clear"]
    ws.send(call.mark("second"))  # Twilio echoes the cleared mark at once
    ws.send(call.stop())
    ws.close()
    lines = talker.summary(call)
    assert (
        f"start: stream {call.stream_sid} from" in lines and "(bidirectional, mode talker)" in lines
    )
    assert "mark: greeting played" in lines
    assert "mark: second cleared before it played" in lines
    assert "sent back: 0.2 s of audio; marks: 2 sent, 1 played, 1 cleared; 1 clear" in lines


def test_on_a_one_way_stream_nothing_is_sent(talker):
    call = TwilioCall()  # no mode: a <Start><Stream>, one way
    ws = talker.connect()
    play(ws, call, media_per_track=2)
    ws.send(call.dtmf("1"))
    ws.send(call.stop())
    ws.settimeout(1)
    with pytest.raises(websocket.WebSocketTimeoutException):  # nothing comes back
        ws.recv()
    ws.close()
    lines = talker.summary(call)
    assert "(one-way)" in lines and "sent back" not in lines
    (refusal,) = talker.lines(f"[{call.tag}] not sent:")  # one line, however many sends
    assert "audio on a one-way stream (Twilio would reject it: error 31924)" in refusal


def test_echo_returns_the_callers_audio_exactly_and_in_order(server):
    call = TwilioCall(parameters={"mode": "echo"})
    chunks = [bytes([n]) * 160 for n in range(40)]  # each chunk different
    ws = server.connect()
    play(ws, call, media_per_track=0)
    for chunk in chunks:
        ws.send(call.media("inbound", chunk))
    echoed = received(ws, len(chunks))
    assert [base64.b64decode(m["media"]["payload"]) for m in echoed] == chunks
    ws.send(call.stop())
    ws.close()
    assert "sent back: 0.8 s of audio" in server.summary(call)
