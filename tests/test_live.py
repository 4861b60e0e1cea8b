"""The live calls page's model (browser/live.py) and the softphone's credentials, fed
directly: no sockets, no browser."""

from array import array

from mediastream import g711
from mediastream.browser.live import (
    ENDED_KEPT,
    PENDING_MAX,
    QUIET_SECONDS,
    CallBoard,
    LiveCalls,
    level,
)
from mediastream.config import Config
from mediastream.console import audio_figures, start_figures, summary_figures
from mediastream.fleet import envelope
from mediastream.g711 import CHUNK_SAMPLES
from mediastream.messages import parse_message
from mediastream.security import CREDENTIAL_SECONDS, PageCredentials
from mediastream.simulator import TwilioCall, hum, mulaw_chunks, tone
from mediastream.stream import MediaStream
from mediastream.transcript import Utterance
from tests.test_stream import FakeClock


class Live:
    """One stream followed by a LiveCalls handler on a board of its own."""

    def __init__(self, board, call):
        self.call = call
        self.stream = MediaStream("127.0.0.1:5000", clock=FakeClock())
        self.handler = LiveCalls(Config(), board)

    def start(self):
        event = parse_message(self.call.start())
        self.stream.start(event)
        self.handler.start(self.stream, event)
        return self

    def media(self, audio=b"\xff" * CHUNK_SAMPLES, track="inbound"):
        chunk = parse_message(self.call.media(track, audio))
        self.stream.add_media(chunk)
        self.handler.media(self.stream, chunk)

    def say(self, text, keywords=(), sentiment=None):
        said = Utterance("inbound", 1.0, 2.0, text, 0.5, list(keywords), sentiment)
        self.handler.utterance(self.stream, said)

    def end(self, ended_by="stop"):
        self.stream.ended()
        self.handler.end(self.stream, ended_by)


def test_a_watcher_hears_a_call_start_speak_and_end_at_once():
    board = CallBoard()
    watcher, snapshot = board.watch()
    assert snapshot == {"calls": []}
    live = Live(board, TwilioCall(parameters={"caller": "Ann"})).start()
    live.say("I want to cancel.", ["cancel"], -0.3)
    live.handler.dtmf(live.stream, parse_message(live.call.dtmf("4")))
    live.end()
    names = [name for name, _ in watcher.pending]
    assert names == ["call", "utterance", "end"]
    call, utterance, end = (body for _, body in watcher.pending)
    assert call["parameters"] == {"caller": "Ann"} and call["tag"] == live.call.tag
    assert utterance["line"]["keywords"] == ["cancel"]
    assert end["summary"]["ended_by"] == "stop"
    assert end["summary"]["keywords"] == {"cancel": 1}
    assert end["summary"]["tracks"]["inbound"]["sentiment"] == -0.3
    assert end["summary"]["keys"] == end["keys"] == "4"


def test_figures_go_out_once_per_update_however_many_messages_arrived():
    board = CallBoard()
    live = Live(board, TwilioCall()).start()
    watcher, _ = board.watch()
    assert board.updates(watcher) == []  # nothing changed since the snapshot
    for _ in range(50):
        live.media()
    updates = board.updates(watcher)
    assert len(updates) == 1
    assert updates[0]["tracks"]["inbound"]["seconds"] == 1.0
    assert board.updates(watcher) == []
    live.media()
    assert len(board.updates(watcher)) == 1


def test_the_meter_shows_the_last_chunks_peak():
    assert level(g711.encode(b"\x00\x00" * CHUNK_SAMPLES)) == 0.0
    assert level(g711.encode(tone(0.02) + b"\xff\x7f")) == 1.0  # one sample at full scale
    quiet, loud = (
        level(g711.encode(array("h", [peak] * CHUNK_SAMPLES).tobytes())) for peak in (300, 3000)
    )
    assert 0 < quiet < loud < 1
    assert round(60 * (loud - quiet)) == 20  # ten times the amplitude: 20 dB more
    board = CallBoard()
    live = Live(board, TwilioCall()).start()
    live.media(mulaw_chunks(hum(0.2, 120), 0.2)[5])
    watcher, snapshot = board.watch()
    assert snapshot["calls"][0]["tracks"]["inbound"]["level"] > 0.5


def test_a_watcher_of_one_stream_hears_only_that_stream():
    board = CallBoard()
    mine, other = TwilioCall(), TwilioCall()
    watcher, _ = board.watch(mine.stream_sid)
    Live(board, other).start().end()
    live = Live(board, mine).start()
    live.media()
    assert [body["id"] for _, body in watcher.pending] == [mine.stream_sid]
    assert [update["id"] for update in board.updates(watcher)] == [mine.stream_sid]


def test_a_watcher_too_far_behind_gets_a_snapshot_instead():
    board = CallBoard()
    live = Live(board, TwilioCall()).start()
    watcher, _ = board.watch()
    for number in range(PENDING_MAX + 10):
        live.say(f"line {number}")
    assert watcher.behind and not watcher.pending
    snapshot = board.snapshot(watcher)
    assert not watcher.behind
    assert len(snapshot["calls"][0]["lines"]) == 200  # LINES_KEPT: the last ones
    live.end()
    assert board.ended[0].summary["tracks"]["inbound"]["utterances"] == PENDING_MAX + 10


def test_ended_calls_are_kept_a_while_without_their_streams():
    board = CallBoard()
    for _ in range(ENDED_KEPT + 3):
        Live(board, TwilioCall()).start().end()
    assert not board.open and len(board.ended) == ENDED_KEPT
    assert all(panel.stream is None for panel in board.ended)
    _, snapshot = board.watch()
    assert all(call["summary"]["ended_by"] == "stop" for call in snapshot["calls"])


