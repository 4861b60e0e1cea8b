"""The operator's pages in a real browser: Debian's Chromium, driven by Playwright, its
microphone playing tests/fixtures/sentences.wav. The softphone (/phone) calls the real
server's /media as Twilio would; /calls shows every call live.

Screenshots of both pages go to SCREENSHOTS_DIR (docs/images for the docs' own), or to
the test's temporary directory.
"""

import re
import time

import pytest
import requests
import websocket

from tests.conftest import (
    FIXTURES,
    finished,
    http,
    launch_chromium,
    model_directory,
    open_calls_page,
    requires,
    screenshot,
    split_turn_wav,
    start_simulation,
)

pytestmark = pytest.mark.browser

AUTH_TOKEN = "browser-test-auth-token"


def place_call(context, server, mode="", caller="Ann Example"):
    """The softphone, on the call; returns the page and the stream's SID."""
    phone = context.new_page()
    phone.goto(http(server) + "/phone")
    phone.fill("#caller", caller)
    phone.select_option("#mode", mode)
    phone.click("#call")
    phone.wait_for_selector("body[data-state='connected']", timeout=10_000)
    stream_sid = phone.get_attribute("body", "data-stream-sid")
    assert phone.text_content("#state") == f"On the call [{stream_sid[-8:]}]"
    return phone, stream_sid


def seconds(page, selector):
    return float(page.text_content(selector).split()[0])


def test_a_softphone_call_shows_on_the_console_and_live_on_the_calls_page(
    chromium, start_server, tmp_path
):
    server = start_server()
    context = chromium.new_context(viewport={"width": 1100, "height": 620})
    calls = open_calls_page(context, server)
    # A call from "Twilio" too (the simulator), with both tracks: the page shows them all.
    simulation = start_simulation(
        server,
        *("--tracks", "both", "--seconds", "6", "--param", "caller=+15550100123"),
        *("--wav", f"inbound={FIXTURES / 'call-inbound.wav'}"),
        *("--wav", f"outbound={FIXTURES / 'call-outbound.wav'}"),
    )
    calls.wait_for_selector("#open article .caller:text('+15550100123')")
    phone, stream_sid = place_call(context, server)
    tag = stream_sid[-8:]
    panel = f"#open article[data-stream-sid='{stream_sid}']"

    # The console, as for a call from Twilio: start, the caller, speech activity.
    server.wait_for(rf"\[{tag}\] start: stream {stream_sid} from 127\.0\.0\.1:\d+ \(one-way\)")
    server.wait_for(rf"\[{tag}\] parameters: caller=Ann Example")
    server.wait_for(rf"\[{tag}\] media: inbound [\d.]+ s, speaking, talk [\d.]+ s", timeout=10)

    # /calls, while it runs: the caller, a track speaking, its meter moving, talk time.
    calls.wait_for_selector(f"{panel} .caller:text('Ann Example')")
    calls.wait_for_selector(f"{panel} .track[data-track='inbound'][data-speaking='true']")
    calls.wait_for_function(
        f"""() => document.querySelector("{panel} .meter span").style.transform !== 'scaleX(0)'"""
    )
    calls.wait_for_selector(f"{panel} .talk:text-matches('talk [1-9]')")
    assert phone.is_visible(f"#own-call article[data-stream-sid='{stream_sid}']")
    screenshot(calls, "calls", tmp_path)
    screenshot(phone, "phone", tmp_path)

    # The keypad: each key a dtmf message, as Twilio sends a caller's keys.
    phone.click("#keypad button:text('4')")
    phone.keyboard.press("2")
    server.wait_for(rf"\[{tag}\] dtmf: digit 4 \(inbound_track\)")
    server.wait_for(rf"\[{tag}\] dtmf: digit 2 \(inbound_track\)")
    assert phone.text_content("#keys") == "42"
    calls.wait_for_selector(f"{panel} .problems:text-matches('^keys 42 ')")

    phone.click("#hangup")
    lines = server.summary(type("Call", (), {"tag": tag}))
    assert f"summary: stream {stream_sid} ended by stop" in lines
    assert re.search(r"speech: inbound talk [1-9][\d.]* s", lines)
    # ... and its summary on the page, under "Recently ended".
    ended = f"#ended article[data-stream-sid='{stream_sid}']"
    calls.wait_for_selector(f"{ended} .summary p:text-matches('ended by stop after')")
    assert "inbound:" in calls.text_content(f"{ended} .summary")
    assert calls.locator(panel).count() == 0
    phone.wait_for_selector("body[data-state='ended']")
    assert finished(simulation)[0] == 0
    calls.wait_for_selector("#ended article .caller:text('+15550100123')")
    context.close()


