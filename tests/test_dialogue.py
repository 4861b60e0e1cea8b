"""The agent's conversation with no I/O: history, sentences, what the caller heard; and
the audio a voice server sends, resampled to the phone's rate."""

import struct

import numpy
import pytest

from mediastream.apiclient import ServiceFailed, error_message
from mediastream.chat import ToolCall, ToolCallParts, _choice
from mediastream.dialogue import Conversation, Playback, Sentences, speakable, words_within
from mediastream.voices import PhoneAudio, wav_format


def test_a_turn_the_caller_goes_on_with_joins_their_last_message():
    conversation = Conversation("Be brief.", 1000)
    conversation.answered("Hello! How can I help?", greeting=True)
    conversation.caller_said("I would like to book a table")
    conversation.answered("")  # cut before a word of it was heard
    conversation.caller_said("for two people.", joins=True)
    conversation.caller_said("Hello?")  # a turn of its own (the answer failed)
    assert conversation.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "I would like to book a table for two people."},
        {"role": "user", "content": "Hello?"},
    ]


@pytest.mark.parametrize(
    "tokens, sentences",
    [
        (["Hello", "!", " How", " can", " I", " help?"], ["Hello!", "How can I help?"]),
        (["We open at 9.30", " on Saturday. ", "Bye."], ["We open at 9.30 on Saturday.", "Bye."]),
        (["Ask Dr. Smith", " today. Ok"], ["Ask Dr. Smith today.", "Ok"]),
        (["**Sure**, here", " is:\n", "- one"], ["Sure, here is:", "- one"]),
        (
            ["Well, I am sorry to hear", " that, truly. Bye."],
            ["Well, I am sorry to hear that,", "truly.", "Bye."],
        ),
        (["Yes, it is, we open at nine."], ["Yes, it is, we open at nine."]),
        (['He said "no." Then', " left."], ['He said "no."', "Then left."]),
        ([], []),
    ],
)
def test_sentences_are_cut_as_the_model_finishes_them(tokens, sentences):
    cutter = Sentences()
    done = [sentence for token in tokens for sentence in cutter.add(token)]
    assert done + cutter.finish() == sentences


def test_the_first_sentence_is_ready_before_the_answer_ends():
    cutter = Sentences()
    assert cutter.add("We open at nine.") == []  # it may go on: "nine.5"? wait for a space
    assert cutter.add(" On") == ["We open at nine."]


def test_markdown_is_not_read_out():
    assert speakable("## **Bold** and `code` and [a link](http://x)") == "Bold and code and a link"


def sent(*pieces):
    """A Playback of (text, sent at, seconds of audio, mark or None while it is sent)."""
    playback = Playback()
    for text, sent_at, seconds, mark in pieces:
        playback.begin_piece(text, now=sent_at)
        playback.add_audio(seconds)
        if mark:
            playback.end_piece(mark)
    return playback


def test_what_was_heard_counts_whole_pieces_and_the_words_played_of_the_next():
    playback = sent(
        ("You asked about Saturday.", 10.0, 1.2, "agent-1"),
        ("We open at nine and close at five.", 10.1, 2.4, "agent-2"),
    )
    assert playback.audible and not playback.all_played
    assert playback.heard(now=10.3) == "You"  # a quarter of the first piece, by characters
    playback.played("agent-1", now=11.2)
    # The second piece began when the first ended (11.2), not when it was sent (10.1).
    assert playback.heard(now=11.2) == "You asked about Saturday."
    assert playback.heard(now=12.4) == "You asked about Saturday. We open at nine"
    playback.played("agent-2", now=13.6)
    assert playback.all_played
    assert playback.heard(now=99) == playback.text()


def test_a_piece_sent_after_the_one_before_ended_starts_when_sent():
    playback = sent(("One.", 0.0, 0.5, "a"))
    playback.played("a", now=0.5)
    playback.begin_piece("Two three four.", now=2.0)  # the voice was slow
    playback.add_audio(1.5)
    assert playback.heard(now=2.1) == "One."
    assert playback.heard(now=3.4) == "One. Two three"


@pytest.mark.parametrize(
    "fraction, words",
    [(0, ""), (0.2, "We"), (0.5, "We open"), (0.7, "We open at"), (1.0, "We open at nine.")],
)
def test_words_within_a_fraction_of_a_sentence(fraction, words):
    assert words_within("We open at nine.", fraction) == words


