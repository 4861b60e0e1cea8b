"""Handlers: the dispatch on its own (no sockets), then through the real server."""

import logging
import signal
import time

import gevent
import pytest
from conftest import play, whole_call
from gevent.event import Event

from mediastream import handlers as handlers_module
from mediastream.config import Config
from mediastream.handlers import Handler, StreamHandlers
from mediastream.messages import parse_message
from mediastream.simulator import TwilioCall, encode_frame
from mediastream.stream import MediaStream

# The dispatch on its own -----------------------------------------------------------


class Notes(Handler):
    """Notes each event it gets in `notes` (a list shared by the test)."""

    notes = None

    def start(self, stream, event):
        self.notes.append((type(self).__name__, "start"))

    def media(self, stream, chunk):
        self.notes.append((type(self).__name__, f"media {chunk.chunk}"))

    def dtmf(self, stream, event):
        self.notes.append((type(self).__name__, f"dtmf {event.digit}"))

    def end(self, stream, ended_by):
        self.notes.append((type(self).__name__, f"end: {ended_by}"))


class Inline(Notes):
    may_block = False


class Queued(Notes):
    pass


def feed(handlers, call, media=3):
    """A call's start, media and a key, as the receive loop would pass them."""
    handlers.start(parse_message(call.start()))
    for _ in range(media):
        chunk = parse_message(call.media())
        handlers.stream.add_media(chunk)
        handlers.media(chunk)
    handlers.dtmf(parse_message(call.dtmf("5")))


def make(*factories):
    stream = MediaStream("127.0.0.1:1")
    return StreamHandlers(stream, factories, Config())


def test_each_handler_gets_every_event_in_order_and_end_last_first():
    notes = []
    Inline.notes = Queued.notes = notes

    class Second(Inline):
        pass

    handlers = make(Inline, Second, Queued)
    feed(handlers, TwilioCall())
    handlers.end("stop")
    events = ["start", "media 1", "media 2", "media 3", "dtmf 5"]
    for name in ("Inline", "Second", "Queued"):
        assert [event for who, event in notes if who == name] == [*events, "end: stop"]
    # Ends: the queued handler first (waited for), then the others last-first.
    assert [who for who, event in notes if event.startswith("end")] == [
        "Queued",
        "Second",
        "Inline",
    ]


@pytest.mark.parametrize("kind", [Inline, Queued])
def test_a_raising_handler_is_logged_once_and_gets_only_its_end(kind, caplog):
    notes = []
    kind.notes = notes

    class Failing(kind):
        def media(self, stream, chunk):
            super().media(stream, chunk)
            if chunk.chunk == 2:
                raise ValueError("chunk 2 is cursed")

    class Other(Inline):
        pass

    Other.notes = notes
    handlers = make(Failing, Other)
    with caplog.at_level(logging.ERROR):
        feed(handlers, TwilioCall(), media=4)
        gevent.sleep(0.01)  # a queued handler fails before the stream ends...
        handlers.end("stop")  # ...and still gets its end()
    assert [event for who, event in notes if who == "Failing"] == [
        "start",
        "media 1",
        "media 2",
        "end: stop",
    ]
    assert [event for who, event in notes if who == "Other"][-2:] == ["dtmf 5", "end: stop"]
    (record,) = caplog.records
    assert "handler Failing failed in media(); it gets no more events" in record.getMessage()
    assert record.exc_info[0] is ValueError  # the traceback is in the log line
    assert handlers.stream.handler_problems == {"Failing": "failed in media()"}


def test_a_handler_that_falls_behind_loses_media_not_order(caplog):
    release = Event()
    got = []

    class Stuck(Handler):
        max_queued = 10

        def media(self, stream, chunk):
            release.wait()
            got.append(f"media {chunk.chunk}")

        def dtmf(self, stream, event):
            got.append(f"dtmf {event.digit}")

    handlers = make(Stuck)
    with caplog.at_level(logging.WARNING):
        feed(handlers, TwilioCall(), media=1)  # start, media 1, dtmf
        gevent.sleep(0)  # media 1 is now being handled: stuck
        feed(handlers, TwilioCall(), media=30)
        release.set()
        handlers.end("stop")
    # 10 waiting: start, dtmf, 8 media; 22 media dropped; dtmf never dropped.
    assert got == ["media 1", "dtmf 5", *(f"media {n}" for n in range(1, 9)), "dtmf 5"]
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith("[127.0.0.1:1] handler Stuck is 10 events behind: dropping media")
    assert handlers.stream.handler_problems == {"Stuck": "22 events dropped (fell behind)"}


