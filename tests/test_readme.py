"""The README's and docs/' examples, run as they are written there, and the Quick start's
commands against what CI runs."""

import json
import re

import pytest
from conftest import FIXTURES, REPO

from mediastream import g711
from mediastream.simulator import TwilioCall, mulaw_chunks, read_wav

# Each Python example, by the page it is on, and the file name the page tells you to save
# it as. A page with an example no test runs fails test_every_example_is_run.
EXAMPLES = {
    "README.md": "keylogger.py",
    "docs/handlers.md": "caller_audio.py",
    "docs/talkback.md": "beeper.py",
}
GUNICORN_LISTENING = r"Listening at: http://[\d.]+:(\d+)"


def python_blocks(page):
    return re.findall(r"```python\n(.*?)```", (REPO / page).read_text(), re.DOTALL)


def save_example(page, directory):
    """The page's one Python example, saved under the name the page gives it."""
    (code,) = python_blocks(page)
    name = EXAMPLES[page]
    assert f"`{name}`" in (REPO / page).read_text()  # the page says to save it so
    (directory / name).write_text(code)
    return name.removesuffix(".py")


def run_example(start_server, page, directory, how):
    """Start the server as the page says: `python example.py`, or gunicorn from the
    repository root with `example:create()`."""
    module = save_example(page, directory)
    if how == "python":
        return start_server(command=(f"{module}.py",), cwd=directory, PYTHONPATH=str(REPO))
    server = start_server(
        command=("-m", "gunicorn", "--workers", "1", "--pythonpath", str(directory))
        + (f"{module}:create()",),
        listening=GUNICORN_LISTENING,
    )
    server.wait_for("TWILIO_AUTH_TOKEN is not set")  # the worker has loaded the app
    return server


def test_every_example_is_run():
    pages = ["README.md", *(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
    with_examples = {page: len(python_blocks(page)) for page in pages if python_blocks(page)}
    assert with_examples == dict.fromkeys(EXAMPLES, 1)


@pytest.mark.parametrize("how", ["python", "gunicorn"])
def test_the_readme_handler_logs_each_key(start_server, tmp_path, how):
    server = run_example(start_server, "README.md", tmp_path, how)
    call = TwilioCall()
    ws = server.connect()
    for message in (call.connected(), call.start(), call.media(), call.dtmf("4"), call.stop()):
        ws.send(message)
    ws.close()
    server.summary(call)
    assert server.lines(f"[{call.tag}] caller pressed 4")


@pytest.mark.parametrize("how", ["python", "gunicorn"])
def test_the_handlers_example_logs_keys_and_keeps_the_callers_audio(start_server, tmp_path, how):
    server = run_example(start_server, "docs/handlers.md", tmp_path, how)
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
    server = run_example(start_server, "docs/talkback.md", tmp_path, "python")
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
