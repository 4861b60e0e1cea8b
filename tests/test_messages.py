"""Decoding Twilio's messages into events, without sockets."""

import base64
import json

import pytest

from mediastream.messages import (
    BadMessage,
    Connected,
    Dtmf,
    Mark,
    Media,
    Start,
    Stop,
    parse_message,
)
from mediastream.simulator import TwilioCall


def test_every_documented_event_decodes_to_its_type():
    call = TwilioCall(tracks=("inbound", "outbound"), parameters={"agent": "7"})
    assert parse_message(call.connected()) == Connected(protocol="Call", version="1.0.0")

    start = parse_message(call.start())
    assert start == Start(
        stream_sid=call.stream_sid,
        sequence=1,
        call_sid=call.call_sid,
        account_sid=call.account_sid,
        tracks=["inbound", "outbound"],
        encoding="audio/x-mulaw",
        sample_rate=8000,
        channels=1,
        custom_parameters={"agent": "7"},
    )

    audio = bytes(range(160))
    assert parse_message(call.media("outbound", audio)) == Media(
        stream_sid=call.stream_sid,
        sequence=2,
        track="outbound",
        chunk=1,
        timestamp=0,
        audio=audio,
    )
    assert parse_message(call.dtmf("#")) == Dtmf(call.stream_sid, 3, "inbound_track", "#")
    assert parse_message(call.mark("hello")) == Mark(call.stream_sid, 4, "hello")
    assert parse_message(call.stop()) == Stop(call.stream_sid, 5, call.call_sid, call.account_sid)


def test_media_payload_is_base64_decoded():
    payload = base64.b64encode(b"\x00\x7f\xff").decode()
    event = parse_message(json.dumps({"event": "media", "media": {"payload": payload}}))
    assert event.audio == b"\x00\x7f\xff"
    assert (event.track, event.chunk, event.sequence) == ("inbound", None, None)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "not JSON"),
        ("{", "not JSON"),
        ('"media"', "JSON str instead of an object"),
        ("null", "JSON NoneType instead of an object"),
        ("{}", "no 'event' field"),
        ("[" * 50_000, "not JSON (depth limit exceeded"),
        ('{"event": "closed"}', "unknown event 'closed'"),
        ('{"event": ["media"]}', "unknown event"),
        ('{"event": "media"}', "media event without a 'media' object"),
        ('{"event": "media", "media": {"payload": ""}}', "media without a payload"),
        ('{"event": "media", "media": {"payload": 42}}', "media without a payload"),
        ('{"event": "media", "media": {"payload": "abc"}}', "not valid base64"),
        ('{"event": "media", "media": {"payload": "a b="}}', "not valid base64"),
        (
            '{"event": "media", "sequenceNumber": "-1", "media": {"payload": "/w=="}}',
            "sequenceNumber",
        ),
        ('{"event": "media", "media": {"payload": "/w==", "timestamp": [1]}}', "timestamp"),
        ('{"event": "media", "media": {"payload": "/w==", "chunk": 1e400}}', "not JSON"),
        ('{"event": "media", "media": {"payload": "/w==", "chunk": -3}}', "chunk is not a number"),
        ('{"event": "media", "media": {"payload": "/w==", "chunk": NaN}}', "not JSON"),
        ('{"event": "start", "start": {}}', "start without a streamSid"),
        (
            '{"event": "start", "streamSid": "MZ1", "start": {"mediaFormat": {"sampleRate": "x"}}}',
            "sampleRate is not a number",
        ),
        ('{"event": "dtmf", "dtmf": {"digit": 5}}', "dtmf without a digit"),
        ('{"event": "mark", "mark": "m"}', "mark event without a 'mark' object"),
    ],
)
def test_bad_messages_raise_bad_message_with_a_reason(text, reason):
    with pytest.raises(BadMessage) as problem:
        parse_message(text)
    assert reason in str(problem.value)


def test_unknown_event_names_are_shortened_in_the_reason():
    with pytest.raises(BadMessage) as problem:
        parse_message(json.dumps({"event": "x" * 10_000}))
    assert len(str(problem.value)) < 80
