"""Word and character error rates, with the text normalisation both sides need."""

from __future__ import annotations

import re
import unicodedata
from typing import Sequence

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
    previous = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        current = [i] + [0] * len(hypothesis)
        for j, hyp in enumerate(hypothesis, 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref != hyp))
        previous = current
    return previous[-1]


def units(text: str, language: str) -> list[str]:
    words = normalize(text)
    if language.split("-")[0] in CHARACTER_LANGUAGES:
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