def test_chat_chunks_and_whole_completions_give_their_text():
    chunk = '{"choices":[{"delta":{"content":"Hi"},"finish_reason":null}]}'
    assert _choice(chunk, "delta") == {"content": "Hi"}
    assert _choice('{"choices":[],"usage":{"total_tokens":3}}', "delta") == {}
    whole = '{"choices":[{"message":{"role":"assistant","content":"Hello."}}]}'
    assert _choice(whole, "message")["content"] == "Hello."


def test_streamed_tool_calls_are_put_together_by_index():
    # As OpenAI streams two calls: each call's id and name first, its arguments in pieces,
    # the second call's pieces after the first's (vLLM and llama.cpp's server alike).
    deltas = [
        [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "order_status"}}],
        [{"index": 0, "function": {"arguments": '{"order'}}],
        [{"index": 0, "function": {"arguments": '_id": "4572"}'}}],
        [{"index": 1, "id": "call_2", "type": "function", "function": {"name": "end_call"}}],
        [{"index": 1, "function": {"arguments": "{}"}}],
    ]
    parts = ToolCallParts()
    for delta in deltas:
        parts.add(delta)
    assert parts.calls() == [
        ToolCall("call_1", "order_status", '{"order_id": "4572"}'),
        ToolCall("call_2", "end_call", "{}"),
    ]


@pytest.mark.parametrize(
    "data, kind, says",
    [
        ("not json", "bad answer", "not a chat completion: not json"),
        ('{"choices": 3}', "bad answer", "not a chat completion"),
        ('{"error": {"message": "context too long"}}', "error", "the model said: context too"),
    ],
)
def test_a_chunk_that_is_not_one_says_what_it_was(data, kind, says):
    with pytest.raises(ServiceFailed) as failure:
        _choice(data, "delta")
    assert failure.value.kind == kind and says in str(failure.value)


def test_error_bodies_give_their_message_cut_short():
    assert error_message('{"error": {"message": "Invalid API key"}}') == "Invalid API key"
    assert error_message('{"detail": "Not Found"}') == "Not Found"
    assert error_message("") == "(no body)"
    assert len(error_message("x" * 1000)) == 160


def tone(rate, seconds=1.0, frequency=440.0, channels=1):
    t = numpy.arange(int(rate * seconds)) / rate
    samples = (8000 * numpy.sin(2 * numpy.pi * frequency * t)).astype(numpy.int16)
    return numpy.repeat(samples, channels).tobytes()


def peak_frequency(pcm, rate=8000):
    samples = numpy.frombuffer(pcm, numpy.int16).astype(float)
    return numpy.argmax(numpy.abs(numpy.fft.rfft(samples))) * rate / len(samples)


def wav_header(rate, channels, length):
    fmt = struct.pack("<IHHIIHH", 16, 1, channels, rate, 2 * channels * rate, 2 * channels, 16)
    riff = b"RIFF" + struct.pack("<I", 36 + length) + b"WAVEfmt " + fmt
    return riff + b"data" + struct.pack("<I", length)


@pytest.mark.parametrize("piece", [1, 7, 4800])  # bytes at a time, odd ones too
def test_pcm_at_24_khz_comes_out_at_8_khz_whatever_the_pieces(piece):
    pcm = tone(24000)
    audio = PhoneAudio()
    out = b"".join(audio.add(pcm[n : n + piece]) for n in range(0, len(pcm), piece))
    out += audio.finish()
    assert abs(len(out) - 2 * 8000) <= 2 * 8  # one second, give or take a millisecond
    assert abs(peak_frequency(out) - 440) < 2


def test_a_wav_answer_is_read_by_its_header_and_mixed_to_mono():
    pcm = tone(22050, channels=2)
    audio = PhoneAudio()
    out = audio.add(wav_header(22050, 2, len(pcm)) + pcm) + audio.finish()
    assert abs(len(out) - 2 * 8000) <= 2 * 8 and abs(peak_frequency(out) - 440) < 2


def test_what_the_phone_cannot_carry_is_filtered_not_folded_back():
    audio = PhoneAudio()
    out = audio.add(tone(24000, frequency=5000)) + audio.finish()  # above 4 kHz
    level = numpy.abs(numpy.frombuffer(out, numpy.int16)[400:-400]).max()
    assert level < 80  # 8000 in: folded back, it would be a 3 kHz tone of that level


def test_a_wav_that_is_not_16_bit_pcm_is_refused():
    header = bytearray(wav_header(24000, 1, 0))
    header[34] = 8  # 8-bit
    with pytest.raises(ServiceFailed, match="8-bit"):
        wav_format(bytes(header))
    assert wav_format(wav_header(24000, 1, 0)[:30]) is None  # not all here yet
