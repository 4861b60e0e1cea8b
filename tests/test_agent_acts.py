"""The agent acts (docs/agent.md, "Tools, and what the agent does to the call"): your Python
functions as its tools, hanging up, transferring, keys and silence. The real server, the
simulator as Twilio, tests/openai_stub.py as the model, voice and transcription (its tool
calls streamed as OpenAI splits them), and a stand-in of Twilio's REST API (conftest's
TwilioAPI) on loopback."""

import json
import re

import pytest
import requests
from conftest import (
    PageEvents,
    agent_call,
    caller_wav,
    finished,
    stand_ins,
    start_simulation,
)

from mediastream.turns import GOODBYE, NOT_TRANSFERRED, TRANSFERRING

SHOP_TOOLS = '''
import time
from typing import Literal

from mediastream.tools import Call


def order_status(order_id: str, call: Call) -> str:
    """Where an order is: shipped or not, and when it arrives."""
    time.sleep(SLEEP)
    return f"Order {order_id} shipped on Monday; the caller is {call.parameters.get('From')}."


def cancel_order(order_id: str, reason: Literal["late", "wrong item", "changed my mind"]) -> dict:
    """Cancel an order."""
    if order_id == "0":
        raise LookupError(f"no order {order_id}")
    return {"cancelled": order_id, "reason": reason}
'''


def shop(tmp_path, sleep=0.0):
    """A shop_tools.py beside nothing: the server imports it from PYTHONPATH."""
    directory = tmp_path / "tools"
    directory.mkdir(exist_ok=True)
    (directory / "shop_tools.py").write_text(SHOP_TOOLS.replace("SLEEP", str(sleep)))
    return {"PYTHONPATH": str(directory), "AGENT_TOOLS": "shop_tools"}


def one_turn(tmp_path, seconds=9.0):
    """A caller who speaks once, 2 to 3 s into a call of `seconds`."""
    return caller_wav(tmp_path / "caller.wav", [(2.0, 3.0)], seconds)


def order(order_id):
    return {"name": "order_status", "arguments": json.dumps({"order_id": order_id})}


def test_tools_are_offered_called_and_their_results_go_back_as_openai_does_it(
    start_server, fresh_stub, tmp_path
):
    cancel = {"name": "cancel_order", "arguments": '{"order_id": "4572", "reason": "late"}'}
    fresh_stub.control(
        tool_calls=[[order("4572"), cancel]], tool_text="Let me check.", answer="Anything else?"
    )
    server = stand_ins(start_server, fresh_stub, **shop(tmp_path))
    server.wait_for(r"(?m)history up to 3000 tokens; tools: order_status, cancel_order, end_call$")
    lines, _ = agent_call(server, tmp_path, "--param", "From=+15550123", wav=one_turn(tmp_path))
    first, second = fresh_stub.chat_requests()
    assert [tool["function"]["name"] for tool in first["tools"]] == [
        "order_status",
        "cancel_order",
        "end_call",
    ]
    assert first["tools"][1]["function"]["parameters"] == {
        "type": "object",
        "properties": {
            "order_id": {"type": "string"},
            "reason": {"type": "string", "enum": ["late", "wrong item", "changed my mind"]},
        },
        "required": ["order_id", "reason"],
    }
    # The second request: the assistant message with both calls, put together from their
    # pieces, then a tool message for each, by id.
    asked, *results = second["messages"][-3:]
    assert asked == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1_0", "type": "function", "function": order("4572")},
            {"id": "call_1_1", "type": "function", "function": cancel},
        ],
    }
    assert results == [
        {
            "role": "tool",
            "tool_call_id": "call_1_0",
            "content": "Order 4572 shipped on Monday; the caller is +15550123.",
        },
        {
            "role": "tool",
            "tool_call_id": "call_1_1",
            "content": '{"cancelled":"4572","reason":"late"}',
        },
    ]
    assert 'agent: tool order_status({"order_id": "4572"}) gave "Order 4572 shipped' in lines
    assert re.search(
        r'agent: tool cancel_order\(.*\) gave "\{"cancelled":"4572".*" in 0.\d\d s', lines
    )
    assert 'agent said: "Let me check. Done: Order 4572 shipped on Monday' in lines
    metrics = requests.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5).text
    assert 'mediastream_agent_tool_seconds_count{tool="cancel_order"} 1.0' in metrics


