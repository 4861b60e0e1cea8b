"""Word error rate: how far a transcript is from what was said, for the transcript's
evaluation (bench/transcript_quality.py) and its tests.

Both texts are normalised first, so that only words count, not how they are written:
lower case, no punctuation, contractions spelled out ("I'm" as "i am"), numbers as digits
("twenty two" and "22" alike, "five five five, one two three" and "555-123" alike).
"""

import re

CONTRACTIONS = {
    "i'm": "i am", "i've": "i have", "i'd": "i would", "i'll": "i will", "it's": "it is",
    "that's": "that is", "didn't": "did not", "don't": "do not", "can't": "cannot",
    "won't": "will not", "we've": "we have", "you're": "you are", "what's": "what is",
}  # fmt: skip
UNITS = "zero one two three four five six seven eight nine ten eleven twelve thirteen \
fourteen fifteen sixteen seventeen eighteen nineteen".split()
TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
VALUES = {word: n for n, word in enumerate(UNITS)} | {w: 20 + 10 * n for n, w in enumerate(TENS)}


def words(text):
    """The words of `text`, normalised (see the module's docstring)."""
    text = text.lower().replace("’", "'").replace("-", " ")
    text = re.sub(r"(\d),(\d)", r"\1\2", text)  # 1,000
    tokens = re.findall(r"[a-z0-9']+", text)
    tokens = " ".join(CONTRACTIONS.get(token, token) for token in tokens).split()
    return _join_digits(_numbers_as_digits([token.strip("'") for token in tokens]))


def _numbers_as_digits(tokens):
    """Spelled-out numbers as digits: "two thousand nineteen" as 2019."""
    out, number = [], None
    for token in tokens:
        if token in VALUES and number is not None and _continues(number, VALUES[token]):
            number += VALUES[token]
        elif token in ("hundred", "thousand") and number is not None:
            number *= 100 if token == "hundred" else 1000
        else:
            if number is not None:
                out.append(str(number))
            number = VALUES.get(token)
            if number is None:
                out.append(token)
    return out + ([str(number)] if number is not None else [])


def _continues(number, value):
    """Whether `value` goes on `number`: 2000 then 19, 20 then 2; not 19 then 85."""
    return (
        number > 0 and number % 100 == 0 or (number % 100 >= 20 and number % 10 == 0 and value < 10)
    )


def _join_digits(tokens):
    """Numbers said one after another as one: "555 123 4567" and "5551234567" alike."""
    out = []
    for token in tokens:
        if token.isdigit() and out and out[-1].isdigit():
            out[-1] += token
        else:
            out.append(token)
    return out


def edits(reference, hypothesis):
    """Word-level edit distance (substitutions, insertions, deletions)."""
    previous = list(range(len(hypothesis) + 1))
    for i, word in enumerate(reference, 1):
        current = [i]
        for j, heard in enumerate(hypothesis, 1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != heard))
            )
        previous = current
    return previous[-1]


def word_error_rate(pairs):
    """Over (said, heard) text pairs: all the edits over all the words said."""
    pairs = [(words(said), words(heard)) for said, heard in pairs]
    return sum(edits(said, heard) for said, heard in pairs) / sum(len(said) for said, _ in pairs)
