"""A handler: per-track WAV recordings of a stream (when RECORDINGS_DIR is set).

One file per track, named <streamSid>-<track>.wav: 16-bit PCM, 8000 Hz, mono, written as
the audio arrives. Chunk n of a track is samples (n-1)*160 to n*160 of its file: a lost
chunk is written as silence, so the tracks stay aligned with the call and each other.

Nothing is lost to a crash or overwritten:
- Every FLUSH_CHUNKS chunks (half a second), the buffered audio is written out and then
  the header's lengths are brought up to date, so the file on disk is a valid WAV at
  every moment: a SIGKILL loses at most the last half second.
- A file is created only where no file is (a reused streamSid gets "-2", "-3", ...).
- Filled silence is capped per track (MAX_SILENCE_CHUNKS, a minute): a wild chunk
  number from a broken client cannot fill the disk.
- On a disk error, recording stops (the call goes on) and each file is cut back to the
  last audio known to be on disk; a file with none is removed.
"""

import os
import re
import struct
from pathlib import Path

from mediastream.g711 import CHUNK_SAMPLES, CHUNKS_PER_SECOND, SAMPLE_RATE
from mediastream.handlers import Handler
from mediastream.metrics import RECORDING_FAILURES
from mediastream.stream import Numbering

FLUSH_CHUNKS = CHUNKS_PER_SECOND // 2
MAX_SILENCE_CHUNKS = 60 * CHUNKS_PER_SECOND
SILENT_CHUNK = b"\x00\x00" * CHUNK_SAMPLES
HEADER_BYTES = 44
MAX_SAME_NAME = 100  # names tried: "", then "-2" to "-100"


class Recording(Handler):
    """A handler: the WAV files of one stream."""

    may_block = False  # local disk writes: short, and no greenlet switch

    def __init__(self, config):
        super().__init__(config)
        self.directory = Path(config.recordings_dir)
        self.stream_sid = None
        self.tracks = {}  # track name -> TrackFile
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
            track = self.tracks.get(chunk.track) or self._open(stream, chunk.track)
            track.write(chunk.chunk, chunk.pcm)
        except OSError as error:
            self.failed = True
            RECORDING_FAILURES.inc()
            stream.log.error("recording stopped, the call goes on: %s", error)
            for track in self.tracks.values():
                track.keep_what_is_good()
        else:
            if track.unfilled and not track.warned:
                track.warned = True
                stream.log.warning(
                    "recording: over %d s of %s audio lost; later gaps are not filled with "
                    "silence, so the file is shorter than the call",
                    MAX_SILENCE_CHUNKS // CHUNKS_PER_SECOND,
                    chunk.track,
                )

    def end(self, stream, ended_by):
        """Finish every file, and say what each one holds."""
        for track in self.tracks.values():
            if not self.failed:
                try:
                    track.close()
                except OSError as error:
                    stream.log.error("recording: %s: %s", track.path.name, error)
                    track.keep_what_is_good()
            stream.log.info("recorded: %s", track.describe())

    def _open(self, stream, track_name):
        """A new file for the track, under a name no other file has."""
        stem = f"{self.stream_sid}-{_safe_name(track_name)}"
        file, path = create_new(self.directory, stem)
        if path.stem != stem:
            stream.log.warning(
                "recording: %s.wav exists already; writing %s instead", stem, path.name
            )
        track = self.tracks[track_name] = TrackFile(path, file)
        return track


class TrackFile:
    """One track's WAV file, kept valid on disk as it grows."""

    def __init__(self, path, file):
        self.path = path
        self.file = file
        self.file.write(wav_header(0))
        self.pending = bytearray()  # audio not yet written
        self.chunks = Numbering()
        self.frames = 0  # samples in the file and pending
        self.good_frames = 0  # samples on disk and counted in the header
        self.silence_left = MAX_SILENCE_CHUNKS
        self.unfilled = 0  # lost chunks not filled with silence (past the cap)
        self.warned = False
        self.problem = None

    def write(self, chunk, pcm):
        """Add a chunk at its place in the track's timeline (silence in lost places)."""
        if chunk <= self.chunks.last:
            return  # late or repeated: its place is already written
        lost = len(self.chunks.advance(chunk))
        filled = min(lost, self.silence_left)
        self.silence_left -= filled
        self.unfilled += lost - filled
        self.pending += SILENT_CHUNK * filled
        self.pending += pcm
        self.frames += filled * CHUNK_SAMPLES + len(pcm) // 2
        if len(self.pending) >= FLUSH_CHUNKS * len(SILENT_CHUNK):
            self.flush()

    def flush(self):
        """Write the pending audio, then the header that counts it (in that order: the
        header never counts audio that is not on disk)."""
        written = 0
        while written < len(self.pending):  # a raw file may write less than it is given
            written += self.file.write(self.pending[written:])
        self.pending.clear()
        os.pwrite(self.file.fileno(), wav_header(self.frames), 0)
        self.good_frames = self.frames

    def close(self):
        self.flush()
        self.file.close()

    def keep_what_is_good(self):
        """After a write failed: cut the file back to its last good point, or remove it
        if nothing was written; never raises."""
        self.problem = "incomplete"
        try:
            os.ftruncate(self.file.fileno(), HEADER_BYTES + 2 * self.good_frames)
            self.file.close()
            if not self.good_frames:
                self.path.unlink()
                self.problem = "removed"
        except OSError:
            pass  # as good as it gets: the header still counts only what was on disk

    def describe(self):
        seconds = self.good_frames / SAMPLE_RATE
        if self.problem == "removed":
            return f"{self.path} removed: nothing could be written"
        if self.problem:
            return f"{self.path} INCOMPLETE: good to {seconds:.1f} s"
        return f"{self.path} ({seconds:.1f} s)"


def create_new(directory, stem, extension=".wav", mode="wb"):
    """(file, path) of a file made where no file was: `stem` + extension, or, when that
    name is taken, stem-2, stem-3, ... (never over another file: mode "x")."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for suffix in ["", *(f"-{number}" for number in range(2, MAX_SAME_NAME + 1))]:
        path = directory / f"{stem}{suffix}{extension}"
        try:
            return open(path, mode.replace("w", "x"), buffering=0 if "b" in mode else -1), path
        except FileExistsError:
            continue
    raise FileExistsError(f"{MAX_SAME_NAME} files named {stem}*{extension} exist already")


def wav_header(frames):
    """The 44-byte header of a 16-bit PCM, 8000 Hz, mono WAV file of `frames` samples."""
    data = 2 * frames
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        HEADER_BYTES - 8 + data,
        b"WAVE",
        b"fmt ",
        16,  # the size of this fmt chunk
        1,  # PCM
        1,  # mono
        SAMPLE_RATE,
        2 * SAMPLE_RATE,  # bytes a second
        2,  # bytes a sample
        16,  # bits a sample
        b"data",
        data,
    )


def _safe_name(text):
    """A file-name-safe form of a SID or track name sent by the client."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)[:64] or "_"
