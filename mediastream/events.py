"""Follow the fleet's call events on Redis, a line each as they happen.

    python -m mediastream.events                      every event from now on
    python -m mediastream.events --group analytics    as a consumer group: acknowledged,
                                                      so a restarted follower resumes where
                                                      it stopped, and two followers share
    python -m mediastream.events --json               one JSON object a line, for pipes

REDIS_URL (or --url) names the Redis server, REDIS_STREAM (or --stream) the stream. This
is also the example of how to consume the stream from any language: each entry has the
fields `type` and `json`; read new ones with XREAD BLOCK (or, in a group, XREADGROUP with
">" after XGROUP CREATE ... MKSTREAM, then XACK each one handled). When Redis goes away,
it says so once on stderr and waits for it to come back.
"""

import argparse
import json
import os
import socket
import sys
import time

import redis

from mediastream.browser.live import agent_line
from mediastream.speech import clock

BLOCK_MS = 5000  # how long one read waits for new entries
RETRY_SECONDS = 1.0


def describe(kind, event):
    """One line for an event, tagged like the server's console."""
    head = f"[{event.get('tag', '?')}] {event.get('server', '?')}"
    if kind == "start":
        parameters = ", ".join(f"{k}={v}" for k, v in (event.get("parameters") or {}).items())
        mode = f", mode {event['mode']}" if event.get("mode") else ""
        return (
            f"{head} start: call {event.get('call_sid')}, tracks "
            f"{'+'.join(event.get('tracks') or []) or 'none'}{mode}"
            + (f"; {parameters}" if parameters else "")
        )
    if kind == "utterance":
        marks = f" [{', '.join(event['keywords'])}]" if event.get("keywords") else ""
        return (
            f"{head} {event.get('track')} {clock(event.get('start', 0))}: "
            f'"{event.get("text", "")}"{marks}'
        )
    if kind in ("agent", "tool"):
        line = agent_line(event)
        timed = (
            f" (voice to voice {line['voice_to_voice']:.2f} s)" if line["voice_to_voice"] else ""
        )
        cut_off = " [cut off]" if line["kind"] == "cut" else ""
        return f'{head} agent {clock(event.get("start", 0))}: "{line["text"]}"{cut_off}{timed}'
    if kind == "end":
        return f"{head} end: ended by {event.get('ended_by')} after {event.get('seconds', 0):.1f} s"
    if kind == "dtmf":
        return f"{head} dtmf: digit {event.get('digit')}"
    if kind == "figures":
        tracks = "; ".join(
            f"{name} {figures['seconds']:.1f} s" + (", speaking" if figures.get("speaking") else "")
            for name, figures in (event.get("tracks") or {}).items()
        )
        return f"{head} figures: {tracks or 'no audio yet'}"
    return f"{head} {kind}"


def show(fields, as_json):
    kind = fields.get(b"type", b"?").decode()
    event = json.loads(fields.get(b"json", b"{}"))
    if as_json:
        return json.dumps({"type": kind, **event})
    return describe(kind, event)


class Patient:
    """Calls to Redis that wait out its absence: one line on stderr when it goes, one when
    it is back, and a try every RETRY_SECONDS in between (a follower runs for days)."""

    def __init__(self, client):
        self.client = client
        self.down = False

    def __call__(self, command, *args, **options):
        while True:
            try:
                reply = getattr(self.client, command)(*args, **options)
            except (redis.ConnectionError, redis.TimeoutError) as error:
                if not self.down:
                    self.down = True
                    say(f"Redis does not answer ({error}); trying again every second")
                time.sleep(RETRY_SECONDS)
                continue
            if self.down:
                self.down = False
                say("Redis answers again")
            return reply


def say(text):
    print(f"mediastream.events: {text}", file=sys.stderr, flush=True)


def follow(redis_call, stream, as_json, figures, out=sys.stdout):
    """Every new entry, as it comes."""
    last = "$"
    while True:
        for _, entries in redis_call("xread", {stream: last}, block=BLOCK_MS) or []:
            for entry_id, fields in entries:
                last = entry_id
                if figures or fields.get(b"type") != b"figures":
                    print(show(fields, as_json), file=out, flush=True)


def follow_group(redis_call, stream, group, consumer, as_json, figures, out=sys.stdout):
    """As one consumer of a group: first what it was given and did not acknowledge (it
    stopped before it could), then new entries; each acknowledged once shown."""
    create_group(redis_call, stream, group, "$")  # from now on, the first time
    pending = "0"
    while True:
        wanted = pending or ">"
        block = None if pending else BLOCK_MS
        try:
            replies = redis_call("xreadgroup", group, consumer, {stream: wanted}, block=block)
        except redis.ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            # Redis came back without its data: what the stream holds now is all new.
            create_group(redis_call, stream, group, "0")
            continue
        entries = [entry for _, stream_entries in replies or [] for entry in stream_entries]
        if pending and not entries:
            pending = None  # caught up with its own history
        for entry_id, fields in entries:
            if pending:
                pending = entry_id
            if figures or fields.get(b"type") != b"figures":
                print(show(fields, as_json), file=out, flush=True)
            redis_call("xack", stream, group, entry_id)


def create_group(redis_call, stream, group, start):
    try:
        redis_call("xgroup_create", stream, group, id=start, mkstream=True)
    except redis.ResponseError as error:
        if "BUSYGROUP" not in str(error):  # the group exists: go on from where it is
            raise


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--url", default=os.environ.get("REDIS_URL"), help="default: $REDIS_URL")
    parser.add_argument(
        "--stream",
        default=os.environ.get("REDIS_STREAM") or "mediastream:events",
        help="default: $REDIS_STREAM or %(default)s",
    )
    parser.add_argument("--group", help="read as this consumer group (acknowledged)")
    parser.add_argument(
        "--consumer", default=socket.gethostname(), help="this follower's name in the group"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object a line")
    parser.add_argument(
        "--figures", action="store_true", help="show each call's figures too (once a second)"
    )
    arguments = parser.parse_args(argv)
    if not arguments.url:
        parser.error("give --url or set REDIS_URL (redis://host:6379/0)")
    redis_call = Patient(redis.Redis.from_url(arguments.url, socket_connect_timeout=3))
    try:
        if arguments.group:
            follow_group(
                redis_call,
                arguments.stream,
                arguments.group,
                arguments.consumer,
                arguments.json,
                arguments.figures,
            )
        else:
            follow(redis_call, arguments.stream, arguments.json, arguments.figures)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