def test_a_slow_tool_gets_a_filler_and_a_failing_one_a_warning_while_the_call_goes_on(
    start_server, fresh_stub, tmp_path
):
    failing = {"name": "cancel_order", "arguments": '{"order_id": "0", "reason": "late"}'}
    fresh_stub.control(tool_calls=[[order("1")], [failing]], answer="Sorry.")
    server = stand_ins(start_server, fresh_stub, **shop(tmp_path, sleep=1.5))
    wav = caller_wav(tmp_path / "caller.wav", [(2.0, 3.0), (9.0, 10.0)], 15)
    lines, _ = agent_call(server, tmp_path, wav=wav, linger=1.5)
    assert 'agent said: "One moment, please. Done: Order 1 shipped' in lines, lines
    assert lines.count("One moment, please.") == 1  # the failing tool returned at once
    # The filler is the first the caller hears: the turn's voice to voice.
    filler_first = r"turn 1: voice to voice 1\.[23]\d s \(.*, tool called [\d.]+, first audio"
    assert re.search(filler_first, lines)
    assert (
        lines.count("WARNING") == 1
        and (
            'agent: tool cancel_order({"order_id": "0", "reason": "late"}) failed: '
            "LookupError: no order 0 (the model is told; the call goes on)"
        )
        in lines
    ), lines
    third = fresh_stub.chat_requests()[3]["messages"]
    assert third[-1]["content"] == '{"error": "LookupError: no order 0"}'.replace(" ", "", 1)
    history = fresh_stub.chat_requests()[2]["messages"]
    assert "One moment" not in json.dumps(history)  # the filler is the server's, not the model's


def call_sid(lines):
    return re.search(r"call (CA\w+): tracks", lines)[1]


def test_end_call_hangs_up_through_twilios_api_once_the_goodbye_has_played(
    start_server, fresh_stub, twilio_api, tmp_path
):
    fresh_stub.control(tool_calls=[[{"name": "end_call"}]], tool_text="Goodbye!")
    server = stand_ins(start_server, fresh_stub, **twilio_api.environ())
    lines, heard = agent_call(
        server, tmp_path, "--auth-token", twilio_api.AUTH_TOKEN, wav=one_turn(tmp_path)
    )
    (hang_up,) = twilio_api.requests
    assert hang_up == {
        "method": "POST",
        "path": twilio_api.call_path(call_sid(lines)),
        "authorization": twilio_api.basic_auth(),
        "content_type": "application/x-www-form-urlencoded",
        "form": {"Status": "completed"},
    }
    goodbye_played = lines.index('agent said: "Goodbye!"')
    assert goodbye_played < lines.index("agent: ending the call (the conversation is over)")
    assert "call: hang up (Twilio's API said yes)" in lines
    assert re.search(r"agent: 1 turn, .*; ended the call", lines)


def test_end_call_without_twilios_api_closes_the_stream(start_server, fresh_stub, tmp_path):
    fresh_stub.control(tool_calls=[[{"name": "end_call"}]])
    server = stand_ins(start_server, fresh_stub)
    lines, _ = agent_call(server, tmp_path, wav=one_turn(tmp_path, seconds=12))
    assert f'agent said: "{GOODBYE}"' in lines  # the model said nothing: the server does
    assert "call: no TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN: closing the stream" in lines
    assert re.search(r"summary: stream \w+ ended by closed by the server after [3-9]\.\d s", lines)


