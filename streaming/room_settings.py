"""What a session in a room decodes with when its publisher does not say: the operator's
per-room languages (``--room-languages``) and context (``--context-file``), checked against
the model; and how long a room's audience waits for finals while editors review them
(``--review-delay``). Pure decisions, no I/O.
"""

from __future__ import annotations

import difflib
from typing import Any, TypeVar

from decoder.context import MAX_TERM_WORDS, MAX_TERMS, Context, ContextError, Term, parse_context
from streaming.protocol import ProtocolError

T = TypeVar("T")


# Languages a model may lack while it knows a close one well: captioned as that one, and said so
# in the publisher's ready (Whisper base captions Cantonese as Chinese at about 6% CER).
NEAREST = {"yue": "zh", "nb": "no", "nn": "no", "fil": "tl", "iw": "he", "in": "id", "jv": "jw", "jw": "jv"}


def _for_room(settings: dict[str, T], room: str) -> T | None:
    """An operator's per-room setting: the room's own (0 and empty included), else the one for
    every room ("*")."""
    return settings[room] if room in settings else settings.get("*")


class RoomSettings:
    def __init__(
        self,
        model_name: str,
        model_languages: tuple[str, ...],
        room_languages: dict[str, tuple[str, ...]] | None = None,
        room_contexts: dict[str, Context] | None = None,
        room_review_delays: dict[str, float] | None = None,
        room_translations: dict[str, str] | None = None,
        translation_targets: tuple[str, ...] = (),
        room_shadows: dict[str, str] | None = None,
    ):
        self.model_name = model_name
        self.supported = model_languages
        self.room_languages = room_languages or {}
        self.room_contexts = room_contexts or {}
        self.room_review_delays = room_review_delays or {}
        self.room_translations = room_translations or {}
        self.translation_targets = translation_targets  # what finals can be translated into here
        for room, target in self.room_translations.items():
            if target not in translation_targets:
                raise ValueError(f"--room-translate {room}={target}: nothing here translates into {target} "
                                 f"(multilingual Whisper models translate into en)")
        self.room_shadows = room_shadows or {}  # the shadow model of a room ("none": no shadow)
        self.learned: dict[str, tuple[str, ...]] = {}  # terms editors added to a room's context
        for room, codes in self.room_languages.items():
            missing = [code for code in codes if code not in model_languages]
            if missing:
                raise ValueError(f"--room-languages {room}: model {model_name} does not support {', '.join(missing)}")

    @property
    def default_language(self) -> str:
        """Multilingual models detect the language of each utterance unless told."""
        return self.supported[0] if len(self.supported) == 1 else "auto"

    def languages(self, room: str) -> tuple[str, ...]:
        """The room's language candidates, for publishers that name none."""
        return _for_room(self.room_languages, room) or ()

    def context(self, room: str) -> Context | None:
        """The room's default context, for publishers that give none: the operator's, with the
        terms editors added."""
        base = _for_room(self.room_contexts, room)
        learned = self.learned.get(room, ())
        if not learned:
            return base
        known = {t.text.lower() for t in base.terms} if base else set()
        added = tuple(Term(t) for t in learned if t.lower() not in known)
        return Context(text=base.text if base else "", terms=(base.terms if base else ()) + added)

    def learn(self, room: str, term: str) -> str:
        """Add an editor's term to the room's context; returns it as kept (``bad_request``
        for a term that is no term, ``too_large`` past the context's limits)."""
        try:
            checked = parse_context({"terms": [term]})
        except ContextError as error:
            raise ProtocolError("bad_request", f"term: {error}") from None
        if checked is None or not checked.terms:
            raise ProtocolError("bad_request", "term is empty")
        text = checked.terms[0].text
        current = self.context(room)
        if current is not None and text.lower() in {t.text.lower() for t in current.terms}:
            return text
        if current is not None and len(current.terms) >= MAX_TERMS:
            raise ProtocolError("too_large", f"room {room} has {MAX_TERMS} context terms already")
        self.learned[room] = (*self.learned.get(room, ()), text)
        return text

    def forget(self, room: str) -> None:
        """A deleted room's learned terms go with it."""
        self.learned.pop(room, None)

    def translation(self, room: str, asked: str | None) -> str | None:
        """The language a new session's finals are translated into: what its publisher asked for,
        else the room's; ``bad_request`` if the model cannot translate."""
        target = asked or _for_room(self.room_translations, room)
        if target and target not in self.translation_targets:
            if not self.translation_targets:
                raise ProtocolError("bad_request",
                                    f"model {self.model_name} transcribes only: it cannot translate (translate= needs a multilingual Whisper model)")
            raise ProtocolError("bad_request", f"finals are translated into {', '.join(self.translation_targets)} here, not {target}")
        return target or None

    def shadow(self, room: str) -> str | None:
        """The room's shadow model (``--shadow``, ``--room-shadow``), if it has one."""
        name = _for_room(self.room_shadows, room)
        return None if name in (None, "none") else name

    def review_delay(self, room: str) -> float:
        """Seconds the room's audience gets finals after editors (``--review-delay``); 0: at once."""
        return _for_room(self.room_review_delays, room) or 0.0

    def language(self, requested: str | None, candidates: tuple[str, ...] = ()) -> str | None:
        """What a session asks the model for: a language it can do (a language it lacks but knows
        a close one of becomes that one), "auto", or candidates to detect among ("en,zh"); None
        when nothing was asked; ``bad_request`` for a language the model cannot do at all."""
        supported = self.supported
        candidates = tuple(dict.fromkeys(self.nearest(code) for code in candidates))
        if requested not in (None, "auto"):
            requested = self.nearest(requested)
        for code in (*candidates, *([requested] if requested not in (None, "auto") else [])):
            if code not in supported:
                listed = ", ".join(supported) if len(supported) < 12 else f"{len(supported)} languages, e.g. {', '.join(supported[:12])}"
                raise ProtocolError("bad_request", f"model {self.model_name} does not support language {code!r} (supports: {listed})")
        if requested is None and not candidates:
            return None
        if requested not in (None, "auto"):
            return requested
        if len(supported) == 1:
            return supported[0]
        return ",".join(candidates) if len(candidates) > 1 else (candidates[0] if candidates else "auto")

    def nearest(self, code: str) -> str:
        """``code``, or the close language the model knows instead (:data:`NEAREST`)."""
        if code in self.supported or NEAREST.get(code) not in self.supported:
            return code
        return NEAREST[code]

    def session_language(self, room: str, requested: str | None, candidates: tuple[str, ...] = ()) -> str:
        """A new session's language: what its publisher asked for, else the room's, else the default."""
        return self.language(requested, candidates or self.languages(room)) or self.default_language