def test_a_stream_that_never_started_is_not_on_the_board():
    board = CallBoard()
    live = Live(board, TwilioCall())
    live.media()
    live.end("disconnect")
    assert not board.open and not board.ended


def test_a_page_credential_works_once_and_only_until_it_expires():
    now = [1000.0]
    credentials = PageCredentials("auth token", clock=lambda: now[0])
    credential = credentials.issue()
    assert credentials.redeem(credential) is None
    assert credentials.redeem(credential) == "was used already"
    late = credentials.issue()
    now[0] += CREDENTIAL_SECONDS + 1
    assert credentials.redeem(late) == "has expired"


def test_a_page_credential_is_checked_against_the_auth_token():
    issued = PageCredentials("one token").issue()
    assert PageCredentials("another token").redeem(issued) == "is not one this server issued"
    expires, nonce, mac = issued.split(".")
    forged = f"{int(expires) + 3600}.{nonce}.{mac}"
    assert PageCredentials("one token").redeem(forged) == "is not one this server issued"
    assert PageCredentials("one token").redeem("nonsense") == "is malformed"
    # Any process with the same token checks it (gunicorn's workers).
    assert PageCredentials("one token").redeem(issued) is None


# Another server's calls, from the fleet's entries (fleet.py) ------------------------------


class Remote(Live):
    """A stream of another server's: the entries its FleetEvents handler would write."""

    def __init__(self, board, call, server="alpha"):
        super().__init__(CallBoard(), call)  # its own server's board, not ours
        self.board = board
        self.server = server

    def tell(self, kind, fields):
        self.board.heard(kind, envelope(self.call.stream_sid, self.server, fields))

    def start(self):
        super().start()
        self.tell("start", start_figures(self.stream, parse_message(self.call.start())))
        return self

    def figures(self):
        self.tell("figures", audio_figures(self.stream))

    def end(self, ended_by="stop"):
        super().end(ended_by)
        self.tell("end", summary_figures(self.stream, ended_by))


def test_another_servers_call_is_on_the_page_from_its_entries():
    board = CallBoard()
    watcher, _ = board.watch()
    remote = Remote(board, TwilioCall(parameters={"caller": "Bo"})).start()
    for _ in range(50):
        remote.media()
    remote.figures()
    remote.tell("dtmf", {"digit": "7"})
    said = Utterance("inbound", 0.2, 0.9, "Cancel it.", 0.5, ["cancel"], -0.2)
    remote.tell("utterance", said.figures())
    [update] = board.updates(watcher)
    assert update["tracks"]["inbound"] == {
        "seconds": 1.0,
        "speaking": False,
        "talk": None,  # no speech activity in this test
        "level": 0.0,  # no meter for a call elsewhere
    }
    remote.end()
    names = [name for name, _ in watcher.pending]
    assert names == ["call", "utterance", "end"]
    call, utterance, end = (body for _, body in watcher.pending)
    assert call["server"] == "alpha" and call["parameters"] == {"caller": "Bo"}
    assert call["tag"] == remote.call.tag and call["declared_tracks"] == ["inbound"]
    assert utterance["line"]["text"] == "Cancel it." and utterance["line"]["keywords"] == ["cancel"]
    summary = end["summary"]
    assert summary["ended_by"] == "stop" and summary["keys"] == "7"
    assert summary["tracks"]["inbound"]["seconds"] == 1.0
    assert summary["tracks"]["inbound"]["utterances"] == 1
    assert summary["keywords"] == {"cancel": 1}
    assert not board.remote and board.ended[0].stream_sid == remote.call.stream_sid


def test_our_own_calls_coming_back_from_the_fleet_are_not_shown_twice():
    board = CallBoard()
    board.server = "bravo"
    watcher, _ = board.watch()
    ours = Live(board, TwilioCall()).start()
    echo = Remote(board, ours.call, server="bravo").start()  # what we wrote, read back
    echo.figures()
    ours.end()
    echo.end()
    assert [name for name, _ in watcher.pending] == ["call", "end"]
    assert watcher.pending[0][1]["server"] == "bravo"
    assert not board.remote and not board.ours  # its end was its last entry


def test_a_call_open_before_we_followed_the_fleet_shows_from_its_figures():
    board = CallBoard()
    remote = Remote(CallBoard(), TwilioCall()).start()  # its start was never read here
    remote.board = board
    remote.media()
    remote.tell("utterance", Utterance("inbound", 0.1, 0.3, "Hi.", 0.1, [], None).figures())
    assert not board.remote  # nothing but its start opens a panel; or its figures:
    remote.figures()
    _, snapshot = board.watch()
    [call] = snapshot["calls"]
    assert call["tag"] == remote.call.tag and call["call_sid"] is None
    assert call["tracks"]["inbound"]["seconds"] == 0.0


def test_another_servers_call_that_goes_quiet_is_ended_with_what_was_known():
    clock = FakeClock()
    board = CallBoard(clock=clock)
    remote = Remote(board, TwilioCall()).start()
    remote.media()
    remote.figures()
    clock.now += QUIET_SECONDS - 1
    board.forget_quiet()
    assert board.remote
    clock.now += 2
    board.forget_quiet()
    assert not board.remote
    assert board.ended[0].summary["ended_by"] == "no news from its server"


def test_the_fleet_is_followed_only_while_a_page_watches():
    board = CallBoard()
    followed = []
    board.fleet = type("Fleet", (), {"start": lambda _: followed.append("start"),
                                     "stop": lambda _: followed.append("stop")})()  # fmt: skip
    first, _ = board.watch()
    second, _ = board.watch()
    board.unwatch(first)
    assert followed == ["start"]
    board.unwatch(second)
    board.watch()
    assert followed == ["start", "stop", "start"]
