"""Per-track WAV recordings of a stream (when RECORDINGS_DIR is set).

One file per track, named <streamSid>-<track>.wav: 16-bit PCM, 8000 Hz, mono, written
as the audio arrives (memory stays flat however long the call) and finalised when the
stream ends. Chunk n of a track is samples (n-1)*160 to n*160 of its file: a lost
chunk is written as silence, so the tracks stay aligned with the call and each other.
"""

import re
import wave
from pathlib import Path

from mediastream import g711
from mediastream.stream import Numbering

SAMPLE_RATE = 8000
SAMPLES_PER_CHUNK = 160  # 20 ms
SILENT_CHUNK = b"\x00\x00" * SAMPLES_PER_CHUNK
MAX_GAP_CHUNKS = 60 * 50  # fill at most a minute of silence per gap: a wild chunk number
# from a broken client must not fill the disk


class Recording:
    """The WAV files of one stream; does nothing when `directory` is None."""

    def __init__(self, directory):
        self.directory = Path(directory) if directory else None
        self.stream_sid = None
        self.tracks = {}
        self.paths = []
        self.failed = False

    def start(self, stream_sid):
        self.stream_sid = _safe_name(stream_sid)

    def add(self, media):
        """Write one media event's audio; return a problem the first time writing fails."""
        if self.directory is None or self.stream_sid is None or self.failed:
            return None
        try:
            track = self.tracks.get(media.track) or self._open(media.track)
            track.write(media.chunk, g711.decode(media.audio))
        except OSError as error:
            self.failed = True
            self.close()
            return f"recording stopped, the call goes on: {error}"
        return None

    def close(self):
        """Finalise every file (so each one plays); return the paths written."""
        for track in self.tracks.values():
            try:
                track.close()
            except OSError:
                pass  # the failure was reported when it happened
        self.tracks = {}
        return [] if self.failed else self.paths

    def _open(self, track_name):
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{self.stream_sid}-{_safe_name(track_name)}.wav"
        track = self.tracks[track_name] = TrackFile(path)
        self.paths.append(path)
        return track


class TrackFile:
    """One track's WAV file, placing each chunk at its place in the stream's timeline."""

    def __init__(self, path):
        self.wav = wave.open(str(path), "wb")
        self.wav.setnchannels(1)
        self.wav.setsampwidth(2)
        self.wav.setframerate(SAMPLE_RATE)
        self.chunks = Numbering()

    def write(self, chunk, pcm):
        if chunk is not None and chunk <= self.chunks.last:
            return  # late or repeated: its place is already written
        for _ in range(min(len(self.chunks.advance(chunk)), MAX_GAP_CHUNKS)):
            self.wav.writeframesraw(SILENT_CHUNK)
        self.wav.writeframesraw(pcm)

    def close(self):
        self.wav.close()


def _safe_name(text):
    """A file-name-safe form of a SID or track name sent by the client."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)[:64] or "_"
