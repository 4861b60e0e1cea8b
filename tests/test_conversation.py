"""The conversation on the handler seam: utterance events, keyword alerts and sentiment,
on plain utterances (no engine, no sockets)."""

import logging

import gevent
import pytest

from mediastream.config import Config
from mediastream.handlers import Handler, StreamHandlers
from mediastream.keywords import Keywords, find_keywords, marked
from mediastream.metrics import KEYWORD_HITS
from mediastream.sentiment import Sentiment, score
from mediastream.stream import MediaStream
from mediastream.transcript import Utterance

KEYWORDS = ("refund", "credit card", "cancel")


def said(text, track="inbound", start=3.5):
    return Utterance(track, start, start + 2.0, text, latency=0.8)


@pytest.mark.parametrize(
    "text, found",
    [
        ("I want a refund.", ["refund"]),
        ("REFUND, please", ["refund"]),
        ("my refunds ever came", ["refund"]),  # a word's forms: -s, -es, -ed, -ing
        ("it was refunded, or is refunding", ["refund"]),
        ("a non-refundable fare", []),  # whole words: nothing else
        ("refunder", []),
        ("my credit card was charged", ["credit card"]),
        ("my Credit-Card was charged", ["credit card"]),
        ("the credit  card", ["credit card"]),
        ("two credit cards", ["credit card"]),  # a phrase's last word
        ("credits card", []),  # not its other words
        ("credit on the card", []),
        ("they cancelled it", ["cancel"]),
        ("canceling, cancels", ["cancel"]),
        ("Cancel it and refund me; cancel!", ["refund", "cancel"]),  # each once
        ("", []),
    ],
)
def test_keywords_are_whole_words_and_phrases_in_any_case(text, found):
    assert find_keywords(KEYWORDS, text) == found


@pytest.mark.parametrize(
    "word, spoken",
    [
        ("charge", ["charges", "charged", "charging"]),
        ("delivery", ["deliveries"]),
        ("stop", ["stops", "stopped", "stopping"]),
        ("fix", ["fixes", "fixed", "fixing"]),
    ],
)
def test_each_form_english_spells(word, spoken):
    for text in spoken:
        assert find_keywords((word,), f"it {text} now") == [word]


def test_the_keywords_are_marked_where_they_are_said():
    text = "Refunds for two credit cards? No refund."
    assert marked(text, KEYWORDS) == "*Refunds* for two *credit cards*? No *refund*."
    assert marked(text, ["card", "credit card"]) == "Refunds for two *credit cards*? No refund."
    assert marked(text, []) == text


@pytest.mark.parametrize(
    "text",
    [
        "Thank you so much, that was really helpful!",
        "Great, I love it, everything works perfectly now.",
    ],
)
def test_clearly_positive_sentences_score_positive(text):
    assert score(text) > 0.05


@pytest.mark.parametrize(
    "text",
    [
        "This is terrible, I am very angry with your service.",
        "I hate waiting, this is the worst support ever.",
    ],
)
def test_clearly_negative_sentences_score_negative(text):
    assert score(text) < -0.05


def make(*factories, **settings):
    stream = MediaStream("127.0.0.1:1")
    stream.stream_sid = "MZ" + "0" * 24 + "abcd1234"
    return StreamHandlers(stream, factories, Config(**settings))


def test_keywords_handler_finds_them_in_each_utterance_and_counts_at_the_end(caplog):
    caplog.set_level(logging.INFO)
    handlers = make(Keywords, keywords=KEYWORDS)
    before = KEYWORD_HITS.labels("refund")._value.get()
    for utterance in (said("I need a refund for my credit card."), said("Refund it.", "outbound")):
        handlers.utterance(utterance)
    handlers.end("stop")
    assert utterance.keywords == ["refund"]
    lines = [record.getMessage() for record in caplog.records]
    assert lines == ['[abcd1234] keywords: "refund" inbound 1, outbound 1; "credit card" inbound 1']
    assert KEYWORD_HITS.labels("refund")._value.get() == before + 2


def test_sentiment_scores_each_utterance_and_sums_up_each_track(caplog):
    caplog.set_level(logging.INFO)
    handlers = make(Sentiment)
    happy, angry = said("Thank you, that is great!", start=1.0), said("This is awful.", start=6.5)
    for utterance in (happy, angry):
        handlers.utterance(utterance)
    handlers.end("stop")
    assert happy.sentiment > 0.05 > -0.05 > angry.sentiment
    (line,) = [record.getMessage() for record in caplog.records]
    average = (happy.sentiment + angry.sentiment) / 2
    assert line.startswith(f"[abcd1234] sentiment: inbound average {average:+.2f}")
    assert line.endswith(
        f'over 2 utterances; lowest {angry.sentiment:+.2f} at 00:06.5: "This is awful."'
    )


def test_the_utterance_file_line_has_what_the_handlers_found():
    utterance = said("I want a refund, this is awful.")
    make(Keywords, Sentiment, keywords=KEYWORDS).utterance(utterance)
    figures = utterance.figures()
    assert figures["keywords"] == ["refund"] and figures["sentiment"] < 0
    assert {key: figures[key] for key in ("track", "start", "end", "latency")} == {
        "track": "inbound",
        "start": 3.5,
        "end": 5.5,
        "latency": 0.8,
    }
    assert "keywords" not in said("Hello.").figures()  # nothing found, nothing said


class Listener(Handler):
    """Notes each utterance, and the end; waits on the first as a slow service would."""

    def __init__(self, config):
        super().__init__(config)
        self.heard = []

    def utterance(self, stream, utterance):
        if not self.heard:
            gevent.sleep(0.2)
        self.heard.append((utterance.text, list(utterance.keywords)))

    def end(self, stream, ended_by):
        self.heard.append(("end", ended_by))


class Producer(Handler):
    """Passes on one utterance when the stream ends, as the transcript does."""

    may_block = False

    def finish(self, stream):
        stream.handlers.utterance(said("Last words: cancel."))


def test_utterances_reach_every_handler_in_order_and_the_last_ones_before_end():
    handlers = make(Producer, Keywords, Listener, keywords=KEYWORDS)
    handlers.utterance(said("First, a refund."))
    handlers.utterance(said("Then nothing."))
    handlers.end("stop")
    (listener,) = [lane.handler for lane in handlers.lanes]
    assert listener.heard == [
        ("First, a refund.", ["refund"]),  # Keywords, before it in the list, had marked it
        ("Then nothing.", []),
        ("Last words: cancel.", ["cancel"]),
        ("end", "stop"),
    ]


class Raising(Handler):
    may_block = False

    def utterance(self, stream, utterance):
        raise RuntimeError("no")


def test_a_handler_that_raises_in_utterance_is_isolated(caplog):
    handlers = make(Raising, Keywords, keywords=KEYWORDS)
    first, second = said("refund one"), said("refund two")
    handlers.utterance(first)
    handlers.utterance(second)
    handlers.end("stop")
    assert first.keywords == second.keywords == ["refund"]
    assert handlers.stream.handler_problems == {"Raising": "failed in utterance()"}


def test_one_utterance_is_one_not_ones(caplog):
    caplog.set_level(logging.INFO)
    handlers = make(Sentiment)
    handlers.utterance(said("Fine."))
    handlers.end("stop")
    assert "over 1 utterance; lowest" in caplog.records[0].getMessage()
