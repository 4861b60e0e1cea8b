"""The README's examples, run as they are written there."""

import json
import re

from conftest import FIXTURES, REPO

from mediastream import g711
from mediastream.simulator import TwilioCall, mulaw_chunks, read_wav


def readme_example(heading):
    """The first Python block after `heading` in the README."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index(f"\n{heading}\n") :]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_the_build_on_it_example_logs_keys_and_keeps_the_callers_audio(start_server, tmp_path):
    (tmp_path / "keylogger.py").write_text(readme_example("## Build on it: handlers"))
    server = start_server(command=("keylogger.py",), cwd=tmp_path, PYTHONPATH=str(REPO))
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
    saved = tmp_path / f"{call.stream_sid}-caller.pcm"
    assert server.lines(f"[{call.tag}] caller's audio in {saved.name}")
    assert saved.read_bytes() == g711.decode(b"".join(caller))


def test_the_talk_back_example_beeps_for_each_key(start_server, tmp_path):
    (tmp_path / "beeper.py").write_text(readme_example("## Talk back: bidirectional streams"))
    server = start_server(command=("beeper.py",), cwd=tmp_path, PYTHONPATH=str(REPO))
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
