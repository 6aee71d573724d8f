"""Whether a final's words reach the end of its audio, judged by decoding the audio's tail alone.

A decode can end before its audio does: a loop guard or the token budget stops it (the
hypothesis says so), or the model ends its own text early (Whisper does, on long utterances,
seconds before the audio ends; nothing says so). After such an utterance's final, the session
decodes its last few seconds on their own and places the final's last words (two at least, in
order) inside that tail: where they end the tail, the final covered its audio; where more words
follow, those were dropped, and the session sends them as a final of their own. Where they
cannot be placed, the session reads the whole utterance again alone (Whisper's beam search once
ended a final at a sentence 14 s before its audio ended; read again greedily, it gave every
word), then tries the windows before the tail, back to the utterance's start; words that cannot
be placed anywhere are not guessed at (so a final whose last word the tail hears differently is
"unmatched", and stands as it was).

A model may also skip words at the start: decoded alone, with no partial before it, Whisper read
only the second of two sentences. For a final with no partial shown before it, the session
decodes the utterance's first seconds alone and places the final's first words in that head
(:func:`head_coverage`, the same placing read backwards); words before them are added in front
of the final, which waits for this check (words cannot be sent before a final already sent).
A final that holds none of the head's first words is decoded again with them forced in front.
"""

from __future__ import annotations

from dataclasses import dataclass

from decoder.api import Word
from streaming.scoring import normalize, to_simplified

# Words that must agree, in order, for the final's end to be placed inside the tail.
ANCHOR_WORDS = 2


@dataclass(frozen=True)
class Coverage:
    outcome: str  # "covered", "extended" (words had been dropped), or "unmatched"
    # The words the final dropped, as the tail spells them; the first may be the final's last
    # word again, whole where the final had cut it short ("627,0" then "627,000 subscribers").
    added: tuple[Word, ...] = ()


def spoken(words: tuple[Word, ...]) -> list[tuple[int, str]]:
    """The words that are said (punctuation comes as words of its own after a forced prefix),
    with their index, each as its normalised text (Chinese in simplified characters: Whisper
    writes one utterance in traditional and its tail, decoded alone, in simplified)."""
    texts = [" ".join(normalize(w.text)) for w in words]
    if any(_chinese(text) for text in texts):
        texts = [to_simplified(text) for text in texts]
    return [(index, text) for index, text in enumerate(texts) if text]


def echoes(final: tuple[Word, ...], tail: tuple[Word, ...]) -> bool:
    """Whether a tail that cannot be placed mostly repeats the final's last words: misheard (its
    last word read otherwise), not more speech."""
    heard = [text for _, text in spoken(tail)]
    said = {text for _, text in spoken(final)[-(len(heard) + ANCHOR_WORDS) :]}
    return bool(heard) and sum(text in said for text in heard) >= 0.6 * len(heard)


def _chinese(text: str) -> bool:
    return any("\u3400" <= char <= "\u9fff" for char in text)


def coverage(final: tuple[Word, ...], tail: tuple[Word, ...], cut_short: bool = True) -> Coverage:
    """How ``final`` (an utterance's words) meets ``tail`` (its last seconds decoded alone).
    ``cut_short``: the final's last word may be a cut-short spelling of the tail's."""
    heard = spoken(tail)
    said = [text for _, text in spoken(final)]
    if not heard:
        return Coverage("covered")  # nothing is said at the end
    best_length, best_at = 0, -1
    for at in range(len(heard)):
        length = 0
        while length < min(len(said), at + 1) and _same(said[-1 - length], heard[at - length][1], cut_short and not length):
            length += 1
        if length >= best_length and length:  # the later of equal anchors adds fewer words
            best_length, best_at = length, at
    if best_length < ANCHOR_WORDS:
        # Too short to place, unless the whole tail (or the whole final) ends the other.
        covered = best_at == len(heard) - 1 and best_length >= min(len(said), len(heard))
        return Coverage("covered" if covered else "unmatched")
    if best_at == len(heard) - 1:
        return Coverage("covered")
    # The final's last word may have been cut short ("627,0"): the tail's spelling follows whole.
    first = heard[best_at][0] + (said[-1] == heard[best_at][1])
    return Coverage("extended", tail[first:])


def head_coverage(final: tuple[Word, ...], head: tuple[Word, ...]) -> Coverage:
    """How ``final`` meets ``head`` (the utterance's first seconds decoded alone): the same
    placing, of the final's first words, read backwards. ``added`` are words the final dropped
    before its first word (a model may skip a whole first sentence)."""
    found = coverage(final[::-1], head[::-1], cut_short=False)
    return Coverage(found.outcome, found.added[::-1])


def _same(said: str, heard: str, cut_short: bool) -> bool:
    """Whether two words are one; the final's last word may be a cut-short spelling of the tail's
    ("627 0" of "627 000"): a loop guard or the token budget stopped it mid-word."""
    return said == heard or (cut_short and heard.startswith(said))
