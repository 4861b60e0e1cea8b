"""The fleet's events on a Redis Stream: real redis-server (Debian's), two server
processes publishing to it, calls from the simulator, the follower as a user runs it."""

import json
import subprocess
import sys
import time

import pytest
from conftest import REPO, finished, simulate, start_simulation

from mediastream.config import Config, ConfigError


def start_follower(redis_server, *arguments):
    return subprocess.Popen(
        [sys.executable, "-m", "mediastream.events", "--url", redis_server.url, *arguments],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def output(follower, settle=1.0):
    """What a follower printed, once it has had `settle` seconds to catch up."""
    time.sleep(settle)
    follower.terminate()
    return follower.communicate(timeout=5)[0]


def one_call(server, *arguments):
    """A 2 s call into `server`; its tag, once its summary is on the console."""
    summaries = len(server.lines("] summary: "))
    status, report = simulate(server, "--seconds", "2", *arguments)
    assert status == 0, report
    server.wait_for(rf"(?s)(\] summary: .*){{{summaries + 1}}}")
    return server.lines("] summary: ")[-1].split("[")[1][:8]


def entries(redis_server):
    return [
        (fields[b"type"].decode(), json.loads(fields[b"json"]))
        for _, fields in redis_server.client().xrange("mediastream:events")
    ]


def test_two_servers_publish_to_one_stream_and_the_follower_shows_both(redis_server, start_server):
    alpha = start_server(REDIS_URL=redis_server.url, SERVER_NAME="alpha")
    bravo = start_server(REDIS_URL=redis_server.url, SERVER_NAME="bravo")
    alpha.wait_for(r"events: to the Redis Stream mediastream:events, as server alpha")
    follower = start_follower(redis_server)
    time.sleep(0.5)  # it reads what comes after it starts
    tags = {
        "alpha": one_call(alpha, "--tracks", "both", "--dtmf", "7", "--param", "caller=+1555"),
        "bravo": one_call(bravo),
    }
    lines = output(follower)
    for server, tag in tags.items():
        assert f"[{tag}] {server} start: call CA" in lines
        assert f"[{tag}] {server} end: ended by stop after 2.0 s" in lines
    assert f"[{tags['alpha']}] alpha dtmf: digit 7" in lines
    assert "tracks inbound+outbound; caller=+1555" in lines
    assert "figures:" not in lines  # unless asked for (--figures)
    found = entries(redis_server)
    assert {(kind, event["server"]) for kind, event in found if kind in ("start", "end")} == {
        ("start", "alpha"),
        ("end", "alpha"),
        ("start", "bravo"),
        ("end", "bravo"),
    }
    for _, event in found:
        assert event["stream_sid"].endswith(event["tag"]) and event["server"] in tags
    end = next(event for kind, event in found if kind == "end" and event["server"] == "alpha")
    assert end["ended_by"] == "stop" and end["tracks"]["inbound"]["messages"] == 100
    figures = [event for kind, event in found if kind == "figures"]
    assert figures and all("tracks" in event for event in figures)
    assert len(figures) <= 2 * 3  # at most once a second per call


def test_the_follower_prints_json_for_pipes(redis_server, start_server):
    server = start_server(REDIS_URL=redis_server.url, SERVER_NAME="alpha")
    follower = start_follower(redis_server, "--json")
    time.sleep(0.5)
    tag = one_call(server)
    events = [json.loads(line) for line in output(follower).splitlines()]
    assert [event["type"] for event in events] == ["start", "end"]
    assert {event["tag"] for event in events} == {tag}


def test_a_consumer_group_resumes_where_it_stopped_and_its_followers_share(
    redis_server, start_server
):
    server = start_server(REDIS_URL=redis_server.url, SERVER_NAME="alpha")
    first = start_follower(redis_server, "--group", "analytics", "--consumer", "one")
    time.sleep(0.5)
    before = one_call(server)
    assert f"[{before}] alpha end:" in output(first)
    missed = one_call(server)  # while no follower of the group runs
    again = start_follower(redis_server, "--group", "analytics", "--consumer", "one")
    other = start_follower(redis_server, "--group", "analytics", "--consumer", "two")
    time.sleep(0.5)
    after = [one_call(server) for _ in range(2)]
    seen = output(again) + output(other, settle=0)
    assert before not in seen  # acknowledged: not given again
    for tag in (missed, *after):  # each given once, to one of the two
        assert seen.count(f"[{tag}] alpha start:") == 1, seen
        assert seen.count(f"[{tag}] alpha end:") == 1, seen


def test_redis_going_away_mid_call_is_one_warning_and_its_return_one_line(
    redis_server, start_server
):
    server = start_server(REDIS_URL=redis_server.url, SERVER_NAME="alpha")
    simulation = start_simulation(server, "--seconds", "6")
    time.sleep(1.5)
    redis_server.stop()
    server.wait_for(r"WARNING events: Redis does not answer \(.*\); events wait", timeout=10)
    time.sleep(1.5)
    redis_server.start()
    server.wait_for(r"INFO    events: Redis answers again; 0 events were dropped", timeout=10)
    assert finished(simulation)[0] == 0
    tag = server.wait_for(r"\[(\w{8})\] summary: .* ended by stop")[1]
    log = server.log()
    assert log.count("events: Redis does not answer") == 1 and "Traceback" not in log
    time.sleep(1.5)  # the end goes out as soon as Redis takes it
    assert ("end", tag) in [(kind, event["tag"]) for kind, event in entries(redis_server)]


def test_under_gunicorn_every_worker_publishes(redis_server, start_gunicorn):
    server = start_gunicorn(REDIS_URL=redis_server.url, SERVER_NAME="gamma")
    tag = one_call(server)
    time.sleep(1)  # the worker's writer takes it to Redis
    assert ("end", tag, "gamma") in [
        (kind, event["tag"], event["server"]) for kind, event in entries(redis_server)
    ]


def test_a_redis_that_is_not_there_leaves_the_calls_alone(start_server):
    server = start_server(REDIS_URL="redis://127.0.0.1:9/0", SERVER_NAME="alpha")
    one_call(server)
    assert server.lines("WARNING events: Redis does not answer")
    assert "summary: stream" in server.log() and "Traceback" not in server.log()


@pytest.mark.parametrize("value", ["http://redis:6379", "redis-host:6379", "tcp://r:1"])
def test_redis_url_is_a_redis_url_and_never_echoed(value):
    with pytest.raises(ConfigError, match="REDIS_URL must be a Redis server's URL") as error:
        Config.from_environ({"REDIS_URL": value})
    assert value not in str(error.value)


def test_the_redis_url_is_never_shown():
    config = Config.from_environ({"REDIS_URL": "redis://:s3cret@redis.internal:6379/0"})
    assert "s3cret" not in repr(config)