def test_the_end_waits_a_while_for_a_busy_handler_then_goes_on(monkeypatch, caplog):
    monkeypatch.setattr(handlers_module, "END_WAIT_SECONDS", 0.2)
    ended = []

    class Forever(Handler):
        def media(self, stream, chunk):
            gevent.sleep(60)

        def end(self, stream, ended_by):
            ended.append(ended_by)

    handlers = make(Forever)
    feed(handlers, TwilioCall(), media=5)
    started = time.monotonic()
    handlers.end("stop")
    assert time.monotonic() - started < 1
    assert ended == []  # still in media(); its end() comes when that returns
    assert "still in media() 0.2 s after the stream ended" in caplog.text
    # media 2-5 and the dtmf were still waiting: dropped.
    assert handlers.stream.handler_problems == {"Forever": "5 events dropped (fell behind)"}


def test_a_handler_that_cannot_be_made_is_left_out(caplog):
    def unmakeable(config):
        raise RuntimeError("no")

    notes = []
    Inline.notes = notes
    handlers = make(unmakeable, Inline)
    feed(handlers, TwilioCall(), media=1)
    handlers.end("stop")
    assert notes[-1] == ("Inline", "end: stop")
    assert "handler unmakeable could not be made" in caplog.text
    assert handlers.stream.handler_problems == {"unmakeable": "failed in __init__()"}


# Through the real server ----------------------------------------------------------


@pytest.fixture
def start_with(start_server):
    """Start `python tests/handler_app.py NAMES...`: the server with test handlers added."""

    def start(*names, **environ):
        return start_server(command=("tests/handler_app.py", *names), **environ)

    return start


def test_a_users_handler_gets_the_call_in_order_and_its_end(start_with):
    server = start_with("Recorder")
    call = TwilioCall()
    ws = server.connect()
    play(ws, call, media_per_track=3)
    ws.send(call.dtmf("4"))
    ws.send(call.mark("hello"))
    ws.send(call.stop())
    ws.close()
    server.summary(call)
    assert [line.split("Recorder: ")[1] for line in server.lines("Recorder:")] == [
        "start",
        "media inbound 1",
        "media inbound 2",
        "media inbound 3",
        "dtmf 4",
        "mark hello",
        "stop",
        "end, ended by stop",
    ]
    # The console's summary comes after every other handler has ended.
    assert "summary:" in server.lines(f"[{call.tag}]")[-1]


def test_a_slow_handler_never_slows_the_call_or_loses_its_end(start_with):
    server = start_with("Sleepy", START_TIMEOUT="1")
    calls = {how: TwilioCall() for how in ("stop", "disconnect", "client close (1000)")}
    for how, call in calls.items():
        ws = server.connect()
        play(ws, call, media_per_track=100)  # 40 s of work for Sleepy, sent at once
        if how == "stop":
            ws.send(call.stop())
        if how == "disconnect":
            ws.sock.close()
        else:
            ws.close(status=1000)
    for how, call in calls.items():
        summary = server.summary(call, timeout=5)
        assert f"ended by {how}" in summary
        assert "inbound 100 messages" in summary  # the socket was read to the end meanwhile
        assert "handler problem: Sleepy " in summary and "events dropped" in summary
    # A connection that never starts is still closed at its deadline, with 1008.
    ws = server.connect()
    ws.send(TwilioCall().connected())
    opcode, payload = ws.recv_data(control_frame=True)
    assert int.from_bytes(payload[:2], "big") == 1008
    server.wait_for(r"summary: stream never started, ended by no start message")


def test_a_handler_that_blocks_on_the_reading_greenlet_breaks_no_deadline(start_with):
    server = start_with("SleepyInline", START_TIMEOUT="1")
    ws = server.connect()
    for _ in range(5):
        ws.send(TwilioCall().connected())  # 2 s of sleeping, past the deadline
    opcode, payload = ws.recv_data(control_frame=True)
    assert int.from_bytes(payload[:2], "big") == 1008
    server.wait_for(r"summary: stream never started, ended by no start message")
    assert not server.lines("handler problem")


