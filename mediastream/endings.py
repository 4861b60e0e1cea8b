"""Whether a caller's words so far end where an English sentence cannot (no I/O).

"My order number is ..." or "I would like to book a table for ..." is plainly not a
whole turn: a caller pausing there is looking for a number, or a word, and an agent that
answers into the pause cuts them off. Such a turn ends with an article, a preposition, a
conjunction, a possessive, a filler ("um", "uh"), or a form of "be" (or another verb that
needs what follows) after anything but a pronoun; or with a comma or dots (Whisper writes
"for..." where the voice trails off). Anything else may be a whole turn ("Yes.",
"That's right.", "Four five seven two."), and is answered as soon as ever.

Whisper ends most fragments with a full stop all the same ("I would like to book a table
for."), so the last word decides, not the punctuation after it.
"""

import re

ARTICLES = "a an the"
# Prepositions that a sentence hardly ever ends with (not "in", "on", "up", "out", "over":
# "Come in.", "Hang up.", "It's over.").
PREPOSITIONS = "about at for from into of onto than to toward towards with"
CONJUNCTIONS = "and because but if nor or unless whether while"  # (not "so": "I think so.")
POSSESSIVES = "my your our their its"  # (not "her": "I called her.")
FILLERS = "um umm uh uhh er erm hmm"
# Verbs that need what follows, but not after a pronoun: "My order number is ..." waits,
# "Yes, it is." does not.
VERBS = "am are is was were be been will would can could should shall have has want need"
PRONOUNS = frozenset("i you he she it we they there that this who".split())
ENDS_NOTHING = frozenset(
    " ".join((ARTICLES, PREPOSITIONS, CONJUNCTIONS, POSSESSIVES, FILLERS)).split()
)
NEEDS_AN_OBJECT = frozenset(VERBS.split())

TRAILING = re.compile(r"(,|\.\.\.|…|-|—)\s*$")  # a comma, dots or a dash at the very end
WORD = re.compile(r"[a-z']+")


def unfinished(text):
    """Whether `text`, a caller's words so far, plainly stops mid-sentence."""
    if TRAILING.search(text):
        return True
    words = WORD.findall(text.lower())
    if not words:
        return False
    if words[-1] in NEEDS_AN_OBJECT:
        return len(words) < 2 or words[-2] not in PRONOUNS
    return words[-1] in ENDS_NOTHING


def last_words(text, count=3):
    """The end of `text`, for a console line: "... a table for"."""
    words = text.rstrip(" .,…").split()
    return ("... " if len(words) > count else "") + " ".join(words[-count:])