def suggested_terms(revisions: list[dict[str, Any]], known: set[str], least: int = 2, most: int = 10) -> list[str]:
    """Terms editors keep writing in: the runs of words corrections put in a final's text (what
    they replaced or inserted; a name with its capitalised neighbours), found in at least
    ``least`` corrections and not ``known`` already; the most frequent first."""
    counts: dict[str, int] = {}
    shown: dict[str, str] = {}
    for revision in revisions:
        before = [_bare(w) for w in revision["before_text"].split()]
        after = revision["text"].split()
        matcher = difflib.SequenceMatcher(a=[w.lower() for w in before], b=[_bare(w).lower() for w in after], autojunk=False)
        seen = set()
        for kind, _, _, start, end in matcher.get_opcodes():
            if kind not in ("replace", "insert") or end - start > MAX_TERM_WORDS:
                continue
            if any(_bare(w)[:1].isupper() for w in after[start:end]):
                # A name: the capitalised words around it that were already right belong to it.
                while start > 0 and _bare(after[start - 1])[:1].isupper() and end - start < MAX_TERM_WORDS:
                    start -= 1
                while end < len(after) and _bare(after[end])[:1].isupper() and end - start < MAX_TERM_WORDS:
                    end += 1
            phrase = " ".join(_bare(w) for w in after[start:end]).strip()
            key = phrase.lower()
            if phrase and key not in known and key not in seen:
                seen.add(key)
                counts[key] = counts.get(key, 0) + 1
                shown.setdefault(key, phrase)
    ranked = sorted((key for key, n in counts.items() if n >= least), key=lambda key: -counts[key])
    return [shown[key] for key in ranked[:most]]


def _bare(word: str) -> str:
    return word.strip(".,;:!?\"'()[]")