def test_transfer_redirects_to_dial_and_the_stop_that_follows_is_no_hang_up(
    start_server, fresh_stub, twilio_api, tmp_path
):
    transfer = {"name": "transfer_call", "arguments": '{"to": "support"}'}
    fresh_stub.control(tool_calls=[[transfer]])
    destinations = "sales=+15550100,support=sip:help@example.com"
    server = stand_ins(
        start_server, fresh_stub, AGENT_TRANSFER=destinations, **twilio_api.environ()
    )
    server.wait_for("tools: end_call, transfer_call")
    lines, _ = agent_call(
        server, tmp_path, "--auth-token", twilio_api.AUTH_TOKEN, wav=one_turn(tmp_path)
    )
    (first,) = fresh_stub.chat_requests()
    (offered,) = [t for t in first["tools"] if t["function"]["name"] == "transfer_call"]
    assert offered["function"]["parameters"]["properties"]["to"]["enum"] == ["sales", "support"]
    (redirect,) = twilio_api.requests  # and no hang-up when the stream stops
    assert redirect["path"] == twilio_api.call_path(call_sid(lines))
    assert redirect["authorization"] == twilio_api.basic_auth()
    assert redirect["form"] == {
        "Twiml": "<Response><Dial><Sip>sip:help@example.com</Sip></Dial></Response>"
    }
    assert f'agent said: "{TRANSFERRING}"' in lines
    assert "agent: transferring the call to support (sip:help@example.com)" in lines
    assert re.search(r"agent: 1 turn, .*; transferred to support", lines)


@pytest.mark.parametrize(
    "status, says",
    [
        (401, "HTTP 401 Unauthorized: stand-in says no"),
        (404, "HTTP 404 Not Found: stand-in says no"),
        (503, "HTTP 503 Service Unavailable"),
        (None, "connection refused (is 127.0.0.1:9 running?)"),
    ],
)
def test_a_transfer_twilio_refuses_is_one_warning_and_the_caller_is_told(
    start_server, fresh_stub, twilio_api, tmp_path, status, says
):
    fresh_stub.control(tool_calls=[[{"name": "transfer_call"}]])
    environ = twilio_api.environ()
    if status is None:
        environ["TWILIO_API_URL"] = "http://127.0.0.1:9"
    else:
        twilio_api.status = status
    server = stand_ins(start_server, fresh_stub, AGENT_TRANSFER="+15550100", **environ)
    lines, _ = agent_call(
        server, tmp_path, "--auth-token", twilio_api.AUTH_TOKEN, wav=one_turn(tmp_path, 11)
    )
    assert lines.count("WARNING") == 1, lines
    assert f"call: could not transfer to +15550100: Twilio's API: {says}" in lines
    assert f'agent said: "{NOT_TRANSFERRED}"' in lines
    assert "transferred" not in lines.split("agent: 1 turn")[-1]


def test_an_end_call_twilio_refuses_closes_the_stream(
    start_server, fresh_stub, twilio_api, tmp_path
):
    fresh_stub.control(tool_calls=[[{"name": "end_call"}]], tool_text="Bye!")
    twilio_api.status = 500
    server = stand_ins(start_server, fresh_stub, **twilio_api.environ())
    lines, _ = agent_call(
        server, tmp_path, "--auth-token", twilio_api.AUTH_TOKEN, wav=one_turn(tmp_path, 12)
    )
    assert "call: could not hang up: Twilio's API: HTTP 500" in lines
    assert "ended by closed by the server" in lines


def test_transfer_needs_twilios_api_and_says_so_at_startup(start_server, fresh_stub):
    server = stand_ins(start_server, fresh_stub, AGENT_TRANSFER="+15550100")
    server.wait_for(
        r"AGENT_TRANSFER is set, but transfer_call is not offered: it needs Twilio's API "
        r"\(TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN\)"
    )
    server.wait_for(r"(?m)tools: end_call$")


def test_keys_pressed_together_reach_the_model_as_one_turn(start_server, fresh_stub, tmp_path):
    server = stand_ins(start_server, fresh_stub)
    silent = caller_wav(tmp_path / "silent.wav", [], 9)  # a key each 1.5 s
    lines, _ = agent_call(server, tmp_path, "--dtmf", "4572#", wav=silent, linger=2)
    (request,) = fresh_stub.chat_requests()  # keys 2 s apart at most: one message
    assert request["messages"][-1] == {"role": "user", "content": "(the caller pressed 4 5 7 2 #)"}
    assert re.search(r"agent: turn 1: voice to voice", lines)


