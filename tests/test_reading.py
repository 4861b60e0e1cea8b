"""One-way streams are read in batches (READ_INTERVAL); bidirectional ones per message."""

import itertools
import json
import time
from datetime import datetime

import pytest
from conftest import play

from mediastream.config import Config, ConfigError
from mediastream.simulator import TwilioCall


def arrivals(server, call):
    """When the Recorder handler saw each of a call's media messages (epoch seconds)."""
    lines = [json.loads(line) for line in server.lines(f"[{call.tag}] Recorder: media")]
    return [datetime.fromisoformat(line["time"]).timestamp() for line in lines]


def paced(server, call, count=50):
    """A call's media sent 20 ms apart, as Twilio sends; when each was sent; then its stop."""
    ws = server.connect()
    play(ws, call, media_per_track=0)
    sent = []
    for _ in range(count):
        sent.append(time.time())
        ws.send(call.media())
        time.sleep(0.02)
    stop_sent = time.time()
    ws.send(call.stop())
    ws.close()
    server.summary(call)
    return sent, stop_sent


@pytest.mark.parametrize("interval", ["0.2", "0.1"])
def test_a_one_way_stream_is_read_in_batches_each_within_an_interval(start_server, interval):
    server = start_server(
        command=("tests/handler_app.py", "RecorderInline"),
        LOG_FORMAT="json",
        READ_INTERVAL=interval,
    )
    call = TwilioCall()
    sent, stop_sent = paced(server, call)
    seen = arrivals(server, call)
    assert len(seen) == 50
    delays = [arrived - left for arrived, left in zip(seen, sent, strict=True)]
    assert max(delays) < float(interval) + 0.05  # every message within an interval
    gaps = [b - a for a, b in itertools.pairwise(seen)]
    assert max(gaps) > float(interval) * 0.7  # read in batches, not one by one
    assert sum(gap < 0.005 for gap in gaps) > 25  # most messages came with others
    (stop,) = [json.loads(line) for line in server.lines(f"[{call.tag}] Recorder: stop")]
    assert datetime.fromisoformat(stop["time"]).timestamp() - stop_sent < float(interval) + 0.05


@pytest.mark.parametrize("setting, parameters", [("0", {}), ("0.2", {"mode": "echo"})])
def test_bidirectional_streams_and_read_interval_0_are_read_per_message(
    start_server, setting, parameters
):
    server = start_server(
        command=("tests/handler_app.py", "RecorderInline"), LOG_FORMAT="json", READ_INTERVAL=setting
    )
    call = TwilioCall(parameters=parameters)
    sent, _ = paced(server, call)
    seen = arrivals(server, call)
    delays = [arrived - left for arrived, left in zip(seen, sent, strict=True)]
    assert max(delays) < 0.05
    assert sum(gap < 0.005 for gap in (b - a for a, b in itertools.pairwise(seen))) < 10


@pytest.mark.parametrize("text", ["-0.1", "0.5", "fast"])
def test_read_interval_is_0_to_200_ms(text):
    with pytest.raises(ConfigError, match="READ_INTERVAL must be seconds from 0 to 0.2"):
        Config.from_environ({"READ_INTERVAL": text})
    assert Config.from_environ({}).read_interval == 0.1
