"""A handler: the sentiment of each utterance, with VADER, and a summary per track.

VADER (`vaderSentiment`) is the standard lexicon-and-rule sentiment model for short,
informal English: its lexicon ships inside the package, nothing is fetched, and a
sentence takes well under a millisecond. Each utterance gets its compound score, from -1
(most negative) to +1 (most positive), in `.sentiment`, so that the transcript file, the
JSON logs and the handlers after this one see it; the usual reading is negative below
-0.05, positive above +0.05, neutral between. At the end, a line per track: the average,
and the lowest utterance with its time. On whenever transcripts are; SENTIMENT=off turns
it off.
"""

import functools

from mediastream.console import counted
from mediastream.handlers import Handler
from mediastream.speech import clock
from mediastream.transcript import Transcript

NEUTRAL = 0.05  # VADER's usual cut-off: |compound| below it is neutral


@functools.cache
def analyzer():
    """VADER's analyzer, its lexicon read once per process."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def score(text):
    """VADER's compound score of `text`, -1 to 1."""
    return analyzer().polarity_scores(text)["compound"]


def reading(compound):
    if compound >= NEUTRAL:
        return "positive"
    return "negative" if compound <= -NEUTRAL else "neutral"


class Sentiment(Handler):
    """A handler: each utterance's sentiment, and each track's at the end."""

    may_block = False  # microseconds a sentence

    @classmethod
    def enabled(cls, config):
        return config.sentiment and Transcript.enabled(config)

    def __init__(self, config):
        super().__init__(config)
        self.scored = {}  # track -> [(score, utterance)]

    def utterance(self, stream, utterance):
        utterance.sentiment = score(utterance.text)
        self.scored.setdefault(utterance.track, []).append((utterance.sentiment, utterance))

    def end(self, stream, ended_by):
        figures = {}
        for track, scored in self.scored.items():
            average = sum(compound for compound, _ in scored) / len(scored)
            lowest, utterance = min(scored, key=lambda pair: pair[0])
            figures[track] = {
                "average": round(average, 3),
                "utterances": len(scored),
                "lowest": round(lowest, 3),
                "lowest_at": round(utterance.start, 2),
            }
            stream.log.info(
                'sentiment: %s average %+.2f (%s) over %s; lowest %+.2f at %s: "%s"',
                track,
                average,
                reading(average),
                counted(len(scored), "utterance"),
                lowest,
                clock(utterance.start),
                utterance.text,
                extra={"event": "sentiment", "figures": figures[track]},
            )
