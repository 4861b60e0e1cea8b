"""Twilio's Media Streams messages, built the way Twilio's reference documents them.

Kept independent of the server's code, so the tests check the server against Twilio's
shapes rather than against itself.
"""

import base64
import json
import uuid

SILENCE = b"\xff" * 160  # 20 ms of mu-law silence at 8000 Hz


def new_sid(prefix):
    """A Twilio-style SID: two letters and 32 hex digits."""
    return prefix + uuid.uuid4().hex


class TwilioCall:
    """One stream's messages, numbered as Twilio numbers them."""

    def __init__(self, tracks=("inbound",), parameters=None):
        self.stream_sid = new_sid("MZ")
        self.call_sid = new_sid("CA")
        self.account_sid = new_sid("AC")
        self.tracks = list(tracks)
        self.parameters = parameters or {}
        self.sequence = 0
        self.chunks = dict.fromkeys(self.tracks, 0)

    @property
    def tag(self):
        """How the server's console names this stream."""
        return self.stream_sid[-8:]

    def connected(self):
        return json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})

    def start(self):
        return self._numbered(
            "start",
            {
                "accountSid": self.account_sid,
                "streamSid": self.stream_sid,
                "callSid": self.call_sid,
                "tracks": self.tracks,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": self.parameters,
            },
        )

    def media(self, track="inbound", audio=SILENCE):
        self.chunks[track] += 1
        chunk = self.chunks[track]
        return self._numbered(
            "media",
            {
                "track": track,
                "chunk": str(chunk),
                "timestamp": str((chunk - 1) * 20),
                "payload": base64.b64encode(audio).decode(),
            },
        )

    def lose_media(self, track="inbound"):
        """Number a media message that never arrives, as a lost one would be."""
        self.media(track)

    def dtmf(self, digit):
        return self._numbered("dtmf", {"track": "inbound_track", "digit": digit})

    def mark(self, name):
        return self._numbered("mark", {"name": name})

    def stop(self):
        return self._numbered("stop", {"accountSid": self.account_sid, "callSid": self.call_sid})

    def _numbered(self, event, body):
        self.sequence += 1
        return json.dumps(
            {
                "event": event,
                "sequenceNumber": str(self.sequence),
                event: body,
                "streamSid": self.stream_sid,
            }
        )
