"""Word and character error rates, with the text normalisation both sides need."""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable, Sequence

from streaming.numbers import write_numbers

# Languages written without spaces between words: scored by characters, spaces removed.
CHARACTER_LANGUAGES = {"zh", "ja", "ko", "yue", "th"}

_ABBREVIATIONS = {"mr": "mister", "mrs": "missus", "dr": "doctor", "st": "saint", "vs": "versus"}


def normalize(text: str) -> list[str]:
    """Lower case, no punctuation (apostrophes inside words kept), hyphens split words."""
    text = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")
    text = re.sub(r"[-\u2010-\u2015/]", " ", text)
    text = "".join(c if (c.isalnum() or c.isspace() or c == "'") else " " for c in text)
    words = [w.strip("'") for w in text.split()]
    return [_ABBREVIATIONS.get(w, w) for w in words if w]


def edit_distance(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    if list(reference) == list(hypothesis):
        return 0  # the common case in exports and comparisons: no table to fill
    previous = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        current = [i] + [0] * len(hypothesis)
        for j, hyp in enumerate(hypothesis, 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref != hyp))
        previous = current
    return previous[-1]


# Chinese is written in traditional or simplified characters (Whisper often picks traditional
# for Mandarin, whose references are simplified): one script on both sides, so that a script is
# no error.
CHINESE = {"zh", "yue"}


@functools.cache
def _to_simplified() -> Callable[[str], str]:
    import opencc

    return opencc.OpenCC("t2s").convert


def to_simplified(text: str) -> str:
    """Chinese text in simplified characters (other text unchanged)."""
    return _to_simplified()(text)


def units(text: str, language: str) -> list[str]:
    """What is scored: words (or characters) of the text normalised, its numbers written as
    figures (references and models spell them either way)."""
    base = language.split("-")[0]
    text = write_numbers(text, language)
    if base in CHINESE:
        text = to_simplified(text)
    words = normalize(text)
    if base in CHARACTER_LANGUAGES:
        return list("".join(words))
    return words


def error_counts(reference: str, hypothesis: str, language: str = "en") -> tuple[int, int]:
    """(errors, reference length) in words, or characters for languages without spaces."""
    ref, hyp = units(reference, language), units(hypothesis, language)
    return edit_distance(ref, hyp), len(ref)


def error_rate(pairs: Sequence[tuple[str, str]], language: str = "en") -> float:
    """Corpus-level WER/CER over (reference, hypothesis) pairs."""
    errors = total = 0
    for reference, hypothesis in pairs:
        e, n = error_counts(reference, hypothesis, language)
        errors, total = errors + e, total + n
    return errors / max(1, total)
