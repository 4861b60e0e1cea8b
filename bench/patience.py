"""A caller who pauses mid-sentence: is an answer heard in the pause, what does the model
get, and how soon is the turn answered? Before and after, side by side.

    .venv/bin/python bench/patience.py --app ../before/app.py     this checkout against another

Plays each turn of tests/fixtures/pauses.json (20 turns said in two halves: ten split
after a word no sentence ends with, ten between complete sentences) as a call of its own
into each server in turn (`python app.py` with TRANSCRIBE=local: Whisper hears the
caller; the stand-in model and voice of tests/openai_stub.py answer at once). For each
turn it prints, per server: whether any answer audio reached the caller in the pause
(from what the simulator played out as Twilio would), the clears sent, the word error
rate of what the model got (the call's user messages) against the whole turn, the
voice to voice at the end of the turn (its second half's end to the first answer audio
after it), and how many times the engine ran (each early transcription counts). It
prints figures; it is no test.
"""

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import wave
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent import start  # noqa: E402 (bench/agent.py, beside this one)

from mediastream.wer import word_error_rate  # noqa: E402
from tests.conftest import split_turn_wav  # noqa: E402

FIXTURE = REPO / "tests" / "fixtures" / "pauses.json"
BEFORE = 3.5  # seconds of silence before the turn: the greeting plays
AFTER = 5.0  # after it: the answer, heard out
# The server, with each run of the transcription engine said on the console (both
# servers alike, whatever their code).
COUNTING = (
    "import runpy, sys, mediastream.engines as engines\n"
    "submit = engines.Engine.submit\n"
    "def counted(self, *args, **options):\n"
    "    print('engine run', flush=True)\n"
    "    return submit(self, *args, **options)\n"
    "engines.Engine.submit = counted\n"
    "sys.argv = [sys.argv[1]]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def loud_at(pcm, start, end):
    """The first moment from `start` to `end` (seconds) the caller heard anything, or None."""
    samples = memoryview(pcm).cast("h")
    for n in range(int(start * 8000), min(int(end * 8000), len(samples) - 80), 80):
        if max(map(abs, samples[n : n + 80])) > 500:
            return n / 8000
    return None


def measure(app, turns, stub, work, name):
    """Each turn's figures on the server `app`."""
    environ = {**os.environ, "HOST": "127.0.0.1", "PORT": "0", "TRANSCRIBE": "local"}
    environ.update(AGENT=f"{stub}/v1", SPEAK=f"{stub}/v1")
    log = open(work / f"{name}.log", "w")
    server, found = start(
        [sys.executable, "-c", COUNTING, str(app)],
        environ,
        r"listening on [\d.]+:(\d+)",
        log,
        cwd=Path(app).parent,
    )
    rows = []
    try:
        for n, turn in enumerate(turns):
            wav, heard = work / f"turn-{n}.wav", work / f"{name}-heard-{n}.wav"
            split_turn_wav(wav, n, BEFORE, AFTER)
            asked = len(json.load(urllib.request.urlopen(f"{stub}/requests")))
            before = len((work / f"{name}.log").read_text())
            subprocess.run(
                [sys.executable, "simulate.py", "--url", f"ws://127.0.0.1:{found[1]}/media",
                 "--param", "mode=agent", "--wav", str(wav), "--output", str(heard),
                 "--linger", "1"],
                cwd=REPO, check=True, capture_output=True,
            )  # fmt: skip
            time.sleep(1.5)  # the summary
            console = (work / f"{name}.log").read_text()[before:]
            requests = json.load(urllib.request.urlopen(f"{stub}/requests"))[asked:]
            rows.append(figures(turn, heard, console, requests))
    finally:
        server.terminate()
        server.wait(30)
    return rows


def figures(turn, heard, console, requests):
    first, second = turn["halves"]
    first_end = BEFORE + first["seconds"]
    second_start = first_end + turn["pause"]
    second_end = second_start + second["seconds"]
    with wave.open(str(heard)) as wav:
        pcm = wav.readframes(wav.getnframes())
    answered = loud_at(pcm, second_end, second_end + AFTER)
    said = (
        [m["content"] for m in requests[-1]["messages"] if m["role"] == "user"] if requests else []
    )
    clears = re.search(r"; (\d+) clears?", console)
    return {
        "in_pause": loud_at(pcm, first_end + 0.05, second_start) is not None,
        "clears": int(clears[1]) if clears else -1,
        "model_got": " / ".join(said),
        "wer": word_error_rate([(f"{first['text']} {second['text']}", " ".join(said))]),
        "voice_to_voice": None if answered is None else answered - second_end,
        "runs": console.count("engine run"),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", required=True, help="the other checkout's app.py (before)")
    arguments = parser.parse_args()
    manifest = json.loads(FIXTURE.read_text())
    work = Path(tempfile.mkdtemp(prefix="patience-"))
    stub_process, found = start(
        [sys.executable, "tests/openai_stub.py"],
        dict(os.environ),
        r"listening on (\S+)",
        open(work / "stub.log", "w"),
    )
    stub = f"http://{found[1]}"
    urllib.request.urlopen(f"{stub}/control", json.dumps({"answer": "Sure."}).encode()).close()
    try:
        servers = {"before": Path(arguments.app).resolve(), "after": REPO / "app.py"}
        results = {name: measure(app, manifest["turns"], stub, work, name)
                   for name, app in servers.items()}  # fmt: skip
    finally:
        stub_process.terminate()
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    print(
        f"{cpu[1] if cpu else '?'}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}; before: {servers['before']}"
    )
    print(
        "| turn | pause | answer in the pause (before, after) | clears | WER of what the model "
        "got | voice to voice (s) | engine runs |"
    )
    print("|---|---|---|---|---|---|---|")
    for n, turn in enumerate(manifest["turns"]):
        b, a = results["before"][n], results["after"][n]
        text = " ... ".join(half["text"] for half in turn["halves"])
        v2v = " → ".join("none" if r["voice_to_voice"] is None else f"{r['voice_to_voice']:.2f}"
                         for r in (b, a))  # fmt: skip
        print(
            f"| {text} | {turn['pause']:.1f} | {'yes' if b['in_pause'] else 'no'} → "
            f"{'yes' if a['in_pause'] else 'no'} | {b['clears']} → {a['clears']} | "
            f"{b['wer']:.0%} → {a['wer']:.0%} | {v2v} | {b['runs']} → {a['runs']} |"
        )
    for split, kind in ((True, "split mid-sentence"), (False, "complete halves")):
        print(f"\n{kind}:")
        for name in ("before", "after"):
            rows = [r for r, t in zip(results[name], manifest["turns"], strict=True)
                    if t["split"] == split]  # fmt: skip
            v2v = [r["voice_to_voice"] for r in rows if r["voice_to_voice"] is not None]
            print(
                f"  {name}: answer in the pause {sum(r['in_pause'] for r in rows)} of "
                f"{len(rows)}; clears {sum(r['clears'] for r in rows)}; WER "
                f"{statistics.mean(r['wer'] for r in rows):.1%}; voice to voice mean "
                f"{statistics.mean(v2v):.2f} s, median {statistics.median(v2v):.2f} s; "
                f"engine runs {sum(r['runs'] for r in rows)}"
            )
    for name in ("before", "after"):
        print(f"\nwhat the model got, {name}:")
        for row in results[name]:
            print(f"  {row['model_got']}")
    print(f"consoles: {work}")


if __name__ == "__main__":
    main()
