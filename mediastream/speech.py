"""A handler: who is speaking. Speech activity per track, talk time, overtalk, silence.

Each 20 ms chunk is one frame for WebRTC's voice-activity detector (`webrtcvad`, from the
`webrtcvad-wheels` package), which takes 8000 Hz 16-bit PCM frames of exactly that size.
Its verdicts flicker between words, so a track is *speaking* from a run of ONSET_FRAMES
voiced frames until HANGOVER_FRAMES unvoiced ones (a turn); talk time counts from the
first voiced frame of a turn to where its speech ended. Lost chunks count as unvoiced.

While the call goes on, each track's figures (speaking or not, talk time so far) are in
`stream.tracks[track].speech`, which the console's progress line shows. At the end, `speech:`
lines: talk time and share per track, overtalk (both tracks speaking at once) and the
longest silence between speech.
"""

from array import array

import webrtcvad

from mediastream.g711 import CHUNK_MS, CHUNK_SAMPLES, SAMPLE_RATE
from mediastream.handlers import Handler

AGGRESSIVENESS = 2  # webrtcvad's 0 (lenient) to 3 (strict) about what counts as speech
VAD_OVERHANG_FRAMES = 5  # ...which keeps saying "voiced" for 5 frames after speech ends (its
# own hangover at this mode and frame size): a turn ends where the speech did
ONSET_FRAMES = 3  # 60 ms of voiced frames in a row start a turn
HANGOVER_FRAMES = 20  # 400 ms of unvoiced frames end it: pauses between words stay inside
MAX_TURNS = 20_000  # turns kept per track for the end's figures (hours of talk)
FRAME_BYTES = 2 * CHUNK_SAMPLES


class TrackSpeech:
    """One track's turns, from per-frame voiced/unvoiced verdicts (no audio, no I/O).

    Frame n is chunk n + 1: frame numbers are the track's timeline in 20 ms steps."""

    def __init__(self):
        self.turns = array("l")  # start, end frame of each finished turn (end exclusive)
        self.last_turn = None  # (start, end) of the last finished turn
        self.finished_frames = 0  # the talk time of finished turns, in frames
        self.frames = 0  # frames seen so far, lost ones included: the track's length
        self._turn_start = None  # the first frame of the turn under way
        self._voiced_run = 0
        self._unvoiced_run = 0
        self._last_voiced = -1

    @property
    def speaking(self):
        return self._turn_start is not None

    @property
    def turn(self):
        """(start, end) of the turn under way, so far; None between turns."""
        if self._turn_start is None:
            return None
        return self._turn_start, self._turn_end()

    @property
    def pause(self):
        """Unvoiced frames since the last voiced one (0 while voiced)."""
        return self._unvoiced_run

    @property
    def talk_seconds(self):
        frames = self.finished_frames
        if self._turn_start is not None:
            frames += self._turn_end() - self._turn_start
        return frames * CHUNK_MS / 1000

    def _turn_end(self):
        return max(self._last_voiced + 1 - VAD_OVERHANG_FRAMES, self._turn_start + 1)

    def add(self, frame, voiced):
        """Take the verdict on `frame`; frames skipped before it count as unvoiced."""
        if frame < self.frames:
            return  # late or repeated: already counted as lost
        if frame > self.frames:
            self._unvoiced(frame - self.frames)
        self.frames = frame + 1
        if not voiced:
            self._unvoiced(1)
            return
        self._voiced_run += 1
        self._unvoiced_run = 0
        self._last_voiced = frame
        if self._turn_start is None and self._voiced_run >= ONSET_FRAMES:
            self._turn_start = frame - ONSET_FRAMES + 1

    def _unvoiced(self, count):
        self._voiced_run = 0
        self._unvoiced_run += count
        if self._turn_start is not None and self._unvoiced_run >= HANGOVER_FRAMES:
            self.finish()

    def finish(self):
        """End the turn under way, if any (at a long enough pause, or the stream's end)."""
        if self._turn_start is None:
            return
        end = self._turn_end()
        self.last_turn = self._turn_start, end
        self.finished_frames += end - self._turn_start
        if len(self.turns) < 2 * MAX_TURNS:
            self.turns.extend((self._turn_start, end))
        self._turn_start = None


def turns(track):
    """A track's finished turns as (start, end) frame pairs."""
    return list(zip(track.turns[0::2], track.turns[1::2], strict=True))


def overtalk(first, second):
    """(frames, count) where the turns of two tracks overlap."""
    frames = count = 0
    a, b = turns(first), turns(second)
    i = j = 0
    while i < len(a) and j < len(b):
        overlap = min(a[i][1], b[j][1]) - max(a[i][0], b[j][0])
        if overlap > 0:
            frames += overlap
            count += 1
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return frames, count


def longest_silence(tracks):
    """(frames, first frame) of the longest stretch between two turns of any track in
    which no track speaks; (0, None) with fewer than two turns."""
    longest, at = 0, None
    speech_until = None
    for start, end in sorted(turn for track in tracks for turn in turns(track)):
        if speech_until is not None and start - speech_until > longest:
            longest, at = start - speech_until, speech_until
        speech_until = end if speech_until is None else max(speech_until, end)
    return longest, at


class SpeechActivity(Handler):
    """A handler: finds speech on each track (on unless SPEECH_ACTIVITY=off)."""

    may_block = False  # webrtcvad takes about a microsecond a frame

    def __init__(self, config):
        super().__init__(config)
        self.tracks = {}  # track name -> TrackSpeech
        self.vads = {}  # track name -> its own detector: each one adapts to its track's noise

    @classmethod
    def enabled(cls, config):
        return config.speech_activity

    def media(self, stream, chunk):
        track = self.tracks.get(chunk.track)
        if track is None:
            track = self.tracks[chunk.track] = stream.tracks[chunk.track].speech = TrackSpeech()
            self.vads[chunk.track] = webrtcvad.Vad(AGGRESSIVENESS)
        pcm = chunk.pcm
        voiced = len(pcm) == FRAME_BYTES and self.vads[chunk.track].is_speech(pcm, SAMPLE_RATE)
        track.add(chunk.chunk - 1, voiced)

    def end(self, stream, ended_by):
        if not self.tracks:
            return
        for track in self.tracks.values():
            track.finish()
        talk = [
            f"{name} talk {duration(track.finished_frames)} "
            f"({_share(track.finished_frames, track.frames)})"
            for name, track in self.tracks.items()
        ]
        if len(self.tracks) == 2:
            frames, count = overtalk(*self.tracks.values())
            talk[-1] += f"; overtalk {duration(frames)} ({_times(count)})"
        stream.log.info("speech: %s", ", ".join(talk))
        frames, at = longest_silence(self.tracks.values())
        if at is not None:
            stream.log.info(
                "speech: longest silence %s at %s", duration(frames), clock(at * CHUNK_MS / 1000)
            )


def duration(frames):
    """Frames as seconds for a person: tenths, or hundredths where tenths would say 0.0."""
    seconds = frames * CHUNK_MS / 1000
    return f"{seconds:.2f} s" if 0 < seconds < 0.05 else f"{seconds:.1f} s"


def _times(count):
    return "1 time" if count == 1 else f"{count} times"


def _share(part, whole):
    return f"{100 * part / whole:.0f}%" if whole else "0%"


def clock(seconds):
    """Seconds into the stream as mm:ss.s."""
    minutes, seconds = divmod(seconds, 60)
    return f"{int(minutes):02d}:{seconds:04.1f}"
