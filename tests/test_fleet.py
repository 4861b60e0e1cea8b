"""The fleet's events on a Redis Stream: real redis-server (Debian's), two server
processes publishing to it, calls from the simulator, the follower as a user runs it."""

import json
import subprocess
import sys
import time

import pytest
from conftest import (
    FIXTURES,
    REPO,
    PageEvents,
    calls_on_every_worker,
    finished,
    open_calls_page,
    screenshot,
    simulate,
    start_simulation,
)

from mediastream.browser.events import PEER_SOCKETS
from mediastream.config import Config, ConfigError
from tests.openai_stub import TRANSCRIPT


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
        assert f"[{tag}] {server} end: ended by stop after 2." in lines  # 2.0 or 2.1 s
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


def test_each_servers_calls_page_shows_the_other_servers_calls(
    redis_server, start_server, openai_stub
):
    alpha = start_server(
        REDIS_URL=redis_server.url, SERVER_NAME="alpha", TRANSCRIBE=openai_stub.url
    )
    early = start_simulation(alpha, "--seconds", "6", "--param", "caller=Early")
    alpha.wait_for(r"\] start: stream")
    time.sleep(1.5)  # its start and figures are on Redis before bravo starts
    bravo = start_server(REDIS_URL=redis_server.url, SERVER_NAME="bravo")
    page = PageEvents(bravo)
    open_before = page.wait_for(lambda page: page.calls("snapshot", "call"))[0]  # replayed
    assert open_before["server"] == "alpha" and open_before["parameters"] == {"caller": "Early"}
    assert open_before["summary"] is None
    speech = f"inbound={FIXTURES / 'sentences.wav'}"
    there = one_call(alpha, "--tracks", "both", "--dtmf", "42", "--wav", speech, "--seconds", "4")
    here = one_call(bravo)
    assert finished(early)[0] == 0
    ends = page.wait_for(lambda page: len(page.calls("end")) == 3 and page.calls("end"))
    page.close()
    by_tag = {call["tag"]: call for call in page.calls("call")}
    assert by_tag[there]["server"] == "alpha" and by_tag[here]["server"] == "bravo"
    assert [call["tag"] for call in page.calls("call")].count(here) == 1  # not again via Redis
    assert {call["tag"]: call["server"] for call in ends} == {
        open_before["tag"]: "alpha",
        there: "alpha",
        here: "bravo",
    }
    summary = next(call["summary"] for call in ends if call["tag"] == there)
    assert summary["ended_by"] == "stop" and summary["keys"] == "42"
    assert summary["tracks"]["outbound"]["seconds"] == 4.0
    assert summary["tracks"]["inbound"]["talk"] is not None  # speech activity's, from alpha
    lines = [body for _, name, body in page.events if name == "utterance"]
    said = [body["line"] for body in lines if body["id"].endswith(there)]
    said = [line for line in said if line["track"] == "inbound"]
    assert said and all(line["text"] == TRANSCRIPT for line in said)  # alpha's transcript
    assert summary["tracks"]["inbound"]["utterances"] == len(said)
    updated = {call["id"][-8:] for call in page.calls("update")}
    assert there in updated  # alpha's figures, once a second


def test_an_entry_that_is_not_ours_is_one_warning_and_the_page_goes_on(redis_server, start_server):
    server = start_server(REDIS_URL=redis_server.url, SERVER_NAME="bravo")
    page = PageEvents(server)
    client = redis_server.client()
    for _ in range(3):
        client.xadd("mediastream:events", {"type": "start", "json": "not json"})
    client.xadd("mediastream:events", {"something": "else"})
    server.wait_for(r"WARNING events: entry \d+-\d+ of the fleet's stream is not one of ours")
    tag = one_call(server)
    page.wait_for(lambda page: tag in {call["tag"] for call in page.calls("end")})
    page.close()
    assert len(server.lines("is not one of ours")) == 1 and "Traceback" not in server.log()


