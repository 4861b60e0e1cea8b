"""The README's and docs/' examples, run as they are written there, and the Quick start's
commands against what CI runs."""

import json
import re
import tempfile
from pathlib import Path

import pytest
from conftest import (
    FIXTURES,
    GUNICORN_LISTENING,
    REPO,
    agent_call,
    caller_wav,
    model_directory,
    requires,
    simulate,
    stand_ins,
)

from mediastream import g711
from mediastream.simulator import TwilioCall, mulaw_chunks, read_wav

# Each Python example, by the file name its page tells you to save it as, and the page.
# An example no test runs fails test_every_example_is_run.
EXAMPLES = {
    "keylogger.py": "README.md",
    "caller_audio.py": "docs/handlers.md",
    "word_alert.py": "docs/handlers.md",
    "beeper.py": "docs/talkback.md",
    "retention.py": "docs/handlers.md",
    "shop_tools.py": "docs/agent.md",
}


def python_blocks(page):
    return re.findall(r"```python\n(.*?)```", (REPO / page).read_text(), re.DOTALL)


def save_example(name, directory):
    """The example its page tells you to save as `name` (the first after it says so)."""
    text = (REPO / EXAMPLES[name]).read_text()
    code = re.search(r"```python\n(.*?)```", text[text.index(f"`{name}`") :], re.DOTALL)[1]
    (directory / name).write_text(code)
    return name.removesuffix(".py")


def run_example(start_server, name, directory, how, **environ):
    """Start the server as the page says: `python example.py`, or gunicorn from the
    repository root with `example:create()`."""
    module = save_example(name, directory)
    if how == "python":
        return start_server(
            command=(f"{module}.py",), cwd=directory, PYTHONPATH=str(REPO), **environ
        )
    server = start_server(
        command=("-m", "gunicorn", "--workers", "1", "--pythonpath", str(directory))
        + (f"{module}:create()",),
        listening=GUNICORN_LISTENING,
        **environ,
    )
    server.wait_for("TWILIO_AUTH_TOKEN is not set")  # the worker has loaded the app
    return server


