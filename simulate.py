"""Play Twilio Media Streams calls into a running server, as Twilio would: no phone needed.

python simulate.py                          one 10 s call into ws://127.0.0.1:5000/media
python simulate.py --calls 20 --tracks both --dtmf 42 --mark greeting
python simulate.py --wav hello.wav          a recording (a PCM WAV; converted to 8000 Hz mono)
python simulate.py --tracks both --wav inbound=caller.wav --wav outbound=agent.wav
python simulate.py --fast --calls 100       flat out, for load tests
python simulate.py --param mode=echo --output heard.wav   talk back: what the caller hears
"""

import argparse
import os
import sys
import time
import wave
from pathlib import Path
from urllib.parse import urlsplit

from mediastream import g711
from mediastream.simulator import Plan, hum, mulaw_chunks, read_wav, run

TRACKS = {"inbound": ("inbound",), "outbound": ("outbound",), "both": ("inbound", "outbound")}
# The built-in audio, looped: the two sides take turns, each a voice-like hum of its own
# pitch, 1.5 s in every 4 s, so that speech activity (and its talk time) has turns to see.
PITCHES = {"inbound": 120.0, "outbound": 200.0}
TURN_STARTS = {"inbound": 0.0, "outbound": 2.0}
DEFAULT_URL = "ws://127.0.0.1:5000/media"
DTMF_KEYS = "0123456789*#ABCD"


def parse_arguments(argv):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--url",
        default=DEFAULT_URL,
        help="the server's WebSocket URL (default: %(default)s)",
    )
    parser.add_argument("--calls", type=int, default=1, help="concurrent calls (default: 1)")
    parser.add_argument(
        "--tracks", choices=TRACKS, default="inbound", help="tracks to stream (default: inbound)"
    )
    parser.add_argument(
        "--seconds", type=float, help="length of each call (default: 10, or the WAV's length)"
    )
    parser.add_argument(
        "--wav",
        action="append",
        default=[],
        metavar="[TRACK=]FILE",
        help="play this WAV file (PCM; converted to 8000 Hz mono) instead of the built-in "
        "hum, on every track or on TRACK (repeatable)",
    )
    parser.add_argument("--fast", action="store_true", help="send flat out instead of in real time")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a custom parameter (repeatable)",
    )
    parser.add_argument(
        "--dtmf", default="", metavar="DIGITS", help="keys pressed during the call, spread over it"
    )
    parser.add_argument(
        "--mark",
        action="append",
        default=[],
        metavar="NAME",
        help="a mark event before the stop (repeatable)",
    )
    parser.add_argument(
        "--lose",
        action="append",
        type=int,
        default=[],
        metavar="CHUNK",
        help="number chunk CHUNK of each track but never send it, as a lost message (repeatable)",
    )
    parser.add_argument(
        "--output",
        metavar="FILE",
        help="write what the caller heard (the server's audio, played out as Twilio does) "
        "to this WAV file; with several calls, FILE-2.wav, ...",
    )
    parser.add_argument(
        "--linger",
        type=float,
        default=0.5,
        metavar="S",
        help="after the stop, go on hearing the server for S seconds before closing (default: 0.5)",
    )
    parser.add_argument(
        "--auth-token",
        default=os.environ.get("TWILIO_AUTH_TOKEN"),
        help="sign the handshake with this auth token (default: $TWILIO_AUTH_TOKEN)",
    )
    parser.add_argument(
        "--signed-url",
        help="the URL to sign if not --url: the server's PUBLIC_URL + /media",
    )
    arguments = parser.parse_args(argv)
    if arguments.calls < 1:
        parser.error("--calls must be at least 1")
    if arguments.seconds is not None and arguments.seconds <= 0:
        parser.error("--seconds must be positive")
    if any("=" not in pair for pair in arguments.param):
        parser.error("--param takes NAME=VALUE")
    if urlsplit(arguments.url).scheme not in ("ws", "wss"):
        parser.error(f"--url must start with ws:// or wss://, like {DEFAULT_URL}")
    if any(chunk < 1 for chunk in arguments.lose):
        parser.error("--lose takes chunk numbers, which start at 1")
    if arguments.dtmf.strip(DTMF_KEYS):
        parser.error(f"--dtmf takes the keys of a phone: {DTMF_KEYS}")
    if not all(arguments.mark):
        parser.error("--mark takes a name")
    for choice in arguments.wav:
        track = choice.partition("=")[0]
        if track in TRACKS["both"] and track not in TRACKS[arguments.tracks]:
            parser.error(
                f"--wav {choice}: the call streams no {track} track "
                f"(--tracks {arguments.tracks}); add --tracks {track} or --tracks both"
            )
    taken = [path for path in heard_paths(arguments.output, arguments.calls) if path.exists()]
    if taken:
        parser.error(f"--output: {taken[0]} exists; remove it or name another file")
    return arguments


