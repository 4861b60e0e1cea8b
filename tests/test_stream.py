"""One stream's state and figures, fed events directly."""

from mediastream.messages import parse_message
from mediastream.simulator import TwilioCall
from mediastream.stream import MediaStream


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def started_stream(call, clock=None):
    stream = MediaStream("127.0.0.1:5000", clock=clock or FakeClock())
    stream.start(parse_message(call.start()))
    return stream


def test_a_stream_is_named_by_its_client_until_start_then_by_its_sid():
    call = TwilioCall()
    stream = MediaStream("10.0.0.1:4242")
    assert stream.name == "10.0.0.1:4242"
    stream.start(parse_message(call.start()))
    assert stream.name == call.stream_sid[-8:]


def test_media_is_counted_per_track():
    call = TwilioCall(tracks=("inbound", "outbound"))
    stream = started_stream(call)
    for _ in range(50):
        stream.add_media(parse_message(call.media("inbound")))
    for _ in range(25):
        stream.add_media(parse_message(call.media("outbound")))
    assert stream.tracks["inbound"].messages == 50
    assert stream.tracks["outbound"].audio_bytes == 25 * 160
    assert stream.audio_seconds("inbound") == 1.0
    assert stream.audio_seconds("outbound") == 0.5


def test_missing_chunks_are_counted_per_track():
    call = TwilioCall(tracks=("inbound", "outbound"))
    stream = started_stream(call)
    assert not stream.add_media(parse_message(call.media("inbound")))
    call.lose_media("inbound")
    call.lose_media("inbound")
    assert not stream.add_media(parse_message(call.media("outbound")))
    assert stream.add_media(parse_message(call.media("inbound"))) == range(2, 4)
    assert stream.tracks["inbound"].chunks.missing == 2
    assert stream.tracks["outbound"].chunks.missing == 0
    assert stream.missing_chunks == 2


def test_missing_sequence_numbers_are_counted_once():
    stream = MediaStream("client")
    assert stream.check_sequence(1) == range(0)
    assert stream.check_sequence(2) == range(0)
    assert stream.check_sequence(6) == range(3, 6)
    assert stream.check_sequence(4) == range(0)  # late, not lost again
    assert stream.check_sequence(None) == range(0)
    assert stream.missing_sequence_numbers == 3


def test_duration_runs_from_the_connection_to_its_end():
    clock = FakeClock()
    stream = MediaStream("client", clock=clock)
    clock.now += 12.5
    assert stream.duration() == 12.5
    stream.ended()
    clock.now += 2  # handlers still finishing: not part of the call
    assert stream.duration() == 12.5