@pytest.mark.parametrize("name", ["Sleepy", "SleepyInline"])
def test_shutdown_ends_streams_whose_handler_is_busy(start_with, name):
    server = start_with(name, "Recorder")
    calls = [TwilioCall(), TwilioCall()]
    clients = [server.connect() for _ in calls]  # kept open until the server goes
    for call, ws in zip(calls, clients, strict=True):
        play(ws, call, media_per_track=20)
        server.wait_for(rf"\[{call.tag}\] start:")
    time.sleep(0.5)
    started = time.monotonic()
    assert server.stop(signal.SIGINT) == 0
    assert time.monotonic() - started < 5
    for call in calls:
        assert "ended by server shutdown" in server.summary(call, timeout=0)
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("name", ["Broken", "BrokenInline"])
def test_a_broken_handler_breaks_nothing_else(start_with, name):
    server = start_with(name, "Recorder")
    broken, other = TwilioCall(), TwilioCall()
    ws_broken, ws_other = server.connect(), server.connect()
    play(ws_broken, broken, media_per_track=5)
    play(ws_other, other, media_per_track=2)  # not to chunk 3, where Broken fails on every stream
    ws_broken.send(broken.stop())
    ws_broken.close()
    summary = server.summary(broken)
    assert "ended by stop" in summary and "inbound 5 messages" in summary
    assert f"handler problem: {name} failed in media()" in summary
    (error,) = server.lines("ERROR")
    assert f"[{broken.tag}] handler {name} failed in media(); it gets no more" in error
    assert server.lines(f"[{broken.tag}] Broken: end, ended by stop")
    assert len(server.lines(f"[{broken.tag}] Recorder: media")) == 5  # the others go on
    # Another call on the same server is untouched.
    ws_other.send(other.stop())
    ws_other.close()
    assert "handler problem" not in server.summary(other)
    server.expected_traceback("ValueError: chunk 3 is cursed")


def test_a_timer_callback_that_raises_is_one_handler_problem_and_the_call_goes_on(start_with):
    server = start_with("BrokenTimer", "Recorder")
    call = TwilioCall()
    ws = server.connect()
    play(ws, call, media_per_track=5)
    time.sleep(1.0)  # five ticks' time: the second raises, the others never come
    ws.send(call.media())
    ws.send(call.stop())
    ws.close()
    summary = server.summary(call)
    assert "BrokenTimer: tick 1" in summary and "BrokenTimer: tick 3" not in summary
    assert "BrokenTimer: end after 2 ticks" in summary
    assert "handler problem: BrokenTimer failed in its timer (_tick)" in summary
    (error,) = server.lines("ERROR")
    assert f"[{call.tag}] handler BrokenTimer failed in its timer (_tick every 0.2 s)" in error
    assert len(server.lines(f"[{call.tag}] Recorder: media")) == 6  # the call went on
    server.expected_traceback("ValueError: the second tick is cursed")


def test_a_handler_that_cannot_be_made_leaves_the_others_working(start_with):
    server = start_with("Unmakeable")
    call = TwilioCall()
    summary = whole_call(server, call, media_per_track=5)
    assert "inbound 5 messages" in summary
    assert "handler problem: Unmakeable failed in __init__()" in summary
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(10)
    server.log_path.write_text(server.log().replace("Traceback", "(expected traceback)"))


def test_a_cut_connection_still_ends_every_handler(start_with):
    server = start_with("Sleepy")
    call = TwilioCall()
    ws = server.connect()
    play(ws, call, media_per_track=2)
    ws.sock.sendall(encode_frame(call.media().encode())[:30])
    ws.sock.close()
    assert "ended by disconnect" in server.summary(call)
    server.wait_for(rf"\[{call.tag}\] Recorder: end, ended by disconnect")


def test_a_handler_that_steps_aside_at_start_gets_only_its_end():
    notes = []

    class Picky(Inline):
        def start(self, stream, event):
            super().start(stream, event)
            self.active = False  # nothing to do with this stream

    Picky.notes = Inline.notes = notes
    handlers = make(Picky, Inline)
    feed(handlers, TwilioCall())
    handlers.end("stop")
    assert [event for who, event in notes if who == "Picky"] == ["start", "end: stop"]
    assert len([event for who, event in notes if who == "Inline"]) == 6  # all of them