def test_a_browsers_spare_connections_put_no_warning_on_the_console(chromium, start_server):
    """Chromium opens connections ahead of need and may leave them unused: normal."""
    server = start_server(START_TIMEOUT="1")
    context = chromium.new_context()
    for _ in range(3):
        open_calls_page(context, server).close()
    time.sleep(2.5)  # past START_TIMEOUT for any connection left unused
    assert (
        "bad HTTP request" not in server.log()
        and "WARNING" not in server.log().split("TWILIO_AUTH_TOKEN is not set")[1]
    )
    context.close()


def test_the_softphone_hears_the_echo(chromium, start_server):
    server = start_server()
    context = chromium.new_context()
    phone, stream_sid = place_call(context, server, mode="echo")
    server.wait_for(rf"\[{stream_sid[-8:]}\] start: .*\(bidirectional, mode echo\)")
    phone.wait_for_function("() => parseFloat(document.getElementById('heard').textContent) >= 1")
    phone.click("#hangup")
    server.wait_for(rf"\[{stream_sid[-8:]}\] sent back: [1-9][\d.]* s of audio")
    assert seconds(phone, "#heard") <= seconds(phone, "#sent")
    context.close()


def test_the_softphone_echoes_marks_and_honours_clear(chromium, start_server):
    """mode=prompt: a greeting, marked at its end; the microphone talks over it at once,
    so the server clears it, and the page echoes the pending mark as Twilio does."""
    server = start_server()
    context = chromium.new_context()
    phone, stream_sid = place_call(context, server, mode="prompt")
    tag = stream_sid[-8:]
    server.wait_for(rf"\[{tag}\] barge-in: the caller spoke")
    server.wait_for(rf"\[{tag}\] mark: prompt-end cleared before it played")
    phone.wait_for_selector("#clears:text('1')")
    phone.wait_for_selector("#marks:text('1')")
    phone.click("#hangup")
    server.wait_for(rf"\[{tag}\] sent back: .*marks: 1 sent, 0 played, 1 cleared; 1 clear")
    context.close()


def test_with_the_auth_token_only_the_softphone_streams_in(chromium, start_server):
    server = start_server(TWILIO_AUTH_TOKEN=AUTH_TOKEN)
    context = chromium.new_context()
    phone, stream_sid = place_call(context, server)
    server.wait_for(rf"\[{stream_sid[-8:]}\] start: stream {stream_sid}")
    phone.click("#hangup")
    server.wait_for(rf"\[{stream_sid[-8:]}\] summary: .* ended by stop")
    context.close()

    # No signature and no page credential: refused before the WebSocket is accepted.
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        server.connect()
    assert refused.value.status_code == 403
    server.wait_for(r"refused \(403 Forbidden\): no X-Twilio-Signature header \(nor a softphone")
    # A credential is good for one handshake.
    credential = requests.post(http(server) + "/phone/credential").json()["credential"]
    server.connect(f"/media?credential={credential}").close()
    with pytest.raises(websocket.WebSocketBadStatusException):
        server.connect(f"/media?credential={credential}")
    server.wait_for(r"refused \(403 Forbidden\): page credential was used already")