def built_in_audio(track):
    """One 4 s turn of the built-in conversation on `track`, as 16-bit PCM."""
    bytes_per_second = 2 * g711.SAMPLE_RATE
    voiced = bytes(round(TURN_STARTS[track] * bytes_per_second)) + hum(1.5, PITCHES[track])
    return voiced + bytes(4 * bytes_per_second - len(voiced))


def plan_from(arguments):
    """What each call plays, from the command line; ValueError for an unusable WAV."""
    tracks = TRACKS[arguments.tracks]
    recordings = {}  # track -> its WAV's samples
    for choice in arguments.wav:
        track, _, path = choice.partition("=")
        if track not in TRACKS["both"]:  # a file alone: every track plays it
            track, path = None, choice
        pcm = read_wav(path, on_convert=lambda note: print(f"simulate.py: {note}"))
        recordings.update({track: pcm} if track else dict.fromkeys(tracks, pcm))
    longest = max((len(pcm) / 16000 for pcm in recordings.values()), default=10.0)
    seconds = arguments.seconds or max(longest, 0.02)
    chunks = {
        track: mulaw_chunks(recordings.get(track) or built_in_audio(track), seconds)
        for track in tracks
    }
    return Plan(
        url=arguments.url,
        tracks=tracks,
        chunks=chunks,
        parameters=dict(pair.split("=", 1) for pair in arguments.param),
        digits=arguments.dtmf,
        marks=tuple(arguments.mark),
        lose=frozenset(arguments.lose),
        realtime=not arguments.fast,
        auth_token=arguments.auth_token,
        signed_url=arguments.signed_url,
        linger=arguments.linger,
    )


class Counter:
    """A live count of messages sent, redrawn on a terminal at most 4 times a second."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream if stream.isatty() else None
        self.sent = 0
        self.started = self.drawn = time.monotonic()

    def __call__(self):
        self.sent += 1
        now = time.monotonic()
        if self.stream and now - self.drawn >= 0.25:
            self.drawn = now
            self.stream.write(f"\r{self.sent} messages sent, {now - self.started:.1f} s")
            self.stream.flush()

    def clear(self):
        if self.stream:
            self.stream.write("\r\033[K")


def main(argv=None):
    arguments = parse_arguments(argv)
    try:
        plan = plan_from(arguments)
    except (OSError, ValueError) as problem:
        sys.exit(f"simulate.py: {problem}")
    counter = Counter()
    report = run(plan, arguments.calls, counter)
    counter.clear()
    for line in report.lines():
        print(line)
    if arguments.output:
        try:
            write_heard(arguments.output, report.results)
        except OSError as problem:
            sys.exit(f"simulate.py: --output: {problem}")
    return 1 if report.failures else 0


def heard_paths(output, calls):
    """Where --output puts each call's heard audio: FILE, then FILE-2.wav, ..."""
    if not output:
        return []
    path = Path(output)
    return [path] + [path.with_name(f"{path.stem}-{n}{path.suffix}") for n in range(2, calls + 1)]


def write_heard(output, results):
    """Each call's heard audio as a WAV (never over an existing file: checked at the start)."""
    for path, result in zip(heard_paths(output, len(results)), results, strict=True):
        with open(path, "xb") as file, wave.open(file, "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(g711.SAMPLE_RATE)
            wav.writeframes(g711.decode(result.heard))


if __name__ == "__main__":
    sys.exit(main())