def test_every_example_is_run():
    pages = ["README.md", *(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
    blocks = sorted(code for page in pages for code in python_blocks(page))
    with tempfile.TemporaryDirectory() as directory:
        tested = sorted((Path(directory) / name).read_text() for name in EXAMPLES
                        if save_example(name, Path(directory)))  # fmt: skip
    assert blocks == tested


@pytest.mark.parametrize("how", ["python", "gunicorn"])
def test_the_readme_handler_logs_each_key(start_server, tmp_path, how):
    server = run_example(start_server, "keylogger.py", tmp_path, how)
    call = TwilioCall()
    ws = server.connect()
    for message in (call.connected(), call.start(), call.media(), call.dtmf("4"), call.stop()):
        ws.send(message)
    ws.close()
    server.summary(call)
    assert server.lines(f"[{call.tag}] caller pressed 4")


@pytest.mark.parametrize("how", ["python", "gunicorn"])
def test_the_handlers_example_logs_keys_and_keeps_the_callers_audio(start_server, tmp_path, how):
    server = run_example(start_server, "caller_audio.py", tmp_path, how)
    call = TwilioCall(tracks=("inbound", "outbound"))
    caller = mulaw_chunks(read_wav(FIXTURES / "call-inbound.wav"), seconds=2)
    ws = server.connect()
    ws.send(call.connected())
    ws.send(call.start())
    for chunk in caller:
        ws.send(call.media("inbound", chunk))
        ws.send(call.media("outbound"))
    ws.send(call.dtmf("4"))
    ws.send(call.dtmf("2"))
    ws.send(call.stop())
    ws.close()
    server.summary(call)
    assert [line.split("] ")[1] for line in server.lines("caller pressed")] == [
        "caller pressed 4",
        "caller pressed 2",
    ]
    saved = f"{call.stream_sid}-caller.pcm"
    (line,) = server.lines(f"[{call.tag}] caller's audio in {saved}")
    where = tmp_path if how == "python" else REPO  # the directory the server runs in
    try:
        assert (where / saved).read_bytes() == g711.decode(b"".join(caller))
    finally:
        (where / saved).unlink(missing_ok=True)


def test_the_talk_back_example_beeps_for_each_key(start_server, tmp_path):
    server = run_example(start_server, "beeper.py", tmp_path, "python")
    call = TwilioCall(parameters={"mode": "beeper"})
    ws = server.connect()
    ws.send(call.connected())
    ws.send(call.start())
    ws.send(call.dtmf("5"))
    ws.settimeout(5)
    beep = [json.loads(ws.recv()) for _ in range(11)]  # 0.2 s: ten chunks, then the mark
    assert [message["event"] for message in beep] == ["media"] * 10 + ["mark"]
    ws.send(call.mark(beep[-1]["mark"]["name"]))  # as Twilio: played
    ws.send(call.stop())
    ws.close()
    server.summary(call)
    assert server.lines(f"[{call.tag}] beep 5 heard")


def test_the_call_control_example_transfers_a_caller_who_says_cancel(
    start_server, openai_stub, twilio_api, tmp_path
):
    server = run_example(
        start_server,
        "retention.py",
        tmp_path,
        "python",
        KEYWORDS="cancel",
        TRANSCRIBE=openai_stub.url,  # "Please cancel my order.", whatever the audio
        **twilio_api.environ(),
    )
    wav = caller_wav(tmp_path / "caller.wav", [(0.5, 1.5), (3.0, 4.0)], 6)
    status, report = simulate(server, "--wav", str(wav), "--auth-token", twilio_api.AUTH_TOKEN)
    assert status == 0, report
    server.wait_for(r"summary: ")
    (transfer,) = twilio_api.requests  # once, though the caller said it twice
    assert transfer["form"] == {"Twiml": "<Response><Dial>+15550100</Dial></Response>"}
    assert server.lines("call: transfer to +15550100 (Twilio's API said yes)")


def test_the_tools_example_answers_from_its_functions(
    start_server, fresh_stub, twilio_api, tmp_path
):
    save_example("shop_tools.py", tmp_path)
    calls = [
        [{"name": "order_status", "arguments": '{"order_id": "4572"}'}],
        [{"name": "cancel_order", "arguments": '{"order_id": "4572", "reason": "arrived late"}'}],
        [{"name": "cancel_order", "arguments": '{"order_id": "1", "reason": "wrong item"}'}],
    ]
    fresh_stub.control(tool_calls=calls, answer="Anything else?")
    server = stand_ins(start_server, fresh_stub, PYTHONPATH=str(tmp_path), AGENT_TOOLS="shop_tools")
    wav = caller_wav(tmp_path / "caller.wav", [(2.0, 3.0), (8.0, 9.0), (14.0, 15.0)], 20)
    lines, _ = agent_call(server, tmp_path, "--param", "From=+15550123", wav=wav)
    assert 'gave "Order 4572 is shipped on Monday, arriving Thursday."' in lines
    assert 'gave "Order 4572 is cancelled (arrived late); a confirmation goes to +15550123."' in (
        lines
    )
    assert "failed: LookupError: there is no order 1 (the model is told" in lines


@pytest.mark.transcribe
@requires("faster_whisper", "requirements-transcribe.txt")
def test_the_utterance_example_logs_a_line_when_the_caller_says_the_word(start_server, tmp_path):
    server = run_example(
        start_server, "word_alert.py", tmp_path, "python", TRANSCRIBE=model_directory()
    )
    status, report = simulate(server, "--wav", str(FIXTURES / "keywords-inbound.wav"), "--fast")
    assert status == 0, report
    tag = server.wait_for(r"\[(\w{8})\] summary: ").group(1)
    lines = server.lines(f"[{tag}] the caller said cancel at ")
    times = [float(line.split(" at ")[-1].removesuffix(" s")) for line in lines]
    assert times == pytest.approx([0.5, 7.0], abs=0.5)  # in the first and the third sentence


def test_the_quick_start_is_what_ci_runs():
    readme = (REPO / "README.md").read_text()
    quick_start = readme[readme.index("## Quick start") : readme.index("## Try it")]
    serve, test = re.findall(r"(?m)^    (python3 -m venv .*)$", quick_start)
    install, run = serve.rsplit(" && ", 1)
    assert run == ".venv/bin/python app.py"
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert f"{install} && .venv/bin/python .ci/quickstart.py" in ci  # which runs app.py
    assert test in ci
    assert '"app.py"]' in (REPO / ".ci" / "quickstart.py").read_text()


# The console examples in the README and docs/, each run as its page says, against
# today's fixtures: (page, the text its block comes after, simulate.py's arguments, the
# server's settings). Each line of the block must be a line of the run, in order: times,
# SIDs, tags and ports aside, a call's length within 0.3 s, and the progress lines left
# out (their figures depend on where the 5 s tick falls).
SPOKEN_CALL = (
    *("--tracks", "both", "--wav", "inbound=tests/fixtures/call-inbound.wav"),
    *("--wav", "outbound=tests/fixtures/call-outbound.wav", "--dtmf", "42"),
    *("--mark", "greeting", "--lose", "300", "--param", "caller=+15550100123"),
)
PROMPT_CALL = ("--param", "mode=prompt", "--wav", "inbound=tests/fixtures/sentences.wav",
               "--seconds", "3")  # fmt: skip
KEYWORD_CALL = (
    *("--tracks", "both", "--wav", "inbound=tests/fixtures/keywords-inbound.wav"),
    *("--wav", "outbound=tests/fixtures/keywords-outbound.wav"),
)
CONSOLE_EXAMPLES = {
    "README.md": ("## What the console shows", SPOKEN_CALL, {}),
    "docs/console.md": ("# What the console shows", SPOKEN_CALL, {}),
    "docs/talkback.md": ('value="prompt"', PROMPT_CALL, {}),
}
VOLATILE = [
    (r"^\d\d:\d\d:\d\d ", ""),
    (r"(MZ|CA)[0-9a-f]{32}", r"\1…"),
    (r"\[[0-9a-f]{8}\]", "[tag]"),
    (r"127\.0\.0\.1:\d+", "client"),
    (r"listening on \S+", "listening on …"),
]


def console_block(page, after):
    text = (REPO / page).read_text()
    return re.search(r"```\n(.*?)```", text[text.index(after) :], re.DOTALL)[1].splitlines()


def comparable(lines):
    """(line without its volatile parts, the call's length or None), progress lines out."""
    found = []
    for line in lines:
        if re.search(r"\] media: ", line):
            continue
        for pattern, replacement in VOLATILE:
            line = re.sub(pattern, replacement, line)
        length = re.search(r"ended by \w+ after ([\d.]+) s", line)
        found.append((re.sub(r"after [\d.]+ s", "after … s", line), length and float(length[1])))
    return found


def assert_console_matches(page, after, lines):
    ran = comparable(lines)
    position = 0
    for line, length in comparable(console_block(page, after)):
        while position < len(ran) and ran[position][0] != line:
            position += 1
        assert position < len(ran), f"{page}: this line is not what the server says now:\n{line}"
        if length is not None:
            assert ran[position][1] == pytest.approx(length, abs=0.3), (page, line)
        position += 1


def run_console_example(start_server, arguments, **environ):
    server = start_server(**environ)
    status, report = simulate(server, *arguments)
    assert status == 0, report
    tag = server.wait_for(r"\[(\w{8})\] summary: ").group(1)
    return [
        line
        for line in server.log().splitlines()
        if f"[{tag}]" in line or "[127.0.0.1:" in line or "listening on" in line
    ]


@pytest.mark.parametrize("page", CONSOLE_EXAMPLES)
def test_the_console_examples_are_what_the_server_says_today(start_server, page):
    after, arguments, environ = CONSOLE_EXAMPLES[page]
    assert_console_matches(page, after, run_console_example(start_server, arguments, **environ))


@pytest.mark.transcribe
@requires("faster_whisper", "requirements-transcribe.txt")
def test_the_transcript_console_example_is_what_the_server_says_today(start_server):
    lines = run_console_example(
        start_server, KEYWORD_CALL, TRANSCRIBE="local", KEYWORDS="cancel, refund"
    )
    assert_console_matches("docs/speech-and-transcripts.md", "keywords-outbound.wav", lines)