def test_the_softphone_talks_with_the_agent(chromium, start_server, openai_stub):
    """mode=agent, with stand-ins for the model, the voice and transcription (which
    answer at once: Whisper on a slow CPU would take longer than the looped microphone's
    pauses, and the agent waits for a caller who is speaking again): the page hears the
    greeting and an answer to what its microphone said, and honours the clears of
    barge-in; its panel shows both sides; its keypad's keys reach the model."""
    openai_stub.control(answer="Sure.")
    server = start_server(AGENT=openai_stub.url, SPEAK=openai_stub.url, TRANSCRIBE=openai_stub.url)
    context = chromium.new_context()
    phone, stream_sid = place_call(context, server, mode="agent")
    tag = stream_sid[-8:]
    # The microphone speaks at once and on and on: over the greeting, then over answers.
    server.wait_for(rf"\[{tag}\] barge-in: the caller talked over the agent; cleared")
    server.wait_for(rf"\[{tag}\] agent: turn 1: voice to voice [\d.]+ s", timeout=30)
    phone.wait_for_function("() => parseFloat(document.getElementById('heard').textContent) >= 1")
    # The panel: the agent's side beside the caller's (the greeting, at least).
    phone.wait_for_selector(".transcript li.agent", timeout=10_000)
    assert phone.locator(".transcript li.inbound").count() >= 1
    for key in "12#":
        phone.click(f"#keypad button:text('{key}')")
    server.wait_for(rf"\[{tag}\] dtmf: digit # \(inbound_track\)")
    deadline = time.monotonic() + 20  # "#" ends the keys: one message, answered like speech
    while not any(
        "(the caller pressed 1 2 #)" in message["content"]
        for request in openai_stub.chat_requests()
        for message in request["messages"]
        if message["role"] == "user"
    ):
        assert time.monotonic() < deadline, openai_stub.chat_requests()[-1]
        time.sleep(0.1)
    phone.click("#hangup")
    # (How many turns it answered depends on where the looped sentences fall.)
    server.wait_for(rf"\[{tag}\] agent: \d+ turns?, voice to voice median")
    context.close()


@requires("faster_whisper", "requirements-transcribe.txt")
@pytest.mark.transcribe
def test_a_softphone_caller_who_pauses_mid_sentence_gets_one_answer(
    playwright, start_server, fresh_stub, tmp_path
):
    """The microphone says "I would like to book a table for", pauses 1 s, and goes on
    "four people at seven tonight." (tests/fixtures/pauses.json), once; Whisper hears it
    (here its early text comes after the caller has gone on: the turn was held for it),
    stand-ins answer."""
    fresh_stub.control(answer="Sure.")
    server = start_server(AGENT=fresh_stub.url, SPEAK=fresh_stub.url, TRANSCRIBE="local")
    browser = launch_chromium(playwright, split_turn_wav(tmp_path / "mic.wav", 1), loop=False)
    try:
        phone, stream_sid = place_call(browser.new_context(), server, mode="agent")
        tag = stream_sid[-8:]
        server.wait_for(rf"\[{tag}\] agent: turn 1: voice to voice", timeout=30)
        time.sleep(2)
        phone.click("#hangup")
        server.wait_for(rf"\[{tag}\] summary: ")
    finally:
        browser.close()
    (request,) = fresh_stub.chat_requests()  # one answer, to the whole turn
    said = request["messages"][-1]["content"].lower()
    # Both halves. (Whisper has heard the second as "for people that haven't denied".)
    assert "table" in said and "people" in said, said
    assert server.lines(f"[{tag}] sent back:")[0].endswith("; 0 clears")
    (utterance,) = server.lines(f"[{tag}] inbound 00:0")  # both halves, one utterance
    assert "table" in utterance and "people" in utterance


@requires("faster_whisper", "requirements-transcribe.txt")
@pytest.mark.transcribe
def test_the_calls_page_shows_the_transcript_with_keywords_and_sentiment(
    chromium, start_server, tmp_path
):
    server = start_server(TRANSCRIBE=model_directory(), KEYWORDS="order, package")
    context = chromium.new_context(viewport={"width": 1100, "height": 620})
    calls = open_calls_page(context, server)
    phone, stream_sid = place_call(context, server)
    panel = f"article[data-stream-sid='{stream_sid}']"
    server.wait_for(rf"\[{stream_sid[-8:]}\] inbound 00:\d\d\.\d: \".*order", timeout=30)
    calls.wait_for_selector(f"{panel} .transcript li.inbound mark:text-matches('order', 'i')")
    calls.wait_for_selector(f"{panel} .transcript li .sentiment")
    phone.wait_for_selector(f"#own-call {panel} .transcript mark:text-matches('order', 'i')")
    phone.click("#hangup")
    calls.wait_for_selector(f"#ended {panel} .summary p:text-matches('keywords: \"order\"')")
    screenshot(calls, "calls-transcript", tmp_path)
    context.close()