def test_under_gunicorn_with_redis_the_workers_calls_meet_through_it(
    redis_server, start_gunicorn, tmp_path
):
    run = tmp_path / "run"  # where, without Redis, the workers' sockets would be
    run.mkdir()
    gunicorn = start_gunicorn(
        REDIS_URL=redis_server.url,
        SERVER_NAME="gamma",
        LOG_FORMAT="json",
        PROMETHEUS_MULTIPROC_DIR=str(run),
    )
    open_calls = calls_on_every_worker(gunicorn)
    expected = {call.stream_sid for call, _ in open_calls}
    page = PageEvents(gunicorn)
    page.wait_for(lambda page: page.ids("snapshot", "call") >= expected)
    for call, ws in open_calls:
        ws.send(call.stop())
        ws.close()
    page.wait_for(lambda page: page.ids("end") >= expected)
    page.close()
    shown = [call["id"] for call in page.calls("snapshot", "call", "calls")]
    assert sorted(shown) == sorted(expected)  # each once, every one through Redis or its own
    assert not list(run.glob(PEER_SOCKETS))  # one way: no unix sockets between the workers


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
    followers = [start_follower(redis_server), start_follower(redis_server, "--group", "one")]
    time.sleep(0.5)
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
    for follower in followers:  # each waited for Redis and went on (the group's made again:
        lines = output(follower, settle=0).splitlines()  # Redis came back without it)
        assert sum("mediastream.events: Redis does not answer" in line for line in lines) == 1
        assert "mediastream.events: Redis answers again" in lines
        # (a one-way stream's stop may be read an interval late: 6.0 or 6.1 s)
        assert any(line.startswith(f"[{tag}] alpha end: ended by stop after 6.") for line in lines)


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


@pytest.mark.browser
def test_the_calls_page_in_chromium_shows_a_call_of_another_server(
    redis_server, start_server, chromium, tmp_path
):
    alpha = start_server(REDIS_URL=redis_server.url, SERVER_NAME="media-1")
    bravo = start_server(REDIS_URL=redis_server.url, SERVER_NAME="media-2")
    context = chromium.new_context(viewport={"width": 1100, "height": 520})
    page = open_calls_page(context, bravo)
    there = start_simulation(alpha, "--seconds", "5", "--dtmf", "7", "--param", "caller=+15550101")
    here = start_simulation(bravo, "--seconds", "4", "--tracks", "both")
    panel = "#open article:has(.server:text-is('media-1'))"
    page.wait_for_selector(f"{panel} .caller:text-is('+15550101')")
    page.wait_for_selector("#open article:has(.server:text-is('media-2')) .track.outbound")
    page.wait_for_selector(f"{panel} .problems:text-matches('keys 7')", timeout=10_000)
    assert float(page.text_content(f"{panel} .talk").split()[-2]) > 0  # its figures, live
    screenshot(page, "calls-fleet", tmp_path)
    assert finished(there)[0] == 0 and finished(here)[0] == 0
    page.wait_for_selector("#ended article:has(.server:text-is('media-1')) .summary p")
    assert page.locator("article").count() == 2  # each call once
    context.close()


def test_the_follower_shows_the_agents_side_of_the_conversation():
    from mediastream.events import describe

    head = {"tag": "a67c10df", "server": "alpha"}
    said = {**head, "kind": "said", "start": 4.5, "text": "Done.", "voice_to_voice": 0.55}
    assert describe("agent", said) == (
        '[a67c10df] alpha agent 00:04.5: "Done." (voice to voice 0.55 s)'
    )
    cut = {**head, "kind": "cut", "start": 9.0, "text": "You said", "voice_to_voice": 0.6}
    assert describe("agent", cut) == (
        '[a67c10df] alpha agent 00:09.0: "You said" [cut off] (voice to voice 0.60 s)'
    )
    tool = {**head, "kind": "tool", "start": 4.0, "tool": "order_status", "seconds": 0.01}
    tool |= {"arguments": '{"order_id": "1"}', "result": "Shipped."}
    assert describe("tool", tool) == (
        '[a67c10df] alpha agent 00:04.0: "order_status({"order_id": "1"}) gave Shipped."'
    )
    transfer = {**head, "kind": "transfer", "start": 21.0, "to": "support"}
    assert describe("agent", transfer).endswith('"transferred the call to support"')
