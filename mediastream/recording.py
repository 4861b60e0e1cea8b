"""Per-track WAV recordings of a stream (when RECORDINGS_DIR is set).

One file per track, named <streamSid>-<track>.wav: 16-bit PCM, 8000 Hz, mono, written
as the audio arrives (memory stays flat however long the call) and finalised when the
stream ends. Chunk n of a track is samples (n-1)*160 to n*160 of its file: a lost
chunk is written as silence, so the tracks stay aligned with the call and each other.
"""

import re
import wave
from pathlib import Path

from mediastream.g711 import CHUNK_SAMPLES, CHUNKS_PER_SECOND, SAMPLE_RATE
from mediastream.handlers import Handler
from mediastream.stream import Numbering

SILENT_CHUNK = b"\x00\x00" * CHUNK_SAMPLES
MAX_GAP_CHUNKS = 60 * CHUNKS_PER_SECOND  # fill at most a minute of silence per gap: a wild
# chunk number from a broken client must not fill the disk


class Recording(Handler):
    """A handler: the WAV files of one stream, when RECORDINGS_DIR is set."""

    may_block = False  # local disk writes: short, and no greenlet switch

    def __init__(self, config):
        super().__init__(config)
        self.directory = Path(config.recordings_dir)
        self.stream_sid = None
        self.tracks = {}
        self.paths = []
        self.failed = False

    @classmethod
    def enabled(cls, config):
        return config.recordings_dir is not None

    def start(self, stream, event):
        self.stream_sid = _safe_name(event.stream_sid)

    def media(self, stream, chunk):
        """Write one chunk's audio; on a disk error, say so once and stop recording."""
        if self.stream_sid is None or self.failed:
            return
        try:
            track = self.tracks.get(chunk.track) or self._open(chunk.track)
            track.write(chunk.chunk, chunk.pcm)
        except OSError as error:
            self.failed = True
            self._close()
            stream.log.error("recording stopped, the call goes on: %s", error)

    def end(self, stream, ended_by):
        """Finalise every file, so that each one plays, and name them."""
        self._close()
        if self.paths and not self.failed:
            stream.log.info("recorded: %s", ", ".join(str(path) for path in self.paths))

    def _close(self):
        for track in self.tracks.values():
            try:
                track.close()
            except OSError:
                pass  # the failure was reported when it happened
        self.tracks = {}

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
        if chunk <= self.chunks.last:
            return  # late or repeated: its place is already written
        for _ in range(min(len(self.chunks.advance(chunk)), MAX_GAP_CHUNKS)):
            self.wav.writeframesraw(SILENT_CHUNK)
        self.wav.writeframesraw(pcm)

    def close(self):
        self.wav.close()


def _safe_name(text):
    """A file-name-safe form of a SID or track name sent by the client."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)[:64] or "_"
