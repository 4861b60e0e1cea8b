"""A handler: keyword alerts. Each utterance is matched against KEYWORDS as it arrives.

KEYWORDS lists words or phrases, comma-separated (`KEYWORDS="refund, cancel, credit card"`),
matched in any case, as whole words: "card" is not in "cards", and a phrase matches across
spaces and hyphens ("credit-card"). Each keyword found in an utterance (once per utterance,
however often it is said there) gets a console line, a count in
`mediastream_keyword_hits_total{keyword=...}`, and its place in the utterance's
`.keywords`, so that the transcript file, the JSON logs and the handlers after this one
see it. At the end, one line counts the hits per keyword and track.
"""

import logging
import re
from collections import Counter

from mediastream.handlers import Handler
from mediastream.metrics import KEYWORD_HITS
from mediastream.speech import clock
from mediastream.transcript import Transcript

startup = logging.getLogger("mediastream.startup")


def keyword_pattern(keyword):
    """A keyword (lower case, single spaces) as a regular expression for whole words."""
    words = r"[\s-]+".join(re.escape(word) for word in keyword.split(" "))
    return re.compile(rf"(?<!\w){words}(?!\w)", re.IGNORECASE)


def find_keywords(patterns, text):
    """The keywords whose pattern is in `text`, in the order they were configured."""
    return [keyword for keyword, pattern in patterns.items() if pattern.search(text)]


class Keywords(Handler):
    """A handler: a line for each keyword an utterance contains (with KEYWORDS set)."""

    may_block = False  # a few regular expressions over a sentence: microseconds

    @classmethod
    def enabled(cls, config):
        if not config.keywords:
            return False
        if not Transcript.enabled(config):
            startup.warning("KEYWORDS is set, but there are no transcripts (TRANSCRIBE) to match")
            return False
        return True

    def __init__(self, config):
        super().__init__(config)
        self.patterns = {keyword: keyword_pattern(keyword) for keyword in config.keywords}
        self.hits = Counter()  # (keyword, track) -> utterances
        for keyword in config.keywords:  # each configured keyword shows in /metrics, at 0
            KEYWORD_HITS.labels(keyword)

    def utterance(self, stream, utterance):
        utterance.keywords = find_keywords(self.patterns, utterance.text)
        for keyword in utterance.keywords:
            self.hits[keyword, utterance.track] += 1
            KEYWORD_HITS.labels(keyword).inc()
            stream.log.info(
                'keyword "%s": %s %s: "%s"',
                keyword,
                utterance.track,
                clock(utterance.start),
                utterance.text,
                extra={"event": "keyword", "figures": {"keyword": keyword, **utterance.figures()}},
            )

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
