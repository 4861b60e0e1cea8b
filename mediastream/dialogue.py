"""The agent's conversation, with no I/O: the history the model is sent, the sentences cut
from its stream of text, and what the caller has heard of each answer.

- History: the system prompt, the caller's words before the greeting (if any), the
  greeting as the first thing the assistant said, then each caller turn as a user message
  and what was heard of each answer as an assistant message. A caller who goes on before
  hearing anything of an answer (a pause mid-sentence) extends their last message: one
  answer to the whole turn. Past a budget of tokens the oldest turns are dropped whole.
- Sentences: each one goes to the voice as soon as the model has finished it (the first
  may be a clause, for a sooner start).
- What was heard: an answer is sent as pieces of audio, a sentence each, each followed
  by a mark. A mark that comes back played means its piece was heard whole; of the piece
  playing when the caller cut in, the words are counted by the time it had played (its
  words taken as evenly spread over its audio). The history keeps only those words, so
  the model never believes it said what the caller did not hear.
"""

import re
from dataclasses import dataclass

# Where a sentence ends: . ! ? (and quotes or brackets after them) before a space; or a
# line's end. A few abbreviations are not ends.
SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*(?=\s)|\n")
ABBREVIATIONS = ("Mr.", "Mrs.", "Ms.", "Dr.", "St.", "No.", "e.g.", "i.e.", "vs.", "etc.")
CLAUSE_END = re.compile(r"[,;:](?=\s)")
FIRST_CLAUSE_WORDS = 4
RUNNING = '{"status": "still running"}'  # a tool's result, until it comes
MARKUP = re.compile(r"[*_#`~]+|\[|\]\([^)]*\)")  # markdown a voice would read out


class Conversation:
    """The messages of one call, as a chat completions API takes them, kept within a
    budget of tokens: the oldest turns go first, whole; the head (the system prompt, the
    caller's words before the greeting, and the greeting) stays."""

    def __init__(self, prompt, budget):
        self.messages = [{"role": "system", "content": prompt}]
        self.budget = budget
        self.head = 1  # how many of the first messages are never dropped
        self.dropped = 0  # turns dropped to keep within the budget

    def caller_said(self, text, joins=False):
        """A caller's turn: a user message, or more of the last one when `joins` (nothing
        of an answer to it was heard: they went on)."""
        last = self.messages[-1]
        if joins and last["role"] == "user":
            last["content"] = f"{last['content']} {text}"
        else:
            self.messages.append({"role": "user", "content": text})

    def opened_with(self, text):
        """The caller's words before the greeting: in the head, before it."""
        if self.head > 1 and self.messages[self.head - 1]["role"] == "user":
            self.messages[self.head - 1]["content"] += f" {text}"
            return
        self.messages.insert(self.head, {"role": "user", "content": text})
        self.head += 1

    def answered(self, heard, greeting=False):
        """What the caller heard of an answer (nothing: it is not in the history); the
        greeting goes in the head."""
        if not heard:
            return
        message = {"role": "assistant", "content": heard}
        if greeting:
            self.messages.insert(self.head, message)
            self.head += 1
        else:
            self.messages.append(message)

    def called(self, tool_calls):
        """The model called tools (`tool_calls` as the API's assistant message has them):
        the message, and a `tool` message for each, still running until its result."""
        self.messages.append({"role": "assistant", "content": None, "tool_calls": tool_calls})
        for call in tool_calls:
            self.messages.append({"role": "tool", "tool_call_id": call["id"], "content": RUNNING})

    def tool_result(self, call_id, content):
        """A tool call's result (its `tool` message's content); nothing if that call's
        turn has been dropped from the history."""
        for message in reversed(self.messages):
            if message.get("tool_call_id") == call_id:
                message["content"] = content
                return

    def for_model(self):
        """The messages to send. Past the budget, the oldest turns are dropped (never the
        head, never the last turn) down to three quarters of it: the messages then begin
        the same way for the next few requests, which a server's prompt cache reuses."""
        if sum(map(tokens, self.messages)) <= self.budget:
            return list(self.messages)
        while sum(map(tokens, self.messages)) > self.budget * 3 // 4:
            starts = [
                n
                for n in range(self.head + 1, len(self.messages))
                if self.messages[n]["role"] == "user" and self.messages[n - 1]["role"] != "user"
            ]
            if not starts:
                break
            del self.messages[self.head : starts[0]]
            self.dropped += 1
        return list(self.messages)


