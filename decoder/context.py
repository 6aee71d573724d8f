"""A session's context (names, jargon) and the scoring that biases decoding towards it.

Model-independent: a family turns each candidate token into the text it adds, and
:class:`TermMatcher` says how much that text moves the hypothesis towards (or away from) a term.
Matching is on characters, not token ids, so a term is recognised however the model happens to
split it into tokens, and its case and spacing variants cost nothing extra.

Scoring is shallow fusion over a prefix tree of the terms, with the bonus of an unfinished match
taken back when the match breaks: a hypothesis only keeps the bonus of terms it spelled out in
full, so the beginning of a boosted word cannot drag the search towards it.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

MAX_TERMS = 100
MAX_TERM_CHARS = 60
MAX_TERM_WORDS = 6
MAX_BOOST = 5.0
MAX_CONTEXT_CHARS = 2000


class ContextError(ValueError):
    """A context that breaks the limits above; the message says which and how."""

    def __init__(self, message: str, too_large: bool = False):
        super().__init__(message)
        self.too_large = too_large


@dataclass(frozen=True)
class Term:
    text: str
    boost: float = 1.0


@dataclass(frozen=True)
class Context:
    """What a session says may be spoken: free text (a prompt for models that take one) and the
    terms to bias towards (given as a list, or taken from the text's comma/line-separated items)."""

    text: str = ""
    terms: tuple[Term, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.text or self.terms)


def parse_context(value: Any) -> Context | None:
    """Free text, or ``{"terms": ["Hester Prynne", {"text": "Qwen3-ASR", "boost": 2.0}], "text": ...}``
    (also as a JSON string, since a query parameter is text). None or empty: no context."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
            raise ContextError("context starts with '{' but is not valid JSON") from None
    if isinstance(value, str):
        _check_size(len(value))
        items = [item.strip() for item in re.split(r"[,;\n]", value)]
        # Items of free text that read like sentences still steer a prompt, but are no terms.
        terms = tuple(Term(item) for item in items if item and _words(item) <= MAX_TERM_WORDS and len(item) <= MAX_TERM_CHARS)
        return Context(text=value.strip(), terms=_check_terms(_unique(terms)))
    if not isinstance(value, dict) or set(value) - {"terms", "text"} or not isinstance(value.get("terms", []), list):
        raise ContextError('context must be text or {"terms": [...], "text": "..."}')
    text = value.get("text", "")
    if not isinstance(text, str):
        raise ContextError("context text must be a string")
    given: list[Term] = []
    for item in value.get("terms", []):
        if isinstance(item, str):
            item = {"text": item}
        if not isinstance(item, dict) or not isinstance(item.get("text"), str) or set(item) - {"text", "boost"}:
            raise ContextError('each context term is a string or {"text": "...", "boost": number}')
        boost = item.get("boost", 1.0)
        if isinstance(boost, bool) or not isinstance(boost, (int, float)) or not 0 <= boost <= MAX_BOOST:
            raise ContextError(f"term boost must be a number from 0 to {MAX_BOOST:g}")
        term = item["text"].strip()
        if not term:
            continue
        if len(term) > MAX_TERM_CHARS or _words(term) > MAX_TERM_WORDS:
            raise ContextError(f"context term {term[:40]!r} is too long (at most {MAX_TERM_CHARS} characters and {MAX_TERM_WORDS} words)")
        given.append(Term(term, float(boost)))
    _check_size(len(text) + sum(len(t.text) for t in given))
    context = Context(text=text.strip(), terms=_check_terms(_unique(tuple(given))))
    return context or None


def context_to_json(context: Context) -> str:
    """A checked context as JSON, to keep it (the journal keeps each session's context)."""
    return json.dumps({"text": context.text, "terms": [{"text": t.text, "boost": t.boost} for t in context.terms]})


def context_from_json(value: str) -> Context:
    """The inverse of :func:`context_to_json`. No limits are checked again: the context passed
    them when it was given, and a free-text context counts its text once, not again as terms."""
    data = json.loads(value)
    return Context(text=data["text"], terms=tuple(Term(t["text"], t["boost"]) for t in data["terms"]))


def load_context_file(path: str) -> dict[str, Context]:
    """``--context-file``: plain text (the context of every room), a JSON context
    (``{"terms": [...]}``), or ``{"rooms": {"keynote": CONTEXT, "*": CONTEXT}}`` per room."""
    with open(path, encoding="utf-8") as f:
        raw = f.read()
    try:
        value = json.loads(raw) if raw.lstrip().startswith("{") else raw
    except ValueError as error:
        raise ContextError(f"{path} is not valid JSON: {error}") from None
    if isinstance(value, dict) and "rooms" in value:
        if set(value) != {"rooms"} or not isinstance(value["rooms"], dict):
            raise ContextError(f'{path}: expected {{"rooms": {{"ROOM": CONTEXT, "*": CONTEXT}}}}')
        contexts = {room: parse_context(item) for room, item in value["rooms"].items()}
    else:
        contexts = {"*": parse_context(value)}
    return {room: context for room, context in contexts.items() if context}


def _words(text: str) -> int:
    return len(text.split())


def _check_size(chars: int) -> None:
    if chars > MAX_CONTEXT_CHARS:
        raise ContextError(f"context is longer than {MAX_CONTEXT_CHARS} characters", too_large=True)


def _check_terms(terms: tuple[Term, ...]) -> tuple[Term, ...]:
    if len(terms) > MAX_TERMS:
        raise ContextError(f"context has {len(terms)} terms; at most {MAX_TERMS}", too_large=True)
    return terms


def _unique(terms: Iterable[Term]) -> tuple[Term, ...]:
    seen: dict[str, Term] = {}
    for term in terms:
        seen.setdefault(term.text.casefold(), term)
    return tuple(seen.values())


def variants(term: str) -> set[str]:
    """Spellings of a term the model may produce: as given, lower case, capitalised; hyphens as
    spaces and the reverse ("Qwen3-ASR", "qwen3 asr"), each as a word of running text."""
    spaced = {term, term.replace("-", " "), term.replace(" ", "-") if _words(term) == 2 else term}
    found = set()
    for form in spaced:
        form = " ".join(form.split())
        for cased in (form, form.lower(), form[:1].upper() + form[1:], form.title() if _words(form) > 1 else form):
            found.add(" " + cased)  # running text: a term starts a word
    return found


@dataclass
class MatchState:
    """Where one hypothesis stands: the bonus it has banked for whole terms, and its partial
    matches (variant index -> characters matched) with the bonus they carry so far."""

    banked: float = 0.0
    partial: dict[int, int] = field(default_factory=dict)
    pending: float = 0.0

    @property
    def score(self) -> float:
        return self.banked + self.pending


_WORD_CHAR = re.compile(r"\w")


class TermMatcher:
    """The prefix tree of a context's term variants, and the per-character bonus."""

    def __init__(self, terms: Iterable[Term], bonus_per_char: float = 0.5):
        self.forms: list[str] = []
        self.boosts: list[float] = []
        for term in terms:
            for form in sorted(variants(term.text)):
                self.forms.append(_fold(form))
                self.boosts.append(term.boost)
        self.bonus_per_char = bonus_per_char
        # First characters after the leading space: which variants a word can start.
        self._starts: dict[str, list[int]] = {}
        for index, form in enumerate(self.forms):
            self._starts.setdefault(form[1:2], []).append(index)

    def __bool__(self) -> bool:
        return bool(self.forms)

    def advance(self, state: MatchState, piece: str) -> MatchState:
        """The state after a token that adds ``piece`` (its text, word-start space included)."""
        piece = _fold(piece)
        banked = state.banked
        partial: dict[int, int] = {}
        # Continue the matches in progress.
        for index, matched in state.partial.items():
            rest = self.forms[index][matched:]
            if rest.startswith(piece):
                partial[index] = matched + len(piece)
            elif piece.startswith(rest) and not _WORD_CHAR.match(piece[len(rest) :]):
                banked += self._bonus(index, len(self.forms[index]))  # the term ends here
        # A token that starts a word may start a term.
        if piece.startswith(" ") and len(piece) > 1:
            for index in self._starts.get(piece[1], ()):
                form = self.forms[index]
                if form.startswith(piece):
                    partial[index] = max(partial.get(index, 0), len(piece))
                elif piece.startswith(form) and not _WORD_CHAR.match(piece[len(form) :]):
                    banked += self._bonus(index, len(form))
        # A match that reached the end of its form is complete once the word ends; until then it
        # counts as pending (the next token may still extend the word: "Byron" vs "Byronic").
        pending = max((self._bonus(i, m) for i, m in partial.items()), default=0.0)
        return MatchState(banked, partial, pending)

    def finish(self, state: MatchState) -> float:
        """Bonus at the end of the text: whole terms count, unfinished ones do not."""
        done = [self._bonus(i, m) for i, m in state.partial.items() if m == len(self.forms[i])]
        return state.banked + max(done, default=0.0)

    def _bonus(self, index: int, chars: int) -> float:
        # The leading space is not evidence of the term; count the characters after it.
        return self.bonus_per_char * self.boosts[index] * max(0, chars - 1)


def _fold(text: str) -> str:
    """Compare as the model writes: canonical Unicode, typographic apostrophes as plain ones."""
    return unicodedata.normalize("NFC", text).replace("\u2019", "'")