def test_a_silent_caller_is_asked_once_then_the_call_ends(start_server, fresh_stub, tmp_path):
    server = stand_ins(start_server, fresh_stub, AGENT_IDLE="2")
    silent = caller_wav(tmp_path / "silent.wav", [], 15)
    lines, _ = agent_call(server, tmp_path, wav=silent)
    assert lines.count('agent said: "Are you still there?"') == 1, lines
    assert re.search(r"agent: 0 turns, .*; hung up after 2 s of silence, twice", lines), lines
    assert "ended by closed by the server" in lines


def test_both_sides_of_the_conversation_on_the_calls_page_and_the_fleets_stream(
    start_server, fresh_stub, redis_server, tmp_path
):
    fresh_stub.control(tool_calls=[[order("4572")]], answer="Anything else?")
    server = stand_ins(start_server, fresh_stub, REDIS_URL=redis_server.url, **shop(tmp_path))
    page = PageEvents(server)
    try:
        # The second turn talks over the first answer (a hum of 0.3 s a word, 4 s of it).
        wav = caller_wav(tmp_path / "caller.wav", [(2.0, 3.0), (5.5, 6.5)], 10)
        lines, _ = agent_call(server, tmp_path, wav=wav, linger=2)
        ended = page.wait_for(lambda page: page.calls("end"))[0]
    finally:
        page.close()
    agent_lines = [line for line in ended["lines"] if line["track"] == "agent"]
    kinds = [line["kind"] for line in agent_lines]
    assert kinds == ["said", "tool", "cut", "said"], agent_lines  # the greeting first
    greeting, tool, cut, answer = agent_lines
    assert greeting["text"] == "Hello! How can I help you today?"
    assert tool["text"].startswith('order_status({"order_id": "4572"}) gave Order 4572 shipped')
    heard = re.search(r'they heard \d+ of \d+ words: "(.*)"', lines)[1]
    assert cut["text"] == heard and cut["voice_to_voice"] > 0
    assert answer["text"].startswith("You said:") and answer["voice_to_voice"] > 0
    assert [line["track"] for line in ended["lines"]] == [
        "agent",
        "inbound",
        "agent",
        "agent",
        "inbound",
        "agent",
    ]
    published = [kind for kind, _ in redis_entries(redis_server) if kind in ("agent", "tool")]
    assert published == ["agent", "tool", "agent", "agent"]


def redis_entries(redis_server):
    return [
        (fields[b"type"].decode(), json.loads(fields[b"json"]))
        for _, fields in redis_server.client().xrange("mediastream:events")
    ]


def test_past_agent_max_calls_a_caller_hears_busy_and_healthz_says_so(
    start_server, fresh_stub, tmp_path
):
    server = stand_ins(start_server, fresh_stub, AGENT_MAX_CALLS="1")
    health = f"http://127.0.0.1:{server.port}/healthz"
    assert requests.get(health, timeout=5).status_code == 200
    first = start_simulation(
        server, "--param", "mode=agent", "--wav", str(one_turn(tmp_path, seconds=14))
    )
    server.wait_for(r"agent said: \"Hello! How can I help you today\?\"")
    at_the_limit = requests.get(health, timeout=5)
    assert at_the_limit.status_code == 503
    assert at_the_limit.json()["status"] == "busy"
    assert at_the_limit.json()["reason"] == "1 agent call open, AGENT_MAX_CALLS=1"
    silent = caller_wav(tmp_path / "silent.wav", [], 8)
    lines, heard = agent_call(server, tmp_path, wav=silent)
    busy = "All our agents are busy right now. Please call again later."
    why = "1 agent call open, AGENT_MAX_CALLS=1"
    assert f'agent: all agents are busy ({why}): the caller hears "{busy}"' in lines
    assert f'agent said: "{busy}"' in lines and "Hello!" not in lines
    assert re.search(r"agent: 0 turns, .*; turned away: all agents busy", lines)
    assert "ended by closed by the server" in lines
    assert finished(first)[0] == 0
    server.wait_for(r"(?s)summary: .*summary: ")
    assert requests.get(health, timeout=5).status_code == 200
    metrics = requests.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5).text
    assert "mediastream_agent_turned_away_total 1.0" in metrics
    assert "mediastream_agent_calls 0.0" in metrics
