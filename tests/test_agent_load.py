"""Agent calls under load: an agent's caller is never skipped for the transcription
backlog (transcripts nobody waits for are skipped first). The real server, the simulator's
calls at once, tests/openai_stub.py as the transcription server (slow, one at a time), the
model and the voice."""

import re

import requests
from conftest import caller_wav, finished, simulate, stand_ins, start_simulation


def test_every_agent_caller_is_answered_when_the_backlog_is_full(
    start_server, fresh_stub, tmp_path
):
    # One transcription at a time, 0.8 s each, and room for 1 s of audio waiting: past
    # it, the one-way calls' utterances (1.5 s each) are skipped; the agents' never.
    fresh_stub.control(transcription={"delay": 0.8}, answer="Sure.")
    server = stand_ins(
        start_server,
        fresh_stub,
        TRANSCRIBE_CONCURRENCY="1",
        TRANSCRIBE_BACKLOG_SECONDS="1",
    )
    wav = caller_wav(tmp_path / "caller.wav", [(3.0, 4.5)], 10)
    one_way = start_simulation(server, "--calls", "2", "--wav", str(wav))
    status, report = simulate(server, "--calls", "3", "--param", "mode=agent", "--wav", str(wav))
    assert status == 0, report
    assert finished(one_way)[0] == 0
    server.wait_for(r"(?s)(summary: .*){5}", timeout=20)
    log = server.log()
    agents = set(re.findall(r"\[(\w{8})\] start: .*mode agent", log))
    assert len(agents) == 3
    for tag in agents:
        assert re.search(rf"\[{tag}\] agent: turn 1: voice to voice", log), log
        assert f"[{tag}] transcript: 1 utterance transcribed, 0 skipped" in log
    assert log.count("transcript: 0 utterances transcribed, 1 skipped") == 2
    assert len(re.findall(r"WARNING \[\w{8}\]", log)) == 2, log
    assert "skipping utterances (the call goes on)" in log
    metrics = requests.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5).text
    skipped = 'mediastream_utterances_untranscribed_total{stream="other",why="backlog"} 2.0'
    assert skipped in metrics
    assert 'stream="agent"' not in metrics
    assert re.search(r"mediastream_transcription_backlog_seconds [0-9.e-]+", metrics)[0] == (
        "mediastream_transcription_backlog_seconds 0.0"
    )
