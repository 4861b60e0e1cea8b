"""Talking back on a bidirectional stream: audio, marks, clear, echo; refused on one-way."""

import base64
import json
import time

import gevent
import pytest
import websocket
from conftest import FIXTURES, play

from mediastream import g711
from mediastream.simulator import (
    Plan,
    TwilioCall,
    TwilioSide,
    mulaw_chunks,
    play_call,
    read_wav,
    tone,
)
from mediastream.talkback import greeting_mulaw


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


# The simulator as Twilio ---------------------------------------------------------------


class Sent(list):
    """What TwilioSide sends back to the server (marks), with when."""

    def __call__(self, text):
        self.append((time.monotonic(), json.loads(text)))


def twilio_side(bidirectional=True):
    call = TwilioCall(parameters={"mode": "x"})
    sent = Sent()
    return TwilioSide(call, bidirectional, sent), call, sent


def server_says(side, call, event, **body):
    message = {"event": event, "streamSid": call.stream_sid, **body}
    side._receive(websocket.ABNF.OPCODE_TEXT, json.dumps(message).encode())


def media(audio):
    return {"media": {"payload": base64.b64encode(audio).decode()}}


def test_a_mark_comes_back_once_the_audio_before_it_has_played():
    side, call, sent = twilio_side()
    server_says(side, call, "media", **media(bytes(160 * 10)))  # 200 ms
    server_says(side, call, "mark", mark={"name": "end"})
    started = time.monotonic()
    player = gevent.spawn(side._play)
    gevent.sleep(0.3)
    player.kill()
    ((at, mark),) = sent
    assert mark["event"] == "mark" and mark["mark"]["name"] == "end"
    assert 0.19 <= at - started <= 0.25  # after ten 20 ms chunks played, by its clock
    assert bytes(side.heard[: 160 * 10]) == bytes(160 * 10)


def test_clear_drops_the_buffer_and_returns_pending_marks_at_once():
    side, call, sent = twilio_side()
    server_says(side, call, "media", **media(b"\x01" * 160 * 100))  # 2 s buffered
    server_says(side, call, "mark", mark={"name": "a"})
    server_says(side, call, "media", **media(b"\x02" * 160 * 100))
    server_says(side, call, "mark", mark={"name": "b"})
    player = gevent.spawn(side._play)
    gevent.sleep(0.1)
    server_says(side, call, "clear")
    assert [message["mark"]["name"] for _, message in sent] == ["a", "b"]  # at once
    gevent.sleep(0.1)
    player.kill()
    assert b"\x01" in side.heard and b"\x02" not in side.heard
    assert side.heard.endswith(bytes([g711.SILENCE]) * 160 * 3)  # playback stopped


@pytest.mark.parametrize(
    "frame, error",
    [
        ("not json", "not JSON (error 31951)"),
        ('{"event": "play"}', "unknown event 'play' (error 31951)"),
        ('{"event": "clear"}', "clear with a missing or wrong streamSid (error 31951)"),
        ("MEDIA_BAD_BASE64", "media without a base64 payload (error 31951)"),
        (b"\x00\x01", "a binary frame (error 31950)"),
    ],
)
def test_what_twilio_rejects_is_noted_with_its_error(frame, error):
    side, call, _ = twilio_side()
    if frame == "MEDIA_BAD_BASE64":
        frame = json.dumps(
            {"event": "media", "streamSid": call.stream_sid, "media": {"payload": "%%"}}
        )
    if isinstance(frame, bytes):
        side._receive(websocket.ABNF.OPCODE_BINARY, frame)
    else:
        side._receive(websocket.ABNF.OPCODE_TEXT, frame.encode())
    assert side.rejections == [f"Twilio would reject {error}"]
    one_way, call, _ = twilio_side(bidirectional=False)
    server_says(one_way, call, "clear")
    assert one_way.rejections == ["Twilio would reject a message on a one-way stream (error 31924)"]


def heard_chunks(heard):
    """Where the 20 ms chunks the caller heard something in start (bytes)."""
    silence = bytes([g711.SILENCE]) * 160
    return [160 * n for n in range(len(heard) // 160) if heard[n * 160 : (n + 1) * 160] != silence]


def test_fifty_echo_calls_each_hear_only_themselves(server):
    def own_audio(n):
        return [bytes([n, k]) * 80 for k in range(50)]  # 1 s, unlike any other call's

    plans = [
        Plan(
            url=server.url + "/media",
            chunks={"inbound": own_audio(n)},
            parameters={"mode": "echo"},
            linger=0.3,
        )
        for n in range(50)
    ]
    results = [greenlet.get() for greenlet in [gevent.spawn(play_call, plan) for plan in plans]]
    for n, result in enumerate(results):
        assert result.failure is None and result.rejections == []
        # Silence where its buffer ran dry (as Twilio's would, for a late chunk), and around.
        heard = [result.heard[i : i + 160] for i in heard_chunks(result.heard)]
        assert heard == own_audio(n)  # exact, in order, only its own
        assert len(result.latencies) == 50


def prompt_call(server, caller_pcm):
    """A mode=prompt call, the caller saying `caller_pcm`: (what they heard, the console)."""
    seconds = len(caller_pcm) / 16000
    plan = Plan(
        url=server.url + "/media",
        chunks={"inbound": mulaw_chunks(caller_pcm, seconds)},
        parameters={"mode": "prompt"},
        linger=0.3,
    )
    result = play_call(plan)
    assert result.failure is None and result.rejections == []
    tag = result.stream_sid[-8:]
    server.wait_for(rf"\[{tag}\] summary: ")
    return result.heard, "\n".join(server.lines(f"[{tag}]"))


def test_a_caller_who_talks_over_the_prompt_stops_it(server):
    caller = read_wav(FIXTURES / "sentences.wav")[: 2 * 8000 * 3]  # speaks from 0.5 s
    heard, console = prompt_call(server, caller)
    assert "barge-in: the caller spoke 0.50 s into the prompt; cleared" in console
    assert "mark: prompt-end cleared before it played" in console
    chunks = [start // 160 for start in heard_chunks(heard)]
    assert chunks and chunks[0] <= 5  # the prompt began at once
    # ...and stopped within 0.2 s of the caller's first word (chunk 25, at 0.5 s).
    assert chunks[-1] < 25 + 10
    assert greeting_mulaw()[:1600] in heard  # what they heard was the greeting


def test_a_caller_who_listens_hears_the_whole_prompt(server):
    heard, console = prompt_call(server, bytes(2 * 8000 * 6))  # 6 s of silence
    assert "barge-in" not in console
    assert "mark: prompt-end played" in console
    chunks = heard_chunks(heard)
    assert len(chunks) >= len(greeting_mulaw()) // 160 - 2  # all of it (bar silent chunks)
