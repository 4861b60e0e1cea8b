"""A handler: keyword alerts. Each utterance is matched against KEYWORDS as it arrives.

KEYWORDS lists words or phrases, comma-separated (`KEYWORDS="refund, cancel, credit card"`),
matched in any case, as whole words, with a phrase matching across spaces and hyphens
("credit-card"). A keyword's last word also matches its -s, -es, -ed and -ing forms, as
English spells them: "refund" matches "refunds", "refunded" and "refunding"; "cancel"
"cancelled" and "canceling"; "charge" "charging"; "delivery" "deliveries"; "credit card"
"credit cards". Nothing else: "refundable" is not "refund", "card" is not in "cardboard".
Each keyword found in an utterance (once per utterance, however often it is said there)
is marked in the utterance's console line (`*refund*`), counted in
`mediastream_keyword_hits_total{keyword=...}`, and put in the utterance's `.keywords`, so
that the transcript file, the JSON logs and the handlers after this one see it. At the
end, one line counts the hits per keyword and track.
"""

import functools
import logging
import re
from collections import Counter

from mediastream.engines import transcribing
from mediastream.handlers import Handler
from mediastream.metrics import KEYWORD_HITS

startup = logging.getLogger("mediastream.startup")


def word_forms(word):
    """A word and its -s, -es, -ed and -ing forms, as English spells them."""
    forms = {word, word + "s", word + "es", word + "ed", word + "ing"}
    if word.endswith("e"):  # charge: charged, charging
        forms |= {word + "d", word[:-1] + "ing"}
    if len(word) > 1 and word[-1] == "y" and word[-2] not in "aeiou":  # delivery: deliveries
        forms |= {word[:-1] + "ies", word[:-1] + "ied"}
    if (
        len(word) > 2
        and word[-1] not in "aeiouwxy"
        and word[-2] in "aeiou"
        and word[-3] not in "aeiou"
    ):
        forms |= {word + word[-1] + "ed", word + word[-1] + "ing"}  # cancelled, stopping
    return forms


@functools.cache
def keyword_pattern(keyword):
    """A keyword (lower case, single spaces) as a regular expression for whole words, its
    last word in any of its forms."""
    *words, last = keyword.split(" ")
    forms = "|".join(sorted(map(re.escape, word_forms(last)), key=len, reverse=True))
    words = r"[\s-]+".join([*map(re.escape, words), f"(?:{forms})"])
    return re.compile(rf"(?<!\w){words}(?!\w)", re.IGNORECASE)


def find_keywords(keywords, text):
    """The keywords said in `text`, in the order they were configured."""
    return [keyword for keyword in keywords if keyword_pattern(keyword).search(text)]


def marked(text, keywords):
    """`text` with each place it says one of `keywords` marked, *like this*."""
    spans = sorted(
        match.span() for keyword in keywords for match in keyword_pattern(keyword).finditer(text)
    )
    pieces, at = [], 0
    for start, end in spans:
        if start < at:  # inside one marked already ("credit card" and "card")
            start = at
        if end > at:
            pieces += [text[at:start], "*", text[start:end], "*"]
            at = end
    return "".join(pieces) + text[at:]


class Keywords(Handler):
    """A handler: a line for each keyword an utterance contains (with KEYWORDS set)."""

    may_block = False  # a few regular expressions over a sentence: microseconds

    @classmethod
    def enabled(cls, config):
        if not config.keywords:
            return False
        if not transcribing(config):
            startup.warning("KEYWORDS is set, but there are no transcripts (TRANSCRIBE) to match")
            return False
        return True

    def __init__(self, config):
        super().__init__(config)
        self.hits = Counter()  # (keyword, track) -> utterances
        for keyword in config.keywords:  # each configured keyword shows in /metrics, at 0
            KEYWORD_HITS.labels(keyword)

    def utterance(self, stream, utterance):
        utterance.keywords = find_keywords(self.config.keywords, utterance.text)
        for keyword in utterance.keywords:
            self.hits[keyword, utterance.track] += 1
            KEYWORD_HITS.labels(keyword).inc()

    def end(self, stream, ended_by):
        counts = {}
        for (keyword, track), count in self.hits.items():
            counts.setdefault(keyword, {})[track] = count
        said = "; ".join(
            f'"{keyword}" ' + ", ".join(f"{track} {n}" for track, n in tracks.items())
            for keyword, tracks in counts.items()
        )
        stream.log.info(
            "keywords: %s",
            said or "none heard",
            extra={"event": "keywords", "figures": counts},
        )
