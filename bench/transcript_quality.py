"""How right the transcript is, and what each way of running Whisper costs.

    python bench/transcript_quality.py                   every choice, on both sets
    python bench/transcript_quality.py --choices shipped --sets evaluation --show

It needs requirements-transcribe.txt.

The evaluation set (tests/fixtures/evaluation.ulaw: two minutes of what a call centre
hears, names, numbers and addresses, in five espeak-ng voices at three speeds, through
mu-law as a call carries it) and the sentences fixture are cut at their sentences' times
as the server cuts utterances (PREROLL_FRAMES before, TAIL_FRAMES after), and each cut is
transcribed with the packaged tiny.en on one thread, one at a time. For each choice it
prints the word error rate (mediastream/wer.py) and the CPU seconds an utterance takes.
It prints figures; it is no test (tests/test_transcript.py checks the shipped choice's
word error rate stays under its bound).
"""

import argparse
import json
import sys
import time
from pathlib import Path

from faster_whisper import WhisperModel

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mediastream import g711  # noqa: E402
from mediastream.engines import Decoding, packaged_model, transcribe  # noqa: E402
from mediastream.g711 import CHUNK_SECONDS, SAMPLE_RATE  # noqa: E402
from mediastream.simulator import read_wav  # noqa: E402
from mediastream.transcript import PREROLL_FRAMES, TAIL_FRAMES  # noqa: E402
from mediastream.wer import word_error_rate  # noqa: E402

MODEL = packaged_model()
FIXTURES = REPO / "tests" / "fixtures"
SHIPPED = Decoding()

# name -> (decoding, compute type, preroll and tail in 20 ms frames)
PRE, TAIL = PREROLL_FRAMES, TAIL_FRAMES
CHOICES = {
    "before: linear, greedy": (Decoding("linear", 1, 0), "int8", PRE, TAIL),
    "pyav, greedy": (Decoding("pyav", 1, 0), "int8", PRE, TAIL),
    "linear, beam 5": (Decoding("linear", 5, 0), "int8", PRE, TAIL),
    "pyav, beam 5": (Decoding("pyav", 5, 0), "int8", PRE, TAIL),
    "pyav, beam 5, emphasis 0.8": (Decoding("pyav", 5, 0.8), "int8", PRE, TAIL),
    "pyav, beam 5, emphasis 0.6": (Decoding("pyav", 5, 0.6), "int8", PRE, TAIL),
    "pyav, greedy, emphasis 0.8": (Decoding("pyav", 1, 0.8), "int8", PRE, TAIL),
    "... previous text": (Decoding("pyav", 5, 0.8, True), "int8", PRE, TAIL),
    "... float32": (Decoding("pyav", 5, 0.8), "float32", PRE, TAIL),
    "... pre 0.1 s, tail 0.1 s": (Decoding("pyav", 5, 0.8), "int8", 5, 5),
    "... pre 0.5 s, tail 0.4 s": (Decoding("pyav", 5, 0.8), "int8", 25, 20),
}


def evaluation_set():
    """(pcm, sentences) of the evaluation set: the server's 16-bit PCM, as decoded."""
    manifest = json.loads((FIXTURES / "evaluation.json").read_text())
    return g711.decode((FIXTURES / "evaluation.ulaw").read_bytes()), manifest["sentences"]


def sentences_set():
    manifest = json.loads((FIXTURES / "sentences.json").read_text())
    return read_wav(FIXTURES / "sentences.wav"), manifest["sentences"]


SETS = {"evaluation": evaluation_set, "sentences": sentences_set}


def cuts(pcm, sentences, preroll, tail):
    """Each sentence's audio as the server would cut it: on 20 ms frames, a little more
    on either side."""
    frame_bytes = 2 * round(SAMPLE_RATE * CHUNK_SECONDS)
    for sentence in sentences:
        first = max(0, int(sentence["start"] / CHUNK_SECONDS) - preroll)
        last = int(sentence["end"] / CHUNK_SECONDS) + 1 + tail
        yield sentence["text"], pcm[first * frame_bytes : last * frame_bytes]


def evaluate(name, pcm, sentences):
    """(word error rate, CPU seconds an utterance) of one choice on one set."""
    decoding, compute_type, preroll, tail = CHOICES[name]
    model = WhisperModel(str(MODEL), device="cpu", compute_type=compute_type, cpu_threads=1)
    pairs, previous, started = [], None, time.process_time()
    for said, audio in cuts(pcm, sentences, preroll, tail):
        heard = transcribe(model, audio, decoding, prompt=previous)
        pairs.append((said, heard))
        previous = heard
    cpu = (time.process_time() - started) / len(pairs)
    return word_error_rate(pairs), cpu, pairs


def shipped_choice():
    """The name of the choice the server ships with."""
    return next(
        name
        for name, (decoding, compute, pre, tail) in CHOICES.items()
        if (decoding, compute, pre, tail) == (SHIPPED, "int8", PREROLL_FRAMES, TAIL_FRAMES)
    )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--choices", nargs="+", default=list(CHOICES), metavar="NAME")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--show", action="store_true", help="print each sentence heard wrong")
    arguments = parser.parse_args()
    names = [shipped_choice() if name == "shipped" else name for name in arguments.choices]
    unknown = set(names) - set(CHOICES)
    if unknown:
        parser.error(f"unknown choice {sorted(unknown)[0]!r}; the choices: {', '.join(CHOICES)}")
    for set_name in arguments.sets:
        pcm, sentences = SETS[set_name]()
        print(f"{set_name}: {len(sentences)} utterances, Whisper tiny.en, one thread")
        for name in names:
            rate, cpu, pairs = evaluate(name, pcm, sentences)
            shipped = " (shipped)" if name == shipped_choice() else ""
            print(f"  {name + shipped:40s} WER {100 * rate:5.1f}%   {cpu:.2f} s CPU an utterance")
            if arguments.show:
                for said, heard in pairs:
                    if word_error_rate([(said, heard)]):
                        print(f"      said: {said}\n     heard: {heard}")


if __name__ == "__main__":
    main()