def tokens(message):
    """A message's size in tokens, roughly: English runs about 4 characters a token, and
    a chat template adds a few a message."""
    calls = message.get("tool_calls") or ()
    characters = len(message["content"] or "") + sum(
        len(call["function"]["name"]) + len(call["function"]["arguments"]) for call in calls
    )
    return characters // 4 + 4 + 8 * len(calls)


class Sentences:
    """A model's text, as it streams in, cut into sentences ready to speak. The first
    piece may be a clause: cut at a comma (or ; :) once it has FIRST_CLAUSE_WORDS, so
    that the caller hears the answer begin sooner."""

    def __init__(self):
        self.text = ""
        self.first = True

    def add(self, text):
        """Take more of the answer; return the sentences it completed."""
        self.text += text
        done = []
        if self.first and (clause := self._first_clause()):
            done.append(self.text[:clause])
            self.text = self.text[clause:]
        start = 0
        for end in SENTENCE_END.finditer(self.text):
            sentence = self.text[start : end.end()]
            if sentence.rstrip().endswith(ABBREVIATIONS):
                continue
            start = end.end()
            done.append(sentence)
        self.text = self.text[start:]
        spoken = [sentence for sentence in map(speakable, done) if sentence]
        self.first = self.first and not spoken
        return spoken

    def _first_clause(self):
        """Where the answer's first clause of FIRST_CLAUSE_WORDS ends, before any
        sentence end; else None."""
        for clause in CLAUSE_END.finditer(self.text):
            before = self.text[: clause.end()]
            if SENTENCE_END.search(before):
                return None
            if len(before.split()) >= FIRST_CLAUSE_WORDS:
                return clause.end()
        return None

    def finish(self):
        """The rest of the answer, once the model has finished it."""
        rest, self.text = speakable(self.text), ""
        return [rest] if rest else []


def speakable(text):
    """A sentence as a voice should get it: no markdown, one space between words."""
    return " ".join(MARKUP.sub("", text).split())


@dataclass
class Piece:
    """One sentence of an answer, as audio sent to the caller."""

    text: str
    sent_at: float  # when its first audio was sent
    remembered: bool = True  # the model's words (or the greeting): they go in the history
    seconds: float = 0.0  # of audio sent so far
    mark: str | None = None  # sent after its last audio
    played_at: float | None = None  # when its mark came back played


class Playback:
    """One answer as the caller hears it: its pieces, and their marks as they come back."""

    def __init__(self):
        self.pieces = []
        self.complete = False  # all of it has been sent

    @property
    def audible(self):
        """True once any of its audio has gone to the caller."""
        return bool(self.pieces)

    @property
    def all_played(self):
        return all(piece.played_at is not None for piece in self.pieces)

    def begin_piece(self, text, now, remembered=True):
        self.pieces.append(Piece(text, now, remembered))

    def add_audio(self, seconds):
        self.pieces[-1].seconds += seconds

    def end_piece(self, mark):
        self.pieces[-1].mark = mark

    def played(self, mark, now):
        for piece in self.pieces:
            if piece.mark == mark:
                piece.played_at = now

    @property
    def open(self):
        """Whether its last piece has had audio and no mark yet."""
        return bool(self.pieces) and self.pieces[-1].mark is None

    def text(self, remembered=False):
        """All it said; with `remembered`, only what goes in the history."""
        return " ".join(p.text for p in self.pieces if p.remembered or not remembered)

    def heard(self, now, remembered=False):
        """The words the caller has heard by `now`: the pieces played, and of the one
        playing, the words its time played so far covers; with `remembered`, only of the
        pieces that go in the history."""
        words = []
        previous_end = None
        for piece in self.pieces:
            if piece.played_at is not None:
                words.append(piece.text if piece.remembered or not remembered else "")
                previous_end = piece.played_at
                continue
            # It began playing when it was sent, or when the piece before it ended.
            started = max(piece.sent_at, previous_end or piece.sent_at)
            if piece.seconds and (piece.remembered or not remembered):
                words.append(words_within(piece.text, (now - started) / piece.seconds))
            break
        return " ".join(word for word in words if word)


def words_within(text, fraction):
    """The words of `text` that end within the first `fraction` of it (by characters,
    which follow speaking time closely enough)."""
    heard = []
    length = len(text)
    position = 0
    for word in text.split():
        position = text.index(word, position) + len(word)
        if position > fraction * length:
            break
        heard.append(word)
    return " ".join(heard)
